// Small filesystem helpers with Status errors.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "fedge/status.h"

namespace fedge {

// One version of a file that is re-read when it changes (tokens, keys, lists mounted
// from Secrets and ConfigMaps): a kubelet updates those volumes by swapping a `..data`
// symlink, so a new version is a new inode even when size and mtime match.
struct FileId {
  dev_t dev = 0;
  ino_t ino = 0;
  off_t size = 0;
  int64_t mtime_ns = 0;
  bool operator==(const FileId&) const = default;
};

// stat() following symlinks. NOT_FOUND ("<what> <path> does not exist") when it does
// not exist, UNAVAILABLE ("cannot stat <what> <path>: <errno text>") otherwise.
StatusOr<FileId> StatFileId(const std::string& path, const std::string& what);

// Reads the whole file. NOT_FOUND if it does not exist, FAILED_PRECONDITION for
// a directory, other errno-derived codes otherwise; the message names the path.
StatusOr<std::string> ReadFile(const std::string& path);

// Writes `bytes` to `path` atomically: write `path`.tmp.<pid>.<tid>, fsync it,
// rename over `path`, fsync the directory. A crash at any point leaves either
// the old file or the new one, never a mix (a stray temp file may remain; the
// next write is unaffected). An existing target's permissions are kept, else
// 0644 & ~umask. Thread-safe; concurrent writers of one path: last rename wins.
Status WriteFileAtomic(const std::string& path, std::string_view bytes);

// mkdir -p. OK if the directory already exists; FAILED_PRECONDITION if a
// component exists and is not a directory.
Status MakeDirs(const std::string& path);

// mkdir -p of `relative` (names separated by '/', no "", "." or "..") inside the
// existing directory `root`, never following a symbolic link below `root`: each
// component is opened with O_NOFOLLOW, so a link planted in `root` by whoever could
// write there cannot redirect the result into another directory. New directories get
// 0755 & ~umask. OK if the directory already exists; INVALID_ARGUMENT for a bad
// `relative`; FAILED_PRECONDITION if a component is a link or not a directory.
Status MakeDirsBeneath(const std::string& root, const std::string& relative);

// rm -rf of `relative` (as for MakeDirsBeneath) inside the existing directory `root`,
// never following a symbolic link: the components of `relative` are opened with
// O_NOFOLLOW (a link among them is FAILED_PRECONDITION, nothing removed) and every entry
// below is removed through its parent's descriptor, a link as the link itself, so a
// link planted in the tree cannot make it remove anything outside. Directories whose
// owner lacks permission are made 0700 first (the caller owns them). OK when `relative`
// does not exist; `*removed` (if given) counts the entries removed, the top included.
// Assumes nothing writes below `relative` meanwhile. Trees nested deeper than
// kRemoveBeneathMaxDepth are FAILED_PRECONDITION (each level holds a descriptor).
inline constexpr int kRemoveBeneathMaxDepth = 256;
Status RemoveBeneath(const std::string& root, const std::string& relative, int64_t* removed = nullptr);

namespace internal {
// Test-only fault injection: called after each step of WriteFileAtomic with its
// name ("open", "write" once per 1 MiB chunk, "fsync", "close", "rename",
// "fsync_dir"). nullptr clears it. Process-wide; set it only in tests.
using FaultHook = void (*)(const char* step);
void SetWriteFileAtomicFaultHook(FaultHook hook);
}  // namespace internal

}  // namespace fedge
