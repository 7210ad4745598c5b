// Agent tokens file: one "agent-id token" pair per line; blank lines and lines
// starting with '#' are ignored.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "fedge/aggregator/clock.h"
#include "fedge/file_util.h"
#include "fedge/status.h"

namespace fedge::aggregator {

using TokenMap = std::map<std::string, std::string>;  // agent id -> token

// INVALID_ARGUMENT naming the line for a malformed or duplicate entry.
StatusOr<TokenMap> ParseTokens(const std::string& text);
StatusOr<TokenMap> LoadTokens(const std::string& path);

// Constant-time comparison of a presented token with the expected one.
bool TokenMatches(const std::string& expected, const std::string& presented);

// Bits of a session id (see NewSessionId).
inline constexpr int kSessionIdBits = 128;

// A new session id: kSessionIdBits from OpenSSL's CSPRNG (RAND_bytes) as
// kSessionIdBits / 4 lowercase hex digits. Knowing any number of earlier ids
// tells nothing about the next one (the ids of the old mt19937_64 generator,
// seeded with 32 bits, gave its state away after 156 Joins). Thread-safe.
// Aborts the process if the CSPRNG fails: there is no weaker fallback.
std::string NewSessionId();

// A tokens file that may change while the aggregator runs. The operator adds a
// token to the job's Secret when a node joins the selector, and the kubelet
// updates the mounted file by an atomic symlink swap some time later, so an
// agent of a new node may present its token before the file has it.
//
// The operator also removes a node's token when the node leaves the job's
// selector (revocation, issue 10 item 8), so Check() and Listed() stat the file
// (device, inode, size, mtime, following symlinks) at most once per
// `min_recheck_ms` of the injected clock, whoever asks, and re-read it when any
// of those changed: a removed token stops working within that interval plus the
// kubelet's volume update. (It used to look only for unknown agents, so a
// removed agent was admitted from memory forever.) A changed file that does not
// parse or lists no agents is logged and ignored: the previous tokens stay in
// force. Thread-safe.
class TokenFile {
 public:
  // Reads the file once. INVALID_ARGUMENT for a malformed or empty file,
  // NOT_FOUND/... from reading it. `clock` must outlive the object.
  static StatusOr<std::unique_ptr<TokenFile>> Open(std::string path, const Clock* clock,
                                                   int64_t min_recheck_ms = 1000);

  // OK when `presented` is `agent`'s token. UNAUTHENTICATED when the agent is
  // listed with another token (not retryable: the agent holds a wrong secret).
  // UNAVAILABLE when the agent is not listed even after looking at the file
  // again: the Secret may not have reached this pod yet, so the agent should
  // retry with backoff rather than give up.
  Status Check(const std::string& agent, const std::string& presented);

  // True when `agent` is listed (its token has not been removed). Looks at the
  // file as Check does. The server asks this on every request of a session, so
  // a revoked agent's session ends with its token.
  bool Listed(const std::string& agent);

  // Looks at the file now (ignoring the rate limit) and re-reads it if it
  // changed. Returns whether new tokens were installed.
  bool Refresh();

  size_t size() const;
  int64_t reloads() const;  // successful re-reads after Open
  const std::string& path() const { return path_; }

 private:
  TokenFile(std::string path, const Clock* clock, int64_t min_recheck_ms)
      : path_(std::move(path)), clock_(clock), min_recheck_ms_(min_recheck_ms) {}
  static StatusOr<FileId> Stat(const std::string& path);
  bool RefreshLocked();  // requires mu_
  // RefreshLocked when min_recheck_ms passed since the last look.
  void MaybeRefreshLocked();  // requires mu_

  const std::string path_;
  const Clock* const clock_;
  const int64_t min_recheck_ms_;
  mutable std::mutex mu_;
  TokenMap tokens_;            // guarded by mu_
  FileId id_;                  // guarded by mu_
  int64_t last_check_ms_ = 0;  // guarded by mu_
  int64_t reloads_ = 0;        // guarded by mu_
};

}  // namespace fedge::aggregator
