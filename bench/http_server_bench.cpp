// Compares HTTP server libraries for fedge's probes and inference API, in one process:
//   beast    — fedge::HttpServer (Boost.Beast + Asio, what fedge ships)
//   cpprest  — cpprestsdk's http_listener (fedge's server before issue 10)
//   httplib  — cpp-httplib (Debian's libcpp-httplib-dev), the other candidate
// For each it prints:
//   - keep-alive throughput of GET /healthz from 8 client threads (requests/s, and the
//     ratio to beast);
//   - /healthz latency while S slowloris connections (headers with Content-Length: 100
//     and one body byte) are held open, S = 40 and 200 — "timeout" past 2 s;
//   - RSS growth per 1,000 idle connections.
// Usage: fedge_bench_http_server [--seconds 2] [--only beast|cpprest|httplib]
#define _TURN_OFF_PLATFORM_STRING
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <cpprest/http_listener.h>
#ifdef FEDGE_BENCH_HAVE_HTTPLIB
#include <httplib.h>
#endif

#include "fedge/http_server.h"

namespace {

using Clock = std::chrono::steady_clock;

int Connect(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  ::inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// Reads one response with a Content-Length body; false on error or timeout.
bool ReadResponse(int fd, int timeout_ms) {
  std::string buf;
  auto end = Clock::now() + std::chrono::milliseconds(timeout_ms);
  size_t need = std::string::npos;
  while (Clock::now() < end) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 50) <= 0) continue;
    char tmp[8192];
    ssize_t n = ::recv(fd, tmp, sizeof(tmp), 0);
    if (n <= 0) return false;
    buf.append(tmp, static_cast<size_t>(n));
    size_t hdr_end = buf.find("\r\n\r\n");
    if (hdr_end == std::string::npos) continue;
    if (need == std::string::npos) {
      size_t cl = buf.find("ontent-Length: ");
      if (cl == std::string::npos) cl = buf.find("ontent-length: ");
      size_t len = cl == std::string::npos ? 0 : std::strtoul(buf.c_str() + cl + 15, nullptr, 10);
      need = hdr_end + 4 + len;
    }
    if (buf.size() >= need) return true;
  }
  return false;
}

const char kGet[] = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";

double Throughput(int port, double seconds) {
  std::atomic<long> done{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> clients;
  for (int t = 0; t < 8; ++t) {
    clients.emplace_back([&] {
      int fd = Connect(port);
      while (!stop && fd >= 0) {
        if (::send(fd, kGet, sizeof(kGet) - 1, MSG_NOSIGNAL) <= 0 || !ReadResponse(fd, 2000)) {
          ::close(fd);
          fd = Connect(port);
          continue;
        }
        ++done;
      }
      if (fd >= 0) ::close(fd);
    });
  }
  auto t0 = Clock::now();
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop = true;
  for (auto& c : clients) c.join();
  return done.load() / std::chrono::duration<double>(Clock::now() - t0).count();
}

// Latency of one /healthz on a fresh connection, in ms; -1 on timeout (2 s).
double ProbeMs(int port) {
  auto t0 = Clock::now();
  int fd = Connect(port);
  if (fd < 0) return -1;
  bool ok = ::send(fd, kGet, sizeof(kGet) - 1, MSG_NOSIGNAL) > 0 && ReadResponse(fd, 2000);
  ::close(fd);
  return ok ? std::chrono::duration<double, std::milli>(Clock::now() - t0).count() : -1;
}

long RssKiB() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
  }
  return 0;
}

struct Server {
  std::string name;
  std::function<int()> start;  // returns the port
  std::function<void()> stop;
};

Server Beast() {
  auto server = std::make_shared<std::unique_ptr<fedge::HttpServer>>();
  return {"beast",
          [server] {
            *server = std::make_unique<fedge::HttpServer>("127.0.0.1:0");
            (*server)->Handle("GET", "/healthz",
                              [](const fedge::HttpRequest&) { return fedge::HttpResponse::Text(200, "ok"); });
            (*server)->Handle("POST", "/v1/classify",
                              [](const fedge::HttpRequest&) { return fedge::HttpResponse::Json(200, "{}"); });
            if (!(*server)->Start().ok()) return -1;
            return (*server)->port();
          },
          [server] { server->reset(); }};
}

