// cpprestsdk adapter: every cpprest/boost exception is caught here and becomes a Status.
#define _TURN_OFF_PLATFORM_STRING
#include "fedge/op/rest_kube_client.h"

#include <cpprest/containerstream.h>
#include <cpprest/http_client.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <boost/asio/ssl.hpp>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string_view>
#include <vector>

#include "fedge/log.h"

namespace fedge::op {
namespace http = web::http;
namespace client = web::http::client;

namespace {

// The longest watch event line accepted. The API server's objects are at most ~1.5 MiB
// (etcd's request limit); anything longer is a broken or hostile stream.
constexpr size_t kMaxWatchEventBytes = 16u << 20;

std::string Enc(const std::string& s) { return web::uri::encode_data_string(s); }

void AddQuery(std::string* q, const std::string& key, const std::string& value) {
  if (value.empty()) return;
  q->append(q->empty() ? "?" : "&");
  q->append(key).append("=").append(Enc(value));
}

// Converts a non-2xx response body (a metav1.Status, usually) to a Status.
Status ErrorFromBody(int code, const std::string& body) {
  std::string reason, message = body;
  try {
    Json j = Json::parse(body);
    if (j.is_object()) {
      reason = j.value("reason", "");
      message = j.value("message", body);
      if (j.contains("code") && j["code"].is_number_integer()) code = j["code"].get<int>();
    }
  } catch (const std::exception&) {
  }
  if (reason.empty()) {
    switch (code) {
      case 400:
        reason = "BadRequest";
        break;
      case 401:
        reason = "Unauthorized";
        break;
      case 403:
        reason = "Forbidden";
        break;
      case 404:
        reason = "NotFound";
        break;
      case 405:
        reason = "MethodNotAllowed";
        break;
      case 409:
        reason = "Conflict";
        break;
      case 410:
        reason = "Gone";
        break;
      case 415:
        reason = "UnsupportedMediaType";
        break;
      case 422:
        reason = "Invalid";
        break;
      case 429:
        reason = "TooManyRequests";
        break;
      case 500:
        reason = "InternalError";
        break;
      case 503:
        reason = "ServiceUnavailable";
        break;
      case 504:
        reason = "Timeout";
        break;
      default:
        break;
    }
  }
  return KubeError(reason, code, message);
}

// The kubeconfig's TLS material, decoded once per client and shared by its connections.
// cpprest builds an SSL context per new connection; decoding the PEMs there (CA, client
// certificate, client key) went through OpenSSL 3's decoder set-up each time, ~20 ms of
// CPU per connection in perf, paid by the 16 connections a reconcile pass opens.
struct TlsMaterial {
  X509_STORE* store = nullptr;  // the configured CA alone; null: OpenSSL's default trust
  X509* cert = nullptr;         // client certificate
  std::vector<X509*> chain;     // certificates after it in client-certificate(-data)
  EVP_PKEY* key = nullptr;      // its private key
  TlsMaterial() = default;
  TlsMaterial(const TlsMaterial&) = delete;
  TlsMaterial& operator=(const TlsMaterial&) = delete;
  ~TlsMaterial() {
    X509_STORE_free(store);
    X509_free(cert);
    for (X509* c : chain) X509_free(c);
    EVP_PKEY_free(key);
  }
};

std::vector<X509*> CertsOf(const std::string& pem) {
  std::vector<X509*> out;
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  while (X509* cert = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr)) out.push_back(cert);
  ERR_clear_error();  // the end of the PEM data reads as an error
  BIO_free(bio);
  return out;
}

std::shared_ptr<const TlsMaterial> LoadTlsMaterial(const KubeConfig& k) {
  auto m = std::make_shared<TlsMaterial>();
  if (!k.ca_pem.empty()) {
    // A store holding the CA's certificates (none when it holds none: every handshake
    // then fails verification, as it should with an unreadable CA).
    m->store = X509_STORE_new();
    std::vector<X509*> cas = CertsOf(k.ca_pem);
    if (cas.empty())
      log::Error("kube TLS: the configured CA holds no certificate; every handshake will fail", {});
    for (X509* c : cas) {
      X509_STORE_add_cert(m->store, c);
      X509_free(c);
    }
  }
  if (!k.client_cert_pem.empty()) {
    std::vector<X509*> certs = CertsOf(k.client_cert_pem);
    if (!certs.empty()) {
      m->cert = certs.front();
      m->chain.assign(certs.begin() + 1, certs.end());
    }
    BIO* bio = BIO_new_mem_buf(k.client_key_pem.data(), static_cast<int>(k.client_key_pem.size()));
    m->key = PEM_read_bio_PrivateKey(bio, nullptr, nullptr, nullptr);
    BIO_free(bio);
    ERR_clear_error();
    if (m->cert == nullptr || m->key == nullptr) {
      log::Error("kube TLS: the client certificate or key does not parse; connecting without them", {});
    }
  }
  return m;
}

}  // namespace

