// POSIX file helpers. WriteFileAtomic follows the classic recipe (write a temp
// file in the same directory, fsync it, rename it over the target, fsync the
// directory) so a crash or power loss leaves either the old or the new file.
#include "fedge/file_util.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

namespace fedge {
namespace {

std::atomic<internal::FaultHook> g_fault_hook{nullptr};

void Step(const char* step) {
  if (internal::FaultHook hook = g_fault_hook.load(std::memory_order_relaxed)) hook(step);
}

Status ErrnoError(const std::string& what, const std::string& path, int err) {
  std::string msg = what + " " + path + ": " + std::strerror(err);
  switch (err) {
    case ENOENT:
      return NotFoundError(std::move(msg));
    case EACCES:
    case EPERM:
    case EROFS:
      return PermissionDeniedError(std::move(msg));
    case ENOSPC:
    case EDQUOT:
      return ResourceExhaustedError(std::move(msg));
    default:
      return InternalError(std::move(msg));
  }
}

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  // Closes the held descriptor (if any) and holds `fd` instead.
  void Reset(int fd) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }
  int Release() { return std::exchange(fd_, -1); }
  // Closes now and reports the error (close can report deferred write errors).
  int Close() {
    const int rc = ::close(fd_);
    fd_ = -1;
    return rc;
  }

 private:
  int fd_;
};

std::string DirName(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

}  // namespace

namespace internal {
void SetWriteFileAtomicFaultHook(FaultHook hook) { g_fault_hook.store(hook); }
}  // namespace internal

StatusOr<std::string> ReadFile(const std::string& path) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return ErrnoError("cannot open", path, errno);
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return ErrnoError("cannot stat", path, errno);
  if (S_ISDIR(st.st_mode)) return FailedPreconditionError("cannot read " + path + ": is a directory");
  std::string out;
  if (S_ISREG(st.st_mode)) out.reserve(static_cast<size_t>(st.st_size));
  char buf[1 << 16];
  for (;;) {
    // Read to EOF rather than trusting st_size: pipes and /proc files report 0.
    const ssize_t n = ::read(fd.get(), buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("cannot read", path, errno);
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

Status WriteFileAtomic(const std::string& path, std::string_view bytes) {
  if (path.empty() || path.back() == '/')
    return InvalidArgumentError("WriteFileAtomic: bad path \"" + path + "\"");
  // pid and thread id keep concurrent writers apart; O_TRUNC (not O_EXCL) lets
  // a later process with a recycled pid reuse a temp file a crash left behind.
  const std::string tmp = path + ".tmp." + std::to_string(::getpid()) + "." +
                          std::to_string(static_cast<long>(::syscall(SYS_gettid)));
  mode_t mode = 0644;
  struct stat st;
  if (::stat(path.c_str(), &st) == 0) mode = st.st_mode & 07777;  // keep the target's permissions

  Fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode));
  if (fd.get() < 0) return ErrnoError("cannot create", tmp, errno);
  Step("open");
  auto fail = [&](const std::string& what, int err) {
    ::unlink(tmp.c_str());
    return ErrnoError(what, tmp, err);
  };
  if (::fchmod(fd.get(), mode) != 0)
    return fail("cannot chmod", errno);  // umask must not narrow an existing mode
  constexpr size_t kChunk = 1 << 20;
  size_t done = 0;
  while (done < bytes.size()) {
    const size_t want = std::min(kChunk, bytes.size() - done);
    const ssize_t n = ::write(fd.get(), bytes.data() + done, want);
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail("cannot write", errno);
    }
    done += static_cast<size_t>(n);
    Step("write");
  }
  if (::fsync(fd.get()) != 0) return fail("cannot fsync", errno);
  Step("fsync");
  if (fd.Close() != 0) return fail("cannot close", errno);
  Step("close");
  if (::rename(tmp.c_str(), path.c_str()) != 0) return fail("cannot rename over " + path + " from", errno);
  Step("rename");
  // Persist the rename itself: without this a power loss can resurrect the old name.
  const std::string dir = DirName(path);
  Fd dfd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dfd.get() < 0) return ErrnoError("cannot open directory", dir, errno);
  if (::fsync(dfd.get()) != 0) return ErrnoError("cannot fsync directory", dir, errno);
  Step("fsync_dir");
  return OkStatus();
}

