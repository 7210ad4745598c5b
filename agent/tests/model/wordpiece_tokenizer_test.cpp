#include "fedge/agent/wordpiece_tokenizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "test_util.h"

namespace fedge::agent {
namespace {

using ::testing::ElementsAre;

WordPieceTokenizer TinyTokenizer() {
  auto t =
      WordPieceTokenizer::FromTokens({"[PAD]", "[UNK]", "[CLS]", "[SEP]", "un", "##aff", "##able", "hello",
                                      "world", "!", ",", "cafe", "中", "文", "a", "##a", "strasse", "##s"});
  EXPECT_TRUE(t.ok()) << t.status().ToString();
  return *std::move(t);
}

TEST(WordPieceTokenizerTest, BasicTokenizeLowercasesStripsAccentsAndSplitsPunctuation) {
  WordPieceTokenizer t = TinyTokenizer();
  EXPECT_THAT(t.BasicTokenize("Hello,  WORLD!"), ElementsAre("hello", ",", "world", "!"));
  EXPECT_THAT(t.BasicTokenize("Café naïve Ångström"), ElementsAre("cafe", "naive", "angstrom"));
  EXPECT_THAT(t.BasicTokenize("e\xCC\x81t\xC3\xA9"), ElementsAre("ete"));  // combining + precomposed
  EXPECT_THAT(t.BasicTokenize("«quoted»—dash"), ElementsAre("«", "quoted", "»", "—", "dash"));
}

TEST(WordPieceTokenizerTest, CjkIdeographsBecomeSeparateWords) {
  WordPieceTokenizer t = TinyTokenizer();
  EXPECT_THAT(t.BasicTokenize("ab中文cd"), ElementsAre("ab", "中", "文", "cd"));
  // Hangul is not split per syllable but decomposed into jamo (NFD).
  EXPECT_THAT(t.BasicTokenize("한"), ElementsAre("\xE1\x84\x92\xE1\x85\xA1\xE1\x86\xAB"));
}

TEST(WordPieceTokenizerTest, DropsControlAndFormatCharacters) {
  WordPieceTokenizer t = TinyTokenizer();
  EXPECT_THAT(t.BasicTokenize("hel\x07lo\xE2\x80\x8Bworld\tx"), ElementsAre("helloworld", "x"));
  EXPECT_THAT(t.BasicTokenize(std::string("a\0b", 3)), ElementsAre("ab"));
  EXPECT_THAT(t.BasicTokenize("bad\xFF"
                              "byte"),
              ElementsAre("badbyte"));
}

TEST(WordPieceTokenizerTest, GreedyLongestMatchWithContinuations) {
  WordPieceTokenizer t = TinyTokenizer();
  EXPECT_THAT(t.Tokenize("unaffable"), ElementsAre(4, 5, 6));
  EXPECT_THAT(t.Tokenize("unaffablex hello"), ElementsAre(1, 7));  // unmatched piece: whole word [UNK]
  EXPECT_THAT(t.Tokenize("Straßes"), ElementsAre(1));              // ß is not decomposed: "straßes" unknown
}

TEST(WordPieceTokenizerTest, WordsLongerThanHundredCharsAreUnknown) {
  WordPieceTokenizer t = TinyTokenizer();
  EXPECT_EQ(t.Tokenize(std::string(100, 'a')).size(), 100u);
  EXPECT_THAT(t.Tokenize(std::string(101, 'a')), ElementsAre(t.unk_id()));
}

TEST(WordPieceTokenizerTest, EncodeAddsSpecialTokensAndTruncatesKeepingSep) {
  WordPieceTokenizer t = TinyTokenizer();
  EXPECT_THAT(t.Encode("hello world", 0), ElementsAre(2, 7, 8, 3));
  EXPECT_THAT(t.Encode("hello world !", 3), ElementsAre(2, 7, 3));
  EXPECT_THAT(t.Encode("", 0), ElementsAre(2, 3));
}

TEST(WordPieceTokenizerTest, EncodeBatchPadsToLongest) {
  WordPieceTokenizer t = TinyTokenizer();
  EncodedBatch b = t.EncodeBatch({"hello", "hello world !"}, 64);
  EXPECT_EQ(b.batch_size, 2);
  EXPECT_EQ(b.seq_len, 5);
  EXPECT_THAT(b.input_ids, ElementsAre(2, 7, 3, 0, 0, 2, 7, 8, 9, 3));
  EXPECT_THAT(b.attention_mask, ElementsAre(1, 1, 1, 0, 0, 1, 1, 1, 1, 1));
}

TEST(WordPieceTokenizerTest, RejectsVocabularyWithoutSpecialTokensOrWithDuplicates) {
  EXPECT_EQ(WordPieceTokenizer::FromTokens({"a", "b"}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(WordPieceTokenizer::FromTokens({"[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "a"}).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(WordPieceTokenizer::FromVocabFile("/nonexistent/vocab.txt").status().code(),
            StatusCode::kNotFound);
}

// Hugging Face `tokenizers` on the real vocabulary (tests/golden/make_goldens.py).
TEST(WordPieceTokenizerTest, MatchesHuggingFaceOnGoldenStrings) {
  FEDGE_REQUIRE_MODEL(dir);
  auto t = WordPieceTokenizer::FromVocabFile(dir + "/vocab.txt");
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  nlohmann::json golden = testing::ReadGolden("wordpiece_ids.json");
  ASSERT_GE(golden["cases"].size(), 60u);
  int mismatches = 0;
  for (const auto& c : golden["cases"]) {
    const std::string text = c["text"];
    std::vector<int64_t> want = c["ids"].get<std::vector<int64_t>>();
    std::vector<int64_t> got = t->Encode(text, 0);
    if (got != want) {
      ++mismatches;
      ADD_FAILURE() << "text: " << text << "\n want: " << ::testing::PrintToString(want)
                    << "\n got:  " << ::testing::PrintToString(got);
    }
  }
  EXPECT_EQ(mismatches, 0);
}

}  // namespace
}  // namespace fedge::agent
