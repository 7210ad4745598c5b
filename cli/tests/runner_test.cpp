#include "fedge/cli/runner.h"

#include <gtest/gtest.h>
#include <algorithm>

#include <sys/stat.h>
#include <unistd.h>
#include <cmath>

#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <thread>

#include "fedge/cli/io.h"
#include "temp_dir.h"

namespace fedge::cli {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

const char* kJob = R"(apiVersion: fedge.io/v1alpha1
kind: FederatedTrainingJob
metadata:
  name: unit
spec:
  model: {path: models/m, labels: [a, b]}
  data: {path: data/d}
  agents: {minAgents: 3, replicas: 3}
  rounds: {total: 4, quorum: 2, localSteps: 10}
)";

JobSpec Job() {
  auto spec = ParseJobSpec(kJob);
  EXPECT_TRUE(spec.ok()) << spec.status().ToString();
  return *spec;
}

void WriteExecutable(const std::string& path, const std::string& text) {
  ASSERT_TRUE(WriteWholeFile(path, text).ok());
  ASSERT_EQ(::chmod(path.c_str(), 0755), 0);
}

TEST(PlanRunTest, ResolvesRelativePathsAndKeepsSpecCounts) {
  RunOptions o;
  auto plan = PlanRun(Job(), o, "/home/u/proj");
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  EXPECT_EQ(plan->agents, 3);
  EXPECT_EQ(plan->federated_agents, 3);
  EXPECT_EQ(plan->model_dir, "/home/u/proj/models/m");
  EXPECT_EQ(plan->data_dir, "/home/u/proj/data/d");
  EXPECT_EQ(plan->spec.model.path, plan->model_dir);
  EXPECT_EQ(plan->spec.data.path, plan->data_dir);
  EXPECT_EQ(plan->work_dir, "/home/u/proj/.fedge/runs/unit");
  EXPECT_EQ(plan->config_path, "/home/u/proj/.fedge/runs/unit/job.yaml");
  EXPECT_EQ(plan->spec.rounds.localSteps, 10);
  EXPECT_FALSE(plan->centralized);
}

TEST(PlanRunTest, CommandLineOverridesWin) {
  RunOptions o;
  o.agents = 1;
  o.rounds = 2;
  o.data_dir = "/abs/data";
  o.model_dir = "rel/model";
  o.work_dir = "w";
  auto plan = PlanRun(Job(), o, "/cwd");
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  EXPECT_EQ(plan->agents, 1);
  EXPECT_EQ(plan->spec.agents.replicas, 1);
  EXPECT_EQ(plan->spec.rounds.quorum, 1) << "quorum follows a smaller --agents instead of failing validation";
  EXPECT_EQ(plan->spec.rounds.total, 2);
  EXPECT_EQ(plan->data_dir, "/abs/data");
  EXPECT_EQ(plan->model_dir, "/cwd/rel/model");
  EXPECT_EQ(plan->work_dir, "/cwd/w");
}

TEST(PlanRunTest, CentralizedRunsOneAgentWithNTimesTheLocalSteps) {
  RunOptions o;
  o.centralized = true;
  auto plan = PlanRun(Job(), o, "/cwd");
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  EXPECT_EQ(plan->agents, 1);
  EXPECT_EQ(plan->federated_agents, 3);
  EXPECT_EQ(plan->spec.rounds.localSteps, 30);
  EXPECT_EQ(plan->spec.rounds.quorum, 1);
  EXPECT_EQ(plan->spec.agents.replicas, 1);
  EXPECT_EQ(plan->work_dir, "/cwd/.fedge/runs/unit-centralized");
  // The resolved manifest the children read is itself valid.
  auto reparsed = ParseJobSpec(JobSpecToYaml(plan->spec));
  ASSERT_TRUE(reparsed.ok()) << reparsed.status().ToString();
  EXPECT_EQ(*reparsed, plan->spec);
}

