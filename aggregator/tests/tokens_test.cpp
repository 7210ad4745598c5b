#include "fedge/aggregator/tokens.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "test_util.h"

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

// The kubelet's layout for a mounted Secret: <dir>/tokens -> ..data/tokens,
// ..data -> ..<version>, updated by an atomic rename of a new ..data symlink.
class MountedSecret {
 public:
  explicit MountedSecret(const std::string& dir) : dir_(dir) {
    std::filesystem::create_symlink("..data/tokens", dir_ + "/tokens");
  }
  void Publish(const std::string& text) {
    const std::string version = "..v" + std::to_string(++version_);
    std::filesystem::create_directory(dir_ + "/" + version);
    std::ofstream(dir_ + "/" + version + "/tokens") << text;
    std::filesystem::create_symlink(version, dir_ + "/..data_tmp");
    std::filesystem::rename(dir_ + "/..data_tmp", dir_ + "/..data");
  }
  std::string path() const { return dir_ + "/tokens"; }

 private:
  std::string dir_;
  int version_ = 0;
};

// A token file on a fresh mounted Secret, read through a fake clock.
class TokenFileTest : public ::testing::Test {
 protected:
  // Publishes `text` as the Secret and opens it with a 1 s reload interval;
  // null (and a failure) if Open fails.
  std::unique_ptr<TokenFile> PublishAndOpen(const std::string& text) {
    secret_.Publish(text);
    auto file = TokenFile::Open(secret_.path(), &clock_, 1000);
    EXPECT_TRUE(file.ok()) << file.status().ToString();
    return file.ok() ? std::move(*file) : nullptr;
  }

  testing::TempDir dir_;
  MountedSecret secret_{dir_.path()};
  FakeClock clock_;
};

TEST_F(TokenFileTest, AdmitsAnAgentAddedBySymlinkSwapAfterTheRateLimit) {
  auto file = PublishAndOpen("edge-0 t0\n");
  ASSERT_NE(file, nullptr);
  EXPECT_TRUE(file->Check("edge-0", "t0").ok());
  // A new node's agent may ask before its token reached the mount: retryable.
  Status early = file->Check("edge-1", "t1");
  EXPECT_EQ(early.code(), StatusCode::kUnavailable) << early.ToString();
  EXPECT_NE(early.message().find("retry"), std::string::npos);

  secret_.Publish("edge-0 t0\nedge-1 t1\n");
  // Within the rate limit the file is not looked at again.
  EXPECT_EQ(file->Check("edge-1", "t1").code(), StatusCode::kUnavailable);
  EXPECT_EQ(file->reloads(), 0);
  clock_.AdvanceMs(1000);
  EXPECT_TRUE(file->Check("edge-1", "t1").ok());
  EXPECT_EQ(file->reloads(), 1);
  EXPECT_EQ(file->size(), 2u);
  EXPECT_TRUE(file->Check("edge-0", "t0").ok());
}

TEST_F(TokenFileTest, WrongTokenOfAListedAgentIsUnauthenticated) {
  auto file = PublishAndOpen("edge-0 t0\n");
  ASSERT_NE(file, nullptr);
  clock_.AdvanceMs(5000);
  Status s = file->Check("edge-0", "t1");
  EXPECT_EQ(s.code(), StatusCode::kUnauthenticated) << s.ToString();
  EXPECT_EQ(file->reloads(), 0);  // looked, unchanged: nothing re-read
}

TEST_F(TokenFileTest, ValidJoinsLookAtTheFileAtMostOncePerInterval) {
  auto file = PublishAndOpen("edge-0 t0\n");
  ASSERT_NE(file, nullptr);
  secret_.Publish("edge-0 t0\nedge-1 t1\n");
  EXPECT_TRUE(file->Check("edge-0", "t0").ok());
  EXPECT_EQ(file->reloads(), 0) << "within the interval: from memory";
  clock_.AdvanceMs(1000);
  EXPECT_TRUE(file->Check("edge-0", "t0").ok());
  EXPECT_EQ(file->reloads(), 1);
  EXPECT_EQ(file->size(), 2u);
  EXPECT_FALSE(file->Refresh()) << "unchanged since";
}

// Regression (issue 10 item 8): Check() re-read the file only for agents it did not
// know, so an agent whose token the operator removed (its node left the selector)
// kept joining with it from memory for as long as the aggregator ran.
TEST_F(TokenFileTest, RemovedTokenIsRefusedOnceTheFileChanges) {
  auto file = PublishAndOpen("edge-0 t0\nedge-1 t1\n");
  ASSERT_NE(file, nullptr);
  EXPECT_TRUE(file->Check("edge-1", "t1").ok());
  EXPECT_TRUE(file->Listed("edge-1"));
  secret_.Publish("edge-0 t0\n");
  clock_.AdvanceMs(1000);
  Status s = file->Check("edge-1", "t1");
  EXPECT_EQ(s.code(), StatusCode::kUnavailable) << s.ToString();
  EXPECT_FALSE(file->Listed("edge-1"));
  EXPECT_TRUE(file->Listed("edge-0"));
  EXPECT_TRUE(file->Check("edge-0", "t0").ok());
}

TEST_F(TokenFileTest, KeepsThePreviousTokensWhenTheChangedFileIsBad) {
  auto file = PublishAndOpen("edge-0 t0\n");
  ASSERT_NE(file, nullptr);
  secret_.Publish("edge-0\n");  // malformed
  EXPECT_FALSE(file->Refresh());
  secret_.Publish("");  // no agents
  EXPECT_FALSE(file->Refresh());
  EXPECT_TRUE(file->Check("edge-0", "t0").ok());
  // A later good version is still picked up.
  secret_.Publish("edge-0 t0\nedge-2 t2\n");
  clock_.AdvanceMs(1000);
  EXPECT_TRUE(file->Check("edge-2", "t2").ok());
}

TEST_F(TokenFileTest, OpenFailsOnAMissingOrEmptyFile) {
  EXPECT_EQ(TokenFile::Open(dir_.path() + "/absent", &clock_).status().code(), StatusCode::kNotFound);
  std::ofstream(dir_.path() + "/empty") << "# nobody\n";
  auto empty = TokenFile::Open(dir_.path() + "/empty", &clock_);
  EXPECT_EQ(empty.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(empty.status().message().find("lists no agents"), std::string::npos);
}

}  // namespace
}  // namespace fedge::aggregator
