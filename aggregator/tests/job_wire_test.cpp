// The one spec <-> wire mapping (CompressionToWire/FromWire, fedge/job_spec_fields.h)
// against the real v1.TrainingConfig: every spec.compression field the table
// names survives the trip, zstd included (issue 11: the agents read zstd from
// their own parse of the manifest, not from the task).
#include <gtest/gtest.h>

#include "fedge.pb.h"
#include "fedge/job_spec_fields.h"

namespace fedge {
namespace {

TEST(JobWireTest, EveryCompressionFieldSurvivesTheTrainingConfig) {
  CompressionSpec c;
  c.codec = "int4";
  c.blockSize = 32;
  c.zstd = false;  // the default is true: a field the wire dropped would come back true
  c.zstdLevel = 19;
  c.topKFraction = 0.25;
  c.errorFeedback = false;
  c.stochasticRounding = true;
  ASSERT_NE(c, CompressionSpec{});
  v1::TrainingConfig wire;
  ASSERT_TRUE(CompressionToWire(c, &wire).ok());
  EXPECT_EQ(wire.update_codec(), "int4");
  EXPECT_EQ(wire.block_size(), 32);
  EXPECT_FALSE(wire.zstd());
  EXPECT_EQ(wire.zstd_level(), 19);
  auto back = CompressionFromWire(wire);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(*back, c);

  // The defaults survive too (every boolean is sent).
  v1::TrainingConfig defaults;
  ASSERT_TRUE(CompressionToWire(CompressionSpec{}, &defaults).ok());
  EXPECT_TRUE(defaults.zstd());
  back = CompressionFromWire(defaults);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, CompressionSpec{});
}

TEST(JobWireTest, EveryWireRowNamesATrainingConfigFieldOfItsType) {
  int rows = 0;
  for (const JobSpecField& f : JobSpecFields()) {
    if (f.wire.empty()) continue;
    ++rows;
    EXPECT_EQ(std::string(f.path).rfind("spec.compression.", 0), 0u)
        << f.path << ": CompressionToWire copies the compression section only";
    EXPECT_NE(v1::TrainingConfig::descriptor()->FindFieldByName(std::string(f.wire)), nullptr) << f.wire;
  }
  EXPECT_GE(rows, 6);
  // Another message lacks the fields: a clear INTERNAL error, not a crash.
  v1::UpdateHeader other;
  Status st = CompressionToWire(CompressionSpec{}, &other);
  EXPECT_EQ(st.code(), StatusCode::kInternal);
  EXPECT_NE(st.message().find("has no field update_codec"), std::string::npos) << st.message();
}

// Fields an older aggregator does not send keep the spec's defaults (block size
// 64, not 0, which no blockwise codec takes).
TEST(JobWireTest, MissingNumbersKeepTheDefaults) {
  v1::TrainingConfig wire;
  wire.set_update_codec("int8");
  auto c = CompressionFromWire(wire);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->codec, "int8");
  EXPECT_EQ(c->blockSize, CompressionSpec{}.blockSize);
  EXPECT_EQ(c->topKFraction, 0);
}

}  // namespace
}  // namespace fedge
