// fedge-agent's client against the real aggregator server over real gRPC, with a
// TCP proxy between them that drops the connection in the middle of an upload
// (an edge link going down): the agent must resume from the bytes the
// aggregator kept instead of sending the update again.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <future>
#include <mutex>
#include <thread>
#include <vector>

#include <grpcpp/channel.h>
#include <prometheus/counter.h>

#include "fake_classifier.h"
#include "fedge/agent/runtime/aggregator_client.h"
#include "fedge/agent/runtime/metrics.h"
#include "fedge/agent/runtime/serving_model.h"
#include "fedge/aggregator/server.h"
#include "fedge/job_spec.h"
#include "fedge/tensor_bundle.h"
#include "test_pki.h"

namespace fedge::agent {
namespace {

using testing::FakeClassifier;
using testing::TestLabels;

// Forwards 127.0.0.1:port() to 127.0.0.1:upstream. The first connection on
// which `cut_after` bytes went from client to server while `may_cut()` holds
// is reset (SO_LINGER 0), once. (Not simply the first connection: a connection
// attempt the client abandoned comes first and carries nothing.) `reply_delay`: server -> client bytes of
// each connection are held until that long after it was accepted (a slow link's handshake).
class CuttingProxy {
 public:
  CuttingProxy(int upstream, uint64_t cut_after, std::function<bool()> may_cut,
               std::chrono::milliseconds reply_delay = std::chrono::milliseconds(0))
      : upstream_(upstream), cut_after_(cut_after), may_cut_(std::move(may_cut)), reply_delay_(reply_delay) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    int one = 1;
    ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    EXPECT_EQ(::bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    EXPECT_EQ(::listen(listen_fd_, 16), 0);
    socklen_t len = sizeof a;
    ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    accept_thread_ = std::thread([this] { AcceptLoop(); });
  }
  ~CuttingProxy() {
    stop_ = true;
    ::shutdown(listen_fd_, SHUT_RDWR);
    ::close(listen_fd_);
    accept_thread_.join();
    for (auto& t : pumps_) t.join();
  }
  int port() const { return port_; }
  int cuts() const { return cuts_; }
  // Accept-order index of the connection that was cut; -1 before the cut.
  int cut_index() const { return cut_index_; }
  // Client -> server bytes forwarded on each connection, in accept order.
  std::vector<uint64_t> upstream_bytes() const {
    std::lock_guard<std::mutex> lock(mu_);
    return upstream_bytes_;
  }

