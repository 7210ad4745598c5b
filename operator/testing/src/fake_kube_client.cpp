#include "fedge/op/fake_kube_client.h"

#include <algorithm>
#include <set>
#include <sstream>

namespace fedge::op {
namespace {

std::vector<std::string> Split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string part;
  while (std::getline(ss, part, sep))
    if (!part.empty()) out.push_back(part);
  return out;
}

bool MatchesFieldSelector(const Json& obj, const std::string& selector) {
  for (const auto& term : Split(selector, ',')) {
    auto eq = term.find('=');
    if (eq == std::string::npos) return false;
    std::string path = term.substr(0, eq), want = term.substr(eq + 1);
    if (!want.empty() && want[0] == '=') want = want.substr(1);
    const Json* cur = &obj;
    for (const auto& part : Split(path, '.')) {
      if (!cur->is_object() || !cur->contains(part)) {
        cur = nullptr;
        break;
      }
      cur = &(*cur)[part];
    }
    std::string got = (cur && cur->is_string()) ? cur->get<std::string>() : "";
    if (got != want) return false;
  }
  return true;
}

}  // namespace

bool MatchesLabelSelector(const Json& labels, const std::string& selector) {
  for (const auto& term : Split(selector, ',')) {
    auto ne = term.find("!=");
    auto eq = term.find('=');
    if (ne != std::string::npos) {
      std::string k = term.substr(0, ne), v = term.substr(ne + 2);
      if (labels.is_object() && labels.contains(k) && labels[k] == v) return false;
    } else if (eq != std::string::npos) {
      std::string k = term.substr(0, eq), v = term.substr(eq + 1);
      if (!v.empty() && v[0] == '=') v = v.substr(1);
      if (!labels.is_object() || !labels.contains(k) || labels[k] != v) return false;
    } else if (!term.empty() && term[0] == '!') {
      if (labels.is_object() && labels.contains(term.substr(1))) return false;
    } else if (!labels.is_object() || !labels.contains(term)) {
      return false;
    }
  }
  return true;
}

void MergeInto(Json& target, const Json& patch) {
  if (!patch.is_object()) {
    target = patch;
    return;
  }
  if (!target.is_object()) target = Json::object();
  for (auto it = patch.begin(); it != patch.end(); ++it) {
    if (it.value().is_null())
      target.erase(it.key());
    else
      MergeInto(target[it.key()], it.value());
  }
}

// Server-side apply: the fields `before` (this manager's previous apply) set that `now`
// no longer sets leave `target`. Maps recurse; anything else (lists included) is one field.
void RemoveDropped(Json& target, const Json& before, const Json& now) {
  if (!before.is_object() || !target.is_object()) return;
  for (auto it = before.begin(); it != before.end(); ++it) {
    if (!now.is_object() || !now.contains(it.key())) {
      target.erase(it.key());
    } else if (it.value().is_object() && target.contains(it.key())) {
      RemoveDropped(target[it.key()], it.value(), now[it.key()]);
    }
  }
}

Status FakeKubeClient::Record(const std::string& verb, const Resource& r, const std::string& ns,
                              const std::string& name, const std::string& sub, const Json& body) {
  calls_.push_back({verb, r.plural, r.namespaced ? ns : "", name, sub, body});
  kinds_[r.plural] = r;
  auto it = failures_.find({verb, r.plural});
  if (it != failures_.end() && !it->second.empty()) {
    Status s = it->second.front();
    it->second.pop_front();
    return s;
  }
  return OkStatus();
}

Json FakeKubeClient::Stamp(const Resource& r, Json obj) {
  obj["apiVersion"] = r.api_version;
  obj["kind"] = r.kind;
  obj["metadata"]["resourceVersion"] = std::to_string(++rv_);
  return obj;
}

void FakeKubeClient::Emit(const Resource& r, const std::string& ns, WatchEventType t, const Json& obj) {
  events_.push_back({rv_, r.plural, r.namespaced ? ns : "", {t, obj}});
  cv_.notify_all();
}

StatusOr<Json> FakeKubeClient::Get(const Resource& r, const std::string& ns, const std::string& name,
                                   const std::string& sub) {
  std::lock_guard<std::mutex> l(mu_);
  FEDGE_RETURN_IF_ERROR(Record("get", r, ns, name, sub, nullptr));
  auto it = objects_.find({r.plural, r.namespaced ? ns : "", name});
  if (it == objects_.end()) return KubeError("NotFound", 404, r.plural + " \"" + name + "\" not found");
  return it->second;
}