TEST(BuildChildSpecsTest, FollowsTheBinaryContracts) {
  RunPlan p;
  p.agents = 2;
  p.work_dir = "/w";
  p.data_dir = "/d";
  p.model_dir = "/m";
  p.config_path = "/w/job.yaml";
  p.aggregator_bin = "/bin/agg";
  p.agent_bin = "/bin/agent";
  p.grpc_port = 5000;
  p.http_port = 5001;
  p.agent_http_ports = {5002, 5003};
  auto children = BuildChildSpecs(p);
  ASSERT_EQ(children.size(), 3u);
  EXPECT_EQ(children[0].name, "aggregator");
  EXPECT_EQ(children[0].argv,
            (std::vector<std::string>{"/bin/agg", "--config", "/w/job.yaml", "--listen", "127.0.0.1:5000",
                                      "--http", "127.0.0.1:5001", "--checkpoint-dir", "/w/aggregator",
                                      "--expected-agents", "2", "--exit-when-done"}));
  EXPECT_EQ(children[0].log_path, "/w/logs/aggregator.log");
  EXPECT_EQ(children[2].name, "agent-1");
  EXPECT_EQ(children[2].argv,
            (std::vector<std::string>{"/bin/agent", "--config", "/w/job.yaml", "--aggregator",
                                      "127.0.0.1:5000", "--agent-id", "agent-1", "--node-name", "local-1",
                                      "--data-dir", "/d/agent-1", "--model-dir", "/m", "--http",
                                      "127.0.0.1:5003", "--state-dir", "/w/agent-1", "--exit-when-done"}));
  EXPECT_EQ(children[2].log_path, "/w/logs/agent-1.log");

  // --serve: nobody leaves when the job is done; the agents keep serving.
  p.serve = true;
  children = BuildChildSpecs(p);
  ASSERT_EQ(children.size(), 3u);
  for (const ChildSpec& c : children) {
    EXPECT_EQ(std::count(c.argv.begin(), c.argv.end(), "--exit-when-done"), 0) << c.name;
  }
  p.serve = false;

  p.centralized = true;
  p.agents = 1;
  children = BuildChildSpecs(p);
  ASSERT_EQ(children.size(), 2u);
  EXPECT_EQ(children[1].name, "central");
  EXPECT_EQ(children[1].argv[6], "central");
  EXPECT_EQ(children[1].argv[10], "/d/all");
  EXPECT_EQ(children[0].argv[10], "1");
}

// The value following `flag` in a child's argv ("" if absent).
std::string FlagValue(const ChildSpec& child, const std::string& flag) {
  for (size_t i = 0; i + 1 < child.argv.size(); ++i) {
    if (child.argv[i] == flag) return child.argv[i + 1];
  }
  return "";
}

TEST(PrometheusTargetsTest, ListsEveryChildAtItsHttpPortWithJobComponentAndAgentLabels) {
  auto plan = PlanRun(Job(), RunOptions{}, "/cwd");
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  RunPlan p = *plan;
  p.agents = 3;
  p.grpc_port = 6000;
  p.http_port = 6001;
  p.agent_http_ports = {6002, 6003, 6004};
  const auto j = nlohmann::json::parse(PrometheusTargetsJson(p));
  ASSERT_TRUE(j.is_array());
  ASSERT_EQ(j.size(), 4u) << j.dump();
  EXPECT_EQ(j[0], nlohmann::json::parse(R"({"targets": ["127.0.0.1:6001"],
      "labels": {"job": "fedge-local", "component": "aggregator", "fedge_job": "default/unit"}})"));
  EXPECT_EQ(j[3], nlohmann::json::parse(R"({"targets": ["127.0.0.1:6004"],
      "labels": {"job": "fedge-local", "component": "agent", "fedge_job": "default/unit", "agent": "agent-2"}})"));
  // Each target is where that child serves HTTP, never the gRPC port.
  const auto children = BuildChildSpecs(p);
  ASSERT_EQ(children.size(), j.size());
  for (size_t i = 0; i < children.size(); ++i) {
    EXPECT_EQ(j[i]["targets"][0], FlagValue(children[i], "--http")) << children[i].name;
    if (i > 0) {
      EXPECT_EQ(j[i]["labels"]["agent"], children[i].name);
    }
    // file_sd accepts only string label values.
    for (const auto& [name, value] : j[i]["labels"].items()) EXPECT_TRUE(value.is_string()) << name;
  }

  p.centralized = true;
  p.agents = 1;
  const auto central = nlohmann::json::parse(PrometheusTargetsJson(p));
  ASSERT_EQ(central.size(), 2u);
  EXPECT_EQ(central[1]["labels"]["agent"], "central");
  EXPECT_EQ(central[1]["targets"][0], "127.0.0.1:6002");
}

