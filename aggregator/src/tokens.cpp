#include "fedge/aggregator/tokens.h"

#include <openssl/rand.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <sstream>

#include "fedge/file_util.h"
#include "fedge/log.h"

namespace fedge::aggregator {

StatusOr<TokenMap> ParseTokens(const std::string& text) {
  TokenMap tokens;
  std::istringstream in(text);
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    std::istringstream fields(line);
    std::string id, token, extra;
    if (!(fields >> id) || id[0] == '#') continue;
    if (!(fields >> token) || (fields >> extra)) {
      return InvalidArgumentError("tokens line " + std::to_string(n) + ": expected \"agent-id token\"");
    }
    if (!tokens.emplace(id, token).second) {
      return InvalidArgumentError("tokens line " + std::to_string(n) + ": agent \"" + id + "\" listed twice");
    }
  }
  return tokens;
}

StatusOr<TokenMap> LoadTokens(const std::string& path) {
  FEDGE_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  auto tokens = ParseTokens(text);
  if (!tokens.ok()) return tokens.status().WithContext(path);
  return tokens;
}

bool TokenMatches(const std::string& expected, const std::string& presented) {
  if (expected.size() != presented.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < expected.size(); ++i) {
    diff |= static_cast<unsigned char>(expected[i] ^ presented[i]);
  }
  return diff == 0;
}

std::string NewSessionId() {
  unsigned char bytes[kSessionIdBits / 8];
  if (RAND_bytes(bytes, sizeof(bytes)) != 1) {
    // Without a working CSPRNG every session would be guessable: stop.
    log::Error("RAND_bytes failed: cannot make a session id; aborting");
    std::abort();
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string id;
  id.reserve(2 * sizeof(bytes));
  for (unsigned char b : bytes) {
    id.push_back(kHex[b >> 4]);
    id.push_back(kHex[b & 15]);
  }
  return id;
}

StatusOr<FileId> TokenFile::Stat(const std::string& path) { return StatFileId(path, "tokens file"); }

StatusOr<std::unique_ptr<TokenFile>> TokenFile::Open(std::string path, const Clock* clock,
                                                     int64_t min_recheck_ms) {
  std::unique_ptr<TokenFile> f(new TokenFile(std::move(path), clock, min_recheck_ms));
  // Stat before reading: a swap between the two then shows up as a change later.
  auto id = Stat(f->path_);
  if (!id.ok()) return NotFoundError(id.status().message());
  FEDGE_ASSIGN_OR_RETURN(f->tokens_, LoadTokens(f->path_));
  if (f->tokens_.empty()) {
    return InvalidArgumentError("tokens file " + f->path_ + " lists no agents: every Join would fail");
  }
  f->id_ = *id;
  f->last_check_ms_ = clock->NowUnixMs();
  return f;
}

bool TokenFile::RefreshLocked() {
  last_check_ms_ = clock_->NowUnixMs();
  auto id = Stat(path_);
  if (!id.ok() || *id == id_) return false;
  auto tokens = LoadTokens(path_);
  if (!tokens.ok() || tokens->empty()) {
    // A half-written file (not the kubelet's way, but a hand-edited one) must not
    // lock out agents that already hold valid tokens; look again next time.
    log::Warn("ignoring the changed tokens file; keeping the previous tokens",
              {{"path", path_},
               {"error", tokens.ok() ? std::string("it lists no agents") : tokens.status().ToString()}});
    return false;
  }
  id_ = *id;
  const size_t before = tokens_.size();
  tokens_ = std::move(*tokens);
  ++reloads_;
  log::Info("tokens file reloaded", {{"path", path_},
                                     {"agents", static_cast<int64_t>(tokens_.size())},
                                     {"before", static_cast<int64_t>(before)}});
  return true;
}

bool TokenFile::Refresh() {
  std::lock_guard<std::mutex> lock(mu_);
  return RefreshLocked();
}

void TokenFile::MaybeRefreshLocked() {
  // The rate limit bounds the stat()s a stream of requests can cause.
  if (clock_->NowUnixMs() - last_check_ms_ >= min_recheck_ms_) RefreshLocked();
}

bool TokenFile::Listed(const std::string& agent) {
  std::lock_guard<std::mutex> lock(mu_);
  MaybeRefreshLocked();
  return tokens_.count(agent) > 0;
}

Status TokenFile::Check(const std::string& agent, const std::string& presented) {
  std::lock_guard<std::mutex> lock(mu_);
  // Also for agents we know: their token may have been removed (revoked).
  MaybeRefreshLocked();
  auto it = tokens_.find(agent);
  if (it == tokens_.end()) {
    return UnavailableError("agent \"" + agent +
                            "\" is not listed in the tokens file (yet); a new node's token reaches the "
                            "aggregator when its Secret volume is updated - retry");
  }
  if (!TokenMatches(it->second, presented)) {
    return UnauthenticatedError("agent \"" + agent + "\" presented a wrong token");
  }
  return OkStatus();
}

size_t TokenFile::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return tokens_.size();
}

int64_t TokenFile::reloads() const {
  std::lock_guard<std::mutex> lock(mu_);
  return reloads_;
}

}  // namespace fedge::aggregator
