// HttpServer against hostile and broken clients, over raw sockets on loopback. Each test
// reproduces an attack from issue 10 (slow clients, unbounded buffers, bad escapes) that
// froze or bloated the cpprest-based server, and checks the server keeps answering.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "fedge/http_server.h"

namespace fedge {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// A blocking loopback TCP client with a receive deadline.
class RawClient {
 public:
  explicit RawClient(int port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    ::inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  }
  ~RawClient() {
    if (fd_ >= 0) ::close(fd_);
  }
  RawClient(const RawClient&) = delete;
  RawClient& operator=(const RawClient&) = delete;

  bool connected() const { return connected_; }

  // False once the peer closed or reset the connection.
  bool Send(const std::string& data) {
    size_t off = 0;
    while (off < data.size()) {
      ssize_t n = ::send(fd_, data.data() + off, data.size() - off, MSG_NOSIGNAL);
      if (n <= 0) return false;
      off += static_cast<size_t>(n);
    }
    return true;
  }

  // Reads until the peer closes, `until` appears in what was read, or the deadline.
  std::string Receive(milliseconds deadline, const std::string& until = "") {
    std::string out;
    auto end = Clock::now() + deadline;
    while (Clock::now() < end) {
      pollfd p{fd_, POLLIN, 0};
      int left = static_cast<int>(std::chrono::duration_cast<milliseconds>(end - Clock::now()).count());
      if (::poll(&p, 1, std::max(left, 1)) <= 0) break;
      char buf[65536];
      ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
      if (n <= 0) {
        peer_closed_ = true;
        break;
      }
      out.append(buf, static_cast<size_t>(n));
      if (!until.empty() && out.find(until) != std::string::npos) break;
    }
    return out;
  }

  // Waits for the peer to close the connection; true when it did within `deadline`.
  bool WaitClosed(milliseconds deadline) {
    Receive(deadline);
    return peer_closed_;
  }

