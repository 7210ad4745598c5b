// `fedge run`'s report: see run_report.h.
#include "fedge/cli/run_report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <sstream>

#include "fedge/cli/io.h"

namespace fedge::cli {

double RoundStatus::BytesUpPerAgent() const {
  return participants > 0 ? static_cast<double>(bytes_up) / participants : static_cast<double>(bytes_up);
}

double RoundStatus::BytesDownPerAgent() const {
  const int n = std::max(participants, invited);
  return n > 0 ? static_cast<double>(bytes_down) / n : static_cast<double>(bytes_down);
}

namespace {

std::optional<double> OptionalNumber(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number()) return std::nullopt;
  return it->get<double>();
}

template <typename T>
T Number(const nlohmann::json& j, const char* key, T fallback = T{}) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number()) return fallback;
  return it->get<T>();
}

std::string Text(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : "";
}

}  // namespace

StatusOr<JobStatus> ParseJobStatus(const std::string& text) {
  try {
    const nlohmann::json j = nlohmann::json::parse(text);
    if (!j.is_object()) return DataLossError("status is not a JSON object");
    JobStatus s;
    s.job = Text(j, "job");
    s.state = Text(j, "state");
    if (s.state.empty()) return DataLossError("status has no \"state\"");
    s.round = Number<int64_t>(j, "round");
    s.total_rounds = Number<int64_t>(j, "total_rounds");
    s.phase = Text(j, "phase");
    s.global_version = Number<int64_t>(j, "global_version");
    s.agents_joined = Number<int>(j, "agents_joined");
    s.final_accuracy = OptionalNumber(j, "final_accuracy");
    s.message = Text(j, "message");
    if (auto it = j.find("rounds"); it != j.end() && it->is_array()) {
      for (const auto& r : *it) {
        if (!r.is_object()) continue;
        RoundStatus rs;
        rs.round = Number<int64_t>(r, "round");
        rs.participants = Number<int>(r, "participants");
        rs.invited = Number<int>(r, "invited");
        rs.loss = OptionalNumber(r, "loss");
        rs.accuracy = OptionalNumber(r, "accuracy");
        rs.eval_examples = Number<int64_t>(r, "eval_examples");
        rs.bytes_up = Number<uint64_t>(r, "bytes_up");
        rs.bytes_down = Number<uint64_t>(r, "bytes_down");
        rs.seconds = Number<double>(r, "seconds");
        rs.global_version = Number<int64_t>(r, "global_version");
        rs.epsilon = OptionalNumber(r, "epsilon");
        if (auto fb = r.find("feedback_examples"); fb != r.end() && fb->is_object()) {
          for (const auto& [agent, n] : fb->items()) {
            if (n.is_number_integer()) rs.feedback_examples[agent] = n.get<int64_t>();
          }
        }
        s.rounds.push_back(rs);
      }
    }
    return s;
  } catch (const nlohmann::json::exception& e) {
    return DataLossError(std::string("status is not valid JSON: ") + e.what());
  }
}

std::string FormatBytes(double bytes) {
  char buf[32];
  if (bytes < 1024) {
    std::snprintf(buf, sizeof(buf), "%.0f B", bytes);
  } else if (bytes < 1024.0 * 1024) {
    std::snprintf(buf, sizeof(buf), "%.1f KiB", bytes / 1024);
  } else if (bytes < 1024.0 * 1024 * 1024) {
    std::snprintf(buf, sizeof(buf), "%.1f MiB", bytes / (1024.0 * 1024));
  } else {
    std::snprintf(buf, sizeof(buf), "%.2f GiB", bytes / (1024.0 * 1024 * 1024));
  }
  return buf;
}

namespace {
std::string Fixed(std::optional<double> v, const char* fmt) {
  if (!v || !std::isfinite(*v)) return "-";
  char buf[32];
  std::snprintf(buf, sizeof(buf), fmt, *v);
  return buf;
}
}  // namespace

size_t PrintableRounds(const JobStatus& s) {
  if (s.rounds.empty() || s.state == "Succeeded" || s.state == "Failed") return s.rounds.size();
  const RoundStatus& last = s.rounds.back();
  return last.accuracy || last.loss ? s.rounds.size() : s.rounds.size() - 1;
}

