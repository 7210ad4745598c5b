// Fuzz target: parsing a Hugging Face tokenizer.json from untrusted bytes
// (fedge::agent::llm::BpeTokenizer::FromJson); a model directory is input (the job spec
// points the agent at it). A tokenizer that loads is then used: a few fixed texts and the
// input itself are encoded and decoded, every id must be inside the vocabulary, and each
// id's bytes must come back from TokenBytes / IdToToken without touching memory outside
// the tables.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "fedge/agent/llm/bpe_tokenizer.h"
#include "fuzz_util.h"

using fedge::agent::llm::BpeTokenizer;
using fedge::fuzz::Fail;

namespace {

void Exercise(const BpeTokenizer& tok, std::string_view text) {
  const std::vector<int32_t> ids = tok.Encode(text);
  for (int32_t id : ids) {
    if (id < 0 || id >= tok.vocab_size())
      Fail("Encode returned an id outside the vocabulary", std::to_string(id));
    (void)tok.TokenBytes(id);
    (void)tok.IdToToken(id);
    (void)tok.IsSpecial(id);
  }
  const std::string decoded = tok.Decode(ids);
  if (!fedge::fuzz::IsValidUtf8(decoded)) Fail("Decode produced invalid UTF-8", "");
  (void)tok.Decode(ids, /*skip_special=*/true);
  // Ids that do not exist are skipped, never read.
  (void)tok.Decode({-1, tok.vocab_size(), INT32_MAX, INT32_MIN});
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  auto tok = BpeTokenizer::FromJson(bytes);
  if (!tok.ok()) return 0;
  for (const char* text :
       {"Hello world! 12345 <|endoftext|> naïve 東京\r\n  x", "<|im_start|>user\nhi<|im_end|>"}) {
    Exercise(*tok, text);
  }
  Exercise(*tok, bytes.substr(0, 256));
  return 0;
}
