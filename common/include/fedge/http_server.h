// fedge's HTTP/1.1 server for /healthz, /readyz, /metrics, JSON APIs and streamed
// responses (server-sent events), over Boost.Beast + Asio. Handlers are plain functions
// over plain structs: no Beast or Asio types leak out of this header.
//
// The server is built for a hostile network (any pod on an edge node can reach it):
//  - I/O is asynchronous on a small number of I/O threads; a connection costs a socket
//    and a few KiB, never a thread, so slow or idle clients cannot starve the server.
//  - Every read has a deadline: the request line and headers must arrive within
//    `header_timeout`, the body within `body_timeout`, and an idle keep-alive connection
//    is closed after `idle_timeout`. Every write has `write_timeout`.
//  - Sizes are enforced while reading: headers beyond `max_header_bytes` get 431, a body
//    beyond `max_body_bytes` (declared or chunked) gets 413 before it is buffered.
//  - Connections beyond `max_connections` are closed at accept.
//  - Handlers run on a worker pool, off the I/O threads; when `max_queued_requests`
//    requests wait for a worker the next gets 503 with Retry-After. Routes in
//    `inline_paths` (the probes and /metrics) run on the I/O thread so that they answer
//    even while every worker is busy: such handlers must be cheap and never block.
//  - Stop() drains: it stops accepting, lets in-flight requests finish for up to
//    `drain_timeout`, then closes every connection.
// Every error the server itself produces (400, 404, 405, 408, 413, 431, 503) has the
// OpenAI error shape that the inference API uses.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "fedge/status.h"

namespace prometheus {
class Registry;
}

namespace fedge {

struct HttpRequest {
  std::string method;                          // "GET", "POST", ...
  std::string path;                            // "/v1/classify", percent-decoded
  std::map<std::string, std::string> query;    // decoded query parameters
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;
  std::string remote_address;  // "ip:port" of the peer
  // Set by the server for handlers on the worker pool: true once the client has
  // closed its connection (end of stream or reset seen on the socket while the
  // request is handled), so a handler that waits (e.g. in a queue for a model)
  // can give up. A client that half-closes after sending counts as gone. Null
  // for inline routes and requests built by hand (tests). Thread-safe.
  std::function<bool()> client_gone;
};

// Writes the body of a streamed response, one chunk at a time.
class HttpStreamWriter {
 public:
  virtual ~HttpStreamWriter() = default;
  // Sends `data` as one chunk and blocks until it is written. Returns false when the
  // client has gone away, a write timed out or the server is stopping: the producer
  // should stop (e.g. cancel a generation) and return.
  virtual bool Write(std::string_view data) = 0;
  // True once Write would fail; lets a producer notice a disconnect between writes.
  virtual bool Closed() const = 0;
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  // Extra response headers (e.g. {"Retry-After", "1"}).
  std::vector<std::pair<std::string, std::string>> headers;
  // When set, the status and headers are sent with chunked transfer encoding and this
  // function produces the body on the handler's worker thread; `body` is ignored.
  std::function<void(HttpStreamWriter&)> stream;

  static HttpResponse Text(int status, std::string body);
  static HttpResponse Json(int status, std::string json_body);
  // {"error": {"message", "type", "param": null, "code": code or null}} — OpenAI's shape.
  static HttpResponse Error(int status, std::string_view message, std::string_view type,
                            std::string_view code = {});
  // Maps a Status to an HTTP status code and the error shape above.
  static HttpResponse FromStatus(const Status& status);
  // A server-sent-events response (text/event-stream, no caching) produced by `producer`.
  static HttpResponse EventStream(std::function<void(HttpStreamWriter&)> producer);
};

using HttpHandler = std::function<HttpResponse(const HttpRequest&)>;

struct HttpServerOptions {
  size_t max_body_bytes = 4u << 20;                  // larger bodies get 413
  size_t max_header_bytes = 16u << 10;               // request line + headers; larger get 431
  size_t max_connections = 1024;                     // open connections; more are closed at accept
  int io_threads = 1;                                // threads running Asio's event loop
  int worker_threads = 4;                            // threads running (non-inline) handlers
  size_t max_queued_requests = 256;                  // requests waiting for a worker; more get 503
  std::chrono::milliseconds header_timeout{10'000};  // first byte to end of headers
  std::chrono::milliseconds body_timeout{60'000};    // end of headers to end of body
  std::chrono::milliseconds idle_timeout{30'000};    // keep-alive wait for the next request
  std::chrono::milliseconds write_timeout{30'000};   // each response write
  std::chrono::milliseconds drain_timeout{5'000};    // Stop(): wait for in-flight requests
  // GET routes run on the I/O thread (cheap, non-blocking handlers only).
  std::set<std::string> inline_paths = {"/healthz", "/readyz", "/livez", "/metrics"};
};

class HttpServer {
 public:
  // `address` is "host:port"; port 0 lets the kernel choose (see port() after Start).
  explicit HttpServer(std::string address, HttpServerOptions options = {});
  ~HttpServer();  // calls Stop()
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Registers a handler for an exact method and path; a path ending in "/*" is a prefix
  // route that serves every path below it ("/v1/models/*" serves "/v1/models/a/b", not
  // "/v1/models/") when no exact route matches (the longest prefix wins). Call before Start().
  // Handlers run concurrently on the worker pool (or the I/O thread for inline paths)
  // and must be thread-safe; an exception escaping a handler becomes a 500 with its
  // message.
  void Handle(const std::string& method, const std::string& path, HttpHandler handler);

  // Serves `registry` in the Prometheus text format at GET /metrics.
  void HandleMetrics(std::shared_ptr<prometheus::Registry> registry);

  // Binds and starts serving. UNAVAILABLE when the address cannot be bound.
  Status Start();
  // Idempotent. Stops accepting, waits up to drain_timeout for in-flight requests
  // (streams see Write() fail after it), closes all connections and joins threads.
  void Stop();

  int port() const { return port_; }
  std::string address() const;

  // Connections open right now, and requests waiting for a worker (tests, metrics).
  size_t open_connections() const;
  size_t queued_requests() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string host_;
  int port_ = 0;
  HttpServerOptions options_;
  std::map<std::string, HttpHandler> routes_;  // key "METHOD path"; immutable after Start
};

// Renders a prometheus-cpp registry in the text exposition format.
std::string RenderMetrics(const prometheus::Registry& registry);

// Binds 127.0.0.1:0, reads the port the kernel chose, closes the socket.
StatusOr<int> PickFreePort(const std::string& host = "127.0.0.1");

// Splits "host:port"; INVALID_ARGUMENT if malformed.
Status SplitHostPort(const std::string& address, std::string* host, int* port);

// Percent-decodes `in` ("+" stays "+"); INVALID_ARGUMENT on a bad escape.
StatusOr<std::string> PercentDecode(std::string_view in);

// Splits a query string "a=1&b=x%20y" into decoded pairs; INVALID_ARGUMENT on a bad
// escape. A key without "=" maps to "".
Status ParseQuery(std::string_view query, std::map<std::string, std::string>* out);

}  // namespace fedge
