// `fedge validate -f FILE`: checks a FederatedTrainingJob manifest with the same
// parser and validator `fedge run`, the operator, the aggregator and the agents use
// (fedge::ParseJobSpec), without starting anything. The CRD's schema and CEL rules
// accept exactly the manifests this accepts (tests/cluster/spec_boundaries_test.py
// checks both against one table).
#pragma once

#include <iosfwd>
#include <string>

namespace fedge::cli {

// Exit codes of `fedge validate` (documented in its --help).
constexpr int kValidateOk = 0;          // the manifest is valid
constexpr int kValidateInvalid = 1;     // it is not; every problem is on `err`
constexpr int kValidateUnreadable = 2;  // the file cannot be read

// Validates the manifest at `path` ("-": standard input). On success writes one line
// naming the job to `out`; otherwise writes "error: <path>: <problems>" to `err`, each
// problem starting with its field path. Never throws.
int ValidateManifest(const std::string& path, std::istream& stdin_stream, std::ostream& out,
                     std::ostream& err);

}  // namespace fedge::cli
