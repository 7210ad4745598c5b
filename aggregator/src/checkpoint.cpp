#include "fedge/aggregator/checkpoint.h"

#include <filesystem>
#include <set>

#include "fedge/file_util.h"
#include "fedge/log.h"
#include "fedge/safetensors.h"
#include "json_util.h"

namespace fedge::aggregator {
namespace {

namespace fs = std::filesystem;

constexpr int kFormat = 1;
constexpr char kState[] = "state.json";
constexpr char kPrevState[] = "state.prev.json";
constexpr char kBundlePrefix[] = "global-v";
constexpr char kBundleSuffix[] = ".safetensors";
constexpr char kStrategyPrefix[] = "strategy-v";

std::string Join(const std::string& dir, const std::string& name) { return (fs::path(dir) / name).string(); }

// The bundle file a state JSON names, or "" if the text is not a state.
std::string BundleFileOf(const std::string& state_text) {
  try {
    auto j = nlohmann::json::parse(state_text);
    return j.at("global_file").get<std::string>();
  } catch (const std::exception&) {
    return "";
  }
}

// The strategy-state file a state JSON names, or "".
std::string StrategyFileOf(const std::string& state_text) {
  try {
    auto j = nlohmann::json::parse(state_text);
    return j.value("strategy_file", std::string());
  } catch (const std::exception&) {
    return "";
  }
}

bool EndsWith(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), std::string::npos, suffix) == 0;
}

// Reads a safetensors file named by `state_path`, checking its SHA-256.
StatusOr<TensorBundle> ReadCheckedBundle(const std::string& state_path, const std::string& path,
                                         const std::string& sha) {
  auto bytes = ReadFile(path);
  if (!bytes.ok()) return DataLossError(state_path + ": " + path + ": " + bytes.status().message());
  if (Sha256Hex(*bytes) != sha) {
    return DataLossError(path + ": SHA-256 does not match " + state_path + " (truncated or corrupt)");
  }
  auto file = SafetensorsFile::Parse(std::move(*bytes));
  if (!file.ok()) return DataLossError(path + ": " + file.status().message());
  TensorBundle out;
  for (const StTensorView& t : file->tensors()) {
    auto values = SafetensorsFile::ToFloat32(t);
    if (!values.ok()) return DataLossError(path + ": tensor " + t.name + ": " + values.status().message());
    out.tensors.push_back(NamedTensor{t.name, t.shape, std::move(*values)});
  }
  return out;
}

}  // namespace

CheckpointStore::CheckpointStore(std::string dir) : dir_(std::move(dir)) {}

