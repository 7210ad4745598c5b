// HttpServer over Boost.Beast + Asio. Overview (see the header for the contract):
//
//   acceptor ──► Session (one per connection, on its own strand)
//                 read headers (deadline header_timeout / idle_timeout, header limit)
//                 └► route lookup: 404 / 405 / 413 answered here, without a body read
//                 read body (deadline body_timeout, body limit enforced while parsing)
//                 └► inline path: handler on the I/O thread
//                    otherwise: handler queued to the worker pool (bounded; 503 when full)
//                 write the response (deadline write_timeout); keep-alive → read again
//
// A streamed response is written from its worker thread: each Write() posts one chunk to
// the session's strand and waits for the write to finish or fail.
#include "fedge/http_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include <atomic>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <future>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "fedge/log.h"

namespace fedge {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = boost::beast::http;
using tcp = boost::asio::ip::tcp;

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

HttpResponse HttpResponse::Error(int status, std::string_view message, std::string_view type,
                                 std::string_view code) {
  nlohmann::ordered_json err = {{"message", message}, {"type", type}};
  err["param"] = nullptr;
  err["code"] = code.empty() ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(code);
  // Messages quote client input (paths, field names) that need not be UTF-8: replace
  // invalid bytes rather than let dump() throw (found by bench/fuzz/fuzz_http_request:
  // GET /%FF terminated the process from the I/O thread).
  return Json(status, nlohmann::ordered_json{{"error", err}}.dump(
                          -1, ' ', false, nlohmann::ordered_json::error_handler_t::replace));
}

HttpResponse HttpResponse::EventStream(std::function<void(HttpStreamWriter&)> producer) {
  HttpResponse r;
  r.content_type = "text/event-stream";
  r.headers.emplace_back("Cache-Control", "no-cache");
  r.stream = std::move(producer);
  return r;
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

StatusOr<std::string> PercentDecode(std::string_view in) {
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  std::string out;
  out.reserve(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] != '%') {
      out.push_back(in[i]);
      continue;
    }
    if (i + 2 >= in.size()) {
      return InvalidArgumentError("truncated percent escape at offset " + std::to_string(i));
    }
    int hi = hex(in[i + 1]), lo = hex(in[i + 2]);
    if (hi < 0 || lo < 0) {
      return InvalidArgumentError("bad percent escape \"" + std::string(in.substr(i, 3)) + "\" at offset " +
                                  std::to_string(i));
    }
    out.push_back(static_cast<char>(hi * 16 + lo));
    i += 2;
  }
  return out;
}

Status ParseQuery(std::string_view query, std::map<std::string, std::string>* out) {
  while (!query.empty()) {
    size_t amp = query.find('&');
    std::string_view pair = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view{} : query.substr(amp + 1);
    if (pair.empty()) continue;
    size_t eq = pair.find('=');
    FEDGE_ASSIGN_OR_RETURN(std::string key, PercentDecode(pair.substr(0, eq)));
    std::string value;
    if (eq != std::string_view::npos) {
      FEDGE_ASSIGN_OR_RETURN(value, PercentDecode(pair.substr(eq + 1)));
    }
    (*out)[std::move(key)] = std::move(value);
  }
  return OkStatus();
}

namespace {

class Session;

// Runs handlers off the I/O threads. Bounded: TryPush fails when full.
class WorkerPool {
 public:
  WorkerPool(int threads, size_t max_queued) : max_queued_(max_queued) {
    for (int i = 0; i < std::max(1, threads); ++i) threads_.emplace_back([this] { Run(); });
  }
  ~WorkerPool() { Join(); }

  bool TryPush(std::function<void()> job) {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_ || queue_.size() >= max_queued_) return false;
    queue_.push_back(std::move(job));
    cv_.notify_one();
    return true;
  }

  size_t queued() {
    std::lock_guard<std::mutex> lock(mu_);
    return queue_.size();
  }

  // Runs what is queued, then joins. Jobs already running finish first.
  void Join() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) {
      if (t.joinable()) t.join();
    }
    threads_.clear();
  }

 private:
  void Run() {
    for (;;) {
      std::function<void()> job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
        if (queue_.empty()) return;
        job = std::move(queue_.front());
        queue_.pop_front();
      }
      job();
    }
  }

  const size_t max_queued_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;  // guarded by mu_
  bool stopping_ = false;                    // guarded by mu_
  std::vector<std::thread> threads_;
};