void SkipSystemTrustStoreLoad() { setenv("SSL_CERT_FILE", "/dev/null", /*overwrite=*/1); }

struct RestKubeClient::Impl {
  KubeConfig cfg;
  RestClientOptions opts;
  std::unique_ptr<client::http_client> http;  // pooled connections for ordinary requests
  std::shared_ptr<const TlsMaterial> tls;     // decoded once (LoadTlsMaterial)

  client::http_client_config MakeConfig(std::chrono::milliseconds timeout) const {
    client::http_client_config c;
    c.set_timeout(std::chrono::duration_cast<std::chrono::microseconds>(timeout));
    c.set_validate_certificates(!cfg.insecure_skip_verify);
    c.set_ssl_context_callback([m = tls](boost::asio::ssl::context& ctx) {
      // Runs inside cpprest's connect path: it must not throw past here.
      SSL_CTX* native = ctx.native_handle();
      // With a CA configured, only that CA: cpprest has already loaded OpenSSL's default
      // trust store into this context, and adding the CA to it would also trust every
      // public CA for the API server (client-go trusts the configured CA alone).
      if (m->store != nullptr) SSL_CTX_set1_cert_store(native, m->store);
      if (m->cert != nullptr && m->key != nullptr) {
        bool ok = SSL_CTX_use_certificate(native, m->cert) == 1;
        for (X509* c : m->chain) ok = ok && SSL_CTX_add1_chain_cert(native, c) == 1;
        ok = ok && SSL_CTX_use_PrivateKey(native, m->key) == 1;
        if (!ok) {
          ERR_clear_error();
          log::Error("kube TLS setup failed: the client certificate does not match its key", {});
        }
      }
    });
    return c;
  }

  std::string Token() const {
    if (!cfg.token_file.empty()) {
      std::ifstream in(cfg.token_file);
      std::stringstream ss;
      ss << in.rdbuf();
      std::string t = ss.str();
      while (!t.empty() && std::isspace(static_cast<unsigned char>(t.back()))) t.pop_back();
      if (!t.empty()) return t;
    }
    return cfg.token;
  }

  http::http_request MakeRequest(const http::method& m, const std::string& path_query,
                                 const std::string& accept = "application/json") const {
    http::http_request req(m);
    req.set_request_uri(path_query);
    req.headers().add("Accept", accept);
    req.headers().add("User-Agent", opts.user_agent);
    std::string t = Token();
    if (!t.empty()) req.headers().add("Authorization", "Bearer " + t);
    return req;
  }

