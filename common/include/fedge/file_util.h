// Small filesystem helpers with Status errors.
#pragma once

#include <string>
#include <string_view>

#include "fedge/status.h"

namespace fedge {

StatusOr<std::string> ReadFile(const std::string& path);

// Writes `bytes` to `path` atomically: write `path`.tmp.<pid>, fsync it, rename
// over `path`, fsync the directory. A crash at any point leaves either the old
// file or the new one, never a mix.
Status WriteFileAtomic(const std::string& path, std::string_view bytes);

// mkdir -p.
Status MakeDirs(const std::string& path);

}  // namespace fedge
