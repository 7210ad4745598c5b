#include "fedge/error_feedback.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <utility>

#include "fedge/file_util.h"
#include "fedge/log.h"
#include "fedge/safetensors.h"

namespace fedge {
namespace {

constexpr char kFormat[] = "fedge-error-feedback";
constexpr char kVersion[] = "1";

// Why `bundle`'s values do not fit its shapes, or empty.
std::string ValuesProblem(const TensorBundle& bundle) {
  for (const NamedTensor& t : bundle.tensors) {
    if (t.NumElements() < 0 || static_cast<uint64_t>(t.NumElements()) != t.values.size()) {
      return "tensor \"" + t.name + "\" has " + std::to_string(t.values.size()) + " values for its shape";
    }
  }
  return {};
}

// Layout and value-count check of two bundles, as one status.
Status SameLayout(const TensorBundle& reference, const TensorBundle& other) {
  FEDGE_RETURN_IF_ERROR(CheckSameLayout(reference, other));
  if (std::string p = ValuesProblem(reference); !p.empty()) return InvalidArgumentError(p);
  if (std::string p = ValuesProblem(other); !p.empty()) return InvalidArgumentError(p);
  return OkStatus();
}

// The checksum covers the canonical (name-sorted) serialization of the tensors,
// so it does not depend on the order they were held in.
StatusOr<std::string> Digest(const TensorBundle& bundle) {
  FEDGE_ASSIGN_OR_RETURN(std::string bytes, SerializeSafetensors(bundle));
  return Sha256Hex(bytes);
}

Status Corrupted(const std::string& path, const std::string& why) {
  return DataLossError("error feedback: residual file " + path + " is unusable: " + why +
                       "; delete it to continue without the carried residual");
}

}  // namespace

ErrorFeedback::Compensated ErrorFeedback::Compensate(const TensorBundle& delta) {
  Compensated out{delta, OkStatus()};
  if (!has_residual()) return out;
  if (Status s = SameLayout(residual_, delta); !s.ok()) {
    out.residual_status = FailedPreconditionError(
        "error feedback: residual discarded, it does not fit the update: " + std::string(s.message()));
    log::Warn("error feedback residual discarded", {{"reason", s.message()}});
    Reset();
    return out;
  }
  for (NamedTensor& t : out.bundle.tensors) {
    const NamedTensor* r = residual_.Find(t.name);
    for (size_t i = 0; i < t.values.size(); ++i) t.values[i] += r->values[i];
  }
  return out;
}

Status ErrorFeedback::Update(const TensorBundle& sent, const TensorBundle& compensated) {
  previous_ = std::move(residual_);
  residual_ = {};
  if (Status s = SameLayout(compensated, sent); !s.ok()) {
    return InvalidArgumentError("error feedback: sent update does not match the compensated one: " +
                                std::string(s.message()));
  }
  TensorBundle next = compensated;
  for (NamedTensor& t : next.tensors) {
    const NamedTensor* s = sent.Find(t.name);
    for (size_t i = 0; i < t.values.size(); ++i) {
      t.values[i] -= s->values[i];
      if (!std::isfinite(t.values[i])) {
        return InvalidArgumentError("error feedback: residual of tensor \"" + t.name + "\" element " +
                                    std::to_string(i) + " is not finite");
      }
    }
  }
  residual_ = std::move(next);
  return OkStatus();
}

StatusOr<std::string> ErrorFeedback::Encode(const TensorBundle& delta, const EncodeOptions& options,
                                            CompressionReport* report, Status* residual_status) {
  const TensorBundle held = residual_;  // Compensate may discard it; an encode error must not
  Compensated c = Compensate(delta);
  if (residual_status != nullptr) *residual_status = c.residual_status;
  auto payload = EncodeBundle(c.bundle, options, report);
  if (!payload.ok()) {
    residual_ = held;
    return payload.status();
  }
  // What the aggregator will see, exactly: decode our own payload.
  DecodeLimits limits;
  limits.max_total_elements = std::max<uint64_t>(limits.max_total_elements, c.bundle.NumElements());
  auto sent = DecodeBundle(*payload, limits);
  if (!sent.ok())
    return InternalError("error feedback: own payload does not decode: " + sent.status().ToString());
  FEDGE_RETURN_IF_ERROR(Update(*sent, c.bundle));  // remembers the (kept) residual for Rollback
  return payload;
}

void ErrorFeedback::Rollback() { residual_ = previous_; }

void ErrorFeedback::Reset() {
  residual_ = {};
  previous_ = {};
}

double ErrorFeedback::ResidualNorm() const {
  double sum = 0;
  for (const NamedTensor& t : residual_.tensors) {
    for (float v : t.values) sum += static_cast<double>(v) * v;
  }
  return std::sqrt(sum);
}

Status ErrorFeedback::Save(const std::string& path) const {
  FEDGE_ASSIGN_OR_RETURN(std::string digest, Digest(residual_));
  const std::map<std::string, std::string> metadata = {
      {"format", kFormat}, {"version", kVersion}, {"sha256", digest}};
  Status s = WriteSafetensorsFile(path, residual_, metadata);
  return s.ok() ? s : s.WithContext("error feedback: saving the residual");
}

Status ErrorFeedback::Load(const std::string& path) {
  Reset();
  auto bytes = ReadFile(path);
  if (!bytes.ok()) {
    return bytes.status().code() == StatusCode::kNotFound
               ? bytes.status()
               : bytes.status().WithContext("error feedback: reading the residual");
  }
  auto file = SafetensorsFile::Parse(std::move(*bytes));
  if (!file.ok()) return Corrupted(path, std::string(file.status().message()));
  const auto& meta = file->metadata();
  auto field = [&meta](const char* key) {
    auto it = meta.find(key);
    return it == meta.end() ? std::string() : it->second;
  };
  if (field("format") != kFormat) {
    return Corrupted(path, "not an error-feedback residual (metadata format is \"" + field("format") + "\")");
  }
  if (field("version") != kVersion)
    return Corrupted(path, "unknown residual version \"" + field("version") + "\"");
  auto bundle = SafetensorsToBundle(*file);
  if (!bundle.ok()) return Corrupted(path, std::string(bundle.status().message()));
  auto digest = Digest(*bundle);
  if (!digest.ok()) return Corrupted(path, std::string(digest.status().message()));
  if (*digest != field("sha256"))
    return Corrupted(path, "checksum mismatch (the tensors were modified or damaged)");
  for (const NamedTensor& t : bundle->tensors) {
    for (size_t i = 0; i < t.values.size(); ++i) {
      if (!std::isfinite(t.values[i])) {
        return Corrupted(path, "tensor \"" + t.name + "\" element " + std::to_string(i) + " is not finite");
      }
    }
  }
  residual_ = std::move(*bundle);
  return OkStatus();
}

}  // namespace fedge
