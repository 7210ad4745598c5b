// Separating a thinking model's reasoning from its answer in a chat reply, as vLLM's
// qwen3 reasoning parser and DeepSeek's API do: a reply that opens with <think> has
// its text up to </think> as `reasoning_content`, the rest as `content`; a reply
// without the opening tag (thinking off) is all content.
#pragma once

#include <string>
#include <string_view>

namespace fedge::agent {

class ReasoningSplitter {
 public:
  struct Parts {
    std::string reasoning;
    std::string content;
  };

  // The part of `delta` (the next piece of the reply) that can be told apart now. A
  // piece that may be the start of a tag is held until the next call or Finish.
  Parts Feed(std::string_view delta);
  // What is held at the end of the reply.
  Parts Finish();

  // The whole reply at once: Feed(text) then Finish(), joined.
  static Parts Split(std::string_view text);

 private:
  enum class State { kStart, kReasoning, kContent };
  State state_ = State::kStart;
  std::string held_;
};

}  // namespace fedge::agent