StatusOr<Json> FakeKubeClient::GetPath(const std::string& path) {
  std::lock_guard<std::mutex> l(mu_);
  Resource r;
  r.plural = path;
  r.namespaced = false;
  FEDGE_RETURN_IF_ERROR(Record("get", r, "", "", "", nullptr));
  auto it = paths_.find(path);
  if (it != paths_.end()) {
    if (it->second.is_null()) return KubeError("NotFound", 404, "the server could not find " + path);
    return it->second;
  }
  if (path == "/.well-known/openid-configuration") {
    return Json{{"issuer", kFakeIssuer},
                {"jwks_uri", std::string(kFakeIssuer) + "/openid/v1/jwks"},
                {"response_types_supported", {"id_token"}},
                {"subject_types_supported", {"public"}},
                {"id_token_signing_alg_values_supported", {"RS256"}}};
  }
  if (path == "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/kubernetes") {
    // What kube-apiserver's endpoint reconciler writes: one endpoint, port "https".
    return Json{
        {"apiVersion", "discovery.k8s.io/v1"},
        {"kind", "EndpointSlice"},
        {"metadata", {{"name", "kubernetes"}, {"namespace", "default"}}},
        {"addressType", "IPv4"},
        {"endpoints",
         Json::array({{{"addresses", {std::string(kFakeApiServerIp)}}, {"conditions", {{"ready", true}}}}})},
        {"ports", Json::array({{{"name", "https"}, {"port", kFakeApiServerPort}, {"protocol", "TCP"}}})}};
  }
  if (path == "/openid/v1/jwks") {
    // A public key's shape; no test signs with it.
    return Json::parse(
        R"({"keys": [{"use": "sig", "kty": "RSA", "kid": "fake-key", "alg": "RS256", "e": "AQAB", "n": ")" +
        std::string(
            "u1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onLRnrq0_IzW7yWR7QkrmBL7jTKEn5u-"
            "qKhbwKfBstIs-bMY2Zkp18gnTxKLxoS2tFczGkPLPgizskuemMghRniWaoLcyehkd3qqGElvW_VDL5AaWTg0nLVkjRo9z-"
            "40RQzuVaE8AkAFmxZzow3x-VJYKdjykkJ0iT9wCS0DRTXu269V264Vf_3jvredZiKRkgwlL9xNAwxXFg0x_"
            "XFw005UWVRIkdgcKWTjpBP2dPwVZ4WWC-9aGVd-Gyn1o0CLelf4rEjGoXbAAEgAqeGUxrcIlbjXfbcmw") +
        R"("}]})");
  }
  return KubeError("NotFound", 404, "the server could not find " + path);
}

void FakeKubeClient::SetPath(const std::string& path, Json body) {
  std::lock_guard<std::mutex> l(mu_);
  paths_[path] = std::move(body);
}

StatusOr<ListResult> FakeKubeClient::List(const Resource& r, const std::string& ns, const ListOptions& opts) {
  std::lock_guard<std::mutex> l(mu_);
  FEDGE_RETURN_IF_ERROR(Record("list", r, ns, "", "", nullptr));
  ListResult out;
  out.resource_version = std::to_string(rv_);
  size_t skip = opts.continue_token.empty() ? 0 : std::stoul(opts.continue_token);
  size_t seen = 0;
  for (const auto& [k, obj] : objects_) {
    if (std::get<0>(k) != r.plural) continue;
    if (r.namespaced && !ns.empty() && std::get<1>(k) != ns) continue;
    if (!opts.label_selector.empty() &&
        !MatchesLabelSelector(obj["metadata"].value("labels", Json::object()), opts.label_selector))
      continue;
    if (!opts.field_selector.empty() && !MatchesFieldSelector(obj, opts.field_selector)) continue;
    if (seen++ < skip) continue;
    if (opts.limit > 0 && static_cast<int64_t>(out.items.size()) == opts.limit) {
      out.continue_token = std::to_string(skip + out.items.size());
      break;
    }
    out.items.push_back(obj);
  }
  return out;
}