TEST(FindBinaryTest, SearchesBinDirThenSiblingsThenBuildTreeThenPath) {
  TempDir t;
  const std::string root = t.path();
  fs::create_directories(root + "/build/cli");
  fs::create_directories(root + "/build/aggregator");
  fs::create_directories(root + "/bin");
  fs::create_directories(root + "/path");
  WriteExecutable(root + "/build/aggregator/fedge-aggregator", "#!/bin/sh\n");
  WriteExecutable(root + "/path/fedge-agent", "#!/bin/sh\n");
  ASSERT_TRUE(WriteWholeFile(root + "/path/fedge-other", "not executable").ok());
  const std::string self = root + "/build/cli/fedge";

  auto agg = FindBinary("fedge-aggregator", "", self, root + "/path");
  ASSERT_TRUE(agg.ok()) << agg.status().ToString();
  EXPECT_EQ(*agg, root + "/build/aggregator/fedge-aggregator");
  auto agent = FindBinary("fedge-agent", "", self, "/nonexistent:" + root + "/path");
  ASSERT_TRUE(agent.ok());
  EXPECT_EQ(*agent, root + "/path/fedge-agent");
  EXPECT_FALSE(FindBinary("fedge-other", "", self, root + "/path").ok()) << "not executable";

  // --bin-dir is authoritative: no fallback.
  auto missing = FindBinary("fedge-aggregator", root + "/bin", self, root + "/path");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("--bin-dir"), std::string::npos);
  WriteExecutable(root + "/bin/fedge-aggregator", "#!/bin/sh\n");
  EXPECT_EQ(*FindBinary("fedge-aggregator", root + "/bin", self, ""), root + "/bin/fedge-aggregator");

  auto none = FindBinary("fedge-agent", "", self, "");
  ASSERT_FALSE(none.ok());
  EXPECT_NE(none.status().message().find(root + "/build/agent/fedge-agent"), std::string::npos);
}

TEST(CheckRunInputsTest, NamesTheCommandThatCreatesWhatIsMissing) {
  TempDir t;
  RunOptions o;
  o.model_dir = t.path() + "/model";
  o.data_dir = t.path() + "/data";
  auto plan = PlanRun(Job(), o, "/");
  ASSERT_TRUE(plan.ok());
  Status s = CheckRunInputs(*plan);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("scripts/fetch-model.sh"), std::string::npos) << s.message();

  fs::create_directories(t.path() + "/model");
  ASSERT_TRUE(WriteWholeFile(t.path() + "/model/config.json", "{}").ok());
  s = CheckRunInputs(*plan);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("fedge data wordnet --agents 3"), std::string::npos) << s.message();

  for (int i = 0; i < 2; ++i) {
    fs::create_directories(t.path() + "/data/agent-" + std::to_string(i));
    ASSERT_TRUE(WriteWholeFile(t.path() + "/data/agent-" + std::to_string(i) + "/train.jsonl", "").ok());
  }
  s = CheckRunInputs(*plan);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("agent-2/train.jsonl"), std::string::npos) << s.message();
  fs::create_directories(t.path() + "/data/agent-2");
  ASSERT_TRUE(WriteWholeFile(t.path() + "/data/agent-2/train.jsonl", "").ok());
  EXPECT_TRUE(CheckRunInputs(*plan).ok());
  ASSERT_TRUE(WriteWholeFile(t.path() + "/data/labels.json", R"(["a", "b"])").ok());
  EXPECT_TRUE(CheckRunInputs(*plan).ok());
  ASSERT_TRUE(WriteWholeFile(t.path() + "/data/labels.json", R"(["a", "noun.animal"])").ok());
  s = CheckRunInputs(*plan);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(
      s.message().find("\"noun.animal\" of " + t.path() + "/data/labels.json is not in spec.model.labels"),
      std::string::npos)
      << s.message();
  ASSERT_TRUE(WriteWholeFile(t.path() + "/data/labels.json", R"(["a", "b"])").ok());

  o.centralized = true;
  auto central = PlanRun(Job(), o, "/");
  ASSERT_TRUE(central.ok());
  s = CheckRunInputs(*central);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("all/train.jsonl"), std::string::npos) << s.message();
}

const char* kStatus = R"({"job":"default/unit","state":"Running","round":3,"total_rounds":5,"phase":"train",
  "global_version":3,"global_checksum":"ab","agents_joined":4,"message":"",
  "rounds":[{"round":1,"participants":4,"invited":4,"loss":1.5,"accuracy":0.25,"eval_examples":2000,
             "bytes_up":409600,"bytes_down":1048576,"raw_bytes_up":1638400,"seconds":12.34,"global_version":2},
            {"round":2,"participants":3,"invited":4,"loss":null,"accuracy":null,"eval_examples":0,
             "bytes_up":300,"bytes_down":800,"seconds":1.0,"global_version":3}],
  "final_accuracy":null})";

