#include "fedge/cli/supervisor.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>

#include "fedge/cli/io.h"
#include "fedge/cli/runner.h"

namespace fedge::cli {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

class SupervisorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/fedge-sup-test-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  ChildSpec Shell(const std::string& name, const std::string& script) {
    return {name, {"/bin/sh", "-c", script}, dir_ + "/" + name + ".log"};
  }
  std::string dir_;
};

TEST_F(SupervisorTest, ReportsExitCodeAndLogTailOfADyingChild) {
  Supervisor sup;
  ASSERT_TRUE(sup.Start(Shell("sleeper", "sleep 30")).ok());
  ASSERT_TRUE(
      sup.Start(Shell("crasher", "for i in $(seq 1 30); do echo line $i; done; echo boom >&2; exit 3")).ok());
  auto exit = sup.Wait(10s);
  ASSERT_TRUE(exit.has_value());
  EXPECT_EQ(exit->name, "crasher");
  EXPECT_EQ(exit->exit_code, 3);
  EXPECT_EQ(exit->signal, 0);
  EXPECT_FALSE(exit->Succeeded());
  EXPECT_EQ(exit->Describe(), "exit code 3");

  const std::string report = DescribeChildFailure(*exit, 20);
  EXPECT_NE(report.find("crasher"), std::string::npos);
  EXPECT_NE(report.find("exit code 3"), std::string::npos);
  EXPECT_NE(report.find("| boom"), std::string::npos) << "stderr goes to the log";
  EXPECT_NE(report.find("| line 30"), std::string::npos);
  EXPECT_NE(report.find("| line 12"), std::string::npos);
  EXPECT_EQ(report.find("| line 11\n"), std::string::npos) << "only the last 20 lines: " << report;

  EXPECT_EQ(sup.running(), 1u);
  EXPECT_EQ(sup.RunningNames(), std::vector<std::string>{"sleeper"});
}

TEST_F(SupervisorTest, WaitTimesOutWhileChildrenRun) {
  Supervisor sup;
  ASSERT_TRUE(sup.Start(Shell("sleeper", "sleep 30")).ok());
  const auto start = std::chrono::steady_clock::now();
  EXPECT_FALSE(sup.Wait(100ms).has_value());
  EXPECT_GE(std::chrono::steady_clock::now() - start, 100ms);
}

TEST_F(SupervisorTest, TerminateSendsSigtermThenKillsWhatIgnoresIt) {
  Supervisor sup;
  // Exits 0 on SIGTERM (like our binaries do).
  ASSERT_TRUE(
      sup.Start(Shell("polite", "trap 'exit 0' TERM; echo ready; while :; do sleep 0.05; done")).ok());
  // Ignores SIGTERM: must be SIGKILLed after the grace period.
  ASSERT_TRUE(sup.Start(Shell("stubborn", "trap '' TERM; echo ready; while :; do sleep 0.05; done")).ok());
  // Both shells must have installed their traps (each logs "ready" after its trap): under
  // load the polite one was sometimes still starting, died of the SIGTERM and failed the test.
  for (int i = 0;
       i < 1000 && (TailFile(dir_ + "/stubborn.log", 1).empty() || TailFile(dir_ + "/polite.log", 1).empty());
       ++i) {
    EXPECT_FALSE(sup.Wait(10ms).has_value());
  }
  const auto start = std::chrono::steady_clock::now();
  auto exits = sup.TerminateAll(500ms);
  const auto took = std::chrono::steady_clock::now() - start;
  ASSERT_EQ(exits.size(), 2u);
  EXPECT_EQ(sup.running(), 0u);
  for (const auto& e : exits) {
    if (e.name == "polite") {
      EXPECT_TRUE(e.Succeeded()) << e.Describe();
    } else {
      EXPECT_EQ(e.signal, SIGKILL) << e.Describe();
    }
  }
  EXPECT_GE(took, 500ms);
  EXPECT_LT(took, 5s);
}

TEST_F(SupervisorTest, ChildrenGetTheirOwnProcessGroup) {
  Supervisor sup;
  ASSERT_TRUE(sup.Start(Shell("pgid", "ps -o pgid= -p $$ | tr -d ' '; echo $$")).ok());
  auto exit = sup.Wait(10s);
  ASSERT_TRUE(exit.has_value());
  ASSERT_TRUE(exit->Succeeded()) << exit->Describe();
  auto log = ReadWholeFile(dir_ + "/pgid.log");
  ASSERT_TRUE(log.ok());
  const std::string pid = std::to_string(exit->pid);
  EXPECT_EQ(*log, pid + "\n" + pid + "\n");
  EXPECT_NE(::getpgrp(), exit->pid);
}

TEST_F(SupervisorTest, SignalDeathIsDescribed) {
  Supervisor sup;
  ASSERT_TRUE(sup.Start(Shell("killed", "kill -9 $$")).ok());
  auto exit = sup.Wait(10s);
  ASSERT_TRUE(exit.has_value());
  EXPECT_EQ(exit->signal, SIGKILL);
  EXPECT_NE(exit->Describe().find("signal 9"), std::string::npos);
}

TEST_F(SupervisorTest, MissingExecutableIsAnErrorNotAChild) {
  Supervisor sup;
  Status s = sup.Start({"ghost", {dir_ + "/no-such-binary"}, dir_ + "/ghost.log"});
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("no-such-binary"), std::string::npos);
  EXPECT_EQ(sup.running(), 0u);
  Status bad_log = sup.Start({"bad-log", {"/bin/true"}, dir_ + "/missing-dir/x.log"});
  EXPECT_FALSE(bad_log.ok());
}

TEST_F(SupervisorTest, WakeFdInterruptsWait) {
  Supervisor sup;
  ASSERT_TRUE(sup.Start(Shell("sleeper", "sleep 30")).ok());
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  ASSERT_EQ(::write(fds[1], "x", 1), 1);
  const auto start = std::chrono::steady_clock::now();
  EXPECT_FALSE(sup.Wait(10s, fds[0]).has_value());
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
  ::close(fds[0]);
  ::close(fds[1]);
}

TEST(TailFileTest, ReturnsLastLines) {
  char tmpl[] = "/tmp/fedge-tail-XXXXXX";
  int fd = ::mkstemp(tmpl);
  ASSERT_GE(fd, 0);
  ::close(fd);
  ASSERT_TRUE(WriteWholeFile(tmpl, "a\nb\nc\nd\n").ok());
  EXPECT_EQ(TailFile(tmpl, 2), "c\nd");
  EXPECT_EQ(TailFile(tmpl, 10), "a\nb\nc\nd");
  EXPECT_EQ(TailFile("/nonexistent", 3), "");
  ::unlink(tmpl);
}

}  // namespace
}  // namespace fedge::cli
