#include <gtest/gtest.h>

#include "fedge/agent/runtime/chunks.h"
#include "fedge/agent/runtime/stop_signal.h"
#include "fedge/agent/runtime/update.h"
#include "fedge/tensor_bundle.h"

namespace fedge::agent {
namespace {

std::string Payload(size_t n) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>('a' + i % 26);
  return s;
}

TEST(ChunkAssemblerTest, ReassemblesContiguousChunksWithMetadataOnlyOnTheFirst) {
  std::string payload = Payload(1000);
  std::string sum = Sha256Hex(payload);
  ChunkAssembler a(/*expected_version=*/7, sum);
  ASSERT_TRUE(a.Add(7, 1000, sum, 0, std::string_view(payload).substr(0, 400)).ok());
  ASSERT_TRUE(a.Add(0, 0, "", 400, std::string_view(payload).substr(400, 400)).ok());
  ASSERT_TRUE(a.Add(7, 1000, sum, 800, std::string_view(payload).substr(800)).ok());
  auto out = a.Finish();
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_EQ(*out, payload);
  EXPECT_EQ(a.version(), 7);
}

TEST(ChunkAssemblerTest, RejectsGap) {
  std::string payload = Payload(100);
  ChunkAssembler a;
  ASSERT_TRUE(a.Add(1, 100, Sha256Hex(payload), 0, std::string_view(payload).substr(0, 40)).ok());
  Status st = a.Add(1, 100, "", 50, std::string_view(payload).substr(50));
  EXPECT_EQ(st.code(), StatusCode::kDataLoss);
  EXPECT_NE(st.message().find("gap"), std::string::npos) << st.message();
  // A failed stream stays failed.
  EXPECT_EQ(a.Finish().status().code(), StatusCode::kDataLoss);
}

TEST(ChunkAssemblerTest, RejectsOverlap) {
  std::string payload = Payload(100);
  ChunkAssembler a;
  ASSERT_TRUE(a.Add(1, 100, Sha256Hex(payload), 0, std::string_view(payload).substr(0, 40)).ok());
  Status st = a.Add(1, 100, "", 30, std::string_view(payload).substr(30, 10));
  EXPECT_EQ(st.code(), StatusCode::kDataLoss);
  EXPECT_NE(st.message().find("overlap"), std::string::npos) << st.message();
}

TEST(ChunkAssemblerTest, RejectsOverLongStream) {
  std::string payload = Payload(100);
  ChunkAssembler a;
  ASSERT_TRUE(a.Add(1, 60, Sha256Hex(payload), 0, std::string_view(payload).substr(0, 50)).ok());
  Status st = a.Add(1, 60, "", 50, std::string_view(payload).substr(50, 20));
  EXPECT_EQ(st.code(), StatusCode::kDataLoss);
  EXPECT_NE(st.message().find("over-long"), std::string::npos) << st.message();
}

TEST(ChunkAssemblerTest, RejectsTruncatedStream) {
  std::string payload = Payload(100);
  ChunkAssembler a;
  ASSERT_TRUE(a.Add(1, 100, Sha256Hex(payload), 0, std::string_view(payload).substr(0, 99)).ok());
  auto out = a.Finish();
  EXPECT_EQ(out.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(out.status().message().find("truncated"), std::string::npos);
}

TEST(ChunkAssemblerTest, RejectsChecksumMismatch) {
  std::string payload = Payload(100);
  std::string sum = Sha256Hex(payload);
  payload[42] ^= 1;
  ChunkAssembler a;
  ASSERT_TRUE(a.Add(1, 100, sum, 0, payload).ok());
  auto out = a.Finish();
  EXPECT_EQ(out.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(out.status().message().find("checksum"), std::string::npos);
}

TEST(ChunkAssemblerTest, RejectsMetadataThatContradictsTheTaskOrTheFirstChunk) {
  std::string payload = Payload(100);
  std::string sum = Sha256Hex(payload);
  {
    ChunkAssembler a(/*expected_version=*/3, sum);
    EXPECT_EQ(a.Add(4, 100, sum, 0, payload).code(), StatusCode::kDataLoss);
  }
  {
    ChunkAssembler a(/*expected_version=*/3, Sha256Hex("other"));
    EXPECT_EQ(a.Add(3, 100, sum, 0, payload).code(), StatusCode::kDataLoss);
  }
  {
    ChunkAssembler a;
    ASSERT_TRUE(a.Add(3, 100, sum, 0, std::string_view(payload).substr(0, 10)).ok());
    EXPECT_EQ(a.Add(3, 200, "", 10, std::string_view(payload).substr(10)).code(), StatusCode::kDataLoss);
  }
  {
    ChunkAssembler a;
    EXPECT_EQ(a.Add(3, 0, sum, 0, payload).code(), StatusCode::kDataLoss) << "no total_bytes";
  }
  {
    ChunkAssembler a;
    EXPECT_EQ(a.Finish().status().code(), StatusCode::kDataLoss) << "empty stream";
  }
}

TEST(ChunkAssemblerTest, RejectsOversizedChunkAndOversizedTotal) {
  std::string payload = Payload(300);
  ChunkLimits limits;
  limits.max_chunk_bytes = 100;
  limits.max_total_bytes = 1000;
  {
    ChunkAssembler a(0, "", limits);
    EXPECT_EQ(a.Add(1, 300, Sha256Hex(payload), 0, payload).code(), StatusCode::kDataLoss);
  }
  {
    ChunkAssembler a(0, "", limits);
    EXPECT_EQ(a.Add(1, 5000, "x", 0, std::string_view(payload).substr(0, 10)).code(), StatusCode::kDataLoss);
  }
}

TEST(SplitChunksTest, CoversThePayloadInBoundedChunks) {
  std::string payload = Payload(1001);
  auto chunks = SplitChunks(payload, 100);
  ASSERT_EQ(chunks.size(), 11u);
  std::string joined;
  for (auto c : chunks) {
    EXPECT_LE(c.size(), 100u);
    joined.append(c);
  }
  EXPECT_EQ(joined, payload);
  EXPECT_EQ(SplitChunks("", 100).size(), 1u);
  EXPECT_LT(kSendChunkBytes, kMaxChunkBytes);
}

TEST(ComputeDeltaTest, SubtractsTensorByTensorInTheTrainedOrder) {
  TensorBundle base, after;
  base.tensors = {{"a", {2}, {1.0f, 2.0f}}, {"b", {1, 2}, {0.5f, -0.5f}}};
  after.tensors = {{"b", {1, 2}, {1.5f, -1.0f}}, {"a", {2}, {1.25f, 2.0f}}};
  auto delta = ComputeDelta(after, base);
  ASSERT_TRUE(delta.ok()) << delta.status().ToString();
  ASSERT_EQ(delta->tensors.size(), 2u);
  EXPECT_EQ(delta->tensors[0].name, "b");
  EXPECT_EQ(delta->tensors[0].shape, (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(delta->tensors[0].values, (std::vector<float>{1.0f, -0.5f}));
  EXPECT_EQ(delta->tensors[1].values, (std::vector<float>{0.25f, 0.0f}));
}

TEST(ComputeDeltaTest, RejectsLayoutMismatch) {
  TensorBundle base, after;
  base.tensors = {{"a", {2}, {1.0f, 2.0f}}};
  after.tensors = {{"a", {1, 2}, {1.0f, 2.0f}}};
  EXPECT_EQ(ComputeDelta(after, base).status().code(), StatusCode::kInvalidArgument);
  after.tensors = {{"z", {2}, {1.0f, 2.0f}}};
  EXPECT_EQ(ComputeDelta(after, base).status().code(), StatusCode::kInvalidArgument);
}

TEST(MixTrainingSeedTest, DiffersByAgentAndRoundAndIsStable) {
  uint64_t s = MixTrainingSeed(11, "agent-0", 1);
  EXPECT_EQ(s, MixTrainingSeed(11, "agent-0", 1));
  EXPECT_NE(s, MixTrainingSeed(11, "agent-1", 1));
  EXPECT_NE(s, MixTrainingSeed(11, "agent-0", 2));
  EXPECT_NE(s, MixTrainingSeed(12, "agent-0", 1));
  // FNV-1a of "a" (published test vector): the hash must not depend on the build.
  EXPECT_EQ(HashAgentId("a"), 0xaf63dc4c8601ec8cull);
}

TEST(BackoffTest, DoublesWithJitterUpToTheCapAndResets) {
  double u = 0.0;
  Backoff b(std::chrono::milliseconds(100), std::chrono::milliseconds(1000), [&u] { return u; });
  EXPECT_EQ(b.Next().count(), 50);   // [50, 100]
  EXPECT_EQ(b.Next().count(), 100);  // [100, 200]
  u = 0.999999;
  EXPECT_EQ(b.Next().count(), 399);  // [200, 400]
  EXPECT_EQ(b.Next().count(), 799);  // [400, 800]
  for (int i = 0; i < 100; ++i) EXPECT_LE(b.Next().count(), 1000);
  b.Reset();
  u = 0.0;
  EXPECT_EQ(b.Next().count(), 50);
}

TEST(StopSignalTest, StopEndsASleepAtOnce) {
  StopSignal stop;
  EXPECT_TRUE(stop.SleepFor(std::chrono::milliseconds(1)));
  std::thread t([&] { stop.Stop(); });
  auto start = std::chrono::steady_clock::now();
  EXPECT_FALSE(stop.SleepFor(std::chrono::seconds(30)));
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
  t.join();
  EXPECT_FALSE(stop.SleepFor(std::chrono::seconds(30)));
  stop.Wait();
}

}  // namespace
}  // namespace fedge::agent