TEST(JobStatusTest, ParsesAggregatorStatus) {
  auto s = ParseJobStatus(kStatus);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->job, "default/unit");
  EXPECT_EQ(s->state, "Running");
  EXPECT_EQ(s->round, 3);
  EXPECT_EQ(s->total_rounds, 5);
  EXPECT_EQ(s->agents_joined, 4);
  ASSERT_EQ(s->rounds.size(), 2u);
  EXPECT_DOUBLE_EQ(*s->rounds[0].accuracy, 0.25);
  EXPECT_EQ(s->rounds[0].bytes_up, 409600u);
  EXPECT_FALSE(s->rounds[1].loss.has_value());
  EXPECT_FALSE(s->final_accuracy.has_value());
  EXPECT_FALSE(ParseJobStatus("{\"rounds\": []}").ok()) << "no state";
  EXPECT_FALSE(ParseJobStatus("<html>").ok());
}

// A round evaluated with the next round's updates is printed once it has its
// accuracy (or the job ended), not with "accuracy -".
TEST(JobStatusTest, ARoundIsPrintedOnceEvaluated) {
  JobStatus s;
  s.state = "Running";
  EXPECT_EQ(PrintableRounds(s), 0u);
  s.rounds.resize(2);
  s.rounds[0].accuracy = 0.5;
  EXPECT_EQ(PrintableRounds(s), 1u);  // round 2 waits for its evaluation
  s.rounds[1].loss = 2.0;             // a causal-LM job: held-out loss only
  EXPECT_EQ(PrintableRounds(s), 2u);
  s.rounds.resize(3);
  EXPECT_EQ(PrintableRounds(s), 2u);
  s.state = "Succeeded";
  EXPECT_EQ(PrintableRounds(s), 3u);
  s.state = "Failed";
  EXPECT_EQ(PrintableRounds(s), 3u);
}

TEST(JobStatusTest, FormatsRoundLinePerAgent) {
  auto s = ParseJobStatus(kStatus);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(FormatRoundLine(s->rounds[0], 5),
            "round 1/5  participants 4  loss 1.500  accuracy 0.250  up 100.0 KiB/agent  down 256.0 KiB/agent "
            " 12.3 s");
  EXPECT_EQ(FormatRoundLine(s->rounds[1], 5),
            "round 2/5  participants 3  loss -  accuracy -  up 100 B/agent  down 200 B/agent  1.0 s");
  RoundStatus lm = s->rounds[1];  // a causal-LM round: loss, no accuracy
  lm.loss = std::log(20.0);
  EXPECT_EQ(
      FormatRoundLine(lm, 5),
      "round 2/5  participants 3  loss 2.996  perplexity 20.00  up 100 B/agent  down 200 B/agent  1.0 s");
  RoundStatus dp = s->rounds[1];  // a round of a differentially private job
  dp.epsilon = 2.16801;
  EXPECT_EQ(FormatRoundLine(dp, 5),
            "round 2/5  participants 3  loss -  accuracy -  up 100 B/agent  down 200 B/agent  1.0 s  epsilon "
            "2.168");
  RoundStatus fb = s->rounds[1];  // agents trained on their nodes' feedback
  fb.feedback_examples = {{"agent-0", 5}, {"agent-2", 12}};
  EXPECT_EQ(
      FormatRoundLine(fb, 5),
      "round 2/5  participants 3  loss -  accuracy -  up 100 B/agent  down 200 B/agent  1.0 s  feedback 17 "
      "examples/2 agents");
  EXPECT_EQ(FormatStatusLine(*s, 42.0), "[  42.0 s] Running: round 3/5, train; 4 agents joined");
  JobStatus waiting;
  waiting.state = "WaitingForAgents";
  waiting.agents_joined = 1;
  EXPECT_EQ(FormatStatusLine(waiting, 1.25), "[   1.2 s] WaitingForAgents; 1 agent joined");
  EXPECT_EQ(FormatBytes(3.5 * 1024 * 1024), "3.5 MiB");
}