Status FakeKubeClient::Watch(const Resource& r, const std::string& ns, const WatchOptions& opts,
                             const std::function<void(const WatchEvent&)>& on_event, WatchCancel* cancel) {
  std::unique_lock<std::mutex> l(mu_);
  FEDGE_RETURN_IF_ERROR(Record("watch", r, ns, "", "", nullptr));
  int64_t from = opts.resource_version.empty() ? rv_ : std::stoll(opts.resource_version);
  if (from < compacted_rv_) {
    return KubeError("Expired", 410, "too old resource version: " + opts.resource_version);
  }
  if (cancel)
    cancel->SetOnCancel([this] {
      std::lock_guard<std::mutex> g(mu_);
      cv_.notify_all();
    });
  int64_t epoch = watch_epoch_;
  while (true) {
    if (cancel && cancel->cancelled()) {
      cancel->SetOnCancel(nullptr);
      return CancelledError("watch cancelled");
    }
    if (watch_epoch_ != epoch) {
      if (cancel) cancel->SetOnCancel(nullptr);
      return OkStatus();
    }
    std::vector<WatchEvent> batch;
    auto it = std::lower_bound(events_.begin(), events_.end(), from + 1,
                               [](const Event& e, int64_t rv) { return e.rv < rv; });
    for (; it != events_.end(); ++it) {
      const Event& e = *it;
      from = e.rv;
      if (e.plural != r.plural) continue;
      if (r.namespaced && !ns.empty() && e.ns != ns) continue;
      const Json& labels = e.ev.object["metadata"].value("labels", Json::object());
      if (!opts.label_selector.empty() && !MatchesLabelSelector(labels, opts.label_selector)) continue;
      if (!opts.field_selector.empty() && !MatchesFieldSelector(e.ev.object, opts.field_selector)) continue;
      batch.push_back(e.ev);
    }
    if (!batch.empty()) {
      l.unlock();  // never hold the lock across the callback
      for (const auto& ev : batch) on_event(ev);
      l.lock();
      continue;
    }
    cv_.wait(l);
  }
}

StatusOr<Json> FakeKubeClient::Create(const Resource& r, const std::string& ns, const Json& obj) {
  std::lock_guard<std::mutex> l(mu_);
  std::string name = obj["metadata"].value("name", "");
  FEDGE_RETURN_IF_ERROR(Record("create", r, ns, name, "", obj));
  if (name.empty()) return KubeError("Invalid", 422, "metadata.name: Required value");
  Key k{r.plural, r.namespaced ? ns : "", name};
  if (objects_.count(k))
    return KubeError("AlreadyExists", 409, r.plural + " \"" + name + "\" already exists");
  return AddLocked(r, ns, k, obj);
}

StatusOr<Json> FakeKubeClient::Update(const Resource& r, const std::string& ns, const Json& obj,
                                      const std::string& sub) {
  std::lock_guard<std::mutex> l(mu_);
  std::string name = obj["metadata"].value("name", "");
  FEDGE_RETURN_IF_ERROR(Record("update", r, ns, name, sub, obj));
  Key k{r.plural, r.namespaced ? ns : "", name};
  auto it = objects_.find(k);
  if (it == objects_.end()) return KubeError("NotFound", 404, r.plural + " \"" + name + "\" not found");
  FEDGE_RETURN_IF_ERROR(CheckResourceVersion(r, name, obj, it->second));
  Json o = it->second;
  if (sub == "status") {
    o["status"] = obj.value("status", Json::object());
  } else {
    Json status = o.value("status", Json());
    Json meta = o["metadata"];
    bool spec_changed = o.value("spec", Json()) != obj.value("spec", Json());
    o = obj;
    if (!status.is_null()) o["status"] = status;
    for (const char* f : {"uid", "creationTimestamp", "generation", "namespace", "deletionTimestamp"}) {
      if (meta.contains(f)) o["metadata"][f] = meta[f];
    }
    if (spec_changed) o["metadata"]["generation"] = meta.value("generation", 1) + 1;
  }
  return ReplaceLocked(r, ns, k, std::move(o));
}

