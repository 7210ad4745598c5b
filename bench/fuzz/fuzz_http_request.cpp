// Fuzz target: fedge::HttpServer (Boost.Beast) reading untrusted requests off a real
// socket. Any pod on an edge node can reach the agent's and the aggregator's HTTP ports.
//
// At start one server listens on 127.0.0.1:0 with the routes a fedge process has:
//   GET  /healthz              inline probe, "ok"
//   POST /v1/classify          echoes the body's size and a header (worker pool)
//   GET  /v1/search?q=..       echoes the decoded query (worker pool)
//   GET  /v1/stream            a server-sent-events stream of three chunks
// Per input: connect, send the bytes, shut down the write side, read until the server
// closes (4 s deadline), then ask GET /healthz on a fresh connection. Findings (abort):
//   - the server does not close the connection within the deadline after the client
//     has finished sending (every request path must end: answered, refused or dropped);
//   - what it sends back does not start with "HTTP/1." (a response must be a response);
//   - /healthz does not answer 200 afterwards (the input broke the server).
// ASan/UBSan watch the server's threads too: Beast's parser is compiled into this binary.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>

#include "fedge/http_server.h"
#include "fedge/log.h"
#include "fuzz_util.h"

using fedge::fuzz::Fail;
using Clock = std::chrono::steady_clock;

namespace {

constexpr auto kExchangeDeadline = std::chrono::seconds(4);

fedge::HttpServer& Server() {
  static const std::unique_ptr<fedge::HttpServer> server = [] {
    fedge::HttpServerOptions options;
    // Small limits so the fuzzer reaches 413/431 with short inputs; short timeouts so an
    // unfinished request ends well inside the exchange deadline.
    options.max_body_bytes = 4096;
    options.max_header_bytes = 2048;
    options.max_connections = 64;
    options.worker_threads = 2;
    options.max_queued_requests = 8;
    options.header_timeout = std::chrono::milliseconds(1500);
    options.body_timeout = std::chrono::milliseconds(1500);
    options.idle_timeout = std::chrono::milliseconds(1500);
    options.write_timeout = std::chrono::milliseconds(1500);
    options.drain_timeout = std::chrono::milliseconds(500);
    auto s = std::make_unique<fedge::HttpServer>("127.0.0.1:0", options);
    s->Handle("GET", "/healthz",
              [](const fedge::HttpRequest&) { return fedge::HttpResponse::Text(200, "ok"); });
    s->Handle("POST", "/v1/classify", [](const fedge::HttpRequest& req) {
      auto it = req.headers.find("x-request-id");
      std::string id = it == req.headers.end() ? "" : it->second;
      return fedge::HttpResponse::Json(200, "{\"bytes\":" + std::to_string(req.body.size()) +
                                                ",\"id_bytes\":" + std::to_string(id.size()) + "}");
    });
    s->Handle("GET", "/v1/search", [](const fedge::HttpRequest& req) {
      std::string out;
      for (const auto& [k, v] : req.query)
        out += std::to_string(k.size()) + ":" + std::to_string(v.size()) + ";";
      return fedge::HttpResponse::Text(200, out);
    });
    s->Handle("GET", "/v1/stream", [](const fedge::HttpRequest&) {
      return fedge::HttpResponse::EventStream([](fedge::HttpStreamWriter& w) {
        for (int i = 0; i < 3 && w.Write("data: " + std::to_string(i) + "\n\n"); ++i) {
        }
      });
    });
    fedge::Status st = s->Start();
    if (!st.ok()) Fail("cannot start the server", st.ToString());
    std::fprintf(stderr, "fuzz_http_request: server on 127.0.0.1:%d\n", s->port());
    return s;
  }();
  return *server;
}

// A non-blocking socket connected to the server. A signal (libFuzzer's -timeout timer)
// can interrupt connect(): the connection then completes in the background, so wait
// for it rather than treat EINTR as a failure.
int Connect(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) Fail("socket", std::strerror(errno));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) return fd;
  if (errno != EINPROGRESS && errno != EINTR) Fail("connect to the server", std::strerror(errno));
  const auto deadline = Clock::now() + kExchangeDeadline;
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) Fail("connect to the server", "no connection within the deadline");
    pollfd p{fd, POLLOUT, 0};
    const int n = ::poll(&p, 1, static_cast<int>(left));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) Fail("poll", std::strerror(errno));
    if (n == 1) break;
  }
  int err = 0;
  socklen_t len = sizeof(err);
  if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
    Fail("connect to the server", std::strerror(err));
  }
  return fd;
}

struct Exchange {
  std::string received;
  bool closed = false;  // the server closed (EOF or reset) before the deadline
};

// Sends `request`, half-closes, and reads until the server closes or the deadline.
// Sending and reading interleave so a server that answers early (413, 431) and stops
// reading never deadlocks the client.
Exchange Send(int port, std::string_view request) {
  Exchange ex;
  const int fd = Connect(port);
  size_t sent = 0;
  bool write_open = true;
  const auto deadline = Clock::now() + kExchangeDeadline;
  char buf[16384];
  for (;;) {
    if (write_open && sent == request.size()) {
      ::shutdown(fd, SHUT_WR);
      write_open = false;
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) break;
    pollfd p{fd, static_cast<short>(POLLIN | (write_open ? POLLOUT : 0)), 0};
    if (::poll(&p, 1, static_cast<int>(left)) < 0) {
      if (errno == EINTR) continue;
      Fail("poll", std::strerror(errno));
    }
    if (write_open && (p.revents & POLLOUT)) {
      const ssize_t n = ::send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
      if (n > 0) {
        sent += static_cast<size_t>(n);
      } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
        write_open = false;  // the server closed: it refused the request early
      }
    }
    if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
      const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
      if (n > 0) {
        if (ex.received.size() < (1u << 20)) ex.received.append(buf, static_cast<size_t>(n));
      } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
        ex.closed = true;  // EOF, or a reset after the server dropped unread bytes
        break;
      }
    }
  }
  ::close(fd);
  return ex;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // The server logs every refused request at warn level; findings are aborts, not logs.
  fedge::log::Init("fuzz", fedge::log::Level::kError);
  Server();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const int port = Server().port();
  const Exchange ex = Send(port, std::string_view(reinterpret_cast<const char*>(data), size));
  if (!ex.closed) {
    Fail("the server kept the connection open after the client finished sending",
         std::to_string(ex.received.size()) + " bytes received");
  }
  if (!ex.received.empty() && ex.received.rfind("HTTP/1.", 0) != 0) {
    Fail("the server's reply is not an HTTP response", ex.received.substr(0, 64));
  }
  const Exchange probe = Send(port, "GET /healthz HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n\r\n");
  if (probe.received.rfind("HTTP/1.1 200", 0) != 0) {
    Fail("GET /healthz does not answer 200 after the input", probe.received.substr(0, 200));
  }
  return 0;
}
