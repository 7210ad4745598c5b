// BPE against goldens from Hugging Face `tokenizers` (tests/golden/make_llm_goldens.py):
// four byte-level tokenizers trained on WordNet glosses with the GPT-2 ByteLevel regex,
// the Qwen2 Split regex, the Llama-3 Split regex, and SmolLM2's Digits + ByteLevel
// (bpe_ids.json); and a SentencePiece BPE vocabulary (byte_fallback) in the four
// layouts Llama 2 / TinyLlama / Mistral / Gemma ship (spm_ids.json).
#include "fedge/agent/llm/bpe_tokenizer.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "fedge/file_util.h"
#include "tokenizer/unicode_normalize.h"

namespace fedge::agent::llm {
namespace {

const std::string kGolden = FEDGE_GOLDEN_DIR;

// `param` is "<golden file>/<tokenizer>": "bpe_ids/gpt2", "spm_ids/llama2".
nlohmann::json ReadGolden(const std::string& param) {
  const std::string file = param.substr(0, param.find('/'));
  auto text = ReadFile(kGolden + "/llm/" + file + ".json");
  EXPECT_TRUE(text.ok()) << text.status().ToString();
  return nlohmann::json::parse(*text)["tokenizers"][param.substr(param.find('/') + 1)];
}

BpeTokenizer LoadTokenizer(const std::string& name) {
  auto tok = BpeTokenizer::Load(kGolden + "/llm/tok_" + name + "/tokenizer.json");
  EXPECT_TRUE(tok.ok()) << tok.status().ToString();
  return *tok;
}

class BpeGoldenTest : public ::testing::TestWithParam<std::string> {
 protected:
  nlohmann::json golden_ = ReadGolden(GetParam());
  BpeTokenizer tok_ = LoadTokenizer(GetParam().substr(GetParam().find('/') + 1));
};

TEST_P(BpeGoldenTest, EncodesLikeTokenizers) {
  const nlohmann::json& golden = golden_;
  const BpeTokenizer& tok = tok_;
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
  const nlohmann::json& golden = golden_;
  const BpeTokenizer& tok = tok_;
  for (const auto& c : golden["cases"]) {
    std::vector<int32_t> ids = c["ids"];
    EXPECT_EQ(tok.Decode(ids), c["decoded"].get<std::string>());
  }
}

TEST_P(BpeGoldenTest, DecodesArbitraryIdsLossilyLikeTokenizers) {
  const nlohmann::json& golden = golden_;
  const BpeTokenizer& tok = tok_;
  for (const auto& c : golden["decode_cases"]) {
    std::vector<int32_t> ids = c["ids"];
    EXPECT_EQ(tok.Decode(ids), c["text"].get<std::string>()) << c["ids"].dump();
    EXPECT_EQ(tok.Decode(ids, /*skip_special=*/true), c["skip_special"].get<std::string>());
  }
}

// add_special_tokens=True: the post_processor's BOS first (the golden texts that
// spell it themselves are left out: Encode does not double it, tokenizers does).
TEST_P(BpeGoldenTest, AddsThePostProcessorsPrefixLikeTokenizers) {
  int checked = 0;
  for (const auto& c : golden_["cases"]) {
    if (!c.contains("special_ids")) continue;
    std::vector<int32_t> want = c["special_ids"], plain = c["ids"];
    const auto& prefix = tok_.SequencePrefix();
    if (plain.size() >= prefix.size() && std::equal(prefix.begin(), prefix.end(), plain.begin())) continue;
    EXPECT_EQ(tok_.Encode(c["text"].get<std::string>(), {.add_special_tokens = true}), want) << c["text"];
    ++checked;
  }
  if (GetParam().rfind("spm_ids/", 0) == 0) {
    EXPECT_GE(checked, 100);
    EXPECT_EQ(tok_.SequencePrefix(), std::vector<int32_t>{1});
  } else {
    EXPECT_TRUE(tok_.SequencePrefix().empty());  // these byte-level files have none
  }
}

// A completion encoded after its prompt: no word marker is prepended to its first
// word; the golden is the same tokenizer with the Prepend normalizer removed or
// prepend_scheme "never". Byte-level tokenizers encode the same either way.
TEST_P(BpeGoldenTest, ContinuationDoesNotPrependTheWordMarker) {
  int checked = 0, differs = 0;
  for (const auto& c : golden_["cases"]) {
    const std::string text = c["text"];
    std::vector<int32_t> want = c.contains("continuation_ids") ? c["continuation_ids"] : c["ids"];
    if (!c.contains("continuation_ids") && GetParam().rfind("spm_ids/", 0) == 0) continue;
    EXPECT_EQ(tok_.Encode(text, {.continuation = true}), want) << text;
    differs += want != c["ids"].get<std::vector<int32_t>>();
    ++checked;
  }
  EXPECT_GE(checked, 100);
  // The marker matters: a Llama 2 completion " Paris" encodes as "\u2581\u2581Paris"
  // without this.
  if (GetParam().rfind("spm_ids/", 0) == 0 && GetParam() != "spm_ids/gemma") EXPECT_GE(differs, 50);
}

// Streaming: the concatenated TokenBytes are the text, with the marker prepended to
// the first word read as a space.
TEST_P(BpeGoldenTest, TokenBytesConcatenateToTheText) {
  for (const auto& c : golden_["cases"]) {
    const std::string text = c["text"];
    if (c["decoded"].get<std::string>() != text || text.find('<') != std::string::npos) continue;
    std::string bytes;
    for (int32_t id : c["ids"].get<std::vector<int32_t>>()) bytes += tok_.TokenBytes(id);
    if (bytes != text) EXPECT_EQ(bytes, " " + text) << GetParam();
  }
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, BpeGoldenTest,
                         ::testing::Values("bpe_ids/gpt2", "bpe_ids/qwen2", "bpe_ids/llama3",
                                           "bpe_ids/smollm2", "spm_ids/llama2", "spm_ids/llama2_metaspace",
                                           "spm_ids/metaspace_split", "spm_ids/gemma"),
                         [](const auto& info) {
                           std::string name = info.param;
                           for (char& ch : name) ch = std::isalnum(static_cast<unsigned char>(ch)) ? ch : '_';
                           return name;
                         });

// Qwen2.5's tokenizer.json has {"normalizer": {"type": "NFC"}}: decomposed accents,
// Hangul jamo, marks out of canonical order and composition exclusions encode as
// `tokenizers` encodes them (tok_qwen2 with the normalizer set; nfc_ids.json).
TEST(BpeTokenizerTest, NfcNormalizerEncodesLikeTokenizers) {
  auto text = ReadFile(kGolden + "/llm/nfc_ids.json");
  ASSERT_TRUE(text.ok());
  nlohmann::json golden = nlohmann::json::parse(*text);
  BpeTokenizer tok = LoadTokenizer("qwen2_nfc");
  BpeTokenizer plain = LoadTokenizer("qwen2");
  ASSERT_GE(golden["cases"].size(), 100u);
  int differs_without_nfc = 0;
  for (const auto& c : golden["cases"]) {
    std::string t = c["text"];
    std::vector<int32_t> want = c["ids"];
    EXPECT_EQ(tok.Encode(t), want) << "text: \"" << t << "\"";
    if (plain.Encode(t) != want) ++differs_without_nfc;
  }
  // The normalizer matters for these cases: without it they encode differently.
  EXPECT_GE(differs_without_nfc, 15);
}

// Unicode's conformance file (NormalizationTest.txt, every line whose code points
// the generating unicodedata knows): NFC(source) = NFC(NFC) = NFC(NFD) = NFC.
TEST(NfcNormalizeTest, PassesUnicodesNormalizationTest) {
  auto text = ReadFile(kGolden + "/llm/nfc_conformance.json");
  ASSERT_TRUE(text.ok());
  nlohmann::json golden = nlohmann::json::parse(*text);
  ASSERT_GE(golden["rows"].size(), 18000u);
  int failures = 0;
  for (const auto& row : golden["rows"]) {
    const std::string source = row[0], nfc = row[1], nfd = row[2];
    for (const std::string& in : {source, nfc, nfd}) {
      std::string got = NfcNormalize(in);
      if (got != nfc && ++failures <= 10)
        ADD_FAILURE() << "NFC of " << nlohmann::json(in).dump() << " is " << nlohmann::json(got).dump()
                      << ", want " << nlohmann::json(nfc).dump();
    }
  }
  EXPECT_EQ(failures, 0);
}

TEST(NfcNormalizeTest, InvalidUtf8PassesThroughAndBlocksComposition) {
  EXPECT_EQ(NfcNormalize("plain ascii"), "plain ascii");
  EXPECT_EQ(NfcNormalize("e\xCC\x81"), "\xC3\xA9");                         // e + U+0301 -> U+00E9
  EXPECT_EQ(NfcNormalize("e\xFF\xCC\x81"), "e\xFF\xCC\x81");                // a stray byte between them
  EXPECT_EQ(NfcNormalize("\xE2\x84"), "\xE2\x84");                          // truncated U+212B
  EXPECT_EQ(NfcNormalize("\xED\xA0\x80\xC0\xAF"), "\xED\xA0\x80\xC0\xAF");  // surrogate, overlong
  EXPECT_EQ(NfcNormalize("\xE2\x84\xAB"), "\xC3\x85");                      // Angstrom sign -> U+00C5
}

// The attack: a single word of a repeated syllable. Merging rescanned the word once
// per merge: a 16 KiB prompt (the inference API's cap) took 0.54 s on the thread that
// holds the model, 64 KiB 8.8 s, and 1 MiB (a training line; those are not capped)
// would take ~38 minutes by the n^2 law. With the heap 1 MiB takes about 0.15 s
// (bench/tokenizer_bench.cpp measures it); the bound below is 100x that, there only to
// tell O(n log n) from O(n^2).
TEST(BpeTokenizerTest, AMebibyteWordOfOneSyllableEncodesWithoutQuadraticTime) {
  BpeTokenizer tok = LoadTokenizer("llama3");
  const std::vector<int32_t> one = tok.Encode("ation");
  std::string text;
  while (text.size() < (1u << 20)) text += "ation";
  auto t0 = std::chrono::steady_clock::now();
  std::vector<int32_t> ids = tok.Encode(text);
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(seconds, 15.0);
  std::string bytes;
  for (int32_t id : ids) bytes += tok.TokenBytes(id);
  EXPECT_EQ(bytes, text);
  // Merged like any word: far fewer ids than bytes.
  EXPECT_LT(ids.size(), text.size() / 2) << "one syllable is " << one.size() << " ids";
}

// Loads of one file share their tables while one is alive; a rewritten or replaced
// file is read again.
TEST(BpeTokenizerTest, LoadsOfOneFileShareTablesUntilTheFileChanges) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("fedge-tok-share-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const fs::path path = dir / "tokenizer.json";
  fs::copy_file(kGolden + "/llm/tok_gpt2/tokenizer.json", path);
  auto a = BpeTokenizer::Load(path.string());
  auto b = BpeTokenizer::Load(path.string());
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_TRUE(a->SharesTablesWith(*b));
  EXPECT_EQ(a->Encode("hello world"), b->Encode("hello world"));
  // Another tokenizer written over it (new size and mtime): read again.
  auto other_text = ReadFile(kGolden + "/llm/tok_llama3/tokenizer.json");
  ASSERT_TRUE(other_text.ok());
  { std::ofstream(path, std::ios::trunc) << *other_text; }
  auto c = BpeTokenizer::Load(path.string());
  ASSERT_TRUE(c.ok());
  EXPECT_FALSE(c->SharesTablesWith(*a));
  auto want = BpeTokenizer::FromJson(*other_text);
  ASSERT_TRUE(want.ok());
  EXPECT_EQ(c->Encode("I'm 12345 here"), want->Encode("I'm 12345 here"));
  // Replaced by rename with the same bytes (a new inode): read again.
  fs::copy_file(kGolden + "/llm/tok_llama3/tokenizer.json", dir / "next.json");
  fs::rename(dir / "next.json", path);
  auto d = BpeTokenizer::Load(path.string());
  ASSERT_TRUE(d.ok());
  EXPECT_FALSE(d->SharesTablesWith(*c));
  // A file that does not parse is an error every time, never a cached success.
  { std::ofstream(path, std::ios::trunc) << "{ not json"; }
  EXPECT_FALSE(BpeTokenizer::Load(path.string()).ok());
  fs::remove_all(dir);
}

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