TEST(RunSummaryTest, WritesPerAgentBytesAndBaselines) {
  auto s = ParseJobStatus(kStatus);
  ASSERT_TRUE(s.ok());
  RunSummary summary;
  summary.job = "default/unit";
  summary.rounds = s->rounds;
  summary.final_accuracy = 0.61;
  summary.baselines.majority_baseline = 0.1465;
  summary.baselines.chance = 0.04;
  summary.wall_seconds = 99.5;
  auto j = nlohmann::json::parse(RunSummaryJson(summary));
  EXPECT_EQ(j["job"], "default/unit");
  ASSERT_EQ(j["rounds"].size(), 2u);
  EXPECT_EQ(j["rounds"][0]["bytes_up"], 102400);
  EXPECT_EQ(j["rounds"][0]["bytes_down"], 262144);
  EXPECT_EQ(j["rounds"][0]["participants"], 4);
  EXPECT_DOUBLE_EQ(j["rounds"][0]["accuracy"].get<double>(), 0.25);
  EXPECT_TRUE(j["rounds"][1]["loss"].is_null());
  EXPECT_DOUBLE_EQ(j["final_accuracy"].get<double>(), 0.61);
  EXPECT_DOUBLE_EQ(j["majority_baseline"].get<double>(), 0.1465);
  EXPECT_DOUBLE_EQ(j["chance"].get<double>(), 0.04);
  EXPECT_EQ(j["centralized"], false);
  EXPECT_DOUBLE_EQ(j["wall_seconds"].get<double>(), 99.5);
}

TEST(QuickstartManifestTest, ParsesWithTheWordnetLabels) {
  const char* src = std::getenv("FEDGE_SOURCE_DIR");
  const std::string root = src ? src : FEDGE_CLI_TEST_SOURCE_DIR;
  auto spec = LoadJobSpec(root + "/deploy/examples/quickstart.yaml");
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  EXPECT_EQ(spec->name, "quickstart");
  EXPECT_EQ(spec->model.labels.size(), 25u);
  EXPECT_EQ(spec->model.labels.front(), "noun.act");
  EXPECT_EQ(spec->model.labels.back(), "noun.time");
  EXPECT_EQ(spec->agents.replicas, 4);
  EXPECT_EQ(spec->rounds.quorum, 3);
}

TEST(GenerativeManifestTest, ParsesAsALlamaCausalLmJob) {
  const char* src = std::getenv("FEDGE_SOURCE_DIR");
  const std::string root = src ? src : FEDGE_CLI_TEST_SOURCE_DIR;
  auto spec = LoadJobSpec(root + "/deploy/examples/generative.yaml");
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  EXPECT_EQ(spec->model.family, "llama");
  EXPECT_EQ(spec->model.task, "causal-lm");
  EXPECT_EQ(spec->model.path, ".fedge/models/fedge-wordnet-llama");
  EXPECT_EQ(spec->data.path, ".fedge/data/glosses");
  EXPECT_TRUE(spec->model.labels.empty());
}

// The supervision's one decision: what a child's exit means while the job runs.
TEST(JudgeChildExitTest, OnlyALeavingAgentOrAFinishedAggregatorIsNotFatal) {
  ChildExit agent_ok{"agent-1", 10, 0, 0, ""};
  ChildExit agent_died{"agent-1", 10, 7, 0, ""};
  ChildExit agent_killed{"agent-1", 10, -1, 9, ""};
  ChildExit aggregator_ok{"aggregator", 11, 0, 0, ""};
  ChildExit aggregator_died{"aggregator", 11, 1, 0, ""};
  JobStatus complete;
  complete.total_rounds = 2;
  complete.rounds.resize(2);
  JobStatus halfway = complete;
  halfway.rounds.resize(1);
  RunPlan plain, serve, tolerant;
  serve.serve = true;
  tolerant.allow_agent_failures = true;
  struct Row {
    const char* name;
    const ChildExit& exit;
    const RunPlan& plan;
    std::optional<JobStatus> last;
    ExitVerdict want;
  };
  // clang-format off
  const Row rows[] = {
      {"agent told it is done",                  agent_ok,        plain,    halfway,      ExitVerdict::kExpected},
      {"agent exits 0 while serving",            agent_ok,        serve,    complete,     ExitVerdict::kFatal},
      {"agent dies",                             agent_died,      plain,    halfway,      ExitVerdict::kFatal},
      {"agent dies, failures allowed",           agent_died,      tolerant, halfway,      ExitVerdict::kAgentLost},
      {"agent killed, failures allowed",         agent_killed,    tolerant, std::nullopt, ExitVerdict::kAgentLost},
      {"aggregator done, every round seen",      aggregator_ok,   plain,    complete,     ExitVerdict::kJobDone},
      {"aggregator exits 0 with rounds missing", aggregator_ok,   plain,    halfway,      ExitVerdict::kFatal},
      {"aggregator exits 0 before any status",   aggregator_ok,   plain,    std::nullopt, ExitVerdict::kFatal},
      {"aggregator dies, failures allowed",      aggregator_died, tolerant, complete,     ExitVerdict::kFatal},
  };
  // clang-format on
  for (const Row& row : rows) {
    EXPECT_EQ(JudgeChildExit(row.exit, row.plan, row.last), row.want) << row.name;
  }
}

