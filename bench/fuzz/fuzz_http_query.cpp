// Fuzz target: the HTTP server's target decoding, fast path (no sockets):
// fedge::PercentDecode (the request path) and fedge::ParseQuery (the query string).
//
// Properties: PercentDecode inverts percent-encoding (encoding every byte of the decoded
// text and decoding again gives it back); a string without '%' decodes to itself;
// ParseQuery accepts exactly when every key and value decodes, and its map holds the
// decoded key of every non-empty pair.
#include <cstdint>
#include <map>
#include <string>
#include <string_view>

#include "fedge/http_server.h"
#include "fuzz_util.h"

using fedge::fuzz::Fail;

namespace {

std::string PercentEncodeAll(std::string_view s) {
  static const char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    out += '%';
    out += kHex[c >> 4];
    out += kHex[c & 15];
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);

  auto decoded = fedge::PercentDecode(in);
  if (decoded.ok()) {
    if (decoded->size() > in.size()) Fail("PercentDecode output longer than its input", "");
    auto back = fedge::PercentDecode(PercentEncodeAll(*decoded));
    if (!back.ok() || *back != *decoded) Fail("PercentDecode does not invert percent-encoding", "");
  }
  if (in.find('%') == std::string_view::npos && (!decoded.ok() || *decoded != in)) {
    Fail("a string without '%' does not decode to itself", "");
  }

  std::map<std::string, std::string> query;
  const fedge::Status st = fedge::ParseQuery(in, &query);
  // Reference: split on '&', skip empty pairs, decode key and value.
  bool all_decode = true;
  std::map<std::string, std::string> expected;
  std::string_view rest = in;
  while (!rest.empty()) {
    const size_t amp = rest.find('&');
    const std::string_view pair = rest.substr(0, amp);
    rest = amp == std::string_view::npos ? std::string_view{} : rest.substr(amp + 1);
    if (pair.empty()) continue;
    const size_t eq = pair.find('=');
    auto key = fedge::PercentDecode(pair.substr(0, eq));
    auto value = eq == std::string_view::npos ? fedge::StatusOr<std::string>(std::string())
                                              : fedge::PercentDecode(pair.substr(eq + 1));
    if (!key.ok() || !value.ok()) {
      all_decode = false;
      break;
    }
    expected[*key] = *value;
  }
  if (st.ok() != all_decode) Fail("ParseQuery accepts/rejects differently from its pairs", st.ToString());
  if (st.ok() && query != expected) Fail("ParseQuery's map differs from the decoded pairs", "");
  return 0;
}
