#include "fedge/job_spec.h"

#include <gtest/gtest.h>

#include <string>

namespace fedge {
namespace {

// A minimal valid manifest; tests append or substitute lines.
const char* kMinimal = R"(apiVersion: fedge.io/v1alpha1
kind: FederatedTrainingJob
metadata:
  name: demo
spec:
  model:
    path: /models/minilm
    labels: [neg, pos]
  data:
    path: /data/demo
)";

std::string WithSpec(const std::string& extra) { return std::string(kMinimal) + extra; }
// Replaces the first `from` (which must occur) with `to`; defined below.
std::string Replace(std::string s, const std::string& from, const std::string& to);

TEST(JobSpecTest, MinimalManifestGetsDefaults) {
  auto spec = ParseJobSpec(kMinimal);
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  EXPECT_EQ(spec->name, "demo");
  EXPECT_EQ(spec->namespace_, "default");
  EXPECT_EQ(spec->Key(), "default/demo");
  EXPECT_EQ(spec->model.path, "/models/minilm");
  EXPECT_EQ(spec->model.family, "bert");
  EXPECT_EQ(spec->model.task, "sequence-classification");
  EXPECT_EQ(spec->model.labels, (std::vector<std::string>{"neg", "pos"}));
  EXPECT_EQ(spec->model.maxSeqLen, 64);
  EXPECT_EQ(spec->adapter.rank, 8);
  EXPECT_EQ(spec->adapter.targetModules, (std::vector<std::string>{"query", "value"}));
  EXPECT_EQ(spec->adapter.aggregation, "factors");
  EXPECT_EQ(spec->data.trainFile, "train.jsonl");
  EXPECT_EQ(spec->rounds.total, 5);
  EXPECT_EQ(spec->rounds.timeoutSeconds, 600);
  EXPECT_DOUBLE_EQ(spec->rounds.learningRate, 1e-3);
  EXPECT_EQ(spec->rounds.seed, 42u);
  EXPECT_EQ(spec->strategy.name, "fedavg");
  EXPECT_EQ(spec->compression.codec, "int8");
  EXPECT_TRUE(spec->compression.zstd);
  EXPECT_EQ(spec->runPolicy.cleanPodPolicy, "Running");
  EXPECT_EQ(spec->runPolicy.ttlSecondsAfterFinished, -1);
  EXPECT_TRUE(spec->serving.enabled);
  EXPECT_EQ(spec->serving.port, 8080);
}

TEST(JobSpecTest, FullManifestParsesEveryField) {
  const char* yaml = R"(apiVersion: fedge.io/v1alpha1
kind: FederatedTrainingJob
metadata:
  name: full-job
  namespace: edge
  labels: {team: ml}
spec:
  model: {path: /m, family: bert, task: sequence-classification, labels: [a, b, c], maxSeqLen: 48}
  adapter: {rank: 4, alpha: 8, dropout: 0.1, targetModules: [query, key, value], aggregation: frozen-a}
  data: {path: /d, format: jsonl, trainFile: tr.jsonl, evalFile: ev.jsonl}
  agents: {nodeSelector: {fedge.io/edge: "true"}, minAgents: 3, maxAgents: 6, replicas: 4}
  rounds: {total: 7, quorum: 3, fraction: 0.5, timeoutSeconds: 30, localSteps: 11, batchSize: 8,
           learningRate: 2e-3, weightDecay: 0, maxGradNorm: 0.5, seed: 9223372036854775807}
  strategy: {name: fedprox, proximalMu: 0.01}
  compression: {codec: fp16, blockSize: 128, zstd: false}
  privacy: {tls: true}
  runPolicy: {backoffLimit: 0, activeDeadlineSeconds: 3600, ttlSecondsAfterFinished: 60, suspend: true,
              cleanPodPolicy: All}
  serving: {enabled: false, port: 9000}
)";
  auto spec = ParseJobSpec(yaml);
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  EXPECT_EQ(spec->Key(), "edge/full-job");
  EXPECT_EQ(spec->model.maxSeqLen, 48);
  EXPECT_EQ(spec->model.labels.size(), 3u);
  EXPECT_EQ(spec->adapter.rank, 4);
  EXPECT_DOUBLE_EQ(spec->adapter.alpha, 8);
  EXPECT_DOUBLE_EQ(spec->adapter.dropout, 0.1);
  EXPECT_EQ(spec->adapter.aggregation, "frozen-a");
  EXPECT_EQ(spec->data.evalFile, "ev.jsonl");
  EXPECT_EQ(spec->agents.nodeSelector.at("fedge.io/edge"), "true");
  EXPECT_EQ(spec->agents.replicas, 4);
  EXPECT_EQ(spec->rounds.quorum, 3);
  EXPECT_DOUBLE_EQ(spec->rounds.fraction, 0.5);
  EXPECT_DOUBLE_EQ(spec->rounds.learningRate, 2e-3);
  EXPECT_DOUBLE_EQ(spec->rounds.weightDecay, 0);
  EXPECT_EQ(spec->rounds.seed, 9223372036854775807ull);
  EXPECT_EQ(spec->strategy.name, "fedprox");
  EXPECT_EQ(spec->compression.codec, "fp16");
  EXPECT_FALSE(spec->compression.zstd);
  EXPECT_TRUE(spec->privacy.tls);
  EXPECT_EQ(spec->runPolicy.activeDeadlineSeconds, 3600);
  EXPECT_TRUE(spec->runPolicy.suspend);
  EXPECT_EQ(spec->runPolicy.cleanPodPolicy, "All");
  EXPECT_FALSE(spec->serving.enabled);
  EXPECT_EQ(spec->serving.port, 9000);

