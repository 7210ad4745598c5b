// Fuzz target: the FederatedTrainingJob manifest parser (fedge::ParseJobSpec), which
// reads tenants' manifests in the operator and in `fedge run`.
//
// Properties, for every manifest ParseJobSpec accepts:
//  - ValidateJobSpec accepts the spec (ParseJobSpec promises a validated spec);
//  - round trip: JobSpecToYaml writes a manifest that ParseJobSpec reads back to an
//    equal spec (JobSpec::operator==), and writing that again gives the same text —
//    the local runner hands its children exactly this resolved manifest.
#include <cstdint>
#include <string>

#include "fedge/job_spec.h"
#include "fuzz_util.h"

using fedge::fuzz::Fail;

namespace {

// The first line where two renderings differ, both versions (YAML escapes make the
// bytes visible).
std::string FirstDifference(const std::string& a, const std::string& b) {
  size_t i = 0;
  while (i < a.size() && i < b.size() && a[i] == b[i]) ++i;
  auto line = [i](const std::string& s) {
    const size_t begin = s.rfind('\n', i == 0 ? 0 : i - 1);
    const size_t from = begin == std::string::npos ? 0 : begin + 1;
    return s.substr(from, s.find('\n', i) - from);
  };
  return "  " + line(a) + "\n  " + line(b);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto spec = fedge::ParseJobSpec(std::string(reinterpret_cast<const char*>(data), size));
  if (!spec.ok()) return 0;
  if (auto st = fedge::ValidateJobSpec(*spec); !st.ok()) {
    Fail("ParseJobSpec returned a spec ValidateJobSpec rejects", st.ToString());
  }
  const std::string yaml = fedge::JobSpecToYaml(*spec);
  auto again = fedge::ParseJobSpec(yaml);
  if (!again.ok()) Fail("JobSpecToYaml output does not parse", again.status().ToString() + "\n" + yaml);
  const std::string yaml2 = fedge::JobSpecToYaml(*again);
  if (!(*again == *spec)) {
    Fail("JobSpecToYaml output parses to a different spec",
         "first difference, written vs read back:\n" + FirstDifference(yaml, yaml2));
  }
  if (yaml2 != yaml) Fail("JobSpecToYaml is not stable", FirstDifference(yaml, yaml2));
  return 0;
}
