#include "fedge/agent/runtime/serving_model.h"

#include "fedge/log.h"

namespace fedge::agent {
namespace {

std::vector<std::string> LabelsOf(TrainableModel& model) {
  Classifier* classifier = model.AsClassifier();
  return classifier != nullptr ? classifier->labels() : std::vector<std::string>{};
}

}  // namespace

ServingModel::ServingModel(std::unique_ptr<TrainableModel> model, std::string job, Factory factory)
    : job_(std::move(job)), labels_(LabelsOf(*model)), factory_(std::move(factory)) {
  spares_.push_back(std::make_shared<Instance>());
  spares_.back()->model = std::move(model);
  if (factory_) {
    // Now, while nothing is served yet, rather than at the second install,
    // where the load competes with the requests for the CPU.
    auto built = factory_();
    if (built.ok()) {
      ++instances_built_;
      spares_.push_back(std::make_shared<Instance>());
      spares_.back()->model = std::move(built).value();
    } else {
      log::Warn("cannot build a spare serving instance at start; the second install will try again",
                {{"error", built.status().ToString()}});
    }
  }
}

std::shared_ptr<ServingModel::Instance> ServingModel::Published() const {
  std::lock_guard<std::mutex> lock(published_mu_);
  return published_;
}

Status ServingModel::Install(const TensorBundle& bundle, int64_t version) {
  std::lock_guard<std::mutex> install(install_mu_);
  auto context = [&](const Status& st) {
    return st.WithContext("installing global v" + std::to_string(version) + " for serving");
  };
  // Requests copy only published_, so once a spare is not published its use
  // count can only fall; 1 means this object is its last holder.
  std::shared_ptr<Instance> target;
  for (auto it = spares_.begin(); it != spares_.end(); ++it) {
    if (it->use_count() == 1) {
      target = std::move(*it);
      spares_.erase(it);
      break;
    }
  }
  if (target == nullptr && factory_) {
    auto built = factory_();
    if (built.ok()) {
      ++instances_built_;
      target = std::make_shared<Instance>();
      target->model = std::move(built).value();
    } else {
      // Not worth failing the install (the client would stop): fall back.
      log::Warn("cannot build a spare serving instance; installing between requests instead",
                {{"version", version}, {"error", built.status().ToString()}});
    }
  }
  if (target == nullptr) {
    // No idle spare and none built: import into the published instance
    // between requests (the request in progress finishes first).
    std::shared_ptr<Instance> live = Published();
    std::lock_guard<std::mutex> use(live->mu);
    Status st = live->model->ImportTrainable(bundle);
    if (!st.ok()) return context(st);
    live->version = version;
    version_.store(version, std::memory_order_release);
    return OkStatus();
  }
  {
    // Uncontended: no request can reach `target`. Taking the lock orders this
    // import after the last use by a request that ran on it while published.
    std::lock_guard<std::mutex> use(target->mu);
    Status st = target->model->ImportTrainable(bundle);
    if (!st.ok()) {
      // An instance with a half-refused import is still a fine spare.
      spares_.insert(spares_.begin(), std::move(target));
      return context(st);
    }
    target->version = version;
  }
  std::shared_ptr<Instance> retired;
  {
    std::lock_guard<std::mutex> lock(published_mu_);
    retired = std::move(published_);
    published_ = target;
    version_.store(version, std::memory_order_release);
  }
  // The retired instance becomes the one spare; requests still running on it
  // keep it alive and busy until they end. Other spares are dropped (a busy
  // one is freed by its last request), except, at the first install (nothing
  // retired), the prebuilt one.
  if (retired != nullptr) {
    spares_.clear();
    spares_.push_back(std::move(retired));
  }
  return OkStatus();
}

Status ServingModel::Use(const std::function<Status(TrainableModel&, int64_t)>& fn) {
  std::shared_ptr<Instance> instance = Published();
  if (instance == nullptr) {
    return UnavailableError("no global model installed yet; the agent serves once it has fetched one");
  }
  std::lock_guard<std::mutex> lock(instance->mu);
  return fn(*instance->model, instance->version);
}

std::string ServingModel::ModelName(int64_t version) const { return job_ + "@v" + std::to_string(version); }

}  // namespace fedge::agent
