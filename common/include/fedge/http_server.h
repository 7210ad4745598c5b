// A small HTTP server for /healthz, /readyz, /metrics and JSON APIs, over
// cpprestsdk's listener (prometheus-cpp's civetweb Exposer cannot start inside a
// process linked with Debian's libtorch). Handlers are plain functions over
// plain structs: no cpprest types leak out of this header.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>

#include "fedge/status.h"

namespace prometheus {
class Registry;
}

namespace fedge {

struct HttpRequest {
  std::string method;                          // "GET", "POST", ...
  std::string path;                            // "/v1/classify"
  std::map<std::string, std::string> query;    // decoded query parameters
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;

  static HttpResponse Text(int status, std::string body);
  static HttpResponse Json(int status, std::string json_body);
  // {"error": {"message": ..., "type": ..., "code": ...}} (OpenAI's error shape).
  static HttpResponse Error(int status, std::string_view message, std::string_view type);
  // Maps a Status to an HTTP status code and the error shape above.
  static HttpResponse FromStatus(const Status& status);
};

using HttpHandler = std::function<HttpResponse(const HttpRequest&)>;

struct HttpServerOptions {
  size_t max_body_bytes = 4u << 20;  // larger bodies get 413
};

class HttpServer {
 public:
  // `address` is "host:port"; port 0 picks a free port (see port() after Start).
  explicit HttpServer(std::string address, HttpServerOptions options = {});
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Registers a handler for an exact method and path. Call before Start().
  // Handlers run on cpprest's thread pool and must be thread-safe; an exception
  // escaping a handler becomes a 500 with its message.
  void Handle(const std::string& method, const std::string& path, HttpHandler handler);

  // Serves `registry` in the Prometheus text format at GET /metrics.
  void HandleMetrics(std::shared_ptr<prometheus::Registry> registry);

  Status Start();
  void Stop();  // idempotent; waits for in-flight handlers

  int port() const { return port_; }
  std::string address() const;

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

}  // namespace fedge
