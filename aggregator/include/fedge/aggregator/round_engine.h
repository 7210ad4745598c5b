// The round engine: the aggregator's state machine, free of sockets and
// protobuf. The gRPC handlers decode and validate wire input, then call it.
//
//   WaitingForAgents  until `expected_agents` have joined and a majority of
//                     them (expected / 2 + 1) declared the same trainable
//                     layout at Join (names and shapes: AgentInfo.layout)
//   Initializing      the first agent to ask that declared that layout gets
//                     INITIALIZE and uploads its full trainable state
//                     (round 0) -> global version 1, accepted only with that
//                     layout (otherwise rejected, and the next such agent is
//                     asked); everyone else WAITs
//   Running           for round r in 1..total:
//     train     target = max(ceil(live x fraction), quorum); invite
//               ceil(target x over_selection) agents; each submits a delta
//               against the current global version. Close rule:
//                 - every invited agent answered        -> close
//                 - `target` updates arrived (over-selection) -> close; the
//                   stragglers' uploads are rejected as late (round_closed)
//                 - deadline, accepted >= required      -> close
//                   (required = quorum, or every invited agent when quorum = 0)
//                 - deadline, fewer, extension unused   -> extend once by the
//                   round timeout (logged)
//                 - extended deadline, fewer: quorum = 0 and >= 1 update ->
//                   close below quorum (logged); otherwise the job Fails
//               -> strategy (FedAvg) -> new global version
//               -> checkpoint (the new global, before evaluation)
//     evaluate  every live agent evaluates the new version and reports; close
//               when all reported or at the deadline
//               -> round record, checkpoint (with the evaluation), next round
//               Evaluated with the next round instead (evaluate_with_next_round,
//               when every live agent declared evaluates_before_training, the
//               rounds are synchronous, every live agent is invited, and neither
//               secure aggregation nor differential privacy is on; never the
//               last round): no evaluate phase. The round record is written
//               without its evaluation and the next round starts at once; its
//               TRAIN tasks ask each agent to evaluate the global before
//               training (TaskInfo::evaluate_global), the results ride in the
//               updates (UpdateMeta::evaluation), and the record gets them when
//               that next round closes. Agents do the same work in the same
//               order as with the phase; one barrier, one GetTask and one
//               ReportMetrics per agent and round fewer.
//   Succeeded         GetTask answers DONE
//
// Async mode (FedBuff, Nguyen et al. 2022): after INITIALIZE every agent that
// asks gets TRAIN on the current version (once per version); an update s
// versions stale is scaled by (1 + s)^-staleness_exponent and buffered; every
// async_buffer_size updates (or, with at least one buffered, a round timeout
// without reaching it) the strategy makes the next version: one "round".
// After the last round every live agent evaluates the final version.
//
// Time comes from the injected Clock; nothing here sleeps. Every public method
// first advances the state machine to "now" (Tick), so deadlines are honoured
// whoever calls; the server also calls Tick periodically. Thread-safe: one
// mutex (mu_) guards all state; checkpoints are written under it so the
// state on disk never runs ahead of or behind memory.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "fedge/aggregator/checkpoint.h"
#include "fedge/aggregator/clock.h"
#include "fedge/aggregator/metrics.h"
#include "fedge/aggregator/privacy_accountant.h"
#include "fedge/aggregator/round_record.h"
#include "fedge/aggregator/strategy.h"
#include "fedge/job_spec.h"
#include "fedge/secagg/protocol.h"
#include "fedge/status.h"
#include "fedge/tensor_bundle.h"