  // One request/response; returns the parsed body of a 2xx response.
  StatusOr<Json> Do(const http::method& m, const std::string& path_query, const Json* body,
                    const std::string& content_type, const std::string& accept = "application/json") {
    try {
      auto req = MakeRequest(m, path_query, accept);
      if (body) req.set_body(body->dump(), content_type);
      http::http_response resp = http->request(req).get();
      std::string text = resp.extract_utf8string(true).get();
      int code = resp.status_code();
      if (code < 200 || code >= 300) return ErrorFromBody(code, text);
      if (text.empty()) return Json::object();
      return Json::parse(text);
    } catch (const http::http_exception& e) {
      std::string what = e.what();
      if (what.find("timed out") != std::string::npos || e.error_code() == std::errc::timed_out) {
        return DeadlineExceededError("Timeout: " + std::string(m) + " " + path_query + ": " + what);
      }
      return UnavailableError("ServiceUnavailable: " + std::string(m) + " " + path_query + ": " + what);
    } catch (const Json::exception& e) {
      return InternalError(std::string("InternalError: malformed JSON from the API server: ") + e.what());
    } catch (const std::exception& e) {
      return UnavailableError("ServiceUnavailable: " + std::string(m) + " " + path_query + ": " + e.what());
    }
  }
};

RestKubeClient::RestKubeClient(KubeConfig config, RestClientOptions options)
    : impl_(std::make_unique<Impl>()) {
  impl_->cfg = std::move(config);
  impl_->opts = std::move(options);
  impl_->tls = LoadTlsMaterial(impl_->cfg);
  impl_->http = std::make_unique<client::http_client>(impl_->cfg.server,
                                                      impl_->MakeConfig(impl_->opts.request_timeout));
}

RestKubeClient::~RestKubeClient() = default;

StatusOr<Json> RestKubeClient::Get(const Resource& r, const std::string& ns, const std::string& name,
                                   const std::string& subresource) {
  ++requests_;
  std::string path = r.ObjectPath(ns, name);
  if (!subresource.empty()) path += "/" + subresource;
  return impl_->Do(http::methods::GET, path, nullptr, "");
}

StatusOr<Json> RestKubeClient::GetPath(const std::string& path) {
  ++requests_;
  // The API server answers /openid/v1/jwks only as application/jwk-set+json (406 for a
  // request that accepts only application/json); both are JSON.
  return impl_->Do(http::methods::GET, path, nullptr, "", "application/json, application/jwk-set+json");
}

StatusOr<ListResult> RestKubeClient::List(const Resource& r, const std::string& ns, const ListOptions& opts) {
  ++requests_;
  std::string q;
  AddQuery(&q, "labelSelector", opts.label_selector);
  AddQuery(&q, "fieldSelector", opts.field_selector);
  if (opts.limit > 0) AddQuery(&q, "limit", std::to_string(opts.limit));
  AddQuery(&q, "continue", opts.continue_token);
  AddQuery(&q, "resourceVersion", opts.resource_version);
  FEDGE_ASSIGN_OR_RETURN(Json j, impl_->Do(http::methods::GET, r.CollectionPath(ns) + q, nullptr, ""));
  ListResult out;
  if (j.contains("items") && j["items"].is_array()) {
    for (auto& item : j["items"]) {
      // List items omit apiVersion/kind; fill them so cached objects are self-describing.
      if (!item.contains("apiVersion")) item["apiVersion"] = r.api_version;
      if (!item.contains("kind")) item["kind"] = r.kind;
      out.items.push_back(std::move(item));
    }
  }
  if (j.contains("metadata")) {
    out.resource_version = j["metadata"].value("resourceVersion", "");
    out.continue_token = j["metadata"].value("continue", "");
  }
  return out;
}

