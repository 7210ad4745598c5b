// Supervises the local runner's child processes (aggregator and agents).
//
// Each child is started with posix_spawn in its own process group, with stdin
// from /dev/null and stdout+stderr appended to its log file, default signal
// dispositions and an empty signal mask. Exits are observed through pidfds
// (poll), so waiting costs nothing and needs no SIGCHLD handler: no busy loops,
// no reliance on which thread a signal lands on. Not thread-safe: one owner.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "fedge/status.h"

namespace fedge::cli {

struct ChildSpec {
  std::string name;               // "aggregator", "agent-0", ...
  std::vector<std::string> argv;  // argv[0] is the executable's path (no PATH search)
  std::string log_path;           // stdout and stderr, appended
};

struct ChildExit {
  std::string name;
  pid_t pid = 0;
  int exit_code = -1;  // valid when signal == 0
  int signal = 0;      // the terminating signal, 0 if it exited normally
  std::string log_path;

  bool Succeeded() const { return signal == 0 && exit_code == 0; }
  // "exit code 3" or "signal 9 (Killed)".
  std::string Describe() const;
};

class Supervisor {
 public:
  Supervisor() = default;
  // Terminates (SIGTERM, then SIGKILL after 2 s) and reaps any child still running.
  ~Supervisor();
  Supervisor(const Supervisor&) = delete;
  Supervisor& operator=(const Supervisor&) = delete;

  // Starts a child. Errors: the executable is missing or not executable, the
  // log file cannot be opened, or the kernel refuses the spawn.
  Status Start(const ChildSpec& spec);

  // Blocks until a child exits (it is reaped and returned), `wake_fd` (when
  // >= 0) becomes readable (returns nullopt; the fd is not read), or `timeout`
  // passes (nullopt). Returns immediately with a child already exited.
  std::optional<ChildExit> Wait(std::chrono::milliseconds timeout, int wake_fd = -1);

  // Sends SIGTERM to every running child's process group, waits up to `grace`
  // for them to exit, SIGKILLs the rest and reaps everything. Returns how each
  // child ended, in the order they ended.
  std::vector<ChildExit> TerminateAll(std::chrono::milliseconds grace);

  // Waits up to `timeout` for every child to exit on its own; returns the exits
  // observed (children still running after the timeout are left running).
  std::vector<ChildExit> WaitAll(std::chrono::milliseconds timeout);

  size_t running() const { return children_.size(); }
  std::vector<std::string> RunningNames() const;

 private:
  struct Child {
    ChildSpec spec;
    pid_t pid = 0;
    int pidfd = -1;
  };
  // Reaps children_[i] (which must have exited or be about to), removes it.
  ChildExit Reap(size_t i, bool block);

  std::vector<Child> children_;  // running, in start order
};

}  // namespace fedge::cli