Server CppRest() {
  auto listener = std::make_shared<std::unique_ptr<web::http::experimental::listener::http_listener>>();
  return {"cpprest",
          [listener] {
            int port = fedge::PickFreePort().value();
            *listener = std::make_unique<web::http::experimental::listener::http_listener>(
                "http://127.0.0.1:" + std::to_string(port));
            (*listener)->support([](web::http::http_request req) {
              // fedge's old server read the body before routing, as here.
              req.extract_string(true).get();
              req.reply(200, "ok");
            });
            (*listener)->open().wait();
            return port;
          },
          [listener] {
            // A listener whose threads are stuck in slow reads may never close: leak it.
            std::thread([l = std::move(*listener)]() mutable { l->close().wait(); }).detach();
          }};
}

#ifdef FEDGE_BENCH_HAVE_HTTPLIB
Server HttpLib() {
  auto server = std::make_shared<httplib::Server>();
  auto thread = std::make_shared<std::thread>();
  return {"httplib",
          [server, thread] {
            server->Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
              res.set_content("ok", "text/plain");
            });
            server->Post("/v1/classify", [](const httplib::Request&, httplib::Response& res) {
              res.set_content("{}", "application/json");
            });
            int port = server->bind_to_any_port("127.0.0.1");
            *thread = std::thread([server] { server->listen_after_bind(); });
            return port;
          },
          [server, thread] {
            server->stop();
            if (thread->joinable()) thread->detach();
          }};
}
#endif

}  // namespace

int main(int argc, char** argv) {
  double seconds = 2;
  std::string only;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::string(argv[i]) == "--seconds") seconds = std::stod(argv[i + 1]);
    if (std::string(argv[i]) == "--only") only = argv[i + 1];
  }
  rlimit rl{};
  getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = rl.rlim_max;
  setrlimit(RLIMIT_NOFILE, &rl);

  std::vector<Server> servers = {Beast(), CppRest()};
#ifdef FEDGE_BENCH_HAVE_HTTPLIB
  servers.push_back(HttpLib());
#endif
  double beast_rps = 0;
  std::printf("%-8s %12s %8s %16s %16s %18s\n", "server", "req/s", "ratio", "probe@40 slow", "probe@200 slow",
              "KiB/1000 idle");
  for (auto& s : servers) {
    if (!only.empty() && s.name != only) continue;
    int port = s.start();
    if (port <= 0) {
      std::printf("%-8s failed to start\n", s.name.c_str());
      continue;
    }
    double rps = Throughput(port, seconds);
    if (s.name == "beast") beast_rps = rps;

    std::vector<int> slow;
    auto hold = [&](int n) {
      while (static_cast<int>(slow.size()) < n) {
        int fd = Connect(port);
        if (fd < 0) break;
        const char req[] = "POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nx";
        ::send(fd, req, sizeof(req) - 1, MSG_NOSIGNAL);
        slow.push_back(fd);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    };
    hold(40);
    double p40 = ProbeMs(port);
    hold(200);
    double p200 = ProbeMs(port);
    for (int fd : slow) ::close(fd);
    slow.clear();

    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    long before = RssKiB();
    std::vector<int> idle;
    for (int i = 0; i < 1000; ++i) {
      int fd = Connect(port);
      if (fd < 0) break;
      idle.push_back(fd);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    long grown = RssKiB() - before;
    for (int fd : idle) ::close(fd);

    auto fmt = [](double ms) {
      char b[32];
      if (ms < 0) return std::string("timeout");
      std::snprintf(b, sizeof(b), "%.1f ms", ms);
      return std::string(b);
    };
    std::printf("%-8s %12.0f %8.2f %16s %16s %18ld\n", s.name.c_str(), rps,
                beast_rps > 0 ? rps / beast_rps : 0.0, fmt(p40).c_str(), fmt(p200).c_str(), grown);
    std::fflush(stdout);
    s.stop();
  }
  return 0;
}
