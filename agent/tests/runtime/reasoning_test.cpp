// ReasoningSplitter: the reply of a thinking model (Qwen3, DeepSeek-R1) split into
// reasoning and answer, the same whether it arrives at once or in pieces of any size.
#include "fedge/agent/runtime/reasoning.h"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

namespace fedge::agent {
namespace {

TEST(ReasoningSplitterTest, SplitsAtTheTagsAsVllmsQwen3ParserDoes) {
  auto parts = ReasoningSplitter::Split("<think>\nA dog is a canine.\n</think>\n\nA domestic canine.");
  EXPECT_EQ(parts.reasoning, "\nA dog is a canine.\n");
  EXPECT_EQ(parts.content, "\n\nA domestic canine.");
  // Thinking off (the prompt ends with an empty think block): all content.
  parts = ReasoningSplitter::Split("A domestic canine.");
  EXPECT_EQ(parts.reasoning, "");
  EXPECT_EQ(parts.content, "A domestic canine.");
  // Tags later in an answer are text.
  parts = ReasoningSplitter::Split("Use <think> and </think> tags.");
  EXPECT_EQ(parts.content, "Use <think> and </think> tags.");
  // Cut off while thinking (max_tokens): what came is reasoning, there is no answer.
  parts = ReasoningSplitter::Split("<think>\nstill going </th");
  EXPECT_EQ(parts.reasoning, "\nstill going </th");
  EXPECT_EQ(parts.content, "");
  // A reply shorter than the tag that is not it.
  parts = ReasoningSplitter::Split("<th");
  EXPECT_EQ(parts.content, "<th");
  parts = ReasoningSplitter::Split("");
  EXPECT_EQ(parts.content, "");
  // Only the first </think> ends the reasoning.
  parts = ReasoningSplitter::Split("<think>a</think>b</think>c");
  EXPECT_EQ(parts.reasoning, "a");
  EXPECT_EQ(parts.content, "b</think>c");
}

// DeepSeek-R1: the generation prompt opened <think>, so the reply starts inside the
// reasoning, as vLLM's deepseek_r1 parser reads it.
TEST(ReasoningSplitterTest, DeepSeekR1RepliesStartInsideTheReasoning) {
  constexpr auto kInside = llm::ChatReasoning::kStartsInside;
  auto parts = ReasoningSplitter::Split("A dog is a canine.\n</think>\n\nA domestic canine.", kInside);
  EXPECT_EQ(parts.reasoning, "A dog is a canine.\n");
  EXPECT_EQ(parts.content, "\n\nA domestic canine.");
  // A <think> the model writes anyway is dropped.
  parts = ReasoningSplitter::Split("<think>\nr</think>A", kInside);
  EXPECT_EQ(parts.reasoning, "\nr");
  EXPECT_EQ(parts.content, "A");
  // Never closed (cut off, or a model that skips it): all reasoning, no answer.
  parts = ReasoningSplitter::Split("still thinking </thi", kInside);
  EXPECT_EQ(parts.reasoning, "still thinking </thi");
  EXPECT_EQ(parts.content, "");
  parts = ReasoningSplitter::Split("<thi", kInside);
  EXPECT_EQ(parts.reasoning, "<thi");
  // Only the first </think> ends it; later tags are answer text.
  parts = ReasoningSplitter::Split("a</think>b<think>c</think>d", kInside);
  EXPECT_EQ(parts.reasoning, "a");
  EXPECT_EQ(parts.content, "b<think>c</think>d");
  parts = ReasoningSplitter::Split("</think>answer", kInside);
  EXPECT_EQ(parts.reasoning, "");
  EXPECT_EQ(parts.content, "answer");
}

TEST(ReasoningSplitterTest, PiecesOfAnySizeGiveWhatTheWholeGives) {
  const std::vector<std::string> replies = {"<think>\nA dog is a canine.\n</think>\n\nA domestic canine.",
                                            "A domestic canine.",
                                            "<think></think>",
                                            "<thin",
                                            "<think>x</thi",
                                            "</think>answer",
                                            "<think>a</think>b</think>c",
                                            "<think>\n<</</t</th</thi</think>>\n",
                                            "r</think>\n\nA",
                                            "<",
                                            "no tags at all"};
  std::mt19937 rng(7);
  for (const auto mode : {llm::ChatReasoning::kOpensWithTag, llm::ChatReasoning::kStartsInside})
    for (const std::string& reply : replies) {
      const auto whole = ReasoningSplitter::Split(reply, mode);
      for (int trial = 0; trial < 200; ++trial) {
        ReasoningSplitter s(mode);
        std::string reasoning, content;
        size_t i = 0;
        while (i < reply.size()) {
          const size_t n = std::uniform_int_distribution<size_t>(0, 4)(rng);
          auto parts = s.Feed(std::string_view(reply).substr(i, n));
          // Nothing of a tag is ever emitted as text of the other kind.
          reasoning += parts.reasoning;
          content += parts.content;
          i += n;
        }
        auto rest = s.Finish();
        reasoning += rest.reasoning;
        content += rest.content;
        ASSERT_EQ(reasoning, whole.reasoning) << reply;
        ASSERT_EQ(content, whole.content) << reply;
      }
    }
}

}  // namespace
}  // namespace fedge::agent
