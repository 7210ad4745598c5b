#include "fedge/aggregator/round_record.h"

#include "json_util.h"

namespace fedge::aggregator {

std::string RoundRecordToJson(const RoundRecord& r) {
  nlohmann::json j = {
      {"round", r.round},
      {"participants", r.participants},
      {"invited", r.invited},
      {"loss", OptionalToJson(r.loss)},
      {"accuracy", OptionalToJson(r.accuracy)},
      {"eval_examples", r.eval_examples},
      {"evaluators", r.evaluators},
      {"train_loss", OptionalToJson(r.train_loss)},
      {"bytes_up", r.bytes_up},
      {"bytes_down", r.bytes_down},
      {"raw_bytes_up", r.raw_bytes_up},
      {"seconds", r.seconds},
      {"global_version", r.global_version},
      {"close_reason", r.close_reason},
  };
  if (r.epsilon) j["epsilon"] = OptionalToJson(r.epsilon);
  if (!r.feedback_examples.empty()) j["feedback_examples"] = r.feedback_examples;
  return j.dump();
}

StatusOr<RoundRecord> RoundRecordFromJson(const std::string& json_text) {
  RoundRecord r;
  const char* key = "";
  try {
    nlohmann::json j = nlohmann::json::parse(json_text);
    key = "round";
    r.round = j.at(key).get<int64_t>();
    key = "participants";
    r.participants = j.at(key).get<int>();
    key = "invited";
    r.invited = j.value(key, 0);
    key = "loss";
    r.loss = OptionalFromJson(j.at(key));
    key = "accuracy";
    r.accuracy = OptionalFromJson(j.at(key));
    key = "eval_examples";
    r.eval_examples = j.at(key).get<int64_t>();
    key = "evaluators";
    r.evaluators = j.value(key, 0);
    key = "train_loss";
    r.train_loss = j.contains(key) ? OptionalFromJson(j.at(key)) : std::nullopt;
    key = "epsilon";
    r.epsilon = j.contains(key) ? OptionalFromJson(j.at(key)) : std::nullopt;
    key = "bytes_up";
    r.bytes_up = j.at(key).get<uint64_t>();
    key = "bytes_down";
    r.bytes_down = j.at(key).get<uint64_t>();
    key = "raw_bytes_up";
    r.raw_bytes_up = j.value(key, uint64_t{0});
    key = "seconds";
    r.seconds = j.at(key).get<double>();
    key = "global_version";
    r.global_version = j.at(key).get<int64_t>();
    key = "close_reason";
    r.close_reason = j.value(key, std::string());
    key = "feedback_examples";
    if (j.contains(key)) r.feedback_examples = j.at(key).get<std::map<std::string, int64_t>>();
  } catch (const std::exception& e) {
    return InvalidArgumentError(std::string("round record: key \"") + key + "\": " + e.what());
  }
  return r;
}

}  // namespace fedge::aggregator
