// POSIX file helpers. WriteFileAtomic follows the classic recipe (write a temp
// file in the same directory, fsync it, rename it over the target, fsync the
// directory) so a crash or power loss leaves either the old or the new file.
#include "fedge/file_util.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <utility>

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

Status MakeDirsBeneath(const std::string& root, const std::string& relative) {
  Fd dir(::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir.get() < 0) return ErrnoError("cannot open directory", root, errno);
  std::string at = root;
  size_t pos = 0;
  while (true) {
    const size_t slash = relative.find('/', pos);
    const std::string name =
        relative.substr(pos, slash == std::string::npos ? std::string::npos : slash - pos);
    if (name.empty() || name == "." || name == "..")
      return InvalidArgumentError("cannot create " + root + "/" + relative + " beneath " + root +
                                  ": the path must be names separated by single slashes (no \"" + name +
                                  "\")");
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
    if (slash == std::string::npos) return OkStatus();
    dir.Reset(next.Release());
    pos = slash + 1;
  }
}

}  // namespace fedge