namespace fedge::aggregator {

enum class JobState { kWaitingForAgents, kInitializing, kRunning, kSucceeded, kFailed };
enum class Phase { kIdle, kTrain, kEvaluate };
std::string_view JobStateName(JobState state);  // "WaitingForAgents", ...
std::string_view PhaseName(Phase phase);        // "idle" | "train" | "evaluate"

// What a TRAIN, INITIALIZE or EVALUATE task hands the agent (v1.TrainingConfig).
struct TrainConfig {
  // The job's spec, shared and immutable: ProtocolHandler::GetTask copies every
  // field the spec's field table names a TrainingConfig field of (training
  // fields of spec.rounds, spec.model.maxSeqLen, spec.strategy.proximalMu,
  // spec.compression) with TrainingToWire (fedge/job_spec_fields.h). Set by
  // EngineOptionsFromSpec (RoundEngine::Create refuses null); null in WAIT and
  // DONE tasks. Every delta upload must use its codec (ProtocolHandler::AppendChunk).
  std::shared_ptr<const JobSpec> spec;
  // Round-specific values the engine computes (0 / off in EngineOptions::train):
  // the task's learning rate, spec.rounds.learningRate under
  // spec.rounds.learningRateSchedule for the task's round (ScheduledLearningRate,
  // strategy.h); sent in place of the spec's.
  float learning_rate = 0;
  // Secure aggregation (SecAggOptions): the agent clips weight x delta to
  // secagg_clip_norm, weight = min(examples / secagg_max_weight, 1) (1 when 0).
  bool secure_aggregation = false;
  double secagg_clip_norm = 0;
  int64_t secagg_max_weight = 0;
  // SCAFFOLD: the server control variate c (AggregationStrategy::ServerControl);
  // null for other strategies, empty while c is 0.
  std::shared_ptr<const std::string> scaffold_control;
};

// Secure aggregation (issue 12; secagg/include/fedge/secagg/protocol.h): the
// aggregator learns only the sum of a round's surviving updates. The train phase
// runs the SecAgg+ protocol (advertise, share, masked, unmask) after the agents
// trained; the engine folds the unmasked mean into the strategy as one update.
// Needs a linear strategy (fedavg, fedprox, fedavgm, fedadam, fedyogi,
// fedadagrad), synchronous rounds and adapter aggregation factors or frozen-a.
// Example weights are summed under the mask (weight x delta, and the weight as
// one more value); with differential privacy every weight is 1.
struct SecAggOptions {
  bool enabled = false;
  int threshold = 0;   // 0: floor(neighbours / 2) + 1
  int neighbours = 0;  // 0: every other agent (plain SecAgg)
  // Each phase after the key advertisement closes at the latest this long after
  // the previous one; 0: the round timeout.
  int64_t phase_timeout_ms = 0;
  // Sees each masked input as the aggregator holds it (audits, tests); may be empty.
  std::function<void(const std::string& agent_id, const std::vector<uint32_t>& input,
                     const secagg::RoundParams& params)>
      on_masked_input;
};

// Client-level differential privacy, central mode (issue 12; DP-FedAvg of McMahan et al.
// 2018): every update is scaled to an L2 norm of at most clip_norm and counts with weight
// 1; the round's new global is global + (sum of the updates + N(0, (noise_multiplier x
// clip_norm)^2 I)) / target, target being the updates the round was planned to close on
// (a fixed denominator: the sum's sensitivity is clip_norm whoever answers). Each round is
// accounted as the subsampled Gaussian mechanism with rate invited / live agents
// (privacy_accountant.h). Needs a linear aggregation: fedavg or fedprox, adapter
// aggregation factors or frozen-a, synchronous rounds.
struct DpOptions {
  bool enabled = false;
  double clip_norm = 0;         // C > 0
  double noise_multiplier = 0;  // sigma > 0
  double target_epsilon = 0;    // the job ends before a round would exceed it; 0: no limit
  double delta = 1e-5;          // in (0, 1)
  uint64_t noise_seed = 0;      // 0: seeded from the CSPRNG (tests fix it)
  // Distributed mode (needs SecAggOptions::enabled): no noise at the aggregator; each
  // agent of the round's key advertisement (m of them) adds N(0, sigma^2 C^2 / m) to its
  // masked update. With s of them surviving the sum carries sigma * sqrt(s / m) x C of
  // noise, and that (not sigma) is what the round is accounted at.
  bool distributed = false;
};

// What /v1/status reports of the privacy spent so far.
struct PrivacyStatus {
  double epsilon = 0;
  double delta = 0;
  double target_epsilon = 0;
  double noise_multiplier = 0;
  double clip_norm = 0;
  int64_t rounds_accounted = 0;
  bool budget_exhausted = false;
};

struct EngineOptions {
  std::string job;  // namespace/name
  int total_rounds = 1;
  int expected_agents = 1;
  int quorum = 0;  // 0: every invited agent
  double fraction = 1.0;
  int64_t round_timeout_ms = 600'000;
  int max_deadline_extensions = 1;
  // An agent not heard from for this long is left out of new rounds (it still
  // counts as joined). 0: round_timeout_ms + 60 s.
  int64_t agent_liveness_ms = 0;
  int retry_after_ms = 200;
  uint64_t seed = 42;  // participant selection
  // Invite ceil(target x over_selection) agents, close at `target` updates.
  double over_selection = 1.0;
  // FedBuff-style asynchronous rounds (see the file comment).
  bool async = false;
  int async_buffer_size = 10;
  double staleness_exponent = 0.5;
  int max_staleness = 0;  // 0: any staleness accepted
  // train.spec: the job's spec (required). TRAIN tasks of round r carry
  // ScheduledLearningRate(spec.rounds.learningRate, spec.rounds.learningRateSchedule,
  // r, total_rounds) (strategy.h) as train.learning_rate.
  TrainConfig train;
  // Weight bound (issue 10, item 4): an update counts in FedAvg with
  // min(num_examples it reports, num_train_examples its agent declared at
  // Join, max_weight), an evaluation report likewise with the Join's
  // num_eval_examples. EngineOptionsFromSpec: localSteps x batchSize, the
  // most examples one round of local training can use. 0: no cap.
  int64_t max_weight = 0;
  // Default norm bound: > 0 scales every update down to an L2 norm of at
  // most auto_clip_margin x learning_rate x local_steps x sqrt(elements of
  // the global) (AutoClipNorm). EngineOptionsFromSpec sets kAutoClipMargin
  // unless the spec sets strategy.clipNorm or strategy.maxUpdateNorm.
  double auto_clip_margin = 0;
  StrategySpec strategy;
  AdapterSpec adapter;  // LoRA aggregation mode and rank (lora_aggregation.h)
  // How the global is encoded for FetchGlobal. fp32 is lossless; fp16 / bf16
  // (spec.compression.globalCodec) halve the download: agents train from the
  // global as they decoded it and send deltas against that, while the engine's
  // global (GlobalModel::bundle: aggregation, checkpoints, export) stays fp32,
  // so the rounding never accumulates. A version with a value the codec cannot
  // hold (fp16: |x| >= 65520; bf16: rounds to Inf) is encoded in fp32 instead
  // (logged). zstd whatever it saves: the global is encoded once and sent to
  // every agent, so each byte saved is saved N times (the agents decompress
  // it, not the aggregator).
  EncodeOptions global_encoding{
      .codec = Codec::kFp32, .block_size = 64, .zstd = true, .zstd_level = 3, .zstd_min_saving = 0};
  DpOptions dp;
  SecAggOptions secagg;
  // Evaluate a round's global with the next round's updates when the agents
  // can (see the file comment); false: always an evaluate phase
  // (fedge-aggregator --blocking-evaluation).
  bool evaluate_with_next_round = true;
};

// Derives engine options from a job spec; expected_agents <= 0 means
// spec.agents.minAgents.
EngineOptions EngineOptionsFromSpec(const JobSpec& spec, int expected_agents = 0);

// Margin of the default norm bound over lr x steps x sqrt(n). AdamW moves a
// parameter by lr x |m/sqrt(v)| per step, and |m/sqrt(v)| <= 1 whenever the
// gradient keeps its sign (it can exceed 1 briefly when a large gradient
// follows small ones); the margin leaves room for that and for the residual
// error feedback adds to a lossy update. Honest fedge-agent updates measured
// 0.07-0.17 of the bound (aggregator/README.md, "Weights and the norm bound").
inline constexpr double kAutoClipMargin = 2.0;

// The default norm bound for `options` and a global of `elements` values
// (see EngineOptions::auto_clip_margin); 0 when it is off.
double AutoClipNorm(const EngineOptions& options, int64_t elements);

// What an agent declares when it joins (JoinRequest.capabilities).
struct AgentInfo {
  std::string node_name;
  int64_t num_train_examples = 0;  // bounds the weight of its updates
  int64_t num_eval_examples = 0;   // bounds the weight of its evaluation reports
  // Names and shapes of its trainable state (values unused); empty: not
  // declared (an agent older than this aggregator).
  TensorBundle layout;
  // It evaluates before training when a TRAIN task asks (Capabilities.evaluates_before_training).
  bool evaluates_before_training = false;
};

// A canonical text of the names and shapes of `layout` (order-free), for
// comparing declarations.
std::string LayoutKey(const TensorBundle& layout);

enum class TaskKind { kWait, kInitialize, kTrain, kEvaluate, kDone };

struct TaskInfo {
  TaskKind kind = TaskKind::kWait;
  int64_t round = 0;
  int64_t global_version = 0;
  std::string global_checksum;
  int64_t deadline_unix_ms = 0;
  TrainConfig config;
  int retry_after_ms = 0;
  std::string message;
  // TRAIN: evaluate the global (the previous round's) before training and send
  // the result with the update (UpdateMeta::evaluation).
  bool evaluate_global = false;
};

// One global model version, immutable once published; shared with in-flight
// FetchGlobal streams so they never hold the engine lock.
struct GlobalModel {
  int64_t version = 0;
  TensorBundle bundle;   // fp32: what the engine aggregates, checkpoints and exports
  std::string encoded;   // EncodeBundle(bundle, global_encoding), or fp32 if it does not fit
  std::string checksum;  // Sha256Hex(encoded)
};

// An agent's evaluation of a global version (ReportMetrics, or with an update).
struct EvalReport {
  std::string agent_id;
  int64_t round = 0;
  int64_t global_version = 0;
  int64_t num_examples = 0;
  std::optional<double> accuracy;
  std::optional<double> loss;
};

struct UpdateMeta {
  std::string agent_id;
  int64_t round = 0;
  int64_t base_version = 0;
  int64_t num_examples = 0;
  bool is_delta = true;
  double train_loss = 0;
  int steps = 0;
  uint64_t encoded_bytes = 0;
  uint64_t raw_bytes = 0;
  int64_t feedback_examples = 0;  // agent-reported; informational (RoundRecord.feedback_examples)
  // The evaluation a TRAIN task's evaluate_global asked for (agent_id and round
  // unused); checked with the header, folded in when the update is accepted.
  std::optional<EvalReport> evaluation;
};

struct UpdateVerdict {
  bool accepted = false;
  std::string reason;        // human-readable: what was wrong and what to do
  std::string reason_label;  // metric label: "stale_base", "round_closed", ...
  int64_t round = 0;
};

// How the checkpoints fare (for /v1/status and the operator's condition).
struct CheckpointHealth {
  bool enabled = false;       // a checkpoint dir is configured
  bool ok = true;             // the last attempt succeeded (or none was made)
  int64_t failures = 0;       // attempts that failed since start
  std::string last_error;     // of the last failure
  int64_t saved_round = -1;   // completed round of the newest checkpoint written or restored
  int64_t saved_version = 0;  // its global version
  int64_t saved_unix_ms = 0;  // when it was written (0: restored or none)
};

struct EngineStatus {
  std::string job;
  JobState state = JobState::kWaitingForAgents;
  int64_t round = 0;  // current (or last, once Succeeded)
  int64_t total_rounds = 0;
  Phase phase = Phase::kIdle;
  int64_t global_version = 0;
  std::string global_checksum;
  int agents_joined = 0;
  std::vector<RoundRecord> rounds;
  std::optional<double> final_accuracy;
  std::string message;  // why Failed / what the engine waits for
  CheckpointHealth checkpoint;
  std::optional<PrivacyStatus> privacy;  // set when differential privacy is on
};

class RoundEngine {
 public:
  // `clock` must outlive the engine. `checkpoints` and `metrics` may be null
  // (no checkpoints / no metrics) and must outlive it otherwise. Fails if the
  // strategy cannot be built or options are out of range.
  static StatusOr<std::unique_ptr<RoundEngine>> Create(EngineOptions options, Clock* clock,
                                                       CheckpointStore* checkpoints,
                                                       AggregatorMetrics* metrics);

