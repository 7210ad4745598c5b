// FederatedTrainingJob (fedge.io/v1alpha1): the manifest the operator reconciles
// and `fedge run` executes locally. This is the in-memory spec with defaults
// applied; field names follow the CRD (camelCase in YAML).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "fedge/status.h"

namespace fedge {

struct ModelSpec {
  std::string path;             // Hugging Face directory on the node
  std::string family = "bert";  // bert | llama
  std::string task = "sequence-classification";
  std::vector<std::string> labels;  // class names, index = label id
  int maxSeqLen = 64;
  // How agents hold the frozen base weights: auto (the checkpoint's own dtype, from
  // its config.json) | float32 | bfloat16 | float16; 16-bit for llama only.
  std::string dtype = "auto";

  bool operator==(const ModelSpec&) const = default;
};

struct AdapterSpec {
  int rank = 8;
  double alpha = 16;
  double dropout = 0.0;
  std::vector<std::string> targetModules = {"query", "value"};
  std::string aggregation = "factors";  // factors | frozen-a | product

  bool operator==(const AdapterSpec&) const = default;
};

struct DataSpec {
  std::string path;  // node-local directory
  std::string format = "jsonl";
  std::string trainFile = "train.jsonl";
  std::string evalFile = "test.jsonl";

  bool operator==(const DataSpec&) const = default;
};

struct AgentsSpec {
  std::map<std::string, std::string> nodeSelector;
  int minAgents = 1;
  int maxAgents = 0;  // 0: every matching node
  int replicas = 0;   // local runner: how many agents to start (0: minAgents)

  bool operator==(const AgentsSpec&) const = default;
};

struct RoundsSpec {
  int total = 5;
  int quorum = 0;            // minimum updates to close a round; 0: every participant
  double fraction = 1.0;     // fraction of joined agents invited per round
  int timeoutSeconds = 600;  // round deadline
  int localSteps = 20;
  int batchSize = 16;
  double learningRate = 1e-3;
  // Local learning rate across rounds (round r of R, r from 1): "constant" keeps
  // learningRate; "linear" uses learningRate * (1 - (r - 1) / R); "cosine"
  // learningRate * (1 + cos(pi (r - 1) / R)) / 2. Round 1 trains at learningRate in each.
  std::string learningRateSchedule = "constant";
  // The local AdamW state (moments, step count) between rounds: "fresh" builds a new
  // optimizer for every local round; "keep" lets each agent carry its own from its
  // previous round into the next (in memory: a restarted agent starts fresh);
  // "keep-second-moment" carries the second moment and step count and zeroes the
  // first moment at each round's start.
  std::string optimizerState = "fresh";
  double weightDecay = 0.01;
  double maxGradNorm = 1.0;
  uint64_t seed = 42;  // at most INT64_MAX (the CRD's int64)
  // Over-selection: invite ceil(target x overSelection) agents (target =
  // max(ceil(live x fraction), quorum)) and close as soon as `target` updates
  // arrived; the others' uploads are then late. 1: no over-selection.
  double overSelection = 1.0;
  // "sync": rounds as above. "async" (FedBuff): agents train whenever they
  // ask, every asyncBufferSize updates make a new global version (one
  // "round"), an update s versions stale is scaled by (1 + s)^-stalenessExponent.
  std::string mode = "sync";
  int asyncBufferSize = 10;
  double stalenessExponent = 0.5;
  int maxStaleness = 0;  // async: updates more than this many versions stale are rejected; 0: no bound

