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

namespace fedge::agent {
namespace {

// Tool calls read out of a whole reply, after its reasoning: the content is the text
// before the first call; without tools offered the tags are text.
TEST(ChatReplyTest, ReadsToolCallsAfterTheReasoning) {
  const std::string reply =
      "<think>\nplan\n</think>\n\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"tz\":\"UTC\"}}\n"
      "</tool_call>";
  ChatReplyParts parts =
      ReadChatReply(reply, llm::ChatReasoning::kOpensWithTag, llm::ChatToolFormat::kHermes);
  EXPECT_EQ(parts.reasoning, "\nplan\n");
  EXPECT_EQ(parts.content, "\n\n");
  ASSERT_EQ(parts.calls.size(), 1u);
  EXPECT_EQ(parts.calls[0].name, "get_time");
  EXPECT_EQ(parts.calls[0].arguments, "{\"tz\": \"UTC\"}");
  parts = ReadChatReply(reply, llm::ChatReasoning::kOpensWithTag, llm::ChatToolFormat::kNone);
  EXPECT_TRUE(parts.calls.empty());
  EXPECT_EQ(parts.content, reply.substr(reply.find("</think>") + 8));
  // A <tool_call> inside the reasoning is reasoning, not a call.
  parts = ReadChatReply("<think><tool_call>{\"name\": \"a\", \"arguments\": {}}</tool_call></think>done",
                        llm::ChatReasoning::kOpensWithTag, llm::ChatToolFormat::kHermes);
  EXPECT_TRUE(parts.calls.empty());
  EXPECT_EQ(parts.content, "done");
  parts = ReadChatReply("plain answer", llm::ChatReasoning::kNone, llm::ChatToolFormat::kHermes);
  EXPECT_TRUE(parts.calls.empty());
  EXPECT_EQ(parts.content, "plain answer");
}

// Streamed in pieces of any size through the splitter and ToolCallStream, a reply
// gives what ReadChatReply gives for the whole: the content that went out, the
// reasoning, and the calls read at the end (or the held text, sent as content).
TEST(ChatReplyTest, StreamedToolCallsEqualTheWholeReply) {
  using Format = llm::ChatToolFormat;
  const std::vector<std::pair<Format, std::string>> replies = {
      {Format::kHermes,
       "Checking.\n<tool_call>\n{\"name\": \"a\", \"arguments\": {\"x\": 1}}\n</tool_call>\n<tool_call>\n"
       "{\"name\": \"b\", \"arguments\": {}}\n</tool_call>"},
      {Format::kHermes, "<think>r</think>\n\n<tool_call>{\"name\": \"a\", \"arguments\": []}</tool_call>"},
      {Format::kHermes, "no call <tool_ca"},
      {Format::kHermes, "<tool_call>{broken</tool_call> so this is text"},
      {Format::kHermes, "<think>r</think><tool_call>{\"name\": \"a\", \"arguments\": {}}"},
      {Format::kHermes, "<<tool_call<tool_call>{\"name\": \"a\", \"arguments\": {}}</tool_call>"},
      // Llama 3.1 / 3.2: a reply that opens with "{" is held and read whole.
      {Format::kLlama3Json, "{\"name\": \"a\", \"parameters\": {\"x\": \"}\"}}"},
      {Format::kLlama3Json,
       " \n{\"name\": \"a\", \"parameters\": {}}; {\"name\": \"b\", \"arguments\": [1]}\n"},
      {Format::kLlama3Json, "{\"name\": \"a\", \"parameters\": {}} and then text"},
      {Format::kLlama3Json, "<think>r</think>{\"name\": \"a\", \"parameters\": {}}"},
      {Format::kLlama3Json, "  The answer is {\"name\": \"a\", \"parameters\": {}}"},
      {Format::kLlama3Json, "\n\n"},
      {Format::kLlama3Json, "{\"name\": \"a\", \"parameters\": {\"cut"}};
  std::mt19937 rng(11);
  for (const auto mode : {llm::ChatReasoning::kNone, llm::ChatReasoning::kOpensWithTag}) {
    for (const auto& [format, reply] : replies) {
      const ChatReplyParts whole = ReadChatReply(reply, mode, format);
      for (int trial = 0; trial < 100; ++trial) {
        ReasoningSplitter splitter(mode);
        ToolCallStream tools(format);
        std::string reasoning, content;
        auto take = [&](ReasoningSplitter::Parts p) {
          reasoning += p.reasoning;
          content += tools.Feed(p.content);
        };
        for (size_t i = 0; i < reply.size();) {
          const size_t n = std::uniform_int_distribution<size_t>(1, 5)(rng);
          const std::string_view piece = std::string_view(reply).substr(i, n);
          if (mode == llm::ChatReasoning::kNone) {
            content += tools.Feed(piece);
          } else {
            take(splitter.Feed(piece));
          }
          i += n;
        }
        if (mode != llm::ChatReasoning::kNone) take(splitter.Finish());
        llm::ParsedToolCalls end = tools.Finish();
        if (!end.called) content += end.content;
        ASSERT_EQ(reasoning, whole.reasoning) << reply;
        ASSERT_EQ(content, whole.content) << reply;
        ASSERT_EQ(end.calls.size(), whole.calls.size()) << reply;
        for (size_t k = 0; k < end.calls.size(); ++k) {
          EXPECT_EQ(end.calls[k].name, whole.calls[k].name);
          EXPECT_EQ(end.calls[k].arguments, whole.calls[k].arguments);
        }
      }
    }
  }
}

}  // namespace
}  // namespace fedge::agent