  // The rendered manifest parses back to the same spec, field for field.
  auto again = ParseJobSpec(JobSpecToYaml(*spec));
  ASSERT_TRUE(again.ok()) << again.status().ToString() << "\n" << JobSpecToYaml(*spec);
  EXPECT_EQ(*again, *spec);
}

TEST(JobSpecTest, DefaultsRoundTripThroughYaml) {
  auto spec = ParseJobSpec(kMinimal);
  ASSERT_TRUE(spec.ok());
  spec->rounds.learningRate = 0.1;  // not exactly representable: must survive anyway
  spec->model.path = "/path with spaces/and: colon";
  auto again = ParseJobSpec(JobSpecToYaml(*spec));
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(*again, *spec);
}

// Regression (bench/fuzz/fuzz_job_spec; reproducer in bench/fuzz/crashes/job_spec/):
// strings with bytes that are not UTF-8 were accepted, and JobSpecToYaml (yaml-cpp's
// writer) replaced them with U+FFFD, so the resolved manifest `fedge run` hands its
// children named another model/data path or label than the one the user wrote.
TEST(JobSpecTest, RejectsNonUtf8StringsThatYamlWouldRewrite) {
  struct Case {
    std::string manifest;
    const char* path;
  };
  const Case cases[] = {
      {Replace(kMinimal, "/models/minilm", "/models/mini\xcclm"), "spec.model.path"},
      {Replace(kMinimal, "[neg, pos]", "[neg, \"p\xffos\"]"), "spec.model.labels[1]"},
      {Replace(kMinimal, "/data/demo", "/data/\xed\xa0\x80"), "spec.data.path"},  // a UTF-16 surrogate
      {WithSpec("  adapter: {targetModules: [query, \"val\xc0\xafue\"]}\n"),      // overlong '/'
       "spec.adapter.targetModules[1]"},
      {WithSpec("  agents: {nodeSelector: {zone: \"e\xf5\"}}\n"), "spec.agents.nodeSelector.zone"},
      {WithSpec("  agents: {nodeSelector: {\"z\x80\": a}}\n"), "spec.agents.nodeSelector key"},
  };
  for (const Case& c : cases) {
    auto spec = ParseJobSpec(c.manifest);
    ASSERT_FALSE(spec.ok()) << c.path << " accepted";
    EXPECT_EQ(spec.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(spec.status().message().find(std::string(c.path) + ": is not valid UTF-8"), std::string::npos)
        << spec.status().message();
  }
  // Valid UTF-8 beyond ASCII is kept and survives the round trip byte for byte.
  auto spec = ParseJobSpec(Replace(Replace(kMinimal, "/data/demo",
                                           "/donn\xc3\xa9"
                                           "es/caf\xc3\xa9"),
                                   "[neg, pos]", "[\xe6\x9d\xb1\xe4\xba\xac, \"\xf0\x9f\x99\x82\"]"));
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  EXPECT_EQ(spec->data.path,
            "/donn\xc3\xa9"
            "es/caf\xc3\xa9");
  auto again = ParseJobSpec(JobSpecToYaml(*spec));
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(*again, *spec);
}

TEST(JobSpecTest, AcceptsJson) {
  const char* json = R"({"apiVersion": "fedge.io/v1alpha1", "kind": "FederatedTrainingJob",
    "metadata": {"name": "j", "namespace": "ns", "uid": "abc", "resourceVersion": "7"},
    "spec": {"model": {"path": "/m", "labels": ["x", "y"]}, "data": {"path": "/d"},
             "rounds": {"total": 3, "learningRate": 0.01}},
    "status": {"round": 2}})";
  auto spec = ParseJobSpec(json);
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  EXPECT_EQ(spec->Key(), "ns/j");
  EXPECT_EQ(spec->rounds.total, 3);
  EXPECT_DOUBLE_EQ(spec->rounds.learningRate, 0.01);
}