StatusOr<Json> FakeKubeClient::Apply(const Resource& r, const std::string& ns, const std::string& name,
                                     const Json& obj, const ApplyOptions& opts) {
  std::unique_lock<std::mutex> l(mu_);
  FEDGE_RETURN_IF_ERROR(Record("apply", r, ns, name, opts.subresource, obj));
  Key k{r.plural, r.namespaced ? ns : "", name};
  auto it = objects_.find(k);
  if (it == objects_.end()) {
    if (opts.subresource == "status")
      return KubeError("NotFound", 404, r.plural + " \"" + name + "\" not found");
    Json o = obj;
    o.erase("status");
    o["metadata"]["name"] = name;
    applied_[k][opts.field_manager] = o;
    return AddLocked(r, ns, k, std::move(o));
  }
  Json before = it->second;
  FEDGE_RETURN_IF_ERROR(CheckResourceVersion(r, name, obj, before));
  Json o = before;
  if (opts.subresource == "status") {
    if (obj.contains("status")) MergeInto(o["status"], obj["status"]);
  } else {
    Json patch = obj;
    patch.erase("status");
    Json& last = applied_[k][opts.field_manager];
    RemoveDropped(o, last, patch);
    last = patch;
    MergeInto(o, patch);
    // Apply sets lists it owns wholesale (finalizers, ownerReferences, ...).
    if (o.value("spec", Json()) != before.value("spec", Json())) {
      o["metadata"]["generation"] = before["metadata"].value("generation", 1) + 1;
    }
  }
  if (o == before) return before;  // no-op apply: no new resourceVersion, no event
  return ReplaceLocked(r, ns, k, std::move(o));
}

StatusOr<Json> FakeKubeClient::MergePatch(const Resource& r, const std::string& ns, const std::string& name,
                                          const Json& patch, const std::string& sub) {
  std::lock_guard<std::mutex> l(mu_);
  FEDGE_RETURN_IF_ERROR(Record("patch", r, ns, name, sub, patch));
  Key k{r.plural, r.namespaced ? ns : "", name};
  auto it = objects_.find(k);
  if (it == objects_.end()) return KubeError("NotFound", 404, r.plural + " \"" + name + "\" not found");
  FEDGE_RETURN_IF_ERROR(CheckResourceVersion(r, name, patch, it->second));
  Json o = it->second;
  if (sub == "status") {
    if (patch.contains("status")) MergeInto(o["status"], patch["status"]);
  } else {
    Json p = patch;
    p.erase("status");
    MergeInto(o, p);
  }
  return ReplaceLocked(r, ns, k, std::move(o));
}

Status FakeKubeClient::CheckResourceVersion(const Resource& r, const std::string& name, const Json& obj,
                                            const Json& current) {
  // As the API server: a resourceVersion in a written object is a precondition.
  std::string want_rv = obj.value("metadata", Json::object()).value("resourceVersion", "");
  if (want_rv.empty() || want_rv == current["metadata"].value("resourceVersion", "")) return OkStatus();
  return KubeError("Conflict", 409,
                   "Operation cannot be fulfilled on " + r.plural + " \"" + name +
                       "\": the object has been modified; please apply your changes to the latest version "
                       "and try again");
}

Json FakeKubeClient::AddLocked(const Resource& r, const std::string& ns, const Key& k, Json o) {
  o["metadata"]["uid"] = "uid-" + std::to_string(++uid_);
  o["metadata"]["generation"] = 1;
  o["metadata"]["creationTimestamp"] = now_;
  if (r.namespaced) o["metadata"]["namespace"] = ns;
  o = Stamp(r, std::move(o));
  objects_[k] = o;
  Emit(r, ns, WatchEventType::kAdded, o);
  return o;
}

Json FakeKubeClient::ReplaceLocked(const Resource& r, const std::string& ns, const Key& k, Json o) {
  o = Stamp(r, std::move(o));
  if (o["metadata"].contains("deletionTimestamp") &&
      o["metadata"].value("finalizers", Json::array()).empty()) {
    RemoveLocked(r, k);
    return o;
  }
  objects_[k] = o;
  Emit(r, ns, WatchEventType::kModified, o);
  return o;
}

void FakeKubeClient::RemoveLocked(const Resource& r, const Key& k) {
  auto it = objects_.find(k);
  if (it == objects_.end()) return;
  Json gone = it->second;
  std::string uid = gone["metadata"].value("uid", "");
  objects_.erase(it);
  applied_.erase(k);
  gone["metadata"]["resourceVersion"] = std::to_string(++rv_);
  Emit(r, std::get<1>(k), WatchEventType::kDeleted, gone);
  if (!gc_) return;
  // Garbage collection: dependents whose owner is gone go too.
  std::vector<std::pair<Resource, Key>> dependents;
  for (const auto& [dk, obj] : objects_) {
    for (const auto& ref : obj["metadata"].value("ownerReferences", Json::array())) {
      if (ref.value("uid", "") == uid) {
        auto kit = kinds_.find(std::get<0>(dk));
        if (kit != kinds_.end()) dependents.push_back({kit->second, dk});
      }
    }
  }
  for (const auto& [dr, dk] : dependents) {
    DeleteLocked(dr, std::get<1>(dk), std::get<2>(dk), {}).ok();
  }
}