Status CheckpointStore::Save(const CheckpointData& data) {
  FEDGE_RETURN_IF_ERROR(MakeDirs(dir_));
  std::map<std::string, std::string> metadata = {
      {"fedge.job", data.job},
      {"fedge.global_version", std::to_string(data.global_version)},
      {"fedge.completed_round", std::to_string(data.completed_round)}};
  FEDGE_ASSIGN_OR_RETURN(std::string bundle_bytes, SerializeSafetensors(data.global, metadata));
  const std::string bundle_file = kBundlePrefix + std::to_string(data.global_version) + kBundleSuffix;
  FEDGE_RETURN_IF_ERROR(WriteFileAtomic(Join(dir_, bundle_file), bundle_bytes)
                            .WithContext("checkpoint: writing " + bundle_file));

  std::string strategy_file, strategy_sha;
  if (!data.strategy_state.tensors.empty()) {
    FEDGE_ASSIGN_OR_RETURN(std::string state_bytes, SerializeSafetensors(data.strategy_state, metadata));
    strategy_file = kStrategyPrefix + std::to_string(data.global_version) + kBundleSuffix;
    strategy_sha = Sha256Hex(state_bytes);
    FEDGE_RETURN_IF_ERROR(WriteFileAtomic(Join(dir_, strategy_file), state_bytes)
                              .WithContext("checkpoint: writing " + strategy_file));
  }

  nlohmann::json history = nlohmann::json::array();
  for (const RoundRecord& r : data.history) history.push_back(nlohmann::json::parse(RoundRecordToJson(r)));
  nlohmann::json state = {
      {"format", kFormat},
      {"job", data.job},
      {"completed_round", data.completed_round},
      {"total_rounds", data.total_rounds},
      {"global_version", data.global_version},
      {"global_checksum", data.global_checksum},
      {"global_file", bundle_file},
      {"global_file_sha256", Sha256Hex(bundle_bytes)},
      {"history", history},
      {"final_accuracy", OptionalToJson(data.final_accuracy)},
  };
  if (!data.privacy_rdp.empty()) {
    state["privacy"] = {{"rdp", data.privacy_rdp}, {"rounds", data.privacy_rounds}};
  }
  if (!strategy_file.empty()) {
    state["strategy_file"] = strategy_file;
    state["strategy_file_sha256"] = strategy_sha;
  }
  // safetensors stores tensors sorted by name; the global's own order is part
  // of its encoding (and so of its checksum), so it is kept here.
  nlohmann::json order = nlohmann::json::array();
  for (const NamedTensor& t : data.global.tensors) order.push_back(t.name);
  state["global_tensor_order"] = order;

  // Keep the current state as the fallback, but only if it is a state at all:
  // copying a corrupt state.json over a good state.prev.json would lose it.
  std::string prev_bundle, prev_strategy;
  if (auto current = ReadFile(Join(dir_, kState)); current.ok()) {
    prev_bundle = BundleFileOf(*current);
    prev_strategy = StrategyFileOf(*current);
    if (!prev_bundle.empty()) {
      FEDGE_RETURN_IF_ERROR(WriteFileAtomic(Join(dir_, kPrevState), *current)
                                .WithContext("checkpoint: writing state.prev.json"));
    }
  }
  if (prev_bundle.empty()) {
    if (auto prev = ReadFile(Join(dir_, kPrevState)); prev.ok()) {
      prev_bundle = BundleFileOf(*prev);
      prev_strategy = StrategyFileOf(*prev);
    }
  }
  FEDGE_RETURN_IF_ERROR(WriteFileAtomic(Join(dir_, kState), state.dump(2) + "\n")
                            .WithContext("checkpoint: writing state.json"));

  // Bundles named by neither state are garbage from earlier rounds or crashes.
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir_, ec)) {
    std::string name = entry.path().filename().string();
    if (!EndsWith(name, kBundleSuffix)) continue;
    const bool is_global = name.rfind(kBundlePrefix, 0) == 0;
    const bool is_strategy = name.rfind(kStrategyPrefix, 0) == 0;
    if (!is_global && !is_strategy) continue;
    if (name == bundle_file || name == prev_bundle || name == strategy_file || name == prev_strategy)
      continue;
    fs::remove(entry.path(), ec);
  }
  return OkStatus();
}