// ---- RunJob with stand-in binaries ----

class RunJobTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = tmp_.path();
    fs::create_directories(root_ + "/bin");
    fs::create_directories(root_ + "/model");
    ASSERT_TRUE(WriteWholeFile(root_ + "/model/config.json", "{}").ok());
    for (const std::string d : {"agent-0", "agent-1", "all"}) {
      fs::create_directories(root_ + "/data/" + d);
      ASSERT_TRUE(WriteWholeFile(root_ + "/data/" + d + "/train.jsonl", "{}\n").ok());
    }
    ASSERT_TRUE(
        WriteWholeFile(root_ + "/data/meta.json", R"({"majority_baseline": 0.15, "chance": 0.04})").ok());
    const std::string job = std::string(kJob);
    ASSERT_TRUE(WriteWholeFile(root_ + "/job.yaml", job).ok());
    options_.manifest = root_ + "/job.yaml";
    options_.bin_dir = root_ + "/bin";
    options_.model_dir = root_ + "/model";
    options_.data_dir = root_ + "/data";
    options_.work_dir = root_ + "/work";
    options_.summary_path = root_ + "/summary.json";
    options_.agents = 2;
    options_.quiet = true;
  }
  TempDir tmp_;
  std::string root_;
  RunOptions options_;
};

TEST_F(RunJobTest, BadManifestExitsTwoBeforeStartingAnything) {
  ASSERT_TRUE(WriteWholeFile(options_.manifest, std::string(kJob) + "  strategy: {name: bogus}\n").ok());
  testing::internal::CaptureStderr();
  EXPECT_EQ(RunJob(options_), kExitUsage);
  const std::string err = testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("spec.strategy.name"), std::string::npos) << err;
  EXPECT_FALSE(fs::exists(options_.work_dir));
}

TEST_F(RunJobTest, DyingAgentFailsTheJobWithItsLogTail) {
  WriteExecutable(root_ + "/bin/fedge-aggregator", "#!/bin/sh\nexec sleep 60\n");
  WriteExecutable(root_ + "/bin/fedge-agent",
                  "#!/bin/sh\ncase \"$6\" in agent-1) echo \"cannot load model from ${12}\"; exit 7;; esac\n"
                  "exec sleep 60\n");
  testing::internal::CaptureStderr();
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(RunJob(options_), kExitJobFailed);
  const std::string err = testing::internal::GetCapturedStderr();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 20s) << "the others were stopped promptly";
  EXPECT_NE(err.find("agent-1"), std::string::npos) << err;
  EXPECT_NE(err.find("exit code 7"), std::string::npos) << err;
  EXPECT_NE(err.find("| cannot load model from " + root_ + "/model"), std::string::npos) << err;
  // The resolved manifest was written with absolute paths.
  auto written = LoadJobSpec(options_.work_dir + "/job.yaml");
  ASSERT_TRUE(written.ok()) << written.status().ToString();
  EXPECT_EQ(written->model.path, root_ + "/model");
  EXPECT_EQ(written->agents.replicas, 2);
}

