// The plan of `fedge run` (run_plan.h) as a table: command-line options in, the
// processes to start out, with no process, file or socket involved.
#include "fedge/cli/run_plan.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <string>
#include <vector>

namespace fedge::cli {
namespace {

// Three agents, quorum 2, 10 local steps a round.
JobSpec ThreeAgentJob() {
  auto spec = ParseJobSpec(R"(apiVersion: fedge.io/v1alpha1
kind: FederatedTrainingJob
metadata: {name: table}
spec:
  model: {path: /m, labels: [a, b]}
  data: {path: /d}
  agents: {minAgents: 3, replicas: 3}
  rounds: {total: 4, quorum: 2, localSteps: 10}
)");
  EXPECT_TRUE(spec.ok()) << spec.status().ToString();
  return *spec;
}

std::string Flag(const ChildSpec& child, const std::string& flag) {
  auto it = std::find(child.argv.begin(), child.argv.end(), flag);
  return it != child.argv.end() && it + 1 != child.argv.end() ? *(it + 1) : "";
}

bool HasArg(const ChildSpec& child, const std::string& arg) {
  return std::find(child.argv.begin(), child.argv.end(), arg) != child.argv.end();
}

struct PlanRow {
  const char* name;
  // options
  int agents;
  bool centralized;
  bool allow_agent_failures;
  bool serve;
  // expected
  const char* error;  // a part of the INVALID_ARGUMENT message, or nullptr when the plan succeeds
  std::vector<std::string> processes;
  int local_steps;
  int quorum;
  const char* first_agent_data;
  const char* work_dir;
};

const std::vector<PlanRow>& PlanTable() {
  const std::vector<std::string> three = {"aggregator", "agent-0", "agent-1", "agent-2"};
  const std::vector<std::string> five = {"aggregator", "agent-0", "agent-1", "agent-2", "agent-3", "agent-4"};
  const std::vector<std::string> central = {"aggregator", "central"};
  const char* work = "/cwd/.fedge/runs/table";
  const char* central_work = "/cwd/.fedge/runs/table-centralized";
  // clang-format off
  static const std::vector<PlanRow> rows = {
      // name                           agents centr. allow  serve  error                    processes                        steps quorum first agent's data, work dir
      {"spec's count",                   0,    false, false, false, nullptr,                 three,                           10,   2,     "/d/agent-0", work},
      {"--agents 5",                     5,    false, false, false, nullptr,                 five,                            10,   2,     "/d/agent-0", work},
      {"--agents 1 lowers the quorum",   1,    false, false, false, nullptr,                 {"aggregator", "agent-0"},       10,   1,     "/d/agent-0", work},
      {"--centralized",                  0,    true,  false, false, nullptr,                 central,                         30,   1,     "/d/all",     central_work},
      {"--centralized --agents 2",       2,    true,  false, false, nullptr,                 central,                         20,   1,     "/d/all",     central_work},
      {"--serve",                        0,    false, false, true,  nullptr,                 three,                           10,   2,     "/d/agent-0", work},
      {"--allow-agent-failures",         0,    false, true,  false, nullptr,                 three,                           10,   2,     "/d/agent-0", work},
      {"--allow-agent-failures --serve", 0,    false, true,  true,  "do not go together",    {},                              0,    0,     "",           ""},
      {"--agents -1",                    -1,   false, false, false, "--agents must be >= 1", {},                              0,    0,     "",           ""},
  };
  // clang-format on
  return rows;
}

TEST(PlanRunTableTest, DecidesTheProcessesTheirArgumentsPortsAndDirectories) {
  for (const PlanRow& row : PlanTable()) {
    SCOPED_TRACE(row.name);
    RunOptions o;
    o.agents = row.agents;
    o.centralized = row.centralized;
    o.allow_agent_failures = row.allow_agent_failures;
    o.serve = row.serve;
    auto plan = PlanRun(ThreeAgentJob(), o, "/cwd");
    if (row.error != nullptr) {
      ASSERT_FALSE(plan.ok());
      EXPECT_EQ(plan.status().code(), StatusCode::kInvalidArgument);
      EXPECT_NE(plan.status().message().find(row.error), std::string::npos) << plan.status().message();
      continue;
    }
    ASSERT_TRUE(plan.ok()) << plan.status().ToString();
    EXPECT_EQ(plan->allow_agent_failures, row.allow_agent_failures);
    EXPECT_EQ(plan->spec.rounds.localSteps, row.local_steps);
    EXPECT_EQ(plan->spec.rounds.quorum, row.quorum);
    EXPECT_EQ(plan->work_dir, row.work_dir);
    ASSERT_EQ(plan->PortsNeeded(), static_cast<int>(row.processes.size()) + 1);
    std::vector<int> ports(plan->PortsNeeded());
    std::iota(ports.begin(), ports.end(), 6000);
    plan->aggregator_bin = "/bin/agg";
    plan->agent_bin = "/bin/agent";
    AssignPorts(ports, &*plan);

    const std::vector<ChildSpec> children = BuildChildSpecs(*plan);
    std::vector<std::string> names;
    for (const ChildSpec& c : children) names.push_back(c.name);
    ASSERT_EQ(names, row.processes);
    const ChildSpec& aggregator = children[0];
    EXPECT_EQ(aggregator.argv[0], "/bin/agg");
    EXPECT_EQ(Flag(aggregator, "--listen"), "127.0.0.1:6000");
    EXPECT_EQ(Flag(aggregator, "--http"), "127.0.0.1:6001");
    EXPECT_EQ(Flag(aggregator, "--expected-agents"), std::to_string(children.size() - 1));
    EXPECT_EQ(Flag(aggregator, "--checkpoint-dir"), plan->work_dir + "/aggregator");
    EXPECT_EQ(Flag(children[1], "--data-dir"), row.first_agent_data);
    for (size_t i = 1; i < children.size(); ++i) {
      const ChildSpec& agent = children[i];
      EXPECT_EQ(agent.argv[0], "/bin/agent");
      EXPECT_EQ(Flag(agent, "--agent-id"), agent.name);
      EXPECT_EQ(Flag(agent, "--aggregator"), "127.0.0.1:6000");
      EXPECT_EQ(Flag(agent, "--http"), "127.0.0.1:" + std::to_string(6001 + i));
      EXPECT_EQ(Flag(agent, "--state-dir"), plan->work_dir + "/" + agent.name);
      EXPECT_EQ(Flag(agent, "--model-dir"), "/m");
    }
    for (const ChildSpec& c : children) {
      EXPECT_EQ(Flag(c, "--config"), plan->work_dir + "/job.yaml") << c.name;
      EXPECT_EQ(c.log_path, plan->work_dir + "/logs/" + c.name + ".log");
      // --serve keeps every child up after the job; otherwise each leaves with it.
      EXPECT_EQ(HasArg(c, "--exit-when-done"), !row.serve) << c.name;
    }
  }
}

}  // namespace
}  // namespace fedge::cli
