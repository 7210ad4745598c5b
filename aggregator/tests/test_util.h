// Helpers shared by the aggregator's tests.
#pragma once

#include <stdlib.h>

#include <filesystem>
#include <string>

#include "fedge.pb.h"
#include "fedge/job_spec.h"
#include "fedge/tensor_bundle.h"

namespace fedge::aggregator::testing {

// A two-tensor bundle: "a" (shape [2]) and "b" (shape [1, 2]).
inline TensorBundle SmallBundle(float a0, float a1, float b0, float b1) {
  TensorBundle bundle;
  bundle.tensors.push_back(NamedTensor{"a", {2}, {a0, a1}});
  bundle.tensors.push_back(NamedTensor{"b", {1, 2}, {b0, b1}});
  return bundle;
}

// A job "ns/<name>" of `rounds` rounds; every other field at its default.
inline JobSpec TestJob(const std::string& name, int rounds) {
  JobSpec spec;
  spec.name = name;
  spec.namespace_ = "ns";
  spec.rounds.total = rounds;
  return spec;
}

// TestJob at learning rate 1: the tests' deltas (whole units) are moves AdamW
// could make, so the default norm bound (2 x lr x steps x sqrt(n)) leaves them alone.
inline JobSpec UnitStepJob(const std::string& name, int rounds) {
  JobSpec spec = TestJob(name, rounds);
  spec.rounds.learningRate = 1.0;
  return spec;
}

// Names and shapes of `bundle` as Join declares them (Capabilities.trainable_layout).
inline void DeclareLayout(const TensorBundle& bundle, v1::Capabilities* caps) {
  for (const NamedTensor& t : bundle.tensors) {
    v1::TensorShape* shape = caps->add_trainable_layout();
    shape->set_name(t.name);
    for (int64_t d : t.shape) shape->add_dims(d);
  }
}

// A fresh directory under TMPDIR, removed by the destructor.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "fedge-agg-XXXXXX").string();
    path_ = mkdtemp(pattern.data());
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace fedge::aggregator::testing