TEST_F(RunJobTest, SigtermStopsEveryChildAndExits130) {
  options_.prometheus_targets_path = root_ + "/prom/targets/unit.json";
  nlohmann::json targets_while_running;
  WriteExecutable(root_ + "/bin/fedge-aggregator", "#!/bin/sh\necho started\nexec sleep 60\n");
  WriteExecutable(root_ + "/bin/fedge-agent", "#!/bin/sh\necho started\nexec sleep 60\n");
  // Signal once every child has written to its log, i.e. is running.
  std::thread killer([&] {
    const auto deadline = std::chrono::steady_clock::now() + 20s;
    auto started = [&](const std::string& name) {
      return !TailFile(options_.work_dir + "/logs/" + name + ".log", 1).empty();
    };
    while (!(started("aggregator") && started("agent-0") && started("agent-1")) &&
           std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(10ms);
    }
    if (auto t = ReadWholeFile(options_.prometheus_targets_path); t.ok()) {
      targets_while_running = nlohmann::json::parse(*t, nullptr, /*allow_exceptions=*/false);
    }
    ::kill(::getpid(), SIGTERM);
  });
  testing::internal::CaptureStderr();
  const auto start = std::chrono::steady_clock::now();
  const int rc = RunJob(options_);
  const std::string err = testing::internal::GetCapturedStderr();
  killer.join();
  EXPECT_EQ(rc, kExitInterrupted) << err;
  EXPECT_LT(std::chrono::steady_clock::now() - start, 15s);
  EXPECT_NE(err.find("stopping 3 process(es)"), std::string::npos) << err;
  EXPECT_EQ(targets_while_running.size(), 3u) << targets_while_running.dump();
  // The work copy stays; the external list no longer names the stopped children.
  auto work_copy = ReadWholeFile(options_.work_dir + "/prometheus/targets.json");
  ASSERT_TRUE(work_copy.ok());
  EXPECT_EQ(nlohmann::json::parse(*work_copy), targets_while_running);
  auto after = ReadWholeFile(options_.prometheus_targets_path);
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(nlohmann::json::parse(*after), nlohmann::json::array());
}

// A stand-in aggregator serving /v1/status through a job's life cycle: two
// rounds, then Succeeded; it exits 0 a moment later, as --exit-when-done does.
const char* kFakeAggregator = R"PY(#!/usr/bin/env python3
import http.server, json, os, sys, threading, time
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
host, port = args["--http"].split(":")
ckpt = args["--checkpoint-dir"]
os.makedirs(ckpt, exist_ok=True)
json.dump(sys.argv, open(os.path.join(ckpt, "argv.json"), "w"))
start = time.time()
def status():
    t = time.time() - start
    rounds = [{"round": i + 1, "participants": 2, "invited": 2, "loss": 1.0 / (i + 1), "accuracy": 0.3 + 0.2 * i,
               "eval_examples": 100, "bytes_up": 2048, "bytes_down": 4096, "seconds": 0.3, "global_version": i + 2}
              for i in range(min(2, int(t / 0.4)))]
    state = "WaitingForAgents" if t < 0.2 else ("Succeeded" if len(rounds) == 2 else "Running")
    return {"job": "default/unit", "state": state, "round": len(rounds), "total_rounds": 2, "phase": "train",
            "agents_joined": 2, "rounds": rounds, "final_accuracy": 0.5 if state == "Succeeded" else None}
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps(status()).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        if status()["state"] == "Succeeded":
            open(os.path.join(ckpt, "done"), "w").close()
    def log_message(self, *a):
        pass
server = http.server.ThreadingHTTPServer((host, int(port)), H)
threading.Thread(target=server.serve_forever, daemon=True).start()
while not os.path.exists(os.path.join(ckpt, "done")):
    time.sleep(0.05)
time.sleep(1.0)
sys.exit(0)
)PY";

TEST_F(RunJobTest, SucceedsAndWritesSummary) {
  if (::access("/usr/bin/python3", X_OK) != 0) GTEST_SKIP() << "python3 not installed";
  WriteExecutable(root_ + "/bin/fedge-aggregator", kFakeAggregator);
  // Agents leave when the aggregator says the job is done (its "done" file).
  WriteExecutable(
      root_ + "/bin/fedge-agent",
      "#!/bin/sh\nstate=${16}\nwhile [ ! -f \"$(dirname \"$state\")/aggregator/done\" ]; do sleep 0.05; "
      "done\nexit 0\n");
  options_.rounds = 2;
  testing::internal::CaptureStdout();
  const int rc = RunJob(options_);
  const std::string out = testing::internal::GetCapturedStdout();
  ASSERT_EQ(rc, kExitOk) << out;
  EXPECT_NE(out.find("round 1/2  participants 2  loss 1.000  accuracy 0.300  up 1.0 KiB/agent"),
            std::string::npos)
      << out;
  EXPECT_NE(out.find("round 2/2"), std::string::npos) << out;
  EXPECT_NE(out.find("final accuracy     0.5000"), std::string::npos) << out;
  EXPECT_NE(out.find("majority baseline  0.1500"), std::string::npos) << out;

  auto summary = ReadWholeFile(options_.summary_path);
  ASSERT_TRUE(summary.ok());
  auto j = nlohmann::json::parse(*summary);
  EXPECT_EQ(j["rounds"].size(), 2u);
  EXPECT_EQ(j["rounds"][1]["bytes_up"], 1024);
  EXPECT_DOUBLE_EQ(j["final_accuracy"].get<double>(), 0.5);
  EXPECT_DOUBLE_EQ(j["chance"].get<double>(), 0.04);
  EXPECT_GT(j["wall_seconds"].get<double>(), 0.5);

  auto argv = nlohmann::json::parse(*ReadWholeFile(options_.work_dir + "/aggregator/argv.json"));
  EXPECT_EQ(argv[7], "--checkpoint-dir");
  EXPECT_EQ(argv[8], options_.work_dir + "/aggregator");
  EXPECT_EQ(argv[9], "--expected-agents");
  EXPECT_EQ(argv[10], "2");
}