  // Continues from a checkpoint: the round after data.completed_round starts
  // when enough agents have (re)joined. Call before serving. FAILED_PRECONDITION
  // if the checkpoint belongs to another job.
  Status Restore(CheckpointData data);

  // Ends the job as it stands (after Restore): Succeeded, every agent that joins is
  // told DONE with the current global, and nothing more is trained. For an aggregator
  // started after its job finished, to hand the final global to agents that have none
  // (nodes joining a succeeded job). FAILED_PRECONDITION without a global.
  Status ServeFinal();

  // Registers an agent (a re-join replaces its session and what it
  // declared) and returns a new session id (NewSessionId: 128 bits from the
  // CSPRNG). Job and token checks are the caller's.
  std::string Join(const std::string& agent_id, const AgentInfo& info);

  // OK if `session` is the current session of `agent_id`; otherwise
  // UNAUTHENTICATED telling the agent to Join again (sessions do not survive
  // an aggregator restart).
  Status CheckSession(const std::string& agent_id, const std::string& session) const;

  // True if `agent_id` has joined (whatever its session).
  bool IsJoined(const std::string& agent_id) const;

  // True while an update for `round` could still be accepted (sync: that
  // round's train phase is open; async: the job is running and training;
  // round 0 while the job initializes). Partial uploads for which this is
  // false are dropped.
  bool AcceptsUpdatesFor(int64_t round) const;

