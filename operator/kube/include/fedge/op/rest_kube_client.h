// RestKubeClient: KubeClient over cpprestsdk's HTTP client. No cpprest type appears in
// this header (its U() macro breaks GoogleTest), so tests can include it freely.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>

#include "fedge/op/kube_client.h"
#include "fedge/op/kube_config.h"

namespace fedge::op {

struct RestClientOptions {
  std::chrono::milliseconds request_timeout{30000};  // every non-watch request
  std::string user_agent = "fedge-operator";
};

// With KubeConfig::ca_pem set a client trusts that CA alone (never the system bundle).
// cpprest gives every new connection its own SSL context and loads OpenSSL's default
// trust store into it before that store is replaced: the system CA bundle, ~140
// certificates and tens of milliseconds of CPU per connection with OpenSSL 3 (a fifth
// of fedge_bench_operator's CPU). This points SSL_CERT_FILE at /dev/null, also when it
// was set (a bundle named there would be loaded per connection and then replaced all
// the same: it was, on a machine that sets it, 13% of the bench's CPU), so that load
// reads nothing. Process-wide: call it once at start-up, before other threads read the
// environment, in a process whose TLS peers all come with their own CA (fedge-operator
// with a kubeconfig or in-cluster CA).
void SkipSystemTrustStoreLoad();

class RestKubeClient : public KubeClient {
 public:
  RestKubeClient(KubeConfig config, RestClientOptions options = {});
  ~RestKubeClient() override;

  StatusOr<Json> Get(const Resource& r, const std::string& ns, const std::string& name,
                     const std::string& subresource) override;
  StatusOr<ListResult> List(const Resource& r, const std::string& ns, const ListOptions& opts) override;
  Status Watch(const Resource& r, const std::string& ns, const WatchOptions& opts,
               const std::function<void(const WatchEvent&)>& on_event, WatchCancel* cancel) override;
  StatusOr<Json> Create(const Resource& r, const std::string& ns, const Json& obj) override;
  StatusOr<Json> Update(const Resource& r, const std::string& ns, const Json& obj,
                        const std::string& subresource) override;
  StatusOr<Json> Apply(const Resource& r, const std::string& ns, const std::string& name, const Json& obj,
                       const ApplyOptions& opts) override;
  StatusOr<Json> MergePatch(const Resource& r, const std::string& ns, const std::string& name,
                            const Json& patch, const std::string& subresource) override;
  Status Delete(const Resource& r, const std::string& ns, const std::string& name,
                const DeleteOptions& opts) override;

  // Requests sent so far (for benchmarks: API requests per reconcile).
  StatusOr<Json> GetPath(const std::string& path) override;
  int64_t requests() const { return requests_.load(); }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::atomic<int64_t> requests_{0};
};

// GET `url` (plain HTTP) and parse the JSON body; for talking to the aggregator on the
// pod's loopback. Errors: UNAVAILABLE (connection), DEADLINE_EXCEEDED, or the HTTP status.
StatusOr<Json> HttpGetJson(const std::string& url, std::chrono::milliseconds timeout);

}  // namespace fedge::op
