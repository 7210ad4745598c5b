// Fuzz target: loading a WordPiece vocabulary (vocab.txt, one token per line) from
// untrusted bytes through WordPieceTokenizer::FromVocabFile, then tokenizing a few fixed
// texts and the input itself with whatever vocabulary loaded. A model directory (and so
// its vocab.txt) is input: the job spec points the agent at it.
//
// The input is written to a per-process file first so the real file path (line splitting,
// CRLF handling) is what runs. Properties: wordpiece_checks.h.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>

#include "fedge/agent/wordpiece_tokenizer.h"
#include "wordpiece_checks.h"

namespace {

std::string VocabPath() {
  static const std::string path =
      fedge::fuzz::EnvOr("TMPDIR", "/tmp") + "/fedge-fuzz-vocab-" + std::to_string(getpid()) + ".txt";
  return path;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  {
    std::FILE* f = std::fopen(VocabPath().c_str(), "wb");
    if (f == nullptr) fedge::fuzz::Fail("cannot write the vocabulary file", VocabPath());
    if (size > 0 && std::fwrite(data, 1, size, f) != size) fedge::fuzz::Fail("short write", VocabPath());
    std::fclose(f);
  }
  auto tok = fedge::agent::WordPieceTokenizer::FromVocabFile(VocabPath());
  std::remove(VocabPath().c_str());  // read whole: no file is left behind in TMPDIR
  if (!tok.ok()) return 0;
  if (tok->vocab_size() < 4) fedge::fuzz::Fail("a vocabulary without the 4 special tokens loaded", "");
  for (const char* text : {"The dog barks at the Oak tree.", "federated learning on edge nodes",
                           "naïve café, ÅNGSTRÖM 東京 ##s [CLS] [UNK]"}) {
    fedge::fuzz::CheckWordPiece(*tok, text);
  }
  fedge::fuzz::CheckWordPiece(*tok, bytes);
  return 0;
}