  // What `agent_id` (already authenticated) should do now.
  TaskInfo GetTask(const std::string& agent_id, int64_t held_version);

  // Changes whenever a WAIT answer of GetTask may stop being one: the job
  // state, phase, round, global version or initializing agent changed (an
  // agent's own answers and uploads aside). GetTask long-polls (server.cpp)
  // re-ask only when it moved. Monotonic; cheap (one lock, no copy).
  uint64_t TaskEpoch() const;

  // The checks SubmitUpdate makes from an update's header alone (agent, job
  // state, round, participation, duplicate, replay, base version,
  // staleness; for an INITIALIZE upload the initializer), for the service to
  // run before it receives the body: an upload the engine would refuse costs
  // no memory. Empty reason_label: it may proceed (SubmitUpdate checks again,
  // the state may move while the body arrives). Counts its rejections.
  UpdateVerdict CheckUpdateHeader(const UpdateMeta& meta);

  // The names and shapes an upload described by `meta` must have: the
  // current global's for a delta, the layout the majority declared for an
  // INITIALIZE upload; null when not known yet. The pointer keeps it alive.
  std::shared_ptr<const TensorBundle> ExpectedLayout(const UpdateMeta& meta) const;

  // The INITIALIZE upload of `agent_id` turned out (while it was received or
  // decoded) not to have the agreed layout: that agent is not asked again,
  // and the next agent that declared the layout is.
  void InitializerFailed(const std::string& agent_id, const std::string& why);