  bool operator==(const RoundsSpec&) const = default;
};

struct StrategySpec {
  std::string name = "fedavg";  // fedavg | fedprox | fedavgm | fedadam | fedyogi | fedadagrad |
                                // median | trimmed-mean | krum | multi-krum
  double proximalMu = 0.0;
  // Logit-adjusted local loss for label skew (Menon et al. 2021; FedLC, Zhang et al.
  // 2022): during local training each agent adds logitAdjustment x log(pi(y) + 1e-6) to
  // the classifier logits before the cross-entropy, pi = the label frequencies of its own
  // training data (never sent). Evaluation and serving use the raw logits. 0: plain
  // cross-entropy. BERT sequence classification only (other trainers refuse > 0).
  double logitAdjustment = 0.0;
  // Restricted softmax (FedRS, Li & Zhan, KDD 2021): during local training each agent
  // multiplies the logits of the classes with no example in its own training data by
  // restrictedSoftmax in (0, 1], so its round does not push those classes' head rows
  // down. Evaluation and serving use the raw logits. 1: off. BERT sequence
  // classification only (other trainers refuse < 1).
  double restrictedSoftmax = 1.0;
  // Restricted step: during local training each agent multiplies the change every
  // optimizer step (AdamW's update, weight decay included) makes to the head rows of
  // the classes with no example in its own training data by restrictedStep in
  // [0, 1]; 0 leaves those rows where the round started them. Unlike
  // restrictedSoftmax it acts after AdamW's per-coordinate normalisation. 1: off.
  // BERT sequence classification only (other trainers refuse < 1).
  double restrictedStep = 1.0;
  // With restrictedStep < 1: the classes whose share of the agent's training examples
  // is at most restrictedStepBelow in [0, 1) count as absent too (a class sampled about
  // never in a round is pushed down as if absent). 0: only classes with no example.
  double restrictedStepBelow = 0.0;
  // SCAFFOLD's global step size eta_g (Karimireddy et al. 2020): the new global is
  // x + eta_g times the example-weighted mean delta; the control variate's update does
  // not depend on it. 1: the plain mean. Only scaffold (the validator refuses != 1
  // with other strategies).
  double globalLearningRate = 1.0;
  // Server optimizers (fedadam, fedyogi, fedadagrad; Reddi et al. 2021).
  double serverLearningRate = 1e-2;  // eta
  double beta1 = 0.9;
  double beta2 = 0.99;
  double tau = 1e-3;
  // FedAvgM (Hsu et al. 2019): server momentum beta; v = beta v + mean delta, x += v.
  double serverMomentum = 0.9;
  // Robust strategies.
  double trimFraction = 0.1;      // trimmed-mean: trims floor(beta * n) from each end
  int byzantineClients = 0;       // krum, multi-krum: f
  int multiKrumM = 0;             // multi-krum: updates averaged; 0: n - f
  int maxBufferedUpdates = 1000;  // median, trimmed-mean, krum: updates held per round
  // Norm bounding, with any strategy (0: off).
  double clipNorm = 0.0;       // scale each update to L2 norm <= clipNorm
  double maxUpdateNorm = 0.0;  // reject updates whose L2 norm exceeds it

  bool operator==(const StrategySpec&) const = default;
};

// How agents encode their updates (fedge/tensor_bundle.h, docs/formats.md).
struct CompressionSpec {
  std::string codec = "int8";  // fp32 | fp16 | bf16 | int8 | int4
  int blockSize = 64;
  bool zstd = true;
  int zstdLevel = 3;  // 1 (fastest) .. 19 (smallest); used when zstd is on
  // How the aggregator sends the global model (and the SCAFFOLD control) to the
  // agents: fp32 | fp16 | bf16. The aggregator keeps, aggregates, checkpoints and
  // exports its global in fp32 whatever this says; agents train from (and compute
  // their deltas against) the global as they decoded it. A global with a value
  // outside the codec's range is sent in fp32 (logged). Aggregator only (not on the
  // wire: the bundle's header names its codec).
  std::string globalCodec = "fp32";
  // Top-k sparsification: 0 = off (dense), else in [kMinTopkFraction = 1e-4, 1]:
  // per tensor the ceil(f * n) largest-magnitude entries travel.
  double topKFraction = 0.0;
  // Error feedback (fedge/error_feedback.h): each agent keeps what the
  // encoding dropped as a residual in its state dir and adds it to its next
  // update. Default on; it only acts when the encoding is lossy (codec other
  // than fp32, or topKFraction > 0) and costs no wire bytes.
  bool errorFeedback = true;
  // Unbiased stochastic rounding for the blockwise codecs (int8, int4 only).
  bool stochasticRounding = false;

  bool operator==(const CompressionSpec&) const = default;
};

// Client-level differential privacy (DP-FedAvg): present means on. Central mode only: the
// aggregator clips each update to clipNorm, counts it once and adds Gaussian noise of
// standard deviation noiseMultiplier x clipNorm to the round's sum; its RDP accountant
// reports epsilon at delta and ends the job before a round would exceed targetEpsilon.
struct DifferentialPrivacySpec {
  bool enabled = false;
  std::string mode = "central";  // central | distributed (needs secureAggregation.enabled)
  double clipNorm = 0.0;         // > 0
  double noiseMultiplier = 0.0;  // > 0
  double targetEpsilon = 0.0;    // >= 0; 0: no limit
  double delta = 1e-5;           // in (0, 1)

