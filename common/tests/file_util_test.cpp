#include "fedge/file_util.h"

#include <dirent.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

namespace fedge {
namespace {

// Gives the owner every right on `dir` and the directories below it (tests leave
// directories of mode 0 and 0500), without following links.
void MakeRemovable(const std::string& dir) {
  ::chmod(dir.c_str(), 0700);
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return;
  while (dirent* e = ::readdir(d)) {
    const std::string n = e->d_name;
    struct stat st;
    if (n == "." || n == ".." || ::lstat((dir + "/" + n).c_str(), &st) != 0) continue;
    if (S_ISDIR(st.st_mode)) MakeRemovable(dir + "/" + n);
  }
  ::closedir(d);
}

// The directories MakeTempDir made, removed when the test program ends (every run left
// them in /tmp).
class TempDirs : public ::testing::Environment {
 public:
  static std::vector<std::string>& Made() {
    static std::vector<std::string> made;
    return made;
  }
  void TearDown() override {
    for (const auto& dir : Made()) {
      MakeRemovable(dir);
      std::error_code ec;
      std::filesystem::remove_all(dir, ec);
      if (ec) std::fprintf(stderr, "cannot remove %s: %s\n", dir.c_str(), ec.message().c_str());
    }
  }
};
[[maybe_unused]] ::testing::Environment* const kTempDirs = ::testing::AddGlobalTestEnvironment(new TempDirs);

std::string MakeTempDir() {
  std::string tmpl = ::testing::TempDir() + "fedge_file_util_XXXXXX";
  char* dir = ::mkdtemp(tmpl.data());
  EXPECT_NE(dir, nullptr) << std::strerror(errno);
  if (dir != nullptr) TempDirs::Made().push_back(tmpl);
  return tmpl;
}

std::vector<std::string> ListDir(const std::string& dir) {
  std::vector<std::string> names;
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return names;
  while (dirent* e = ::readdir(d)) {
    std::string n = e->d_name;
    if (n != "." && n != "..") names.push_back(n);
  }
  ::closedir(d);
  return names;
}

std::string Pattern(size_t size, char seed) {
  std::string s(size, '\0');
  for (size_t i = 0; i < size; ++i) s[i] = static_cast<char>(seed + i * 31 + (i >> 12));
  return s;
}

TEST(FileUtilTest, ReadsBackWhatWasWritten) {
  const std::string dir = MakeTempDir();
  const std::string path = dir + "/blob.bin";
  const std::string data = std::string("a\0b\xff", 4) + Pattern(300000, 7);
  ASSERT_TRUE(WriteFileAtomic(path, data).ok());
  auto got = ReadFile(path);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(*got, data);
  ASSERT_TRUE(WriteFileAtomic(path, "").ok());
  EXPECT_EQ(*ReadFile(path), "");
  EXPECT_EQ(ListDir(dir), std::vector<std::string>{"blob.bin"});  // no temp file left behind
}

TEST(FileUtilTest, ReadFileReportsMissingAndDirectories) {
  const std::string dir = MakeTempDir();
  auto missing = ReadFile(dir + "/nope");
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find(dir + "/nope"), std::string::npos);
  EXPECT_EQ(ReadFile(dir).status().code(), StatusCode::kFailedPrecondition);
}

TEST(FileUtilTest, WriteFileAtomicKeepsPermissionsAndFailsCleanly) {
  const std::string dir = MakeTempDir();
  const std::string path = dir + "/secret";
  ASSERT_TRUE(WriteFileAtomic(path, "v1").ok());
  ASSERT_EQ(::chmod(path.c_str(), 0600), 0);
  ASSERT_TRUE(WriteFileAtomic(path, "v2").ok());
  struct stat st;
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  Status s = WriteFileAtomic(dir + "/no/such/dir/file", "x");
  EXPECT_EQ(s.code(), StatusCode::kNotFound) << s.ToString();
  EXPECT_FALSE(WriteFileAtomic("", "x").ok());
}

TEST(FileUtilTest, MakeDirsCreatesNestedAndToleratesExisting) {
  const std::string dir = MakeTempDir();
  ASSERT_TRUE(MakeDirs(dir + "/a/b/c").ok());
  ASSERT_TRUE(MakeDirs(dir + "/a/b/c/").ok());
  ASSERT_TRUE(MakeDirs(dir + "//a/./b").ok());
  struct stat st;
  ASSERT_EQ(::stat((dir + "/a/b/c").c_str(), &st), 0);
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  ASSERT_TRUE(WriteFileAtomic(dir + "/a/file", "x").ok());
  Status s = MakeDirs(dir + "/a/file/d");
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("not a directory"), std::string::npos) << s.ToString();
  EXPECT_FALSE(MakeDirs("").ok());
}

