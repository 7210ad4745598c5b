// The serving side of the agent: one TextClassifier that HTTP requests use and
// that the aggregator client swaps new global adapters into.
//
// Requests hold the lock only while they run; Install takes it between
// requests, so a swap never fails or drops a request — a request sees either
// the old adapter or the new one, never a mix.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "fedge/agent/text_classifier.h"
#include "fedge/status.h"
#include "fedge/tensor_bundle.h"

namespace fedge::agent {

class ServingModel {
 public:
  // `job` is the job key ("namespace/name"); it names the served model.
  ServingModel(std::unique_ptr<TextClassifier> model, std::string job);

  // Imports `bundle` as global `version`. On error the previous adapter (and
  // readiness) stays. Thread-safe; waits for the request in progress.
  Status Install(const TensorBundle& bundle, int64_t version);

  // Runs `fn` with exclusive use of the model. UNAVAILABLE before the first
  // Install (the HTTP layer turns that into 503). Thread-safe.
  Status Use(const std::function<Status(TextClassifier& model, int64_t version)>& fn);

  bool ready() const;
  int64_t version() const;
  const std::string& job() const { return job_; }
  // "<job>@v<version>", the "model" field of responses.
  std::string ModelName(int64_t version) const;
  // Immutable after construction; safe without the lock.
  const std::vector<std::string>& labels() const { return labels_; }

 private:
  const std::string job_;
  const std::vector<std::string> labels_;
  mutable std::mutex mu_;
  std::unique_ptr<TextClassifier> model_;  // guarded by mu_
  int64_t version_ = 0;                    // guarded by mu_; 0: nothing installed
};

}  // namespace fedge::agent