  // Validates and folds in an update (or the INITIALIZE upload). A rejection
  // leaves the global model and the round untouched.
  UpdateVerdict SubmitUpdate(const UpdateMeta& meta, const TensorBundle& bundle);

  // Records an evaluation report for the current evaluate phase.
  // FAILED_PRECONDITION if no evaluation of that round/version is open or the
  // agent was not asked; INVALID_ARGUMENT for nonsense values.
  Status ReportEvaluation(const EvalReport& report);

  // The current global (null before INITIALIZE). `version` 0 means current;
  // NOT_FOUND if another version is asked for (only the current one is kept).
  StatusOr<std::shared_ptr<const GlobalModel>> Global(int64_t version) const;

  // Accounts global bytes streamed to agents in the current round.
  void RecordBytesSent(uint64_t bytes);

  // Advances deadlines to the clock's now.
  void Tick();

  // Secure aggregation RPCs of `agent_id` (authenticated) for `round`; see
  // SecAggOptions and secagg/protocol.h. nullopt: the phase is still collecting,
  // ask again. FAILED_PRECONDITION when the round is not running secure
  // aggregation or the agent is not (or no longer) part of it.
  StatusOr<std::optional<secagg::Roster>> SecAggAdvertise(const std::string& agent_id, int64_t round,
                                                          const secagg::Bytes& enc_public_key,
                                                          const secagg::Bytes& mask_public_key);
  StatusOr<std::optional<std::vector<secagg::EncryptedShare>>> SecAggShareKeys(
      const std::string& agent_id, int64_t round, std::vector<secagg::EncryptedShare> shares);
  // `feedback_examples`: as UpdateMeta's, recorded (clamped) for the agents whose input
  // ends up in the unmasked sum.
  Status SecAggSubmitMasked(const std::string& agent_id, int64_t round, uint64_t offset,
                            const std::string& data, uint64_t* received, int64_t feedback_examples = 0);
  // With `answer`, records the agent's revealed shares (once); otherwise asks who survived.
  StatusOr<std::optional<secagg::UnmaskAsk>> SecAggUnmask(const std::string& agent_id, int64_t round,
                                                          bool answer,
                                                          const std::vector<secagg::RevealedShare>& shares);