TEST(JobSpecTest, NullFieldKeepsDefault) {
  auto spec = ParseJobSpec(WithSpec("  rounds:\n    total:\n"));
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  EXPECT_EQ(spec->rounds.total, 5);
}

TEST(JobSpecTest, EveryStrategyIsAcceptedWithItsParameters) {
  for (const char* name : {"fedavg", "fedadam", "fedyogi", "fedadagrad", "median", "trimmed-mean"}) {
    auto spec = ParseJobSpec(WithSpec(std::string("  strategy:\n    name: ") + name + "\n"));
    ASSERT_TRUE(spec.ok()) << name << ": " << spec.status().ToString();
    EXPECT_EQ(spec->strategy.name, name);
  }
  auto spec = ParseJobSpec(WithSpec(
      "  agents: {minAgents: 7}\n"
      "  strategy: {name: multi-krum, byzantineClients: 2, multiKrumM: 3, serverLearningRate: 0.5,\n"
      "             beta1: 0.5, beta2: 0.75, tau: 0.01, trimFraction: 0.25, maxBufferedUpdates: 50,\n"
      "             clipNorm: 2.5, maxUpdateNorm: 10}\n"));
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  EXPECT_EQ(spec->strategy.byzantineClients, 2);
  EXPECT_EQ(spec->strategy.multiKrumM, 3);
  EXPECT_DOUBLE_EQ(spec->strategy.serverLearningRate, 0.5);
  EXPECT_DOUBLE_EQ(spec->strategy.beta1, 0.5);
  EXPECT_DOUBLE_EQ(spec->strategy.beta2, 0.75);
  EXPECT_DOUBLE_EQ(spec->strategy.tau, 0.01);
  EXPECT_DOUBLE_EQ(spec->strategy.trimFraction, 0.25);
  EXPECT_EQ(spec->strategy.maxBufferedUpdates, 50);
  EXPECT_DOUBLE_EQ(spec->strategy.clipNorm, 2.5);
  EXPECT_DOUBLE_EQ(spec->strategy.maxUpdateNorm, 10);
  // The resolved manifest carries every strategy field.
  auto again = ParseJobSpec(JobSpecToYaml(*spec));
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(again->strategy, spec->strategy);
}

TEST(JobSpecTest, CompressionDefaultsAreDenseInt8WithErrorFeedback) {
  auto spec = ParseJobSpec(kMinimal);
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  EXPECT_DOUBLE_EQ(spec->compression.topKFraction, 0);
  EXPECT_TRUE(spec->compression.errorFeedback);
  EXPECT_FALSE(spec->compression.stochasticRounding);
}

