// JobController wires the machinery: informers (jobs, pods, nodes and the job's other
// children) whose handlers only enqueue job keys, a rate-limited work queue, worker
// threads running JobReconciler, and metrics. Stop() drains: workers finish the
// reconcile in flight, then exit.
#pragma once

#include <atomic>
#include <memory>
#include <thread>
#include <vector>

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "fedge/op/informer.h"
#include "fedge/op/reconciler.h"
#include "fedge/op/work_queue.h"

namespace fedge::op {

struct ControllerOptions {
  std::string ns;  // "" = all namespaces
  int workers = 2;
  ReconcilerOptions reconciler;
  std::shared_ptr<prometheus::Registry> registry;  // optional
  Clock* clock = RealClock::Get();
};

// ObjectCache over informers (read-only snapshots).
class InformerCache : public ObjectCache {
 public:
  void Add(Informer* informer) { informers_[informer->resource().plural] = informer; }
  ObjectPtr Get(const Resource& r, const std::string& ns, const std::string& name) override;
  std::vector<ObjectPtr> List(const Resource& r, const std::string& ns, const std::string& label_key,
                              const std::string& label_value) override;
  std::time_t PodsWatchedSince() const override;

 private:
  std::map<std::string, Informer*> informers_;  // immutable after construction
};

class JobController {
 public:
  JobController(KubeClient* client, ControllerOptions opts);
  ~JobController();

  // Starts the informers, waits (up to `sync_timeout`) for their first lists, then the
  // workers. UNAVAILABLE if the caches did not sync.
  Status Start(std::chrono::milliseconds sync_timeout = std::chrono::seconds(60));
  void Stop();
  bool Synced() const;

  int64_t reconciles() const { return reconciles_.load(); }
  // Reconciles that succeeded and wrote something (ReconcileResult::actions > 0).
  int64_t writing_reconciles() const { return writing_reconciles_.load(); }
  WorkQueue& queue() { return queue_; }

 private:
  void Worker();
  // Reconcile with a catch-all: an exception becomes an INTERNAL status (and a requeue).
  StatusOr<ReconcileResult> GuardedReconcile(const std::string& key);
  void EnqueueOwner(const ObjectPtr& obj);
  void EnqueueAllJobs();
  // A deferred state cleanup's pod or claim (desired.h): its key (kDeferredCleanupKeyPrefix).
  void EnqueueDeferredCleanup(const Resource& r, const ObjectPtr& obj);
  // Every deferred state cleanup's pod in the cache (a node changed).
  void EnqueueDeferredCleanups();
  void UpdateDepth();

  KubeClient* client_;
  ControllerOptions opts_;
  WorkQueue queue_;
  std::vector<std::unique_ptr<Informer>> informers_;
  Informer* jobs_ = nullptr;
  Informer* pods_ = nullptr;  // the job pods' informer (deferred state cleanups)
  InformerCache cache_;
  std::unique_ptr<EventRecorder> events_;
  std::unique_ptr<JobReconciler> reconciler_;
  std::vector<std::thread> workers_;
  std::atomic<int64_t> reconciles_{0};
  std::atomic<int64_t> writing_reconciles_{0};
  std::atomic<bool> started_{false};

  prometheus::Counter* m_reconcile_ = nullptr;
  prometheus::Counter* m_errors_ = nullptr;
  prometheus::Histogram* m_duration_ = nullptr;
  prometheus::Gauge* m_depth_ = nullptr;
  prometheus::Counter* m_watch_restarts_ = nullptr;
};

}  // namespace fedge::op
