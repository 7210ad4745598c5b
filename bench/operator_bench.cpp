// Operator benchmark: time from creating a FederatedTrainingJob to every pod existing
// (aggregator + one agent per edge node) for 1, 10 and 100 nodes, and API requests per
// reconcile, with the controller running for real (informers, work queue, workers)
// over the in-memory FakeKubeClient. Baseline in the same run: the same reconciler
// reading through the API instead of the informer cache.
//
//   ninja -C build fedge_bench_operator && build/bench/fedge_bench_operator
//
// With --kubeconfig PATH it runs against a real API server instead (the CRD must be
// installed, e.g. scripts/cluster/start-control-plane.sh + kubectl apply -f crds/): it
// registers N Node objects per size, creates a job selecting them, and times the same
// controller until the API server lists every pod, counting the requests it makes
// through the client. Nodes, jobs and pods it created are deleted afterwards.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>

#include "fedge/log.h"
#include "fedge/op/controller.h"
#include "fedge/op/fake_kube_client.h"
#include "fedge/op/kube_config.h"
#include "fedge/op/rest_kube_client.h"

using namespace fedge::op;
using fedge::Status;
using fedge::StatusOr;
using Steady = std::chrono::steady_clock;

namespace {

Json Node(int i) {
  return {{"metadata", {{"name", "edge-" + std::to_string(i)}, {"labels", {{"fedge.io/edge", "true"}}}}},
          {"status", {{"conditions", Json::array({{{"type", "Ready"}, {"status", "True"}}})}}}};
}

Json Job() {
  return {{"apiVersion", "fedge.io/v1alpha1"},
          {"kind", "FederatedTrainingJob"},
          {"metadata", {{"name", "bench"}, {"namespace", "ml"}}},
          {"spec",
           {{"model", {{"path", "/var/lib/fedge/m"}, {"labels", {"a", "b"}}}},
            {"data", {{"path", "/var/lib/fedge/d"}}},
            {"agents", {{"nodeSelector", {{"fedge.io/edge", "true"}}}}}}}};
}

int Reads(const FakeKubeClient& c) { return c.CountCalls("get") + c.CountCalls("list"); }

// Counts the requests a controller makes through a real client (watches count once per
// connection; Events are counted separately, as in the fake mode).
class CountingClient : public KubeClient {
 public:
  explicit CountingClient(KubeClient* inner) : inner_(inner) {}
  StatusOr<Json> Get(const Resource& r, const std::string& ns, const std::string& name,
                     const std::string& sub) override {
    ++reads;
    return inner_->Get(r, ns, name, sub);
  }
  StatusOr<ListResult> List(const Resource& r, const std::string& ns, const ListOptions& o) override {
    ++reads;
    return inner_->List(r, ns, o);
  }
  Status Watch(const Resource& r, const std::string& ns, const WatchOptions& o,
               const std::function<void(const WatchEvent&)>& f, WatchCancel* c) override {
    ++watches;
    return inner_->Watch(r, ns, o, f, c);
  }
  StatusOr<Json> Create(const Resource& r, const std::string& ns, const Json& obj) override {
    (r.plural == "events" ? events : writes)++;
    return inner_->Create(r, ns, obj);
  }
  StatusOr<Json> Update(const Resource& r, const std::string& ns, const Json& obj,
                        const std::string& sub) override {
    ++writes;
    return inner_->Update(r, ns, obj, sub);
  }
  StatusOr<Json> Apply(const Resource& r, const std::string& ns, const std::string& name, const Json& obj,
                       const ApplyOptions& o) override {
    ++writes;
    return inner_->Apply(r, ns, name, obj, o);
  }
  StatusOr<Json> MergePatch(const Resource& r, const std::string& ns, const std::string& name,
                            const Json& patch, const std::string& sub) override {
    (r.plural == "events" ? events : writes)++;
    return inner_->MergePatch(r, ns, name, patch, sub);
  }
  Status Delete(const Resource& r, const std::string& ns, const std::string& name,
                const DeleteOptions& o) override {
    ++writes;
    return inner_->Delete(r, ns, name, o);
  }
  void Clear() { reads = writes = events = watches = 0; }