Status MakeDirs(const std::string& path) {
  if (path.empty()) return InvalidArgumentError("MakeDirs: empty path");
  std::string prefix;
  size_t pos = 0;
  while (pos <= path.size()) {
    const size_t slash = path.find('/', pos);
    const size_t end = slash == std::string::npos ? path.size() : slash;
    prefix = path.substr(0, end);
    pos = end + 1;
    if (prefix.empty() || prefix == "." || prefix == "..") {
      if (slash == std::string::npos) break;
      continue;
    }
    if (::mkdir(prefix.c_str(), 0755) != 0 && errno != EEXIST)
      return ErrnoError("cannot create directory", prefix, errno);
    struct stat st;
    if (::stat(prefix.c_str(), &st) != 0) return ErrnoError("cannot stat", prefix, errno);
    if (!S_ISDIR(st.st_mode))
      return FailedPreconditionError("cannot create directory " + path + ": " + prefix +
                                     " is not a directory");
    if (slash == std::string::npos) break;
  }
  return OkStatus();
}

namespace {

// The names of `relative` (for MakeDirsBeneath and RemoveBeneath), or INVALID_ARGUMENT
// naming what `verb` would have done.
StatusOr<std::vector<std::string>> NamesBeneath(const std::string& root, const std::string& relative,
                                                const char* verb) {
  std::vector<std::string> names;
  for (size_t pos = 0;;) {
    const size_t slash = relative.find('/', pos);
    std::string name = relative.substr(pos, slash == std::string::npos ? std::string::npos : slash - pos);
    if (name.empty() || name == "." || name == "..")
      return InvalidArgumentError(std::string("cannot ") + verb + " " + root + "/" + relative + " beneath " +
                                  root + ": the path must be names separated by single slashes (no \"" +
                                  name + "\")");
    names.push_back(std::move(name));
    if (slash == std::string::npos) return names;
    pos = slash + 1;
  }
}

// Empties the directory `name` in `parent` (already known to be a directory, not a
// link) and removes it. `path` is its full path, for messages.
Status RemoveTreeAt(int parent, const std::string& name, const std::string& path, int depth,
                    int64_t* removed) {
  if (depth > kRemoveBeneathMaxDepth)
    return FailedPreconditionError("cannot remove " + path + ": nested deeper than " +
                                   std::to_string(kRemoveBeneathMaxDepth) + " directories");
  const int flags = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC;
  Fd dir(::openat(parent, name.c_str(), flags));
  if (dir.get() < 0 && errno == EACCES) {
    // Ours without read permission (mode 0 or 0300): the owner may always chmod.
    if (::fchmodat(parent, name.c_str(), 0700, 0) == 0) dir.Reset(::openat(parent, name.c_str(), flags));
  }
  if (dir.get() < 0) {
    if (errno == ENOENT) return OkStatus();
    return ErrnoError("cannot open directory", path, errno);
  }
  struct stat st {};
  if (::fstat(dir.get(), &st) == 0 && (st.st_mode & 0700) != 0700) ::fchmod(dir.get(), 0700);
  // readdir on its own descriptor: closedir closes it, `dir` stays ours.
  DIR* listing = ::fdopendir(::dup(dir.get()));
  if (!listing) return ErrnoError("cannot list directory", path, errno);
  std::vector<std::string> names;
  while (struct dirent* e = ::readdir(listing)) {
    const std::string n = e->d_name;
    if (n != "." && n != "..") names.push_back(n);
  }
  ::closedir(listing);
  for (const std::string& n : names) {
    struct stat est {};
    if (::fstatat(dir.get(), n.c_str(), &est, AT_SYMLINK_NOFOLLOW) != 0) {
      if (errno == ENOENT) continue;
      return ErrnoError("cannot stat", path + "/" + n, errno);
    }
    if (S_ISDIR(est.st_mode)) {
      if (Status s = RemoveTreeAt(dir.get(), n, path + "/" + n, depth + 1, removed); !s.ok()) return s;
      continue;
    }
    if (::unlinkat(dir.get(), n.c_str(), 0) != 0 && errno != ENOENT)
      return ErrnoError("cannot remove", path + "/" + n, errno);
    if (removed) ++*removed;
  }
  if (::unlinkat(parent, name.c_str(), AT_REMOVEDIR) != 0 && errno != ENOENT)
    return ErrnoError("cannot remove directory", path, errno);
  if (removed) ++*removed;
  return OkStatus();
}

}  // namespace

