// TokenClassifier facade on the tiny golden BERT (tests/golden/tiny_bert).
#include "fedge/agent/token_classifier.h"

#include <gtest/gtest.h>

#include <cmath>

#include "test_util.h"

namespace fedge::agent {
namespace {

std::string Golden(const std::string& rel) { return std::string(FEDGE_GOLDEN_DIR) + "/" + rel; }

// Softmax of golden logits row (sequence `seq`, position `pos`).
std::vector<double> GoldenProbs(const nlohmann::json& g, const char* key, int seq, int pos) {
  const auto shape = g["logits_shape"].get<std::vector<int>>();
  const auto logits = g[key].get<std::vector<double>>();
  std::vector<double> p;
  double sum = 0;
  for (int l = 0; l < shape[2]; ++l) {
    p.push_back(std::exp(logits[static_cast<size_t>((seq * shape[1] + pos) * shape[2] + l)]));
    sum += p.back();
  }
  for (double& v : p) v /= sum;
  return p;
}

// The golden's first sequence, [CLS] dog large oak plant is of genus leaf [SEP], as text.
constexpr const char* kText = "Dog large oak plant is of genus leaf";

void ExpectMatchesGolden(TokenClassifier& tc, const char* key) {
  nlohmann::json g = testing::ReadGolden("tiny_bert/goldens.json");
  auto tagged = tc.Tag({kText, "cat barks"});
  ASSERT_TRUE(tagged.ok()) << tagged.status().ToString();
  ASSERT_EQ(tagged->size(), 2u);
  const std::vector<std::string> want_tokens = {"dog", "large", "oak", "plant", "is", "of", "genus", "leaf"};
  ASSERT_EQ(tagged->at(0).size(), want_tokens.size());
  for (size_t i = 0; i < want_tokens.size(); ++i) {
    const TaggedToken& t = tagged->at(0)[i];
    EXPECT_EQ(t.token, want_tokens[i]);
    std::vector<double> want = GoldenProbs(g, key, 0, static_cast<int>(i) + 1);
    ASSERT_EQ(t.probabilities.size(), want.size());
    for (size_t l = 0; l < want.size(); ++l)
      EXPECT_NEAR(t.probabilities[l], want[l], 1e-5 + 1e-4 * want[l]) << i;
    EXPECT_EQ(t.label, std::max_element(want.begin(), want.end()) - want.begin());
  }
  EXPECT_EQ(tagged->at(1).size(), 2u);  // batched with padding: stops at its own [SEP]
}

TEST(TokenClassifierTest, TagsLikeTransformersWithAndWithoutPeftAdapter) {
  TokenClassifierOptions o;
  o.model_dir = Golden("tiny_bert/model");
  o.max_seq_len = 16;
  auto base = TokenClassifier::Load(o);
  ASSERT_TRUE(base.ok()) << base.status().ToString();
  EXPECT_EQ((*base)->labels(), (std::vector<std::string>{"LABEL_0", "LABEL_1", "LABEL_2"}));
  ExpectMatchesGolden(**base, "base_logits");
  o.adapter_dir = Golden("tiny_bert/peft_adapter");
  auto adapted = TokenClassifier::Load(o);
  ASSERT_TRUE(adapted.ok()) << adapted.status().ToString();
  ExpectMatchesGolden(**adapted, "adapter_logits");
}

TEST(TokenClassifierTest, LoadReportsBadInputs) {
  TokenClassifierOptions o;
  o.model_dir = "/nonexistent";
  EXPECT_EQ(TokenClassifier::Load(o).status().code(), StatusCode::kNotFound);
  o.model_dir = Golden("tiny_bert/model");
  o.max_seq_len = 17;  // > max_position_embeddings 16
  EXPECT_EQ(TokenClassifier::Load(o).status().code(), StatusCode::kInvalidArgument);
  o.max_seq_len = 16;
  o.adapter_dir = Golden("peft_minilm/adapter");  // hidden 384 factors for a 16-wide model
  EXPECT_EQ(TokenClassifier::Load(o).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fedge::agent
