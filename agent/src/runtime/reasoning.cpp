#include "fedge/agent/runtime/reasoning.h"

#include <algorithm>
#include <utility>

namespace fedge::agent {
namespace {

constexpr std::string_view kOpen = "<think>";
constexpr std::string_view kClose = "</think>";

// The length of the longest suffix of `s` that is a proper prefix of `tag`.
size_t PartialTagAtEnd(std::string_view s, std::string_view tag) {
  for (size_t n = std::min(s.size(), tag.size() - 1); n > 0; --n) {
    if (s.substr(s.size() - n) == tag.substr(0, n)) return n;
  }
  return 0;
}

}  // namespace

ReasoningSplitter::Parts ReasoningSplitter::Feed(std::string_view delta) {
  Parts out;
  held_.append(delta);
  if (state_ == State::kStart) {
    if (held_.size() < kOpen.size() && kOpen.substr(0, held_.size()) == held_) return out;  // maybe <think>
    if (held_.compare(0, kOpen.size(), kOpen) == 0) {
      state_ = State::kReasoning;
      held_.erase(0, kOpen.size());
    } else {
      state_ = mode_ == llm::ChatReasoning::kStartsInside ? State::kReasoning : State::kContent;
    }
  }
  if (state_ == State::kReasoning) {
    if (const size_t close = held_.find(kClose); close != std::string::npos) {
      out.reasoning = held_.substr(0, close);
      held_.erase(0, close + kClose.size());
      state_ = State::kContent;
    } else {
      const size_t keep = PartialTagAtEnd(held_, kClose);
      out.reasoning = held_.substr(0, held_.size() - keep);
      held_.erase(0, held_.size() - keep);
      return out;
    }
  }
  out.content += held_;  // kContent
  held_.clear();
  return out;
}

ReasoningSplitter::Parts ReasoningSplitter::Finish() {
  Parts out;
  // An unfinished <think> or </think> is text: content before any reasoning began
  // (reasoning where the reply starts inside it), reasoning inside it (a reply cut off
  // while thinking).
  const bool reasoning =
      state_ == State::kReasoning || (state_ == State::kStart && mode_ == llm::ChatReasoning::kStartsInside);
  (reasoning ? out.reasoning : out.content) = std::move(held_);
  held_.clear();
  return out;
}

ReasoningSplitter::Parts ReasoningSplitter::Split(std::string_view text, llm::ChatReasoning mode) {
  ReasoningSplitter s(mode);
  Parts a = s.Feed(text), b = s.Finish();
  return {a.reasoning + b.reasoning, a.content + b.content};
}

std::string ToolCallStream::Feed(std::string_view delta) {
  static constexpr std::string_view kCall = "<tool_call>";
  if (content_) return std::string(delta);
  held_.append(delta);
  if (in_call_) return "";
  if (format_ == llm::ChatToolFormat::kLlama3Json) {
    // JSON whitespace is held until the first character tells a call from content.
    const size_t at = held_.find_first_not_of(" \n\r\t");
    if (at == std::string::npos) return "";
    if (held_[at] == '{') {
      in_call_ = true;
      return "";
    }
    content_ = true;
    return std::exchange(held_, {});
  }
  if (const size_t at = held_.find(kCall); at != std::string::npos) {
    std::string out = held_.substr(0, at);
    held_.erase(0, at);
    in_call_ = true;
    return out;
  }
  const size_t keep = PartialTagAtEnd(held_, kCall);
  std::string out = held_.substr(0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  return out;
}

llm::ParsedToolCalls ToolCallStream::Finish() {
  llm::ParsedToolCalls out;
  if (in_call_) {
    out = llm::ParseToolCalls(held_, format_);  // content "" when called (the text starts at the call)
  } else {
    out.content = held_;
  }
  held_.clear();
  return out;
}

ChatReplyParts ReadChatReply(std::string_view text, llm::ChatReasoning mode, llm::ChatToolFormat tools) {
  ChatReplyParts out;
  if (mode != llm::ChatReasoning::kNone) {
    ReasoningSplitter::Parts parts = ReasoningSplitter::Split(text, mode);
    out.reasoning = std::move(parts.reasoning);
    out.content = std::move(parts.content);
  } else {
    out.content = std::string(text);
  }
  if (tools != llm::ChatToolFormat::kNone) {
    llm::ParsedToolCalls calls = llm::ParseToolCalls(out.content, tools);
    if (calls.called) {
      out.content = std::move(calls.content);
      out.calls = std::move(calls.calls);
    }
  }
  return out;
}

}  // namespace fedge::agent