Status MakeDirsBeneath(const std::string& root, const std::string& relative) {
  auto names = NamesBeneath(root, relative, "create");
  if (!names.ok()) return names.status();
  Fd dir(::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir.get() < 0) return ErrnoError("cannot open directory", root, errno);
  std::string at = root;
  for (const std::string& name : *names) {
    at += "/" + name;
    if (::mkdirat(dir.get(), name.c_str(), 0755) != 0 && errno != EEXIST)
      return ErrnoError("cannot create directory", at, errno);
    Fd next(::openat(dir.get(), name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (next.get() < 0) {
      if (errno == ELOOP || errno == ENOTDIR)
        return FailedPreconditionError("cannot create directory " + root + "/" + relative + ": " + at +
                                       " is a symbolic link or not a directory; remove it");
      return ErrnoError("cannot open directory", at, errno);
    }
    dir.Reset(next.Release());
  }
  return OkStatus();
}

Status RemoveBeneath(const std::string& root, const std::string& relative, int64_t* removed) {
  if (removed) *removed = 0;
  auto names = NamesBeneath(root, relative, "remove");  // nothing is touched for a bad path
  if (!names.ok()) return names.status();
  Fd dir(::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir.get() < 0) return ErrnoError("cannot open directory", root, errno);
  std::string at = root;
  for (size_t i = 0; i < names->size(); ++i) {
    const std::string& name = (*names)[i];
    at += "/" + name;
    struct stat st {};
    if (::fstatat(dir.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
      if (errno == ENOENT) return OkStatus();  // nothing there: already removed
      return ErrnoError("cannot stat", at, errno);
    }
    if (i + 1 == names->size()) {
      if (S_ISDIR(st.st_mode)) return RemoveTreeAt(dir.get(), name, at, 1, removed);
      // A link or a file where the directory was: remove that entry itself.
      if (::unlinkat(dir.get(), name.c_str(), 0) != 0 && errno != ENOENT)
        return ErrnoError("cannot remove", at, errno);
      if (removed) ++*removed;
      return OkStatus();
    }
    Fd next(S_ISDIR(st.st_mode)
                ? ::openat(dir.get(), name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                : -1);
    if (next.get() < 0) {
      if (!S_ISDIR(st.st_mode) || errno == ELOOP || errno == ENOTDIR)
        return FailedPreconditionError("cannot remove " + root + "/" + relative + ": " + at +
                                       " is a symbolic link or not a directory; nothing was removed");
      return ErrnoError("cannot open directory", at, errno);
    }
    dir.Reset(next.Release());
  }
  return OkStatus();  // not reached: the last name returns above
}

StatusOr<FileId> StatFileId(const std::string& path, const std::string& what) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return NotFoundError(what + " " + path + " does not exist");
    return UnavailableError("cannot stat " + what + " " + path + ": " + std::strerror(errno));
  }
  FileId id;
  id.dev = st.st_dev;
  id.ino = st.st_ino;
  id.size = st.st_size;
  id.mtime_ns = static_cast<int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec;
  return id;
}

}  // namespace fedge
