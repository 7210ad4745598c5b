// Operator benchmark: time from creating a FederatedTrainingJob to every pod existing
// (aggregator + one agent per edge node) for each size in --nodes, and API requests per
// reconcile, with the controller running for real (informers, work queue, workers)
// over the in-memory FakeKubeClient. Baseline in the same run: the same reconciler
// reading through the API instead of the informer cache.
//
//   ninja -C build fedge_bench_operator && build/bench/fedge_bench_operator
//
// With --kubeconfig PATH it runs against a real API server instead (the CRD must be
// installed, e.g. scripts/cluster/start-control-plane.sh + kubectl apply -f crds/): it
// registers N Node objects per size, creates a job selecting them, and times the same
// controller until a watch on the API server has seen every pod, --runs times per size
// (p50 printed), counting the requests the controller makes through the client, and the
// writes of one more reconcile once nothing changes (must be 0). Nodes, jobs and pods it
// created are deleted afterwards.
//
//   build/bench/fedge_bench_operator --kubeconfig /tmp/fedge-control-plane/kubeconfig --nodes 1,10,100 --runs
//   5
//
// --pods-alone adds, after each run on the same nodes, the job's agent pods created
// straight (no operator): the API server's floor for one pod per agent.
#include <sys/resource.h>
#include <unistd.h>
#include <algorithm>
#include <atomic>

#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>

#include <cstdlib>
#include <cstring>
#include <ctime>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

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

// The namespace of kubelets' node heartbeat Leases.
constexpr const char* kNodeLeaseNs = "kube-node-lease";

// Now as a Kubernetes MicroTime ("2026-12-04T03:45:05.123456Z").
std::string MicroTime() {
  auto now = std::chrono::system_clock::now();
  std::time_t t = std::chrono::system_clock::to_time_t(now);
  long us = static_cast<long>(
      std::chrono::duration_cast<std::chrono::microseconds>(now.time_since_epoch()).count() % 1000000);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[40];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
  char out[64];
  std::snprintf(out, sizeof(out), "%s.%06ldZ", buf, us);
  return out;
}

// What a kubelet registers: Ready, with a small edge device's capacity (4 CPUs, 8 GiB,
// 110 pods), so the scheduler can bind the agent pods as it would on a real cluster.
Json ReadyNodeStatus(const std::string& now) {
  std::string seconds = now.substr(0, 19) + "Z";  // conditions carry metav1.Time
  Json capacity = {{"cpu", "4"}, {"memory", "8Gi"}, {"pods", "110"}, {"ephemeral-storage", "64Gi"}};
  return {{"capacity", capacity},
          {"allocatable", capacity},
          {"conditions", Json::array({{{"type", "Ready"},
                                       {"status", "True"},
                                       {"reason", "KubeletReady"},
                                       {"message", "fedge_bench_operator"},
                                       {"lastHeartbeatTime", seconds},
                                       {"lastTransitionTime", seconds}}})}};
}

Json NodeLease(const std::string& node, const std::string& now) {
  return {{"apiVersion", "coordination.k8s.io/v1"},
          {"kind", "Lease"},
          {"metadata", {{"name", node}, {"namespace", kNodeLeaseNs}}},
          {"spec", {{"holderIdentity", node}, {"leaseDurationSeconds", 40}, {"renewTime", now}}}};
}

