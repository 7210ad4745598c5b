// Agent tokens file: one "agent-id token" pair per line; blank lines and lines
// starting with '#' are ignored.
#pragma once

#include <map>
#include <string>

#include "fedge/status.h"

namespace fedge::aggregator {

using TokenMap = std::map<std::string, std::string>;  // agent id -> token

// INVALID_ARGUMENT naming the line for a malformed or duplicate entry.
StatusOr<TokenMap> ParseTokens(const std::string& text);
StatusOr<TokenMap> LoadTokens(const std::string& path);

// Constant-time comparison of a presented token with the expected one.
bool TokenMatches(const std::string& expected, const std::string& presented);

}  // namespace fedge::aggregator