  nlohmann::json n = nlohmann::json::parse(*text);
  n["normalizer"] = {{"type", "NFKC"}};
  auto nfkc = BpeTokenizer::FromJson(n.dump());
  EXPECT_EQ(nfkc.status().code(), StatusCode::kUnimplemented);
  EXPECT_NE(nfkc.status().message().find("normalizer NFKC"), std::string::npos) << nfkc.status().message();

  EXPECT_EQ(BpeTokenizer::Load("/nonexistent/tokenizer.json").status().code(), StatusCode::kNotFound);
}

// A SentencePiece-style span is one BPE word; fedge merges it word by word (8x faster
// on WordNet text, fedge_bench_tokenizer) when no vocabulary token has a marker after
// another character. A token like "q\u2581z" makes the split unsafe and turns it off:
// the ids of a long text must be the same either way.
TEST(BpeTokenizerTest, SentencePieceWordSplitGivesTheWholeSpansIds) {
  std::string text;
  const nlohmann::json golden = ReadGolden("spm_ids/llama2");
  for (const auto& c : golden["cases"]) text += c["text"].get<std::string>() + " ";
  ASSERT_GT(text.size(), 6000u);
  for (const char* name : {"tok_llama2", "tok_llama2_metaspace", "tok_gemma"}) {
    auto json_text = ReadFile(kGolden + "/llm/" + name + "/tokenizer.json");
    ASSERT_TRUE(json_text.ok());
    nlohmann::json j = nlohmann::json::parse(*json_text);
    auto split = BpeTokenizer::FromJson(j.dump());
    j["model"]["vocab"]["q\u2581z"] = 5000;  // unused by any merge: changes no id
    auto whole = BpeTokenizer::FromJson(j.dump());
    ASSERT_TRUE(split.ok() && whole.ok());
    for (const EncodeOptions& o : {EncodeOptions{}, EncodeOptions{.continuation = true}}) {
      const std::vector<int32_t> a = split->Encode(text, o), b = whole->Encode(text, o);
      EXPECT_GT(a.size(), 1000u);
      EXPECT_EQ(a, b) << name;
    }
  }
}

// transformers' Llama/Gemma tokenizer classes take the BOS from tokenizer_config.json's
// add_bos_token, not from tokenizer.json's post_processor (Phi-3 turns it off); the
// other classes (Llama 3's PreTrainedTokenizerFast, Qwen2TokenizerFast) keep the file's.
TEST(BpeTokenizerTest, TokenizerConfigAddBosTokenGovernsLlamaClasses) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("fedge-tokcfg-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  auto tok = BpeTokenizer::Load(kGolden + "/llm/tok_llama2/tokenizer.json");
  ASSERT_TRUE(tok.ok());
  ASSERT_EQ(tok->SequencePrefix(), std::vector<int32_t>{1});
  auto apply = [&](const std::string& config) {
    std::ofstream(dir / "tokenizer_config.json") << config;
    return ApplyTokenizerConfig(*tok, dir.string());
  };
  auto none = ApplyTokenizerConfig(*tok, dir.string());  // no file: unchanged
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(none->SequencePrefix(), std::vector<int32_t>{1});
  auto off = apply(R"({"tokenizer_class": "LlamaTokenizer", "add_bos_token": false, "bos_token": "<s>"})");
  ASSERT_TRUE(off.ok()) << off.status().ToString();
  EXPECT_TRUE(off->SequencePrefix().empty());
  EXPECT_EQ(off->Encode("hi", {.add_special_tokens = true}), tok->Encode("hi"));
  EXPECT_EQ(tok->SequencePrefix(), std::vector<int32_t>{1});  // the original is untouched
  auto other = apply(R"({"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": false})");
  ASSERT_TRUE(other.ok());
  EXPECT_EQ(other->SequencePrefix(), std::vector<int32_t>{1});
  auto eos_as_bos = apply(
      R"({"tokenizer_class": "LlamaTokenizerFast", "add_bos_token": true, "bos_token": {"content": "</s>"}})");
  ASSERT_TRUE(eos_as_bos.ok());
  EXPECT_EQ(eos_as_bos->SequencePrefix(), std::vector<int32_t>{2});
  auto missing =
      apply(R"({"tokenizer_class": "GemmaTokenizer", "add_bos_token": true, "bos_token": "<bos>"})");
  EXPECT_EQ(missing.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(missing.status().message().find("\"<bos>\" is not a token"), std::string::npos)
      << missing.status().message();
  EXPECT_EQ(apply("{oops").status().code(), StatusCode::kInvalidArgument);
  fs::remove_all(dir);
}

// SentencePiece-style components fedge does not read, or that a hostile
// tokenizer.json would use to blow a prompt up, are refused by name.
TEST(BpeTokenizerTest, RejectsUnsupportedOrHostileSentencePieceComponents) {
  auto text = ReadFile(kGolden + "/llm/tok_llama2/tokenizer.json");
  ASSERT_TRUE(text.ok());
  const nlohmann::json base = nlohmann::json::parse(*text);
  ASSERT_TRUE(BpeTokenizer::FromJson(base.dump()).ok());
  struct Case {
    std::function<void(nlohmann::json&)> edit;
    StatusCode code;
    std::string says;
  };
  const std::string megabyte(1 << 20, 'x');
  const std::vector<Case> cases = {
      {[](auto& j) {
         j["normalizer"]["normalizers"][1]["pattern"] = {{"Regex", "\\s+"}};
       },
       StatusCode::kUnimplemented, "normalizer Replace pattern"},
      {[&](auto& j) { j["normalizer"]["normalizers"][1]["content"] = megabyte; },
       StatusCode::kInvalidArgument, "normalizer Replace content is 1048576 bytes; at most 16"},
      {[&](auto& j) { j["normalizer"]["normalizers"][0]["prepend"] = megabyte; },
       StatusCode::kInvalidArgument, "normalizer Prepend is 1048576 bytes"},
      {[](auto& j) {
         j["normalizer"] = {{"type", "Lowercase"}};
       },
       StatusCode::kUnimplemented, "normalizer Lowercase"},
      {[](auto& j) {
         j["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "ab"}};
       },
       StatusCode::kInvalidArgument, "one character"},
      {[](auto& j) {
         j["pre_tokenizer"] = {{"type", "Metaspace"}, {"prepend_scheme", "sometimes"}};
       },
       StatusCode::kUnimplemented, "prepend_scheme sometimes"},
      {[](auto& j) {
         j["pre_tokenizer"] = {{"type", "ByteLevel"}};
       },
       StatusCode::kUnimplemented, "byte_fallback with a ByteLevel"},
      {[](auto& j) {
         j["pre_tokenizer"] = {{"type", "Digits"}};
       },
       StatusCode::kUnimplemented, "must be followed by ByteLevel"},
      {[](auto& j) { j["decoder"] = nullptr; }, StatusCode::kUnimplemented, "needs a decoder"},
      {[](auto& j) {
         j["decoder"] = {{"type", "WordPiece"}};
       },
       StatusCode::kUnimplemented, "decoder WordPiece"},
      {[](auto& j) { j["decoder"]["decoders"][3]["start"] = 1000000; }, StatusCode::kInvalidArgument,
       "Strip needs"},
      {[](auto& j) { j["model"]["unk_token"] = "<nope>"; }, StatusCode::kInvalidArgument,
       "unk_token \"<nope>\" is not in the vocab"},
      {[](auto& j) {
         j["post_processor"] = {{"type", "RobertaProcessing"}};
       },
       StatusCode::kUnimplemented, "post_processor RobertaProcessing"},
      {[](auto& j) { j["post_processor"]["special_tokens"]["<s>"]["ids"] = {5000000}; },
       StatusCode::kInvalidArgument, "is not an integer in"},
  };
  for (const Case& c : cases) {
    nlohmann::json j = base;
    c.edit(j);
    auto tok = BpeTokenizer::FromJson(j.dump());
    ASSERT_FALSE(tok.ok()) << c.says;
    EXPECT_EQ(tok.status().code(), c.code) << tok.status().ToString();
    EXPECT_NE(tok.status().message().find(c.says), std::string::npos) << tok.status().message();
  }
}

// Regression (bench/fuzz/fuzz_bpe_json; reproducers in bench/fuzz/crashes/bpe_json/):
// ids were read with get<int32_t>() and used as table indices unchecked. A negative
// added-token id wrote outside the id table, {"a": 100000000} allocated 3.2 GB from an
// 80-byte file, INT32_MAX overflowed max_id + 1 (then std::length_error escaped), and
// 2.5 or 4294967297 were silently truncated to another token's id.
TEST(BpeTokenizerTest, RejectsIdsOutsideTheIdTableInsteadOfWritingOrAllocatingThere) {
  auto tokenizer = [](const std::string& vocab_id, const std::string& added_id) {
    return "{\"model\":{\"vocab\":{\"a\":0,\"b\":" + vocab_id +
           "},\"merges\":[]},\"added_tokens\":" + "[{\"content\":\"<s>\",\"id\":" + added_id +
           ",\"special\":true}]," + "\"pre_tokenizer\":{\"type\":\"ByteLevel\"}}";
  };
  auto ok = BpeTokenizer::FromJson(tokenizer("1", "2"));
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_EQ(ok->vocab_size(), 3);
  // Sparse ids stay allowed up to the bound (2^20 for small files).
  auto sparse = BpeTokenizer::FromJson(tokenizer("1", "100000"));
  ASSERT_TRUE(sparse.ok()) << sparse.status().ToString();
  EXPECT_EQ(sparse->vocab_size(), 100001);
  EXPECT_EQ(sparse->TokenToId("<s>"), 100000);

  for (const auto& [vocab_id, added_id] :
       std::vector<std::pair<std::string, std::string>>{{"1", "-7"},
                                                        {"-1", "2"},
                                                        {"100000000", "2"},
                                                        {"1", "2147483647"},
                                                        {"2147483647", "2"},
                                                        {"2.5", "3"},
                                                        {"1", "1e30"},
                                                        {"4294967297", "2"},
                                                        {"1", "\"2\""}}) {
    auto bad = BpeTokenizer::FromJson(tokenizer(vocab_id, added_id));
    ASSERT_FALSE(bad.ok()) << "vocab id " << vocab_id << ", added id " << added_id;
    EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument) << bad.status().ToString();
    EXPECT_NE(bad.status().message().find("is not an integer in [0, 1048576]"), std::string::npos)
        << bad.status().message();
  }
}

}  // namespace
}  // namespace fedge::agent::llm