TEST(FileUtilTest, MakeDirsBeneathCreatesNestedAndToleratesExisting) {
  const std::string root = MakeTempDir();
  ASSERT_TRUE(MakeDirsBeneath(root, "ns/job").ok());
  ASSERT_TRUE(MakeDirsBeneath(root, "ns/job").ok());
  struct stat st;
  ASSERT_EQ(::stat((root + "/ns/job").c_str(), &st), 0);
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  for (const char* bad : {"", "ns//job", "ns/../job", "./ns", "/ns", "ns/"}) {
    Status s = MakeDirsBeneath(root, bad);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << bad << ": " << s.ToString();
  }
  EXPECT_EQ(MakeDirsBeneath(root + "/missing", "a").code(), StatusCode::kNotFound);
}

// Regression (agent state isolation): the operator's init container creates
// <state root>/<ns>/<job> for an agent that then sees only that directory. A link
// planted as <ns> by a former agent that could write the whole root must not send
// the new job's directory into another job's state.
TEST(FileUtilTest, MakeDirsBeneathRefusesSymbolicLinksInsteadOfFollowingThem) {
  const std::string root = MakeTempDir();
  ASSERT_TRUE(MakeDirs(root + "/other/victim").ok());
  ASSERT_EQ(::symlink((root + "/other/victim").c_str(), (root + "/ns").c_str()), 0);
  Status s = MakeDirsBeneath(root, "ns/job");
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition) << s.ToString();
  EXPECT_NE(s.message().find("symbolic link"), std::string::npos) << s.ToString();
  EXPECT_TRUE(ListDir(root + "/other/victim").empty()) << "created inside the link's target";
  ASSERT_TRUE(WriteFileAtomic(root + "/file", "x").ok());
  EXPECT_EQ(MakeDirsBeneath(root, "file/job").code(), StatusCode::kFailedPrecondition);
}

bool Exists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

// The cleanup of a deleted job's agent state (`fedge-agent --remove-state-dir`) runs
// with every job's directory of the node mounted: links an agent left in its own
// directory must be removed as links, never followed into another job's state.
TEST(FileUtilTest, RemoveBeneathRemovesTheTreeButNeverWhatALinkInItPointsAt) {
  const std::string root = MakeTempDir();
  ASSERT_TRUE(MakeDirs(root + "/other/victim").ok());
  ASSERT_TRUE(WriteFileAtomic(root + "/other/victim/keep", "k").ok());
  ASSERT_TRUE(MakeDirs(root + "/ns/sibling").ok());
  ASSERT_TRUE(WriteFileAtomic(root + "/ns/sibling/keep", "k").ok());
  ASSERT_TRUE(MakeDirs(root + "/ns/job/sub/deeper").ok());
  ASSERT_TRUE(WriteFileAtomic(root + "/ns/job/global.safetensors", "g").ok());
  ASSERT_TRUE(WriteFileAtomic(root + "/ns/job/sub/deeper/feedback.jsonl", "f").ok());
  ASSERT_EQ(::symlink((root + "/other/victim").c_str(), (root + "/ns/job/dir-link").c_str()), 0);
  ASSERT_EQ(::symlink((root + "/other/victim/keep").c_str(), (root + "/ns/job/sub/file-link").c_str()), 0);
  ASSERT_EQ(::symlink("/nonexistent", (root + "/ns/job/dangling").c_str()), 0);

  int64_t removed = -1;
  Status s = RemoveBeneath(root, "ns/job", &removed);
  ASSERT_TRUE(s.ok()) << s.ToString();
  // job, sub, deeper, global, feedback, dir-link, file-link, dangling
  EXPECT_EQ(removed, 8);
  EXPECT_FALSE(Exists(root + "/ns/job"));
  EXPECT_TRUE(Exists(root + "/other/victim/keep")) << "followed a link";
  EXPECT_TRUE(Exists(root + "/ns/sibling/keep")) << "removed a sibling job's state";
  EXPECT_TRUE(Exists(root + "/ns")) << "the namespace directory stays (another job may be made in it)";

  // Idempotent: a second cleanup (a pod made again) finds nothing and succeeds.
  s = RemoveBeneath(root, "ns/job", &removed);
  EXPECT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(removed, 0);
  EXPECT_TRUE(RemoveBeneath(root, "absent/job").ok());

  // The job's directory itself replaced by a link: the link goes, not its target.
  ASSERT_EQ(::symlink((root + "/other/victim").c_str(), (root + "/ns/job").c_str()), 0);
  ASSERT_TRUE(RemoveBeneath(root, "ns/job", &removed).ok());
  EXPECT_EQ(removed, 1);
  EXPECT_FALSE(Exists(root + "/ns/job"));
  EXPECT_TRUE(Exists(root + "/other/victim/keep"));
}

