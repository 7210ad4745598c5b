// Generation: greedy ids against transformers' generate(do_sample=False), and the
// sampling, stop, EOS and length behaviour a client of the API sees.
#include <gtest/gtest.h>

#include <map>
#include <nlohmann/json.hpp>

#include "fedge/agent/llm/causal_lm.h"
#include "fedge/agent/llm/generation.h"
#include "fedge/file_util.h"
#include "test_util.h"

namespace fedge::agent::llm {
namespace {

const std::string kGolden = FEDGE_GOLDEN_DIR;

std::unique_ptr<CausalLm> LoadModel(const std::string& name) {
  auto lm = CausalLm::Load({.model_dir = kGolden + "/llm/" + name});
  EXPECT_TRUE(lm.ok()) << lm.status().ToString();
  return lm.ok() ? std::move(*lm) : nullptr;
}

GenerationOptions Greedy(int max_new_tokens) {
  GenerationOptions o;
  o.max_new_tokens = max_new_tokens;
  o.sampling.temperature = 0;
  o.stop_at_eos = false;
  return o;
}

class GenerateGoldenTest : public ::testing::TestWithParam<std::string> {};

TEST_P(GenerateGoldenTest, GreedyIdsMatchTransformersGenerate) {
  nlohmann::json golden = testing::LlmModelGolden(GetParam());
  auto lm = LoadModel(GetParam());
  ASSERT_TRUE(lm);
  for (const auto& g : golden["greedy"]) {
    std::vector<int32_t> prompt = g["prompt_ids"];
    // transformers encodes with add_special_tokens: tiny_mistral's BOS.
    EXPECT_EQ(lm->tokenizer().Encode(g["prompt"].get<std::string>(), {.add_special_tokens = true}), prompt);
    auto result = lm->GenerateFromIds(prompt, Greedy(16));
    ASSERT_TRUE(result.ok()) << result.status().ToString();
    EXPECT_EQ(result->token_ids, g["ids"].get<std::vector<int32_t>>()) << g["prompt"];
    EXPECT_EQ(result->finish_reason, FinishReason::kLength);
    // The text a completion appends to its prompt: for a SentencePiece tokenizer with
    // its first word's space, which tokenizers' decode(new ids) strips.
    EXPECT_EQ(result->text, g.value("appended_text", g["text"].get<std::string>()));
    EXPECT_EQ(result->prompt_tokens, static_cast<int64_t>(prompt.size()));
    // Generate(text) encodes with the BOS: the same continuation.
    auto from_text = lm->Generate(g["prompt"].get<std::string>(), Greedy(16));
    ASSERT_TRUE(from_text.ok());
    EXPECT_EQ(from_text->token_ids, result->token_ids);
  }
}

// A chat reply starts without the space its first SentencePiece word carries (Llama 2's
// " Hello" after [/INST]), as tokenizers' decode strips it; only that one space goes.
TEST(GenerateTest, StripLeadingSpaceDropsTheFirstWordsMarker) {
  auto lm = LoadModel("tiny_mistral");
  ASSERT_TRUE(lm);
  EXPECT_TRUE(lm->tokenizer().StripsLeadingSpace());
  EXPECT_FALSE(LoadModel("tiny_llama")->tokenizer().StripsLeadingSpace());  // byte-level
  int found = 0;
  for (const char* prompt : {"dog:", "cat:", "bank: a", "run", "The", "a b c", "x:", "tree"}) {
    auto plain = lm->Generate(prompt, Greedy(6));
    ASSERT_TRUE(plain.ok());
    if (plain->text.empty() || plain->text[0] != ' ') continue;
    GenerationOptions o = Greedy(6);
    o.strip_leading_space = true;
    std::string streamed;
    auto stripped = lm->Generate(prompt, o, [&](std::string_view d) { streamed += d; });
    ASSERT_TRUE(stripped.ok());
    EXPECT_EQ(stripped->token_ids, plain->token_ids);
    EXPECT_EQ(stripped->text, plain->text.substr(1)) << prompt;
    EXPECT_EQ(streamed, stripped->text);
    ++found;
  }
  EXPECT_GE(found, 1) << "no prompt's greedy continuation starts with a word marker";
}

// A SentencePiece-style model trains on BOS + prompt + completion + EOS, the
// completion encoded as a continuation (" sloping land" keeps one word marker, not
// two): transformers' masked loss on those ids.
TEST(GenerateTest, CompletionLossEncodesLikeTheJoinedText) {
  nlohmann::json golden = testing::LlmModelGolden("tiny_mistral");
  auto lm = LoadModel("tiny_mistral");
  ASSERT_TRUE(lm);
  ASSERT_EQ(golden["completion_losses"].size(), 2u);
  for (const auto& c : golden["completion_losses"]) {
    auto loss = lm->Loss({{c["prompt"].get<std::string>(), c["completion"].get<std::string>()}});
    ASSERT_TRUE(loss.ok()) << loss.status().ToString();
    EXPECT_NEAR(*loss, c["loss"].get<double>(), 1e-4 * c["loss"].get<double>()) << c["prompt"];
  }
}

INSTANTIATE_TEST_SUITE_P(Models, GenerateGoldenTest,
                         ::testing::Values("tiny_llama", "tiny_qwen2", "tiny_llama32", "tiny_qwen3",
                                           "tiny_mistral", "tiny_phi3", "tiny_phi3_longrope", "tiny_gemma3",
                                           "tiny_gemma2"));

TEST(GenerateTest, SamplingIsDeterministicPerSeed) {
  auto lm = LoadModel("tiny_llama");
  ASSERT_TRUE(lm);
  GenerationOptions o = Greedy(12);
  o.sampling = {.temperature = 1.0, .top_k = 50, .top_p = 0.95, .seed = 11};
  auto a = lm->Generate("dog:", o);
  auto b = lm->Generate("dog:", o);
  o.sampling.seed = 12;
  auto c = lm->Generate("dog:", o);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ(a->token_ids, b->token_ids);
  EXPECT_NE(a->token_ids, c->token_ids);
  // top_k = 1 is greedy whatever the temperature and seed.
  o.sampling = {.temperature = 1.5, .top_k = 1, .top_p = 1.0, .seed = 99};
  auto k1 = lm->Generate("dog:", o);
  auto greedy = lm->Generate("dog:", Greedy(12));
  ASSERT_TRUE(k1.ok() && greedy.ok());
  EXPECT_EQ(k1->token_ids, greedy->token_ids);
}

TEST(GenerateTest, StopStringCutsTextAndStreamsTheSameText) {
  auto lm = LoadModel("tiny_qwen2");
  ASSERT_TRUE(lm);
  auto full = lm->Generate("cat:", Greedy(16));
  ASSERT_TRUE(full.ok());
  ASSERT_GE(full->text.size(), 12u);
  std::string stop = full->text.substr(6, 3);
  size_t cut = full->text.find(stop);
  GenerationOptions o = Greedy(16);
  o.stop = {"zzzz-never", stop};
  std::string streamed;
  auto r = lm->Generate("cat:", o, [&](std::string_view delta) { streamed += delta; });
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->finish_reason, FinishReason::kStop);
  EXPECT_EQ(r->text, full->text.substr(0, cut));
  EXPECT_EQ(streamed, r->text);
  EXPECT_LT(r->token_ids.size(), full->token_ids.size());
}

TEST(GenerateTest, EosEndsWithStopAndIsNotReturned) {
  nlohmann::json golden = testing::LlmModelGolden("tiny_qwen2");
  auto lm = LoadModel("tiny_qwen2");
  ASSERT_TRUE(lm);
  ASSERT_EQ(lm->eos_token_ids(), (std::vector<int64_t>{2}));
  // The golden greedy continuation of "bank: a" emits id 2 (EOS) at step 13.
  std::vector<int32_t> want = golden["greedy"][1]["ids"];
  auto eos_at = std::find(want.begin(), want.end(), 2);
  ASSERT_NE(eos_at, want.end());
  GenerationOptions o = Greedy(16);
  o.stop_at_eos = true;
  auto r = lm->GenerateFromIds(golden["greedy"][1]["prompt_ids"].get<std::vector<int32_t>>(), o);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->finish_reason, FinishReason::kStop);
  EXPECT_EQ(r->token_ids, std::vector<int32_t>(want.begin(), eos_at));
}