Status RestKubeClient::Watch(const Resource& r, const std::string& ns, const WatchOptions& opts,
                             const std::function<void(const WatchEvent&)>& on_event, WatchCancel* cancel) {
  ++requests_;
  std::string q = "?watch=1";
  AddQuery(&q, "resourceVersion", opts.resource_version);
  AddQuery(&q, "labelSelector", opts.label_selector);
  AddQuery(&q, "fieldSelector", opts.field_selector);
  if (opts.allow_bookmarks) q += "&allowWatchBookmarks=true";
  q += "&timeoutSeconds=" + std::to_string(opts.timeout_seconds);
  std::string path = r.CollectionPath(ns) + q;
  pplx::cancellation_token_source cts;
  if (cancel) cancel->SetOnCancel([cts]() mutable { cts.cancel(); });
  struct ResetCancel {
    WatchCancel* c;
    ~ResetCancel() {
      if (c) c->SetOnCancel(nullptr);
    }
  } reset{cancel};
  // After the hook is in place: a Cancel() before it is seen here, one after runs it.
  if (cancel && cancel->cancelled()) return CancelledError("watch cancelled");
  try {
    // A dedicated client: the stream holds its connection for minutes. The timeout is a
    // guard beyond the server's own timeoutSeconds, so a silent dead connection ends.
    client::http_client watch_client(impl_->cfg.server,
                                     impl_->MakeConfig(std::chrono::seconds(opts.timeout_seconds + 30)));
    auto req = impl_->MakeRequest(http::methods::GET, path);
    http::http_response resp = watch_client.request(req, cts.get_token()).get();
    int code = resp.status_code();
    if (code < 200 || code >= 300) {
      return ErrorFromBody(code, resp.extract_utf8string(true).get());
    }
    // The stream is read in blocks of whatever has arrived (at least one byte, at most
    // 64 KiB) and split into lines here: cpprest's read_line takes the stream buffer's
    // lock once per byte, and at 1,000 nodes it was the operator's largest cost after the
    // reconcile itself (a pod event is several KB). No added latency: a block is taken as
    // soon as one byte is there, so an event is handled once its newline has arrived.
    auto buf = resp.body().streambuf();
    std::string pending;  // bytes after the last complete line
    std::vector<uint8_t> block(64 << 10);
    auto handle_line = [&](std::string_view text) -> Status {
      while (!text.empty() && (text.back() == '\r' || text.back() == ' ')) text.remove_suffix(1);
      if (text.empty()) return OkStatus();
      Json ev = Json::parse(text);
      std::string type = ev.value("type", "");
      if (type == "ERROR") {
        const Json& st = ev["object"];
        return KubeError(st.value("reason", ""), st.value("code", 500),
                         st.value("message", std::string(text)));
      }
      WatchEvent we{WatchEventType::kAdded, std::move(ev["object"])};
      if (type == "MODIFIED")
        we.type = WatchEventType::kModified;
      else if (type == "DELETED")
        we.type = WatchEventType::kDeleted;
      else if (type == "BOOKMARK")
        we.type = WatchEventType::kBookmark;
      else if (type != "ADDED")
        return OkStatus();
      if (we.type != WatchEventType::kBookmark) {
        if (!we.object.contains("apiVersion")) we.object["apiVersion"] = r.api_version;
        if (!we.object.contains("kind")) we.object["kind"] = r.kind;
      }
      on_event(we);
      return OkStatus();
    };
    while (true) {
      if (cancel && cancel->cancelled()) return CancelledError("watch cancelled");
      // Wait for one byte (or the end), then take everything else already buffered.
      size_t n = buf.getn(block.data(), 1).get();
      if (n == 0) {  // the server closed the stream; a last line without '\n' still counts
        if (Status s = handle_line(pending); !s.ok()) return s;
        return OkStatus();
      }
      const size_t more = std::min(buf.in_avail(), block.size() - 1);
      if (more > 0) n += buf.getn(block.data() + 1, more).get();
      const size_t scanned = pending.size();
      pending.append(reinterpret_cast<const char*>(block.data()), n);
      size_t start = 0;
      for (size_t nl = pending.find('\n', scanned); nl != std::string::npos; nl = pending.find('\n', start)) {
        if (Status s = handle_line(std::string_view(pending).substr(start, nl - start)); !s.ok()) return s;
        start = nl + 1;
        if (cancel && cancel->cancelled()) return CancelledError("watch cancelled");
      }
      pending.erase(0, start);
      if (pending.size() > kMaxWatchEventBytes) {
        return ResourceExhaustedError(
            "watch " + path + ": an event is longer than " + std::to_string(kMaxWatchEventBytes >> 20) +
            " MiB without a newline; the stream is dropped (re-list and watch again)");
      }
    }
  } catch (const pplx::task_canceled&) {
    return CancelledError("watch cancelled");
  } catch (const Json::exception& e) {
    return InternalError(std::string("InternalError: malformed watch event: ") + e.what());
  } catch (const std::exception& e) {
    if (cancel && cancel->cancelled()) return CancelledError("watch cancelled");
    return UnavailableError("ServiceUnavailable: watch " + path + ": " + e.what());
  }
}