TEST(FileUtilTest, RemoveBeneathRefusesALinkOnTheWayAndBadPaths) {
  const std::string root = MakeTempDir();
  ASSERT_TRUE(MakeDirs(root + "/other/job").ok());
  ASSERT_TRUE(WriteFileAtomic(root + "/other/job/keep", "k").ok());
  ASSERT_EQ(::symlink((root + "/other").c_str(), (root + "/ns").c_str()), 0);
  Status s = RemoveBeneath(root, "ns/job");
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition) << s.ToString();
  EXPECT_NE(s.message().find("symbolic link"), std::string::npos) << s.ToString();
  EXPECT_TRUE(Exists(root + "/other/job/keep"));
  for (const char* bad : {"../other/job", "ns//job", "./job", "", "ns/job/"})
    EXPECT_EQ(RemoveBeneath(root, bad).code(), StatusCode::kInvalidArgument) << bad;
  EXPECT_TRUE(Exists(root + "/other/job/keep"));

  std::string deep = "job";
  for (int i = 0; i < kRemoveBeneathMaxDepth + 2; ++i) deep += "/d";
  ASSERT_TRUE(MakeDirs(root + "/" + deep).ok());
  s = RemoveBeneath(root, "job");
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition) << s.ToString();
  EXPECT_NE(s.message().find("nested deeper"), std::string::npos) << s.ToString();
}

