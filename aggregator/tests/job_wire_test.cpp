// The one spec <-> wire mapping (TrainingToWire / TrainingFromWire,
// fedge/job_spec_fields.h) against the real v1.TrainingConfig: every row of the
// field table that names a wire field survives spec -> wire -> spec on its own
// (so no two rows share a field and none is dropped), with zstd and the training
// fields the aggregator used to copy by hand (issue 11); a row naming a field the
// message lacks fails.
#include <gtest/gtest.h>

#include <set>
#include <sstream>

#include <google/protobuf/descriptor.h>

#include "fedge.pb.h"
#include "fedge/job_spec_fields.h"

namespace fedge {
namespace {

// The value a row holds in `spec` as its wire field carries it, as text: a
// double rides in a float field narrowed (learningRate 1e-3 arrives as the float
// nearest it), so it is compared as that float; doubles to 17 digits (exact).
std::string WireValueText(const JobSpecField& f, JobSpec& spec) {
  const auto* d = v1::TrainingConfig::descriptor()->FindFieldByName(std::string(f.wire));
  const bool as_float = d != nullptr && d->cpp_type() == google::protobuf::FieldDescriptor::CPPTYPE_FLOAT;
  std::ostringstream out;
  out.precision(17);
  std::visit(
      [&](auto* p) {
        using T = std::remove_pointer_t<decltype(p)>;
        if constexpr (std::is_same_v<T, std::vector<std::string>> ||
                      std::is_same_v<T, std::map<std::string, std::string>>) {
          out << p->size() << " items";
        } else if constexpr (std::is_same_v<T, double>) {
          out << (as_float ? static_cast<double>(static_cast<float>(*p)) : *p);
        } else {
          out << *p;
        }
      },
      f.ref(spec));
  return out.str();
}

// Sets row `f` of `spec` to an allowed value other than its default, one a
// float carries exactly (wire fields may be float). False if the row has none.
bool SetOtherValue(const JobSpecField& f, JobSpec& spec) {
  const double lo = f.min.value_or(-1e9), hi = f.max.value_or(1e9);
  bool set = false;
  std::visit(
      [&](auto* p) {
        using T = std::remove_pointer_t<decltype(p)>;
        if constexpr (std::is_same_v<T, std::string>) {
          for (std::string_view v : f.one_of) {
            if (v != *p) {
              *p = std::string(v);
              set = true;
              break;
            }
          }
        } else if constexpr (std::is_same_v<T, bool>) {
          *p = !*p;
          set = true;
        } else if constexpr (std::is_same_v<T, double>) {
          for (double v : {0.5, 0.25, 2.0}) {
            if (v != *p && v >= lo && v <= hi) {
              *p = v;
              set = true;
              break;
            }
          }
        } else if constexpr (std::is_same_v<T, int> || std::is_same_v<T, int64_t> ||
                             std::is_same_v<T, uint64_t>) {
          const T v = static_cast<double>(*p) + 1 <= hi ? *p + 1 : *p - 1;
          if (static_cast<double>(v) >= lo) {
            *p = v;
            set = true;
          }
        }
      },
      f.ref(spec));
  return set;
}

TEST(JobWireTest, EveryWireRowNamesATrainingConfigFieldOfItsType) {
  Status st = CheckWireFields(JobSpecFields(), *v1::TrainingConfig::descriptor());
  EXPECT_TRUE(st.ok()) << st.ToString();
  // Every field of proto/fedge.proto 1-13, 16, 17 that carries a spec field has its row
  // (14 and 15, secure aggregation and SCAFFOLD, are the aggregator's per round).
  std::set<std::string> named;
  for (const JobSpecField& f : JobSpecFields()) {
    if (!f.wire.empty()) named.emplace(f.wire);
  }
  const auto* d = v1::TrainingConfig::descriptor();
  for (int i = 0; i < d->field_count(); ++i) {
    const std::string name = d->field(i)->name();
    if (name == "secure_aggregation" || name == "scaffold") continue;
    EXPECT_EQ(named.count(name), 1u) << "v1.TrainingConfig." << name
                                     << " is named by no row of the field table";
  }
}

// Each row alone: set it to a value other than its default, send, read back. The
// row comes back with the value; every other wire row keeps its default.
TEST(JobWireTest, EveryWireRowRoundTripsSpecToWireToSpec) {
  int rows = 0;
  for (const JobSpecField& f : JobSpecFields()) {
    if (f.wire.empty()) continue;
    ++rows;
    JobSpec sent;
    ASSERT_TRUE(SetOtherValue(f, sent)) << f.path << ": no value other than the default to test with";
    v1::TrainingConfig wire;
    Status st = TrainingToWire(sent, &wire);
    ASSERT_TRUE(st.ok()) << f.path << ": " << st.ToString();
    auto back = TrainingFromWire(wire);
    ASSERT_TRUE(back.ok()) << f.path << ": " << back.status().ToString();
    for (const JobSpecField& g : JobSpecFields()) {
      if (g.wire.empty()) continue;
      EXPECT_EQ(WireValueText(g, *back), WireValueText(g, sent))
          << "sent " << f.path << ", compared " << g.path;
    }
  }
  EXPECT_GE(rows, 15);  // 8 training fields + 7 compression fields

  // The defaults survive too (booleans are always sent).
  JobSpec defaults;
  v1::TrainingConfig wire;
  ASSERT_TRUE(TrainingToWire(defaults, &wire).ok());
  EXPECT_TRUE(wire.zstd());
  auto back = TrainingFromWire(wire);
  ASSERT_TRUE(back.ok());
  for (const JobSpecField& f : JobSpecFields()) {
    if (!f.wire.empty()) EXPECT_EQ(WireValueText(f, *back), WireValueText(f, defaults)) << f.path;
  }
  EXPECT_EQ(back->compression, CompressionSpec{});
}

// Zero is a value for the rows whose bounds allow it: maxGradNorm 0 (no
// clipping) and weightDecay 0 must not come back as the defaults 1 and 0.01,
// which the rule "0 means not sent" (right for localSteps, blockSize) would do.
TEST(JobWireTest, ZeroSurvivesWhereTheRowAllowsIt) {
  JobSpec sent;
  sent.rounds.maxGradNorm = 0;
  sent.rounds.weightDecay = 0;
  sent.rounds.seed = 0;
  sent.strategy.restrictedStep = 0;  // a field with presence: sent 0 is 0
  v1::TrainingConfig wire;
  ASSERT_TRUE(TrainingToWire(sent, &wire).ok());
  auto back = TrainingFromWire(wire);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->rounds.maxGradNorm, 0);
  EXPECT_EQ(back->rounds.weightDecay, 0);
  EXPECT_EQ(back->rounds.seed, 0u);
  EXPECT_EQ(back->strategy.restrictedStep, 0);
}

// Fields an older aggregator does not send keep the spec's defaults where 0 is no
// allowed value (block size 64, not 0, which no blockwise codec takes; 20 local steps).
TEST(JobWireTest, MissingNumbersKeepTheDefaults) {
  v1::TrainingConfig wire;
  wire.set_update_codec("int8");
  auto spec = TrainingFromWire(wire);
  ASSERT_TRUE(spec.ok());
  EXPECT_EQ(spec->compression.codec, "int8");
  EXPECT_EQ(spec->compression.blockSize, CompressionSpec{}.blockSize);
  EXPECT_EQ(spec->compression.topKFraction, 0);
  EXPECT_EQ(spec->rounds.localSteps, RoundsSpec{}.localSteps);
  EXPECT_EQ(spec->rounds.batchSize, RoundsSpec{}.batchSize);
  EXPECT_EQ(spec->rounds.learningRate, RoundsSpec{}.learningRate);
  EXPECT_EQ(spec->model.maxSeqLen, ModelSpec{}.maxSeqLen);
  // restricted_step allows 0 (frozen rows) but defaults to 1: not sent is 1, not 0.
  EXPECT_FALSE(wire.has_restricted_step());
  EXPECT_EQ(spec->strategy.restrictedStep, 1.0);
}

// A row naming a field the message lacks, a field of another type, or a field
// another row already names is refused with the row's path.
TEST(JobWireTest, RowNamingAMissingOrMistypedFieldFails) {
  const auto& wire = *v1::TrainingConfig::descriptor();
  auto with = [](JobSpecField extra) {
    std::vector<JobSpecField> rows = JobSpecFields();
    rows.push_back(std::move(extra));
    return rows;
  };
  JobSpecField row = *FindJobSpecField("spec.rounds.overSelection");
  row.wire = "over_selection";  // no such field
  Status st = CheckWireFields(with(row), wire);
  EXPECT_EQ(st.code(), StatusCode::kInternal);
  EXPECT_NE(
      st.message().find("spec.rounds.overSelection: fedge.v1.TrainingConfig has no field over_selection"),
      std::string::npos)
      << st.message();

  row.wire = "update_codec";  // a string field for a double
  st = CheckWireFields(with(row), wire);
  EXPECT_EQ(st.code(), StatusCode::kInternal);
  EXPECT_NE(st.message().find("has type string"), std::string::npos) << st.message();

  row = *FindJobSpecField("spec.rounds.learningRate");  // learning_rate named twice
  st = CheckWireFields(with(row), wire);
  EXPECT_EQ(st.code(), StatusCode::kInternal);
  EXPECT_NE(st.message().find("is already spec.rounds.learningRate's"), std::string::npos) << st.message();

  // The copy itself refuses a message without the fields: INTERNAL, not a crash.
  v1::UpdateHeader other;
  st = TrainingToWire(JobSpec{}, &other);
  EXPECT_EQ(st.code(), StatusCode::kInternal);
  EXPECT_NE(st.message().find("has no field"), std::string::npos) << st.message();
  EXPECT_EQ(TrainingFromWire(other).status().code(), StatusCode::kInternal);
}

}  // namespace
}  // namespace fedge