void FakeKubeClient::SetNow(std::string rfc3339) {
  std::lock_guard<std::mutex> lock(mu_);
  now_ = std::move(rfc3339);
}

void FakeKubeClient::SetGarbageCollection(bool on) {
  std::lock_guard<std::mutex> lock(mu_);
  gc_ = on;
}

void FakeKubeClient::CollectGarbage() {
  std::lock_guard<std::mutex> lock(mu_);
  std::set<std::string> uids;
  for (const auto& [k, obj] : objects_) uids.insert(obj["metadata"].value("uid", ""));
  std::vector<std::pair<Resource, Key>> orphans;
  for (const auto& [k, obj] : objects_) {
    for (const auto& ref : obj["metadata"].value("ownerReferences", Json::array())) {
      if (ref.value("controller", false) && !uids.count(ref.value("uid", ""))) {
        auto kit = kinds_.find(std::get<0>(k));
        if (kit != kinds_.end()) orphans.push_back({kit->second, k});
      }
    }
  }
  for (const auto& [r, k] : orphans) DeleteLocked(r, std::get<1>(k), std::get<2>(k), {}).ok();
}

Status FakeKubeClient::DeleteLocked(const Resource& r, const std::string& ns, const std::string& name,
                                    const DeleteOptions& opts) {
  Key k{r.plural, r.namespaced ? ns : "", name};
  auto it = objects_.find(k);
  if (it == objects_.end()) return KubeError("NotFound", 404, r.plural + " \"" + name + "\" not found");
  if (!opts.precondition_uid.empty() && it->second["metadata"].value("uid", "") != opts.precondition_uid) {
    return KubeError("Conflict", 409, "Precondition failed: UID in precondition does not match");
  }
  if (!it->second["metadata"].value("finalizers", Json::array()).empty()) {
    if (!it->second["metadata"].contains("deletionTimestamp")) {
      it->second["metadata"]["deletionTimestamp"] = now_;
      it->second = Stamp(r, it->second);
      Emit(r, ns, WatchEventType::kModified, it->second);
    }
    return OkStatus();
  }
  RemoveLocked(r, k);
  return OkStatus();
}

Status FakeKubeClient::Delete(const Resource& r, const std::string& ns, const std::string& name,
                              const DeleteOptions& opts) {
  std::lock_guard<std::mutex> l(mu_);
  FEDGE_RETURN_IF_ERROR(Record("delete", r, ns, name, "", nullptr));
  return DeleteLocked(r, ns, name, opts);
}

std::vector<FakeCall> FakeKubeClient::Calls() const {
  std::lock_guard<std::mutex> l(mu_);
  return calls_;
}

int FakeKubeClient::CountCalls(const std::string& verb, const std::string& resource) const {
  std::lock_guard<std::mutex> l(mu_);
  int n = 0;
  for (const auto& c : calls_) {
    if (c.verb == verb && (resource.empty() || c.resource == resource)) ++n;
  }
  return n;
}

int FakeKubeClient::CountWrites() const {
  std::lock_guard<std::mutex> l(mu_);
  int n = 0;
  for (const auto& c : calls_) {
    if (c.verb != "get" && c.verb != "list" && c.verb != "watch") ++n;
  }
  return n;
}

void FakeKubeClient::ClearCalls() {
  std::lock_guard<std::mutex> l(mu_);
  calls_.clear();
}

void FakeKubeClient::FailNext(const std::string& verb, const std::string& resource, Status s) {
  std::lock_guard<std::mutex> l(mu_);
  failures_[{verb, resource}].push_back(std::move(s));
}

void FakeKubeClient::Compact() {
  std::lock_guard<std::mutex> l(mu_);
  compacted_rv_ = rv_;
  events_.clear();
}

void FakeKubeClient::CloseWatches() {
  std::lock_guard<std::mutex> l(mu_);
  ++watch_epoch_;
  cv_.notify_all();
}

std::vector<Json> FakeKubeClient::Objects(const Resource& r) const {
  std::lock_guard<std::mutex> l(mu_);
  std::vector<Json> out;
  for (const auto& [k, o] : objects_)
    if (std::get<0>(k) == r.plural) out.push_back(o);
  return out;
}

int64_t FakeKubeClient::resource_version() const {
  std::lock_guard<std::mutex> l(mu_);
  return rv_;
}

}  // namespace fedge::op
