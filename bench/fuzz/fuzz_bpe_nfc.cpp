// Fuzz target: the NFC normalizer (Qwen2.5's and Qwen3's tokenizer.json normalizer) on
// untrusted text, alone and inside a tokenizer: tests/golden/llm/tok_qwen2_nfc (the
// Qwen2 layout with {"type": "NFC"}) against tok_qwen2 (the same without it).
//
// Properties: NFC is idempotent; the output is valid UTF-8 exactly when the input is
// (stray bytes are kept, not replaced); it grows at most 3x (UAX #15's bound); ASCII
// is unchanged; and where neither the text nor its NFC holds '<' (no added token can
// match), the NFC tokenizer encodes the text as the plain one encodes its NFC, and the
// ids' bytes are that NFC.
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "fedge/agent/llm/bpe_tokenizer.h"
#include "fuzz_util.h"
#include "tokenizer/unicode_normalize.h"

namespace llm = fedge::agent::llm;
using fedge::fuzz::Fail;

namespace {

const llm::BpeTokenizer& Load(const char* name) {
  auto tok = llm::BpeTokenizer::Load(std::string(FEDGE_SOURCE_DIR) + "/tests/golden/llm/" + name +
                                     "/tokenizer.json");
  if (!tok.ok()) Fail("cannot load a tokenizer", tok.status().ToString());
  return *new llm::BpeTokenizer(std::move(*tok));  // lives for the process
}

const llm::BpeTokenizer& WithNfc() {
  static const llm::BpeTokenizer& tok = Load("tok_qwen2_nfc");
  return tok;
}

const llm::BpeTokenizer& Plain() {
  static const llm::BpeTokenizer& tok = Load("tok_qwen2");
  return tok;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  WithNfc();
  Plain();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const std::string nfc = fedge::agent::NfcNormalize(text);
  if (fedge::agent::NfcNormalize(nfc) != nfc) Fail("NFC is not idempotent", std::to_string(size) + " bytes");
  if (fedge::fuzz::IsValidUtf8(text) != fedge::fuzz::IsValidUtf8(nfc))
    Fail("NFC changed whether the text is valid UTF-8", "");
  if (nfc.size() > 3 * text.size()) Fail("NFC grew the text more than 3x", std::to_string(nfc.size()));
  bool ascii = true;
  for (char c : text) ascii = ascii && static_cast<unsigned char>(c) < 0x80;
  if (ascii && nfc != text) Fail("NFC changed ASCII text", "");

  if (text.find('<') != std::string_view::npos || nfc.find('<') != std::string::npos) return 0;
  const std::vector<int32_t> ids = WithNfc().Encode(text);
  if (ids != Plain().Encode(nfc)) Fail("the NFC tokenizer differs from the plain one on the NFC text", "");
  std::string bytes;
  for (int32_t id : ids) bytes += WithNfc().TokenBytes(id);
  if (bytes != nfc) Fail("the ids' bytes are not the text's NFC", std::to_string(ids.size()) + " ids");
  return 0;
}