StatusOr<Json> RestKubeClient::Create(const Resource& r, const std::string& ns, const Json& obj) {
  ++requests_;
  return impl_->Do(http::methods::POST, r.CollectionPath(ns), &obj, "application/json");
}

StatusOr<Json> RestKubeClient::Update(const Resource& r, const std::string& ns, const Json& obj,
                                      const std::string& subresource) {
  ++requests_;
  std::string name = obj.at("metadata").value("name", "");
  std::string path = r.ObjectPath(ns, name);
  if (!subresource.empty()) path += "/" + subresource;
  return impl_->Do(http::methods::PUT, path, &obj, "application/json");
}

StatusOr<Json> RestKubeClient::Apply(const Resource& r, const std::string& ns, const std::string& name,
                                     const Json& obj, const ApplyOptions& opts) {
  ++requests_;
  std::string path = r.ObjectPath(ns, name);
  if (!opts.subresource.empty()) path += "/" + opts.subresource;
  std::string q;
  AddQuery(&q, "fieldManager", opts.field_manager);
  if (opts.force) q += "&force=true";
  return impl_->Do(http::methods::PATCH, path + q, &obj, "application/apply-patch+yaml");
}

StatusOr<Json> RestKubeClient::MergePatch(const Resource& r, const std::string& ns, const std::string& name,
                                          const Json& patch, const std::string& subresource) {
  ++requests_;
  std::string path = r.ObjectPath(ns, name);
  if (!subresource.empty()) path += "/" + subresource;
  return impl_->Do(http::methods::PATCH, path, &patch, "application/merge-patch+json");
}

Status RestKubeClient::Delete(const Resource& r, const std::string& ns, const std::string& name,
                              const DeleteOptions& opts) {
  ++requests_;
  Json body = {
      {"apiVersion", "v1"}, {"kind", "DeleteOptions"}, {"propagationPolicy", opts.propagation_policy}};
  if (!opts.precondition_uid.empty()) body["preconditions"] = {{"uid", opts.precondition_uid}};
  if (opts.grace_period_seconds) body["gracePeriodSeconds"] = *opts.grace_period_seconds;
  auto s = impl_->Do(http::methods::DEL, r.ObjectPath(ns, name), &body, "application/json");
  return s.status();
}

StatusOr<Json> HttpGetJson(const std::string& url, std::chrono::milliseconds timeout) {
  try {
    client::http_client_config c;
    c.set_timeout(std::chrono::duration_cast<std::chrono::microseconds>(timeout));
    client::http_client http(url, c);
    http::http_response resp = http.request(http::methods::GET).get();
    std::string body = resp.extract_utf8string(true).get();
    if (resp.status_code() != 200) {
      return UnavailableError("GET " + url + ": HTTP " + std::to_string(resp.status_code()) + ": " + body);
    }
    return Json::parse(body);
  } catch (const Json::exception& e) {
    return InternalError("GET " + url + ": malformed JSON: " + e.what());
  } catch (const std::exception& e) {
    return UnavailableError("GET " + url + ": " + e.what());
  }
}

}  // namespace fedge::op
