// A minimal blocking HTTP/1.1 GET client for loopback status polling. The CLI
// needs exactly one request shape, so this avoids pulling an HTTP client
// library (and its threads) into the `fedge` binary.
#pragma once

#include <chrono>
#include <string>

#include "fedge/status.h"

namespace fedge::cli {

struct HttpGetResponse {
  int status = 0;
  std::string body;
};

// GET http://host:port/path with "Connection: close". `host` is a numeric IPv4
// address. The whole exchange (connect, send, receive) is bounded by `timeout`.
// Errors: UNAVAILABLE when nothing listens or the connection breaks,
// DEADLINE_EXCEEDED on timeout, DATA_LOSS on a malformed response. Handles
// Content-Length, chunked and read-to-close bodies.
StatusOr<HttpGetResponse> HttpGet(const std::string& host, int port, const std::string& path,
                                  std::chrono::milliseconds timeout);

}  // namespace fedge::cli