TEST(JobSpecTest, CompressionFieldsParseAndRoundTrip) {
  auto spec = ParseJobSpec(
      WithSpec("  compression: {codec: int4, blockSize: 32, topKFraction: 0.01, errorFeedback: false,\n"
               "                stochasticRounding: true}\n"));
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  EXPECT_EQ(spec->compression.codec, "int4");
  EXPECT_EQ(spec->compression.blockSize, 32);
  EXPECT_DOUBLE_EQ(spec->compression.topKFraction, 0.01);
  EXPECT_FALSE(spec->compression.errorFeedback);
  EXPECT_TRUE(spec->compression.stochasticRounding);
  auto again = ParseJobSpec(JobSpecToYaml(*spec));
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(again->compression, spec->compression);

  // The bounds themselves are valid: the smallest fraction the codec takes, and 1.
  for (const char* f : {"0.0001", "1", "0"}) {
    auto edge = ParseJobSpec(WithSpec(std::string("  compression: {topKFraction: ") + f + "}\n"));
    EXPECT_TRUE(edge.ok()) << f << ": " << edge.status().ToString();
  }
}

TEST(JobSpecTest, RoundModesParseValidateAndRoundTrip) {
  auto spec = ParseJobSpec(kMinimal);
  ASSERT_TRUE(spec.ok());
  EXPECT_EQ(spec->rounds.mode, "sync");
  EXPECT_DOUBLE_EQ(spec->rounds.overSelection, 1.0);
  spec = ParseJobSpec(
      WithSpec("  agents: {minAgents: 8}\n"
               "  rounds: {overSelection: 1.5, mode: async, asyncBufferSize: 4, stalenessExponent: 1,\n"
               "           maxStaleness: 3}\n"));
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  EXPECT_DOUBLE_EQ(spec->rounds.overSelection, 1.5);
  EXPECT_EQ(spec->rounds.mode, "async");
  EXPECT_EQ(spec->rounds.asyncBufferSize, 4);
  EXPECT_DOUBLE_EQ(spec->rounds.stalenessExponent, 1.0);
  EXPECT_EQ(spec->rounds.maxStaleness, 3);
  auto again = ParseJobSpec(JobSpecToYaml(*spec));
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(again->rounds, spec->rounds);

  for (const auto& [extra, message] : std::vector<std::pair<std::string, std::string>>{
           {"  rounds: {overSelection: 0.5}\n", "spec.rounds.overSelection: must be >= 1, got 0.5"},
           {"  rounds: {mode: eventually}\n", "spec.rounds.mode"},
           {"  rounds: {asyncBufferSize: 0}\n", "spec.rounds.asyncBufferSize: must be >= 1"},
           // Each agent gives at most one update per version: K > agents never fills.
           {"  agents: {minAgents: 2}\n  rounds: {mode: async, asyncBufferSize: 3}\n",
            "spec.rounds.asyncBufferSize: must be <= max(spec.agents.minAgents, spec.agents.replicas) = 2"},
           {"  rounds: {stalenessExponent: -1}\n", "spec.rounds.stalenessExponent"},
           {"  rounds: {maxStaleness: -2}\n", "spec.rounds.maxStaleness"},
       }) {
    auto bad = ParseJobSpec(WithSpec(extra));
    ASSERT_FALSE(bad.ok()) << extra;
    EXPECT_NE(bad.status().message().find(message), std::string::npos) << bad.status().message();
  }
}

TEST(JobSpecTest, ServerOptimizerDefaultsFollowReddiEtAl) {
  auto spec = ParseJobSpec(WithSpec("  strategy: {name: fedyogi}\n"));
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  EXPECT_DOUBLE_EQ(spec->strategy.serverLearningRate, 1e-2);
  EXPECT_DOUBLE_EQ(spec->strategy.beta1, 0.9);
  EXPECT_DOUBLE_EQ(spec->strategy.beta2, 0.99);
  EXPECT_DOUBLE_EQ(spec->strategy.tau, 1e-3);
  EXPECT_DOUBLE_EQ(spec->strategy.clipNorm, 0);
  EXPECT_DOUBLE_EQ(spec->strategy.maxUpdateNorm, 0);
}

TEST(JobSpecTest, ReportsEveryErrorAtOnce) {
  auto spec = ParseJobSpec(WithSpec("  rounds:\n    total: 0\n    batchSize: 0\n"));
  ASSERT_FALSE(spec.ok());
  EXPECT_NE(spec.status().message().find("spec.rounds.total: must be >= 1, got 0"), std::string::npos);
  EXPECT_NE(spec.status().message().find("spec.rounds.batchSize: must be >= 1, got 0"), std::string::npos);
}