 private:
  int fd_ = -1;
  bool connected_ = false;
  bool peer_closed_ = false;
};

// One GET over a fresh connection; returns the whole response (Connection: close).
std::string Get(int port, const std::string& path, milliseconds deadline = milliseconds(2000)) {
  RawClient c(port);
  if (!c.connected()) return "";
  c.Send("GET " + path + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  return c.Receive(deadline);
}

int StatusOf(const std::string& response) {
  if (response.size() < 12 || response.compare(0, 5, "HTTP/") != 0) return 0;
  return std::stoi(response.substr(9, 3));
}

// A latch the tests use to hold handlers busy.
struct Gate {
  std::mutex mu;
  std::condition_variable cv;
  bool open = false;
  std::atomic<int> waiting{0};
  void Wait() {
    std::unique_lock<std::mutex> lock(mu);
    ++waiting;
    cv.wait(lock, [this] { return open; });
  }
  void Open() {
    std::lock_guard<std::mutex> lock(mu);
    open = true;
    cv.notify_all();
  }
};

class HostileClientTest : public ::testing::Test {
 protected:
  void StartServer(HttpServerOptions options) {
    server_ = std::make_unique<HttpServer>("127.0.0.1:0", std::move(options));
    server_->Handle("GET", "/healthz", [](const HttpRequest&) { return HttpResponse::Text(200, "ok"); });
    server_->Handle("POST", "/v1/classify", [this](const HttpRequest& r) {
      if (r.query.count("block")) gate_.Wait();
      return HttpResponse::Json(200, "{\"bytes\":" + std::to_string(r.body.size()) + "}");
    });
    server_->Handle("GET", "/v1/echo", [](const HttpRequest& r) {
      return HttpResponse::Json(200, "{\"q\":\"" + (r.query.count("q") ? r.query.at("q") : "") + "\"}");
    });
    server_->Handle("GET", "/v1/stream", [this](const HttpRequest&) {
      return HttpResponse::EventStream([this](HttpStreamWriter& w) {
        for (int i = 0;; ++i) {
          if (!w.Write("data: " + std::to_string(i) + "\n\n")) break;
          if (i == 2) {
            stream_sent_three_ = true;
          }
          if (i >= 2 && stop_stream_after_three_) break;
          std::this_thread::sleep_for(milliseconds(20));
        }
        std::lock_guard<std::mutex> lock(stream_mu_);
        stream_finished_ = true;
        stream_cv_.notify_all();
      });
    });
    ASSERT_TRUE(server_->Start().ok());
    port_ = server_->port();
  }

  void TearDown() override {
    gate_.Open();
    if (server_) server_->Stop();
  }

  std::unique_ptr<HttpServer> server_;
  int port_ = 0;
  Gate gate_;
  std::atomic<bool> stream_sent_three_{false};
  std::atomic<bool> stop_stream_after_three_{false};
  std::mutex stream_mu_;
  std::condition_variable stream_cv_;
  bool stream_finished_ = false;  // guarded by stream_mu_
};

// Regression (issue 10, item 1): ~40 connections that sent headers with
// Content-Length: 100 and one body byte blocked every cpprest thread for good.
TEST_F(HostileClientTest, SlowlorisWith250ConnectionsDoesNotStarveHealthOrInference) {
  StartServer({});
  std::vector<std::unique_ptr<RawClient>> slow;
  for (int i = 0; i < 250; ++i) {
    auto c = std::make_unique<RawClient>(port_);
    ASSERT_TRUE(c->connected()) << i;
    ASSERT_TRUE(c->Send("POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nx"));
    slow.push_back(std::move(c));
  }
  // Half of another 250 never finish their headers.
  for (int i = 0; i < 250; ++i) {
    auto c = std::make_unique<RawClient>(port_);
    ASSERT_TRUE(c->connected());
    ASSERT_TRUE(c->Send("GET /healthz HTTP/1.1\r\nHost: "));
    slow.push_back(std::move(c));
  }
  auto t0 = Clock::now();
  std::string health = Get(port_, "/healthz", milliseconds(1000));
  EXPECT_EQ(StatusOf(health), 200) << health;
  RawClient infer(port_);
  infer.Send("POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi");
  std::string answer = infer.Receive(milliseconds(1000));
  EXPECT_EQ(StatusOf(answer), 200) << answer;
  EXPECT_LT(Clock::now() - t0, milliseconds(1000));

  // And Stop() still returns promptly with all of them open.
  auto s0 = Clock::now();
  server_->Stop();
  EXPECT_LT(Clock::now() - s0, std::chrono::seconds(5));
}

// Regression (issue 10, item 2): idle half-requests were never timed out.
TEST_F(HostileClientTest, HalfSentHeadersAndBodiesAreTimedOut) {
  HttpServerOptions o;
  o.header_timeout = milliseconds(300);
  o.body_timeout = milliseconds(300);
  StartServer(o);
  RawClient header_trickle(port_);
  header_trickle.Send("GET /healthz HTTP/1.1\r\n");
  RawClient body_trickle(port_);
  body_trickle.Send("POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nx");
  // A client that trickles a header byte at a time still hits the total header deadline.
  RawClient drip(port_);
  auto t0 = Clock::now();
  bool drip_cut = false;
  while (Clock::now() - t0 < milliseconds(3000)) {
    if (!drip.Send("X")) {
      drip_cut = true;
      break;
    }
    std::this_thread::sleep_for(milliseconds(50));
  }
  EXPECT_TRUE(drip_cut || drip.WaitClosed(milliseconds(100)));
  EXPECT_TRUE(header_trickle.WaitClosed(milliseconds(2000)));
  EXPECT_TRUE(body_trickle.WaitClosed(milliseconds(2000)));
  EXPECT_EQ(server_->open_connections(), 0u);
}

// Regression (issue 10, item 2): a 200 MiB header line cost +205 MB.
TEST_F(HostileClientTest, OversizedHeadersGet431WithoutBuffering) {
  StartServer({});
  RawClient c(port_);
  c.Send("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ");
  std::string big(64 << 10, 'a');
  // The server answers and closes long before 200 MiB: stop sending when it does.
  size_t sent = 0;
  for (int i = 0; i < 3200 && c.Send(big); ++i) sent += big.size();
  std::string r = c.Receive(milliseconds(2000));
  EXPECT_EQ(StatusOf(r), 431) << r.substr(0, 200);
  EXPECT_NE(r.find("\"code\":\"headers_too_large\""), std::string::npos);
  EXPECT_LT(sent, size_t{200} << 20);
}

// Regression (issue 10, item 2): a chunked 100 MiB body was buffered whole before the 413.
TEST_F(HostileClientTest, ChunkedBodyOverLimitIsRefusedWhileStreaming) {
  HttpServerOptions o;
  o.max_body_bytes = 1 << 20;
  StartServer(o);
  RawClient c(port_);
  c.Send("POST /v1/classify HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
  std::string chunk = "10000\r\n" + std::string(0x10000, 'z') + "\r\n";
  size_t sent = 0;
  for (int i = 0; i < 1600 && c.Send(chunk); ++i) sent += 0x10000;  // up to 100 MiB
  std::string r = c.Receive(milliseconds(2000));
  EXPECT_EQ(StatusOf(r), 413) << r.substr(0, 200);
  EXPECT_LT(sent, size_t{100} << 20) << "the server read the whole 100 MiB";
}

TEST_F(HostileClientTest, DeclaredOversizedBodyIsRefusedBeforeReading) {
  HttpServerOptions o;
  o.max_body_bytes = 64;
  StartServer(o);
  RawClient c(port_);
  c.Send("POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: 104857600\r\n\r\n");
  std::string r = c.Receive(milliseconds(1000));
  EXPECT_EQ(StatusOf(r), 413) << r;
  EXPECT_NE(r.find("exceeds the limit of 64 bytes"), std::string::npos);
}

// Regression (issue 10, item 12): a bad query escape answered 500.
TEST_F(HostileClientTest, BadPercentEscapesAre400InTheApiErrorShape) {
  StartServer({});
  std::string ok = Get(port_, "/v1/echo?q=a%20b");
  EXPECT_EQ(StatusOf(ok), 200);
  EXPECT_NE(ok.find("{\"q\":\"a b\"}"), std::string::npos);
  for (const char* bad : {"/v1/echo?q=%zz", "/v1/echo?q=%4", "/v1/%G0echo"}) {
    std::string r = Get(port_, bad);
    EXPECT_EQ(StatusOf(r), 400) << bad << "\n" << r;
    EXPECT_NE(r.find("\"type\":\"invalid_request_error\""), std::string::npos) << r;
    EXPECT_NE(r.find("\"param\":null"), std::string::npos) << r;
  }
  // Regression (bench/fuzz/fuzz_http_request): a path that decodes to invalid UTF-8 made
  // the 404's JSON dump throw on the I/O thread and terminated the process.
  for (const char* bad_utf8 : {"/%FF", "/v1/%C3%28", "/v1/echo%FE%FF"}) {
    std::string r = Get(port_, bad_utf8);
    EXPECT_EQ(StatusOf(r), 404) << bad_utf8 << "\n" << r;
  }
  EXPECT_EQ(StatusOf(Get(port_, "/healthz")), 200) << "the server died on a non-UTF-8 path";
  std::string garbage;
  {
    RawClient c(port_);
    c.Send("\x16\x03\x01 not http at all\r\n\r\n");
    garbage = c.Receive(milliseconds(1000));
  }
  EXPECT_EQ(StatusOf(garbage), 400) << garbage;
}

TEST_F(HostileClientTest, ProbesAnswerWhileEveryWorkerIsBusyAndQueueOverflowGets503) {
  HttpServerOptions o;
  o.worker_threads = 2;
  o.max_queued_requests = 2;
  StartServer(o);
  std::vector<std::unique_ptr<RawClient>> busy;
  auto send_blocking = [&] {
    busy.push_back(std::make_unique<RawClient>(port_));
    busy.back()->Send("POST /v1/classify?block=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx");
  };
  auto deadline = Clock::now() + std::chrono::seconds(5);
  send_blocking();  // two requests hold both workers
  send_blocking();
  while (gate_.waiting.load() < 2 && Clock::now() < deadline) std::this_thread::sleep_for(milliseconds(5));
  ASSERT_EQ(gate_.waiting.load(), 2);
  send_blocking();  // two more fill the queue
  send_blocking();
  while (server_->queued_requests() < 2 && Clock::now() < deadline)
    std::this_thread::sleep_for(milliseconds(5));
  ASSERT_EQ(server_->queued_requests(), 2u);
  RawClient extra(port_);
  extra.Send("POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx");
  std::string overflow = extra.Receive(milliseconds(1000), "}");
  EXPECT_EQ(StatusOf(overflow), 503) << overflow;
  EXPECT_NE(overflow.find("Retry-After: 1"), std::string::npos) << overflow;
  auto t0 = Clock::now();
  EXPECT_EQ(StatusOf(Get(port_, "/healthz", milliseconds(1000))), 200);
  EXPECT_LT(Clock::now() - t0, milliseconds(1000));
  gate_.Open();
  for (auto& c : busy) EXPECT_EQ(StatusOf(c->Receive(milliseconds(2000), "}")), 200);
}

TEST_F(HostileClientTest, KeepAliveServesSeveralRequestsOnOneConnection) {
  StartServer({});
  RawClient c(port_);
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(c.Send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"));
    std::string r = c.Receive(milliseconds(1000), "ok");
    EXPECT_EQ(StatusOf(r), 200) << i;
  }
}

TEST_F(HostileClientTest, StreamsChunksAndStopsProducerWhenClientLeaves) {
  StartServer({});
  {
    RawClient c(port_);
    c.Send("GET /v1/stream HTTP/1.1\r\nHost: x\r\n\r\n");
    std::string r = c.Receive(milliseconds(3000), "data: 2");
    EXPECT_EQ(StatusOf(r), 200) << r;
    EXPECT_NE(r.find("Transfer-Encoding: chunked"), std::string::npos) << r;
    EXPECT_NE(r.find("text/event-stream"), std::string::npos) << r;
    EXPECT_NE(r.find("data: 0\n\n"), std::string::npos) << r;
  }  // the client disconnects mid-stream
  std::unique_lock<std::mutex> lock(stream_mu_);
  EXPECT_TRUE(stream_cv_.wait_for(lock, std::chrono::seconds(5), [this] { return stream_finished_; }))
      << "the producer kept generating for a client that left";
}

TEST_F(HostileClientTest, FiniteStreamEndsWithTheLastChunk) {
  stop_stream_after_three_ = true;
  StartServer({});
  RawClient c(port_);
  c.Send("GET /v1/stream HTTP/1.1\r\nHost: x\r\n\r\n");
  std::string r = c.Receive(milliseconds(3000), "\r\n0\r\n\r\n");
  EXPECT_NE(r.find("data: 2\n\n"), std::string::npos) << r;
  EXPECT_NE(r.find("\r\n0\r\n\r\n"), std::string::npos) << r;
}

TEST_F(HostileClientTest, StopDrainsAnInFlightRequestThenCloses) {
  StartServer({});
  RawClient c(port_);
  c.Send("POST /v1/classify?block=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx");
  auto deadline = Clock::now() + std::chrono::seconds(5);
  while (gate_.waiting.load() < 1 && Clock::now() < deadline) std::this_thread::sleep_for(milliseconds(5));
  std::thread opener([this] {
    std::this_thread::sleep_for(milliseconds(200));
    gate_.Open();
  });
  server_->Stop();
  opener.join();
  std::string r = c.Receive(milliseconds(1000));
  EXPECT_EQ(StatusOf(r), 200) << "the in-flight request was dropped on Stop: " << r;
  EXPECT_NE(r.find("Connection: close"), std::string::npos) << r;
  EXPECT_EQ(StatusOf(Get(port_, "/healthz", milliseconds(300))), 0) << "still accepting after Stop";
}

}  // namespace
}  // namespace fedge