// State shared by the acceptor, sessions and Stop(). Sessions hold a shared_ptr to it.
struct ServerState {
  ServerState(const HttpServerOptions& o, const std::map<std::string, HttpHandler>* r)
      : options(o), routes(r), workers(o.worker_threads, o.max_queued_requests) {}

  const HttpServerOptions options;
  const std::map<std::string, HttpHandler>* routes;  // owned by HttpServer, immutable
  asio::io_context ioc;
  // Keeps ioc.run() going while a request waits for a worker and no socket operation is
  // pending; released by Stop() once the workers are done.
  asio::executor_work_guard<asio::io_context::executor_type> work{ioc.get_executor()};
  WorkerPool workers;
  std::atomic<bool> stopping{false};
  std::atomic<size_t> connections{0};

  std::mutex mu;                    // guards the members below
  std::condition_variable drained;  // in_flight reached 0
  size_t in_flight = 0;             // requests read, response not written
  std::unordered_map<uint64_t, std::weak_ptr<Session>> sessions;
  uint64_t next_session = 0;

  void BeginRequest() {
    std::lock_guard<std::mutex> lock(mu);
    ++in_flight;
  }
  void EndRequest() {
    std::lock_guard<std::mutex> lock(mu);
    if (--in_flight == 0) drained.notify_all();
  }
};

