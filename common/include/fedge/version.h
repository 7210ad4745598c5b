// Build identity for --version output and logs. The git revision lives in one
// generated translation unit (version.cpp in the build tree), so a new commit
// relinks the binaries instead of recompiling everything that includes a
// fedge header.
#pragma once

namespace fedge {

// The release version, e.g. "0.1.0" (PROJECT_VERSION).
const char* Version();

// `git describe --always --dirty` at configure time, or "unknown".
const char* GitRev();

}  // namespace fedge