TEST(JobSpecTest, LoadJobSpecNamesMissingFile) {
  auto spec = LoadJobSpec("/nonexistent/job.yaml");
  ASSERT_FALSE(spec.ok());
  EXPECT_EQ(spec.status().code(), StatusCode::kNotFound);
  EXPECT_NE(spec.status().message().find("/nonexistent/job.yaml"), std::string::npos);
}

struct InvalidCase {
  const char* name;
  std::string manifest;
  const char* expected;  // substring of the error message, starting with the field path
};

class InvalidJobSpecTest : public ::testing::TestWithParam<InvalidCase> {};

TEST_P(InvalidJobSpecTest, RejectedWithFieldPath) {
  const InvalidCase& c = GetParam();
  auto spec = ParseJobSpec(c.manifest);
  ASSERT_FALSE(spec.ok()) << c.name << " parsed";
  EXPECT_EQ(spec.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(spec.status().message().find(c.expected), std::string::npos)
      << "want: " << c.expected << "\n got: " << spec.status().message();
}

std::string Replace(std::string s, const std::string& from, const std::string& to) {
  auto pos = s.find(from);
  if (pos == std::string::npos) throw std::runtime_error("test bug: no " + from);
  return s.replace(pos, from.size(), to);
}

INSTANTIATE_TEST_SUITE_P(
    Manifests, InvalidJobSpecTest,
    ::testing::Values(
        InvalidCase{"WrongApiVersion", Replace(kMinimal, "fedge.io/v1alpha1", "fedge.io/v1"),
                    "apiVersion: must be fedge.io/v1alpha1, got \"fedge.io/v1\""},
        InvalidCase{"WrongKind", Replace(kMinimal, "FederatedTrainingJob", "Deployment"),
                    "kind: must be FederatedTrainingJob, got \"Deployment\""},
        InvalidCase{"MissingName", Replace(kMinimal, "  name: demo\n", "  labels: {}\n"),
                    "metadata.name: required"},
        InvalidCase{"BadName", Replace(kMinimal, "name: demo", "name: My_Job"),
                    "metadata.name: must be a DNS-1123 label"},
        InvalidCase{"MissingSpec",
                    "apiVersion: fedge.io/v1alpha1\nkind: FederatedTrainingJob\nmetadata: {name: x}\n",
                    "spec: required"},
        InvalidCase{"UnknownSpecField", WithSpec("  rounds:\n    totl: 3\n"),
                    "spec.rounds.totl: unknown field (allowed: total, quorum"},
        InvalidCase{"UnknownSection", WithSpec("  scheduler: {}\n"), "spec.scheduler: unknown field"},
        InvalidCase{"UnknownTopLevel", WithSpec("extra: 1\n"), "extra: unknown field"},
        InvalidCase{"NegativeTotal", WithSpec("  rounds:\n    total: -3\n"),
                    "spec.rounds.total: must be >= 1, got -3"},
        InvalidCase{"TotalNotInteger", WithSpec("  rounds:\n    total: five\n"),
                    "spec.rounds.total: must be an integer, got five"},
        InvalidCase{"TotalFractional", WithSpec("  rounds:\n    total: 2.5\n"),
                    "spec.rounds.total: must be an integer, got 2.5"},
        InvalidCase{"TotalQuoted", WithSpec("  rounds:\n    total: \"5\"\n"),
                    "spec.rounds.total: must be an integer, got string \"5\""},
        InvalidCase{"TotalOverflow", WithSpec("  rounds:\n    total: 99999999999\n"),
                    "spec.rounds.total: must be an integer in [-2147483648, 2147483647], got 99999999999"},
        InvalidCase{"EmptyModelPath", Replace(kMinimal, "    path: /models/minilm\n", ""),
                    "spec.model.path: required"},
        InvalidCase{"DuplicateField", WithSpec("  model:\n    path: /m\n"), "spec.model: duplicate field"},
        InvalidCase{"BadFamily", Replace(kMinimal, "    labels:", "    family: gpt\n    labels:"),
                    "spec.model.family: must be one of bert, llama; got \"gpt\""},
        InvalidCase{"BadTask", Replace(kMinimal, "    labels: [neg, pos]\n", "    task: translation\n"),
                    "spec.model.task: must be one of sequence-classification"},
        InvalidCase{"OneLabel", Replace(kMinimal, "[neg, pos]", "[neg, neg]"),
                    "spec.model.labels: task sequence-classification needs at least 2 unique labels, got 1"},
        InvalidCase{"LabelsNotList", Replace(kMinimal, "[neg, pos]", "neg"),
                    "spec.model.labels: must be a list of strings, got neg"},
        InvalidCase{"ZeroRank", WithSpec("  adapter: {rank: 0}\n"), "spec.adapter.rank: must be >= 1, got 0"},
        InvalidCase{"BadAggregation", WithSpec("  adapter: {aggregation: mean}\n"),
                    "spec.adapter.aggregation: must be one of factors, frozen-a, product; got \"mean\""},
        InvalidCase{"QuorumAboveAgents",
                    WithSpec("  agents: {minAgents: 2, replicas: 4}\n  rounds: {quorum: 5}\n"),
                    "spec.rounds.quorum: must be <= max(spec.agents.minAgents, spec.agents.replicas) = 4"},
        InvalidCase{"ZeroFraction", WithSpec("  rounds: {fraction: 0}\n"),
                    "spec.rounds.fraction: must be in (0, 1], got 0"},
        InvalidCase{"FractionAboveOne", WithSpec("  rounds: {fraction: 1.5}\n"),
                    "spec.rounds.fraction: must be in (0, 1], got 1.5"},
        InvalidCase{"ZeroTimeout", WithSpec("  rounds: {timeoutSeconds: 0}\n"),
                    "spec.rounds.timeoutSeconds: must be >= 1, got 0"},
        InvalidCase{"ZeroLocalSteps", WithSpec("  rounds: {localSteps: 0}\n"),
                    "spec.rounds.localSteps: must be >= 1, got 0"},
        InvalidCase{"ZeroBatch", WithSpec("  rounds: {batchSize: 0}\n"),
                    "spec.rounds.batchSize: must be >= 1, got 0"},
        InvalidCase{"NegativeLearningRate", WithSpec("  rounds: {learningRate: -0.1}\n"),
                    "spec.rounds.learningRate: must be in (0, 10], got -0.1"},
        InvalidCase{"LearningRateText", WithSpec("  rounds: {learningRate: fast}\n"),
                    "spec.rounds.learningRate: must be a finite number, got fast"},
        InvalidCase{"UnknownStrategy", WithSpec("  strategy: {name: sgd}\n"),
                    "spec.strategy.name: must be one of fedavg, fedprox, fedavgm, scaffold, fedadam"},
        InvalidCase{"FedProxWithoutMu", WithSpec("  strategy: {name: fedprox}\n"),
                    "spec.strategy.proximalMu: must be > 0 for fedprox"},
        InvalidCase{"ZeroServerLearningRate",
                    WithSpec("  strategy: {name: fedadam, serverLearningRate: 0}\n"),
                    "spec.strategy.serverLearningRate: must be > 0, got 0"},
        InvalidCase{"BetaOne", WithSpec("  strategy: {name: fedadam, beta1: 1}\n"),
                    "spec.strategy.beta1: must be in [0, 1), got 1"},
        InvalidCase{"NegativeBeta2", WithSpec("  strategy: {name: fedyogi, beta2: -0.5}\n"),
                    "spec.strategy.beta2: must be in [0, 1), got -0.5"},
        InvalidCase{"ZeroTau", WithSpec("  strategy: {name: fedadagrad, tau: 0}\n"),
                    "spec.strategy.tau: must be > 0, got 0"},
        InvalidCase{"TrimHalf", WithSpec("  strategy: {name: trimmed-mean, trimFraction: 0.5}\n"),
                    "spec.strategy.trimFraction: must be in [0, 0.5), got 0.5"},
        InvalidCase{"KrumTooFewAgents",
                    WithSpec("  agents: {minAgents: 4}\n  strategy: {name: krum, byzantineClients: 1}\n"),
                    "spec.strategy.byzantineClients: krum needs max(spec.agents.minAgents, "
                    "spec.agents.replicas) >= 2f + 3 = 5, got 4"},
        InvalidCase{"NegativeByzantine", WithSpec("  strategy: {name: median, byzantineClients: -1}\n"),
                    "spec.strategy.byzantineClients: must be >= 0, got -1"},
        InvalidCase{
            "MultiKrumMTooLarge",
            WithSpec("  agents: {minAgents: 5}\n  strategy: {name: multi-krum, multiKrumM: 6}\n"),
            "spec.strategy.multiKrumM: must be <= max(spec.agents.minAgents, spec.agents.replicas) = 5"},
        InvalidCase{
            "BufferBelowMaxAgents",
            WithSpec("  agents: {maxAgents: 20}\n  strategy: {name: median, maxBufferedUpdates: 10}\n"),
            "spec.strategy.maxBufferedUpdates: median buffers every update: must be >= "
            "spec.agents.maxAgents (20), got 10"},
        InvalidCase{"NegativeClipNorm", WithSpec("  strategy: {clipNorm: -1}\n"),
                    "spec.strategy.clipNorm: must be >= 0, got -1"},
        InvalidCase{"NegativeMaxUpdateNorm", WithSpec("  strategy: {maxUpdateNorm: -2}\n"),
                    "spec.strategy.maxUpdateNorm: must be >= 0, got -2"},
        InvalidCase{"UnknownStrategyKey", WithSpec("  strategy: {name: krum, f: 1}\n"), "spec.strategy.f"},
        InvalidCase{"BadCodec", WithSpec("  compression: {codec: int2}\n"),
                    "spec.compression.codec: must be one of fp32, fp16, bf16, int8, int4; got \"int2\""},
        InvalidCase{"BlockSizeAboveCodecLimit", WithSpec("  compression: {blockSize: 65537}\n"),
                    "spec.compression.blockSize: must be <= 65536, got 65537"},
        InvalidCase{"TopKBelowMinimum", WithSpec("  compression: {topKFraction: 0.00001}\n"),
                    "spec.compression.topKFraction: must be 0 (off) or in [0.0001, 1], got 1e-05"},
        InvalidCase{"TopKAboveOne", WithSpec("  compression: {topKFraction: 1.5}\n"),
                    "spec.compression.topKFraction: must be 0 (off) or in [0.0001, 1], got 1.5"},
        InvalidCase{"TopKNegative", WithSpec("  compression: {topKFraction: -0.1}\n"),
                    "spec.compression.topKFraction: must be 0 (off) or in [0.0001, 1], got -0.1"},
        InvalidCase{"TopKNotNumber", WithSpec("  compression: {topKFraction: ten}\n"),
                    "spec.compression.topKFraction: must be a finite number, got ten"},
        InvalidCase{"ErrorFeedbackNotBool", WithSpec("  compression: {errorFeedback: 1}\n"),
                    "spec.compression.errorFeedback: must be true or false, got 1"},
        InvalidCase{"StochasticRoundingNotBool", WithSpec("  compression: {stochasticRounding: on}\n"),
                    "spec.compression.stochasticRounding: must be true or false, got on"},
        InvalidCase{"StochasticRoundingNeedsBlockwise",
                    WithSpec("  compression: {codec: fp16, stochasticRounding: true}\n"),
                    "spec.compression.stochasticRounding: needs a blockwise codec (int8, int4), got codec "
                    "\"fp16\""},
        InvalidCase{"ZstdNotBool", WithSpec("  compression: {zstd: yes}\n"),
                    "spec.compression.zstd: must be true or false, got yes"},
        InvalidCase{"BadCleanPodPolicy", WithSpec("  runPolicy: {cleanPodPolicy: all}\n"),
                    "spec.runPolicy.cleanPodPolicy: must be one of All, Running, None; got \"all\""},
        InvalidCase{"BadPort", WithSpec("  serving: {port: 70000}\n"),
                    "spec.serving.port: must be <= 65535, got 70000"},
        InvalidCase{"SectionNotObject", WithSpec("  rounds: 5\n"), "spec.rounds: must be an object, got 5"},
        InvalidCase{"NodeSelectorNotMap", WithSpec("  agents: {nodeSelector: [a]}\n"),
                    "spec.agents.nodeSelector: must be an object of strings, got a list"},
        InvalidCase{"NotYaml", "apiVersion: [unclosed\n", "manifest is not valid YAML or JSON: line"},
        InvalidCase{"NotAnObject", "- a\n- b\n", "manifest must be an object"}),
    [](const ::testing::TestParamInfo<InvalidCase>& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace fedge
