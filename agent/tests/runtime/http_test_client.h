// A minimal blocking HTTP/1.1 client over a POSIX socket for the runtime's
// tests: one request per connection ("Connection: close"), a deadline on the
// whole exchange, Content-Length or chunked bodies. Independent of the HTTP
// server's library, so the tests exercise whatever serves the real port.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>

namespace fedge::agent::testing {

struct HttpReply {
  int status = 0;  // 0: no answer within the deadline (or a transport error)
  std::string error;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;
};

inline std::string DecodeChunked(const std::string& raw) {
  std::string out;
  size_t pos = 0;
  while (pos < raw.size()) {
    size_t eol = raw.find("\r\n", pos);
    if (eol == std::string::npos) break;
    size_t n = std::strtoul(raw.substr(pos, eol - pos).c_str(), nullptr, 16);
    if (n == 0) break;
    out.append(raw, eol + 2, n);
    pos = eol + 2 + n + 2;
  }
  return out;
}

// Sends one request to 127.0.0.1:`port` and reads the whole reply, giving up
// after `deadline` (then status 0 and `error` says so).
inline HttpReply HttpCall(int port, const std::string& method, const std::string& target,
                          const std::string& body = "",
                          const std::map<std::string, std::string>& headers = {},
                          std::chrono::milliseconds deadline = std::chrono::seconds(10)) {
  HttpReply reply;
  const auto end = std::chrono::steady_clock::now() + deadline;
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    reply.error = "socket failed";
    return reply;
  }
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    reply.error = std::string("connect: ") + std::strerror(errno);
    return reply;
  }
  std::string request = method + " " + target + " HTTP/1.1\r\nHost: 127.0.0.1:" + std::to_string(port) +
                        "\r\nConnection: close\r\n";
  for (const auto& [name, value] : headers) request += name + ": " + value + "\r\n";
  if (!body.empty() || method == "POST") {
    request += "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
  }
  request += "\r\n" + body;
  for (size_t sent = 0; sent < request.size();) {
    ssize_t n = ::send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) {
      reply.error = std::string("send: ") + std::strerror(errno);
      return reply;
    }
    sent += static_cast<size_t>(n);
  }
  std::string raw;
  char buf[16384];
  while (true) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      reply.error = "no complete reply within the deadline";
      return reply;
    }
    pollfd p{fd, POLLIN, 0};
    int ready = ::poll(&p, 1, static_cast<int>(left.count()));
    if (ready == 0) continue;
    if (ready < 0) {
      if (errno == EINTR) continue;
      reply.error = std::string("poll: ") + std::strerror(errno);
      return reply;
    }
    ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // the server closed: the reply is complete
    raw.append(buf, static_cast<size_t>(n));
  }
  size_t head_end = raw.find("\r\n\r\n");
  if (raw.compare(0, 9, "HTTP/1.1 ") != 0 && raw.compare(0, 9, "HTTP/1.0 ") != 0) {
    reply.error = "not an HTTP reply: " + raw.substr(0, 64);
    return reply;
  }
  if (head_end == std::string::npos) {
    reply.error = "reply without the end of its headers";
    return reply;
  }
  size_t line_end = raw.find("\r\n");
  size_t pos = line_end + 2;
  while (pos < head_end) {
    size_t eol = raw.find("\r\n", pos);
    std::string line = raw.substr(pos, eol - pos);
    size_t colon = line.find(':');
    if (colon != std::string::npos) {
      std::string name = line.substr(0, colon);
      for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      size_t v = line.find_first_not_of(' ', colon + 1);
      reply.headers[name] = v == std::string::npos ? "" : line.substr(v);
    }
    pos = eol + 2;
  }
  std::string payload = raw.substr(head_end + 4);
  auto te = reply.headers.find("transfer-encoding");
  if (te != reply.headers.end() && te->second.find("chunked") != std::string::npos) {
    payload = DecodeChunked(payload);
  } else if (auto cl = reply.headers.find("content-length"); cl != reply.headers.end()) {
    payload.resize(std::min(payload.size(), static_cast<size_t>(std::stoull(cl->second))));
  }
  reply.body = std::move(payload);
  reply.status = std::atoi(raw.substr(9, 3).c_str());
  return reply;
}

}  // namespace fedge::agent::testing
