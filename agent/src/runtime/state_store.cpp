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
std::string StateStore::ScaffoldControlPath() const { return dir_ + "/scaffold-control.safetensors"; }
std::string StateStore::JobUidPath() const { return dir_ + "/job-uid.json"; }

Status StateStore::SaveGlobal(const TensorBundle& bundle, int64_t version, const std::string& checksum,
                              bool final) {
  FEDGE_RETURN_IF_ERROR(MakeDirs(dir_));
  std::map<std::string, std::string> metadata = {{"job", job_},
                                                 {"version", std::to_string(version)},
                                                 {"checksum", checksum},
                                                 {"format", "fedge-global"}};
  if (final) metadata["final"] = "true";
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
  g.final = metadata["final"] == "true";
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
  for (const std::string& path :
       {GlobalPath(), FeedbackPath(), ResidualPath(), ResidualPath() + ".json", ScaffoldControlPath()}) {
    if (::unlink(path.c_str()) == 0) {
      binding.discarded.push_back(path);
    } else if (errno != ENOENT) {
      return UnavailableError(Errno("cannot remove the previous run's", path) +
                              "; fix the state directory's permissions or remove the file by hand");
    }
  }
  if (!binding.discarded.empty()) {
    {
      std::lock_guard<std::mutex> lock(feedback_mu_);
      feedback_loaded_ = false;  // read again (now: nothing) on next use
    }
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

std::string FeedbackLine(const FeedbackEntry& e) {
  nlohmann::json j = e.generative() ? nlohmann::json{{"prompt", e.text}, {"completion", e.completion}}
                                    : nlohmann::json{{"text", e.text}, {"label", e.label}};
  j["ts_ms"] = e.ts_ms;
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

std::string FeedbackKey(const FeedbackEntry& e) {
  // The parts cannot hold the separator's role ambiguously: the kind comes
  // first and the first part's length is spelled out.
  return (e.generative() ? "g" : "c") + std::to_string(e.text.size()) + ":" + e.text + "\n" +
         (e.generative() ? e.completion : e.label);
}

namespace {

// One line of feedback.jsonl as an entry; nullopt when it is not one.
std::optional<FeedbackEntry> ParseFeedbackLine(const std::string& line) {
  nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return std::nullopt;
  FeedbackEntry e;
  auto str = [&](const char* key, std::string* out) {
    if (!j.contains(key) || !j[key].is_string()) return false;
    *out = j[key].get<std::string>();
    return true;
  };
  if (str("prompt", &e.text)) {
    if (!str("completion", &e.completion) || e.completion.empty()) return std::nullopt;
  } else if (!str("text", &e.text) || !str("label", &e.label) || e.label.empty()) {
    return std::nullopt;
  }
  if (e.text.empty()) return std::nullopt;
  if (j.contains("ts_ms") && j["ts_ms"].is_number_integer()) e.ts_ms = j["ts_ms"].get<int64_t>();
  return e;
}

}  // namespace

Status StateStore::LoadFeedbackLocked() {
  if (feedback_loaded_) return OkStatus();
  const std::string path = FeedbackPath();
  Fd f;
  f.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  std::string text;
  if (f.fd < 0) {
    if (errno != ENOENT) return UnavailableError(Errno("open", path));
  } else {
    struct stat st {};
    if (::fstat(f.fd, &st) != 0) return UnavailableError(Errno("fstat", path));
    if (!S_ISREG(st.st_mode)) return FailedPreconditionError(path + " is not a regular file");
    text.resize(static_cast<size_t>(st.st_size));
    size_t done = 0;
    while (done < text.size()) {
      ssize_t n = ::read(f.fd, text.data() + done, text.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return UnavailableError(Errno("read", path));
      if (n == 0) break;
      done += static_cast<size_t>(n);
    }
    text.resize(done);
  }
  std::deque<FeedbackEntry> entries;
  std::unordered_set<std::string> keys;
  size_t lines = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(pos, end - pos);
    pos = end + 1;
    if (line.empty()) continue;
    ++lines;
    std::optional<FeedbackEntry> e = ParseFeedbackLine(line);
    if (!e) continue;
    // Replays AddFeedback: a line whose example is held is a duplicate; one
    // dropped by the cap before it was posted again is new again.
    if (!keys.insert(FeedbackKey(*e)).second) continue;
    entries.push_back(std::move(*e));
    while (entries.size() > options_.feedback_max_examples) {
      keys.erase(FeedbackKey(entries.front()));
      entries.pop_front();
    }
  }
  feedback_ = std::move(entries);
  feedback_keys_ = std::move(keys);
  feedback_lines_ = lines;
  feedback_loaded_ = true;
  return OkStatus();
}

StatusOr<uint64_t> StateStore::AppendFeedbackLineLocked(const std::string& line) {
  FEDGE_RETURN_IF_ERROR(MakeDirs(dir_));
  const std::string path = FeedbackPath();
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

StatusOr<uint64_t> StateStore::RewriteFeedbackLocked() {
  std::string bytes;
  for (const FeedbackEntry& e : feedback_) bytes += FeedbackLine(e);
  const std::string path = FeedbackPath();
  // Not WriteFileAtomic: its temp file would be 0644 & ~umask for a moment.
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  {
    Fd f;
    f.fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (f.fd < 0) return UnavailableError(Errno("open", tmp));
    if (::fchmod(f.fd, 0600) != 0) return UnavailableError(Errno("chmod 0600", tmp));
    size_t done = 0;
    while (done < bytes.size()) {
      ssize_t n = ::write(f.fd, bytes.data() + done, bytes.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        std::string err = Errno("write", tmp);
        ::unlink(tmp.c_str());
        return UnavailableError(err);
      }
      done += static_cast<size_t>(n);
    }
    if (::fdatasync(f.fd) != 0) {
      std::string err = Errno("fdatasync", tmp);
      ::unlink(tmp.c_str());
      return UnavailableError(err);
    }
  }
  // rename(2) replaces a symlink at `path` itself, never its target.
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    std::string err = Errno("rename to", path);
    ::unlink(tmp.c_str());
    return UnavailableError(err);
  }
  Fd d;
  d.fd = ::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (d.fd < 0 || ::fsync(d.fd) != 0) return UnavailableError(Errno("fsync directory", dir_));
  feedback_lines_ = feedback_.size();
  return bytes.size();
}

StatusOr<uint64_t> StateStore::AppendFeedback(const std::string& text, const std::string& label,
                                              int64_t ts_ms) {
  FeedbackEntry e;
  e.text = text;
  e.label = label;
  e.ts_ms = ts_ms;
  FEDGE_ASSIGN_OR_RETURN(FeedbackAdded added, AddFeedback(e));
  return added.log_bytes;
}

StatusOr<FeedbackAdded> StateStore::AddFeedback(const FeedbackEntry& entry) {
  if (!options_.feedback_enabled) {
    return FailedPreconditionError("feedback is disabled for this job (spec.feedback.enabled: false)");
  }
  std::lock_guard<std::mutex> lock(feedback_mu_);
  FEDGE_RETURN_IF_ERROR(LoadFeedbackLocked());
  FeedbackAdded out;
  std::string key = FeedbackKey(entry);
  if (feedback_keys_.count(key) > 0) {
    out.duplicate = true;
    out.examples = feedback_.size();
    struct stat st {};
    if (::lstat(FeedbackPath().c_str(), &st) == 0) out.log_bytes = static_cast<uint64_t>(st.st_size);
    return out;
  }
  const std::string line = FeedbackLine(entry);
  // Dropped or duplicate lines make room when the file nears a cap.
  if (feedback_lines_ > feedback_.size() && (feedback_lines_ >= 2 * options_.feedback_max_examples || [&] {
        struct stat st {};
        return ::lstat(FeedbackPath().c_str(), &st) == 0 &&
               static_cast<uint64_t>(st.st_size) + line.size() > options_.feedback_max_bytes;
      }())) {
    FEDGE_RETURN_IF_ERROR(RewriteFeedbackLocked().status());
  }
  FEDGE_ASSIGN_OR_RETURN(out.log_bytes, AppendFeedbackLineLocked(line));
  ++feedback_lines_;
  feedback_.push_back(entry);
  feedback_keys_.insert(std::move(key));
  while (feedback_.size() > options_.feedback_max_examples) {
    feedback_keys_.erase(FeedbackKey(feedback_.front()));
    feedback_.pop_front();
    ++out.dropped;
  }
  out.examples = feedback_.size();
  return out;
}

StatusOr<std::vector<FeedbackEntry>> StateStore::Feedback() {
  std::lock_guard<std::mutex> lock(feedback_mu_);
  FEDGE_RETURN_IF_ERROR(LoadFeedbackLocked());
  return std::vector<FeedbackEntry>(feedback_.begin(), feedback_.end());
}

}  // namespace fedge::agent
