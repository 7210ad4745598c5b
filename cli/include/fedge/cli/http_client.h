// The CLI's HTTP client: one blocking GET, over cpprestsdk's http_client (the
// client the operator uses too). A thin adapter: no cpprest type or exception
// leaves it; every failure is a Status.
#pragma once

#include <chrono>
#include <cstddef>
#include <string>

#include "fedge/status.h"

namespace fedge::cli {

struct HttpGetResponse {
  int status = 0;  // any HTTP status: a 404 is a response, not an error
  std::string body;
};

// Default body limit of HttpGet: the aggregator's /v1/status grows by ~300 bytes
// a round, so 8 MiB is tens of thousands of rounds.
inline constexpr size_t kHttpGetMaxBodyBytes = 8u << 20;

// GET http://host:port/path (Accept: application/json). Blocking; thread-safe
// (nothing is shared between calls).
//
// `timeout` bounds connecting and every wait for data; the whole exchange is
// also given up once `timeout` has passed between two reads of the body, so a
// server that trickles bytes is cut off after at most about 2 x timeout. The
// body is read up to `max_body_bytes`: a declared Content-Length above it is
// refused before the body is read, a longer chunked or read-to-close body as
// soon as it passes the limit; either way the connection is dropped.
//
// Errors: DEADLINE_EXCEEDED on timeout; RESOURCE_EXHAUSTED for a body over
// `max_body_bytes`; UNAVAILABLE when nothing listens, the connection breaks or
// the response is not HTTP (each message starts with "GET <url>").
StatusOr<HttpGetResponse> HttpGet(const std::string& host, int port, const std::string& path,
                                  std::chrono::milliseconds timeout,
                                  size_t max_body_bytes = kHttpGetMaxBodyBytes);

}  // namespace fedge::cli