 private:
  void AcceptLoop() {
    while (!stop_) {
      pollfd p{listen_fd_, POLLIN, 0};
      if (::poll(&p, 1, 100) <= 0) continue;
      int client = ::accept(listen_fd_, nullptr, nullptr);
      if (client < 0) continue;
      int server = ::socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      a.sin_port = htons(static_cast<uint16_t>(upstream_));
      if (::connect(server, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
        ::close(client);
        ::close(server);
        continue;
      }
      size_t index;
      {
        std::lock_guard<std::mutex> lock(mu_);
        index = upstream_bytes_.size();
        upstream_bytes_.push_back(0);
      }
      pumps_.emplace_back([this, client, server, index] { Pump(client, server, index); });
    }
  }

  void Pump(int client, int server, size_t index) {
    const auto replies_from = std::chrono::steady_clock::now() + reply_delay_;
    char buf[64 * 1024];
    uint64_t up = 0;
    bool reset = false;
    while (!stop_) {
      pollfd p[2] = {{client, POLLIN, 0}, {server, POLLIN, 0}};
      if (::poll(p, 2, 100) <= 0) continue;
      bool closed = false;
      for (int i = 0; i < 2 && !closed; ++i) {
        if (!(p[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
        const int from = i == 0 ? client : server, to = i == 0 ? server : client;
        ssize_t n = ::read(from, buf, sizeof buf);
        if (n <= 0) {
          closed = true;
          break;
        }
        size_t send = static_cast<size_t>(n);
        // The simulated link's latency, not a wait for a condition.
        if (i == 1) std::this_thread::sleep_until(replies_from);
        if (i == 0 && up + send >= cut_after_ && !cut_taken_.load() && may_cut_() &&
            !cut_taken_.exchange(true)) {
          cut_index_ = static_cast<int>(index);
          send = static_cast<size_t>(std::max<uint64_t>(cut_after_, up) - up);
          reset = true;
        }
        for (size_t off = 0; off < send;) {
          ssize_t w = ::write(to, buf + off, send - off);
          if (w <= 0) {
            closed = true;
            break;
          }
          off += static_cast<size_t>(w);
        }
        if (i == 0) {
          up += send;
          std::lock_guard<std::mutex> lock(mu_);
          upstream_bytes_[index] = up;
        }
        if (reset) closed = true;
      }
      if (closed) break;
    }
    if (reset) {
      ++cuts_;
      linger l{1, 0};  // RST, as when a link or NAT drops the flow
      ::setsockopt(client, SOL_SOCKET, SO_LINGER, &l, sizeof l);
      ::setsockopt(server, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    }
    ::close(client);
    ::close(server);
  }

  int upstream_;
  uint64_t cut_after_;
  std::function<bool()> may_cut_;
  std::chrono::milliseconds reply_delay_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> cuts_{0};
  std::atomic<bool> cut_taken_{false};
  std::atomic<int> cut_index_{-1};
  std::thread accept_thread_;
  std::vector<std::thread> pumps_;  // touched by the accept thread only until join
  mutable std::mutex mu_;
  std::vector<uint64_t> upstream_bytes_;
};

TEST(UploadResumeTest, AnInitialUploadCutByTheLinkResumesAgainstTheRealAggregator) {
  JobSpec spec;
  spec.name = "resume";
  spec.namespace_ = "default";
  spec.rounds.total = 1;
  spec.rounds.timeoutSeconds = 60;
  spec.agents.minAgents = 1;
  aggregator::ServerOptions so;
  so.grpc_address = "127.0.0.1:0";
  so.http_address = "";
  auto server = aggregator::AggregatorServer::Create(spec, so);
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  ASSERT_TRUE((*server)->Start().ok());

  // 1.5 M incompressible floats: a ~5 MB INITIALIZE upload in 256 KiB chunks;
  // the link drops after 2 MB of it went through, once the aggregator holds
  // some of it (its handler may start after the transport buffered data).
  constexpr int64_t kPadding = 1'500'000;
  const aggregator::ProtocolHandler& handler = (*server)->protocol();
  CuttingProxy proxy((*server)->grpc_port(), 2u << 20, [&] { return handler.partial_received_bytes() > 0; });
  FakeClassifier trainer(TestLabels(), kPadding);
  EncodeOptions eo;
  eo.codec = Codec::kFp32;  // what INITIALIZE sends
  auto payload = EncodeBundle(trainer.ExportTrainable(), eo);
  ASSERT_TRUE(payload.ok());
  ServingModel serving(std::make_unique<FakeClassifier>(TestLabels(), kPadding), "default/resume");
  AgentMetrics metrics;
  std::vector<Example> train, eval;
  for (int i = 0; i < 10; ++i) train.push_back({"text " + std::to_string(i), i % 3});
  for (int i = 0; i < 4; ++i) eval.push_back({"eval " + std::to_string(i), i % 3});
  ClientOptions o;
  o.job = "default/resume";
  o.agent_id = "agent-0";
  o.node_name = "node-0";
  o.backoff_initial = std::chrono::milliseconds(20);
  o.backoff_max = std::chrono::milliseconds(200);
  o.jitter_seed = 1;
  o.chunk_bytes = 256 << 10;
  ClientDeps d;
  d.trainer = &trainer;
  d.serving = &serving;
  d.metrics = &metrics;
  d.train_data = &train;
  d.eval_data = &eval;
  AggregatorClient client(AggregatorClient::Dial("127.0.0.1:" + std::to_string(proxy.port())), o, d);
  auto fut = std::async(std::launch::async, [&] { return client.Run(); });
  if (fut.wait_for(std::chrono::seconds(60)) != std::future_status::ready) {
    ADD_FAILURE() << "the job did not finish within 60 s; the aggregator holds " << (*server)->open_streams()
                  << " open streams and " << handler.partial_uploads() << " partial uploads ("
                  << handler.partial_received_bytes() << " bytes)";
    client.Stop();
  }
  auto outcome = fut.get();
  ASSERT_TRUE(outcome.ok()) << outcome.status().ToString();
  EXPECT_EQ(*outcome, RunOutcome::kDone);

  EXPECT_EQ(proxy.cuts(), 1);
  EXPECT_GE(metrics.upload_resumes_total.Value(), 1);
  // The real aggregator took the resumed bytes as the initial state and ran the job.
  auto st = (*server)->engine().GetStatus();
  EXPECT_EQ(aggregator::JobStateName(st.state), "Succeeded");
  EXPECT_EQ(serving.version(), 2);
  // Everything after the cut (the rest of the upload, the round, the evaluation)
  // crossed the link in less than one whole upload: nothing was sent twice.
  const std::vector<uint64_t> up = proxy.upstream_bytes();
  const int cut = proxy.cut_index();
  ASSERT_GE(cut, 0);
  ASSERT_GT(up.size(), static_cast<size_t>(cut) + 1);
  EXPECT_GE(up[cut], 2u << 20);
  EXPECT_LT(up[cut], payload->size());
  uint64_t after = 0;
  for (size_t i = cut + 1; i < up.size(); ++i) after += up[i];
  EXPECT_LT(after, payload->size()) << "the upload was sent again from the start";
  (*server)->Shutdown(std::chrono::milliseconds(500));
}

// Regression: Dial set GRPC_ARG_MIN_RECONNECT_BACKOFF_MS to 100 ms, which gRPC
// uses as the minimum connect timeout: a connection attempt whose TCP + TLS
// handshake took longer ("Handshake timed out") was abandoned and redone, each
// time with a new full handshake, until the backoff-grown deadline covered the
// link's latency. On a loaded host this test's first connection was abandoned
// that way, and the upload test then cut the wrong connection (1 failure in
// ~30 runs). Over a link that answers 400 ms late, one connection must do.
TEST(UploadResumeTest, ConnectsOverASlowTlsLinkWithOneHandshake) {
  testing::TestCert ca = testing::MakeCert("job-ca", nullptr);
  testing::TestCert serving = testing::MakeCert("aggregator", &ca, "DNS:aggregator.ns.svc");
  JobSpec spec;
  spec.name = "slow-link";
  spec.namespace_ = "default";
  spec.agents.minAgents = 1;
  aggregator::ServerOptions so;
  so.grpc_address = "127.0.0.1:0";
  so.http_address = "";
  so.tls_cert_pem = serving.cert_pem;
  so.tls_key_pem = serving.key_pem;
  auto server = aggregator::AggregatorServer::Create(spec, so);
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  ASSERT_TRUE((*server)->Start().ok());
  // Every reply of the aggregator, its TLS ServerHello first, 400 ms late.
  CuttingProxy proxy((*server)->grpc_port(), /*cut_after=*/UINT64_MAX, [] { return false; },
                     /*reply_delay=*/std::chrono::milliseconds(400));
  ChannelTls tls;
  tls.root_ca_pem = ca.cert_pem;
  tls.server_name = "aggregator.ns.svc";
  auto channel = AggregatorClient::Dial("127.0.0.1:" + std::to_string(proxy.port()), tls);
  EXPECT_TRUE(channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(20)))
      << "the channel never connected through a link that answers 400 ms late";
  EXPECT_EQ(proxy.upstream_bytes().size(), 1u)
      << "connection attempts were abandoned mid-handshake and redone";
  channel.reset();
  (*server)->Shutdown(std::chrono::milliseconds(500));
}

}  // namespace
}  // namespace fedge::agent
