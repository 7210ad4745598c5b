#define _TURN_OFF_PLATFORM_STRING
#include "fedge/http_server.h"

#include <cpprest/http_client.h>
#include <gtest/gtest.h>
#include <prometheus/counter.h>
#include <prometheus/registry.h>

namespace fedge {
namespace {

struct Reply {
  int status;
  std::string body;
};

Reply Send(const std::string& base, const std::string& method, const std::string& path,
           const std::string& body = "") {
  web::http::client::http_client client(base);
  web::http::http_request req(method);
  req.set_request_uri(path);
  if (!body.empty()) req.set_body(body, "application/json");
  auto resp = client.request(req).get();
  return {resp.status_code(), resp.extract_string(true).get()};
}

class HttpServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = std::make_unique<HttpServer>("127.0.0.1:0", HttpServerOptions{.max_body_bytes = 64});
    server_->Handle("GET", "/healthz", [](const HttpRequest&) { return HttpResponse::Text(200, "ok"); });
    server_->Handle("POST", "/echo", [](const HttpRequest& r) {
      return HttpResponse::Json(
          200, "{\"got\":\"" + r.body + "\",\"q\":\"" + (r.query.count("x") ? r.query.at("x") : "") + "\"}");
    });
    server_->Handle("GET", "/items/*",
                    [](const HttpRequest& r) { return HttpResponse::Text(200, "any " + r.path); });
    server_->Handle("GET", "/items/a/*",
                    [](const HttpRequest& r) { return HttpResponse::Text(200, "a " + r.path); });
    server_->Handle("GET", "/items/fixed",
                    [](const HttpRequest&) { return HttpResponse::Text(200, "fixed"); });
    server_->Handle("GET", "/boom",
                    [](const HttpRequest&) -> HttpResponse { throw std::runtime_error("handler exploded"); });
    registry_ = std::make_shared<prometheus::Registry>();
    auto& family =
        prometheus::BuildCounter().Name("fedge_test_requests_total").Help("test").Register(*registry_);
    family.Add({{"code", "200"}}).Increment(3);
    server_->HandleMetrics(registry_);
    ASSERT_TRUE(server_->Start().ok());
    base_ = "http://" + server_->address();
  }

  std::unique_ptr<HttpServer> server_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::string base_;
};

TEST_F(HttpServerTest, RoutesByMethodAndPath) {
  EXPECT_EQ(Send(base_, "GET", "/healthz").body, "ok");
  EXPECT_EQ(Send(base_, "POST", "/echo?x=a%20b", "hi").body, "{\"got\":\"hi\",\"q\":\"a b\"}");
  EXPECT_EQ(Send(base_, "GET", "/nope").status, 404);
  Reply wrong_method = Send(base_, "GET", "/echo");
  EXPECT_EQ(wrong_method.status, 405);
  EXPECT_NE(wrong_method.body.find("not allowed"), std::string::npos);
}

TEST_F(HttpServerTest, PrefixRoutesServeEveryPathBelowThemLongestFirst) {
  // OpenAI's /v1/models/{id}, where an id may hold a '/' (namespace/job).
  EXPECT_EQ(Send(base_, "GET", "/items/x").body, "any /items/x");
  EXPECT_EQ(Send(base_, "GET", "/items/ns/job").body, "any /items/ns/job");
  EXPECT_EQ(Send(base_, "GET", "/items/a/b").body, "a /items/a/b");
  EXPECT_EQ(Send(base_, "GET", "/items/fixed").body, "fixed") << "an exact route wins";
  EXPECT_EQ(Send(base_, "GET", "/items/").status, 404) << "the prefix itself is not below it";
  EXPECT_EQ(Send(base_, "GET", "/itemsx").status, 404);
  EXPECT_EQ(Send(base_, "POST", "/items/x").status, 405);
}

TEST_F(HttpServerTest, RejectsOversizedBodiesWith413) {
  Reply r = Send(base_, "POST", "/echo", std::string(65, 'x'));
  EXPECT_EQ(r.status, 413);
  EXPECT_NE(r.body.find("exceeds the limit"), std::string::npos);
}

TEST_F(HttpServerTest, HandlerExceptionBecomes500WithMessage) {
  Reply r = Send(base_, "GET", "/boom");
  EXPECT_EQ(r.status, 500);
  EXPECT_NE(r.body.find("handler exploded"), std::string::npos);
}

TEST_F(HttpServerTest, ServesPrometheusText) {
  Reply r = Send(base_, "GET", "/metrics");
  EXPECT_EQ(r.status, 200);
  EXPECT_NE(r.body.find("fedge_test_requests_total{code=\"200\"} 3"), std::string::npos) << r.body;
}

TEST(HttpResponseTest, MapsStatusCodesToHttp) {
  EXPECT_EQ(HttpResponse::FromStatus(InvalidArgumentError("x")).status, 400);
  EXPECT_EQ(HttpResponse::FromStatus(FailedPreconditionError("not ready")).status, 503);
  EXPECT_EQ(HttpResponse::FromStatus(InternalError("x")).status, 500);
}

TEST(SplitHostPortTest, RejectsMalformedAddresses) {
  std::string host;
  int port = 0;
  EXPECT_TRUE(SplitHostPort("127.0.0.1:8080", &host, &port).ok());
  EXPECT_EQ(port, 8080);
  EXPECT_FALSE(SplitHostPort("127.0.0.1", &host, &port).ok());
  EXPECT_FALSE(SplitHostPort("h:99999", &host, &port).ok());
  EXPECT_FALSE(SplitHostPort("h:12x", &host, &port).ok());
}

}  // namespace
}  // namespace fedge