std::string Lower(std::string_view s) {
  std::string out(s);
  for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// "/v1/models/*" matches "/v1/models/x" and "/v1/models/a/b", not "/v1/models/".
bool MatchesPrefixRoute(const std::string& route, const std::string& path) {
  if (route.size() < 2 || route.compare(route.size() - 2, 2, "/*") != 0) return false;
  const size_t n = route.size() - 1;  // keep the '/'
  return path.size() > n && path.compare(0, n, route, 0, n) == 0;
}

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket socket, std::shared_ptr<ServerState> state)
      : stream_(std::move(socket)), state_(std::move(state)) {
    beast::error_code ec;
    auto ep = stream_.socket().remote_endpoint(ec);
    if (!ec) remote_ = ep.address().to_string() + ":" + std::to_string(ep.port());
  }

  ~Session() {
    state_->connections.fetch_sub(1);
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->sessions.erase(id_);
    if (state_->sessions.empty()) state_->drained.notify_all();
  }

  void Start() {
    {
      std::lock_guard<std::mutex> lock(state_->mu);
      id_ = state_->next_session++;
      state_->sessions[id_] = weak_from_this();
    }
    asio::dispatch(stream_.get_executor(), [self = shared_from_this()] { self->ReadHeader(); });
  }

  // Closes the socket from any thread; pending operations complete with an error.
  void Close() {
    asio::post(stream_.get_executor(), [self = shared_from_this()] {
      self->closed_ = true;
      beast::error_code ec;
      self->stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
      self->stream_.close();
    });
  }

  bool closed() const { return closed_.load(); }

  // Called from a worker thread: writes one chunk and waits. False when the write failed.
  bool WriteChunkBlocking(std::string data, bool last) {
    auto done = std::make_shared<std::promise<bool>>();
    auto result = done->get_future();
    asio::post(stream_.get_executor(),
               [self = shared_from_this(), data = std::move(data), last, done]() mutable {
                 if (self->closed_) {
                   done->set_value(false);
                   return;
                 }
                 auto buf = std::make_shared<std::string>(std::move(data));
                 self->stream_.expires_after(self->state_->options.write_timeout);
                 auto on_write = [self, buf, done](beast::error_code ec, size_t) {
                   if (ec) self->closed_ = true;
                   done->set_value(!ec);
                 };
                 if (last) {
                   auto chunk = std::make_shared<http::chunk_last<>>();
                   asio::async_write(self->stream_, *chunk,
                                     [chunk, on_write](beast::error_code ec, size_t n) { on_write(ec, n); });
                 } else {
                   auto chunk = std::make_shared<http::chunk_body<asio::const_buffer>>(asio::buffer(*buf));
                   asio::async_write(self->stream_, *chunk,
                                     [chunk, on_write](beast::error_code ec, size_t n) { on_write(ec, n); });
                 }
               });
    return result.get();
  }

  // Called from a worker thread: sends the header of a chunked response and waits.
  bool WriteStreamHeaderBlocking(const HttpResponse& out) {
    auto done = std::make_shared<std::promise<bool>>();
    auto result = done->get_future();
    auto res =
        std::make_shared<http::response<http::empty_body>>(static_cast<http::status>(out.status), version_);
    res->set(http::field::server, "fedge");
    res->set(http::field::content_type, out.content_type);
    for (const auto& [k, v] : out.headers) res->set(k, v);
    res->keep_alive(false);
    res->chunked(true);
    asio::post(stream_.get_executor(), [self = shared_from_this(), res, done] {
      if (self->closed_) {
        done->set_value(false);
        return;
      }
      auto sr = std::make_shared<http::response_serializer<http::empty_body>>(*res);
      self->stream_.expires_after(self->state_->options.write_timeout);
      http::async_write_header(self->stream_, *sr, [self, res, sr, done](beast::error_code ec, size_t) {
        if (ec) self->closed_ = true;
        done->set_value(!ec);
      });
    });
    return result.get();
  }

  // Called from a worker thread after a stream ends: closes the connection.
  void FinishStream() {
    asio::post(stream_.get_executor(), [self = shared_from_this()] {
      self->Shutdown();
      self->state_->EndRequest();
    });
  }

 private:
  void ReadHeader() {
    if (state_->stopping) return Shutdown();
    parser_.emplace();
    parser_->header_limit(
        static_cast<uint32_t>(std::min<size_t>(state_->options.max_header_bytes, UINT32_MAX)));
    parser_->body_limit(state_->options.max_body_bytes);
    stream_.expires_after(requests_ == 0 ? state_->options.header_timeout : state_->options.idle_timeout);
    http::async_read_header(
        stream_, buffer_, *parser_,
        [self = shared_from_this()](beast::error_code ec, size_t) { self->OnHeader(ec); });
  }

  void OnHeader(beast::error_code ec) {
    if (ec == http::error::header_limit) {
      return ReplyAndClose(HttpResponse::Error(431,
                                               "request headers exceed the limit of " +
                                                   std::to_string(state_->options.max_header_bytes) +
                                                   " bytes",
                                               "invalid_request_error", "headers_too_large"));
    }
    if (ec == http::error::body_limit) return ReplyAndClose(TooLarge());  // declared Content-Length
    if (ec == http::error::end_of_stream || ec == beast::error::timeout ||
        ec == asio::error::operation_aborted || ec == asio::error::connection_reset ||
        ec == asio::error::eof || closed_) {
      return Shutdown();  // the client left, idled out or was too slow: nothing to answer
    }
    if (ec) {
      return ReplyAndClose(HttpResponse::Error(400, "malformed HTTP request: " + ec.message(),
                                               "invalid_request_error", "bad_request"));
    }
    ++requests_;
    const auto& head = parser_->get();
    version_ = head.version();
    keep_alive_ = head.keep_alive();
    request_ = HttpRequest{};
    request_.method = std::string(head.method_string());
    request_.remote_address = remote_;
    std::string_view target(head.target().data(), head.target().size());
    size_t qmark = target.find('?');
    auto path = PercentDecode(target.substr(0, qmark));
    if (!path.ok()) {
      return ReplyAndClose(HttpResponse::Error(400, "request path: " + path.status().message(),
                                               "invalid_request_error", "bad_escape"));
    }
    request_.path = std::move(*path);
    if (qmark != std::string_view::npos) {
      Status st = ParseQuery(target.substr(qmark + 1), &request_.query);
      if (!st.ok()) {
        return ReplyAndClose(
            HttpResponse::Error(400, "query string: " + st.message(), "invalid_request_error", "bad_escape"));
      }
    }
    for (const auto& field : head) {
      request_.headers[Lower(std::string_view(field.name_string().data(), field.name_string().size()))] =
          std::string(field.value());
    }

    auto it = state_->routes->find(request_.method + " " + request_.path);
    if (it == state_->routes->end()) {
      // The longest prefix route of this method that covers the path.
      size_t best = 0;
      for (auto r = state_->routes->begin(); r != state_->routes->end(); ++r) {
        const size_t sp = r->first.find(' ');
        if (r->first.compare(0, sp, request_.method) != 0 || sp != request_.method.size()) continue;
        const std::string route = r->first.substr(sp + 1);
        if (MatchesPrefixRoute(route, request_.path) && route.size() > best) {
          best = route.size();
          it = r;
        }
      }
    }
    if (it == state_->routes->end()) {
      bool path_known = false;
      for (const auto& [key, _] : *state_->routes) {
        const std::string route = key.substr(key.find(' ') + 1);
        if (route == request_.path || MatchesPrefixRoute(route, request_.path)) path_known = true;
      }
      HttpResponse err =
          path_known
              ? HttpResponse::Error(405, "method " + request_.method + " not allowed on " + request_.path,
                                    "invalid_request_error", "method_not_allowed")
              : HttpResponse::Error(404, "no route for " + request_.path, "not_found_error", "not_found");
      // Answer without reading a body we do not want.
      return ReplyAndClose(std::move(err));
    }
    handler_ = &it->second;
    if (auto declared = parser_->content_length(); declared && *declared > state_->options.max_body_bytes) {
      return ReplyAndClose(TooLarge());
    }
    if (parser_->is_done()) return Dispatch();
    if (Lower(std::string(head[http::field::expect])) == "100-continue") {
      auto cont = std::make_shared<http::response<http::empty_body>>(http::status::continue_, version_);
      stream_.expires_after(state_->options.write_timeout);
      http::async_write(stream_, *cont, [self = shared_from_this(), cont](beast::error_code ec, size_t) {
        if (ec) return self->Shutdown();
        self->ReadBody();
      });
      return;
    }
    ReadBody();
  }

  HttpResponse TooLarge() const {
    return HttpResponse::Error(
        413, "request body exceeds the limit of " + std::to_string(state_->options.max_body_bytes) + " bytes",
        "invalid_request_error", "body_too_large");
  }

  void ReadBody() {
    stream_.expires_after(state_->options.body_timeout);
    http::async_read(stream_, buffer_, *parser_,
                     [self = shared_from_this()](beast::error_code ec, size_t) { self->OnBody(ec); });
  }

  void OnBody(beast::error_code ec) {
    if (ec == http::error::body_limit) return ReplyAndClose(TooLarge());
    // A timed-out tcp_stream is already closed: a slow body just loses its connection.
    if (ec) return Shutdown();
    Dispatch();
  }

  void Dispatch() {
    request_.body = std::move(parser_->get().body());
    parser_.reset();
    state_->BeginRequest();
    bool inline_route = request_.method == "GET" && state_->options.inline_paths.count(request_.path) > 0;
    if (inline_route) {
      HttpResponse out = RunHandler(*handler_, request_);
      if (out.stream) {
        out = HttpResponse::Error(500, "streamed responses are not allowed on inline routes", "server_error");
      }
      return WriteResponse(std::move(out));
    }
    auto self = shared_from_this();
    auto watch = std::make_shared<ClientWatch>();
    watch_ = watch;
    request_.client_gone = [watch] { return watch->gone.load(); };
    WatchForClose(watch);
    bool queued = state_->workers.TryPush([self, watch] {
      HttpResponse out = RunHandler(*self->handler_, self->request_);
      if (out.stream) return self->Stream(std::move(out));
      watch->done = true;
      asio::post(self->stream_.get_executor(),
                 [self, out = std::move(out)]() mutable { self->WriteResponse(std::move(out)); });
    });
    if (!queued) {
      HttpResponse busy = HttpResponse::Error(503, "server busy: too many requests waiting; retry shortly",
                                              "unavailable", "server_busy");
      busy.headers.emplace_back("Retry-After", "1");
      WriteResponse(std::move(busy));
    }
  }

  // While a request is handled nothing reads the socket; a read-readiness wait
  // tells a client that closed (EOF or reset: gone) from one that sent more
  // (pipelined bytes: left unread, watching ends). A wait that outlives its
  // request (done) ends at its next wake-up without re-arming, so at most one
  // stale wait is pending per connection.
  struct ClientWatch {
    std::atomic<bool> gone{false};
    std::atomic<bool> done{false};  // the response is complete: stop watching
  };
  void WatchForClose(std::shared_ptr<ClientWatch> watch) {
    stream_.socket().async_wait(
        tcp::socket::wait_read, [self = shared_from_this(), watch](beast::error_code ec) {
          if (ec == asio::error::operation_aborted || watch->done) return;
          if (ec) {
            watch->gone = true;
            return;
          }
          char byte;
          ssize_t n = ::recv(self->stream_.socket().native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
          if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
            watch->gone = true;
          } else if (n < 0) {
            self->WatchForClose(watch);  // nothing to read after all: keep watching
          }
        });
  }

  static HttpResponse RunHandler(const HttpHandler& handler, const HttpRequest& request) {
    try {
      return handler(request);
    } catch (const std::exception& e) {
      return HttpResponse::Error(500, std::string("internal error: ") + e.what(), "server_error");
    } catch (...) {
      return HttpResponse::Error(500, "internal error", "server_error");
    }
  }

  // On a worker thread.
  void Stream(HttpResponse out) {
    struct Writer : HttpStreamWriter {
      explicit Writer(Session* s) : session(s) {}
      bool Write(std::string_view data) override {
        if (failed || session->closed() || session->state_->stopping) {
          failed = true;
          return false;
        }
        if (data.empty()) return true;  // an empty chunk would end the body
        if (!session->WriteChunkBlocking(std::string(data), /*last=*/false)) failed = true;
        return !failed;
      }
      bool Closed() const override {
        return failed || session->closed() || session->state_->stopping ||
               (session->watch_ && session->watch_->gone.load());
      }
      Session* session;
      bool failed = false;
    } writer(this);
    if (WriteStreamHeaderBlocking(out)) {
      try {
        out.stream(writer);
      } catch (const std::exception& e) {
        log::Warn("http stream producer threw", {{"path", request_.path}, {"error", e.what()}});
      }
      if (!writer.failed) WriteChunkBlocking("", /*last=*/true);
    }
    FinishStream();
  }

  void WriteResponse(HttpResponse out, bool close_after = false) {
    auto res =
        std::make_shared<http::response<http::string_body>>(static_cast<http::status>(out.status), version_);
    res->set(http::field::server, "fedge");
    res->set(http::field::content_type, out.content_type);
    for (const auto& [k, v] : out.headers) res->set(k, v);
    bool keep = keep_alive_ && !close_after && !state_->stopping;
    res->keep_alive(keep);
    res->body() = std::move(out.body);
    res->prepare_payload();
    stream_.expires_after(state_->options.write_timeout);
    http::async_write(stream_, *res, [self = shared_from_this(), res, keep](beast::error_code ec, size_t) {
      self->state_->EndRequest();
      if (ec || !keep) return self->Shutdown();
      self->ReadHeader();
    });
  }

  // Answers an error that ends the connection (the rest of the request is not read).
  void ReplyAndClose(HttpResponse out) {
    state_->BeginRequest();
    WriteResponse(std::move(out), /*close_after=*/true);
  }

  void Shutdown() {
    closed_ = true;
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
    stream_.close();
  }

  beast::tcp_stream stream_;
  std::shared_ptr<ServerState> state_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  HttpRequest request_;
  const HttpHandler* handler_ = nullptr;
  unsigned version_ = 11;
  bool keep_alive_ = false;
  uint64_t requests_ = 0;
  uint64_t id_ = 0;
  std::string remote_;
  std::atomic<bool> closed_{false};
  std::shared_ptr<ClientWatch> watch_;  // the current worker-pool request's (set before it is queued)
};

}  // namespace