StatusOr<CheckpointData> CheckpointStore::LoadState(const std::string& state_path) const {
  FEDGE_ASSIGN_OR_RETURN(std::string text, ReadFile(state_path));
  CheckpointData data;
  std::string bundle_file, bundle_sha, strategy_file, strategy_sha;
  std::vector<std::string> order;  // empty in checkpoints written before it was kept
  try {
    auto j = nlohmann::json::parse(text);
    int format = j.at("format").get<int>();
    if (format != kFormat) {
      return DataLossError(state_path + ": checkpoint format " + std::to_string(format) +
                           " is not supported (this aggregator reads format " + std::to_string(kFormat) +
                           ")");
    }
    data.job = j.at("job").get<std::string>();
    data.completed_round = j.at("completed_round").get<int64_t>();
    data.total_rounds = j.at("total_rounds").get<int64_t>();
    data.global_version = j.at("global_version").get<int64_t>();
    data.global_checksum = j.at("global_checksum").get<std::string>();
    bundle_file = j.at("global_file").get<std::string>();
    bundle_sha = j.at("global_file_sha256").get<std::string>();
    data.final_accuracy = OptionalFromJson(j.at("final_accuracy"));
    if (j.contains("privacy")) {
      data.privacy_rdp = j.at("privacy").at("rdp").get<std::vector<double>>();
      data.privacy_rounds = j.at("privacy").at("rounds").get<int64_t>();
    }
    strategy_file = j.value("strategy_file", std::string());
    strategy_sha = j.value("strategy_file_sha256", std::string());
    if (j.contains("global_tensor_order"))
      order = j.at("global_tensor_order").get<std::vector<std::string>>();
    for (const auto& r : j.at("history")) {
      FEDGE_ASSIGN_OR_RETURN(RoundRecord record, RoundRecordFromJson(r.dump()));
      data.history.push_back(std::move(record));
    }
  } catch (const std::exception& e) {
    return DataLossError(state_path + ": unreadable checkpoint state: " + e.what());
  }
  if (bundle_file.empty() || bundle_file.find('/') != std::string::npos) {
    return DataLossError(state_path + ": invalid global_file \"" + bundle_file + "\"");
  }
  if (data.completed_round < 0 || data.global_version < 1) {
    return DataLossError(state_path + ": invalid round/version " + std::to_string(data.completed_round) +
                         "/" + std::to_string(data.global_version));
  }
  if (strategy_file.find('/') != std::string::npos) {
    return DataLossError(state_path + ": invalid strategy_file \"" + strategy_file + "\"");
  }
  FEDGE_ASSIGN_OR_RETURN(data.global, ReadCheckedBundle(state_path, Join(dir_, bundle_file), bundle_sha));
  if (!order.empty()) {
    // Back into the order the global had, so it re-encodes to the same bytes.
    if (order.size() != data.global.tensors.size()) {
      return DataLossError(state_path + ": global_tensor_order names " + std::to_string(order.size()) +
                           " tensors, " + bundle_file + " holds " +
                           std::to_string(data.global.tensors.size()));
    }
    TensorBundle ordered;
    for (const std::string& name : order) {
      NamedTensor* t = data.global.Find(name);
      if (t == nullptr) {
        return DataLossError(state_path + ": global_tensor_order names \"" + name + "\", which " +
                             bundle_file + " does not hold");
      }
      ordered.tensors.push_back(std::move(*t));
      t->name.clear();  // moved out; a repeated name finds nothing the second time
    }
    data.global = std::move(ordered);
  }
  if (!strategy_file.empty()) {
    FEDGE_ASSIGN_OR_RETURN(data.strategy_state,
                           ReadCheckedBundle(state_path, Join(dir_, strategy_file), strategy_sha));
  }
  return data;
}

StatusOr<std::optional<CheckpointData>> CheckpointStore::Load() const {
  std::error_code ec;
  if (!fs::exists(dir_, ec)) return std::optional<CheckpointData>();
  const std::string state = Join(dir_, kState), prev = Join(dir_, kPrevState);
  const bool has_state = fs::exists(state, ec), has_prev = fs::exists(prev, ec);
  if (!has_state && !has_prev) {
    for (const auto& entry : fs::directory_iterator(dir_, ec)) {
      if (entry.path().filename().string().rfind(kBundlePrefix, 0) == 0) {
        log::Warn(
            "checkpoint dir holds a global bundle but no state.json (a crash before the first "
            "checkpoint completed); starting from scratch",
            {{"dir", dir_}, {"file", entry.path().filename().string()}});
        break;
      }
    }
    return std::optional<CheckpointData>();
  }
  std::string problems;
  if (has_state) {
    auto loaded = LoadState(state);
    if (loaded.ok()) return std::optional<CheckpointData>(std::move(*loaded));
    log::Error("checkpoint state unusable", {{"path", state}, {"error", loaded.status().message()}});
    problems = loaded.status().message();
  } else {
    problems = state + " is missing";
  }
  if (has_prev) {
    auto loaded = LoadState(prev);
    if (loaded.ok()) {
      log::Warn("resuming from the previous checkpoint",
                {{"path", prev}, {"completed_round", loaded->completed_round}});
      return std::optional<CheckpointData>(std::move(*loaded));
    }
    problems += "; " + loaded.status().message();
  } else {
    problems += "; no " + std::string(kPrevState) + " to fall back to";
  }
  return DataLossError("checkpoint dir " + dir_ + " has no usable checkpoint: " + problems +
                       ". Move the directory away to start the job from scratch.");
}

}  // namespace fedge::aggregator