namespace fedge::agent::llm {
namespace {

// model.vocab and model.merges are read as the parser meets them (not kept in the
// document): the tables are the same in any key order, with merges as "a b" or
// [a, b], and a malformed entry is refused naming what is wrong.
TEST(BpeTokenizerTest, VocabAndMergesReadWhileParsingInAnyOrder) {
  auto make = [](const std::string& model) {
    return R"({"added_tokens": [], "pre_tokenizer": {"type": "ByteLevel", "use_regex": false},
               "decoder": {"type": "ByteLevel"}, "model": )" +
           model + "}";
  };
  const std::string vocab = R"("vocab": {"a": 0, "b": 1, "ab": 2, "abb": 3, "x": 4, "extra": {"y": 5}})";
  const std::string vocab_ok = R"("vocab": {"a": 0, "b": 1, "ab": 2, "abb": 3, "x": 4})";
  std::vector<std::vector<int32_t>> got;
  for (const std::string& model :
       {"{" + vocab_ok + R"(, "merges": ["a b", "ab b"]})",
        R"({"merges": ["a b", "ab b"], )" + vocab_ok + "}",
        "{" + vocab_ok + R"(, "merges": [["a", "b"], ["ab", "b"]]})",
        R"({"type": "BPE", "merges": [["a", "b"], "ab b"], "dropout": null, )" + vocab_ok + "}"}) {
    auto tok = BpeTokenizer::FromJson(make(model));
    ASSERT_TRUE(tok.ok()) << model << ": " << tok.status().ToString();
    got.push_back(tok->Encode("abbxab"));
  }
  for (const auto& ids : got) EXPECT_EQ(ids, (std::vector<int32_t>{3, 4, 2}));
  for (const auto& [model, says] : std::vector<std::pair<std::string, std::string>>{
           {"{" + vocab + R"(, "merges": []})", "id of token \"extra\" is not an integer"},
           {"{" + vocab_ok + R"(, "merges": [["a", "b", "c"]]})", "neither \"a b\" nor [a, b]"},
           {"{" + vocab_ok + R"(, "merges": [["a", 1]]})", "neither \"a b\" nor [a, b]"},
           {"{" + vocab_ok + R"(, "merges": [{"a": "b"}]})", "neither \"a b\" nor [a, b]"},
           {"{" + vocab_ok + R"(, "merges": [7]})", "neither \"a b\" nor [a, b]"},
           {"{" + vocab_ok + R"(, "merges": ["a  b"]})", "not two tokens separated by a space"},
           {R"({"merges": ["a q"], )" + vocab_ok + "}", "merge (a, q) uses a token missing"},
           {"{" + vocab_ok + "}", "model.merges is missing"},
           {R"({"merges": []})", "model.vocab is missing"},
           {R"({"vocab": ["a"], "merges": []})", "model.vocab must be an object"},
           {"{" + vocab_ok + R"(, "merges": {"a": "b"}})", "model.merges must be an array"}}) {
    auto tok = BpeTokenizer::FromJson(make(model));
    ASSERT_FALSE(tok.ok()) << model;
    EXPECT_EQ(tok.status().code(), StatusCode::kInvalidArgument) << tok.status().ToString();
    EXPECT_NE(tok.status().message().find(says), std::string::npos) << tok.status().message();
  }
}

}  // namespace
}  // namespace fedge::agent::llm