struct HttpServer::Impl {
  std::shared_ptr<ServerState> state;
  std::unique_ptr<tcp::acceptor> acceptor;
  std::unique_ptr<asio::steady_timer> retry_timer;
  std::vector<std::thread> io_threads;
  bool stopped = false;

  void Accept() {
    acceptor->async_accept(asio::make_strand(state->ioc), [this](beast::error_code ec, tcp::socket socket) {
      if (state->stopping) return;
      if (ec) {
        // EMFILE and friends: back off instead of spinning on the error.
        log::Warn("http accept failed", {{"error", ec.message()}});
        retry_timer->expires_after(std::chrono::milliseconds(50));
        retry_timer->async_wait([this](beast::error_code) {
          if (!state->stopping) Accept();
        });
        return;
      }
      if (state->connections.load() >= state->options.max_connections) {
        beast::error_code ignored;
        socket.close(ignored);
      } else {
        state->connections.fetch_add(1);
        std::make_shared<Session>(std::move(socket), state)->Start();
      }
      Accept();
    });
  }
};

HttpServer::HttpServer(std::string address, HttpServerOptions options)
    : impl_(std::make_unique<Impl>()), options_(std::move(options)) {
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

size_t HttpServer::queued_requests() const { return impl_->state ? impl_->state->workers.queued() : 0; }

std::string HttpServer::address() const { return host_ + ":" + std::to_string(port_); }

size_t HttpServer::open_connections() const { return impl_->state ? impl_->state->connections.load() : 0; }

Status HttpServer::Start() {
  if (impl_->state) return FailedPreconditionError("HttpServer already started");
  impl_->state = std::make_shared<ServerState>(options_, &routes_);
  auto& ioc = impl_->state->ioc;
  std::string where = host_ + ":" + std::to_string(port_);
  try {
    tcp::endpoint endpoint;
    beast::error_code ec;
    auto addr = asio::ip::make_address(host_, ec);
    if (!ec) {
      endpoint = tcp::endpoint(addr, static_cast<unsigned short>(port_));
    } else {
      tcp::resolver resolver(ioc);
      auto results = resolver.resolve(host_, std::to_string(port_), ec);
      if (ec || results.empty()) {
        impl_->state.reset();
        return UnavailableError("cannot resolve " + host_ + ": " + ec.message());
      }
      endpoint = results.begin()->endpoint();
    }
    impl_->acceptor = std::make_unique<tcp::acceptor>(ioc);
    impl_->acceptor->open(endpoint.protocol());
    impl_->acceptor->set_option(asio::socket_base::reuse_address(true));
    impl_->acceptor->bind(endpoint);
    impl_->acceptor->listen(asio::socket_base::max_listen_connections);
    port_ = impl_->acceptor->local_endpoint().port();
  } catch (const std::exception& e) {
    impl_->acceptor.reset();
    impl_->state.reset();
    return UnavailableError("cannot listen on " + where + ": " + e.what());
  }
  impl_->retry_timer = std::make_unique<asio::steady_timer>(ioc);
  impl_->Accept();
  for (int i = 0; i < std::max(1, options_.io_threads); ++i) {
    impl_->io_threads.emplace_back([state = impl_->state] {
      // A handler that throws on the I/O thread loses its connection, not the process:
      // Asio lets run() be called again after an exception escaped it.
      for (;;) {
        try {
          state->ioc.run();
          return;
        } catch (const std::exception& e) {
          log::Error("http I/O handler threw; connection dropped", {{"error", e.what()}});
        } catch (...) {
          log::Error("http I/O handler threw; connection dropped", {});
        }
      }
    });
  }
  return OkStatus();
}

void HttpServer::Stop() {
  if (!impl_ || !impl_->state || impl_->stopped) return;
  impl_->stopped = true;
  auto state = impl_->state;
  state->stopping = true;
  // 1. Stop accepting.
  asio::post(state->ioc, [this] {
    beast::error_code ec;
    impl_->acceptor->close(ec);
    impl_->retry_timer->cancel();
  });
  // 2. Let in-flight requests finish, up to drain_timeout.
  {
    std::unique_lock<std::mutex> lock(state->mu);
    state->drained.wait_for(lock, options_.drain_timeout, [&] { return state->in_flight == 0; });
  }
  // 3. Close every connection: idle reads end, streams see Write() fail.
  std::vector<std::shared_ptr<Session>> open;
  {
    std::lock_guard<std::mutex> lock(state->mu);
    for (auto& [_, weak] : state->sessions) {
      if (auto s = weak.lock()) open.push_back(std::move(s));
    }
  }
  for (auto& s : open) s->Close();
  open.clear();
  // 4. Handlers still running finish (streams fail fast now). With the acceptor and
  // every socket closed the event loop runs out of work and its threads return; stop()
  // is the fallback for an operation that outlives the grace period.
  state->workers.Join();
  state->work.reset();
  bool quiet = false;
  {
    std::unique_lock<std::mutex> lock(state->mu);
    quiet = state->drained.wait_for(lock, std::chrono::seconds(2),
                                    [&] { return state->in_flight == 0 && state->sessions.empty(); });
  }
  if (!quiet) state->ioc.stop();
  for (auto& t : impl_->io_threads) {
    if (t.joinable()) t.join();
  }
  impl_->io_threads.clear();
  impl_->retry_timer.reset();
  impl_->acceptor.reset();
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
