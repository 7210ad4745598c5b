// Fuzz target: byte-level BPE encoding of untrusted text (what the agent's
// /v1/completions and /v1/chat/completions receive) with real tokenizers: the GPT-2,
// Llama-3, Qwen2 and SmolLM2 style tokenizer.json files in tests/golden/llm/tok_*/, or
// the one at $FEDGE_FUZZ_BPE_TOKENIZER. The first input byte picks the tokenizer; the rest
// is the text.
//
// Properties (byte-level BPE is lossless, and none of these tokenizers strips around its
// added tokens): the bytes of the ids are exactly the text, Decode(Encode(text)) is the
// text made valid UTF-8 (AppendUtf8Lossy), every id is in the vocabulary, and
// SplitGpt2Pattern's pieces concatenate to the text.
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "fedge/agent/llm/bpe_tokenizer.h"
#include "fuzz_util.h"

namespace llm = fedge::agent::llm;
using fedge::fuzz::Fail;

namespace {

const std::vector<llm::BpeTokenizer>& Tokenizers() {
  static const std::unique_ptr<std::vector<llm::BpeTokenizer>> toks = [] {
    auto out = std::make_unique<std::vector<llm::BpeTokenizer>>();
    const std::string golden = std::string(FEDGE_SOURCE_DIR) + "/tests/golden/llm/";
    std::vector<std::string> paths;
    const std::string env = fedge::fuzz::EnvOr("FEDGE_FUZZ_BPE_TOKENIZER", "");
    if (!env.empty()) {
      paths.push_back(env);
    } else {
      for (const char* name : {"tok_gpt2", "tok_llama3", "tok_qwen2", "tok_smollm2"}) {
        paths.push_back(golden + name + "/tokenizer.json");
      }
    }
    for (const std::string& path : paths) {
      auto tok = llm::BpeTokenizer::Load(path);
      if (!tok.ok()) Fail("cannot load a tokenizer", tok.status().ToString());
      std::fprintf(stderr, "fuzz_bpe_encode: tokenizer %s (%d ids)\n", path.c_str(), tok->vocab_size());
      out->push_back(std::move(*tok));
    }
    return out;
  }();
  return *toks;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  Tokenizers();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const auto& toks = Tokenizers();
  const llm::BpeTokenizer& tok = toks[data[0] % toks.size()];
  const std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);

  const std::vector<int32_t> ids = tok.Encode(text);
  std::string bytes;
  for (int32_t id : ids) {
    if (id < 0 || id >= tok.vocab_size())
      Fail("Encode returned an id outside the vocabulary", std::to_string(id));
    bytes += tok.TokenBytes(id);
  }
  if (bytes != text) Fail("the ids' bytes differ from the text", std::to_string(ids.size()) + " ids");
  std::string lossy;
  llm::AppendUtf8Lossy(text, &lossy);
  if (!fedge::fuzz::IsValidUtf8(lossy)) Fail("AppendUtf8Lossy produced invalid UTF-8", "");
  if (tok.Decode(ids) != lossy) Fail("Decode(Encode(text)) is not the text", "");
  if (fedge::fuzz::IsValidUtf8(text) && lossy != text) Fail("AppendUtf8Lossy changed valid UTF-8", "");
  const size_t prefix = llm::Utf8CompletePrefix(text);
  if (prefix > text.size()) Fail("Utf8CompletePrefix past the end", std::to_string(prefix));

  std::string joined;
  for (const std::string& piece : llm::SplitGpt2Pattern(text)) joined += piece;
  if (joined != text) Fail("SplitGpt2Pattern pieces do not concatenate to the text", "");
  return 0;
}
