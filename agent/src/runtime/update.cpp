#include "fedge/agent/runtime/update.h"

#include <string>

namespace fedge::agent {

StatusOr<TensorBundle> ComputeDelta(const TensorBundle& after, const TensorBundle& base) {
  Status layout = CheckSameLayout(base, after);
  if (!layout.ok()) return layout.WithContext("delta: trained state and global differ");
  TensorBundle delta;
  delta.tensors.reserve(after.tensors.size());
  for (const NamedTensor& a : after.tensors) {
    const NamedTensor* b = base.Find(a.name);
    // CheckSameLayout compared shapes; the value counts must match them too.
    if (b == nullptr || a.values.size() != b->values.size()) {
      return InvalidArgumentError("delta: tensor " + a.name + " has " + std::to_string(a.values.size()) +
                                  " values after training and " +
                                  std::to_string(b == nullptr ? 0 : b->values.size()) + " in the global");
    }
    NamedTensor d;
    d.name = a.name;
    d.shape = a.shape;
    d.values.resize(a.values.size());
    for (size_t i = 0; i < a.values.size(); ++i) d.values[i] = a.values[i] - b->values[i];
    delta.tensors.push_back(std::move(d));
  }
  return delta;
}

uint64_t HashAgentId(std::string_view agent_id) {
  uint64_t h = 14695981039346656037ull;  // FNV-1a 64-bit offset basis
  for (unsigned char c : agent_id) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

namespace {
uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
}  // namespace

uint64_t MixTrainingSeed(uint64_t job_seed, std::string_view agent_id, int64_t round) {
  uint64_t s = SplitMix64(job_seed);
  s = SplitMix64(s ^ HashAgentId(agent_id));
  s = SplitMix64(s ^ static_cast<uint64_t>(round));
  return s;
}

}  // namespace fedge::agent
