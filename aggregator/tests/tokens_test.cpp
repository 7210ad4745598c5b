#include "fedge/aggregator/tokens.h"

#include <gtest/gtest.h>

namespace fedge::aggregator {
namespace {

TEST(TokensTest, ParsesPairsSkippingCommentsAndBlanks) {
  auto t = ParseTokens("# agents\nagent-0 s3cret\n\n  agent-1\tother  \n");
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_EQ(t->size(), 2u);
  EXPECT_EQ(t->at("agent-1"), "other");
}

TEST(TokensTest, RejectsMalformedAndDuplicateLines) {
  EXPECT_NE(ParseTokens("agent-0\n").status().message().find("line 1"), std::string::npos);
  EXPECT_FALSE(ParseTokens("a b c\n").ok());
  EXPECT_NE(ParseTokens("a x\na y\n").status().message().find("twice"), std::string::npos);
}

TEST(TokensTest, MatchesOnlyTheExactToken) {
  EXPECT_TRUE(TokenMatches("abc", "abc"));
  EXPECT_FALSE(TokenMatches("abc", "abd"));
  EXPECT_FALSE(TokenMatches("abc", "ab"));
  EXPECT_FALSE(TokenMatches("abc", ""));
}

}  // namespace
}  // namespace fedge::aggregator
