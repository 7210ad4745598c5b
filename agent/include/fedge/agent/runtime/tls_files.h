// The agent's TLS credential files (--tls-ca, --tls-cert, --tls-key) and their
// rotation (issue 10 item 8).
//
// In a cluster the files are a mounted Secret that the operator renews before the
// client certificate expires (a third of its lifetime before); the kubelet then
// swaps the volume's ..data symlink, so every file changes at once. gRPC reads a
// channel's credentials once, when the channel is made, and uses them for every
// later handshake: an agent that kept its first channel would present the old
// certificate on its next connection, and after expiry never connect again.
// TlsFiles re-reads the files (no thread: the client's loop asks) and, when they
// changed, the client dials again; RPCs in flight finish on the old channel.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "fedge/agent/runtime/aggregator_client.h"
#include "fedge/status.h"

namespace fedge::agent {

// How often fedge-agent looks at its TLS files (three small reads), between the
// tasks of its client loop. The operator renews a certificate a third of its
// lifetime before expiry (8 h of the default 24 h); the kubelet's Secret
// propagation (up to a minute or two), this interval and one training task must
// fit in that third.
inline constexpr std::chrono::milliseconds kTlsReloadInterval{10'000};

struct TlsFilePaths {
  std::string ca;           // --tls-ca (required)
  std::string cert;         // --tls-cert (optional, with key)
  std::string key;          // --tls-key
  std::string server_name;  // --tls-server-name (not a file; copied into ChannelTls)
};

bool operator==(const ChannelTls& a, const ChannelTls& b);

class TlsFiles {
 public:
  using Clock = std::function<std::chrono::steady_clock::time_point()>;

  // Reads the files. INVALID_ARGUMENT naming the flag (--tls-ca, --tls-cert,
  // --tls-key) of a file that cannot be read or is empty, or of a key given
  // without its certificate. `min_interval`: Reload looks at most this often.
  static StatusOr<std::unique_ptr<TlsFiles>> Open(TlsFilePaths paths, std::chrono::milliseconds min_interval,
                                                  Clock clock = std::chrono::steady_clock::now);

  // The credentials last read. Thread-safe (a copy).
  ChannelTls Current() const;

  // At most once per min_interval: reads the files again; true when their contents
  // changed (Current() is then the new set). A file that cannot be read, or two
  // reads in a row that differ (the swap happened between them), keeps the
  // previous set and returns false; the next call looks again. Thread-safe.
  bool Reload();

  int64_t reloads() const;  // successful changes since Open

 private:
  TlsFiles(TlsFilePaths paths, std::chrono::milliseconds min_interval, Clock clock)
      : paths_(std::move(paths)), min_interval_(min_interval), clock_(std::move(clock)) {}
  StatusOr<ChannelTls> Read() const;

  const TlsFilePaths paths_;
  const std::chrono::milliseconds min_interval_;
  const Clock clock_;
  mutable std::mutex mu_;
  ChannelTls current_;                            // guarded by mu_
  std::chrono::steady_clock::time_point last_{};  // guarded by mu_
  int64_t reloads_ = 0;                           // guarded by mu_
};

// A redialer for AggregatorClient::SetRedialer: a new channel to `address` with
// the new credentials whenever `files` changed, else null.
AggregatorClient::Redialer RedialOnTlsChange(std::string address, std::shared_ptr<TlsFiles> files);

}  // namespace fedge::agent
