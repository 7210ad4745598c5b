// Structured logging: one line per event, logfmt by default
//   ts=2026-11-28T15:00:00.123Z level=info component=aggregator msg="round closed" round=3
// or JSON lines with --log-format=json. Thread-safe; writes to stderr.
#pragma once

#include <initializer_list>
#include <string>
#include <string_view>
#include <type_traits>

namespace fedge::log {

enum class Level { kDebug, kInfo, kWarn, kError };
enum class Format { kLogfmt, kJson };

struct Field {
  template <typename T>
  Field(std::string_view k, const T& v) : key(k), value(ToString(v)), quoted(IsText<T>()) {}

  std::string key;
  std::string value;
  bool quoted;

 private:
  template <typename T>
  static constexpr bool IsText() {
    return std::is_convertible_v<T, std::string_view>;
  }
  template <typename T>
  static std::string ToString(const T& v) {
    if constexpr (std::is_same_v<T, bool>) {
      return v ? "true" : "false";
    } else if constexpr (std::is_convertible_v<T, std::string_view>) {
      return std::string(std::string_view(v));
    } else if constexpr (std::is_floating_point_v<T>) {
      return FormatDouble(static_cast<double>(v));
    } else {
      return std::to_string(v);
    }
  }
  static std::string FormatDouble(double v);
};

using Fields = std::initializer_list<Field>;

// Sets the component name stamped on every line, the minimum level and the format.
// Call once from main before other threads start.
void Init(std::string_view component, Level level = Level::kInfo, Format format = Format::kLogfmt);

// Parses "debug" | "info" | "warn" | "error"; false on anything else.
bool ParseLevel(std::string_view text, Level* level);
bool ParseFormat(std::string_view text, Format* format);

void Write(Level level, std::string_view msg, Fields fields);
inline void Debug(std::string_view msg, Fields fields = {}) { Write(Level::kDebug, msg, fields); }
inline void Info(std::string_view msg, Fields fields = {}) { Write(Level::kInfo, msg, fields); }
inline void Warn(std::string_view msg, Fields fields = {}) { Write(Level::kWarn, msg, fields); }
inline void Error(std::string_view msg, Fields fields = {}) { Write(Level::kError, msg, fields); }

}  // namespace fedge::log
