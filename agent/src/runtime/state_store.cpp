#include "fedge/agent/runtime/state_store.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>

#include <nlohmann/json.hpp>

#include "fedge/file_util.h"
#include "fedge/safetensors.h"

namespace fedge::agent {

StateStore::StateStore(std::string dir, std::string job) : dir_(std::move(dir)), job_(std::move(job)) {}

std::string StateStore::GlobalPath() const { return dir_ + "/global.safetensors"; }
std::string StateStore::FeedbackPath() const { return dir_ + "/feedback.jsonl"; }
std::string StateStore::ResidualPath() const { return dir_ + "/error-feedback.safetensors"; }

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

Status StateStore::AppendFeedback(const std::string& text, const std::string& label, int64_t ts_ms) {
  std::lock_guard<std::mutex> lock(feedback_mu_);
  FEDGE_RETURN_IF_ERROR(MakeDirs(dir_));
  std::string line = nlohmann::json{{"text", text}, {"label", label}, {"ts_ms", ts_ms}}.dump() + "\n";
  int fd = ::open(FeedbackPath().c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) return UnavailableError("open " + FeedbackPath() + ": " + std::strerror(errno));
  size_t done = 0;
  while (done < line.size()) {
    ssize_t n = ::write(fd, line.data() + done, line.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      std::string err = std::strerror(errno);
      ::close(fd);
      return UnavailableError("write " + FeedbackPath() + ": " + err);
    }
    done += static_cast<size_t>(n);
  }
  // Feedback is user data: it must survive a crash right after the 200.
  int sync_rc = ::fdatasync(fd);
  ::close(fd);
  if (sync_rc != 0) return UnavailableError("fdatasync " + FeedbackPath() + ": " + std::strerror(errno));
  return OkStatus();
}

}  // namespace fedge::agent
