// Fuzz target: WordPiece encoding of untrusted text (what /v1/classify and /v1/embeddings
// receive) with the real all-MiniLM-L6-v2 vocabulary. The vocabulary comes from
// $FEDGE_FUZZ_WORDPIECE_VOCAB, else $FEDGE_MODEL_DIR/vocab.txt, else the repo's
// .fedge/models/all-MiniLM-L6-v2/vocab.txt, else tests/golden/tiny_bert/model/vocab.txt
// (the first that loads; printed at start). Properties: wordpiece_checks.h.
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <string_view>

#include "fedge/agent/wordpiece_tokenizer.h"
#include "wordpiece_checks.h"

namespace {

const fedge::agent::WordPieceTokenizer& Tokenizer() {
  static const std::unique_ptr<fedge::agent::WordPieceTokenizer> tok = [] {
    const std::string root = FEDGE_SOURCE_DIR;
    for (const std::string& path : {fedge::fuzz::EnvOr("FEDGE_FUZZ_WORDPIECE_VOCAB", ""),
                                    fedge::fuzz::EnvOr("FEDGE_MODEL_DIR", "/nonexistent") + "/vocab.txt",
                                    root + "/.fedge/models/all-MiniLM-L6-v2/vocab.txt",
                                    root + "/tests/golden/tiny_bert/model/vocab.txt"}) {
      if (path.empty()) continue;
      auto loaded = fedge::agent::WordPieceTokenizer::FromVocabFile(path);
      if (loaded.ok()) {
        std::fprintf(stderr, "fuzz_wordpiece_encode: vocabulary %s (%lld tokens)\n", path.c_str(),
                     static_cast<long long>(loaded->vocab_size()));
        return std::make_unique<fedge::agent::WordPieceTokenizer>(std::move(*loaded));
      }
    }
    fedge::fuzz::Fail("no vocabulary loads", "set FEDGE_FUZZ_WORDPIECE_VOCAB");
  }();
  return *tok;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  Tokenizer();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fedge::fuzz::CheckWordPiece(Tokenizer(), std::string_view(reinterpret_cast<const char*>(data), size));
  return 0;
}