  EngineStatus GetStatus();

  // True once the job Succeeded and every joined agent was handed DONE.
  bool AllAgentsDone() const;
  // Clock time the job reached Succeeded/Failed, if it did.
  std::optional<int64_t> FinishedAtMs() const;

  const EngineOptions& options() const { return options_; }

 private:
  struct Agent {
    std::string session;
    std::string node_name;
    int64_t num_train_examples = 0;              // declared at Join
    int64_t num_eval_examples = 0;               // declared at Join
    std::string layout_key;                      // LayoutKey of the declared layout; "" if none
    std::shared_ptr<const TensorBundle> layout;  // declared at Join; null if none
    int64_t last_seen_ms = 0;
    bool got_done = false;
    bool evaluates_before_training = false;  // declared at Join
    // Replay defence; kept across re-joins.
    int64_t last_accepted_round = 0;  // sync: newest round with an accepted update
    int64_t last_base_version = 0;    // async: newest base version with an accepted update
  };
  struct TrainRound {
    std::set<std::string> invited;
    std::set<std::string> answered;
    int64_t deadline_ms = 0;
    int extensions = 0;
    size_t target = 0;          // updates that close the round (<= invited.size())
    double staleness_sum = 0;   // async: sum of accepted updates' staleness
    double train_loss_sum = 0;  // sum n_i * loss_i
    double examples = 0;        // sum n_i
    double sampling_rate = 0;   // invited / live agents (the privacy accountant's q)
  };
  struct EvalRound {
    std::set<std::string> asked;
    std::set<std::string> reported;
    int64_t deadline_ms = 0;
    double correct = 0;   // sum accuracy_i * n_i
    double loss_sum = 0;  // sum loss_i * n_i
    int64_t acc_examples = 0;
    int64_t loss_examples = 0;
  };

  RoundEngine(EngineOptions options, Clock* clock, CheckpointStore* checkpoints, AggregatorMetrics* metrics,
              std::unique_ptr<AggregationStrategy> strategy);

