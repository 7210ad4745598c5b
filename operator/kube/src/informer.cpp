#include "fedge/op/informer.h"

#include <set>

#include "fedge/log.h"
#include "fedge/op/backoff.h"

namespace fedge::op {

std::string ObjectKey(const Json& obj) {
  const Json& m = obj.at("metadata");
  std::string ns = m.value("namespace", "");
  std::string name = m.value("name", "");
  return ns.empty() ? name : ns + "/" + name;
}

Informer::Informer(KubeClient* client, Resource resource, InformerOptions opts)
    : client_(client),
      resource_(std::move(resource)),
      opts_(std::move(opts)),
      rng_(opts_.seed ? opts_.seed : std::random_device{}()) {}

Informer::~Informer() { Stop(); }

void Informer::AddHandlers(InformerHandlers h) { handlers_.push_back(std::move(h)); }

void Informer::Start() {
  thread_ = std::thread([this] { Run(); });
}

void Informer::Stop() {
  stop_.store(true);
  cancel_.Cancel();
  {
    std::lock_guard<std::mutex> l(mu_);
    cv_.notify_all();
  }
  if (thread_.joinable()) thread_.join();
}

bool Informer::WaitForSync(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> l(mu_);
  return cv_.wait_for(l, timeout, [this] { return synced_.load() || stop_.load(); }) && synced_.load();
}

ObjectPtr Informer::Get(const std::string& key) const {
  std::lock_guard<std::mutex> l(mu_);
  auto it = store_.find(key);
  return it == store_.end() ? nullptr : it->second;
}

std::vector<ObjectPtr> Informer::List() const {
  std::lock_guard<std::mutex> l(mu_);
  std::vector<ObjectPtr> out;
  out.reserve(store_.size());
  for (const auto& [k, v] : store_) out.push_back(v);
  return out;
}

std::vector<ObjectPtr> Informer::ListByLabel(const std::string& key, const std::string& value) const {
  std::lock_guard<std::mutex> l(mu_);
  std::vector<ObjectPtr> out;
  for (const auto& [k, v] : store_) {
    const Json& m = (*v)["metadata"];
    auto lit = m.find("labels");
    if (lit == m.end() || !lit->is_object()) continue;
    auto vit = lit->find(key);
    if (vit != lit->end() && vit->is_string() && vit->get_ref<const std::string&>() == value)
      out.push_back(v);
  }
  return out;
}

size_t Informer::Size() const {
  std::lock_guard<std::mutex> l(mu_);
  return store_.size();
}

Status Informer::ListAndReplace() {
  ListOptions lo;
  lo.label_selector = opts_.label_selector;
  lo.limit = opts_.page_size;
  FEDGE_ASSIGN_OR_RETURN(ListResult list, ListAll(*client_, resource_, opts_.ns, lo));
  std::vector<std::pair<ObjectPtr, ObjectPtr>> updates;  // (old, new); old null = add
  std::vector<ObjectPtr> deletes;
  {
    std::lock_guard<std::mutex> l(mu_);
    std::map<std::string, ObjectPtr> fresh;
    for (auto& item : list.items) {
      auto p = std::make_shared<const Json>(std::move(item));
      fresh[ObjectKey(*p)] = p;
    }
    for (const auto& [k, v] : store_) {
      if (!fresh.count(k)) deletes.push_back(v);
    }
    for (const auto& [k, v] : fresh) {
      auto it = store_.find(k);
      updates.push_back({it == store_.end() ? nullptr : it->second, v});
    }
    store_ = std::move(fresh);
  }
  last_rv_ = list.resource_version;
  // Handlers run outside the lock.
  for (const auto& h : handlers_) {
    for (const auto& d : deletes)
      if (h.on_delete) h.on_delete(d);
    for (const auto& [o, n] : updates) {
      if (!o) {
        if (h.on_add) h.on_add(n);
      } else if (h.on_update)
        h.on_update(o, n);
    }
  }
  if (!synced_.load()) synced_at_.store(opts_.clock->WallNow());  // before HasSynced says so
  if (!synced_.exchange(true)) {
    std::lock_guard<std::mutex> l(mu_);
    cv_.notify_all();
  }
  return OkStatus();
}

void Informer::Apply(const WatchEvent& ev) {
  std::string rv = ev.object.contains("metadata") ? ev.object["metadata"].value("resourceVersion", "") : "";
  if (!rv.empty()) last_rv_ = rv;
  if (ev.type == WatchEventType::kBookmark) return;
  auto obj = std::make_shared<const Json>(ev.object);
  std::string key = ObjectKey(*obj);
  ObjectPtr old;
  {
    std::lock_guard<std::mutex> l(mu_);
    auto it = store_.find(key);
    if (it != store_.end()) old = it->second;
    if (ev.type == WatchEventType::kDeleted)
      store_.erase(key);
    else
      store_[key] = obj;
  }
  for (const auto& h : handlers_) {
    if (ev.type == WatchEventType::kDeleted) {
      if (h.on_delete) h.on_delete(old ? old : obj);
    } else if (old) {
      if (h.on_update) h.on_update(old, obj);
    } else if (h.on_add) {
      h.on_add(obj);
    }
  }
}

void Informer::SleepBackoff(std::chrono::nanoseconds d) {
  std::unique_lock<std::mutex> l(mu_);
  const Clock::TimePoint until = opts_.clock->Now() + std::chrono::duration_cast<Clock::Duration>(d);
  while (!stop_.load() && opts_.clock->Now() < until) opts_.clock->WaitUntil(l, cv_, until);
}

void Informer::Run() {
  // One backoff for list and watch failures, +-50% jitter; reset by a working watch.
  Backoff backoff({opts_.backoff_initial, opts_.backoff_max, /*jitter=*/0.5}, rng_());
  bool need_list = true;
  while (!stop_.load()) {
    if (need_list) {
      Status s = ListAndReplace();
      if (!s.ok()) {
        if (stop_.load()) break;
        log::Warn("informer list failed", {{"resource", resource_.plural}, {"error", s.ToString()}});
        SleepBackoff(backoff.Next());
        continue;
      }
      need_list = false;
    }
    WatchOptions wo;
    wo.resource_version = last_rv_;
    wo.label_selector = opts_.label_selector;
    wo.allow_bookmarks = true;
    std::uniform_int_distribution<int> t(opts_.watch_timeout_seconds, 2 * opts_.watch_timeout_seconds);
    wo.timeout_seconds = t(rng_);
    bool got_event = false;
    Status s = client_->Watch(
        resource_, opts_.ns, wo,
        [&](const WatchEvent& ev) {
          got_event = true;
          Apply(ev);
        },
        &cancel_);
    if (stop_.load()) break;
    ++watch_restarts_;
    if (opts_.on_watch_restart) opts_.on_watch_restart();
    if (got_event) backoff.Reset();
    if (s.ok()) {
      backoff.Reset();
      continue;  // the server ended the stream; resume from last_rv_
    }
    if (IsGone(s)) {
      log::Info("watch expired, re-listing", {{"resource", resource_.plural}});
      ++relists_;
      need_list = true;
      continue;
    }
    const std::chrono::nanoseconds delay = backoff.Next();
    log::Warn("watch failed, reconnecting",
              {{"resource", resource_.plural},
               {"error", s.ToString()},
               {"backoff_ms",
                static_cast<int64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(delay).count())}});
    SleepBackoff(delay);
  }
}

}  // namespace fedge::op
