#include "fedge/op/reconciler.h"

#include <algorithm>
#include <atomic>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

#include "fedge/job_spec.h"
#include "fedge/log.h"
#include "fedge/pki.h"

namespace fedge::op {

// ---------------------------------------------------------------------------------------
std::string FormatTime(std::time_t t) {
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::optional<std::time_t> ParseTime(const std::string& s) {
  std::tm tm{};
  if (!strptime(s.c_str(), "%Y-%m-%dT%H:%M:%S", &tm)) return std::nullopt;
  return timegm(&tm);
}

const Json* FindCondition(const Json& conditions, const std::string& type) {
  if (!conditions.is_array()) return nullptr;
  for (const auto& c : conditions)
    if (c.value("type", "") == type) return &c;
  return nullptr;
}

void SetCondition(Json& conditions, const std::string& type, const std::string& status,
                  const std::string& reason, const std::string& message, int64_t generation,
                  const std::string& now) {
  if (!conditions.is_array()) conditions = Json::array();
  for (auto& c : conditions) {
    if (c.value("type", "") != type) continue;
    if (c.value("status", "") != status) c["lastTransitionTime"] = now;
    c["status"] = status;
    c["reason"] = reason;
    c["message"] = message;
    c["observedGeneration"] = generation;
    return;
  }
  conditions.push_back({{"type", type},
                        {"status", status},
                        {"reason", reason},
                        {"message", message},
                        {"observedGeneration", generation},
                        {"lastTransitionTime", now}});
}

// ---------------------------------------------------------------------------------------
ObjectPtr ClientCache::Get(const Resource& r, const std::string& ns, const std::string& name) {
  auto got = client_->Get(r, ns, name);
  if (!got.ok()) return nullptr;
  return std::make_shared<const Json>(std::move(*got));
}

std::vector<ObjectPtr> ClientCache::List(const Resource& r, const std::string& ns,
                                         const std::string& label_key, const std::string& label_value) {
  ListOptions lo;
  if (!label_key.empty()) lo.label_selector = label_key + "=" + label_value;
  auto got = ListAll(*client_, r, ns, lo);
  std::vector<ObjectPtr> out;
  if (!got.ok()) return out;
  for (auto& item : got->items) out.push_back(std::make_shared<const Json>(std::move(item)));
  return out;
}

void EventRecorder::Record(const Json& obj, const std::string& type, const std::string& reason,
                           const std::string& message) {
  const Json& meta = obj["metadata"];
  std::string ns = meta.value("namespace", "default");
  std::string now = clock_->NowRfc3339();
  char suffix[32];
  std::snprintf(suffix, sizeof(suffix), "%llx%04llx", static_cast<unsigned long long>(clock_->WallNow()),
                static_cast<unsigned long long>(seq_++ & 0xffff));
  Json ev = {{"apiVersion", "v1"},
             {"kind", "Event"},
             {"metadata", {{"name", meta.value("name", "") + "." + suffix}, {"namespace", ns}}},
             {"involvedObject",
              {{"apiVersion", obj.value("apiVersion", "")},
               {"kind", obj.value("kind", "")},
               {"name", meta.value("name", "")},
               {"namespace", ns},
               {"uid", meta.value("uid", "")},
               {"resourceVersion", meta.value("resourceVersion", "")}}},
             {"reason", reason},
             {"message", message},
             {"type", type},
             {"source", {{"component", "fedge-operator"}}},
             {"reportingComponent", "fedge.io/operator"},
             {"firstTimestamp", now},
             {"lastTimestamp", now},
             {"count", 1}};
  auto s = client_->Create(res::kEvents, ns, ev);
  if (!s.ok()) log::Warn("event not recorded", {{"reason", reason}, {"error", s.status().ToString()}});
}

// ---------------------------------------------------------------------------------------
// Apply: executes a Plan (plan.h).

// State of one Apply.
struct JobReconciler::Run {
  std::string ns, name;
  Json job;  // as observed; metadata.resourceVersion follows our own job writes
  int64_t generation = 0;
  std::time_t now = 0;
  Json old_status;  // as read
  Json status;      // operator-owned fields to write
  std::vector<PlannedEvent> events;
  Credentials creds;  // the job's credentials, once known (cached or synced)
  IssuerKeys issuer;  // Observed::issuer
};

// What one action did.
struct JobReconciler::Outcome {
  Status status;
  bool took_effect = false;  // the object was created/deleted by this call (not already so)
  std::optional<std::chrono::seconds> requeue_after;
  std::vector<PlannedEvent> events;
  Json result;                       // the API's answer to an apply or create
  std::optional<Credentials> creds;  // kSyncCredentials: the job's credentials as written
  std::string conflict;              // an object under a child's name is not the job's (NotOurs)
};

JobReconciler::JobReconciler(KubeClient* client, ObjectCache* cache, EventRecorder* events,
                             ReconcilerOptions opts)
    : client_(client), cache_(cache), events_(events), opts_(std::move(opts)) {}

std::optional<Observed> JobReconciler::Observe(const std::string& ns, const std::string& name) {
  ObjectPtr job = cache_->Get(res::kJobs, ns, name);
  if (!job) return std::nullopt;
  Observed o;
  o.ns = ns;
  o.name = name;
  o.job = *job;
  o.now = opts_.clock->WallNow();
  o.nodes = cache_->List(res::kNodes, "");
  o.pods = cache_->List(res::kPods, ns, kLabelJob, name);
  o.pods_watched_since = cache_->PodsWatchedSince();
  {
    std::lock_guard<std::mutex> lock(gone_mu_);
    if (auto it = gone_agent_pods_.find(ns + "/" + name); it != gone_agent_pods_.end()) {
      auto& gone = it->second;
      DropLapsedLocked(gone, o.now);
      for (const auto& g : gone) o.gone_agent_pods.push_back(g.first);
      if (gone.empty()) gone_agent_pods_.erase(it);
    }
  }
  for (const Resource* r :
       {&res::kSecrets, &res::kConfigMaps, &res::kServices, &res::kServiceAccounts, &res::kRoles,
        &res::kRoleBindings, &res::kPersistentVolumeClaims, &res::kNetworkPolicies}) {
    for (auto& obj : cache_->List(*r, ns, kLabelJob, name)) {
      o.children[{r->plural, (*obj)["metadata"].value("name", "")}] = std::move(obj);
    }
  }
  for (auto& pv : cache_->List(res::kPersistentVolumes, "", kLabelJob, name)) {
    o.children[{res::kPersistentVolumes.plural, (*pv)["metadata"].value("name", "")}] = std::move(pv);
  }
  // A checkpoint claim the user named carries no label of ours.
  std::string claim = CheckpointClaimName(o.job);
  if (!claim.empty() && !o.Find(res::kPersistentVolumeClaims, claim)) {
    if (ObjectPtr pvc = cache_->Get(res::kPersistentVolumeClaims, ns, claim)) {
      o.children[{res::kPersistentVolumeClaims.plural, claim}] = std::move(pvc);
    }
  }
  std::tie(o.issuer, o.issuer_error) = Issuer();
  if (opts_.desired.network_policies && opts_.desired.aggregator_egress_policy) {
    std::tie(o.api_server_endpoints, o.api_server_error) = ApiServer();
  }
  AddUnseenCreates(o);
  SetAsideForeignChildren(o);
  return o;
}

StatusOr<IssuerKeys> ReadIssuerKeys(KubeClient& client) {
  IssuerKeys out;
  auto discovery = client.GetPath("/.well-known/openid-configuration");
  if (!discovery.ok()) return discovery.status().WithContext("GET /.well-known/openid-configuration");
  if (!discovery->is_object() || !(*discovery)["issuer"].is_string() ||
      (*discovery)["issuer"].get<std::string>().empty()) {
    return FailedPreconditionError("GET /.well-known/openid-configuration: no issuer in the document");
  }
  out.issuer = (*discovery)["issuer"].get<std::string>();
  auto jwks = client.GetPath("/openid/v1/jwks");
  if (!jwks.ok()) return jwks.status().WithContext("GET /openid/v1/jwks");
  if (!jwks->is_object() || !(*jwks)["keys"].is_array() || (*jwks)["keys"].empty()) {
    return FailedPreconditionError("GET /openid/v1/jwks: no keys in the key set");
  }
  out.jwks = jwks->dump();
  return out;
}

StatusOr<std::vector<ApiServerEndpoint>> ReadApiServerEndpoints(KubeClient& client) {
  const std::string what = std::string("GET ") + kApiServerEndpointSlicePath;
  auto slice = client.GetPath(kApiServerEndpointSlicePath);
  if (!slice.ok()) {
    const StatusCode code = slice.status().code();
    const char* why = code == StatusCode::kPermissionDenied
                          ? " (the operator needs get on endpointslices \"kubernetes\" in namespace default, "
                            "as the chart's Role grants; until then the aggregators' egress stays open)"
                      : code == StatusCode::kNotFound
                          ? " (the cluster lists no address for its API server, e.g. one that listens on "
                            "loopback only; the aggregators' egress stays open)"
                          : " (the aggregators' egress stays open until it is read)";
    return slice.status().WithContext(what + why);
  }
  auto endpoints = ParseApiServerEndpoints(*slice);
  if (!endpoints.ok()) return endpoints.status().WithContext(what);
  return endpoints;
}

std::pair<std::vector<ApiServerEndpoint>, std::string> JobReconciler::ApiServer() {
  const Clock::TimePoint now = opts_.clock->Now();
  std::lock_guard<std::mutex> lock(api_server_mu_);
  if (api_server_read_ && now - api_server_read_at_ < opts_.api_server_endpoints_ttl) {
    return {api_server_, api_server_error_};
  }
  api_server_read_ = true;
  api_server_read_at_ = now;
  auto endpoints = ReadApiServerEndpoints(*client_);
  if (endpoints.ok()) {
    if (*endpoints != api_server_ || !api_server_error_.empty()) {
      std::string list;
      for (const auto& e : *endpoints)
        list += (list.empty() ? "" : ",") + e.ip + ":" + std::to_string(e.port);
      log::Info("API server endpoints read (the aggregators' egress)", {{"endpoints", list}});
    }
    api_server_ = std::move(*endpoints);
    api_server_error_.clear();
  } else {
    const std::string error = endpoints.status().message();
    if (error != api_server_error_) {
      log::Warn("cannot read the API server's endpoints",
                {{"error", error}, {"have_endpoints", !api_server_.empty()}});
    }
    api_server_error_ = error;
  }
  return {api_server_, api_server_error_};
}

std::pair<IssuerKeys, std::string> JobReconciler::Issuer() {
  const Clock::TimePoint now = opts_.clock->Now();
  std::lock_guard<std::mutex> lock(issuer_mu_);
  // Known keys are read again every few minutes (the API server's keys rotate rarely, and
  // the kubelet carries a changed trust ConfigMap to the aggregators); after a failure,
  // the next pass that asks tries again, at most every few seconds.
  const auto ttl = issuer_.jwks.empty() ? std::chrono::seconds(5) : opts_.issuer_keys_ttl;
  if (issuer_read_ && now - issuer_read_at_ < ttl) return {issuer_, issuer_error_};
  issuer_read_ = true;
  issuer_read_at_ = now;
  auto keys = ReadIssuerKeys(*client_);
  if (keys.ok()) {
    if (keys->jwks != issuer_.jwks || keys->issuer != issuer_.issuer) {
      log::Info("service-account issuer keys read",
                {{"issuer", keys->issuer}, {"bytes", static_cast<int64_t>(keys->jwks.size())}});
    }
    issuer_ = std::move(*keys);
    issuer_error_.clear();
  } else {
    // Keys read before stay in use: an API server that briefly refuses does not stop jobs.
    issuer_error_ = keys.status().message();
    log::Warn("cannot read the service-account issuer keys",
              {{"error", issuer_error_}, {"have_keys", !issuer_.jwks.empty()}});
  }
  return {issuer_, issuer_.jwks.empty() ? issuer_error_ : ""};
}

namespace {

std::string Uid(const Json& obj) {
  auto m = obj.find("metadata");
  return m != obj.end() && m->is_object() ? m->value("uid", "") : "";
}

}  // namespace

void JobReconciler::AddUnseenCreates(Observed& o) {
  const std::string key = o.ns + "/" + o.name;
  const std::string job_uid = Uid(o.job);
  const Clock::TimePoint now = opts_.clock->Now();
  std::lock_guard<std::mutex> lock(unseen_mu_);
  auto it = unseen_.find(key);
  if (it == unseen_.end()) return;
  if (it->second.job_uid != job_uid) {  // the job was deleted and made again under its name
    unseen_.erase(it);
    return;
  }
  auto& objects = it->second.objects;
  for (auto e = objects.begin(); e != objects.end();) {
    const auto& [plural, name] = e->first;
    const ObjectPtr& created = e->second.first;
    const bool pod = plural == res::kPods.plural;
    ObjectPtr* slot = nullptr;
    if (pod) {
      for (auto& p : o.pods)
        if ((*p)["metadata"].value("name", "") == name) slot = &p;
    } else if (auto c = o.children.find(e->first); c != o.children.end()) {
      slot = &c->second;
    }
    if ((slot && Uid(**slot) == Uid(*created)) || e->second.second <= now) {
      e = objects.erase(e);  // the cache has caught up, or it never will
      continue;
    }
    // Absent, or an older object of that name (ours was created after it was gone).
    if (slot) {
      *slot = created;
    } else if (pod) {
      o.pods.push_back(created);
    } else {
      o.children[e->first] = created;
    }
    const auto left =
        std::chrono::duration_cast<std::chrono::seconds>(e->second.second - now) + std::chrono::seconds(1);
    if (!o.unseen_creates_expire || left < *o.unseen_creates_expire) o.unseen_creates_expire = left;
    ++e;
  }
  if (objects.empty()) unseen_.erase(it);
}

void JobReconciler::Seen(const Resource& r, const Json& obj) {
  const std::string uid = Uid(obj);
  if (uid.empty()) return;
  const Json& meta = obj["metadata"];
  const std::string name = meta.value("name", "");
  std::lock_guard<std::mutex> lock(unseen_mu_);
  for (auto it = unseen_.begin(); it != unseen_.end();) {
    auto e = it->second.objects.find({r.plural, name});
    if (e != it->second.objects.end() && Uid(*e->second.first) == uid) it->second.objects.erase(e);
    if (it->second.objects.empty()) {
      it = unseen_.erase(it);
    } else {
      ++it;
    }
  }
}

void JobReconciler::DropLapsedLocked(std::vector<std::pair<ObjectPtr, std::time_t>>& gone,
                                     std::time_t now) const {
  // As long as RevokedAgentPods keeps an entry: every token of the pod has expired since.
  const std::time_t keep = kAgentTokenExpirationSeconds + opts_.desired.agent_session_grace_s + 60;
  gone.erase(std::remove_if(gone.begin(), gone.end(), [&](const auto& g) { return g.second + keep <= now; }),
             gone.end());
}

void JobReconciler::Gone(const Resource& r, const Json& obj) {
  if (r.plural != res::kPods.plural) return;
  const Json& meta = obj["metadata"];
  const Json labels = meta.value("labels", Json::object());
  const std::string job = labels.value(kLabelJob, "");
  if (job.empty() || labels.value(kLabelRole, "") != "agent" || Uid(obj).empty()) return;
  const std::time_t now = opts_.clock->WallNow();
  Json pod = {{"metadata",
               {{"name", meta.value("name", "")},
                {"uid", Uid(obj)},
                {"labels", {{kLabelRole, "agent"}}},
                {"annotations",
                 {{kAnnotationNode, meta.value("annotations", Json::object()).value(kAnnotationNode, "")}}},
                {"deletionTimestamp", meta.value("deletionTimestamp", FormatTime(now))}}}};
  std::lock_guard<std::mutex> lock(gone_mu_);
  if (now - gone_swept_ >= 60) {
    // Jobs that were deleted are observed no more: their entries lapse here.
    gone_swept_ = now;
    for (auto it = gone_agent_pods_.begin(); it != gone_agent_pods_.end();) {
      DropLapsedLocked(it->second, now);
      it = it->second.empty() ? gone_agent_pods_.erase(it) : std::next(it);
    }
  }
  auto& gone = gone_agent_pods_[meta.value("namespace", "") + "/" + job];
  DropLapsedLocked(gone, now);
  if (gone.size() >= kMaxRevokedAgentPods) gone.erase(gone.begin());
  gone.emplace_back(std::make_shared<const Json>(std::move(pod)), now);
}

void JobReconciler::RecordCreates(const Observed& o, const std::vector<const Action*>& wave,
                                  const std::vector<Outcome>& out) {
  if (cache_->Live()) return;
  const Clock::TimePoint until = opts_.clock->Now() + opts_.unseen_create_ttl;
  std::lock_guard<std::mutex> lock(unseen_mu_);
  for (size_t i = 0; i < wave.size(); ++i) {
    const Action& a = *wave[i];
    if (!out[i].took_effect) continue;
    if (a.kind == ActionKind::kCreate && out[i].result.is_object() && !Uid(out[i].result).empty()) {
      // The watch event may have come before the create's answer: the informer stores an
      // object before its handlers run (Seen), so one found here was seen already.
      if (ObjectPtr cached = cache_->Get(*a.resource, a.ns, a.name);
          cached && Uid(*cached) == Uid(out[i].result))
        continue;
      UnseenCreates& u = unseen_[o.ns + "/" + o.name];
      if (u.job_uid != Uid(o.job)) u = UnseenCreates{Uid(o.job), {}};
      u.objects[{a.resource->plural, a.name}] = {std::make_shared<const Json>(out[i].result), until};
    } else if (a.kind == ActionKind::kDelete) {
      auto it = unseen_.find(o.ns + "/" + o.name);
      if (it != unseen_.end()) it->second.objects.erase({a.resource->plural, a.name});
    }
  }
}

StatusOr<ReconcileResult> JobReconciler::Reconcile(const std::string& key) {
  auto slash = key.find('/');
  if (slash == std::string::npos) return InvalidArgumentError("key must be namespace/name: " + key);
  std::optional<Observed> observed = Observe(key.substr(0, slash), key.substr(slash + 1));
  if (!observed) {
    std::lock_guard<std::mutex> lock(unseen_mu_);
    unseen_.erase(key);
    return ReconcileResult{};  // gone: owner references take the children along
  }
  Plan plan = PlanReconcile(*observed, PlanOptions{opts_.desired});
  // Until the cache shows what an earlier pass created, or that entry expires.
  if (const auto& d = observed->unseen_creates_expire; d && (!plan.requeue_after || *d < *plan.requeue_after))
    plan.requeue_after = *d;
  return Apply(*observed, std::move(plan));
}

StatusOr<ReconcileResult> JobReconciler::ReconcileDeferredCleanup(const std::string& key) {
  auto slash = key.find('/');
  if (slash == std::string::npos) return InvalidArgumentError("key must be namespace/name: " + key);
  const std::string ns = key.substr(0, slash), pod_name = key.substr(slash + 1);
  ObjectPtr pod = cache_->Get(res::kPods, ns, pod_name);
  ObjectPtr claim;
  for (auto& c : cache_->List(res::kPersistentVolumeClaims, ns, kLabelStateCleanup, kStateCleanupDeferred)) {
    if ((*c)["metadata"].value("annotations", Json::object()).value(kAnnotationStateCleanupPod, "") ==
        pod_name)
      claim = c;
  }
  if (!pod && !claim) return ReconcileResult{};
  const Json& meta = (claim ? *claim : *pod)["metadata"];
  const std::string node_name = meta.value("annotations", Json::object()).value(kAnnotationNode, "");
  const std::string job = meta.value("labels", Json::object()).value(kLabelJob, "");
  // While its job's finalizer is still there, it is making the record (the claim may show
  // before the pod does): nothing is decided until it is done. A job the garbage collector
  // still holds once the finalizer is done (a foreground deletion waits for the agent pod
  // of a node that is away) does not hold the other nodes' records.
  const std::string job_uid = meta.value("annotations", Json::object()).value(kAnnotationJobUid, "");
  if (ObjectPtr j = cache_->Get(res::kJobs, ns, job); j && (*j)["metadata"].value("uid", "") == job_uid) {
    const Json fin = (*j)["metadata"].value("finalizers", Json::array());
    if (std::find(fin.begin(), fin.end(), kFinalizer) != fin.end())
      return ReconcileResult{std::chrono::seconds(5), 0};
  }
  if (!pod) {
    // Not in the cache is not gone: a pod the cache has not shown yet must not be taken
    // for one deleted before it ran.
    auto live = client_->Get(res::kPods, ns, pod_name);
    if (live.ok()) {
      pod = std::make_shared<const Json>(std::move(*live));
    } else if (!IsNotFound(live.status())) {
      return live.status().WithContext("get pods/" + pod_name + " (deferred state cleanup)");
    }
  }
  ObjectPtr volume;
  if (claim) {
    const std::string pv = (*claim).value("spec", Json::object()).value("volumeName", "");
    if (!pv.empty()) volume = cache_->Get(res::kPersistentVolumes, "", pv);
  }
  ObjectPtr node = node_name.empty() ? nullptr : cache_->Get(res::kNodes, "", node_name);
  const bool ready = node && !(*node)["metadata"].contains("deletionTimestamp") && NodeReady(*node);
  bool agent = false;
  for (const auto& p : cache_->List(res::kPods, ns, kLabelJob, job)) {
    const Json& m = (*p)["metadata"];
    if (m.value("labels", Json::object()).value(kLabelRole, "") != "agent") continue;
    agent = agent || m.value("annotations", Json::object()).value(kAnnotationNode, "") == node_name ||
            (*p).value("spec", Json::object()).value("nodeName", "") == node_name;
  }
  DeferredCleanupPlan plan = PlanDeferredCleanup(pod, claim, volume, ready, agent);
  ReconcileResult result{plan.requeue_after, 0};
  for (const Action& a : plan.actions) {
    Status s;
    if (a.kind == ActionKind::kDelete) {
      s = client_->Delete(*a.resource, a.ns, a.name, a.del);
      if (IsNotFound(s) || (IsConflict(s) && !a.del.precondition_uid.empty())) s = OkStatus();
    } else {
      s = client_->MergePatch(*a.resource, a.ns, a.name, a.object).status();
      if (IsNotFound(s)) s = OkStatus();
    }
    if (!s.ok()) return s.WithContext(a.Describe() + " (deferred state cleanup of " + ns + "/" + job + ")");
    ++result.actions;
    if (a.kind == ActionKind::kMergePatch)
      log::Info("deferred state cleanup: node back, pod released",
                {{"job", ns + "/" + job}, {"node", node_name}, {"pod", a.name}});
    for (const auto& e : a.on_success) events_->Record(plan.about, e.type, e.reason, e.message);
  }
  return result;
}

void JobReconciler::RunWave(Run& run, const std::vector<const Action*>& actions, std::vector<Outcome>& out) {
  out.assign(actions.size(), Outcome{});
  const size_t workers = std::min(actions.size(), static_cast<size_t>(std::max(1, opts_.apply_concurrency)));
  if (workers <= 1) {
    for (size_t i = 0; i < actions.size(); ++i) out[i] = Execute(run, *actions[i]);
    return;
  }
  // Bounded concurrency: `workers` threads take the next action until none is left. Each
  // writes only its own Outcome; `run` is read-only during a wave.
  std::atomic<size_t> next{0};
  auto work = [&] {
    for (size_t i = next++; i < actions.size(); i = next++) out[i] = Execute(run, *actions[i]);
  };
  std::vector<std::thread> threads;
  threads.reserve(workers - 1);
  for (size_t t = 1; t < workers; ++t) threads.emplace_back(work);
  work();
  for (auto& t : threads) t.join();
}

namespace {

// The status for an object found under a child's name that is not the job's (`why`, from
// NotTheJobs); kept in *conflict (the first) for the job's Created condition.
Status NotOurs(const Resource& r, const std::string& name, const std::string& why, std::string* conflict) {
  const std::string what = r.plural + "/" + name;
  Status s = OkStatus();
  if (why.rfind("it belongs to FederatedTrainingJob", 0) == 0) {
    // A deleted job of this name whose children are not collected yet (it goes), or a job
    // whose children's names collide with this one's.
    s = UnavailableError(
        what + " is not this job's: " + why +
        ". Waiting for it to go (a deleted job of the same name, until the garbage collector "
        "removes it; a job whose children's names collide with this job's, until one is renamed)");
  } else {
    s = FailedPreconditionError(
        what + " exists and is not this job's (" + why +
        "): the operator does not take over objects it did not create. Rename or delete "
        "it, or rename the job");
  }
  if (conflict && conflict->empty()) *conflict = s.message();
  return s;
}

}  // namespace

JobReconciler::Outcome JobReconciler::Execute(const Run& run, const Action& a) {
  Outcome o;
  bool gone = false;  // a patch found nothing to patch: an earlier pass did it (its events too)
  try {
    switch (a.kind) {
      case ActionKind::kApply: {
        if (a.verify_owner) {
          auto live = client_->Get(*a.resource, a.ns, a.name);
          if (live.ok()) {
            if (std::string why = NotTheJobs(*live, run.job); !why.empty()) {
              o.status = NotOurs(*a.resource, a.name, why, &o.conflict);
              break;
            }
          } else if (!IsNotFound(live.status())) {
            o.status =
                live.status().WithContext("get " + a.resource->plural + "/" + a.name + " before apply");
            break;
          }
        }
        auto applied =
            client_->Apply(*a.resource, a.ns, a.name, a.object, {kFieldManager, /*force=*/true, ""});
        o.status = applied.status().WithContext("apply " + a.resource->plural + "/" + a.name);
        if (applied.ok()) {
          o.took_effect = true;
          o.result = std::move(*applied);
        }
        break;
      }
      case ActionKind::kCreate: {
        auto c = client_->Create(*a.resource, a.ns, a.object);
        if (IsAlreadyExists(c.status())) {
          o.status = CheckExisting(run, *a.resource, a.ns, a.name, &o);
          break;
        }
        o.status = c.status().WithContext("create " + a.resource->plural + "/" + a.name);
        o.took_effect = c.ok();
        if (c.ok()) o.result = std::move(*c);
        break;
      }
      case ActionKind::kDelete: {
        Status s = client_->Delete(*a.resource, a.ns, a.name, a.del);
        // NotFound: already gone; Conflict on a uid precondition: already replaced.
        if (IsNotFound(s) || (IsConflict(s) && !a.del.precondition_uid.empty())) break;
        o.status = s.WithContext("delete " + a.resource->plural + "/" + a.name);
        o.took_effect = s.ok();
        break;
      }
      case ActionKind::kMergePatch: {
        auto s = client_->MergePatch(*a.resource, a.ns, a.name, a.object);
        // The finalizer's patch of a job already gone: a pass that ran on a cache behind the
        // deletion (its events were recorded by the pass that removed the finalizer).
        gone = IsNotFound(s.status());
        if (gone) break;
        o.status = s.status().WithContext("patch " + a.resource->plural + "/" + a.name);
        o.took_effect = s.ok();
        break;
      }
      case ActionKind::kSyncCredentials:
        o.status = SyncCredentials(run, &o);
        break;
      case ActionKind::kSyncTrust:
        o.status = SyncTrust(run, a.object.value(kRevokedPodsKey, std::string(kNoRevokedPods)), &o);
        break;
      case ActionKind::kSyncApiToken:
        o.status = SyncApiToken(run, &o);
        break;
    }
  } catch (const std::exception& e) {
    // A bug, not an API error: report it as this action's failure rather than lose the pass.
    o.status = InternalError(a.Describe() + ": " + e.what());
    o.took_effect = false;
  }
  if (o.status.ok() && !gone) o.events.insert(o.events.end(), a.on_success.begin(), a.on_success.end());
  return o;
}

Status JobReconciler::CheckExisting(const Run& run, const Resource& r, const std::string& ns,
                                    const std::string& name, Outcome* out) {
  auto live = client_->Get(r, ns, name);
  if (IsNotFound(live.status())) {
    return UnavailableError(r.plural + "/" + name + " existed at create and is gone now; retrying");
  }
  if (!live.ok()) return live.status().WithContext("get " + r.plural + "/" + name + " after AlreadyExists");
  if (std::string why = NotTheJobs(*live, run.job); !why.empty())
    return NotOurs(r, name, why, &out->conflict);
  return OkStatus();  // ours: the cache lags behind an earlier write
}

StatusOr<ReconcileResult> JobReconciler::Apply(const Observed& observed, Plan plan) {
  Run run;
  run.ns = observed.ns;
  run.name = observed.name;
  run.job = observed.job;
  run.generation = run.job["metadata"].value("generation", static_cast<int64_t>(1));
  run.now = observed.now;
  run.old_status = observed.job.value("status", Json::object());
  if (!run.old_status.is_object()) run.old_status = Json::object();
  run.status = std::move(plan.status);
  // The job's credentials as cached; kSyncCredentials replaces them before the agents' wave.
  if (ObjectPtr s = observed.Find(res::kSecrets, SecretName(observed.job)))
    run.creds = CredentialsFromSecret(*s);
  run.issuer = observed.issuer;

  std::optional<std::chrono::seconds> requeue = plan.requeue_after;
  auto requeue_after = [&](std::chrono::seconds d) {
    if (d < std::chrono::seconds(1)) d = std::chrono::seconds(1);
    if (!requeue || d < *requeue) requeue = d;
  };
  int missed_restarts = 0;  // planned restarts whose pod deletion did not happen
  bool started = false;     // a pod was created
  Status failed = OkStatus();
  std::vector<PlannedEvent> action_events;
  std::string conflict;  // the first object found under a child's name that is not the job's
  auto run_waves = [&](Wave from, Wave to) {
    for (int w = static_cast<int>(from); w <= static_cast<int>(to); ++w) {
      std::vector<const Action*> wave;
      for (const auto& a : plan.actions)
        if (static_cast<int>(a.wave) == w) wave.push_back(&a);
      if (wave.empty()) continue;
      if (!failed.ok()) {  // an earlier wave failed: nothing of this one happens
        for (const Action* a : wave) missed_restarts += a->counts_restart;
        continue;
      }
      std::vector<Outcome> out;
      RunWave(run, wave, out);
      RecordCreates(observed, wave, out);
      for (size_t i = 0; i < wave.size(); ++i) {
        const Action& a = *wave[i];
        Outcome& o = out[i];
        if (a.counts_restart && !o.took_effect) ++missed_restarts;
        if (a.starts_job && o.took_effect) started = true;
        if (a.takes_job_version && o.status.ok() && o.result.is_object()) {
          run.job["metadata"]["resourceVersion"] = o.result["metadata"].value("resourceVersion", "");
        }
        if (o.creds) run.creds = std::move(*o.creds);
        if (!o.conflict.empty() && conflict.empty()) conflict = o.conflict;
        if (o.requeue_after) requeue_after(*o.requeue_after);
        action_events.insert(action_events.end(), o.events.begin(), o.events.end());
        if (!o.status.ok() && failed.ok()) failed = o.status;
      }
    }
  };
  run_waves(Wave::kJob, Wave::kPods);
  if (!conflict.empty() && run.status.is_object()) {
    // Said in the job's status (and an event when it changes), not only in the log. From
    // the condition as stored, so that its lastTransitionTime holds while it stays False.
    const Json old_conditions = run.old_status.value("conditions", Json::array());
    const Json* before = FindCondition(old_conditions, "Created");
    const bool changed =
        !before || before->value("reason", "") != "ChildConflict" || before->value("message", "") != conflict;
    Json& conditions = run.status["conditions"];
    if (!conditions.is_array()) conditions = Json::array();
    for (auto it = conditions.begin(); it != conditions.end(); ++it) {
      if (it->value("type", "") != "Created") continue;
      if (before) {
        *it = *before;
      } else {
        conditions.erase(it);
      }
      break;
    }
    SetCondition(conditions, "Created", "False", "ChildConflict", conflict, run.generation,
                 FormatTime(run.now));
    if (changed) action_events.push_back({"Warning", "ChildConflict", conflict});
    // The plan's own Created transition did not happen.
    plan.events.erase(std::remove_if(plan.events.begin(), plan.events.end(),
                                     [](const PlannedEvent& e) { return e.reason == "ChildrenCreated"; }),
                      plan.events.end());
  }

  // The status reflects what happened: restarts only for pods actually deleted, startTime
  // only once a pod was created.
  if (missed_restarts > 0) {
    run.status["restarts"] = std::max(0, run.status.value("restarts", 0) - missed_restarts);
    if (run.status["restarts"] == 0 && !run.old_status.contains("restarts")) run.status.erase("restarts");
  }
  if (!started && !run.old_status.contains("startTime")) run.status.erase("startTime");
  run.events = std::move(action_events);
  run.events.insert(run.events.end(), plan.events.begin(), plan.events.end());

  if (plan.write_status) {
    Status written = WriteStatus(run);
    if (!failed.ok()) {
      // What the pass did before the failure stays done, and the status says so (a failed
      // pod it deleted is counted); the action's error is what the controller sees.
      if (!written.ok() && !IsConflict(written)) {
        log::Warn("status write after a failed pass failed",
                  {{"job", run.ns + "/" + run.name}, {"error", written.ToString()}});
      }
      return failed;
    }
    if (!written.ok()) return written;
  } else {
    RecordEvents(run);
    if (!failed.ok()) return failed;
  }
  // Its events (the finalizer's outcome) are recorded after it: the pass's others are.
  action_events.clear();
  run_waves(Wave::kAfterStatus, Wave::kAfterStatus);
  for (const auto& e : action_events) events_->Record(run.job, e.type, e.reason, e.message);
  if (!failed.ok()) return failed;
  return ReconcileResult{requeue, static_cast<int>(plan.actions.size())};
}

Status JobReconciler::SyncCredentials(const Run& run, Outcome* out) {
  const Json& job = run.job;
  // Read the live secret: a lagging cache must never make us mint a second CA, which
  // the agents' mounted trust would not match.
  Credentials creds;
  bool exists = false;
  auto live = client_->Get(res::kSecrets, run.ns, SecretName(job));
  if (live.ok()) {
    // Another job's CA (or a Secret of the user's) are never taken over.
    if (std::string why = NotTheJobs(*live, job); !why.empty())
      return NotOurs(res::kSecrets, SecretName(job), why, &out->conflict);
  }
  if (live.ok()) {
    creds = CredentialsFromSecret(*live);
    exists = !creds.ca_crt.empty();
  } else if (!IsNotFound(live.status())) {
    return live.status();
  }
  std::time_t serving_renew_at = 0;
  const std::string serving_stale = exists ? ServingCertStale(creds, run.now, &serving_renew_at) : "";
  if (exists && serving_stale.empty()) {
    out->creds = std::move(creds);
    return OkStatus();  // the cache was behind
  }
  const std::string svc = AggregatorName(job);
  auto issue_serving = [&](const pki::KeyPair& ca) {
    return pki::IssueServingCert(
        ca, svc,
        {svc, svc + "." + run.ns, svc + "." + run.ns + ".svc", svc + "." + run.ns + ".svc.cluster.local"},
        run.now);
  };
  if (!exists) {
    FEDGE_ASSIGN_OR_RETURN(pki::KeyPair ca, pki::GenerateCa("fedge job " + run.ns + "/" + run.name, run.now));
    FEDGE_ASSIGN_OR_RETURN(pki::KeyPair tls, issue_serving(ca));
    creds.ca_crt = ca.cert_pem;
    creds.ca_key = ca.key_pem;
    creds.tls_crt = tls.cert_pem;
    creds.tls_key = tls.key_pem;
  } else if (!serving_stale.empty()) {
    // Same CA (the agents trust it), new serving certificate; the aggregator re-reads
    // its mounted files (--tls-cert), so no pod restarts.
    auto tls = issue_serving(pki::KeyPair{creds.ca_crt, creds.ca_key});
    if (!tls.ok()) {
      return tls.status().WithContext("renew the serving certificate (" + serving_stale +
                                      ") from the job CA in Secret " + SecretName(job));
    }
    creds.tls_crt = tls->cert_pem;
    creds.tls_key = tls->key_pem;
    out->events.push_back({"Normal", "ServingCertificateRenewed",
                           serving_stale + ": issued a new one for " + svc + " from the job CA"});
  }
  Json desired = DesiredSecret(job, creds);
  if (!exists) {
    auto created = client_->Create(res::kSecrets, run.ns, desired);
    if (IsAlreadyExists(created.status())) {
      FEDGE_RETURN_IF_ERROR(CheckExisting(run, res::kSecrets, run.ns, SecretName(job), out));
      return AbortedError("Conflict: secret created concurrently; retrying");
    }
    FEDGE_RETURN_IF_ERROR(created.status().WithContext("create secret"));
  } else {
    desired["metadata"]["resourceVersion"] = (*live)["metadata"].value("resourceVersion", "");
    auto applied = client_->Apply(res::kSecrets, run.ns, SecretName(job), desired, {kFieldManager, true, ""});
    if (!applied.ok()) return applied.status().WithContext("apply secret");
  }
  out->creds = std::move(creds);
  return OkStatus();
}

Status JobReconciler::SyncTrust(const Run& run, const std::string& revoked_pods, Outcome* out) {
  const Json& job = run.job;
  const std::string name = TrustConfigMapName(job);
  if (run.issuer.jwks.empty())
    return FailedPreconditionError("no service-account issuer keys to write to " + name);
  const bool tls = TlsEnabled(job);
  if (tls && run.creds.ca_crt.empty()) {
    // Only after a credentials sync that did not run (its wave failed first).
    return FailedPreconditionError("no job CA in " + SecretName(job) + " for " + name + "; retrying");
  }
  ObjectPtr cached = cache_->Get(res::kConfigMaps, run.ns, name);
  if (cached) {
    if (std::string why = NotTheJobs(*cached, job); !why.empty())
      return NotOurs(res::kConfigMaps, name, why, &out->conflict);
  } else {
    // Not in the cache as the job's: an object of that name the operator did not make is
    // refused rather than taken over by a forced apply.
    auto live = client_->Get(res::kConfigMaps, run.ns, name);
    if (live.ok()) {
      if (std::string why = NotTheJobs(*live, job); !why.empty())
        return NotOurs(res::kConfigMaps, name, why, &out->conflict);
    } else if (!IsNotFound(live.status())) {
      return live.status().WithContext("get configmaps/" + name);
    }
  }
  Json desired = DesiredTrustConfigMap(job, tls ? run.creds.ca_crt : "", run.issuer, revoked_pods);
  auto a = client_->Apply(res::kConfigMaps, run.ns, name, desired, {kFieldManager, true, ""});
  if (!a.ok()) return a.status().WithContext("apply configmaps/" + name);
  out->took_effect = true;
  return OkStatus();
}

Status JobReconciler::SyncApiToken(const Run& run, Outcome* out) {
  std::string name = ApiTokenSecretName(run.job);
  // As with the credentials: never replace a token clients may already hold because the
  // cache lags; read the live object first.
  auto live = client_->Get(res::kSecrets, run.ns, name);
  if (live.ok()) {
    if (std::string why = NotTheJobs(*live, run.job); !why.empty())
      return NotOurs(res::kSecrets, name, why, &out->conflict);
    return OkStatus();
  }
  if (!IsNotFound(live.status())) return live.status();
  FEDGE_ASSIGN_OR_RETURN(std::string token, pki::RandomToken());
  auto c = client_->Create(res::kSecrets, run.ns, DesiredApiTokenSecret(run.job, token));
  if (IsAlreadyExists(c.status())) return CheckExisting(run, res::kSecrets, run.ns, name, out);
  return c.status().WithContext("create secret " + name);
}

// The status fields the operator writes; the rest (rounds, accuracy, checkpoint) belong to
// the aggregator's status reporter.
constexpr const char* kOwnedStatusFields[] = {"observedGeneration", "state",     "conditions",    "agents",
                                              "restarts",           "startTime", "completionTime"};

Status JobReconciler::WriteStatus(Run& run) {
  Json& st = run.status;
  st["observedGeneration"] = run.generation;
  // Compare only the operator-owned fields; the reporter's are not ours to write.
  Json owned = Json::object(), before = Json::object();
  for (const char* f : kOwnedStatusFields) {
    if (st.contains(f)) owned[f] = st[f];
    if (run.old_status.contains(f)) before[f] = run.old_status[f];
  }
  Status written = OkStatus();
  if (owned != before) {
    // The write carries the resourceVersion this pass read. An apply replaces every field
    // the operator owns, so a pass working from a cache that has not yet seen the previous
    // pass's write would otherwise take back what that pass wrote (restarts went back to 0
    // when the pass after a deleted pod recreated it from a stale job).
    Json patch = {{"apiVersion", run.job.value("apiVersion", "fedge.io/v1alpha1")},
                  {"kind", run.job.value("kind", "FederatedTrainingJob")},
                  {"metadata",
                   {{"name", run.name},
                    {"namespace", run.ns},
                    {"resourceVersion", run.job["metadata"].value("resourceVersion", "")}}},
                  {"status", owned}};
    auto s = client_->Apply(res::kJobs, run.ns, run.name, patch, {kFieldManager, true, "status"});
    if (!s.ok() && IsConflict(s.status())) {
      written = KeepRestartCount(run);
      if (written.ok()) written = s.status();  // a bare Conflict: the controller requeues quietly
    } else if (!s.ok()) {
      return s.status().WithContext("apply status");
    }
  }
  // Events describe what this pass did (pods deleted, certificates written): recorded even
  // when its status was refused, since the next pass will not do it again.
  RecordEvents(run);
  return written;
}

void JobReconciler::RecordEvents(const Run& run) {
  for (const auto& e : run.events) events_->Record(run.job, e.type, e.reason, e.message);
}

Status JobReconciler::KeepRestartCount(Run& run) {
  // The restart counter is the one status field a pass cannot recompute from the world: the
  // failed pod it counted is gone. Add this pass's restarts to the live count; everything
  // else is recomputed by the next pass, which the write that beat us has already queued.
  const int added = run.status.value("restarts", 0) - run.old_status.value("restarts", 0);
  if (added <= 0) return OkStatus();
  for (int attempt = 0; attempt < 5; ++attempt) {
    auto live = client_->Get(res::kJobs, run.ns, run.name, {});
    if (!live.ok()) return IsNotFound(live.status()) ? OkStatus() : live.status().WithContext("get job");
    Json st = live->value("status", Json::object());
    if (!st.is_object()) st = Json::object();
    Json owned = Json::object();
    for (const char* f : kOwnedStatusFields) {
      if (st.contains(f)) owned[f] = st[f];
    }
    owned["restarts"] = st.value("restarts", 0) + added;
    Json patch = {{"apiVersion", run.job.value("apiVersion", "fedge.io/v1alpha1")},
                  {"kind", run.job.value("kind", "FederatedTrainingJob")},
                  {"metadata",
                   {{"name", run.name},
                    {"namespace", run.ns},
                    {"resourceVersion", (*live)["metadata"].value("resourceVersion", "")}}},
                  {"status", owned}};
    auto s = client_->Apply(res::kJobs, run.ns, run.name, patch, {kFieldManager, true, "status"});
    if (s.ok()) return OkStatus();
    if (!IsConflict(s.status())) return s.status().WithContext("apply restart count");
  }
  return AbortedError("status of " + run.ns + "/" + run.name + " kept changing; restart count not written");
}

}  // namespace fedge::op
