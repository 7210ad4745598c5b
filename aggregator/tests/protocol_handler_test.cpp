#include "fedge/aggregator/protocol_handler.h"

#include <gtest/gtest.h>

#include "test_util.h"

namespace fedge::aggregator {
namespace {

using testing::SmallBundle;

class ProtocolHandlerTest : public ::testing::Test {
 protected:
  void SetUp() override { Make(ProtocolOptions{}); }

  void Make(ProtocolOptions options) {
    JobSpec spec;
    spec.name = "demo";
    spec.namespace_ = "ns";
    spec.rounds.total = 1;
    auto engine = RoundEngine::Create(EngineOptionsFromSpec(spec, 2), &clock_, nullptr, &metrics_);
    ASSERT_TRUE(engine.ok());
    engine_ = std::move(*engine);
    handler_ = std::make_unique<ProtocolHandler>(engine_.get(), &metrics_, std::move(options));
  }

  v1::RequestHeader Header(const std::string& agent, uint32_t version = 1) {
    v1::RequestHeader h;
    h.set_protocol_version(version);
    h.set_job("ns/demo");
    h.set_agent_id(agent);
    h.set_session(sessions_[agent]);
    return h;
  }

  Status Join(const std::string& agent, const std::string& token = "") {
    v1::JoinRequest req;
    *req.mutable_header() = Header(agent);
    req.set_token(token);
    v1::JoinResponse resp;
    Status s = handler_->Join(req, &resp);
    if (s.ok()) sessions_[agent] = resp.session();
    return s;
  }

  v1::Task GetTask(const std::string& agent) {
    v1::TaskRequest req;
    *req.mutable_header() = Header(agent);
    v1::Task task;
    EXPECT_TRUE(handler_->GetTask(req, &task).ok());
    return task;
  }

  // Runs the SubmitUpdate steps the gRPC service runs, in `chunk`-byte pieces.
  v1::SubmitUpdateResponse Submit(const v1::UpdateHeader& header, const std::string& data, size_t chunk = 5) {
    v1::SubmitUpdateResponse response;
    bool rejected = false;
    Status s = handler_->BeginUpdate(header, &response, &rejected);
    EXPECT_TRUE(s.ok()) << s.ToString();
    if (rejected) return response;
    std::string buffer;
    for (size_t off = 0; off < data.size(); off += chunk) {
      if (!handler_->AppendChunk(header, data.substr(off, chunk), &buffer, &response)) return response;
    }
    return handler_->FinishUpdate(header, buffer);
  }

  v1::UpdateHeader UpdateHeaderFor(const std::string& agent, const std::string& data, int64_t round,
                                   int64_t base, bool is_delta) {
    v1::UpdateHeader h;
    *h.mutable_header() = Header(agent);
    h.set_round(round);
    h.set_base_version(base);
    h.set_num_examples(10);
    h.set_total_bytes(data.size());
    h.set_checksum(Sha256Hex(data));
    h.set_is_delta(is_delta);
    return h;
  }

  static std::string Encode(const TensorBundle& b) {
    auto e = EncodeBundle(b, EncodeOptions{Codec::kFp32, 64, /*zstd=*/false, 3});
    EXPECT_TRUE(e.ok()) << e.status().ToString();
    return *e;
  }

  void JoinAndInitialize() {
    ASSERT_TRUE(Join("a").ok());
    ASSERT_TRUE(Join("b").ok());
    ASSERT_EQ(GetTask("a").kind(), v1::TASK_KIND_INITIALIZE);
    std::string init = Encode(SmallBundle(1, 2, 3, 4));
    auto r = Submit(UpdateHeaderFor("a", init, 0, 0, false), init);
    ASSERT_TRUE(r.accepted()) << r.reason();
  }

