#include "fedge/agent/runtime/tls_files.h"

#include "fedge/file_util.h"
#include "fedge/log.h"

namespace fedge::agent {

bool operator==(const ChannelTls& a, const ChannelTls& b) {
  return a.root_ca_pem == b.root_ca_pem && a.server_name == b.server_name && a.cert_pem == b.cert_pem &&
         a.key_pem == b.key_pem;
}

StatusOr<std::unique_ptr<TlsFiles>> TlsFiles::Open(TlsFilePaths paths, std::chrono::milliseconds min_interval,
                                                   Clock clock) {
  if (paths.ca.empty()) return InvalidArgumentError("--tls-ca is required for TLS");
  if (paths.cert.empty() != paths.key.empty())
    return InvalidArgumentError("give --tls-cert and --tls-key together");
  std::unique_ptr<TlsFiles> f(new TlsFiles(std::move(paths), min_interval, std::move(clock)));
  FEDGE_ASSIGN_OR_RETURN(f->current_, f->Read());
  f->last_ = f->clock_();
  return f;
}

StatusOr<ChannelTls> TlsFiles::Read() const {
  ChannelTls tls;
  tls.server_name = paths_.server_name;
  for (auto [flag, path, pem] : {std::tuple{"--tls-ca", &paths_.ca, &tls.root_ca_pem},
                                 std::tuple{"--tls-cert", &paths_.cert, &tls.cert_pem},
                                 std::tuple{"--tls-key", &paths_.key, &tls.key_pem}}) {
    if (path->empty()) continue;
    auto text = ReadFile(*path);
    if (!text.ok()) return InvalidArgumentError(std::string(flag) + ": " + text.status().message());
    if (text->empty()) return InvalidArgumentError(std::string(flag) + ": " + *path + " is empty");
    *pem = std::move(*text);
  }
  return tls;
}

ChannelTls TlsFiles::Current() const {
  std::lock_guard<std::mutex> lock(mu_);
  return current_;
}

int64_t TlsFiles::reloads() const {
  std::lock_guard<std::mutex> lock(mu_);
  return reloads_;
}

bool TlsFiles::Reload() {
  std::lock_guard<std::mutex> lock(mu_);
  auto now = clock_();
  if (now - last_ < min_interval_) return false;
  last_ = now;
  auto first = Read();
  if (!first.ok()) {
    // Mid-update, or the Secret is gone: keep what works until the files are back.
    log::Warn("TLS files unreadable; keeping the credentials in use", {{"error", first.status().ToString()}});
    return false;
  }
  if (*first == current_) return false;
  // The kubelet swaps all files at once, but our reads are one by one: a second
  // read that agrees shows no swap happened in between (else the key could belong
  // to another certificate than the one read before it).
  auto second = Read();
  if (!second.ok() || !(*second == *first)) {
    last_ = {};  // look again at the next call
    return false;
  }
  current_ = std::move(*first);
  ++reloads_;
  log::Info("TLS credentials changed; dialing the aggregator again with them",
            {{"ca", paths_.ca}, {"cert", paths_.cert}, {"reloads", reloads_}});
  return true;
}

AggregatorClient::Redialer RedialOnTlsChange(std::string address, std::shared_ptr<TlsFiles> files) {
  return [address = std::move(address), files = std::move(files)]() -> std::shared_ptr<grpc::Channel> {
    if (!files->Reload()) return nullptr;
    return AggregatorClient::Dial(address, files->Current());
  };
}

}  // namespace fedge::agent
