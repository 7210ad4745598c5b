// Informer: list+watch of one resource into a read-only cache, with event handlers.
//
// Lists (paginated), then watches from the list's resourceVersion with bookmarks. A 410
// Gone re-lists (handlers see the difference as adds, updates and deletes); any other
// failure reconnects after an exponential backoff with jitter from the last seen
// resourceVersion; a normal end of stream reconnects at once. Handlers run on the
// informer's thread and must only enqueue keys (never block or call the API).
// Cached objects are shared immutable snapshots: readers never see them change.
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "fedge/op/clock.h"
#include "fedge/op/kube_client.h"

namespace fedge::op {

using ObjectPtr = std::shared_ptr<const Json>;

struct InformerHandlers {
  std::function<void(const ObjectPtr&)> on_add;
  std::function<void(const ObjectPtr& old_obj, const ObjectPtr& new_obj)> on_update;
  std::function<void(const ObjectPtr&)> on_delete;
};

struct InformerOptions {
  std::string ns;  // "" = all namespaces (or cluster-scoped)
  std::string label_selector;
  int64_t page_size = 500;
  // Reconnect backoff (backoff.h), +-50% jitter.
  std::chrono::milliseconds backoff_initial{200};
  std::chrono::milliseconds backoff_max{30000};
  Clock* clock = RealClock::Get();         // waits out the backoff
  int watch_timeout_seconds = 300;         // randomized up to 2x, like client-go
  uint64_t seed = 0;                       // 0: random
  std::function<void()> on_watch_restart;  // metrics hook; must not block
};

// "namespace/name", or "name" for cluster-scoped objects.
std::string ObjectKey(const Json& obj);

class Informer {
 public:
  Informer(KubeClient* client, Resource resource, InformerOptions opts = {});
  ~Informer();

  // Call before Start().
  void AddHandlers(InformerHandlers h);
  void Start();
  // Stops the watch and joins the thread. Idempotent.
  void Stop();
  // True once the first list has been delivered to the cache and handlers.
  bool HasSynced() const { return synced_.load(); }
  // The wall time (opts.clock) just after the first list returned, 0 before: every object
  // that went after it reaches on_delete (by the watch, or by a re-list's difference), and
  // one that went before it never does.
  std::time_t synced_at() const { return synced_at_.load(); }
  bool WaitForSync(std::chrono::milliseconds timeout);

  ObjectPtr Get(const std::string& key) const;
  std::vector<ObjectPtr> List() const;
  std::vector<ObjectPtr> ListByLabel(const std::string& key, const std::string& value) const;
  size_t Size() const;

  // Watch connections re-established after a failure, Gone, or end of stream.
  int64_t watch_restarts() const { return watch_restarts_.load(); }
  int64_t relists() const { return relists_.load(); }
  const Resource& resource() const { return resource_; }

 private:
  void Run();
  Status ListAndReplace();
  void Apply(const WatchEvent& ev);
  void SleepBackoff(std::chrono::nanoseconds d);

  KubeClient* client_;
  Resource resource_;
  InformerOptions opts_;
  std::vector<InformerHandlers> handlers_;  // immutable after Start
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, ObjectPtr> store_;  // guarded by mu_
  std::string last_rv_;                     // watch thread only
  std::atomic<bool> synced_{false};
  std::atomic<std::time_t> synced_at_{0};
  std::atomic<bool> stop_{false};
  std::atomic<int64_t> watch_restarts_{0};
  std::atomic<int64_t> relists_{0};
  WatchCancel cancel_;
  std::mt19937_64 rng_;
  std::thread thread_;
};

}  // namespace fedge::op