// Renews every bench node's Lease every 10 s, spread evenly over the interval, as
// kubelets do (nodeLeaseDurationSeconds 40, renewal at a quarter of it): without it the
// node lifecycle controller marks the nodes NotReady after its grace period and taints
// them, and the scheduler stops placing pods. At 1,000 nodes this is 100 writes/s, the
// background a real cluster of that size carries too.
class NodeHeartbeats {
 public:
  NodeHeartbeats(KubeClient* api, std::string tag, int n)
      : api_(api), tag_(std::move(tag)), n_(n), threads_n_(std::min(n, kThreads)) {
    for (int t = 0; t < threads_n_; ++t) threads_.emplace_back([this, t] { Loop(t); });
  }
  ~NodeHeartbeats() {
    {
      std::lock_guard<std::mutex> l(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }

 private:
  static constexpr int kThreads = 4;
  void Loop(int t) {
    const auto period = std::chrono::microseconds(10'000'000);
    auto next = Steady::now();
    for (int i = t;; i += threads_n_) {
      if (i >= n_) i = t;
      next += period * threads_n_ / n_;
      std::unique_lock<std::mutex> l(mu_);
      if (cv_.wait_until(l, next, [this] { return stop_; })) return;
      l.unlock();
      api_->MergePatch(res::kLeases, kNodeLeaseNs, tag_ + "-node-" + std::to_string(i),
                       {{"spec", {{"renewTime", MicroTime()}}}})
          .ok();
    }
  }
  KubeClient* api_;
  const std::string tag_;
  const int n_, threads_n_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;  // guarded by mu_
  std::vector<std::thread> threads_;
};

// True once every node of `tag` is listed without the node.kubernetes.io/not-ready taint.
bool WaitNodesSchedulable(KubeClient& api, const std::string& tag, int n, std::chrono::seconds timeout) {
  ListOptions o;
  o.label_selector = "fedge.io/bench=" + tag;
  auto deadline = Steady::now() + timeout;
  while (Steady::now() < deadline) {
    auto l = api.List(res::kNodes, "", o);
    int ready = 0;
    if (l.ok()) {
      for (const auto& node : l->items) {
        bool tainted = false;
        for (const auto& taint : node["spec"].value("taints", Json::array())) {
          tainted = tainted || taint.value("key", "") == "node.kubernetes.io/not-ready";
        }
        ready += tainted ? 0 : 1;
      }
    }
    if (ready >= n) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(500));  // polls the API server
  }
  return false;
}

int Reads(const FakeKubeClient& c) { return c.CountCalls("get") + c.CountCalls("list"); }

// Counts the requests a controller makes through a real client (watches count once per
// connection; Events are counted separately, as in the fake mode), and per verb and
// resource the number of requests and their summed latency (the profile printed per size).
class CountingClient : public KubeClient {
 public:
  explicit CountingClient(KubeClient* inner) : inner_(inner) {}

  // Runs f, adding its latency to the verb's row.
  template <typename F>
  auto Timed(const std::string& verb, const Resource& r, F&& f) {
    auto t0 = Steady::now();
    auto out = f();
    double ms = std::chrono::duration<double, std::milli>(Steady::now() - t0).count();
    std::lock_guard<std::mutex> l(mu_);
    auto& row = by_kind_[verb + " " + r.plural];
    ++row.first;
    row.second += ms;
    return out;
  }