  FakeClock clock_;
  AggregatorMetrics metrics_;
  std::unique_ptr<RoundEngine> engine_;
  std::unique_ptr<ProtocolHandler> handler_;
  std::map<std::string, std::string> sessions_;
};

TEST_F(ProtocolHandlerTest, UnknownProtocolVersionIsRefusedNamingOurs) {
  v1::JoinRequest req;
  *req.mutable_header() = Header("a", /*version=*/2);
  v1::JoinResponse resp;
  Status s = handler_->Join(req, &resp);
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(s.message(), "protocol version 2 not supported; this aggregator speaks 1");
  ASSERT_TRUE(Join("a").ok());
  v1::TaskRequest task_req;
  *task_req.mutable_header() = Header("a", /*version=*/0);
  v1::Task task;
  EXPECT_EQ(handler_->GetTask(task_req, &task).code(), StatusCode::kFailedPrecondition);
}

TEST_F(ProtocolHandlerTest, WrongJobIsNotFound) {
  v1::JoinRequest req;
  *req.mutable_header() = Header("a");
  req.mutable_header()->set_job("ns/other");
  v1::JoinResponse resp;
  Status s = handler_->Join(req, &resp);
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_NE(s.message().find("ns/demo"), std::string::npos);
}

TEST_F(ProtocolHandlerTest, TokensAreCheckedWhenConfigured) {
  ProtocolOptions options;
  options.tokens = {{"a", "good-token"}};
  Make(options);
  EXPECT_EQ(Join("a", "bad-token").code(), StatusCode::kUnauthenticated);
  EXPECT_EQ(Join("a", "").code(), StatusCode::kUnauthenticated);
  EXPECT_EQ(Join("stranger", "good-token").code(), StatusCode::kUnauthenticated);
  EXPECT_TRUE(Join("a", "good-token").ok());
}

TEST_F(ProtocolHandlerTest, UnknownSessionMustRejoin) {
  ASSERT_TRUE(Join("a").ok());
  v1::TaskRequest req;
  *req.mutable_header() = Header("a");
  req.mutable_header()->set_session("stale");
  v1::Task task;
  Status s = handler_->GetTask(req, &task);
  EXPECT_EQ(s.code(), StatusCode::kUnauthenticated);
  EXPECT_NE(s.message().find("rejoin"), std::string::npos);
}

TEST_F(ProtocolHandlerTest, FetchGlobalStreamsChunksWithOffsetsAndChecksum) {
  ProtocolOptions options;
  options.chunk_bytes = 16;
  Make(options);
  JoinAndInitialize();
  v1::Task task = GetTask("b");
  ASSERT_EQ(task.kind(), v1::TASK_KIND_TRAIN);
  EXPECT_EQ(task.global_version(), 1);
  EXPECT_EQ(task.config().update_codec(), "int8");

  v1::FetchGlobalRequest req;
  *req.mutable_header() = Header("b");
  std::string assembled;
  int chunks = 0;
  Status s = handler_->FetchGlobal(req, [&](const v1::GlobalChunk& c) {
    EXPECT_EQ(c.version(), 1);
    EXPECT_EQ(c.offset(), assembled.size());
    EXPECT_LE(c.data().size(), 16u);
    EXPECT_EQ(c.checksum(), task.global_checksum());
    assembled += c.data();
    EXPECT_LE(assembled.size(), c.total_bytes());
    ++chunks;
    return true;
  });
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_GT(chunks, 1);
  EXPECT_EQ(Sha256Hex(assembled), task.global_checksum());
  auto decoded = DecodeBundle(assembled);
  ASSERT_TRUE(decoded.ok());
  EXPECT_EQ(decoded->Find("b")->values, (std::vector<float>{3, 4}));
  EXPECT_EQ(metrics_.bytes_sent(), static_cast<double>(assembled.size()));

  req.set_version(7);
  EXPECT_EQ(handler_->FetchGlobal(req, [](const v1::GlobalChunk&) { return true; }).code(),
            StatusCode::kNotFound);
}

TEST_F(ProtocolHandlerTest, OversizeUpdateIsRejectedBeforeBuffering) {
  ProtocolOptions options;
  options.max_update_bytes = 512;  // the initial upload fits
  Make(options);
  JoinAndInitialize();
  std::string big(5000, 'x');
  v1::UpdateHeader h = UpdateHeaderFor("a", big, 1, 1, true);
  v1::SubmitUpdateResponse response;
  bool rejected = false;
  ASSERT_TRUE(handler_->BeginUpdate(h, &response, &rejected).ok());
  EXPECT_TRUE(rejected);
  EXPECT_FALSE(response.accepted());
  EXPECT_NE(response.reason().find("exceeds the limit of 512"), std::string::npos) << response.reason();
  EXPECT_EQ(metrics_.updates_rejected("too_large"), 1);
}

TEST_F(ProtocolHandlerTest, MoreDataThanDeclaredIsRejected) {
  JoinAndInitialize();
  std::string data = Encode(SmallBundle(1, 1, 1, 1));
  v1::UpdateHeader h = UpdateHeaderFor("a", data, 1, 1, true);
  h.set_total_bytes(data.size() - 3);
  auto r = Submit(h, data);
  EXPECT_FALSE(r.accepted());
  EXPECT_NE(r.reason().find("declared"), std::string::npos);
}

TEST_F(ProtocolHandlerTest, CorruptUpdatesAreRejectedAndGlobalUnchanged) {
  JoinAndInitialize();
  std::string data = Encode(SmallBundle(1, 1, 1, 1));
  v1::UpdateHeader h = UpdateHeaderFor("a", data, 1, 1, true);
  std::string flipped = data;
  flipped[flipped.size() / 2] ^= 0x40;
  auto r = Submit(h, flipped);
  EXPECT_FALSE(r.accepted());
  EXPECT_NE(r.reason().find("checksum"), std::string::npos);
  EXPECT_EQ(metrics_.updates_rejected("checksum"), 1);

  std::string garbage(40, '\x07');
  r = Submit(UpdateHeaderFor("a", garbage, 1, 1, true), garbage);
  EXPECT_FALSE(r.accepted());
  EXPECT_EQ(metrics_.updates_rejected("decode"), 1);

  std::string wrong = Encode(TensorBundle{{NamedTensor{"a", {3}, {1, 2, 3}}}});
  r = Submit(UpdateHeaderFor("a", wrong, 1, 1, true), wrong);
  EXPECT_FALSE(r.accepted());
  EXPECT_NE(r.reason().find("layout"), std::string::npos);

  auto g = engine_->Global(0);
  ASSERT_TRUE(g.ok());
  EXPECT_EQ((*g)->version, 1);
  EXPECT_EQ((*g)->bundle.Find("a")->values, (std::vector<float>{1, 2}));

  r = Submit(h, data);  // the intact update still goes in
  EXPECT_TRUE(r.accepted()) << r.reason();
}

TEST_F(ProtocolHandlerTest, ReportMetricsFeedsEvaluation) {
  JoinAndInitialize();
  for (const std::string agent : {"a", "b"}) {
    std::string data = Encode(SmallBundle(1, 1, 1, 1));
    ASSERT_TRUE(Submit(UpdateHeaderFor(agent, data, 1, 1, true), data).accepted());
  }
  ASSERT_EQ(GetTask("a").kind(), v1::TASK_KIND_EVALUATE);
  v1::MetricsReport report;
  *report.mutable_header() = Header("a");
  report.set_round(1);
  report.set_global_version(2);
  report.set_phase("train");
  report.set_num_examples(4);
  (*report.mutable_values())["accuracy"] = 0.25;
  EXPECT_EQ(handler_->ReportMetrics(report).code(), StatusCode::kInvalidArgument);
  report.set_phase("evaluate");
  ASSERT_TRUE(handler_->ReportMetrics(report).ok());
  *report.mutable_header() = Header("b");
  (*report.mutable_values())["accuracy"] = 0.75;
  report.set_num_examples(12);
  ASSERT_TRUE(handler_->ReportMetrics(report).ok());
  EngineStatus s = engine_->GetStatus();
  EXPECT_EQ(s.state, JobState::kSucceeded);
  EXPECT_DOUBLE_EQ(*s.final_accuracy, (0.25 * 4 + 0.75 * 12) / 16);
  EXPECT_EQ(GetTask("b").kind(), v1::TASK_KIND_DONE);
}

}  // namespace
}  // namespace fedge::aggregator