  void TickLocked(int64_t now);
  void StartTrainLocked(int64_t now);
  void CloseTrainLocked(int64_t now, const std::string& reason);
  void CloseEvalLocked(int64_t now);
  // True when the round closing now is evaluated with the next one (see the
  // file comment and EngineOptions::evaluate_with_next_round).
  bool DefersEvaluationLocked(int64_t now) const;
  // Puts the evaluation collected with this round's updates into the record of
  // the round before (history_), its metrics and log; no-op when none is pending.
  void ApplyPendingEvaluationLocked();
  // Adds one validated report to `eval` with its bounded weight.
  void FoldEvaluationLocked(EvalRound* eval, const EvalReport& report);
  // Round record into history, metrics, checkpoint, round_ + 1, phase idle.
  void CompleteRoundLocked(int64_t now);
  void StartAsyncLocked(int64_t now);
  UpdateVerdict RejectLocked(const UpdateMeta& meta, std::string_view label, std::string reason);
  // CheckUpdateHeader under mu_.
  UpdateVerdict PrecheckLocked(const UpdateMeta& meta);
  // Layout, finiteness and norm bound of an update; empty
  // verdict.reason_label when it passes.
  // Sets *norm to the update's L2 norm when it passes.
  UpdateVerdict ValidateLocked(const UpdateMeta& meta, const TensorBundle& bundle, double* norm);
  // Folds a validated update into the strategy (capacity check included)
  // with its bounded weight, scaled down to the default norm bound.
  // `norm`: the bundle's L2 norm (from ValidateLocked).
  UpdateVerdict AddLocked(const UpdateMeta& meta, const TensorBundle& bundle, double norm);
  // min(claimed, declared, options_.max_weight) (no cap when max_weight is
  // 0); counts and logs a clamp. `kind`: "update" | "evaluation".
  int64_t BoundedWeightLocked(const std::string& agent_id, std::string_view kind, int64_t claimed,
                              int64_t declared);
  UpdateVerdict SubmitAsyncLocked(const UpdateMeta& meta, const TensorBundle& bundle, Agent& agent,
                                  int64_t now);
  // "(target_reached, 3 updates)" for a closed round, "" if unknown.
  std::string CloseDetailLocked(int64_t round) const;
  void FailLocked(const std::string& message);
  // DP: (sum + noise) / target in place of the strategy's mean; see DpOptions.
  void AddPrivacyNoiseLocked(const TensorBundle& global, TensorBundle* next, int updates);
  // DP: true (and the job ended) when the next round, at `sampling_rate` with `invited`
  // agents, could take epsilon above options_.dp.target_epsilon (distributed mode: at the
  // noise its worst allowed dropouts leave, PrivacyNoiseMultiplierAtWorstLocked).
  bool PrivacyBudgetStopsLocked(double sampling_rate, size_t invited, int64_t now);
  Status PublishGlobalLocked(TensorBundle bundle, int64_t version);
  // The strategy's SCAFFOLD control (AggregationStrategy::ServerControl, fp32)
  // as TRAIN tasks carry it: in options_.global_encoding's codec (fp32 when it
  // does not fit), re-encoded once per new control; the strategy's c stays fp32.
  std::shared_ptr<const std::string> SentControlLocked();
  // Writes the current global as the checkpoint of `completed_round`, with
  // `pending` (a round aggregated but not yet evaluated) appended to the
  // history when set. Failures are counted, never fatal.
  void SaveCheckpointLocked(int64_t completed_round, const RoundRecord* pending = nullptr);
  std::vector<std::string> LiveAgentsLocked(int64_t now) const;
  UpdateVerdict SubmitInitialLocked(const UpdateMeta& meta, const TensorBundle& bundle, int64_t now);
  // Picks expected_layout_ once a majority agrees; false (message_ set) while none does.
  bool ChooseLayoutLocked();
  void InitializerFailedLocked(const std::string& agent_id, const std::string& why);
  TaskInfo WaitTask(std::string message) const;
  // Secure aggregation (secagg_engine.cpp).
  static Status CheckSecAggOptions(const EngineOptions& options);
  // The L2 bound agents clip to before masking.
  double SecAggClipNormLocked() const;
  // Distributed DP: the smallest noise multiplier a round of `invited` agents can end
  // with, sigma * sqrt(s / m) minimised over the advertiser counts m the protocol accepts
  // and the fewest survivors s = threshold + 1 it can unmask; sigma otherwise.
  double PrivacyNoiseMultiplierAtWorstLocked(size_t invited) const;
  void StartSecAggLocked(int64_t now);
  // Drives secagg_; true when the round closed or the job failed (state changed).
  bool TickSecAggLocked(int64_t now);
  // Common checks of the SecAgg RPCs; the agent's liveness is refreshed.
  Status SecAggCallLocked(const std::string& agent_id, int64_t round, int64_t now);