 public:
  StatusOr<Json> Get(const Resource& r, const std::string& ns, const std::string& name,
                     const std::string& sub) override {
    ++reads;
    return Timed("get", r, [&] { return inner_->Get(r, ns, name, sub); });
  }
  StatusOr<ListResult> List(const Resource& r, const std::string& ns, const ListOptions& o) override {
    ++reads;
    return Timed("list", r, [&] { return inner_->List(r, ns, o); });
  }
  Status Watch(const Resource& r, const std::string& ns, const WatchOptions& o,
               const std::function<void(const WatchEvent&)>& f, WatchCancel* c) override {
    ++watches;
    return inner_->Watch(r, ns, o, f, c);
  }
  StatusOr<Json> Create(const Resource& r, const std::string& ns, const Json& obj) override {
    (r.plural == "events" ? events : writes)++;
    return Timed("create", r, [&] { return inner_->Create(r, ns, obj); });
  }
  StatusOr<Json> Update(const Resource& r, const std::string& ns, const Json& obj,
                        const std::string& sub) override {
    ++writes;
    return Timed("update", r, [&] { return inner_->Update(r, ns, obj, sub); });
  }
  StatusOr<Json> Apply(const Resource& r, const std::string& ns, const std::string& name, const Json& obj,
                       const ApplyOptions& o) override {
    ++writes;
    return Timed(o.subresource.empty() ? "apply" : "apply-" + o.subresource, r,
                 [&] { return inner_->Apply(r, ns, name, obj, o); });
  }
  StatusOr<Json> MergePatch(const Resource& r, const std::string& ns, const std::string& name,
                            const Json& patch, const std::string& sub) override {
    (r.plural == "events" ? events : writes)++;
    return Timed("patch", r, [&] { return inner_->MergePatch(r, ns, name, patch, sub); });
  }
  Status Delete(const Resource& r, const std::string& ns, const std::string& name,
                const DeleteOptions& o) override {
    ++writes;
    return Timed("delete", r, [&] { return inner_->Delete(r, ns, name, o); });
  }
  StatusOr<Json> GetPath(const std::string& path) override {
    ++reads;
    return inner_->GetPath(path);
  }
  void Clear() {
    reads = writes = events = watches = 0;
    std::lock_guard<std::mutex> l(mu_);
    by_kind_.clear();
  }
  // "create pods 101 x 12.3 ms, ..." sorted by request count, Events excluded.
  std::string Profile() {
    std::lock_guard<std::mutex> l(mu_);
    std::vector<std::pair<std::string, std::pair<int, double>>> rows(by_kind_.begin(), by_kind_.end());
    std::sort(rows.begin(), rows.end(),
              [](const auto& a, const auto& b) { return a.second.first > b.second.first; });
    std::string out;
    char buf[160];
    for (const auto& [kind, v] : rows) {
      if (kind.find(" events") != std::string::npos) continue;
      std::snprintf(buf, sizeof(buf), "%s%s %d x %.1f ms", out.empty() ? "" : ", ", kind.c_str(), v.first,
                    v.second / v.first);
      out += buf;
    }
    return out;
  }

  std::atomic<int> reads{0}, writes{0}, events{0}, watches{0};

 private:
  KubeClient* inner_;
  std::mutex mu_;
  std::map<std::string, std::pair<int, double>> by_kind_;  // guarded by mu_: count, summed ms
};

// Runs fn(0..n-1) on up to `threads` threads (the bench's own setup and cleanup).
void ParallelFor(int n, int threads, const std::function<void(int)>& fn) {
  std::atomic<int> next{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < std::min(n, threads); ++t) {
    pool.emplace_back([&] {
      for (int i = next++; i < n; i = next++) fn(i);
    });
  }
  for (auto& t : pool) t.join();
}

// Counts the distinct pods of one job the API server has, from a watch (a list of 1,000
// pods every few milliseconds would load the API server it measures). The watch resumes
// when the API server ends it: under a burst of pod writes kube-apiserver force-closes
// watchers it cannot feed in time ("Forcing pods watcher close due to unresponsiveness",
// the scheduler's and the operator's too), and a watch that was not resumed missed every
// later pod (a 1,000-node run reported "not every pod exists after 300 s" while all 1,001
// existed 12 s after the job). A resumed watch starts from the last resourceVersion seen;
// when that is too old (410 Gone) or the watch failed, a re-list picks up what was missed.
class PodWatch {
 public:
  PodWatch(KubeClient* api, const std::string& job) : api_(api) {
    selector_ = std::string(kLabelJob) + "=" + job;
    std::string rv = Relist();
    thread_ = std::thread([this, rv]() mutable {
      while (!cancel_.cancelled()) {
        if (rv.empty()) {
          rv = Relist();
          if (rv.empty()) {  // the list failed: try again shortly
            std::this_thread::sleep_for(std::chrono::milliseconds(200));
            continue;
          }
        }
        WatchOptions wo;
        wo.label_selector = selector_;
        wo.resource_version = rv;
        Status s = api_->Watch(
            res::kPods, "default", wo,
            [this, &rv](const WatchEvent& ev) {
              rv = ev.object["metadata"].value("resourceVersion", rv);
              if (ev.type == WatchEventType::kAdded || ev.type == WatchEventType::kModified)
                Observe(ev.object);
            },
            &cancel_);
        if (cancel_.cancelled()) break;
        restarts_++;
        if (!s.ok()) rv.clear();  // 410 Gone or a failed stream: re-list before watching again
      }
    });
  }
  ~PodWatch() {
    cancel_.Cancel();
    thread_.join();
  }
  bool WaitFor(size_t n, std::chrono::seconds timeout) {
    std::unique_lock<std::mutex> l(mu_);
    return cv_.wait_for(l, timeout, [&] { return names_.size() >= n; });
  }
  // Until n agent pods have a spec.nodeName (the scheduler bound them; the aggregator's
  // checkpoint claim stays unbound without a default StorageClass, so it is not counted).
  bool WaitBound(size_t n, std::chrono::seconds timeout) {
    std::unique_lock<std::mutex> l(mu_);
    return cv_.wait_for(l, timeout, [&] { return bound_.size() >= n; });
  }

