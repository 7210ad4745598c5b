// The serving side of the agent: the model (a TrainableModel whose capabilities,
// fedge/agent/model.h, the HTTP layer asks for) that requests use and
// that the aggregator client installs each new global adapter into.
//
// A model is not thread-safe, so requests take turns on an instance.
// Installing a new global must not wait behind them (an inference queue held
// installs and /readyz for 11 s): requests run on a snapshot (shared_ptr) of
// the published instance; Install imports the new adapter into a spare
// instance that no request can reach, then publishes it with a pointer swap.
// A request sees either the old adapter or the new one, never a mix, and a
// request running on the old instance finishes there.
//
// Instances: the constructor builds the spare with the factory at once, so
// that no install has to load a model: a load is CPU-heavy and, at an install
// under load, slowed the requests around it (bench/serving/hot_swap_bench.py:
// p50 800 ms in the second install's window against 250 ms at the others).
// The first Install uses the instance given to the constructor, the second the
// prebuilt spare; later ones reuse the previously published instance once no
// request holds it any more. While one still does, a fresh instance comes from
// the factory (the busy one is dropped when its last request ends). Without a
// factory, or when it fails, Install falls back to importing into the
// published instance between requests (waiting for the request in progress).
// Memory: with a factory the agent keeps two serving instances from the start
// (one published, one spare), three while a request outlives two installs.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "fedge/agent/model.h"
#include "fedge/status.h"
#include "fedge/tensor_bundle.h"

namespace fedge::agent {

class ServingModel {
 public:
  // Builds another instance like the constructor's (same base model, labels
  // and adapter layout); called by the constructor and, rarely, by Install,
  // never on a request's path.
  using Factory = std::function<StatusOr<std::unique_ptr<TrainableModel>>()>;

  // `job` is the job key ("namespace/name"); it names the served model. With a
  // factory, builds the spare instance now (a model load); if that fails it
  // logs a warning and Install tries again when it needs one.
  ServingModel(std::unique_ptr<TrainableModel> model, std::string job, Factory factory = nullptr);

  // Imports `bundle` as global `version` and publishes it. On error the
  // previous adapter (and readiness) stays. Thread-safe; installs are
  // serialised with each other. With a factory it never waits for a request.
  Status Install(const TensorBundle& bundle, int64_t version);

  // Runs `fn` with exclusive use of the published instance (requests take
  // turns on it). UNAVAILABLE before the first Install (the HTTP layer turns
  // that into 503). Thread-safe.
  Status Use(const std::function<Status(TrainableModel& model, int64_t version)>& fn);

  // Lock-free: never waits for a request or an Install (for /readyz).
  bool ready() const { return version_.load(std::memory_order_acquire) != 0; }
  int64_t version() const { return version_.load(std::memory_order_acquire); }
  const std::string& job() const { return job_; }
  // "<job>@v<version>", the "model" field of responses.
  std::string ModelName(int64_t version) const;
  // The Classifier's labels; empty for a model that is not one (a causal LM).
  // Immutable after construction; safe without the lock.
  const std::vector<std::string>& labels() const { return labels_; }
  // Instances the factory built so far (tests, metrics).
  int64_t instances_built() const { return instances_built_.load(); }

 private:
  struct Instance {
    std::mutex mu;  // held by the one request (or fallback Install) using `model`
    std::unique_ptr<TrainableModel> model;
    int64_t version = 0;  // fixed once published, except by the no-factory fallback (under mu)
  };
  std::shared_ptr<Instance> Published() const;

  const std::string job_;
  const std::vector<std::string> labels_;
  const Factory factory_;
  std::mutex install_mu_;  // serialises Install; never taken by requests
  // Unpublished instances, unreachable by new requests; guarded by install_mu_.
  // Two before the first Install (the constructor's and the prebuilt one), at
  // most one after: the retired instance, which requests that started on it
  // may still be using (busy until they end).
  std::vector<std::shared_ptr<Instance>> spares_;
  mutable std::mutex published_mu_;  // guards published_ only; held just to copy or swap it
  std::shared_ptr<Instance> published_;
  std::atomic<int64_t> version_{0};  // published_->version; 0: nothing installed
  std::atomic<int64_t> instances_built_{0};
};

}  // namespace fedge::agent
