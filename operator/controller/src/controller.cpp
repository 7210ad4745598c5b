#include "fedge/op/controller.h"

#include "fedge/log.h"

namespace fedge::op {

ObjectPtr InformerCache::Get(const Resource& r, const std::string& ns, const std::string& name) {
  auto it = informers_.find(r.plural);
  if (it == informers_.end()) return nullptr;
  return it->second->Get(r.namespaced && !ns.empty() ? ns + "/" + name : name);
}

std::time_t InformerCache::PodsWatchedSince() const {
  auto it = informers_.find(res::kPods.plural);
  return it == informers_.end() ? 0 : it->second->synced_at();
}

std::vector<ObjectPtr> InformerCache::List(const Resource& r, const std::string& ns,
                                           const std::string& label_key, const std::string& label_value) {
  auto it = informers_.find(r.plural);
  if (it == informers_.end()) return {};
  std::vector<ObjectPtr> all =
      label_key.empty() ? it->second->List() : it->second->ListByLabel(label_key, label_value);
  if (ns.empty() || !r.namespaced) return all;
  std::vector<ObjectPtr> out;
  for (auto& o : all)
    if ((*o)["metadata"].value("namespace", "") == ns) out.push_back(std::move(o));
  return out;
}

JobController::JobController(KubeClient* client, ControllerOptions opts)
    : client_(client), opts_(std::move(opts)), queue_(opts_.clock) {
  if (opts_.registry) {
    auto& reg = *opts_.registry;
    m_reconcile_ = &prometheus::BuildCounter()
                        .Name("fedge_operator_reconcile_total")
                        .Help("Reconciles run")
                        .Register(reg)
                        .Add({});
    m_errors_ = &prometheus::BuildCounter()
                     .Name("fedge_operator_reconcile_errors_total")
                     .Help("Reconciles that returned an error and were requeued with backoff")
                     .Register(reg)
                     .Add({});
    m_duration_ =
        &prometheus::BuildHistogram()
             .Name("fedge_operator_reconcile_duration_seconds")
             .Help("Time per reconcile")
             .Register(reg)
             .Add({}, prometheus::Histogram::BucketBoundaries{0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5});
    m_depth_ = &prometheus::BuildGauge()
                    .Name("fedge_operator_workqueue_depth")
                    .Help("Job keys waiting in the work queue")
                    .Register(reg)
                    .Add({});
    m_watch_restarts_ = &prometheus::BuildCounter()
                             .Name("fedge_operator_watch_restarts_total")
                             .Help("Watch streams re-established (end of stream, error or 410 Gone)")
                             .Register(reg)
                             .Add({});
  }
  events_ = std::make_unique<EventRecorder>(client_, opts_.clock);
  reconciler_ = std::make_unique<JobReconciler>(client_, &cache_, events_.get(), opts_.reconciler);

  const std::string managed = "app.kubernetes.io/managed-by=fedge-operator";
  auto make = [&](const Resource& r, std::string ns, std::string selector) {
    InformerOptions io;
    io.ns = std::move(ns);
    io.label_selector = std::move(selector);
    if (m_watch_restarts_) io.on_watch_restart = [c = m_watch_restarts_] { c->Increment(); };
    informers_.push_back(std::make_unique<Informer>(client_, r, io));
    cache_.Add(informers_.back().get());
    return informers_.back().get();
  };
  jobs_ = make(res::kJobs, opts_.ns, "");
  Informer* pods = make(res::kPods, opts_.ns, managed);
  Informer* nodes = make(res::kNodes, "", "");
  std::vector<Informer*> children = {pods};
  for (const Resource* r :
       {&res::kSecrets, &res::kConfigMaps, &res::kServices, &res::kServiceAccounts, &res::kRoles,
        &res::kRoleBindings, &res::kPersistentVolumeClaims, &res::kNetworkPolicies}) {
    children.push_back(make(*r, opts_.ns, managed));
  }
  // The node volumes' PersistentVolumes: cluster-scoped, so no owner reference; their
  // labels name the job. Only a deletion matters (the job recreates a missing volume);
  // adds and binding updates are the operator's own doing and would only requeue no-ops.
  Informer* volumes = make(res::kPersistentVolumes, "", managed);
  volumes->AddHandlers(
      {[this](const ObjectPtr& o) { reconciler_->Seen(res::kPersistentVolumes, *o); },
       [this](const ObjectPtr&, const ObjectPtr& n) { reconciler_->Seen(res::kPersistentVolumes, *n); },
       [this](const ObjectPtr& o) {
         Json labels = (*o)["metadata"].value("labels", Json::object());
         std::string ns = labels.value(kLabelJobNamespace, ""), job = labels.value(kLabelJob, "");
         if (ns.empty() || job.empty() || (!opts_.ns.empty() && ns != opts_.ns)) return;
         queue_.Add(ns + "/" + job);
         UpdateDepth();
       }});

  auto key_of = [this](const ObjectPtr& o) {
    queue_.Add(ObjectKey(*o));
    UpdateDepth();
  };
  jobs_->AddHandlers({key_of,
                      [this, key_of](const ObjectPtr& old_obj, const ObjectPtr& new_obj) {
                        // Status-only writes (ours or the reporter's) need no reconcile
                        // unless something else changed.
                        Json a = *old_obj, b = *new_obj;
                        // ...except the reporter's checkpoint health, which the operator
                        // turns into the CheckpointFailing condition.
                        if (a.value("status", Json::object()).value("checkpoint", Json()) !=
                            b.value("status", Json::object()).value("checkpoint", Json())) {
                          key_of(new_obj);
                          return;
                        }
                        a.erase("status");
                        b.erase("status");
                        a["metadata"].erase("resourceVersion");
                        b["metadata"].erase("resourceVersion");
                        a["metadata"].erase("managedFields");
                        b["metadata"].erase("managedFields");
                        if (a != b) key_of(new_obj);
                      },
                      key_of});
  for (Informer* inf : children) {
    const Resource& r = inf->resource();
    inf->AddHandlers({[this, &r](const ObjectPtr& o) {
                        reconciler_->Seen(r, *o);
                        EnqueueOwner(o);
                        EnqueueDeferredCleanup(r, o);
                      },
                      [this, &r](const ObjectPtr&, const ObjectPtr& n) {
                        reconciler_->Seen(r, *n);
                        EnqueueOwner(n);
                        EnqueueDeferredCleanup(r, n);
                      },
                      [this, &r](const ObjectPtr& o) {
                        reconciler_->Gone(r, *o);
                        EnqueueOwner(o);
                        EnqueueDeferredCleanup(r, o);
                      }});
  }
  pods_ = pods;
  auto node_changed = [this](const ObjectPtr& a, const ObjectPtr& b) {
    // Only what selection and Degraded depend on: labels, readiness, schedulability.
    if ((*a)["metadata"].value("labels", Json::object()) !=
            (*b)["metadata"].value("labels", Json::object()) ||
        NodeReady(*a) != NodeReady(*b) ||
        (*a).value("spec", Json::object()).value("unschedulable", false) !=
            (*b).value("spec", Json::object()).value("unschedulable", false) ||
        (*a)["metadata"].contains("deletionTimestamp") != (*b)["metadata"].contains("deletionTimestamp")) {
      EnqueueAllJobs();
      EnqueueDeferredCleanups();
    }
  };
  nodes->AddHandlers({[this](const ObjectPtr&) {
                        EnqueueAllJobs();
                        EnqueueDeferredCleanups();
                      },
                      node_changed, [this](const ObjectPtr&) { EnqueueAllJobs(); }});
}

JobController::~JobController() { Stop(); }

void JobController::UpdateDepth() {
  if (m_depth_) m_depth_->Set(static_cast<double>(queue_.Len()));
}

void JobController::EnqueueOwner(const ObjectPtr& obj) {
  const Json& meta = (*obj)["metadata"];
  for (const auto& ref : meta.value("ownerReferences", Json::array())) {
    if (ref.value("kind", "") == "FederatedTrainingJob" && ref.value("controller", false)) {
      queue_.Add(meta.value("namespace", "") + "/" + ref.value("name", ""));
      UpdateDepth();
      return;
    }
  }
}

void JobController::EnqueueDeferredCleanup(const Resource& r, const ObjectPtr& obj) {
  // (Informers keep their own copy of the Resource: compare by name.)
  const bool is_pod = r.plural == res::kPods.plural;
  if (!is_pod && r.plural != res::kPersistentVolumeClaims.plural) return;
  if (!DeferredStateCleanup(*obj)) return;
  const Json& meta = (*obj)["metadata"];
  const std::string pod =
      is_pod ? meta.value("name", "")
             : meta.value("annotations", Json::object()).value(kAnnotationStateCleanupPod, "");
  if (pod.empty()) return;
  queue_.Add(std::string(kDeferredCleanupKeyPrefix) + meta.value("namespace", "") + "/" + pod);
  UpdateDepth();
}

void JobController::EnqueueDeferredCleanups() {
  if (!pods_) return;
  for (const auto& p : pods_->ListByLabel(kLabelStateCleanup, kStateCleanupDeferred))
    EnqueueDeferredCleanup(res::kPods, p);
}

void JobController::EnqueueAllJobs() {
  if (!jobs_) return;
  for (const auto& j : jobs_->List()) queue_.Add(ObjectKey(*j));
  UpdateDepth();
}

bool JobController::Synced() const {
  for (const auto& i : informers_)
    if (!i->HasSynced()) return false;
  return true;
}

Status JobController::Start(std::chrono::milliseconds sync_timeout) {
  for (auto& i : informers_) i->Start();
  auto deadline = std::chrono::steady_clock::now() + sync_timeout;
  for (auto& i : informers_) {
    auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0 || !i->WaitForSync(left)) {
      return UnavailableError("cache for " + i->resource().plural + " did not sync");
    }
  }
  log::Info("caches synced", {{"jobs", static_cast<int64_t>(jobs_->Size())}});
  for (int i = 0; i < opts_.workers; ++i) workers_.emplace_back([this] { Worker(); });
  started_ = true;
  return OkStatus();
}

