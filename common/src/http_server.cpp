#define _TURN_OFF_PLATFORM_STRING
#include "fedge/http_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cpprest/http_listener.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>
#include <nlohmann/json.hpp>

#include <cstring>

#include "fedge/log.h"

namespace fedge {

using web::http::http_request;
using web::http::experimental::listener::http_listener;

struct HttpServer::Impl {
  std::unique_ptr<http_listener> listener;
};

HttpResponse HttpResponse::Text(int status, std::string body) {
  HttpResponse r;
  r.status = status;
  r.content_type = "text/plain; charset=utf-8";
  r.body = std::move(body);
  return r;
}

HttpResponse HttpResponse::Json(int status, std::string json_body) {
  HttpResponse r;
  r.status = status;
  r.body = std::move(json_body);
  return r;
}

HttpResponse HttpResponse::Error(int status, std::string_view message, std::string_view type) {
  nlohmann::json j;
  j["error"] = {{"message", message}, {"type", type}, {"code", status}};
  return Json(status, j.dump());
}

HttpResponse HttpResponse::FromStatus(const Status& status) {
  int code = 500;
  std::string type = "server_error";
  switch (status.code()) {
    case StatusCode::kOk:
      code = 200;
      break;
    case StatusCode::kInvalidArgument:
    case StatusCode::kOutOfRange:
      code = 400;
      type = "invalid_request_error";
      break;
    case StatusCode::kNotFound:
      code = 404;
      type = "not_found_error";
      break;
    case StatusCode::kUnauthenticated:
      code = 401;
      type = "authentication_error";
      break;
    case StatusCode::kPermissionDenied:
      code = 403;
      type = "permission_error";
      break;
    case StatusCode::kResourceExhausted:
      code = 429;
      type = "rate_limit_error";
      break;
    case StatusCode::kFailedPrecondition:
    case StatusCode::kUnavailable:
      code = 503;
      type = "unavailable";
      break;
    case StatusCode::kDeadlineExceeded:
      code = 504;
      type = "timeout";
      break;
    default:
      break;
  }
  return Error(code, status.message(), type);
}

HttpServer::HttpServer(std::string address, HttpServerOptions options)
    : impl_(std::make_unique<Impl>()), options_(options) {
  if (!SplitHostPort(address, &host_, &port_).ok()) {
    host_ = address;
    port_ = 0;
  }
}

HttpServer::~HttpServer() { Stop(); }

void HttpServer::Handle(const std::string& method, const std::string& path, HttpHandler handler) {
  routes_[method + " " + path] = std::move(handler);
}

void HttpServer::HandleMetrics(std::shared_ptr<prometheus::Registry> registry) {
  Handle("GET", "/metrics", [registry](const HttpRequest&) {
    HttpResponse r;
    r.content_type = "text/plain; version=0.0.4; charset=utf-8";
    r.body = RenderMetrics(*registry);
    return r;
  });
}

std::string HttpServer::address() const { return host_ + ":" + std::to_string(port_); }

Status HttpServer::Start() {
  if (port_ == 0) {
    FEDGE_ASSIGN_OR_RETURN(port_, PickFreePort(host_));
  }
  std::string uri = "http://" + host_ + ":" + std::to_string(port_);
  try {
    web::http::experimental::listener::http_listener_config config;
    impl_->listener = std::make_unique<http_listener>(uri, config);
    auto routes = &routes_;
    size_t max_body = options_.max_body_bytes;
    impl_->listener->support([routes, max_body](http_request req) {
      HttpRequest in;
      HttpResponse out;
      try {
        in.method = req.method();
        in.path = web::uri::decode(req.relative_uri().path());
        for (const auto& [k, v] : web::uri::split_query(req.relative_uri().query())) {
          in.query[k] = web::uri::decode(v);
        }
        for (const auto& [k, v] : req.headers()) {
          std::string key = k;
          for (auto& c : key) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
          in.headers[key] = v;
        }
        auto it = routes->find(in.method + " " + in.path);
        if (it == routes->end()) {
          bool path_known = false;
          for (const auto& [key, _] : *routes) {
            if (key.substr(key.find(' ') + 1) == in.path) path_known = true;
          }
          out = path_known ? HttpResponse::Error(405, "method " + in.method + " not allowed on " + in.path,
                                                 "invalid_request_error")
                           : HttpResponse::Error(404, "no route for " + in.path, "not_found_error");
        } else {
          uint64_t declared = req.headers().content_length();
          if (declared > max_body) {
            out = HttpResponse::Error(413,
                                      "request body of " + std::to_string(declared) +
                                          " bytes exceeds the limit of " + std::to_string(max_body),
                                      "invalid_request_error");
          } else {
            in.body = req.extract_string(/*ignore_content_type=*/true).get();
            if (in.body.size() > max_body) {
              out = HttpResponse::Error(
                  413, "request body exceeds the limit of " + std::to_string(max_body) + " bytes",
                  "invalid_request_error");
            } else {
              out = it->second(in);
            }
          }
        }
      } catch (const std::exception& e) {
        out = HttpResponse::Error(500, std::string("internal error: ") + e.what(), "server_error");
      }
      web::http::http_response resp(static_cast<web::http::status_code>(out.status));
      resp.headers().set_content_type(out.content_type);
      resp.set_body(out.body, out.content_type);
      req.reply(resp).then([](pplx::task<void> t) {
        try {
          t.get();
        } catch (...) {
          // The client went away; nothing to do.
        }
      });
    });
    impl_->listener->open().wait();
  } catch (const std::exception& e) {
    impl_->listener.reset();
    return UnavailableError("cannot listen on " + uri + ": " + e.what());
  }
  return OkStatus();
}

void HttpServer::Stop() {
  if (impl_ && impl_->listener) {
    try {
      impl_->listener->close().wait();
    } catch (const std::exception& e) {
      log::Warn("http listener close failed", {{"error", e.what()}});
    }
    impl_->listener.reset();
  }
}

std::string RenderMetrics(const prometheus::Registry& registry) {
  prometheus::TextSerializer serializer;
  return serializer.Serialize(registry.Collect());
}

StatusOr<int> PickFreePort(const std::string& host) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return UnavailableError(std::string("socket: ") + std::strerror(errno));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = 0;
  if (::inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1) {
    ::close(fd);
    return InvalidArgumentError("not an IPv4 address: " + host);
  }
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    std::string err = std::strerror(errno);
    ::close(fd);
    return UnavailableError("bind " + host + ":0: " + err);
  }
  socklen_t len = sizeof(addr);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  int port = ntohs(addr.sin_port);
  ::close(fd);
  return port;
}

Status SplitHostPort(const std::string& address, std::string* host, int* port) {
  auto colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == address.size()) {
    return InvalidArgumentError("address \"" + address + "\" is not host:port");
  }
  *host = address.substr(0, colon);
  try {
    size_t used = 0;
    int p = std::stoi(address.substr(colon + 1), &used);
    if (used != address.size() - colon - 1 || p < 0 || p > 65535) throw std::out_of_range("port");
    *port = p;
  } catch (const std::exception&) {
    return InvalidArgumentError("address \"" + address + "\" has an invalid port");
  }
  return OkStatus();
}

}  // namespace fedge
