#include "fedge/log.h"

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <mutex>

#include <nlohmann/json.hpp>

namespace fedge::log {
namespace {

struct State {
  std::mutex mu;
  std::string component = "fedge";  // guarded by mu
  Level level = Level::kInfo;
  Format format = Format::kLogfmt;
  std::shared_ptr<spdlog::logger> logger;
};

State& GetState() {
  static State* state = [] {
    auto* s = new State();
    s->logger = spdlog::stderr_logger_mt("fedge");
    s->logger->set_pattern("%v");
    s->logger->flush_on(spdlog::level::trace);
    return s;
  }();
  return *state;
}

std::string_view LevelName(Level level) {
  switch (level) {
    case Level::kDebug:
      return "debug";
    case Level::kInfo:
      return "info";
    case Level::kWarn:
      return "warn";
    case Level::kError:
      return "error";
  }
  return "info";
}

bool NeedsQuotes(std::string_view v) {
  if (v.empty()) return true;
  for (char c : v) {
    if (c == ' ' || c == '"' || c == '=' || c == '\\' || static_cast<unsigned char>(c) < 0x20) return true;
  }
  return false;
}

void AppendLogfmtValue(std::string* out, std::string_view v, bool force_quotes) {
  if (!force_quotes && !NeedsQuotes(v)) {
    out->append(v);
    return;
  }
  out->push_back('"');
  for (char c : v) {
    switch (c) {
      case '"':
        out->append("\\\"");
        break;
      case '\\':
        out->append("\\\\");
        break;
      case '\n':
        out->append("\\n");
        break;
      case '\t':
        out->append("\\t");
        break;
      default:
        out->push_back(c);
    }
  }
  out->push_back('"');
}

std::string Timestamp() {
  auto now = std::chrono::system_clock::now();
  auto secs = std::chrono::system_clock::to_time_t(now);
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
                tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms));
  return buf;
}

}  // namespace

std::string Field::FormatDouble(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.6g", v);
  return buf;
}

void Init(std::string_view component, Level level, Format format) {
  State& s = GetState();
  std::lock_guard<std::mutex> lock(s.mu);
  s.component = std::string(component);
  s.level = level;
  s.format = format;
}

bool ParseLevel(std::string_view text, Level* level) {
  if (text == "debug")
    *level = Level::kDebug;
  else if (text == "info")
    *level = Level::kInfo;
  else if (text == "warn" || text == "warning")
    *level = Level::kWarn;
  else if (text == "error")
    *level = Level::kError;
  else
    return false;
  return true;
}

bool ParseFormat(std::string_view text, Format* format) {
  if (text == "logfmt" || text == "text")
    *format = Format::kLogfmt;
  else if (text == "json")
    *format = Format::kJson;
  else
    return false;
  return true;
}

void Write(Level level, std::string_view msg, Fields fields) {
  State& s = GetState();
  std::string line;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    if (level < s.level) return;
    if (s.format == Format::kJson) {
      nlohmann::json j;
      j["ts"] = Timestamp();
      j["level"] = LevelName(level);
      j["component"] = s.component;
      j["msg"] = msg;
      for (const Field& f : fields) j[f.key] = f.value;
      line = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    } else {
      line = "ts=" + Timestamp() + " level=" + std::string(LevelName(level)) + " component=" + s.component +
             " msg=";
      AppendLogfmtValue(&line, msg, /*force_quotes=*/true);
      for (const Field& f : fields) {
        line.push_back(' ');
        line.append(f.key);
        line.push_back('=');
        AppendLogfmtValue(&line, f.value, /*force_quotes=*/false);
      }
    }
  }
  s.logger->info(line);
}

}  // namespace fedge::log