std::string FormatRoundLine(const RoundStatus& r, int64_t total_rounds) {
  std::ostringstream out;
  out << "round " << r.round << "/" << total_rounds << "  participants " << r.participants << "  loss "
      << Fixed(r.loss, "%.3f");
  // A causal-LM job reports its held-out loss only; perplexity is its readable form.
  if (!r.accuracy && r.loss) {
    out << "  perplexity " << Fixed(std::exp(*r.loss), "%.2f");
  } else {
    out << "  accuracy " << Fixed(r.accuracy, "%.3f");
  }
  out << "  up " << FormatBytes(r.BytesUpPerAgent()) << "/agent  down " << FormatBytes(r.BytesDownPerAgent())
      << "/agent  " << Fixed(r.seconds, "%.1f") << " s";
  if (r.epsilon) out << "  epsilon " << Fixed(r.epsilon, "%.3f");
  if (!r.feedback_examples.empty()) {
    int64_t total = 0;
    for (const auto& [agent, n] : r.feedback_examples) total += n;
    out << "  feedback " << total << " examples/" << r.feedback_examples.size() << " agents";
  }
  return out.str();
}

std::string FormatStatusLine(const JobStatus& s, double elapsed) {
  std::ostringstream out;
  char t[32];
  std::snprintf(t, sizeof(t), "[%6.1f s] ", elapsed);
  out << t << s.state;
  if (s.state == "Running" || s.state == "Initializing") {
    out << ": round " << s.round << "/" << s.total_rounds;
    if (!s.phase.empty() && s.phase != "idle") out << ", " << s.phase;
  }
  out << "; " << s.agents_joined << (s.agents_joined == 1 ? " agent" : " agents") << " joined";
  if (!s.message.empty() && s.state != "Running") out << " (" << s.message << ")";
  return out.str();
}

DataBaselines ReadDataBaselines(const std::string& data_dir) {
  DataBaselines b;
  auto text = ReadWholeFile(data_dir + "/meta.json");
  if (!text.ok()) return b;
  try {
    const nlohmann::json j = nlohmann::json::parse(*text);
    b.majority_baseline = OptionalNumber(j, "majority_baseline");
    b.chance = OptionalNumber(j, "chance");
  } catch (const nlohmann::json::exception&) {
  }
  return b;
}

std::string RunSummaryJson(const RunSummary& s) {
  auto opt = [](std::optional<double> v) -> nlohmann::json {
    return v && std::isfinite(*v) ? nlohmann::json(*v) : nlohmann::json(nullptr);
  };
  nlohmann::ordered_json rounds = nlohmann::ordered_json::array();
  for (const RoundStatus& r : s.rounds) {
    nlohmann::ordered_json j;
    j["round"] = r.round;
    j["participants"] = r.participants;
    j["loss"] = opt(r.loss);
    j["accuracy"] = opt(r.accuracy);
    j["bytes_up"] = static_cast<uint64_t>(std::llround(r.BytesUpPerAgent()));
    j["bytes_down"] = static_cast<uint64_t>(std::llround(r.BytesDownPerAgent()));
    j["seconds"] = r.seconds;
    if (r.epsilon) j["epsilon"] = *r.epsilon;
    if (!r.feedback_examples.empty()) j["feedback_examples"] = r.feedback_examples;
    rounds.push_back(j);
  }
  nlohmann::ordered_json j;
  j["job"] = s.job;
  j["rounds"] = rounds;
  j["final_accuracy"] = opt(s.final_accuracy);
  j["majority_baseline"] = opt(s.baselines.majority_baseline);
  j["chance"] = opt(s.baselines.chance);
  j["centralized"] = s.centralized;
  j["wall_seconds"] = s.wall_seconds;
  if (!s.failed_agents.empty()) {
    nlohmann::ordered_json failed = nlohmann::ordered_json::array();
    for (const FailedAgent& f : s.failed_agents) {
      failed.push_back(
          {{"name", f.name}, {"how", f.how}, {"at_seconds", f.at_seconds}, {"during_round", f.during_round}});
    }
    j["failed_agents"] = failed;
  }
  return j.dump(2) + "\n";
}

