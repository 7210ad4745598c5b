#include "fedge/cli/http_get.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace fedge::cli {
namespace {

using Clock = std::chrono::steady_clock;

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }

 private:
  int fd_;
};

int MsLeft(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return static_cast<int>(std::max<int64_t>(0, left));
}

// Waits for `events` on fd until the deadline.
Status WaitFor(int fd, short events, Clock::time_point deadline, const std::string& what) {
  for (;;) {
    pollfd p{fd, events, 0};
    int n = ::poll(&p, 1, MsLeft(deadline));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return UnavailableError(what + ": poll: " + std::strerror(errno));
    if (n == 0) return DeadlineExceededError(what + ": timed out");
    return OkStatus();
  }
}

std::string Lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

StatusOr<std::string> DecodeChunked(const std::string& body) {
  std::string out;
  size_t pos = 0;
  for (;;) {
    size_t eol = body.find("\r\n", pos);
    if (eol == std::string::npos) return DataLossError("truncated chunked body");
    size_t size = 0;
    try {
      size = std::stoul(body.substr(pos, eol - pos), nullptr, 16);
    } catch (...) {
      return DataLossError("bad chunk size");
    }
    pos = eol + 2;
    if (size == 0) return out;
    if (pos + size > body.size()) return DataLossError("truncated chunk");
    out.append(body, pos, size);
    pos += size + 2;
  }
}

}  // namespace

StatusOr<HttpGetResponse> HttpGet(const std::string& host, int port, const std::string& path,
                                  std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  const std::string what = "GET http://" + host + ":" + std::to_string(port) + path;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (::inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1) {
    return InvalidArgumentError(what + ": host must be a numeric IPv4 address");
  }
  Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (fd.get() < 0) return UnavailableError(what + ": socket: " + std::strerror(errno));
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    if (errno != EINPROGRESS) return UnavailableError(what + ": " + std::strerror(errno));
    FEDGE_RETURN_IF_ERROR(WaitFor(fd.get(), POLLOUT, deadline, what));
    int err = 0;
    socklen_t len = sizeof(err);
    ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) return UnavailableError(what + ": " + std::strerror(err));
  }
  const std::string request = "GET " + path + " HTTP/1.1\r\nHost: " + host + ":" + std::to_string(port) +
                              "\r\nAccept: application/json\r\nConnection: close\r\n\r\n";
  size_t sent = 0;
  while (sent < request.size()) {
    ssize_t n = ::send(fd.get(), request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      FEDGE_RETURN_IF_ERROR(WaitFor(fd.get(), POLLOUT, deadline, what));
      continue;
    }
    if (n < 0) return UnavailableError(what + ": send: " + std::strerror(errno));
    sent += static_cast<size_t>(n);
  }

  std::string data;
  size_t header_end = std::string::npos;
  int64_t content_length = -1;
  bool chunked = false;
  char buf[16384];
  for (;;) {
    if (header_end != std::string::npos && content_length >= 0 &&
        data.size() >= header_end + 4 + static_cast<size_t>(content_length)) {
      break;
    }
    if (header_end != std::string::npos && chunked &&
        data.find("\r\n0\r\n", header_end) != std::string::npos && data.size() >= 4 &&
        data.compare(data.size() - 4, 4, "\r\n\r\n") == 0) {
      break;
    }
    ssize_t n = ::recv(fd.get(), buf, sizeof(buf), 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      FEDGE_RETURN_IF_ERROR(WaitFor(fd.get(), POLLIN, deadline, what));
      continue;
    }
    if (n < 0) return UnavailableError(what + ": recv: " + std::strerror(errno));
    if (n == 0) break;  // closed
    data.append(buf, static_cast<size_t>(n));
    if (header_end == std::string::npos) {
      header_end = data.find("\r\n\r\n");
      if (header_end != std::string::npos) {
        const std::string headers = Lower(data.substr(0, header_end));
        size_t cl = headers.find("\r\ncontent-length:");
        if (cl != std::string::npos) content_length = std::atoll(headers.c_str() + cl + 17);
        chunked = headers.find("\r\ntransfer-encoding: chunked") != std::string::npos;
      }
    }
  }
  if (header_end == std::string::npos) {
    return data.empty() ? UnavailableError(what + ": connection closed without a response")
                        : DataLossError(what + ": truncated response headers");
  }
  HttpGetResponse response;
  if (data.compare(0, 5, "HTTP/") != 0) return DataLossError(what + ": not an HTTP response");
  const size_t sp = data.find(' ');
  response.status = std::atoi(data.c_str() + sp + 1);
  if (response.status < 100) return DataLossError(what + ": bad status line");
  std::string body = data.substr(header_end + 4);
  if (chunked) {
    auto decoded = DecodeChunked(body);
    if (!decoded.ok()) return decoded.status().WithContext(what);
    body = std::move(*decoded);
  } else if (content_length >= 0) {
    if (body.size() < static_cast<size_t>(content_length)) return DataLossError(what + ": truncated body");
    body.resize(static_cast<size_t>(content_length));
  }
  response.body = std::move(body);
  return response;
}

}  // namespace fedge::cli