// --allow-agent-failures: an agent that dies mid-job is reported and the job goes
// on; the aggregator (here a stand-in that finishes two rounds) decides the outcome.
TEST_F(RunJobTest, AllowAgentFailuresGoesOnWithoutADeadAgent) {
  if (::access("/usr/bin/python3", X_OK) != 0) GTEST_SKIP() << "python3 not installed";
  WriteExecutable(root_ + "/bin/fedge-aggregator", kFakeAggregator);
  WriteExecutable(root_ + "/bin/fedge-agent",
                  "#!/bin/sh\ncase \"$6\" in agent-1) echo \"out of memory\"; exit 7;; esac\n"
                  "state=${16}\nwhile [ ! -f \"$(dirname \"$state\")/aggregator/done\" ]; do sleep 0.05; "
                  "done\nexit 0\n");
  options_.rounds = 2;
  options_.allow_agent_failures = true;
  testing::internal::CaptureStderr();
  testing::internal::CaptureStdout();
  const int rc = RunJob(options_);
  const std::string out = testing::internal::GetCapturedStdout();
  const std::string err = testing::internal::GetCapturedStderr();
  ASSERT_EQ(rc, kExitOk) << err << out;
  EXPECT_NE(err.find("agent-1"), std::string::npos) << err;
  EXPECT_NE(err.find("exit code 7"), std::string::npos) << err;
  EXPECT_NE(err.find("| out of memory"), std::string::npos) << err;
  EXPECT_NE(err.find("goes on with 1 of 2 agents"), std::string::npos) << err;
  EXPECT_NE(out.find("round 2/2"), std::string::npos) << out;
  auto j = nlohmann::json::parse(*ReadWholeFile(options_.summary_path));
  ASSERT_EQ(j["failed_agents"].size(), 1u) << j.dump();
  EXPECT_EQ(j["failed_agents"][0]["name"], "agent-1");
  EXPECT_EQ(j["failed_agents"][0]["how"], "exit code 7");
  EXPECT_EQ(j["rounds"].size(), 2u);
}

TEST_F(RunJobTest, AllowAgentFailuresStillFailsWhenNoAgentIsLeft) {
  WriteExecutable(root_ + "/bin/fedge-aggregator", "#!/bin/sh\nexec sleep 60\n");
  WriteExecutable(root_ + "/bin/fedge-agent", "#!/bin/sh\necho \"cannot load model\"\nexit 7\n");
  options_.allow_agent_failures = true;
  testing::internal::CaptureStderr();
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(RunJob(options_), kExitJobFailed);
  const std::string err = testing::internal::GetCapturedStderr();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 20s) << "the aggregator was stopped promptly";
  EXPECT_NE(err.find("every agent has ended"), std::string::npos) << err;
  EXPECT_NE(err.find("stopping 1 remaining process(es)"), std::string::npos) << err;
}

TEST_F(RunJobTest, AllowAgentFailuresWithServeIsAUsageError) {
  options_.allow_agent_failures = true;
  options_.serve = true;
  testing::internal::CaptureStderr();
  EXPECT_EQ(RunJob(options_), kExitUsage);
  const std::string err = testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("--allow-agent-failures and --serve"), std::string::npos) << err;
  EXPECT_FALSE(fs::exists(options_.work_dir));
}

}  // namespace
}  // namespace fedge::cli
