#include "fedge/agent/runtime/state_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>

#include <nlohmann/json.hpp>

#include "fedge/file_util.h"
#include "fedge/safetensors.h"

namespace fedge::agent {

StateStore::StateStore(std::string dir, std::string job, StateStoreOptions options)
    : dir_(std::move(dir)), job_(std::move(job)), options_(options) {}

std::string StateStore::GlobalPath() const { return dir_ + "/global.safetensors"; }
std::string StateStore::FeedbackPath() const { return dir_ + "/feedback.jsonl"; }
std::string StateStore::ResidualPath() const { return dir_ + "/error-feedback.safetensors"; }
std::string StateStore::JobUidPath() const { return dir_ + "/job-uid.json"; }

Status StateStore::SaveGlobal(const TensorBundle& bundle, int64_t version, const std::string& checksum) {
  FEDGE_RETURN_IF_ERROR(MakeDirs(dir_));
  std::map<std::string, std::string> metadata = {{"job", job_},
                                                 {"version", std::to_string(version)},
                                                 {"checksum", checksum},
                                                 {"format", "fedge-global"}};
  FEDGE_ASSIGN_OR_RETURN(std::string bytes, SerializeSafetensors(bundle, metadata));
  return WriteFileAtomic(GlobalPath(), bytes);
}

StatusOr<std::optional<PersistedGlobal>> StateStore::LoadGlobal() const {
  std::error_code ec;
  if (!std::filesystem::exists(GlobalPath(), ec)) return std::optional<PersistedGlobal>();
  std::map<std::string, std::string> metadata;
  auto bundle = ReadSafetensorsBundle(GlobalPath(), &metadata);
  if (!bundle.ok()) return DataLossError(bundle.status().message()).WithContext(GlobalPath());
  if (metadata["job"] != job_) return std::optional<PersistedGlobal>();
  PersistedGlobal g;
  g.bundle = std::move(bundle).value();
  g.checksum = metadata["checksum"];
  try {
    g.version = std::stoll(metadata["version"]);
  } catch (const std::exception&) {
    return DataLossError(GlobalPath() + ": metadata version \"" + metadata["version"] + "\" is not a number");
  }
  if (g.version <= 0) return DataLossError(GlobalPath() + ": metadata version must be positive");
  return std::optional<PersistedGlobal>(std::move(g));
}

namespace {

std::string Errno(const std::string& what, const std::string& path) {
  return what + " " + path + ": " + std::strerror(errno);
}

// Closes the descriptor on every return path.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

// The uid recorded in `path`; empty when there is none or it cannot be read
// as one (not a regular file, e.g. a symlink; malformed): either way the
// state beside it cannot be shown to be this run's.
std::string ReadRecordedUid(const std::string& path) {
  Fd f;
  f.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (f.fd < 0) return "";
  struct stat st {};
  if (::fstat(f.fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > 4096) return "";
  std::string text(static_cast<size_t>(st.st_size), '\0');
  size_t done = 0;
  while (done < text.size()) {
    ssize_t n = ::read(f.fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return "";
    done += static_cast<size_t>(n);
  }
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("uid") || !j["uid"].is_string()) return "";
  return j["uid"].get<std::string>();
}

}  // namespace

StatusOr<JobUidBinding> StateStore::BindJobUid(const std::string& job_uid) {
  if (job_uid.empty()) return InvalidArgumentError("the job uid is empty");
  for (unsigned char c : job_uid) {
    if (c < 0x20 || c == 0x7f) return InvalidArgumentError("the job uid contains a control character");
  }
  JobUidBinding binding;
  binding.previous_uid = ReadRecordedUid(JobUidPath());
  if (binding.previous_uid == job_uid) return binding;
  // Another run's (or an unattributable) state: remove it before anything
  // reads it. unlink(2) removes a symlink itself, never its target.
  for (const std::string& path : {GlobalPath(), FeedbackPath(), ResidualPath(), ResidualPath() + ".json"}) {
    if (::unlink(path.c_str()) == 0) {
      binding.discarded.push_back(path);
    } else if (errno != ENOENT) {
      return UnavailableError(Errno("cannot remove the previous run's", path) +
                              "; fix the state directory's permissions or remove the file by hand");
    }
  }
  if (!binding.discarded.empty()) {
    // The removals reach the disk before the new uid does: a crash in between
    // must not leave old files under the new uid.
    Fd d;
    d.fd = ::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (d.fd < 0 || ::fsync(d.fd) != 0) return UnavailableError(Errno("fsync directory", dir_));
  }
  Status st = MakeDirs(dir_);
  if (st.ok())
    st = WriteFileAtomic(JobUidPath(), nlohmann::json{{"job", job_}, {"uid", job_uid}}.dump() + "\n");
  if (!st.ok()) return UnavailableError("cannot record the job uid: " + st.ToString());
  return binding;
}

StatusOr<uint64_t> StateStore::AppendFeedback(const std::string& text, const std::string& label,
                                              int64_t ts_ms) {
  std::lock_guard<std::mutex> lock(feedback_mu_);
  FEDGE_RETURN_IF_ERROR(MakeDirs(dir_));
  const std::string path = FeedbackPath();
  std::string line = nlohmann::json{{"text", text}, {"label", label}, {"ts_ms", ts_ms}}.dump(
                         -1, ' ', false, nlohmann::json::error_handler_t::replace) +
                     "\n";
  // O_EXCL tells whether this append creates the file.
  bool created = true;
  Fd f;
  f.fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (f.fd < 0 && errno == EEXIST) {
    created = false;
    f.fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC | O_NOFOLLOW);
  }
  if (f.fd < 0) return UnavailableError(Errno("open", path));
  if (created) {
    // The new name must reach the disk as well, or a crash loses the whole
    // file even after its data was synced.
    Fd d;
    d.fd = ::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (d.fd < 0 || ::fsync(d.fd) != 0) return UnavailableError(Errno("fsync directory", dir_));
  }
  struct stat st {};
  if (::fstat(f.fd, &st) != 0) return UnavailableError(Errno("fstat", path));
  if (!S_ISREG(st.st_mode)) return FailedPreconditionError(path + " is not a regular file");
  // Feedback is user text: readable by the agent's user only, also when an
  // older agent created the file 0644 or the umask was loose.
  if ((st.st_mode & 07777) != 0600 && ::fchmod(f.fd, 0600) != 0) {
    return UnavailableError(Errno("chmod 0600", path));
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size + line.size() > options_.feedback_max_bytes) {
    return ResourceExhaustedError("the feedback log holds " + std::to_string(size) + " bytes; this entry (" +
                                  std::to_string(line.size()) + " bytes) would pass its cap of " +
                                  std::to_string(options_.feedback_max_bytes) +
                                  " bytes (--feedback-max-bytes)");
  }
  size_t done = 0;
  while (done < line.size()) {
    ssize_t n = ::write(f.fd, line.data() + done, line.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      std::string err = Errno("write", path);
      // A torn line would break every later reader of the log: cut it off.
      if (done > 0 && ::ftruncate(f.fd, st.st_size) != 0)
        err += " (and the partial line could not be removed)";
      return UnavailableError(err);
    }
    done += static_cast<size_t>(n);
  }
  // Feedback is user data: it must survive a crash right after the 200.
  if (::fdatasync(f.fd) != 0) return UnavailableError(Errno("fdatasync", path));
  return size + line.size();
}

}  // namespace fedge::agent
