// File helpers for the CLI (Status errors, no exceptions).
#pragma once

#include <string>
#include <string_view>

#include "fedge/status.h"

namespace fedge::cli {

StatusOr<std::string> ReadWholeFile(const std::string& path);

// Writes `bytes` to `path` via a temp file in the same directory and rename, so
// readers see the old file or the new one, never a partial one. The file is created
// with `mode` (less the umask): 0600 for a private key.
Status WriteWholeFile(const std::string& path, std::string_view bytes, unsigned mode = 0644);

// mkdir -p.
Status MakeDirectories(const std::string& path);

// The last `max_lines` lines of a file (the whole file if shorter; "" if unreadable).
std::string TailFile(const std::string& path, int max_lines, size_t max_bytes = 64 * 1024);

// `path` made absolute against the current directory (no symlink resolution).
std::string AbsolutePath(const std::string& path);

}  // namespace fedge::cli