void JobController::Stop() {
  queue_.ShutDown();
  for (auto& w : workers_)
    if (w.joinable()) w.join();  // in-flight reconciles finish
  workers_.clear();
  for (auto& i : informers_) i->Stop();
}

StatusOr<ReconcileResult> JobController::GuardedReconcile(const std::string& key) {
  // Reconcile reports errors as a Status; an exception escaping it is a bug (a JSON field of
  // an unexpected type, say). It must not end the worker thread or the process: the key is
  // requeued with backoff like any failure, and the log says what was thrown.
  try {
    const std::string prefix = kDeferredCleanupKeyPrefix;
    if (key.compare(0, prefix.size(), prefix) == 0)
      return reconciler_->ReconcileDeferredCleanup(key.substr(prefix.size()));
    return reconciler_->Reconcile(key);
  } catch (const std::exception& e) {
    log::Error("reconcile threw; requeued with backoff", {{"job", key}, {"exception", e.what()}});
    return InternalError(std::string("reconcile threw: ") + e.what());
  } catch (...) {
    log::Error("reconcile threw a non-standard exception; requeued with backoff", {{"job", key}});
    return InternalError("reconcile threw a non-standard exception");
  }
}

void JobController::Worker() {
  while (auto key = queue_.Get()) {
    UpdateDepth();
    auto t0 = std::chrono::steady_clock::now();
    StatusOr<ReconcileResult> result = GuardedReconcile(*key);
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ++reconciles_;
    if (m_reconcile_) m_reconcile_->Increment();
    if (m_duration_) m_duration_->Observe(secs);
    if (!result.ok() && IsConflict(result.status())) {
      // The cache was behind a write; the watch event that brings it up to date is on its way.
      log::Debug("reconcile raced a newer version; requeued", {{"job", *key}});
      queue_.AddRateLimited(*key);
    } else if (!result.ok()) {
      if (m_errors_) m_errors_->Increment();
      log::Warn(
          "reconcile failed; requeued with backoff",
          {{"job", *key}, {"error", result.status().ToString()}, {"requeues", queue_.NumRequeues(*key)}});
      queue_.AddRateLimited(*key);
    } else {
      if (result->actions > 0) ++writing_reconciles_;
      queue_.Forget(*key);
      if (result->requeue_after) queue_.AddAfter(*key, *result->requeue_after);
    }
    queue_.Done(*key);
    UpdateDepth();
  }
}

}  // namespace fedge::op
