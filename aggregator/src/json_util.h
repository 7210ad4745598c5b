// nlohmann::json helpers shared by status and checkpoint code (private header:
// nlohmann stays out of the public headers).
#pragma once

#include <optional>

#include <nlohmann/json.hpp>

namespace fedge::aggregator {

inline nlohmann::json OptionalToJson(const std::optional<double>& v) {
  return v ? nlohmann::json(*v) : nlohmann::json(nullptr);
}

inline std::optional<double> OptionalFromJson(const nlohmann::json& j) {
  if (j.is_null()) return std::nullopt;
  return j.get<double>();
}

}  // namespace fedge::aggregator
