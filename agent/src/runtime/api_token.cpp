#include "fedge/agent/runtime/api_token.h"

#include <sys/stat.h>

#include <cctype>
#include <cerrno>
#include <cstring>
#include <sstream>

#include "fedge/file_util.h"
#include "fedge/log.h"
#include "fedge/tensor_bundle.h"

namespace fedge::agent {

namespace {

std::string_view TrimView(std::string_view s) {
  auto space = [](char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; };
  while (!s.empty() && space(s.front())) s.remove_prefix(1);
  while (!s.empty() && space(s.back())) s.remove_suffix(1);
  return s;
}

// Equal-length strings compared without an early exit.
bool SameBytes(const std::string& a, const std::string& b) {
  if (a.size() != b.size()) return false;  // never for two SHA-256 hex digests
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

}  // namespace

StatusOr<std::vector<std::string>> ParseApiTokens(const std::string& text) {
  std::vector<std::string> tokens;
  std::istringstream in(text);
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    std::string_view token = TrimView(line);
    if (token.empty() || token.front() == '#') continue;
    for (char c : token) {
      auto u = static_cast<unsigned char>(c);
      if (std::isspace(u) || std::iscntrl(u)) {
        return InvalidArgumentError("line " + std::to_string(n) +
                                    ": a token must not contain whitespace or control characters "
                                    "(one token per line)");
      }
    }
    tokens.emplace_back(token);
  }
  if (tokens.empty()) return InvalidArgumentError("lists no token: every API request would be refused");
  return tokens;
}

std::string BearerToken(std::string_view authorization) {
  std::string_view v = TrimView(authorization);
  constexpr std::string_view kScheme = "bearer";
  if (v.size() <= kScheme.size()) return "";
  for (size_t i = 0; i < kScheme.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(v[i])) != kScheme[i]) return "";
  }
  if (v[kScheme.size()] != ' ' && v[kScheme.size()] != '\t') return "";
  return std::string(TrimView(v.substr(kScheme.size())));
}

StatusOr<FileId> ApiTokenFile::Stat(const std::string& path) { return StatFileId(path, "API token file"); }

StatusOr<std::vector<std::string>> ApiTokenFile::Load(const std::string& path) {
  FEDGE_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  auto tokens = ParseApiTokens(text);
  if (!tokens.ok()) return tokens.status().WithContext("API token file " + path);
  std::vector<std::string> digests;
  for (const auto& t : *tokens) digests.push_back(Sha256Hex(t));
  return digests;
}

StatusOr<std::unique_ptr<ApiTokenFile>> ApiTokenFile::Open(std::string path,
                                                           std::chrono::milliseconds min_recheck) {
  std::unique_ptr<ApiTokenFile> f(new ApiTokenFile(std::move(path), min_recheck));
  // Stat before reading: a swap between the two then shows up as a change later.
  FEDGE_ASSIGN_OR_RETURN(f->id_, Stat(f->path_));
  FEDGE_ASSIGN_OR_RETURN(f->token_digests_, Load(f->path_));
  f->last_stat_ = std::chrono::steady_clock::now();
  return f;
}

void ApiTokenFile::MaybeReloadLocked() {
  auto now = std::chrono::steady_clock::now();
  if (now - last_stat_ < min_recheck_) return;
  last_stat_ = now;
  auto id = Stat(path_);
  if (!id.ok() || *id == id_) return;
  auto digests = Load(path_);
  if (!digests.ok()) {
    log::Warn("ignoring the changed API token file; keeping the previous tokens",
              {{"path", path_}, {"error", digests.status().ToString()}});
    return;
  }
  id_ = *id;
  token_digests_ = std::move(*digests);
  ++reloads_;
  log::Info("API token file reloaded",
            {{"path", path_}, {"tokens", static_cast<int64_t>(token_digests_.size())}});
}

bool ApiTokenFile::Matches(std::string_view presented) {
  const std::string digest = Sha256Hex(presented);
  std::lock_guard<std::mutex> lock(mu_);
  MaybeReloadLocked();
  bool match = false;
  for (const auto& expected : token_digests_) match |= SameBytes(expected, digest);
  return match && !presented.empty();
}

int64_t ApiTokenFile::reloads() const {
  std::lock_guard<std::mutex> lock(mu_);
  return reloads_;
}

}  // namespace fedge::agent