std::string DescribeChildFailure(const ChildExit& exit, int tail_lines) {
  std::ostringstream out;
  out << exit.name << " (pid " << exit.pid << ") ended unexpectedly: " << exit.Describe() << "\n";
  if (exit.log_path.empty()) return out.str();
  const std::string tail = TailFile(exit.log_path, tail_lines);
  if (tail.empty()) {
    out << "  (its log " << exit.log_path << " is empty)\n";
    return out.str();
  }
  out << "last lines of " << exit.log_path << ":\n";
  std::istringstream lines(tail);
  std::string line;
  while (std::getline(lines, line)) out << "  | " << line << "\n";
  return out.str();
}

std::string FormatRunBanner(const RunPlan& plan, const std::string& targets_path) {
  const JobSpec& spec = plan.spec;
  std::ostringstream out;
  out << "job " << spec.Key() << (plan.centralized ? " (centralized baseline)" : "") << ": "
      << spec.rounds.total << " rounds, " << plan.agents << (plan.agents == 1 ? " agent" : " agents") << ", "
      << spec.rounds.localSteps << " local steps x batch " << spec.rounds.batchSize << ", strategy "
      << spec.strategy.name << ", codec " << spec.compression.codec << "\n"
      << "  model " << plan.model_dir << "\n  data  " << plan.data_dir << "\n  work  " << plan.work_dir
      << " (logs in " << plan.work_dir << "/logs)\n  aggregator status http://" << plan.host << ":"
      << plan.http_port << "/v1/status\n"
      << "  grpc  " << plan.host << ":" << plan.grpc_port
      << (plan.tls ? ", mutual TLS (a CA made for this run; certificates in " + plan.work_dir + "/pki)\n"
                   : ", plaintext (privacy.tls: false)\n")
      << "  prometheus targets " << targets_path << "\n";
  return out.str();
}

RunReport ReportRun(const RunPlan& plan, const RunOutcome& outcome, const DataBaselines& baselines) {
  RunReport report;
  switch (outcome.end) {
    case RunOutcome::End::kInterrupted:
      report.exit_code = kExitInterrupted;
      report.err = "interrupted; logs in " + plan.work_dir + "/logs\n";
      return report;
    case RunOutcome::End::kFailed:
      report.exit_code = kExitJobFailed;
      report.err = "job failed; logs in " + plan.work_dir + "/logs\n";
      return report;
    case RunOutcome::End::kSucceeded:
      break;
  }
  RunSummary summary;
  summary.job = plan.spec.Key();
  if (outcome.last_status) {
    summary.rounds = outcome.last_status->rounds;
    summary.final_accuracy = outcome.last_status->final_accuracy;
  }
  if (!summary.final_accuracy && !summary.rounds.empty())
    summary.final_accuracy = summary.rounds.back().accuracy;
  summary.baselines = baselines;
  summary.centralized = plan.centralized;
  summary.wall_seconds = outcome.wall_seconds;
  summary.failed_agents = outcome.failed_agents;

  char line[256];
  std::snprintf(line, sizeof(line), "\njob %s succeeded in %.1f s\n", summary.job.c_str(),
                summary.wall_seconds);
  std::ostringstream out;
  out << line;
  const std::optional<double> final_loss = summary.rounds.empty() ? std::nullopt : summary.rounds.back().loss;
  if (!summary.final_accuracy && final_loss) {
    // Causal-LM job: no accuracy to compare with baselines.
    out << "  final held-out loss " << Fixed(final_loss, "%.4f") << "\n"
        << "  final perplexity    " << Fixed(std::exp(*final_loss), "%.2f") << "\n";
  } else {
    out << "  final accuracy     " << Fixed(summary.final_accuracy, "%.4f") << "\n"
        << "  majority baseline  " << Fixed(summary.baselines.majority_baseline, "%.4f") << "\n"
        << "  chance             " << Fixed(summary.baselines.chance, "%.4f") << "\n";
  }
  report.exit_code = kExitOk;
  report.out = out.str();
  report.summary = std::move(summary);
  return report;
}

}  // namespace fedge::cli