  const EngineOptions options_;
  Clock* const clock_;
  CheckpointStore* const checkpoints_;
  AggregatorMetrics* const metrics_;

  mutable std::mutex mu_;
  // TaskEpoch(): bumped when the tuple it summarises changes.
  mutable uint64_t task_epoch_ = 0;                // guarded by mu_
  mutable std::string task_epoch_key_;             // guarded by mu_
  std::unique_ptr<AggregationStrategy> strategy_;  // guarded by mu_
  std::map<std::string, Agent> agents_;            // guarded by mu_
  JobState state_ = JobState::kWaitingForAgents;   // guarded by mu_
  Phase phase_ = Phase::kIdle;                     // guarded by mu_
  int64_t round_ = 1;                              // guarded by mu_; next/current round
  std::shared_ptr<const GlobalModel> global_;      // guarded by mu_
  // SentControlLocked's cache: the strategy's encoded control it last saw and
  // what is sent for it.
  std::shared_ptr<const std::string> control_source_;  // guarded by mu_
  std::shared_ptr<const std::string> control_sent_;    // guarded by mu_
  std::string initializer_;                            // guarded by mu_
  // The layout a majority of the expected agents declared (null until they
  // do); the INITIALIZE upload must have it. Fixed once chosen.
  std::shared_ptr<const TensorBundle> expected_layout_;  // guarded by mu_
  std::string expected_layout_key_;                      // guarded by mu_
  std::set<std::string> failed_initializers_;            // guarded by mu_; uploaded another layout
  int64_t initializer_deadline_ms_ = 0;                  // guarded by mu_
  TrainRound train_;                                     // guarded by mu_
  EvalRound eval_;                                       // guarded by mu_
  // The evaluation of round pending_eval_round_'s global (version
  // pending_eval_version_) collected with the next round's updates; round 0:
  // none pending.
  EvalRound pending_eval_;                        // guarded by mu_
  int64_t pending_eval_round_ = 0;                // guarded by mu_
  int64_t pending_eval_version_ = 0;              // guarded by mu_
  RoundRecord current_;                           // guarded by mu_; the open round
  int64_t round_started_ms_ = 0;                  // guarded by mu_
  std::vector<RoundRecord> history_;              // guarded by mu_
  std::optional<double> final_accuracy_;          // guarded by mu_
  std::optional<int64_t> finished_at_ms_;         // guarded by mu_
  std::string message_;                           // guarded by mu_
  CheckpointHealth checkpoint_;                   // guarded by mu_
  RdpAccountant privacy_;                         // guarded by mu_; options_.dp.enabled
  int64_t privacy_rounds_ = 0;                    // guarded by mu_; rounds composed
  bool privacy_exhausted_ = false;                // guarded by mu_
  std::mt19937_64 noise_rng_;                     // guarded by mu_; DP noise
  std::unique_ptr<secagg::SecAggServer> secagg_;  // guarded by mu_; the open round's
  int secagg_survivors_ = 0;                      // guarded by mu_; of the round aggregated last
  int secagg_advertised_ = 0;                     // guarded by mu_; its key advertisers (m)
};

}  // namespace fedge::aggregator
