// One LoRA target rule for both model families: PEFT's suffix rule (a target
// matches a module whose full name equals it or ends with "." + it). The BERT
// side: bert_test.cpp, BertModelTest.SelectLoraTargetsUsesTheSharedPeftRule.
#include "peft/lora_targets.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "fedge/agent/llm/causal_lm.h"

namespace fedge::agent {
namespace {

const std::string kTinyLlama = std::string(FEDGE_GOLDEN_DIR) + "/llm/tiny_llama";

StatusOr<std::unique_ptr<llm::CausalLm>> LoadTinyLlama() {
  llm::CausalLmOptions options;
  options.model_dir = kTinyLlama;
  return llm::CausalLm::Load(options);
}

TEST(LoraTargetsTest, MatchesFullNamesAndDotSuffixesOnly) {
  struct Case {
    const char* name;
    const char* target;
    bool matches;
  };
  const Case cases[] = {
      {"model.layers.0.self_attn.q_proj", "q_proj", true},
      {"model.layers.0.self_attn.q_proj", "self_attn.q_proj", true},
      {"model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.q_proj", true},
      {"model.layers.0.self_attn.q_proj", "proj", false},
      {"model.layers.0.self_attn.q_proj", "attn.q_proj", false},
      {"model.layers.0.mlp.up_proj", "self_attn.q_proj", false},
      {"q_proj", "self_attn.q_proj", false},
      {"model.layers.0.self_attn.q_proj", "", false},
      // BERT-style names follow the same rule.
      {"encoder.layer.0.attention.self.value", "value", true},
      {"encoder.layer.0.attention.self.value", "attention.self.value", true},
      {"encoder.layer.1.attention.output.dense", "attention.output.dense", true},
      {"encoder.layer.1.output.dense", "attention.output.dense", false},
      {"encoder.layer.0.attention.self.value", "alue", false},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(LoraTargetMatches(c.name, c.target), c.matches) << c.name << " ~ \"" << c.target << "\"";
  }
}

TEST(LoraTargetsTest, MatchListsEachModuleOnceTargetByTargetAndRefusesATargetMatchingNothing) {
  const std::vector<std::string> names = {"l.0.attention.self.query", "l.0.attention.self.value",
                                          "l.1.attention.self.query", "l.1.attention.self.value"};
  auto picked = MatchLoraTargets(names, {"value", "query", "attention.self.value"}, "hint");
  ASSERT_TRUE(picked.ok()) << picked.status().ToString();
  EXPECT_EQ(*picked, (std::vector<size_t>{1, 3, 0, 2}));
  auto typo = MatchLoraTargets(names, {"query", "valeu"}, "try query, value");
  ASSERT_EQ(typo.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(typo.status().message().find("'valeu'"), std::string::npos) << typo.status().ToString();
  EXPECT_NE(typo.status().message().find("try query, value"), std::string::npos);
}

// Regression (issue 11): the Llama family compared only the last name part
// ("q_proj") with each target, so "self_attn.q_proj" - PEFT's way to name the
// same modules - was refused ("not a Llama projection") and attached nothing.
TEST(LoraTargetsTest, SelfAttnQProjAttachesToEveryLlamaQueryProjection) {
  auto lm = LoadTinyLlama();
  ASSERT_TRUE(lm.ok()) << lm.status().ToString();
  Status st = (*lm)->EnableLora({.rank = 2, .alpha = 4, .targets = {"self_attn.q_proj"}});
  ASSERT_TRUE(st.ok()) << st.ToString();
  const TensorBundle trainable = (*lm)->ExportTrainable();
  const int64_t layers = (*lm)->config().num_hidden_layers;
  ASSERT_EQ(trainable.tensors.size(), static_cast<size_t>(2 * layers));
  for (int64_t l = 0; l < layers; ++l) {
    const std::string q = "model.layers." + std::to_string(l) + ".self_attn.q_proj";
    EXPECT_NE(trainable.Find(q + ".lora_A"), nullptr) << q;
    EXPECT_NE(trainable.Find(q + ".lora_B"), nullptr) << q;
  }
}

TEST(LoraTargetsTest, LlamaShortAndLongTargetsAdaptTheSameModulesAndTyposAreRefused) {
  auto a = LoadTinyLlama();
  auto b = LoadTinyLlama();
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_TRUE((*a)->EnableLora({.rank = 2, .alpha = 4, .targets = {"q_proj", "down_proj"}}).ok());
  ASSERT_TRUE(
      (*b)->EnableLora({.rank = 2, .alpha = 4, .targets = {"self_attn.q_proj", "mlp.down_proj"}}).ok());
  const TensorBundle ta = (*a)->ExportTrainable(), tb = (*b)->ExportTrainable();
  ASSERT_EQ(ta.tensors.size(), tb.tensors.size());
  for (size_t i = 0; i < ta.tensors.size(); ++i) {
    EXPECT_EQ(ta.tensors[i].name, tb.tensors[i].name);
    EXPECT_EQ(ta.tensors[i].values, tb.tensors[i].values) << "same seed, same modules, same A";
  }
  auto c = LoadTinyLlama();
  ASSERT_TRUE(c.ok());
  EXPECT_EQ((*c)->EnableLora({.targets = {"mlp.q_proj"}}).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ((*c)->EnableLora({.targets = {"proj"}}).code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fedge::agent
