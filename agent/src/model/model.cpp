// The serving layer's capability lookups (fedge/agent/model.h).
#include "fedge/agent/model.h"

namespace fedge::agent {

Status MissingCapability(TrainableModel& model, const std::string& what) {
  if (model.AsGenerator() != nullptr) {
    return UnimplementedError("this is a causal-lm job: " + what + " is not available; use /v1/completions");
  }
  return UnimplementedError("this job's model has no " + what);
}

StatusOr<std::vector<Prediction>> ClassifyWith(TrainableModel& model, const std::vector<std::string>& texts) {
  Classifier* classifier = model.AsClassifier();
  if (classifier == nullptr) return MissingCapability(model, "classification");
  return classifier->Classify(texts);
}

StatusOr<std::vector<std::vector<float>>> EmbedWith(TrainableModel& model,
                                                    const std::vector<std::string>& texts) {
  Embedder* embedder = model.AsEmbedder();
  if (embedder == nullptr) return MissingCapability(model, "embeddings");
  return embedder->Embed(texts);
}

}  // namespace fedge::agent