TEST(GenerateTest, ContextLimitsEndWithLengthOrReject) {
  auto lm = LoadModel("tiny_llama");
  ASSERT_TRUE(lm);
  const int64_t context = lm->config().max_position_embeddings;
  std::vector<int32_t> prompt(static_cast<size_t>(context - 5), 7);
  auto r = lm->GenerateFromIds(prompt, Greedy(50));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->finish_reason, FinishReason::kLength);
  EXPECT_EQ(r->token_ids.size(), 5u);

  prompt.resize(static_cast<size_t>(context), 7);
  EXPECT_EQ(lm->GenerateFromIds(prompt, Greedy(1)).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(lm->GenerateFromIds({}, Greedy(1)).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(lm->GenerateFromIds({1, 100000}, Greedy(1)).status().code(), StatusCode::kInvalidArgument);
}

TEST(GenerateTest, LossExcludesPromptTokens) {
  auto lm = LoadModel("tiny_llama");
  ASSERT_TRUE(lm);
  auto a = lm->Loss({{"dog:", " a domestic animal"}});
  auto b = lm->Loss({{"", "dog: a domestic animal"}});
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_GT(*a, 0);
  EXPECT_NE(*a, *b);
  EXPECT_EQ(lm->Loss({}).status().code(), StatusCode::kInvalidArgument);
}

TEST(TokenSamplerTest, TopKAndTopPRestrictTheSupport) {
  const std::vector<float> logits = {std::log(0.05f), std::log(0.5f), std::log(0.15f), std::log(0.3f)};
  std::map<int32_t, int> seen_k, seen_p;
  TokenSampler top_k({.temperature = 1.0, .top_k = 2, .top_p = 1.0, .seed = 1});
  TokenSampler top_p({.temperature = 1.0, .top_k = 0, .top_p = 0.7, .seed = 1});
  for (int i = 0; i < 2000; ++i) {
    std::vector<float> row = logits;
    ++seen_k[top_k.Sample(row)];
    row = logits;
    ++seen_p[top_p.Sample(row)];
  }
  EXPECT_EQ(seen_k.size(), 2u);
  EXPECT_TRUE(seen_k.count(1) && seen_k.count(3));
  // 0.5 + 0.3 >= 0.7: tokens 1 and 3 only, in proportion 5:3.
  EXPECT_EQ(seen_p.size(), 2u);
  EXPECT_NEAR(seen_p[1] / 2000.0, 0.625, 0.04);
}

TEST(TokenSamplerTest, TemperatureSharpensAndFrequenciesFollowSoftmax) {
  const std::vector<float> logits = {0.0f, std::log(3.0f)};  // p = 0.25, 0.75
  TokenSampler plain({.temperature = 1.0, .top_k = 0, .top_p = 1.0, .seed = 5});
  TokenSampler cold({.temperature = 0.25, .top_k = 0, .top_p = 1.0, .seed = 5});
  int ones_plain = 0, ones_cold = 0;
  for (int i = 0; i < 4000; ++i) {
    std::vector<float> row = logits;
    ones_plain += plain.Sample(row);
    row = logits;
    ones_cold += cold.Sample(row);
  }
  EXPECT_NEAR(ones_plain / 4000.0, 0.75, 0.03);
  EXPECT_NEAR(ones_cold / 4000.0, 81.0 / 82.0, 0.01);  // 3^4 : 1
}

TEST(TokenSamplerTest, GreedyTakesTheLowestIdOnTies) {
  TokenSampler greedy({.temperature = 0});
  std::vector<float> row = {0.1f, 2.0f, -1.0f, 2.0f};
  EXPECT_EQ(greedy.Sample(row), 1);
}

}  // namespace
}  // namespace fedge::agent::llm
