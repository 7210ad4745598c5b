#include "fedge/agent/runtime/update.h"

#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include "fedge/file_util.h"
#include "fedge/log.h"
#include "fedge/safetensors.h"

namespace fedge::agent {

StatusOr<TensorBundle> ComputeDelta(const TensorBundle& after, const TensorBundle& base) {
  Status layout = CheckSameLayout(base, after);
  if (!layout.ok()) return layout.WithContext("delta: trained state and global differ");
  TensorBundle delta;
  delta.tensors.reserve(after.tensors.size());
  for (const NamedTensor& a : after.tensors) {
    const NamedTensor* b = base.Find(a.name);
    // CheckSameLayout compared shapes; the value counts must match them too.
    if (b == nullptr || a.values.size() != b->values.size()) {
      return InvalidArgumentError("delta: tensor " + a.name + " has " + std::to_string(a.values.size()) +
                                  " values after training and " +
                                  std::to_string(b == nullptr ? 0 : b->values.size()) + " in the global");
    }
    NamedTensor d;
    d.name = a.name;
    d.shape = a.shape;
    d.values.resize(a.values.size());
    for (size_t i = 0; i < a.values.size(); ++i) d.values[i] = a.values[i] - b->values[i];
    delta.tensors.push_back(std::move(d));
  }
  return delta;
}

uint64_t HashAgentId(std::string_view agent_id) {
  uint64_t h = 14695981039346656037ull;  // FNV-1a 64-bit offset basis
  for (unsigned char c : agent_id) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

namespace {
uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
}  // namespace

uint64_t MixTrainingSeed(uint64_t job_seed, std::string_view agent_id, int64_t round) {
  uint64_t s = SplitMix64(job_seed);
  s = SplitMix64(s ^ HashAgentId(agent_id));
  s = SplitMix64(s ^ static_cast<uint64_t>(round));
  return s;
}

UpdateEncoder::UpdateEncoder(std::string residual_path, std::string job)
    : residual_path_(std::move(residual_path)), job_(std::move(job)) {}

StatusOr<UpdateEncoder::Encoded> UpdateEncoder::Encode(const TensorBundle& delta,
                                                       const UpdateCodecConfig& config, int64_t round,
                                                       uint64_t seed) {
  EncodeOptions eo = config.encode;
  eo.seed = seed;
  Encoded out;
  if (!config.error_feedback || !config.Lossy()) {
    FEDGE_ASSIGN_OR_RETURN(out.payload, EncodeBundle(delta, eo, &out.report));
    return out;
  }
  LoadOnce(round);
  const bool had_residual = feedback_.has_residual();
  Status residual_status;
  FEDGE_ASSIGN_OR_RETURN(out.payload, feedback_.Encode(delta, eo, &out.report, &residual_status));
  out.feedback_applied = had_residual && residual_status.ok();
  pending_ = true;
  pending_round_ = round;
  return out;
}

void UpdateEncoder::Finish(bool accepted) {
  if (!pending_) return;
  pending_ = false;
  if (!accepted) {
    feedback_.Rollback();
    return;
  }
  Persist();
}

void UpdateEncoder::Persist() {
  if (residual_path_.empty()) return;
  const std::string dir = std::filesystem::path(residual_path_).parent_path().string();
  Status st = dir.empty() ? OkStatus() : MakeDirs(dir);
  if (st.ok()) st = feedback_.Save(residual_path_);
  // The marker goes second: after a crash between the two writes it names an
  // older round, which still lets the (newer) residual be used next round.
  if (st.ok()) {
    st = WriteFileAtomic(residual_path_ + ".json",
                         nlohmann::json{{"job", job_}, {"round", pending_round_}}.dump() + "\n");
  }
  if (!st.ok()) {
    log::Warn("cannot persist the error-feedback residual; it is kept in memory only",
              {{"path", residual_path_}, {"error", st.ToString()}});
  }
}

void UpdateEncoder::LoadOnce(int64_t round) {
  if (loaded_) return;
  loaded_ = true;
  if (residual_path_.empty()) return;
  Status st = feedback_.Load(residual_path_);
  if (st.code() == StatusCode::kNotFound) return;  // a fresh agent
  if (!st.ok()) {
    log::Warn("discarding an unreadable error-feedback residual",
              {{"path", residual_path_}, {"error", st.ToString()}});
    return;  // Load cleared it
  }
  // The residual is only valid for the run that left it.
  std::string why;
  auto marker = ReadFile(residual_path_ + ".json");
  if (!marker.ok()) {
    why = "no readable round marker: " + marker.status().ToString();
  } else {
    nlohmann::json j = nlohmann::json::parse(*marker, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object() || !j.contains("job") || !j["job"].is_string() || !j.contains("round") ||
        !j["round"].is_number_integer()) {
      why = "malformed round marker";
    } else if (j["job"].get<std::string>() != job_) {
      why = "left by job " + j["job"].get<std::string>();
    } else if (j["round"].get<int64_t>() >= round) {
      why = "left by round " + std::to_string(j["round"].get<int64_t>()) +
            ", not before this round (a new run of the job)";
    }
  }
  if (!why.empty()) {
    log::Warn("discarding a stale error-feedback residual",
              {{"path", residual_path_}, {"round", round}, {"reason", why}});
    feedback_.Reset();
    return;
  }
  log::Info("error-feedback residual restored",
            {{"path", residual_path_}, {"round", round}, {"norm", feedback_.ResidualNorm()}});
}

StatusOr<TensorBundle> ScaffoldCorrection(const TensorBundle& layout, const TensorBundle* c,
                                          const TensorBundle* c_i) {
  if (c != nullptr)
    FEDGE_RETURN_IF_ERROR(CheckSameLayout(layout, *c).WithContext("scaffold: server control c"));
  if (c_i != nullptr) {
    FEDGE_RETURN_IF_ERROR(CheckSameLayout(layout, *c_i).WithContext("scaffold: agent control c_i"));
  }
  TensorBundle out;
  for (const NamedTensor& t : layout.tensors) {
    NamedTensor d{t.name, t.shape, std::vector<float>(t.values.size(), 0.0f)};
    const NamedTensor* ct = c != nullptr ? c->Find(t.name) : nullptr;
    const NamedTensor* cit = c_i != nullptr ? c_i->Find(t.name) : nullptr;
    for (size_t i = 0; i < d.values.size(); ++i) {
      d.values[i] = (ct != nullptr ? ct->values[i] : 0.0f) - (cit != nullptr ? cit->values[i] : 0.0f);
    }
    out.tensors.push_back(std::move(d));
  }
  return out;
}

StatusOr<TensorBundle> ScaffoldNextControl(const TensorBundle& delta, const TensorBundle* c,
                                           const TensorBundle* c_i, double k_eta) {
  if (!(k_eta > 0)) return InvalidArgumentError("scaffold: local steps x learning rate must be > 0");
  // c_i - c, then minus delta / (K eta): c_i+ = -(c - c_i) - delta / (K eta).
  FEDGE_ASSIGN_OR_RETURN(TensorBundle out, ScaffoldCorrection(delta, c, c_i));
  for (NamedTensor& t : out.tensors) {
    const std::vector<float>& d = delta.Find(t.name)->values;
    for (size_t i = 0; i < t.values.size(); ++i) {
      t.values[i] = static_cast<float>(-static_cast<double>(t.values[i]) - static_cast<double>(d[i]) / k_eta);
    }
  }
  return out;
}

ScaffoldControl::ScaffoldControl(std::string path, std::string job)
    : path_(std::move(path)), job_(std::move(job)) {}

const std::optional<TensorBundle>& ScaffoldControl::Get(int64_t round) {
  if (loaded_ || path_.empty()) {
    loaded_ = true;
    return c_i_;
  }
  loaded_ = true;
  if (!std::filesystem::exists(path_)) return c_i_;  // a fresh agent: c_i = 0
  std::map<std::string, std::string> meta;
  auto bundle = ReadSafetensorsBundle(path_, &meta);
  std::string why;
  if (!bundle.ok()) {
    why = "unreadable: " + bundle.status().ToString();
  } else if (meta["job"] != job_) {
    why = "left by job " + meta["job"];
  } else {
    char* end = nullptr;
    const long long left = std::strtoll(meta["round"].c_str(), &end, 10);
    if (meta["round"].empty() || end == nullptr || *end != '\0') {
      why = "no round in its metadata";
    } else if (left >= round) {
      why = "left by round " + std::to_string(left) + ", not before this round (a new run of the job)";
    }
  }
  if (!why.empty()) {
    log::Warn("discarding the SCAFFOLD control variate",
              {{"path", path_}, {"round", round}, {"reason", why}});
    return c_i_;
  }
  c_i_ = std::move(*bundle);
  log::Info("SCAFFOLD control variate restored", {{"path", path_}, {"round", round}});
  return c_i_;
}

void ScaffoldControl::Set(TensorBundle c_i, int64_t round) {
  c_i_ = std::move(c_i);
  loaded_ = true;
  if (path_.empty()) return;
  const std::string dir = std::filesystem::path(path_).parent_path().string();
  Status st = dir.empty() ? OkStatus() : MakeDirs(dir);
  if (st.ok()) {
    auto bytes = SerializeSafetensors(*c_i_, {{"job", job_}, {"round", std::to_string(round)}});
    st = bytes.ok() ? WriteFileAtomic(path_, *bytes) : bytes.status();
  }
  if (!st.ok()) {
    log::Warn("cannot persist the SCAFFOLD control variate; it is kept in memory only",
              {{"path", path_}, {"error", st.ToString()}});
  }
}

}  // namespace fedge::agent
