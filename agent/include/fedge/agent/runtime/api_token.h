// Bearer-token authentication for the agent's inference API (--api-token-file,
// env FEDGE_API_TOKEN_FILE). The operator mounts a Secret at that path; the
// kubelet rotates it by an atomic symlink swap, so the file is re-read when it
// changes and a rotated-out token stops working without a restart.
//
// File format: one token per line; surrounding whitespace is dropped, blank
// lines and lines starting with '#' are ignored, and a line holding whitespace
// inside the token is an error. Every listed token is accepted, so a rotation
// can list the new token next to the old one while clients move over.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "fedge/file_util.h"
#include "fedge/status.h"

namespace fedge::agent {

// Parses the file format above. INVALID_ARGUMENT naming the line for a token
// with inner whitespace or control characters, and when no token is listed.
StatusOr<std::vector<std::string>> ParseApiTokens(const std::string& text);

// Extracts <token> from an "Authorization: Bearer <token>" header value (scheme
// case-insensitive, RFC 7235); empty if the value is not of that form.
std::string BearerToken(std::string_view authorization);

class ApiTokenFile {
 public:
  // Reads the file once. NOT_FOUND if it does not exist, INVALID_ARGUMENT if it
  // lists no token or a malformed one; messages name the path. The file is
  // looked at again (stat, following symlinks: device, inode, size, mtime) at
  // most once per `min_recheck` and re-read when any of those changed.
  static StatusOr<std::unique_ptr<ApiTokenFile>> Open(
      std::string path, std::chrono::milliseconds min_recheck = std::chrono::seconds(1));

  // True when `presented` equals one of the tokens. The comparison takes the
  // same time whatever the presented bytes and length are (both sides are
  // hashed to SHA-256 first, then compared without early exit). A changed file
  // that cannot be read or parsed is logged and ignored: the previous tokens
  // stay in force (a half-written hand edit must not lock every client out).
  // Thread-safe.
  bool Matches(std::string_view presented);

  int64_t reloads() const;  // successful re-reads after Open
  const std::string& path() const { return path_; }

 private:
  ApiTokenFile(std::string path, std::chrono::milliseconds min_recheck)
      : path_(std::move(path)), min_recheck_(min_recheck) {}
  static StatusOr<FileId> Stat(const std::string& path);
  static StatusOr<std::vector<std::string>> Load(const std::string& path);
  void MaybeReloadLocked();  // requires mu_

  const std::string path_;
  const std::chrono::milliseconds min_recheck_;
  mutable std::mutex mu_;
  std::vector<std::string> token_digests_;           // guarded by mu_; hex SHA-256 of each token
  FileId id_;                                        // guarded by mu_
  std::chrono::steady_clock::time_point last_stat_;  // guarded by mu_
  int64_t reloads_ = 0;                              // guarded by mu_
};

}  // namespace fedge::agent
