#include "fedge/agent/text_classifier.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "test_util.h"

namespace fedge::agent {
namespace {

const std::vector<std::string> kLabels = {"noun.animal", "noun.artifact"};

ClassifierOptions Options(const std::string& dir) {
  ClassifierOptions o;
  o.model_dir = dir;
  o.labels = kLabels;
  o.lora_rank = 4;
  o.lora_alpha = 8;
  o.max_seq_len = 32;
  o.init_seed = 42;
  return o;
}

// A tiny separable set: animal glosses vs artifact glosses.
std::vector<Example> TinyData() {
  return {
      {"dog: a domesticated carnivorous mammal", 0},
      {"cat: a small furry feline kept as a pet", 0},
      {"horse: a large hoofed animal ridden by people", 0},
      {"eagle: a large bird of prey with keen vision", 0},
      {"salmon: a fish that swims upstream to spawn", 0},
      {"wolf: a wild canine that hunts in packs", 0},
      {"hammer: a hand tool for driving nails", 1},
      {"car: a motor vehicle with four wheels", 1},
      {"chair: a seat for one person with a back", 1},
      {"knife: a blade with a handle used for cutting", 1},
      {"bridge: a structure carrying a road over a river", 1},
      {"computer: a machine that processes data", 1},
  };
}

std::unique_ptr<TextClassifier> MustLoad(const ClassifierOptions& o) {
  auto c = TextClassifier::Load(o);
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  return c.ok() ? *std::move(c) : nullptr;
}

double MaxAbsDiff(const TensorBundle& a, const TensorBundle& b) {
  double worst = 0;
  for (const auto& t : a.tensors) {
    const NamedTensor* o = b.Find(t.name);
    if (o == nullptr) return INFINITY;
    for (size_t i = 0; i < t.values.size(); ++i)
      worst = std::max(worst, std::abs(double(t.values[i]) - o->values[i]));
  }
  return worst;
}

TEST(TextClassifierTest, LoadReportsMissingDirectoryAndBadOptions) {
  ClassifierOptions o = Options("/nonexistent/model");
  EXPECT_EQ(TextClassifier::Load(o).status().code(), StatusCode::kNotFound);
  o.labels = {};
  EXPECT_EQ(TextClassifier::Load(o).status().code(), StatusCode::kInvalidArgument);
  o = Options("/nonexistent/model");
  o.max_seq_len = 1;
  EXPECT_EQ(TextClassifier::Load(o).status().code(), StatusCode::kInvalidArgument);
}

TEST(TextClassifierTest, LoadRejectsLoraTargetThatMatchesNothing) {
  FEDGE_REQUIRE_MODEL(dir);
  ClassifierOptions o = Options(dir);
  o.lora_targets = {"query", "qkv"};
  auto c = TextClassifier::Load(o);
  EXPECT_EQ(c.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(c.status().message().find("qkv"), std::string::npos);
}

TEST(TextClassifierTest, ExportNamesAndShapesFollowTheContract) {
  FEDGE_REQUIRE_MODEL(dir);
  auto c = MustLoad(Options(dir));
  ASSERT_NE(c, nullptr);
  TensorBundle b = c->ExportTrainable();
  // 6 layers x {query, value} x {A, B} + head weight + bias.
  EXPECT_EQ(b.tensors.size(), 6u * 2 * 2 + 2);
  const NamedTensor* a = b.Find("encoder.layer.0.attention.self.query.lora_A");
  ASSERT_NE(a, nullptr);
  EXPECT_THAT(a->shape, ::testing::ElementsAre(4, 384));
  const NamedTensor* bb = b.Find("encoder.layer.5.attention.self.value.lora_B");
  ASSERT_NE(bb, nullptr);
  EXPECT_THAT(bb->shape, ::testing::ElementsAre(384, 4));
  for (float v : bb->values) EXPECT_EQ(v, 0.0f);
  ASSERT_NE(b.Find("classifier.weight"), nullptr);
  EXPECT_THAT(b.Find("classifier.weight")->shape, ::testing::ElementsAre(2, 384));
  EXPECT_THAT(b.Find("classifier.bias")->shape, ::testing::ElementsAre(2));
  EXPECT_EQ(c->dimensions(), 384);
  EXPECT_EQ(c->labels(), kLabels);
  // Same seed, same initialisation; another seed, another one.
  auto same = MustLoad(Options(dir));
  EXPECT_EQ(MaxAbsDiff(b, same->ExportTrainable()), 0.0);
  ClassifierOptions other = Options(dir);
  other.init_seed = 43;
  EXPECT_GT(MaxAbsDiff(b, MustLoad(other)->ExportTrainable()), 0.0);
}

TEST(TextClassifierTest, ImportRoundTripsAndRejectsBadBundlesWithoutChange) {
  FEDGE_REQUIRE_MODEL(dir);
  auto c = MustLoad(Options(dir));
  ASSERT_NE(c, nullptr);
  TensorBundle b = c->ExportTrainable();
  for (auto& t : b.tensors) {
    for (size_t i = 0; i < t.values.size(); ++i) t.values[i] = 0.001f * static_cast<float>(i % 17);
  }
  ASSERT_TRUE(c->ImportTrainable(b).ok());
  EXPECT_EQ(MaxAbsDiff(b, c->ExportTrainable()), 0.0);
  auto before = c->Classify({"a dog barks"});
  ASSERT_TRUE(before.ok());

  TensorBundle wrong_name = b;
  wrong_name.tensors[0].name = "encoder.layer.0.attention.self.key.lora_A";
  TensorBundle wrong_shape = b;
  wrong_shape.tensors.back().shape = {3};
  wrong_shape.tensors.back().values = {0, 0, 0};
  TensorBundle nan = b;
  nan.tensors[3].values[5] = std::nanf("");
  TensorBundle missing = b;
  missing.tensors.pop_back();
  TensorBundle garbage = b;
  for (auto& t : garbage.tensors) std::fill(t.values.begin(), t.values.end(), 9.0f);
  garbage.tensors[1].values.pop_back();  // values do not match the shape
  for (TensorBundle* bad : {&wrong_name, &wrong_shape, &nan, &missing, &garbage}) {
    Status st = c->ImportTrainable(*bad);
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << st.ToString();
    EXPECT_EQ(MaxAbsDiff(b, c->ExportTrainable()), 0.0) << st.ToString();
  }
  auto after = c->Classify({"a dog barks"});
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(before->at(0).probabilities, after->at(0).probabilities);
}

TEST(TextClassifierTest, TrainLowersLossAndIsDeterministicForASeed) {
  FEDGE_REQUIRE_MODEL(dir);
  auto c = MustLoad(Options(dir));
  ASSERT_NE(c, nullptr);
  std::vector<Example> data = TinyData();
  auto before = c->Evaluate(data, 5);
  ASSERT_TRUE(before.ok()) << before.status().ToString();
  EXPECT_EQ(before->num_examples, 12);

  TrainOptions t;
  t.steps = 12;
  t.batch_size = 6;
  t.learning_rate = 5e-3;
  t.seed = 7;
  auto r = c->Train(data, t);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->steps, 12);
  EXPECT_EQ(r->examples_seen, 72);
  auto after = c->Evaluate(data, 5);
  ASSERT_TRUE(after.ok());
  EXPECT_LT(after->mean_loss, before->mean_loss * 0.7)
      << "before " << before->mean_loss << " after " << after->mean_loss;
  EXPECT_GE(after->accuracy, 0.9);
  // LoRA B moved away from zero: the adapters, not only the head, trained.
  TensorBundle trained = c->ExportTrainable();
  double b_norm = 0;
  for (float v : trained.Find("encoder.layer.2.attention.self.query.lora_B")->values) b_norm += v * v;
  EXPECT_GT(b_norm, 0.0);

  auto again = MustLoad(Options(dir));
  auto r2 = again->Train(data, t);
  ASSERT_TRUE(r2.ok());
  EXPECT_EQ(r2->mean_loss, r->mean_loss);
  EXPECT_EQ(MaxAbsDiff(trained, again->ExportTrainable()), 0.0);

  t.seed = 8;  // other batches, other result
  auto third = MustLoad(Options(dir));
  ASSERT_TRUE(third->Train(data, t).ok());
  EXPECT_GT(MaxAbsDiff(trained, third->ExportTrainable()), 0.0);
}

TEST(TextClassifierTest, ProximalTermKeepsParametersNearTheRoundStart) {
  FEDGE_REQUIRE_MODEL(dir);
  TrainOptions t;
  t.steps = 6;
  t.batch_size = 6;
  t.learning_rate = 5e-3;
  t.max_grad_norm = 0;  // clipping would hide the proximal gradient's effect
  auto plain = MustLoad(Options(dir));
  const TensorBundle start = plain->ExportTrainable();
  ASSERT_TRUE(plain->Train(TinyData(), t).ok());
  auto prox = MustLoad(Options(dir));
  t.proximal_mu = 1000.0;
  ASSERT_TRUE(prox->Train(TinyData(), t).ok());
  auto distance = [&](const TensorBundle& b) {
    double d = 0;
    for (const auto& x : b.tensors) {
      const NamedTensor* s = start.Find(x.name);
      for (size_t i = 0; i < x.values.size(); ++i) d += std::pow(double(x.values[i]) - s->values[i], 2);
    }
    return std::sqrt(d);
  };
  EXPECT_LT(distance(prox->ExportTrainable()), 0.5 * distance(plain->ExportTrainable()));
}

// Logit adjustment (TrainOptions::logit_adjustment) on a shard holding only class 0:
// plain cross-entropy learns "always class 0" (the raw probability of class 1 falls to
// ~3e-4 from ~0.5); the adjusted loss sees class 1's prior (1e-6) in its logits already,
// so its gradient pushing class 1 down is ~1e-6 of plain's. AdamW normalises each
// coordinate's step, so a consistently signed tiny gradient still moves it (measured:
// ~0.11 after 8 steps, not ~0.5), but class 1 keeps ~400x plain's probability.
TEST(TextClassifierTest, LogitAdjustmentKeepsALocallyAbsentClassFromBeingPushedDown) {
  FEDGE_REQUIRE_MODEL(dir);
  std::vector<Example> animals;
  for (const Example& e : TinyData()) {
    if (e.label == 0) animals.push_back(e);
  }
  std::vector<std::string> texts;
  for (const Example& e : TinyData()) texts.push_back(e.text);
  TrainOptions t;
  t.steps = 8;
  t.batch_size = 6;
  t.learning_rate = 5e-3;
  t.seed = 7;
  auto mean_p1 = [&](TextClassifier& c) {
    auto p = c.Classify(texts);
    EXPECT_TRUE(p.ok());
    double s = 0;
    for (const Prediction& x : *p) s += x.probabilities[1];
    return s / static_cast<double>(p->size());
  };
  auto plain = MustLoad(Options(dir));
  const double start = mean_p1(*plain);
  auto r_plain = plain->Train(animals, t);
  ASSERT_TRUE(r_plain.ok()) << r_plain.status().ToString();
  auto adjusted = MustLoad(Options(dir));
  t.logit_adjustment = 1.0;
  auto r_adjusted = adjusted->Train(animals, t);
  ASSERT_TRUE(r_adjusted.ok()) << r_adjusted.status().ToString();
  const double p_plain = mean_p1(*plain), p_adjusted = mean_p1(*adjusted);
  EXPECT_LT(p_plain, 0.01 * start) << "start " << start << " plain " << p_plain << " adjusted " << p_adjusted;
  EXPECT_GT(p_adjusted, 50 * p_plain)
      << "start " << start << " plain " << p_plain << " adjusted " << p_adjusted;
  // The adjusted loss of a one-class shard is ~0 from the first step (class 1 is shifted
  // by log(1e-6)); the plain loss starts at ~log 2.
  EXPECT_LT(r_adjusted->mean_loss, 0.1);
  EXPECT_GT(r_plain->mean_loss, r_adjusted->mean_loss);
  t.logit_adjustment = -1;
  EXPECT_EQ(adjusted->Train(animals, t).status().code(), StatusCode::kInvalidArgument);
}

// spec.rounds.optimizerState keep: the second Train continues the first's AdamW. The
// first call has no earlier state, so it trains exactly as fresh does; the second
// differs from a fresh second round.
TEST(TextClassifierTest, KeptOptimizerStateCarriesIntoTheNextTrainOnly) {
  FEDGE_REQUIRE_MODEL(dir);
  TrainOptions t;
  t.steps = 4;
  t.batch_size = 6;
  t.learning_rate = 5e-3;
  t.seed = 7;
  auto fresh = MustLoad(Options(dir));
  auto kept = MustLoad(Options(dir));
  ASSERT_TRUE(fresh->Train(TinyData(), t).ok());
  TrainOptions k = t;
  k.keep_optimizer_state = true;
  ASSERT_TRUE(kept->Train(TinyData(), k).ok());
  EXPECT_EQ(MaxAbsDiff(fresh->ExportTrainable(), kept->ExportTrainable()), 0.0);
  // The next round starts both from the same global, as an agent's does.
  const TensorBundle global = fresh->ExportTrainable();
  ASSERT_TRUE(kept->ImportTrainable(global).ok());
  t.seed = k.seed = 8;
  ASSERT_TRUE(fresh->Train(TinyData(), t).ok());
  ASSERT_TRUE(kept->Train(TinyData(), k).ok());
  EXPECT_GT(MaxAbsDiff(fresh->ExportTrainable(), kept->ExportTrainable()), 0.0);
}

// The restricted softmax (TrainOptions::restricted_softmax; FedRS) on a shard holding
// only class 0: class 1 is absent, so its logit is multiplied by r while training, and
// the gradient on its head row shrinks (by r x its restricted probability; by hand in
// RestrictedSoftmaxTest). r = 1 trains exactly as plain cross-entropy does. FedRS was
// made for SGD: AdamW divides each coordinate's step by the root of its own second
// moment, so a row whose every gradient is scaled down alike takes the same steps. The
// absent class's head row (classifier.weight row 1 and bias 1) then moves as far at
// r = 0.5 as at r = 1 (measured 2026-12-04: 0.6156 vs 0.6017 after 8 steps, ratio
// 1.023), not less; the restriction acts only through what it changes elsewhere (the
// present classes' probabilities, hence the encoder's and their rows' gradients).
TEST(TextClassifierTest, RestrictedSoftmaxDoesNotHoldAnAbsentClassHeadRowBackUnderAdamW) {
  FEDGE_REQUIRE_MODEL(dir);
  std::vector<Example> animals;
  for (const Example& e : TinyData()) {
    if (e.label == 0) animals.push_back(e);
  }
  TrainOptions t;
  t.steps = 8;
  t.batch_size = 6;
  t.learning_rate = 5e-3;
  t.seed = 7;
  auto row_moved = [&](double r) {
    auto c = MustLoad(Options(dir));
    const TensorBundle start = c->ExportTrainable();
    TrainOptions o = t;
    o.restricted_softmax = r;
    auto trained = c->Train(animals, o);
    EXPECT_TRUE(trained.ok()) << trained.status().ToString();
    const TensorBundle end = c->ExportTrainable();
    const NamedTensor* w0 = start.Find("classifier.weight");
    const NamedTensor* w1 = end.Find("classifier.weight");
    const NamedTensor* b0 = start.Find("classifier.bias");
    const NamedTensor* b1 = end.Find("classifier.bias");
    EXPECT_TRUE(w0 != nullptr && w1 != nullptr && b0 != nullptr && b1 != nullptr);
    const size_t hidden = w0->values.size() / kLabels.size();
    double d = std::pow(double(b1->values[1]) - b0->values[1], 2);
    for (size_t i = hidden; i < 2 * hidden; ++i) d += std::pow(double(w1->values[i]) - w0->values[i], 2);
    return std::sqrt(d);
  };
  auto plain = MustLoad(Options(dir));
  ASSERT_TRUE(plain->Train(animals, t).ok());
  auto off = MustLoad(Options(dir));
  TrainOptions o = t;
  o.restricted_softmax = 1.0;
  ASSERT_TRUE(off->Train(animals, o).ok());
  EXPECT_EQ(MaxAbsDiff(plain->ExportTrainable(), off->ExportTrainable()), 0.0);
  const double moved_off = row_moved(1.0), moved_restricted = row_moved(0.5);
  EXPECT_GT(moved_off, 0.1) << "the absent class's row must move at all for the comparison to mean anything";
  EXPECT_NEAR(moved_restricted / moved_off, 1.0, 0.1) << "r=0.5 " << moved_restricted << " r=1 " << moved_off;
  o.restricted_softmax = 0;
  EXPECT_EQ(off->Train(animals, o).status().code(), StatusCode::kInvalidArgument);
}

// The restricted step (TrainOptions::restricted_step) on the same one-class shard: the
// change every AdamW step makes to the absent class's head row (classifier.weight row
// 1 and bias 1) is multiplied by r after AdamW has normalised it, so the row moves
// about r times as far as with r = 1 (not exactly: from its restricted position its
// later gradients differ a little, but AdamW's steps are ~lr per coordinate either
// way; measured 2026-12-04: 0.6017 at r = 1, 0.3103 at r = 0.5 (0.516x), 0.0637 at
// r = 0.1 (0.106x)), where the restricted softmax left it at 1.02x (test above). r = 0 leaves it
// exactly where it started; r = 1 trains exactly as without. With the scaling
// switched off in LocalRound the ratio is 1 and the test fails.
TEST(TextClassifierTest, RestrictedStepMovesAnAbsentClassHeadRowRTimesAsFar) {
  FEDGE_REQUIRE_MODEL(dir);
  std::vector<Example> animals;
  for (const Example& e : TinyData()) {
    if (e.label == 0) animals.push_back(e);
  }
  TrainOptions t;
  t.steps = 8;
  t.batch_size = 6;
  t.learning_rate = 5e-3;
  t.seed = 7;
  // How far the absent class's head row moved, and how far the present class's.
  auto rows_moved = [&](double r) {
    auto c = MustLoad(Options(dir));
    const TensorBundle start = c->ExportTrainable();
    TrainOptions o = t;
    o.restricted_step = r;
    auto trained = c->Train(animals, o);
    EXPECT_TRUE(trained.ok()) << trained.status().ToString();
    const TensorBundle end = c->ExportTrainable();
    const NamedTensor* w0 = start.Find("classifier.weight");
    const NamedTensor* w1 = end.Find("classifier.weight");
    const NamedTensor* b0 = start.Find("classifier.bias");
    const NamedTensor* b1 = end.Find("classifier.bias");
    EXPECT_TRUE(w0 != nullptr && w1 != nullptr && b0 != nullptr && b1 != nullptr);
    const size_t hidden = w0->values.size() / kLabels.size();
    std::array<double, 2> d{};
    for (size_t row = 0; row < 2; ++row) {
      d[row] = std::pow(double(b1->values[row]) - b0->values[row], 2);
      for (size_t i = row * hidden; i < (row + 1) * hidden; ++i) {
        d[row] += std::pow(double(w1->values[i]) - w0->values[i], 2);
      }
      d[row] = std::sqrt(d[row]);
    }
    return d;
  };
  auto plain = MustLoad(Options(dir));
  ASSERT_TRUE(plain->Train(animals, t).ok());
  auto off = MustLoad(Options(dir));
  TrainOptions o = t;
  o.restricted_step = 1.0;
  ASSERT_TRUE(off->Train(animals, o).ok());
  EXPECT_EQ(MaxAbsDiff(plain->ExportTrainable(), off->ExportTrainable()), 0.0);
  const auto full = rows_moved(1.0), half = rows_moved(0.5), tenth = rows_moved(0.1), frozen = rows_moved(0);
  RecordProperty("absent_row_moved", std::to_string(full[1]) + " " + std::to_string(half[1]) + " " +
                                         std::to_string(tenth[1]) + " " + std::to_string(frozen[1]));
  EXPECT_GT(full[1], 0.1) << "the absent class's row must move at all for the comparison to mean anything";
  EXPECT_NEAR(half[1] / full[1], 0.5, 0.05) << "r=0.5 " << half[1] << " r=1 " << full[1];
  EXPECT_NEAR(tenth[1] / full[1], 0.1, 0.02) << "r=0.1 " << tenth[1] << " r=1 " << full[1];
  EXPECT_EQ(frozen[1], 0.0);
  EXPECT_GT(frozen[0], 0.1) << "the present class's row still trains";
  o.restricted_step = 1.5;
  EXPECT_EQ(off->Train(animals, o).status().code(), StatusCode::kInvalidArgument);
}

TEST(TextClassifierTest, TrainAndEvaluateRejectBadInput) {
  FEDGE_REQUIRE_MODEL(dir);
  auto c = MustLoad(Options(dir));
  TrainOptions t;
  EXPECT_EQ(c->Train({}, t).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(c->Train({{"unlabelled", -1}}, t).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(c->Train({{"bad label", 2}}, t).status().code(), StatusCode::kInvalidArgument);
  t.steps = 0;
  EXPECT_EQ(c->Train(TinyData(), t).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(c->Evaluate(TinyData(), 0).status().code(), StatusCode::kInvalidArgument);
}

TEST(TextClassifierTest, ClassifyReturnsDistributionsAndHandlesLongAndEmptyTexts) {
  FEDGE_REQUIRE_MODEL(dir);
  auto c = MustLoad(Options(dir));
  std::string long_text;
  for (int i = 0; i < 200; ++i) long_text += "word ";
  auto p = c->Classify({"a dog", "", long_text});
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  ASSERT_EQ(p->size(), 3u);
  for (const Prediction& pred : *p) {
    ASSERT_EQ(pred.probabilities.size(), 2u);
    EXPECT_NEAR(pred.probabilities[0] + pred.probabilities[1], 1.0, 1e-5);
    EXPECT_EQ(pred.label, pred.probabilities[1] > pred.probabilities[0] ? 1 : 0);
  }
  EXPECT_EQ(c->CountTokens(long_text), 202);
  EXPECT_EQ(c->CountTokens(""), 2);
  auto none = c->Classify({});
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
}

TEST(TextClassifierTest, EmbedMatchesSentenceTransformersRecipe) {
  FEDGE_REQUIRE_MODEL(dir);
  auto c = MustLoad(Options(dir));  // fresh LoRA (B = 0) leaves the encoder unchanged
  nlohmann::json golden = testing::ReadGolden("minilm_hidden_states.json");
  std::vector<std::string> texts;
  for (const auto& s : golden["sentences"]) texts.push_back(s["text"]);
  auto emb = c->Embed(texts);
  ASSERT_TRUE(emb.ok()) << emb.status().ToString();
  ASSERT_EQ(emb->size(), texts.size());
  for (size_t i = 0; i < texts.size(); ++i) {
    auto want = golden["sentences"][i]["embedding"].get<std::vector<float>>();
    ASSERT_EQ((*emb)[i].size(), want.size());
    double norm = 0, worst = 0;
    for (size_t k = 0; k < want.size(); ++k) {
      norm += (*emb)[i][k] * (*emb)[i][k];
      worst = std::max(worst, std::abs(double((*emb)[i][k]) - want[k]));
    }
    EXPECT_NEAR(norm, 1.0, 1e-5);
    EXPECT_LT(worst, 1e-4) << texts[i];
  }
}

class LoadExamplesTest : public ::testing::Test {
 protected:
  std::string Write(const std::string& content) {
    path_ = ::testing::TempDir() + "/examples_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name() + ".jsonl";
    std::ofstream(path_) << content;
    return path_;
  }
  void TearDown() override { std::filesystem::remove(path_); }
  std::string path_;
};

TEST_F(LoadExamplesTest, ReadsStringAndIntegerLabelsAndSkipsBlankLines) {
  auto ex = LoadExamples(Write("{\"text\": \"dog: a mammal\", \"label\": \"noun.animal\"}\n\n"
                               "{\"text\": \"hammer\", \"label\": 1}\n{\"text\": \"unlabelled\"}\n"),
                         kLabels);
  ASSERT_TRUE(ex.ok()) << ex.status().ToString();
  ASSERT_EQ(ex->size(), 3u);
  EXPECT_EQ((*ex)[0].text, "dog: a mammal");
  EXPECT_EQ((*ex)[0].label, 0);
  EXPECT_EQ((*ex)[1].label, 1);
  EXPECT_EQ((*ex)[2].label, -1);
}

TEST_F(LoadExamplesTest, ErrorsNameTheLine) {
  for (const std::string& bad :
       {std::string("{\"text\": \"x\", \"label\": \"noun.plant\"}"),
        std::string("{\"text\": \"x\", \"label\": 5}"), std::string("{not json"),
        std::string("{\"label\": 0}"), std::string("{\"text\": \"x\", \"label\": 1.5}")}) {
    auto ex = LoadExamples(Write("{\"text\": \"ok\", \"label\": 0}\n" + bad + "\n"), kLabels);
    EXPECT_EQ(ex.status().code(), StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(ex.status().message().find(":2:"), std::string::npos) << ex.status().ToString();
  }
  EXPECT_EQ(LoadExamples("/nonexistent.jsonl", kLabels).status().code(), StatusCode::kNotFound);
}

}  // namespace
}  // namespace fedge::agent
