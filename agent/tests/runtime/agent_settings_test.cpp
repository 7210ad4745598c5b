#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "fedge/agent/runtime/agent.h"

namespace fedge::agent {
namespace {

JobSpec Spec() {
  JobSpec spec;
  spec.name = "job";
  spec.namespace_ = "ns";
  spec.model.path = "/models/minilm";
  spec.data.path = "/data/node";
  spec.data.trainFile = "train.jsonl";
  spec.data.evalFile = "test.jsonl";
  spec.serving.port = 9090;
  return spec;
}

TEST(ResolveAgentSettingsTest, FillsDefaultsFromTheSpecHostAndEnvironment) {
  AgentFlags f;
  f.aggregator = "agg:7000";
  auto s = ResolveAgentSettings(f, Spec(), "host-1", "node-env");
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->agent_id, "host-1");
  EXPECT_EQ(s->node_name, "node-env");
  EXPECT_EQ(s->train_path, "/data/node/train.jsonl");
  EXPECT_EQ(s->eval_path, "/data/node/test.jsonl");
  EXPECT_EQ(s->model_dir, "/models/minilm");
  EXPECT_EQ(s->http, "0.0.0.0:9090");
  EXPECT_EQ(s->state_dir, ".fedge-agent/host-1");
  EXPECT_EQ(s->threads, 1);
  EXPECT_EQ(ResolveAgentSettings(f, Spec(), "host-1", "")->node_name, "host-1");
}

// The operator passes the aggregator Service's address as $(<SERVICE>_SERVICE_HOST):7070,
// which the kubelet expands from the service environment.
TEST(ResolveAgentSettingsTest, AServiceAddressTheKubeletExpandedIsUsedAndOneItDidNotIsRefused) {
  AgentFlags f;
  f.aggregator = "10.43.12.7:7070";
  ASSERT_TRUE(ResolveAgentSettings(f, Spec(), "h", "").ok());
  EXPECT_EQ(ResolveAgentSettings(f, Spec(), "h", "")->aggregator, "10.43.12.7:7070");
  f.aggregator = "fd00:10:43::7:7070";  // an IPv6 Service address, bare
  ASSERT_TRUE(ResolveAgentSettings(f, Spec(), "h", "").ok());
  EXPECT_EQ(ResolveAgentSettings(f, Spec(), "h", "")->aggregator, "[fd00:10:43::7]:7070");
  f.aggregator = "[fd00::7]:7070";
  EXPECT_EQ(ResolveAgentSettings(f, Spec(), "h", "")->aggregator, "[fd00::7]:7070");
  f.aggregator = "$(WN_AGGREGATOR_SERVICE_HOST):7070";  // no such Service at container start
  auto s = ResolveAgentSettings(f, Spec(), "h", "");
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(s.status().message().find("was not expanded"), std::string::npos) << s.status().message();
}

TEST(ResolveAgentSettingsTest, FlagsWinOverDefaults) {
  AgentFlags f;
  f.aggregator = "127.0.0.1:7000";
  f.agent_id = "agent-0";
  f.node_name = "node-0";
  f.data_dir = "/local/agent-0";
  f.model_dir = "/m";
  f.http = "127.0.0.1:0";
  f.state_dir = "/state";
  f.threads = 2;
  f.token = "t0k";
  auto s = ResolveAgentSettings(f, Spec(), "host-1", "node-env");
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->agent_id, "agent-0");
  EXPECT_EQ(s->node_name, "node-0");
  EXPECT_EQ(s->train_path, "/local/agent-0/train.jsonl");
  EXPECT_EQ(s->model_dir, "/m");
  EXPECT_EQ(s->http, "127.0.0.1:0");
  EXPECT_EQ(s->state_dir, "/state");
  EXPECT_EQ(s->threads, 2);
  EXPECT_EQ(s->token, "t0k");
}

TEST(ResolveAgentSettingsTest, ReadsAndTrimsTheTokenFile) {
  auto path = std::filesystem::temp_directory_path() / ("fedge-token-" + std::to_string(::getpid()));
  std::ofstream(path) << "  s3cret\n";
  AgentFlags f;
  f.aggregator = "agg:7000";
  f.token_file = path.string();
  auto s = ResolveAgentSettings(f, Spec(), "h", "");
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->token, "s3cret");
  EXPECT_EQ(s->token_file, path.string());  // the client reads it again before every Join
  f.token = "also";
  EXPECT_EQ(ResolveAgentSettings(f, Spec(), "h", "").status().code(), StatusCode::kInvalidArgument);
  std::filesystem::remove(path);
  f.token.clear();
  EXPECT_EQ(ResolveAgentSettings(f, Spec(), "h", "").status().code(), StatusCode::kInvalidArgument);
}

TEST(ResolveAgentSettingsTest, RejectsBadFlagsNamingThem) {
  AgentFlags f;
  auto s = ResolveAgentSettings(f, Spec(), "h", "");
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("--aggregator"), std::string::npos);
  f.aggregator = "no-port";
  EXPECT_NE(ResolveAgentSettings(f, Spec(), "h", "").status().message().find("--aggregator"),
            std::string::npos);
  f.aggregator = "agg:1";
  f.threads = 0;
  EXPECT_NE(ResolveAgentSettings(f, Spec(), "h", "").status().message().find("--threads"), std::string::npos);
  f.threads = 1;
  f.http = "nonsense";
  EXPECT_NE(ResolveAgentSettings(f, Spec(), "h", "").status().message().find("--http"), std::string::npos);
  f.http.clear();
  f.feedback_max_bytes = 0;
  EXPECT_NE(ResolveAgentSettings(f, Spec(), "h", "").status().message().find("--feedback-max-bytes"),
            std::string::npos);
}

TEST(ResolveAgentSettingsTest, CarriesTheApiTokenFileAndTheFeedbackCap) {
  AgentFlags f;
  f.aggregator = "agg:7000";
  auto defaults = ResolveAgentSettings(f, Spec(), "h", "");
  ASSERT_TRUE(defaults.ok()) << defaults.status().ToString();
  EXPECT_EQ(defaults->api_token_file, "");
  EXPECT_EQ(defaults->feedback_max_bytes, 64u << 20);
  f.api_token_file = "/var/run/secrets/fedge-api/token";
  f.feedback_max_bytes = 4096;
  auto s = ResolveAgentSettings(f, Spec(), "h", "");
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->api_token_file, "/var/run/secrets/fedge-api/token");
  EXPECT_EQ(s->feedback_max_bytes, 4096u);
}

}  // namespace
}  // namespace fedge::agent
