// Byte-level BPE against goldens from Hugging Face `tokenizers`
// (tests/golden/make_llm_goldens.py: four tokenizers trained on WordNet glosses with
// the GPT-2 ByteLevel regex, the Qwen2 Split regex, the Llama-3 Split regex, and
// SmolLM2's Digits + ByteLevel).
#include "fedge/agent/llm/bpe_tokenizer.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "fedge/file_util.h"

namespace fedge::agent::llm {
namespace {

const std::string kGolden = FEDGE_GOLDEN_DIR;

nlohmann::json ReadGolden() {
  auto text = ReadFile(kGolden + "/llm/bpe_ids.json");
  EXPECT_TRUE(text.ok()) << text.status().ToString();
  return nlohmann::json::parse(*text);
}

BpeTokenizer LoadTokenizer(const std::string& name) {
  auto tok = BpeTokenizer::Load(kGolden + "/llm/tok_" + name + "/tokenizer.json");
  EXPECT_TRUE(tok.ok()) << tok.status().ToString();
  return *tok;
}

class BpeGoldenTest : public ::testing::TestWithParam<std::string> {};

TEST_P(BpeGoldenTest, EncodesLikeTokenizers) {
  nlohmann::json golden = ReadGolden()["tokenizers"][GetParam()];
  BpeTokenizer tok = LoadTokenizer(GetParam());
  ASSERT_GE(golden["cases"].size(), 100u);
  int failures = 0;
  for (const auto& c : golden["cases"]) {
    std::string text = c["text"];
    std::vector<int32_t> want = c["ids"];
    std::vector<int32_t> got = tok.Encode(text);
    EXPECT_EQ(got, want) << "text: \"" << text << "\"";
    if (got != want && ++failures > 10) break;
  }
}

TEST_P(BpeGoldenTest, DecodesToTheOriginalText) {
  nlohmann::json golden = ReadGolden()["tokenizers"][GetParam()];
  BpeTokenizer tok = LoadTokenizer(GetParam());
  for (const auto& c : golden["cases"]) {
    std::vector<int32_t> ids = c["ids"];
    EXPECT_EQ(tok.Decode(ids), c["decoded"].get<std::string>());
  }
}

TEST_P(BpeGoldenTest, DecodesArbitraryIdsLossilyLikeTokenizers) {
  nlohmann::json golden = ReadGolden()["tokenizers"][GetParam()];
  BpeTokenizer tok = LoadTokenizer(GetParam());
  for (const auto& c : golden["decode_cases"]) {
    std::vector<int32_t> ids = c["ids"];
    EXPECT_EQ(tok.Decode(ids), c["text"].get<std::string>()) << c["ids"].dump();
    EXPECT_EQ(tok.Decode(ids, /*skip_special=*/true), c["skip_special"].get<std::string>());
  }
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, BpeGoldenTest, ::testing::Values("gpt2", "qwen2", "llama3", "smollm2"));

TEST(BpeTokenizerTest, SpecialTokensMatchFirstAndDecodeVerbatim) {
  BpeTokenizer tok = LoadTokenizer("qwen2");
  auto start = tok.TokenToId("<|im_start|>");
  auto end = tok.TokenToId("<|im_end|>");
  ASSERT_TRUE(start && end);
  std::vector<int32_t> ids = tok.Encode("<|im_start|>user<|im_end|>");
  ASSERT_GE(ids.size(), 3u);
  EXPECT_EQ(ids.front(), *start);
  EXPECT_EQ(ids.back(), *end);
  EXPECT_TRUE(tok.IsSpecial(*start));
  EXPECT_EQ(tok.Decode(ids), "<|im_start|>user<|im_end|>");
  EXPECT_EQ(tok.Decode(ids, /*skip_special=*/true), "user");
}

TEST(BpeTokenizerTest, CharacterSplitAcrossTokensDecodesOnlyWhenComplete) {
  BpeTokenizer tok = LoadTokenizer("gpt2");
  // An emoji is four bytes; a 1000-token vocabulary has no merge for it, so its bytes
  // arrive as separate tokens.
  std::vector<int32_t> ids = tok.Encode("\xF0\x9F\x98\x80");
  ASSERT_EQ(ids.size(), 4u);
  std::string bytes;
  for (size_t k = 0; k < ids.size(); ++k) {
    bytes += tok.TokenBytes(ids[k]);
    if (k + 1 < ids.size()) {
      EXPECT_EQ(Utf8CompletePrefix(bytes), 0u) << "after " << k + 1 << " bytes";
    }
  }
  EXPECT_EQ(Utf8CompletePrefix(bytes), 4u);
  EXPECT_EQ(tok.Decode({ids[0], ids[1]}), "\xEF\xBF\xBD");
  EXPECT_EQ(tok.Decode(ids), "\xF0\x9F\x98\x80");
}

TEST(BpeTokenizerTest, LossyUtf8FollowsTheMaximalSubpartRule) {
  auto lossy = [](std::string_view s) {
    std::string out;
    AppendUtf8Lossy(s, &out);
    return out;
  };
  const std::string r = "\xEF\xBF\xBD";
  EXPECT_EQ(lossy("a\x80"
                  "b"),
            "a" + r + "b");
  EXPECT_EQ(lossy("\xE2\x82"), r);  // truncated 3-byte char: one U+FFFD
  EXPECT_EQ(lossy("\xE2\x82"
                  "A"),
            r + "A");
  EXPECT_EQ(lossy("\xC0\xAF"), r + r);          // overlong lead byte: each byte
  EXPECT_EQ(lossy("\xED\xA0\x80"), r + r + r);  // surrogate: invalid second byte
  EXPECT_EQ(lossy("\xF0\x9F\x98"), r);
  EXPECT_EQ(lossy("caf\xC3\xA9"), "caf\xC3\xA9");
}

TEST(BpeTokenizerTest, ByteToUnicodeIsGpt2Table) {
  EXPECT_EQ(ByteToUnicode(' '), U'\u0120');   // "Ġ"
  EXPECT_EQ(ByteToUnicode('\n'), U'\u010A');  // "Ċ"
  EXPECT_EQ(ByteToUnicode('A'), U'A');
  EXPECT_EQ(ByteToUnicode(0xAD), U'\u0143');
}

TEST(BpeTokenizerTest, RejectsUnsupportedComponentsByName) {
  auto text = ReadFile(kGolden + "/llm/tok_qwen2/tokenizer.json");
  ASSERT_TRUE(text.ok());
  nlohmann::json j = nlohmann::json::parse(*text);
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\w+";
  auto bad = BpeTokenizer::FromJson(j.dump());
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kUnimplemented);
  EXPECT_NE(bad.status().message().find("Split pattern"), std::string::npos);

  nlohmann::json k = nlohmann::json::parse(*text);
  k["model"]["merges"][0] = "only-one-token";
  auto bad_merge = BpeTokenizer::FromJson(k.dump());
  EXPECT_EQ(bad_merge.status().code(), StatusCode::kInvalidArgument);

  EXPECT_EQ(BpeTokenizer::Load("/nonexistent/tokenizer.json").status().code(), StatusCode::kNotFound);
}

}  // namespace
}  // namespace fedge::agent::llm
