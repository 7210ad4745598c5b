// Command-line pieces shared by the fedge_bench_* programs that load MiniLM.
#pragma once

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "fedge/version.h"

namespace fedge::bench {

// Answers --help/-h (prints "usage: <argv0> <usage>") and --version (prints
// `name`, the build's version and git revision). True if `arg` was one of
// them: the program then exits 0.
inline bool PrintedHelpOrVersion(const std::string& arg, const char* argv0, const char* name,
                                 const char* usage) {
  if (arg == "--help" || arg == "-h") {
    std::printf("usage: %s %s", argv0, usage);
    return true;
  }
  if (arg == "--version") {
    std::printf("%s %s (%s)\n", name, fedge::Version(), fedge::GitRev());
    return true;
  }
  return false;
}

// Says that `arg` is not a flag of this program; returns the exit code, 2.
inline int UnknownArgument(const std::string& arg) {
  std::fprintf(stderr, "unknown argument '%s' (see --help)\n", arg.c_str());
  return 2;
}

// The value of a count flag ("--steps N"): at least 1.
inline int CountFlag(const char* value) { return std::max(1, std::atoi(value)); }

// The MiniLM directory: `flag` if given, else $FEDGE_MODEL_DIR, else
// .fedge/models/all-MiniLM-L6-v2.
inline std::string MiniLmDir(const std::string& flag) {
  if (!flag.empty()) return flag;
  const char* env = std::getenv("FEDGE_MODEL_DIR");
  return env != nullptr ? env : ".fedge/models/all-MiniLM-L6-v2";
}

}  // namespace fedge::bench
