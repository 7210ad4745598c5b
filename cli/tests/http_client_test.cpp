// HttpGet (http_client.h) against real servers on loopback: fedge's HttpServer
// for well-behaved answers, a raw socket for a server that never answers.
#include "fedge/cli/http_client.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>

#include "fedge/http_server.h"

namespace fedge::cli {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

TEST(HttpGetTest, FetchesFromFedgeHttpServer) {
  const std::string status = R"({"job": "default/unit", "state": "Running", "round": 2})";
  HttpServer server("127.0.0.1:0");
  server.Handle("GET", "/v1/status", [&](const HttpRequest&) { return HttpResponse::Json(200, status); });
  ASSERT_TRUE(server.Start().ok());
  auto r = HttpGet("127.0.0.1", server.port(), "/v1/status", 5s);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, status);
  auto missing = HttpGet("127.0.0.1", server.port(), "/nope", 5s);
  ASSERT_TRUE(missing.ok()) << "an HTTP error status is a response, not a failure";
  EXPECT_EQ(missing->status, 404);
  server.Stop();
  auto port = PickFreePort();
  ASSERT_TRUE(port.ok());
  auto refused = HttpGet("127.0.0.1", *port, "/v1/status", 2s);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(refused.status().message().find("GET http://127.0.0.1:" + std::to_string(*port) + "/v1/status"),
            std::string::npos)
      << refused.status().message();
}

TEST(HttpGetTest, JoinsAChunkedBody) {
  HttpServer server("127.0.0.1:0");
  server.Handle("GET", "/stream", [](const HttpRequest&) {
    HttpResponse r;
    r.stream = [](HttpStreamWriter& w) {
      for (const char* part : {"{\"a\": ", "1, \"b\": ", "[2, 3]}"}) {
        if (!w.Write(part)) return;
      }
    };
    return r;
  });
  ASSERT_TRUE(server.Start().ok());
  auto r = HttpGet("127.0.0.1", server.port(), "/stream", 5s);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, R"({"a": 1, "b": [2, 3]})");
}

TEST(HttpGetTest, RefusesABodyOverTheLimitDeclaredOrStreamed) {
  HttpServer server("127.0.0.1:0");
  const std::string big(64 * 1024, 'x');
  server.Handle("GET", "/declared", [&](const HttpRequest&) { return HttpResponse::Text(200, big); });
  server.Handle("GET", "/streamed", [&](const HttpRequest&) {
    HttpResponse r;
    r.stream = [&](HttpStreamWriter& w) {
      for (int i = 0; i < 16; ++i) {
        if (!w.Write(std::string(4096, 'y'))) return;
      }
    };
    return r;
  });
  ASSERT_TRUE(server.Start().ok());
  auto exact = HttpGet("127.0.0.1", server.port(), "/declared", 5s, /*max_body_bytes=*/big.size());
  ASSERT_TRUE(exact.ok()) << exact.status().ToString();
  EXPECT_EQ(exact->body.size(), big.size());
  for (const char* path : {"/declared", "/streamed"}) {
    auto r = HttpGet("127.0.0.1", server.port(), path, 5s, /*max_body_bytes=*/10000);
    ASSERT_FALSE(r.ok()) << path;
    EXPECT_EQ(r.status().code(), StatusCode::kResourceExhausted) << r.status().ToString();
    EXPECT_NE(r.status().message().find("larger than 10000 bytes"), std::string::npos)
        << r.status().ToString();
  }
}

// A server that accepts the connection (the kernel's backlog does) and never answers.
TEST(HttpGetTest, GivesUpOnAServerThatNeverAnswers) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(::listen(fd, 8), 0);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  const auto start = Clock::now();
  auto r = HttpGet("127.0.0.1", ntohs(addr.sin_port), "/v1/status", 300ms);
  const auto took = Clock::now() - start;
  ::close(fd);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kDeadlineExceeded) << r.status().ToString();
  EXPECT_GE(took, 250ms);
  EXPECT_LT(took, 3s);
}

// A server that keeps sending a byte now and then: each read is quick, the whole
// exchange is not. Without the overall deadline this request would never end.
TEST(HttpGetTest, GivesUpOnAServerThatTricklesItsBody) {
  HttpServer server("127.0.0.1:0");
  server.Handle("GET", "/trickle", [](const HttpRequest&) {
    HttpResponse r;
    r.stream = [](HttpStreamWriter& w) {
      for (int i = 0; i < 600 && w.Write("x"); ++i) std::this_thread::sleep_for(50ms);
    };
    return r;
  });
  ASSERT_TRUE(server.Start().ok());
  const auto start = Clock::now();
  auto r = HttpGet("127.0.0.1", server.port(), "/trickle", 500ms);
  const auto took = Clock::now() - start;
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kDeadlineExceeded) << r.status().ToString();
  EXPECT_LT(took, 3s);
}

}  // namespace
}  // namespace fedge::cli
