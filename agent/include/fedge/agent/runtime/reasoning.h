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

}  // namespace fedge::agent
