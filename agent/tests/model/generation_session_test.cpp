// GenerationSession (continuous batching, issue 13 item 2): sessions advanced
// together by CausalLm::StepGenerations — joining at different steps, with
// different prompts, sampling, stop strings and lengths — give exactly what one
// GenerateFromIds call each gives, streamed text included; cancellation ends a
// session at the next step; a session only steps with the model that made it.
#include <gtest/gtest.h>

#include "fedge/agent/llm/causal_lm.h"
#include "fedge/agent/llm/generation.h"

namespace fedge::agent::llm {
namespace {

const std::string kGolden = FEDGE_GOLDEN_DIR;

std::unique_ptr<CausalLm> LoadModel(const std::string& name) {
  auto lm = CausalLm::Load({.model_dir = kGolden + "/llm/" + name, .num_threads = 0, .decode_weights = ""});
  EXPECT_TRUE(lm.ok()) << lm.status().ToString();
  return lm.ok() ? std::move(*lm) : nullptr;
}

struct Case {
  std::string prompt;
  GenerationOptions options;
};

std::vector<Case> Cases(CausalLm& lm) {
  std::vector<Case> cases;
  auto greedy = [](int n) {
    GenerationOptions o;
    o.max_new_tokens = n;
    o.sampling.temperature = 0;
    o.stop_at_eos = false;
    return o;
  };
  cases.push_back({"dog:", greedy(16)});
  GenerationOptions sampled = greedy(12);
  sampled.sampling = {.temperature = 1.0, .top_k = 50, .top_p = 0.95, .seed = 11};
  cases.push_back({"a cat is", sampled});
  cases.push_back({"x", greedy(1)});
  GenerationOptions eos = greedy(20);
  eos.stop_at_eos = true;
  cases.push_back({"the tree", eos});
  // A stop string taken from the greedy text of its own prompt.
  auto full = lm.Generate("cat:", greedy(16));
  EXPECT_TRUE(full.ok());
  GenerationOptions stop = greedy(16);
  if (full.ok() && full->text.size() >= 9) stop.stop = {full->text.substr(6, 3)};
  cases.push_back({"cat:", stop});
  cases.push_back({"a much longer prompt than the others, to make the lengths ragged:", greedy(9)});
  return cases;
}

TEST(GenerationSessionTest, SessionsSteppedTogetherEqualOneGenerationEach) {
  for (const std::string name : {"tiny_llama", "tiny_qwen2", "tiny_qwen3", "tiny_mistral", "tiny_phi3",
                                 "tiny_phi3_longrope", "tiny_gemma3", "tiny_gemma2"}) {
    auto lm = LoadModel(name);
    ASSERT_TRUE(lm);
    std::vector<Case> cases = Cases(*lm);
    std::vector<GenerationResult> want;
    std::vector<std::string> want_streamed(cases.size());
    for (size_t i = 0; i < cases.size(); ++i) {
      auto r = lm->Generate(cases[i].prompt, cases[i].options,
                            [&, i](std::string_view d) { want_streamed[i] += d; });
      ASSERT_TRUE(r.ok()) << r.status().ToString();
      want.push_back(*r);
    }
    // Session i joins the batch at step i (continuous batching), then all step together.
    std::vector<std::unique_ptr<GenerationSession>> sessions(cases.size());
    std::vector<std::string> streamed(cases.size());
    size_t most = 0;
    for (int step = 0; step < 64; ++step) {
      if (static_cast<size_t>(step) < cases.size()) {
        const size_t i = static_cast<size_t>(step);
        auto s = lm->StartGeneration(lm->tokenizer().Encode(cases[i].prompt, {.add_special_tokens = true}),
                                     cases[i].options, [&, i](std::string_view d) { streamed[i] += d; });
        ASSERT_TRUE(s.ok()) << s.status().ToString();
        sessions[i] = std::move(*s);
      }
      std::vector<GenerationSession*> active;
      for (auto& s : sessions) {
        if (s && !s->done()) active.push_back(s.get());
      }
      most = std::max(most, active.size());
      ASSERT_TRUE(lm->StepGenerations(active).ok());
    }
    EXPECT_GE(most, 3u) << "the cases never shared a step";
    for (size_t i = 0; i < cases.size(); ++i) {
      ASSERT_TRUE(sessions[i]->done()) << i;
      const GenerationResult& got = sessions[i]->result();
      EXPECT_EQ(got.token_ids, want[i].token_ids) << name << " case " << i;
      EXPECT_EQ(got.text, want[i].text) << name << " case " << i;
      EXPECT_EQ(got.finish_reason, want[i].finish_reason) << name << " case " << i;
      EXPECT_EQ(got.prompt_tokens, want[i].prompt_tokens);
      EXPECT_EQ(streamed[i], want_streamed[i]) << name << " case " << i;
    }
  }
}

TEST(GenerationSessionTest, ACancelledSessionEndsAtTheNextStepWithoutTheOthers) {
  auto lm = LoadModel("tiny_llama");
  ASSERT_TRUE(lm);
  bool cancel = false;
  GenerationOptions o;
  o.max_new_tokens = 20;
  o.sampling.temperature = 0;
  o.stop_at_eos = false;
  GenerationOptions cancellable = o;
  cancellable.cancelled = [&] { return cancel; };
  auto a = lm->StartGeneration(lm->tokenizer().Encode("dog:"), cancellable);
  auto b = lm->StartGeneration(lm->tokenizer().Encode("cat:"), o);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_TRUE(lm->StepGenerations({a->get(), b->get()}).ok());
  EXPECT_EQ((*a)->result().token_ids.size(), 2u);
  cancel = true;
  ASSERT_TRUE(lm->StepGenerations({a->get(), b->get()}).ok());
  EXPECT_TRUE((*a)->done());
  EXPECT_EQ((*a)->result().finish_reason, FinishReason::kCancelled);
  EXPECT_EQ((*a)->result().token_ids.size(), 2u);
  EXPECT_FALSE((*b)->done());
  EXPECT_EQ((*b)->result().token_ids.size(), 3u);
}

TEST(GenerationSessionTest, RefusesASessionOfAnotherModelAndBadPrompts) {
  auto one = LoadModel("tiny_llama"), other = LoadModel("tiny_llama");
  ASSERT_TRUE(one && other);
  GenerationOptions o;
  o.max_new_tokens = 4;
  auto s = one->StartGeneration(one->tokenizer().Encode("dog:"), o);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(other->StepGenerations({s->get()}).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(one->StartGeneration({}, o).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(one->StartGeneration({-1}, o).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fedge::agent::llm