  bool operator==(const DifferentialPrivacySpec&) const = default;
};

// Secure aggregation (issue 12, SecAgg+ style): the aggregator learns only the sum of
// each round's surviving updates. Present in the manifest with enabled: true turns it on.
struct SecureAggregationSpec {
  bool enabled = false;
  int threshold = 0;   // shares that rebuild an agent's secret; 0: floor(k / 2) + 1 per round
  int neighbours = 0;  // k agents each shares with; 0: every other agent (plain SecAgg)

  bool operator==(const SecureAggregationSpec&) const = default;
};

struct PrivacySpec {
  // Mutual TLS between agents and the aggregator: the CRD's default in a cluster, and
  // `fedge run`'s (a CA made for the run). false: plaintext gRPC.
  bool tls = true;
  DifferentialPrivacySpec differentialPrivacy;
  SecureAggregationSpec secureAggregation;

  bool operator==(const PrivacySpec&) const = default;
};

struct RunPolicySpec {
  int backoffLimit = 3;
  int64_t activeDeadlineSeconds = 0;     // 0: none
  int64_t ttlSecondsAfterFinished = -1;  // -1: keep
  bool suspend = false;
  std::string cleanPodPolicy = "Running";  // All | Running | None

  bool operator==(const RunPolicySpec&) const = default;
};

struct ServingSpec {
  bool enabled = true;
  int port = 8080;
  // Weights the decode step reads (llama only: CausalLmOptions::decode_weights):
  // "float32" | "int8".
  std::string decodeWeights = "float32";
  // Bytes of one input string the inference API takes (a prompt, all chat messages
  // together, one embeddings/classify input), checked before tokenizing.
  int maxInputBytes = 16384;

  bool operator==(const ServingSpec&) const = default;
};

// Feedback posted to an agent's /v1/feedback (docs/inference-api.md): stored on
// the node only, deduplicated, and mixed into that node's local training set.
struct FeedbackSpec {
  bool enabled = true;
  int maxExamples = 1000;  // kept per node; the oldest is dropped first beyond it
  // Sampling fraction: the share of the examples a local round samples that are
  // feedback (when the node holds any), whatever the shard's size.
  double weight = 0.2;

  bool operator==(const FeedbackSpec&) const = default;
};

struct JobSpec {
  std::string apiVersion;
  std::string kind;
  std::string name;
  std::string namespace_ = "default";
  ModelSpec model;
  AdapterSpec adapter;
  DataSpec data;
  AgentsSpec agents;
  RoundsSpec rounds;
  StrategySpec strategy;
  CompressionSpec compression;
  PrivacySpec privacy;
  RunPolicySpec runPolicy;
  ServingSpec serving;
  FeedbackSpec feedback;

  // "namespace/name".
  std::string Key() const { return namespace_ + "/" + name; }

  bool operator==(const JobSpec&) const = default;
};

// Parses a FederatedTrainingJob manifest (YAML or JSON), applies defaults and
// validates it. Errors name the field by its path, e.g.
// "spec.rounds.total: must be >= 1, got -3". Applies the same bounds and
// cross-field rules as the CRD (crds/, schema + CEL); tests/cluster/
// spec_boundaries.json is checked against both (docs/job-spec.md). The
// operator-only fields (spec.aggregator, spec.agents.tolerationSeconds,
// spec.agents.resources) are checked, not stored.
StatusOr<JobSpec> ParseJobSpec(const std::string& yaml_text);
StatusOr<JobSpec> LoadJobSpec(const std::string& path);

// Validation alone (ParseJobSpec calls it). All problems are reported at once,
// joined by "; ", each starting with the field path.
Status ValidateJobSpec(const JobSpec& spec);

// Renders `spec` as a complete manifest with every field explicit (defaults
// included). ParseJobSpec(JobSpecToYaml(s)) reproduces s for any valid s; used
// for the resolved manifest the local runner hands to its children.
std::string JobSpecToYaml(const JobSpec& spec);

}  // namespace fedge
