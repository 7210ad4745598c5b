// Fuzz target: SentencePiece-style BPE (byte_fallback, U+2581 word markers) on
// untrusted text, with the four layouts in tests/golden/llm/: tok_llama2 (Prepend +
// Replace normalizer, as Llama 2 / TinyLlama / Mistral v0.1 ship), tok_llama2_metaspace
// (Metaspace, prepend_scheme first), tok_metaspace_split (Metaspace always, split) and
// tok_gemma (Replace only). The first input byte picks the tokenizer; the rest is the
// text. With scripts/fetch-tokenizers.sh run, Gemma 3's real tokenizer is a fifth.
//
// Properties, in all three encodings (plain, continuation, add_special_tokens): every id
// is in the vocabulary; Decode gives valid UTF-8. Where the text holds neither '<' (no
// added token can match) nor U+2581 (which reads back as a space), the ids' TokenBytes
// are exactly the text as a continuation (every byte survives: a character the
// vocabulary lacks becomes <0xXX> tokens, an invalid byte its own <0xXX>; checked where
// the decoder has ByteFallback), and the text or " " + text otherwise; with
// add_special_tokens the ids are BOS + the plain ids.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "fedge/agent/llm/bpe_tokenizer.h"
#include "fuzz_util.h"

namespace llm = fedge::agent::llm;
using fedge::fuzz::Fail;

namespace {

const std::vector<llm::BpeTokenizer>& Tokenizers() {
  static const std::vector<llm::BpeTokenizer>* toks = [] {
    auto* out = new std::vector<llm::BpeTokenizer>();
    for (const char* name : {"tok_llama2", "tok_llama2_metaspace", "tok_metaspace_split", "tok_gemma"}) {
      auto tok = llm::BpeTokenizer::Load(std::string(FEDGE_SOURCE_DIR) + "/tests/golden/llm/" + name +
                                         "/tokenizer.json");
      if (!tok.ok()) Fail("cannot load a tokenizer", tok.status().ToString());
      out->push_back(std::move(*tok));
    }
    // Gemma 3's real tokenizer when scripts/fetch-tokenizers.sh has fetched it: 262k
    // pieces, 6,415 added tokens (the trie), the one token joining a character to a
    // marker (">\u2581</").
    const char* dir = std::getenv("FEDGE_TOKENIZERS_DIR");
    const std::string gemma3 =
        (dir != nullptr && *dir != '\0' ? std::string(dir)
                                        : std::string(FEDGE_SOURCE_DIR) + "/.fedge/tokenizers") +
        "/gemma3/tokenizer.json";
    if (auto tok = llm::BpeTokenizer::Load(gemma3); tok.ok()) out->push_back(std::move(*tok));
    return out;
  }();
  return *toks;
}

std::string Bytes(const llm::BpeTokenizer& tok, const std::vector<int32_t>& ids) {
  std::string out;
  for (int32_t id : ids) {
    if (id < 0 || id >= tok.vocab_size())
      Fail("Encode returned an id outside the vocabulary", std::to_string(id));
    out += tok.TokenBytes(id);
  }
  if (!fedge::fuzz::IsValidUtf8(tok.Decode(ids))) Fail("Decode gave invalid UTF-8", "");
  return out;
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

  const std::vector<int32_t> plain = tok.Encode(text);
  const std::vector<int32_t> continued = tok.Encode(text, {.continuation = true});
  const std::vector<int32_t> with_bos = tok.Encode(text, {.add_special_tokens = true});
  const std::string plain_bytes = Bytes(tok, plain), continued_bytes = Bytes(tok, continued);
  Bytes(tok, with_bos);
  if (text.find('<') != std::string_view::npos || text.find("\xE2\x96\x81") != std::string_view::npos)
    return 0;
  // tok_metaspace_split's decoder is Metaspace alone (no ByteFallback): like
  // tokenizers, it reads <0xXX> tokens as that text, so its bytes are not the text.
  const auto byte_token = tok.TokenToId("<0x41>");
  if (!byte_token || tok.TokenBytes(*byte_token) != "A") return 0;

  if (continued_bytes != text) {
    std::string ids;
    for (int32_t id : continued) ids += std::to_string(id) + "[" + tok.IdToToken(id) + "] ";
    Fail("the continuation's bytes differ from the text", ids + "-> \"" + continued_bytes + "\"");
  }
  if (plain_bytes != text && plain_bytes != " " + std::string(text)) {
    Fail("the ids' bytes are neither the text nor the text after a word marker",
         std::to_string(plain.size()));
  }
  std::vector<int32_t> want = tok.SequencePrefix();
  want.insert(want.end(), plain.begin(), plain.end());
  if (with_bos != want) Fail("add_special_tokens is not the prefix + the plain ids", "");
  return 0;
}