  std::atomic<int> reads{0}, writes{0}, events{0}, watches{0};

 private:
  KubeClient* inner_;
};

size_t CountPods(KubeClient& c, const std::string& job) {
  ListOptions o;
  o.label_selector = std::string(kLabelJob) + "=" + job;
  auto l = c.List(res::kPods, "default", o);
  return l.ok() ? l->items.size() : 0;
}

int RealControlPlane(const std::string& kubeconfig) {
  auto cfg = LoadKubeConfig(kubeconfig);
  if (!cfg.ok()) {
    std::fprintf(stderr, "kubeconfig: %s\n", cfg.status().ToString().c_str());
    return 2;
  }
  RestKubeClient api(*cfg);
  std::printf("real API server %s\n", cfg->server.c_str());
  std::printf("%-6s %12s %10s %8s %8s %14s %12s\n", "nodes", "to_pods_ms", "reconciles", "reads", "writes",
              "req/reconcile", "steady_req");
  for (int n : {1, 10, 100}) {
    const std::string tag = "bench-" + std::to_string(n);
    for (int i = 0; i < n; ++i) {
      Json node = {{"apiVersion", "v1"},
                   {"kind", "Node"},
                   {"metadata",
                    {{"name", tag + "-node-" + std::to_string(i)}, {"labels", {{"fedge.io/bench", tag}}}}}};
      auto c = api.Create(res::kNodes, "", node);
      if (!c.ok() && !IsAlreadyExists(c.status())) {
        std::fprintf(stderr, "create node: %s\n", c.status().ToString().c_str());
        return 1;
      }
    }
    CountingClient client(&api);
    ControllerOptions opts;
    opts.workers = 2;
    JobController ctl(&client, opts);
    if (Status s = ctl.Start(); !s.ok()) {
      std::fprintf(stderr, "controller: %s\n", s.ToString().c_str());
      return 1;
    }
    client.Clear();
    Json job = Job();
    job["metadata"] = {{"name", tag}, {"namespace", "default"}};
    job["spec"]["agents"]["nodeSelector"] = {{"fedge.io/bench", tag}};
    auto t0 = Steady::now();
    if (auto c = api.Create(res::kJobs, "default", job); !c.ok()) {
      std::fprintf(stderr, "create job: %s\n", c.status().ToString().c_str());
      return 1;
    }
    while (CountPods(api, tag) < static_cast<size_t>(n + 1)) {
      if (Steady::now() - t0 > std::chrono::seconds(120)) {
        std::printf("timeout\n");
        return 1;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    double ms = std::chrono::duration<double, std::milli>(Steady::now() - t0).count();
    int64_t last = -1;
    while (last != ctl.reconciles() || ctl.queue().Len() > 0) {
      last = ctl.reconciles();
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
    }
    int64_t reconciles = ctl.reconciles();
    int reads = client.reads, writes = client.writes;
    client.Clear();
    ctl.queue().Add("default/" + tag);
    while (ctl.reconciles() == reconciles) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    while (ctl.queue().Len() > 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    int steady = client.reads + client.writes;
    std::printf("%-6d %12.1f %10lld %8d %8d %14.1f %12d\n", n, ms, static_cast<long long>(reconciles), reads,
                writes, reconciles ? static_cast<double>(reads + writes) / reconciles : 0.0, steady);
    std::fflush(stdout);
    // Clean up while the controller still runs (it removes its finalizer).
    api.Delete(res::kJobs, "default", tag, {}).ok();
    auto d0 = Steady::now();
    while (api.Get(res::kJobs, "default", tag, "").ok() && Steady::now() - d0 < std::chrono::seconds(60)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    ctl.Stop();
    for (int i = 0; i < n; ++i) api.Delete(res::kNodes, "", tag + "-node-" + std::to_string(i), {}).ok();
    // Pods bound to no kubelet: delete them now rather than wait for garbage collection.
    ListOptions o;
    o.label_selector = std::string(kLabelJob) + "=" + tag;
    if (auto pods = api.List(res::kPods, "default", o); pods.ok()) {
      for (const auto& p : pods->items) {
        DeleteOptions d;
        d.grace_period_seconds = 0;
        api.Delete(res::kPods, "default", p["metadata"].value("name", ""), d).ok();
      }
    }
  }
  std::printf(
      "\nto_pods_ms: job created -> the API server lists the aggregator and every agent pod;\n"
      "reads/writes: requests the controller made until then (Events excluded); steady_req: requests\n"
      "of one more reconcile with nothing changed (informer cache, applied-hash: expect 0).\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  fedge::log::Init("bench", fedge::log::Level::kError);
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], "--kubeconfig") == 0) return RealControlPlane(argv[i + 1]);
  }
  if (argc > 1) {
    std::printf(
        "usage: fedge_bench_operator [--kubeconfig PATH]\n"
        "  (no flag: in-process fake API server; with it: a real API server with the CRD)\n");
    return argc == 2 && std::strcmp(argv[1], "--help") == 0 ? 0 : 2;
  }
  std::printf("%-6s %12s %10s %14s %14s %16s %16s\n", "nodes", "to_pods_ms", "reconciles", "writes",
              "req/reconcile", "steady_req(inf)", "steady_req(api)");
  for (int n : {1, 10, 100}) {
    FakeKubeClient client;
    for (int i = 0; i < n; ++i) client.Create(res::kNodes, "", Node(i)).ok();
    ControllerOptions opts;
    opts.workers = 2;
    JobController ctl(&client, opts);
    if (!ctl.Start().ok()) return 1;
    client.ClearCalls();
    auto t0 = Steady::now();
    client.Create(res::kJobs, "ml", Job()).ok();
    while (static_cast<int>(client.Objects(res::kPods).size()) < n + 1) {
      if (Steady::now() - t0 > std::chrono::seconds(60)) {
        std::printf("timeout\n");
        return 1;
      }
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    double ms = std::chrono::duration<double, std::milli>(Steady::now() - t0).count();
    // Let the follow-up reconciles (triggered by the children's own events) settle.
    int64_t last = -1;
    while (last != ctl.reconciles() || ctl.queue().Len() > 0) {
      last = ctl.reconciles();
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    int writes = client.CountWrites() - client.CountCalls("create", "events");
    int64_t reconciles = ctl.reconciles();
    int requests = writes + Reads(client);
    // Steady state: one more reconcile with nothing changed, cache vs reading the API.
    client.ClearCalls();
    ctl.queue().Add("ml/bench");
    while (ctl.reconciles() == reconciles) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    while (ctl.queue().Len() > 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    int steady_informer = client.CountWrites() + Reads(client);
    ctl.Stop();
    ClientCache api_cache(&client);
    FakeClock fc;
    EventRecorder ev(&client, &fc);
    JobReconciler direct(&client, &api_cache, &ev);
    client.ClearCalls();
    direct.Reconcile("ml/bench").ok();
    int steady_api = client.CountWrites() + Reads(client);
    std::printf("%-6d %12.1f %10lld %14d %14.1f %16d %16d\n", n, ms, static_cast<long long>(reconciles),
                writes, reconciles ? static_cast<double>(requests) / reconciles : 0.0, steady_informer,
                steady_api);
  }
  std::printf(
      "\nwrites: creates/applies/deletes until every pod exists (events excluded);\n"
      "steady_req: API requests of one reconcile when nothing changed - informer cache vs reading\n"
      "the API on every reconcile (the baseline). Fake API server in-process: latency is the\n"
      "controller's own cost, not network or etcd.\n");
  return 0;
}
