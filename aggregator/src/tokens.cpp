#include "fedge/aggregator/tokens.h"

#include <sstream>

#include "fedge/file_util.h"

namespace fedge::aggregator {

StatusOr<TokenMap> ParseTokens(const std::string& text) {
  TokenMap tokens;
  std::istringstream in(text);
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    std::istringstream fields(line);
    std::string id, token, extra;
    if (!(fields >> id) || id[0] == '#') continue;
    if (!(fields >> token) || (fields >> extra)) {
      return InvalidArgumentError("tokens line " + std::to_string(n) + ": expected \"agent-id token\"");
    }
    if (!tokens.emplace(id, token).second) {
      return InvalidArgumentError("tokens line " + std::to_string(n) + ": agent \"" + id + "\" listed twice");
    }
  }
  return tokens;
}

StatusOr<TokenMap> LoadTokens(const std::string& path) {
  FEDGE_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  auto tokens = ParseTokens(text);
  if (!tokens.ok()) return tokens.status().WithContext(path);
  return tokens;
}

bool TokenMatches(const std::string& expected, const std::string& presented) {
  if (expected.size() != presented.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < expected.size(); ++i) {
    diff |= static_cast<unsigned char>(expected[i] ^ presented[i]);
  }
  return diff == 0;
}

}  // namespace fedge::aggregator
