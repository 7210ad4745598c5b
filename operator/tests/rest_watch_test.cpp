// RestKubeClient::Watch against a real HTTP server on loopback that streams watch events
// in chosen chunks: events split across chunks and several in one chunk, an event handled
// before the next one is sent, the ERROR event, and the bound on one event's length.
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "fedge/http_server.h"
#include "fedge/op/rest_kube_client.h"

namespace fedge::op {
namespace {

using namespace std::chrono_literals;

std::string Event(const std::string& type, const std::string& name) {
  return R"({"type":")" + type + R"(","object":{"metadata":{"name":")" + name +
         R"(","resourceVersion":"7"},"spec":{"nodeName":"n1"}}})" + "\n";
}

// Serves GET /api/v1/namespaces/default/pods?watch=1 with `producer` writing the body.
class WatchServer {
 public:
  explicit WatchServer(std::function<void(HttpStreamWriter&)> producer) : server_("127.0.0.1:0") {
    server_.Handle("GET", "/api/v1/namespaces/default/pods", [producer](const HttpRequest& req) {
      HttpResponse r;
      if (req.query.count("watch") == 0) return HttpResponse::Text(400, "watch only");
      r.content_type = "application/json";
      r.stream = producer;
      return r;
    });
    EXPECT_TRUE(server_.Start().ok());
  }
  KubeConfig Config() const {
    KubeConfig c;
    c.server = "http://127.0.0.1:" + std::to_string(server_.port());
    return c;
  }

 private:
  HttpServer server_;
};

struct Seen {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::pair<WatchEventType, std::string>> events;
  bool WaitFor(size_t n, std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> l(mu);
    return cv.wait_for(l, timeout, [&] { return events.size() >= n; });
  }
};

Status RunWatch(const KubeConfig& cfg, Seen* seen) {
  RestKubeClient client(cfg);
  WatchOptions wo;
  wo.timeout_seconds = 30;
  return client.Watch(
      res::kPods, "default", wo,
      [seen](const WatchEvent& ev) {
        std::lock_guard<std::mutex> l(seen->mu);
        std::string name = ev.object["metadata"].value("name", "");
        if (ev.type != WatchEventType::kBookmark) {
          // Filled in when the event's object does not name them (as the API server's don't).
          EXPECT_EQ(ev.object.value("kind", ""), "Pod") << name;
          EXPECT_EQ(ev.object.value("apiVersion", ""), "v1") << name;
        }
        seen->events.emplace_back(ev.type, name);
        seen->cv.notify_all();
      },
      nullptr);
}

TEST(RestWatchTest, EventsSplitAcrossChunksSeveralInOneChunkAndALastLineWithoutNewlineAllArrive) {
  const std::string a = Event("ADDED", "a"), b = Event("MODIFIED", "b"), c = Event("DELETED", "c");
  std::string d = Event("ADDED", "d");
  d.pop_back();  // the stream ends without the last newline
  WatchServer server([&](HttpStreamWriter& w) {
    w.Write(a.substr(0, 5));
    w.Write(a.substr(5, 20));
    w.Write(a.substr(25));  // "a" completed by its third chunk
    w.Write(b + c + R"({"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"9"}}})" + "\r\n\n");
    w.Write(d);
  });
  Seen seen;
  Status s = RunWatch(server.Config(), &seen);
  ASSERT_TRUE(s.ok()) << s.ToString();
  std::vector<std::pair<WatchEventType, std::string>> want = {{WatchEventType::kAdded, "a"},
                                                              {WatchEventType::kModified, "b"},
                                                              {WatchEventType::kDeleted, "c"},
                                                              {WatchEventType::kBookmark, ""},
                                                              {WatchEventType::kAdded, "d"}};
  EXPECT_EQ(seen.events, want);
}

TEST(RestWatchTest, AnEventIsHandledAsSoonAsItsLineArrivesNotWhenMoreBytesCome) {
  // The server sends the second event only after the client has handled the first: a
  // reader that waited to fill a block before splitting lines would hang here.
  Seen seen;
  bool first_was_handled = false;
  WatchServer server([&](HttpStreamWriter& w) {
    w.Write(Event("ADDED", "first"));
    first_was_handled = seen.WaitFor(1, 10s);
    w.Write(Event("ADDED", "second"));
  });
  Status s = RunWatch(server.Config(), &seen);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_TRUE(first_was_handled) << "the first event was not delivered while the stream waited";
  ASSERT_EQ(seen.events.size(), 2u);
  EXPECT_EQ(seen.events[1].second, "second");
}

TEST(RestWatchTest, AnErrorEventEndsTheWatchWithItsStatus) {
  WatchServer server([&](HttpStreamWriter& w) {
    w.Write(Event("ADDED", "a"));
    w.Write(
        R"j({"type":"ERROR","object":{"kind":"Status","code":410,"reason":"Expired","message":"too old resource version: 1 (9)"}})j"
        "\n");
    w.Write(Event("ADDED", "never"));
  });
  Seen seen;
  Status s = RunWatch(server.Config(), &seen);
  EXPECT_TRUE(IsGone(s)) << s.ToString();
  ASSERT_EQ(seen.events.size(), 1u);
  EXPECT_EQ(seen.events[0].second, "a");
}

TEST(RestWatchTest, AnEventLongerThan16MiBDropsTheStreamInsteadOfBufferingWithoutBound) {
  // 17 MiB without a newline: the reader must give up (and say why) rather than hold it.
  WatchServer server([&](HttpStreamWriter& w) {
    w.Write(Event("ADDED", "a"));
    const std::string mib(1 << 20, 'x');
    w.Write(R"({"type":"ADDED","object":{"metadata":{"name":")");
    for (int i = 0; i < 17; ++i)
      if (!w.Write(mib)) return;  // the client gave up
    w.Write("\"}}}\n");
  });
  Seen seen;
  Status s = RunWatch(server.Config(), &seen);
  EXPECT_EQ(s.code(), StatusCode::kResourceExhausted) << s.ToString();
  EXPECT_NE(s.message().find("16 MiB"), std::string::npos) << s.ToString();
  EXPECT_EQ(seen.events.size(), 1u);
}

}  // namespace
}  // namespace fedge::op