  // Times the watch was resumed (the API server ended or dropped it).
  int restarts() const { return restarts_.load(); }

 private:
  // Lists the job's pods into the sets; the list's resourceVersion, or "" if it failed.
  std::string Relist() {
    ListOptions lo;
    lo.label_selector = selector_;
    auto l = api_->List(res::kPods, "default", lo);
    if (!l.ok()) return "";
    for (const auto& p : l->items) Observe(p);
    return l->resource_version;
  }
  void Observe(const Json& pod) {
    std::lock_guard<std::mutex> l(mu_);
    const std::string name = pod["metadata"].value("name", "");
    names_.insert(name);
    if (!pod["spec"].value("nodeName", "").empty() &&
        pod["metadata"]["labels"].value(kLabelRole, "") == "agent") {
      bound_.insert(name);
    }
    cv_.notify_all();
  }

  KubeClient* api_;
  std::string selector_;
  WatchCancel cancel_;
  std::atomic<int> restarts_{0};
  std::mutex mu_;
  std::condition_variable cv_;
  std::set<std::string> names_;  // guarded by mu_
  std::set<std::string> bound_;  // guarded by mu_
  std::thread thread_;
};

// Waits until the controller has run no reconcile for `quiet` and its queue is empty.
void Settle(JobController& ctl, std::chrono::milliseconds quiet) {
  int64_t last = -1;
  while (last != ctl.reconciles() || ctl.queue().Len() > 0 || ctl.queue().ProcessingLen() > 0) {
    last = ctl.reconciles();
    std::this_thread::sleep_for(quiet);
  }
}

struct RunResult {
  double ms = 0;
  double bound_ms = -1;  // job created -> every pod bound to its node (ready nodes only)
  int watch_restarts = 0;
  int concurrency = 0;
  double cpu_ms = 0;  // this process's CPU (operator + bench) while the pods were created  // the bench's pod
                      // watch resumed (the API server dropped it)
  int64_t reconciles = 0, writing = 0;
  int reads = 0, writes = 0, steady_reads = 0, steady_writes = 0;
  std::string profile;   // requests by verb and resource until every pod existed
  double alone_ms = -1;  // --pods-alone: the same pods created straight, no operator
};

// CPU seconds (user + system) this process has used: the operator's reconciler, the
// bench's watch and the node heartbeats.
double ProcessCpuSeconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

// The API server's cost of the pods alone: the n agent pods as the operator makes them for
// a job selecting the nodes of `tag` (not the aggregator's, which needs its ServiceAccount
// to pass admission: one pod, not one per agent), created straight with
// `concurrency` requests in flight (no Secrets, volumes, reads or reconciler), timed until
// a watch has seen them all, then deleted: the floor of any design that creates one pod
// per agent. Their owner reference is dropped (the job object does not exist).
double PodsAloneMs(KubeClient& api, const std::string& name, const std::string& tag, int n, int concurrency) {
  Json job = Job();
  job["metadata"] = {{"name", name}, {"namespace", "default"}};
  job["spec"]["agents"]["nodeSelector"] = {{"fedge.io/bench", tag}};
  std::vector<Json> pods;
  for (int i = 0; i < n; ++i)
    pods.push_back(DesiredAgentPod(job, tag + "-node-" + std::to_string(i), DesiredOptions{}));
  for (auto& p : pods) p["metadata"].erase("ownerReferences");
  PodWatch watch(&api, name);
  std::atomic<int> errors{0};
  auto t0 = Steady::now();
  ParallelFor(static_cast<int>(pods.size()), concurrency, [&](int i) {
    auto c = api.Create(res::kPods, "default", pods[i]);
    if (!c.ok() && errors++ == 0)
      std::fprintf(stderr, "pods alone: create: %s\n", c.status().ToString().c_str());
  });
  const bool all = watch.WaitFor(pods.size(), std::chrono::seconds(300));
  const double ms = std::chrono::duration<double, std::milli>(Steady::now() - t0).count();
  ParallelFor(static_cast<int>(pods.size()), 16, [&](int i) {
    DeleteOptions d;
    d.grace_period_seconds = 0;
    api.Delete(res::kPods, "default", pods[i]["metadata"].value("name", ""), d).ok();
  });
  return all && errors == 0 ? ms : -1;
}

int RealControlPlane(const std::string& kubeconfig, const std::vector<int>& sizes, int runs,
                     const std::vector<int>& concurrencies, bool ready_nodes, bool wait_bound,
                     bool pods_alone) {
  auto cfg = LoadKubeConfig(kubeconfig);
  if (!cfg.ok()) {
    std::fprintf(stderr, "kubeconfig: %s\n", cfg.status().ToString().c_str());
    return 2;
  }
  if (!cfg->ca_pem.empty()) SkipSystemTrustStoreLoad();  // as fedge-operator does
  RestKubeClient api(*cfg);
  std::string conc_list;
  for (int c : concurrencies) conc_list += (conc_list.empty() ? "" : ",") + std::to_string(c);
  std::printf("real API server %s, %d run(s) per size%s, apply concurrency %s, %s\n", cfg->server.c_str(),
              runs, concurrencies.size() > 1 ? " and concurrency (interleaved)" : "", conc_list.c_str(),
              ready_nodes ? "nodes Ready with capacity and a Lease renewed every 10 s (as kubelets)"
                          : "bare Node objects (no status, no Lease: never schedulable)");
  std::printf("%-6s %10s %10s %10s %10s %11s %9s %9s %13s %13s %10s %11s\n", "nodes", "p50_ms", "min_ms",
              "max_ms", "reconciles", "creating", "reads", "writes", "req/creating", "steady_writes",
              "bound_ms", "concurrency");
  std::fflush(stdout);
  for (int n : sizes) {
    const std::string tag = "bench-" + std::to_string(n);
    static const std::string invocation = [] {
      char buf[16];
      std::snprintf(
          buf, sizeof(buf), "%05x",
          static_cast<unsigned>((std::chrono::system_clock::now().time_since_epoch().count() ^ ::getpid()) &
                                0xfffff));
      return std::string(buf);
    }();
    std::atomic<int> node_errors{0};
    ParallelFor(n, 16, [&](int i) {
      const std::string name = tag + "-node-" + std::to_string(i);
      Json node = {
          {"apiVersion", "v1"},
          {"kind", "Node"},
          {"metadata",
           {{"name", name}, {"labels", {{"fedge.io/bench", tag}, {"kubernetes.io/hostname", name}}}}}};
      if (ready_nodes) node["status"] = ReadyNodeStatus(MicroTime());
      auto c = api.Create(res::kNodes, "", node);
      if (!c.ok() && !IsAlreadyExists(c.status())) {
        if (node_errors++ == 0) std::fprintf(stderr, "create node: %s\n", c.status().ToString().c_str());
      }
      if (!ready_nodes) return;
      auto l = api.Create(res::kLeases, kNodeLeaseNs, NodeLease(name, MicroTime()));
      if (!l.ok() && !IsAlreadyExists(l.status())) {
        if (node_errors++ == 0)
          std::fprintf(stderr, "create node lease: %s\n", l.status().ToString().c_str());
      }
    });
    if (node_errors > 0) return 1;
    std::unique_ptr<NodeHeartbeats> heartbeats;
    if (ready_nodes) {
      heartbeats = std::make_unique<NodeHeartbeats>(&api, tag, n);
      // A real edge node is Ready and untainted before a job selects it: wait until the
      // node lifecycle controller has removed the not-ready taint the API server adds at
      // registration (TaintNodesByCondition) from every node.
      if (!WaitNodesSchedulable(api, tag, n, std::chrono::seconds(120))) {
        std::printf("timeout: nodes still tainted not-ready after 120 s\n");
        return 1;
      }
    }
    std::vector<RunResult> results;
    // With several concurrencies the runs alternate between them (16, 32, 16, 32, ...), so
    // each is measured on the same nodes and under the same background.
    for (int run_index = 0; run_index < runs * static_cast<int>(concurrencies.size()); ++run_index) {
      const int run = run_index / static_cast<int>(concurrencies.size());
      const int concurrency = concurrencies[run_index % concurrencies.size()];
      // A name of this invocation's own: the garbage collector removes a deleted job's
      // Secrets and claims (and the PV controller its volumes) after the job is gone, and a
      // later invocation's job of the same name would find them and write less.
      const std::string job_name = tag + "-r" + std::to_string(run) +
                                   (concurrencies.size() > 1 ? "-c" + std::to_string(concurrency) : "") +
                                   "-" + invocation;
      CountingClient client(&api);
      ControllerOptions opts;
      opts.workers = 2;
      opts.reconciler.apply_concurrency = concurrency;
      JobController ctl(&client, opts);
      if (Status s = ctl.Start(); !s.ok()) {
        std::fprintf(stderr, "controller: %s\n", s.ToString().c_str());
        return 1;
      }
      Settle(ctl, std::chrono::milliseconds(200));  // jobs left over from an earlier run
      RunResult r;
      r.concurrency = concurrency;
      int64_t reconciles0 = ctl.reconciles(), writing0 = ctl.writing_reconciles();
      PodWatch pods(&api, job_name);
      client.Clear();
      Json job = Job();
      job["metadata"] = {{"name", job_name}, {"namespace", "default"}};
      job["spec"]["agents"]["nodeSelector"] = {{"fedge.io/bench", tag}};
      auto t0 = Steady::now();
      const double cpu0 = ProcessCpuSeconds();
      if (auto c = api.Create(res::kJobs, "default", job); !c.ok()) {
        std::fprintf(stderr, "create job: %s\n", c.status().ToString().c_str());
        return 1;
      }
      if (!pods.WaitFor(static_cast<size_t>(n + 1), std::chrono::seconds(300))) {
        std::printf("timeout: not every pod exists after 300 s\n");
        return 1;
      }
      r.ms = std::chrono::duration<double, std::milli>(Steady::now() - t0).count();
      r.cpu_ms = (ProcessCpuSeconds() - cpu0) * 1e3;
      r.watch_restarts = pods.restarts();
      r.reads = client.reads;
      r.writes = client.writes;
      r.profile = client.Profile();
      if (ready_nodes && wait_bound) {  // not the goal: how long until the scheduler placed them
        r.bound_ms = pods.WaitBound(static_cast<size_t>(n), std::chrono::seconds(300))
                         ? std::chrono::duration<double, std::milli>(Steady::now() - t0).count()
                         : -1;
      }
      Settle(ctl, std::chrono::milliseconds(500));
      r.reconciles = ctl.reconciles() - reconciles0;
      r.writing = ctl.writing_reconciles() - writing0;
      // Steady state: one more reconcile with nothing changed.
      client.Clear();
      int64_t before = ctl.reconciles();
      ctl.queue().Add("default/" + job_name);
      while (ctl.reconciles() == before) std::this_thread::sleep_for(std::chrono::milliseconds(1));
      Settle(ctl, std::chrono::milliseconds(100));
      r.steady_reads = client.reads;
      r.steady_writes = client.writes;
      // Clean up while the controller still runs (it removes its finalizer).
      api.Delete(res::kJobs, "default", job_name, {}).ok();
      auto d0 = Steady::now();
      while (api.Get(res::kJobs, "default", job_name, "").ok() &&
             Steady::now() - d0 < std::chrono::seconds(120)) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
      ctl.Stop();
      // Pods bound to no kubelet: delete them now rather than wait for garbage collection.
      ListOptions o;
      o.label_selector = std::string(kLabelJob) + "=" + job_name;
      if (auto listed = api.List(res::kPods, "default", o); listed.ok()) {
        ParallelFor(static_cast<int>(listed->items.size()), 16, [&](int i) {
          DeleteOptions d;
          d.grace_period_seconds = 0;
          api.Delete(res::kPods, "default", listed->items[i]["metadata"].value("name", ""), d).ok();
        });
      }
      // After each operator run, on the same nodes: the baseline of the same run.
      if (pods_alone) r.alone_ms = PodsAloneMs(api, job_name + "-alone", tag, n, concurrency);
      results.push_back(r);
    }
    heartbeats.reset();
    ParallelFor(n, 16, [&](int i) {
      api.Delete(res::kNodes, "", tag + "-node-" + std::to_string(i), {}).ok();
      if (ready_nodes) api.Delete(res::kLeases, kNodeLeaseNs, tag + "-node-" + std::to_string(i), {}).ok();
    });
    for (int concurrency : concurrencies) {
      std::vector<RunResult> mine;
      for (const auto& r : results)
        if (r.concurrency == concurrency) mine.push_back(r);
      std::vector<double> ms;
      for (const auto& r : mine) ms.push_back(r.ms);
      // Counts from the median run.
      const RunResult& mid = *std::min_element(mine.begin(), mine.end(), [&](const auto& a, const auto& b) {
        return std::abs(a.ms - Median(ms)) < std::abs(b.ms - Median(ms));
      });
      std::printf("%-6d %10.1f %10.1f %10.1f %10lld %11lld %9d %9d %13.1f %13d %10.1f %11d\n", n, Median(ms),
                  *std::min_element(ms.begin(), ms.end()), *std::max_element(ms.begin(), ms.end()),
                  static_cast<long long>(mid.reconciles), static_cast<long long>(mid.writing), mid.reads,
                  mid.writes, mid.writing ? static_cast<double>(mid.reads + mid.writes) / mid.writing : 0.0,
                  mid.steady_writes, mid.bound_ms, concurrency);
      std::printf("       requests (median run): %s\n", mid.profile.c_str());
      std::printf(
          "       operator + bench process CPU until every pod existed (median run): %.0f ms = %.2f cores\n",
          mid.cpu_ms, mid.ms > 0 ? mid.cpu_ms / mid.ms : 0.0);
      if (pods_alone) {
        std::vector<double> alone;
        for (const auto& r : mine)
          if (r.alone_ms >= 0) alone.push_back(r.alone_ms);
        if (alone.size() == mine.size()) {
          std::printf(
              "       the %d agent pods alone (created straight, %d in flight, no operator), after each run: "
              "p50 %.1f ms (min %.1f, max %.1f) = %.2f of the operator's p50\n",
              n, concurrency, Median(alone), *std::min_element(alone.begin(), alone.end()),
              *std::max_element(alone.begin(), alone.end()), Median(alone) / Median(ms));
        } else {
          std::printf("       the pods alone: a run failed (see stderr)\n");
        }
      }
      int restarts = 0;
      for (const auto& r : mine) restarts += r.watch_restarts;
      if (restarts > 0) {
        std::printf(
            "       the bench's pod watch was resumed %d time(s) over the runs (the API server ended it)\n",
            restarts);
      }
    }
    if (concurrencies.size() > 1) {
      std::printf("       p50 ratio to concurrency %d:", concurrencies[0]);
      std::vector<double> base;
      for (const auto& r : results)
        if (r.concurrency == concurrencies[0]) base.push_back(r.ms);
      for (size_t k = 1; k < concurrencies.size(); ++k) {
        std::vector<double> ms;
        for (const auto& r : results)
          if (r.concurrency == concurrencies[k]) ms.push_back(r.ms);
        std::printf(" %d: %.2f", concurrencies[k], Median(ms) / Median(base));
      }
      std::printf("\n");
    }
    std::fflush(stdout);
  }
  std::printf(
      "\np50/min/max_ms: job created -> a watch on the API server has seen the aggregator and every agent\n"
      "pod (N Node objects, no kubelets: pods need not run), over the runs; the other columns are the\n"
      "median run's. reconciles: passes until the controller went quiet; creating: passes that wrote\n"
      "something; reads/writes: the controller's requests until every pod existed (Events excluded;\n"
      "watches not counted); req/creating: (reads+writes)/creating; steady_writes: writes of one more\n"
      "pass with nothing changed (must be 0); bound_ms: job created -> the scheduler has bound every\n"
      "agent pod to its node (--wait-bound with ready nodes, else -1; not part of the goal).\n");
  return 0;
}

std::vector<int> ParseSizes(const std::string& s) {
  std::vector<int> out;
  size_t pos = 0;
  while (pos < s.size()) {
    size_t comma = s.find(',', pos);
    std::string item = s.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    int v = std::atoi(item.c_str());
    if (v <= 0) return {};
    out.push_back(v);
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  fedge::log::Init("bench", fedge::log::Level::kError);
  std::string kubeconfig;
  std::vector<int> sizes = {1, 10, 100};
  int runs = 3;
  std::vector<int> concurrencies = {ReconcilerOptions{}.apply_concurrency};
  bool ready_nodes = true, wait_bound = false, pods_alone = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    const char* v = i + 1 < argc ? argv[i + 1] : "";
    if (a == "--kubeconfig" && *v) {
      kubeconfig = argv[++i];
    } else if (a == "--nodes" && *v) {
      sizes = ParseSizes(argv[++i]);
    } else if (a == "--runs" && *v) {
      runs = std::atoi(argv[++i]);
    } else if (a == "--concurrency" && *v) {
      concurrencies = ParseSizes(argv[++i]);
    } else if (a == "--nodes-kind" && (std::string(v) == "ready" || std::string(v) == "bare")) {
      ready_nodes = std::string(argv[++i]) == "ready";
    } else if (a == "--wait-bound") {
      wait_bound = true;
    } else if (a == "--pods-alone") {
      pods_alone = true;
    } else {
      std::printf(
          "usage: fedge_bench_operator [--kubeconfig PATH] [--nodes 1,10,100] [--runs 3] [--concurrency "
          "%d[,C...]]\n"
          "  no --kubeconfig: in-process fake API server; with it: a real API server with the CRD.\n"
          "  --nodes: sizes; --runs: runs per size (p50 printed; real API server only);\n"
          "  --concurrency: requests a reconcile wave may have in flight (1 = one after another); with\n"
          "    several (real API server), the runs alternate between them and each gets its own row\n"
          "  --nodes-kind ready|bare (real API server): ready (default) registers each Node as a\n"
          "    kubelet would (Ready, capacity, a Lease renewed every 10 s) so the scheduler binds the\n"
          "    pods; bare registers Node objects without status (the scheduler fails every pod)\n"
          "  --wait-bound (ready nodes): also time until the scheduler has bound every agent pod\n"
          "  --pods-alone (real API server): after each run, create the same N agent pods straight (no\n"
          "    operator, Secrets or volumes; same concurrency) and time them: the floor of any design\n"
          "    that makes one pod per agent, printed with its ratio to the operator's p50\n",
          ReconcilerOptions{}.apply_concurrency);
      return a == "--help" ? 0 : 2;
    }
  }
  if (sizes.empty() || runs < 1 || concurrencies.empty()) {
    std::fprintf(stderr, "--nodes takes positive sizes separated by commas; --runs and --concurrency >= 1\n");
    return 2;
  }
  if (!kubeconfig.empty())
    return RealControlPlane(kubeconfig, sizes, runs, concurrencies, ready_nodes, wait_bound, pods_alone);
  const int concurrency = concurrencies.front();
  std::printf("%-6s %12s %10s %14s %14s %16s %16s\n", "nodes", "to_pods_ms", "reconciles", "writes",
              "req/reconcile", "steady_req(inf)", "steady_req(api)");
  for (int n : sizes) {
    FakeKubeClient client;
    for (int i = 0; i < n; ++i) client.Create(res::kNodes, "", Node(i)).ok();
    ControllerOptions opts;
    opts.workers = 2;
    opts.reconciler.apply_concurrency = concurrency;
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
