#include "fedge/agent/runtime/serving_model.h"

namespace fedge::agent {

ServingModel::ServingModel(std::unique_ptr<TextClassifier> model, std::string job)
    : job_(std::move(job)), labels_(model->labels()), model_(std::move(model)) {}

Status ServingModel::Install(const TensorBundle& bundle, int64_t version) {
  std::lock_guard<std::mutex> lock(mu_);
  Status st = model_->ImportTrainable(bundle);
  if (!st.ok()) return st.WithContext("installing global v" + std::to_string(version) + " for serving");
  version_ = version;
  return OkStatus();
}

Status ServingModel::Use(const std::function<Status(TextClassifier&, int64_t)>& fn) {
  std::lock_guard<std::mutex> lock(mu_);
  if (version_ == 0) {
    return UnavailableError("no global model installed yet; the agent serves once it has fetched one");
  }
  return fn(*model_, version_);
}

bool ServingModel::ready() const {
  std::lock_guard<std::mutex> lock(mu_);
  return version_ != 0;
}

int64_t ServingModel::version() const {
  std::lock_guard<std::mutex> lock(mu_);
  return version_;
}

std::string ServingModel::ModelName(int64_t version) const { return job_ + "@v" + std::to_string(version); }

}  // namespace fedge::agent
