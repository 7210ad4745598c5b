// LeaderElector: client-go's Lease-based leader election on coordination.k8s.io/v1.
// A candidate takes the Lease when it is absent or its holder has not renewed it for
// lease_duration (measured on our own clock from when we last saw it change, so clock
// skew between replicas does not matter); the leader renews every retry_period and gives
// up leadership if it could not renew within renew_deadline. Updates are compare-and-swap
// on resourceVersion, so two candidates never both win.
#pragma once

#include <atomic>
#include <functional>
#include <mutex>
#include <string>

#include "fedge/op/clock.h"
#include "fedge/op/kube_client.h"

namespace fedge::op {

struct LeaderElectionOptions {
  std::string ns = "default";
  std::string name = "fedge-operator";
  std::string identity;  // unique per replica, e.g. hostname_pid
  std::chrono::milliseconds lease_duration{15000};
  std::chrono::milliseconds renew_deadline{10000};
  std::chrono::milliseconds retry_period{2000};
};

class LeaderElector {
 public:
  LeaderElector(KubeClient* client, LeaderElectionOptions opts, Clock* clock = RealClock::Get());

  // One attempt to acquire or renew; true if we hold the lease afterwards.
  bool TryAcquireOrRenew();
  // Blocks: acquires, calls on_started, renews until the renew deadline is missed or
  // Stop() is called, then calls on_stopped (and releases the lease on Stop()).
  void Run(const std::function<void()>& on_started, const std::function<void()>& on_stopped);
  void Stop();
  bool IsLeader() const { return leader_.load(); }

 private:
  Status Release();

  KubeClient* client_;
  LeaderElectionOptions opts_;
  Clock* clock_;
  std::atomic<bool> leader_{false};
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  // What we last observed of the lease and when (our clock), for expiry.
  std::string observed_rv_;
  std::string observed_holder_;
  Clock::TimePoint observed_at_{};
};

}  // namespace fedge::op
