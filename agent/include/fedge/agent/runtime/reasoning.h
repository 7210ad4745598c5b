// Separating a thinking model's reasoning from its answer in a chat reply, as vLLM's
// qwen3 and deepseek_r1 reasoning parsers and DeepSeek's API do. Qwen3
// (kOpensWithTag): a reply that opens with <think> has its text up to </think> as
// `reasoning_content`, the rest as `content`; a reply without the opening tag
// (thinking off) is all content. DeepSeek-R1 (kStartsInside: its generation prompt
// opened <think>): the reply is reasoning up to its </think> (a <think> it opens with
// anyway is dropped), the rest content; a reply that never closes it is all reasoning.
#pragma once

#include <string>
#include <string_view>

#include "fedge/agent/llm/chat_template.h"
#include "fedge/agent/llm/tool_calls.h"

namespace fedge::agent {

class ReasoningSplitter {
 public:
  struct Parts {
    std::string reasoning;
    std::string content;
  };

  explicit ReasoningSplitter(llm::ChatReasoning mode = llm::ChatReasoning::kOpensWithTag) : mode_(mode) {}

  // The part of `delta` (the next piece of the reply) that can be told apart now. A
  // piece that may be the start of a tag is held until the next call or Finish.
  Parts Feed(std::string_view delta);
  // What is held at the end of the reply.
  Parts Finish();

  // The whole reply at once: Feed(text) then Finish(), joined.
  static Parts Split(std::string_view text, llm::ChatReasoning mode = llm::ChatReasoning::kOpensWithTag);

 private:
  enum class State { kStart, kReasoning, kContent };
  llm::ChatReasoning mode_;
  State state_ = State::kStart;
  std::string held_;
};

// A chat reply's tool calls (llm::ParseToolCalls) as it streams. Hermes: text before
// the first <tool_call> goes out as content (a piece that may begin the tag is held);
// from the tag on everything is held. Llama 3.1 / 3.2: a reply whose first
// non-whitespace character is "{" is held whole, any other goes out as it comes. What
// is held is read at the end as the calls, or, if it is not readable as calls, sent as
// content after all.
class ToolCallStream {
 public:
  explicit ToolCallStream(llm::ChatToolFormat format = llm::ChatToolFormat::kHermes) : format_(format) {}
  // The content that can go out now.
  std::string Feed(std::string_view delta);
  // At the end: the calls (content empty), or the held text as content.
  llm::ParsedToolCalls Finish();

 private:
  llm::ChatToolFormat format_;
  std::string held_;
  bool in_call_ = false;
  bool content_ = false;  // Llama: the reply began with something other than a call
};

// A whole chat reply read as a request asks: the reasoning split off as `mode` says
// (kNone: none), then, with a `tools` format, the calls read out of the rest (the
// content is then the text before the first call). What the streamed pieces add up to.
struct ChatReplyParts {
  std::string reasoning;
  std::string content;
  std::vector<llm::ChatToolCall> calls;  // empty: no call (content is the whole answer)
};
ChatReplyParts ReadChatReply(std::string_view text, llm::ChatReasoning mode, llm::ChatToolFormat tools);

}  // namespace fedge::agent