// An agent (uid 65532 in a cluster) may leave directories it cannot read or write
// (chmod 0, 0500); the cleanup runs as the same user and must still empty them. As
// root, the removal runs in a child that switched to another user, since root ignores
// permissions.
TEST(FileUtilTest, RemoveBeneathEmptiesDirectoriesItsOwnerLockedItselfOutOf) {
  const std::string root = MakeTempDir();
  ASSERT_TRUE(MakeDirs(root + "/ns/job/closed/inner").ok());
  ASSERT_TRUE(MakeDirs(root + "/ns/job/readonly").ok());
  ASSERT_TRUE(WriteFileAtomic(root + "/ns/job/closed/inner/f", "x").ok());
  ASSERT_TRUE(WriteFileAtomic(root + "/ns/job/readonly/f", "x").ok());
  const uid_t user = ::geteuid() == 0 ? 65532 : ::geteuid();
  if (::geteuid() == 0) {
    for (const char* p : {"", "/ns", "/ns/job", "/ns/job/closed", "/ns/job/closed/inner",
                          "/ns/job/closed/inner/f", "/ns/job/readonly", "/ns/job/readonly/f"})
      ASSERT_EQ(::chown((root + p).c_str(), user, user), 0) << p;
  }
  ASSERT_EQ(::chmod((root + "/ns/job/readonly").c_str(), 0500), 0);
  ASSERT_EQ(::chmod((root + "/ns/job/closed").c_str(), 0), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    if (::geteuid() == 0 && (::setgid(user) != 0 || ::setuid(user) != 0)) ::_exit(3);
    Status s = RemoveBeneath(root, "ns/job");
    if (!s.ok()) {
      std::fprintf(stderr, "%s\n", s.ToString().c_str());
      ::_exit(1);
    }
    ::_exit(Exists(root + "/ns/job") ? 2 : 0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "1: RemoveBeneath failed, 2: the directory is still there";
}

TEST(FileUtilTest, ConcurrentWritersLeaveOneCompleteVersion) {
  const std::string dir = MakeTempDir();
  const std::string path = dir + "/shared";
  std::vector<std::string> versions;
  for (char c = 'a'; c < 'e'; ++c) versions.push_back(Pattern(200000, c));
  std::vector<std::thread> threads;
  for (const std::string& v : versions) {
    threads.emplace_back([&path, &v] {
      for (int i = 0; i < 10; ++i) ASSERT_TRUE(WriteFileAtomic(path, v).ok());
    });
  }
  for (auto& t : threads) t.join();
  const std::string got = *ReadFile(path);
  EXPECT_NE(std::find(versions.begin(), versions.end(), got), versions.end()) << "torn or mixed content";
  EXPECT_EQ(ListDir(dir).size(), 1u);
}

// The child kills itself with SIGKILL at the n-th step of WriteFileAtomic:
// no destructors, no cleanup, like a crash or an OOM kill.
int g_kill_at_step = -1;
int g_steps_seen = 0;
void KillAtStep(const char* /*step*/) {
  if (g_steps_seen++ == g_kill_at_step) ::raise(SIGKILL);
}
int g_notify_fd = -1;
void NotifyStep(const char* /*step*/) {
  const char c = 's';
  (void)!::write(g_notify_fd, &c, 1);
}

TEST(FileUtilTest, InterruptedWriteAtAnyStepLeavesPreviousFileLoadable) {
  const std::string dir = MakeTempDir();
  const std::string path = dir + "/checkpoint";
  const std::string old_content = Pattern(3 << 20, 'o');
  const std::string new_content = Pattern((3 << 20) + 12345, 'n');  // 4 write chunks
  // Steps: open, write x4, fsync, close, rename, fsync_dir.
  constexpr int kRenameStep = 7, kSteps = 9;
  for (int kill_at = 0; kill_at < kSteps; ++kill_at) {
    ASSERT_TRUE(WriteFileAtomic(path, old_content).ok());
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      g_kill_at_step = kill_at;
      internal::SetWriteFileAtomicFaultHook(&KillAtStep);
      (void)WriteFileAtomic(path, new_content);
      ::_exit(3);  // reached only if the hook did not fire
    }
    int wstatus = 0;
    ASSERT_EQ(::waitpid(pid, &wstatus, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(wstatus) && WTERMSIG(wstatus) == SIGKILL)
        << "child was not killed at step " << kill_at;
    auto got = ReadFile(path);
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    if (kill_at < kRenameStep) {
      EXPECT_TRUE(*got == old_content) << "killed at step " << kill_at << ": target is not the old file";
    } else {
      EXPECT_TRUE(*got == new_content) << "killed at step " << kill_at << ": target is not the new file";
    }
  }
  // Stray temp files from the killed children must not break later writes.
  EXPECT_GT(ListDir(dir).size(), 1u);
  ASSERT_TRUE(WriteFileAtomic(path, "final").ok());
  EXPECT_EQ(*ReadFile(path), "final");
}

TEST(FileUtilTest, StaleTempFileWithOurNameIsOverwritten) {
  // A crashed process whose pid/tid are recycled (pid 1 in a container) left a
  // partial temp file under exactly the name this writer will use.
  const std::string dir = MakeTempDir();
  const std::string path = dir + "/state";
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    g_kill_at_step = 2;  // after open and the first chunk
    internal::SetWriteFileAtomicFaultHook(&KillAtStep);
    (void)WriteFileAtomic(path, Pattern(3 << 20, 'x'));
    ::_exit(3);
  }
  int wstatus = 0;
  ASSERT_EQ(::waitpid(pid, &wstatus, 0), pid);
  std::vector<std::string> names = ListDir(dir);
  ASSERT_EQ(names.size(), 1u);
  // Rename the child's leftover to the name the parent (this thread) will use.
  const std::string ours = path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(::gettid());
  ASSERT_EQ(::rename((dir + "/" + names[0]).c_str(), ours.c_str()), 0);
  ASSERT_TRUE(WriteFileAtomic(path, "small").ok());
  EXPECT_EQ(*ReadFile(path), "small");
  EXPECT_EQ(ListDir(dir), std::vector<std::string>{"state"});
}

TEST(FileUtilTest, AsynchronousKillDuringRepeatedWritesNeverTearsTheFile) {
  // A real, unsynchronised SIGKILL: the child rewrites the file in a loop and
  // reports each step through a pipe; the parent kills it as soon as it has seen
  // the k-th step, so the kill lands wherever the child has got to by then.
  const std::string dir = MakeTempDir();
  const std::string path = dir + "/loop";
  const std::string a = Pattern(2 << 20, 'a'), b = Pattern((2 << 20) + 1, 'b');
  ASSERT_TRUE(WriteFileAtomic(path, a).ok());
  for (int k = 1; k <= 40; k += 3) {
    int fds[2];
    ASSERT_EQ(::pipe(fds), 0);
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      ::close(fds[0]);
      g_notify_fd = fds[1];
      internal::SetWriteFileAtomicFaultHook(&NotifyStep);
      for (int i = 0;; ++i) (void)WriteFileAtomic(path, i % 2 ? a : b);
    }
    ::close(fds[1]);
    char c;
    for (int seen = 0; seen < k; ++seen) ASSERT_EQ(::read(fds[0], &c, 1), 1);
    ::kill(pid, SIGKILL);
    int wstatus = 0;
    ASSERT_EQ(::waitpid(pid, &wstatus, 0), pid);
    ::close(fds[0]);
    const std::string got = *ReadFile(path);
    ASSERT_TRUE(got == a || got == b)
        << "torn file after kill at step " << k << " (size " << got.size() << ")";
  }
}

}  // namespace
}  // namespace fedge
