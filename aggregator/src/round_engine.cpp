#include "fedge/aggregator/round_engine.h"

#include <algorithm>
#include <cmath>

#include <openssl/rand.h>

#include "fedge/aggregator/fedavg.h"
#include "fedge/aggregator/lora_aggregation.h"
#include "fedge/aggregator/tokens.h"
#include "fedge/log.h"
#include "fedge/quant_kernels.h"

namespace fedge::aggregator {

std::string_view JobStateName(JobState state) {
  switch (state) {
    case JobState::kWaitingForAgents:
      return "WaitingForAgents";
    case JobState::kInitializing:
      return "Initializing";
    case JobState::kRunning:
      return "Running";
    case JobState::kSucceeded:
      return "Succeeded";
    case JobState::kFailed:
      return "Failed";
  }
  return "Unknown";
}

std::string_view PhaseName(Phase phase) {
  switch (phase) {
    case Phase::kIdle:
      return "idle";
    case Phase::kTrain:
      return "train";
    case Phase::kEvaluate:
      return "evaluate";
  }
  return "idle";
}

EngineOptions EngineOptionsFromSpec(const JobSpec& spec, int expected_agents) {
  EngineOptions o;
  o.job = spec.Key();
  o.total_rounds = spec.rounds.total;
  o.expected_agents = expected_agents > 0 ? expected_agents : std::max(1, spec.agents.minAgents);
  o.quorum = spec.rounds.quorum;
  o.fraction = spec.rounds.fraction;
  o.round_timeout_ms = static_cast<int64_t>(spec.rounds.timeoutSeconds) * 1000;
  o.seed = spec.rounds.seed;
  o.train.spec = std::make_shared<const JobSpec>(spec);
  o.strategy = spec.strategy;
  o.max_weight = static_cast<int64_t>(spec.rounds.localSteps) * spec.rounds.batchSize;
  if (spec.strategy.clipNorm == 0 && spec.strategy.maxUpdateNorm == 0) o.auto_clip_margin = kAutoClipMargin;
  o.adapter = spec.adapter;
  // The download's codec (spec.compression.globalCodec); the table allows fp32,
  // fp16 and bf16 only, and the default stays fp32 if a name is unknown here.
  if (auto codec = ParseCodec(spec.compression.globalCodec); codec.ok()) o.global_encoding.codec = *codec;
  o.over_selection = spec.rounds.overSelection;
  o.async = spec.rounds.mode == "async";
  o.async_buffer_size = spec.rounds.asyncBufferSize;
  o.staleness_exponent = spec.rounds.stalenessExponent;
  o.max_staleness = spec.rounds.maxStaleness;
  if (const DifferentialPrivacySpec& dp = spec.privacy.differentialPrivacy; dp.enabled) {
    o.dp.enabled = true;
    o.dp.clip_norm = dp.clipNorm;
    o.dp.noise_multiplier = dp.noiseMultiplier;
    o.dp.target_epsilon = dp.targetEpsilon;
    o.dp.delta = dp.delta;
    o.dp.distributed = dp.mode == "distributed";
  }
  o.secagg.enabled = spec.privacy.secureAggregation.enabled;
  o.secagg.threshold = spec.privacy.secureAggregation.threshold;
  o.secagg.neighbours = spec.privacy.secureAggregation.neighbours;
  return o;
}

namespace {

// Elements of `layout` by its shapes (a declared layout has no values).
int64_t ShapeElements(const TensorBundle& layout) {
  int64_t n = 0;
  for (const NamedTensor& t : layout.tensors) n += std::max<int64_t>(t.NumElements(), 0);
  return n;
}

// What ReportMetrics and an update's evaluation must satisfy.
Status CheckEvaluationValues(const EvalReport& report) {
  // 0 examples: the agent has no held-out data; it answered, with no weight.
  if (report.num_examples < 0) {
    return InvalidArgumentError("num_examples must be >= 0, got " + std::to_string(report.num_examples));
  }
  if (report.accuracy && !(*report.accuracy >= 0 && *report.accuracy <= 1)) {
    return InvalidArgumentError("accuracy must be in [0, 1], got " + std::to_string(*report.accuracy));
  }
  if (report.loss && !std::isfinite(*report.loss)) return InvalidArgumentError("loss must be finite");
  return OkStatus();
}

}  // namespace

std::string LayoutKey(const TensorBundle& layout) {
  std::vector<std::string> entries;
  entries.reserve(layout.tensors.size());
  for (const NamedTensor& t : layout.tensors) {
    std::string e = t.name + ":";
    for (size_t i = 0; i < t.shape.size(); ++i) e += (i ? "x" : "") + std::to_string(t.shape[i]);
    entries.push_back(std::move(e));
  }
  std::sort(entries.begin(), entries.end());
  std::string key;
  for (const std::string& e : entries) key += e + "\n";
  return key;
}

// L2Norm over the vectorised SumSquares (same value up to summation order);
// not finite when a value is not.
double FastL2Norm(const TensorBundle& bundle) {
  double sum = 0;
  for (const NamedTensor& t : bundle.tensors) sum += SumSquares(t.values.data(), t.values.size());
  return std::sqrt(sum);
}

double AutoClipNorm(const EngineOptions& options, int64_t elements) {
  if (!(options.auto_clip_margin > 0) || elements <= 0 || !options.train.spec) return 0;
  const RoundsSpec& rounds = options.train.spec->rounds;
  return options.auto_clip_margin * rounds.learningRate *
         static_cast<double>(std::max(1, rounds.localSteps)) * std::sqrt(static_cast<double>(elements));
}

StatusOr<std::unique_ptr<RoundEngine>> RoundEngine::Create(EngineOptions options, Clock* clock,
                                                           CheckpointStore* checkpoints,
                                                           AggregatorMetrics* metrics) {
  if (!options.train.spec) {
    return InvalidArgumentError(
        "no job spec in the engine options (train.spec); build them with EngineOptionsFromSpec");
  }
  if (options.total_rounds < 1) return InvalidArgumentError("total rounds must be >= 1");
  if (options.expected_agents < 1) return InvalidArgumentError("expected agents must be >= 1");
  if (options.quorum < 0) return InvalidArgumentError("quorum must be >= 0");
  if (!(options.fraction > 0 && options.fraction <= 1)) {
    return InvalidArgumentError("fraction must be in (0, 1]");
  }
  if (options.round_timeout_ms <= 0) return InvalidArgumentError("round timeout must be > 0");
  if (!(options.over_selection >= 1)) return InvalidArgumentError("over-selection must be >= 1");
  if (options.async_buffer_size < 1) return InvalidArgumentError("async buffer size must be >= 1");
  if (!(options.staleness_exponent >= 0)) return InvalidArgumentError("staleness exponent must be >= 0");
  if (options.max_staleness < 0) return InvalidArgumentError("max staleness must be >= 0");
  if (options.max_weight < 0) return InvalidArgumentError("max weight must be >= 0");
  if (!(options.auto_clip_margin >= 0)) return InvalidArgumentError("auto clip margin must be >= 0");
  if (options.agent_liveness_ms <= 0) options.agent_liveness_ms = options.round_timeout_ms + 60'000;
  if (const DpOptions& dp = options.dp; dp.enabled) {
    const std::string p = "spec.privacy.differentialPrivacy";
    if (!(dp.clip_norm > 0) || !std::isfinite(dp.clip_norm))
      return InvalidArgumentError(p + ".clipNorm must be > 0");
    if (!(dp.noise_multiplier > 0) || !std::isfinite(dp.noise_multiplier))
      return InvalidArgumentError(p + ".noiseMultiplier must be > 0");
    if (!(dp.delta > 0 && dp.delta < 1)) return InvalidArgumentError(p + ".delta must be in (0, 1)");
    if (!(dp.target_epsilon >= 0)) return InvalidArgumentError(p + ".targetEpsilon must be >= 0");
    // The noise calibration holds for a sum of the clipped updates only.
    if (options.strategy.name != "fedavg" && options.strategy.name != "fedprox") {
      return InvalidArgumentError(p +
                                  " needs spec.strategy.name fedavg or fedprox (a linear mean of the "
                                  "updates); got " +
                                  options.strategy.name);
    }
    if (options.adapter.aggregation == "product") {
      return InvalidArgumentError(p +
                                  " needs spec.adapter.aggregation factors or frozen-a: product "
                                  "re-factors the updates (not a sum)");
    }
    if (options.async) return InvalidArgumentError(p + " needs synchronous rounds (spec.rounds.mode: sync)");
  }
  FEDGE_RETURN_IF_ERROR(CheckSecAggOptions(options));
  FEDGE_ASSIGN_OR_RETURN(auto strategy, MakeStrategy(options.strategy, options.adapter));
  return std::unique_ptr<RoundEngine>(
      new RoundEngine(std::move(options), clock, checkpoints, metrics, std::move(strategy)));
}

RoundEngine::RoundEngine(EngineOptions options, Clock* clock, CheckpointStore* checkpoints,
                         AggregatorMetrics* metrics, std::unique_ptr<AggregationStrategy> strategy)
    : options_(std::move(options)),
      clock_(clock),
      checkpoints_(checkpoints),
      metrics_(metrics),
      strategy_(std::move(strategy)) {
  uint64_t seed = options_.dp.noise_seed;
  if (options_.dp.enabled && seed == 0 &&
      RAND_bytes(reinterpret_cast<unsigned char*>(&seed), sizeof(seed)) != 1) {
    log::Error("RAND_bytes failed: cannot seed the privacy noise; aborting");
    std::abort();
  }
  noise_rng_.seed(seed);
}

Status RoundEngine::Restore(CheckpointData data) {
  std::lock_guard<std::mutex> lock(mu_);
  if (data.job != options_.job) {
    return FailedPreconditionError("checkpoint belongs to job \"" + data.job + "\", not \"" + options_.job +
                                   "\": use another --checkpoint-dir");
  }
  if (data.total_rounds != options_.total_rounds) {
    log::Warn("checkpoint was written for a different number of rounds; using the spec's",
              {{"checkpoint_total", data.total_rounds}, {"spec_total", options_.total_rounds}});
  }
  FEDGE_RETURN_IF_ERROR(PublishGlobalLocked(std::move(data.global), data.global_version)
                            .WithContext("restoring the checkpointed global"));
  if (!data.global_checksum.empty() && data.global_checksum != global_->checksum) {
    // The checksum covers the encoded bytes; a different zstd build may encode
    // the same values differently. Agents get the new checksum with each task.
    log::Info("re-encoded global has a new checksum",
              {{"old", data.global_checksum}, {"new", global_->checksum}});
  }
  FEDGE_RETURN_IF_ERROR(
      strategy_->RestoreState(data.strategy_state)
          .WithContext("restoring the checkpointed " + std::string(strategy_->name()) + " state"));
  if (options_.dp.enabled) {
    if (data.privacy_rdp.empty() && data.completed_round > 0) {
      return FailedPreconditionError(
          "the checkpoint has no privacy ledger but differential privacy is on: the " +
          std::to_string(data.completed_round) +
          " completed rounds cannot be accounted for; start the job with a new --checkpoint-dir");
    }
    if (!data.privacy_rdp.empty()) {
      FEDGE_RETURN_IF_ERROR(privacy_.Restore(data.privacy_rdp).WithContext("restoring the privacy ledger"));
    }
    privacy_rounds_ = data.privacy_rounds;
  }
  history_ = std::move(data.history);
  final_accuracy_ = data.final_accuracy;
  round_ = data.completed_round + 1;
  checkpoint_.saved_round = data.completed_round;
  checkpoint_.saved_version = data.global_version;
  phase_ = Phase::kIdle;
  const int64_t now = clock_->NowUnixMs();
  if (round_ > options_.total_rounds) {
    state_ = JobState::kSucceeded;
    finished_at_ms_ = now;
  } else {
    state_ = JobState::kWaitingForAgents;
    // The last completed round has no evaluation (it was to come with the next
    // round's updates, or the aggregator died in its phase): the next round's
    // agents that can evaluate before training are asked for it.
    if (!history_.empty() && history_.back().round == data.completed_round &&
        history_.back().evaluators == 0 && options_.evaluate_with_next_round && !options_.async &&
        !options_.secagg.enabled && !options_.dp.enabled) {
      pending_eval_ = EvalRound{};
      pending_eval_round_ = data.completed_round;
      pending_eval_version_ = global_->version;
    }
  }
  log::Info("resumed from checkpoint", {{"completed_round", data.completed_round},
                                        {"next_round", round_},
                                        {"global_version", global_->version},
                                        {"state", JobStateName(state_)}});
  return OkStatus();
}

Status RoundEngine::ServeFinal() {
  std::lock_guard<std::mutex> lock(mu_);
  if (!global_) {
    return FailedPreconditionError("no global model to serve: restore the job's checkpoint first");
  }
  pending_eval_ = EvalRound{};
  pending_eval_round_ = 0;
  phase_ = Phase::kIdle;
  state_ = JobState::kSucceeded;
  finished_at_ms_ = clock_->NowUnixMs();
  message_ =
      "the job finished; serving global version " + std::to_string(global_->version) + " to agents that join";
  log::Info("serving the final global model",
            {{"global_version", global_->version}, {"completed_round", checkpoint_.saved_round}});
  return OkStatus();
}

std::string RoundEngine::Join(const std::string& agent_id, const AgentInfo& info) {
  std::lock_guard<std::mutex> lock(mu_);
  const int64_t now = clock_->NowUnixMs();
  bool rejoin = agents_.count(agent_id) > 0;
  Agent& agent = agents_[agent_id];
  agent.session = NewSessionId();
  agent.node_name = info.node_name;
  agent.num_train_examples = std::max<int64_t>(0, info.num_train_examples);
  agent.num_eval_examples = std::max<int64_t>(0, info.num_eval_examples);
  if (info.layout.tensors.empty()) {
    agent.layout.reset();
    agent.layout_key.clear();
  } else {
    auto layout = std::make_shared<TensorBundle>();
    for (const NamedTensor& t : info.layout.tensors)
      layout->tensors.push_back(NamedTensor{t.name, t.shape, {}});
    agent.layout_key = LayoutKey(*layout);
    agent.layout = std::move(layout);
  }
  agent.evaluates_before_training = info.evaluates_before_training;
  agent.last_seen_ms = now;
  agent.got_done = false;
  if (metrics_) metrics_->SetAgentsJoined(static_cast<int64_t>(agents_.size()));
  log::Info(rejoin ? "agent rejoined" : "agent joined", {{"agent", agent_id},
                                                         {"node", info.node_name},
                                                         {"num_train_examples", agent.num_train_examples},
                                                         {"num_eval_examples", agent.num_eval_examples},
                                                         {"agents_joined", agents_.size()}});
  TickLocked(now);
  return agent.session;
}

Status RoundEngine::CheckSession(const std::string& agent_id, const std::string& session) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = agents_.find(agent_id);
  if (it == agents_.end() || session.empty() || !TokenMatches(it->second.session, session)) {
    return UnauthenticatedError("unknown session for agent \"" + agent_id +
                                "\" (the aggregator restarted, or the agent joined again elsewhere): "
                                "rejoin by calling Join");
  }
  return OkStatus();
}

bool RoundEngine::IsJoined(const std::string& agent_id) const {
  std::lock_guard<std::mutex> lock(mu_);
  return agents_.count(agent_id) > 0;
}

bool RoundEngine::AcceptsUpdatesFor(int64_t round) const {
  std::lock_guard<std::mutex> lock(mu_);
  // Round 0 is the initial state one agent uploads while the job initializes.
  if (state_ == JobState::kInitializing) return round == 0;
  if (state_ != JobState::kRunning || phase_ != Phase::kTrain) return false;
  return options_.async ? round <= round_ : round == round_;
}

TaskInfo RoundEngine::WaitTask(std::string message) const {
  TaskInfo t;
  t.kind = TaskKind::kWait;
  t.retry_after_ms = options_.retry_after_ms;
  t.message = std::move(message);
  if (global_) {
    t.global_version = global_->version;
    t.global_checksum = global_->checksum;
  }
  return t;
}

uint64_t RoundEngine::TaskEpoch() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::string key = std::to_string(static_cast<int>(state_)) + "/" +
                    std::to_string(static_cast<int>(phase_)) + "/" + std::to_string(round_) + "/" +
                    std::to_string(global_ ? global_->version : 0) + "/" + initializer_;
  // A secure-aggregation round moves through its own phases, and restarts (same round,
  // new invitations) inside phase kTrain: both can turn a WAIT into a TRAIN.
  if (secagg_) key += "/sa" + std::to_string(static_cast<int>(secagg_->phase()));
  key += "/x" + std::to_string(train_.extensions);
  if (key != task_epoch_key_) {
    task_epoch_key_ = std::move(key);
    ++task_epoch_;
  }
  return task_epoch_;
}

TaskInfo RoundEngine::GetTask(const std::string& agent_id, int64_t held_version) {
  std::lock_guard<std::mutex> lock(mu_);
  const int64_t now = clock_->NowUnixMs();
  auto it = agents_.find(agent_id);
  if (it == agents_.end()) return WaitTask("unknown agent: rejoin");
  Agent& agent = it->second;
  agent.last_seen_ms = now;
  TickLocked(now);

  switch (state_) {
    case JobState::kSucceeded: {
      agent.got_done = true;
      TaskInfo t;
      t.kind = TaskKind::kDone;
      t.round = static_cast<int64_t>(history_.size());
      t.global_version = global_->version;
      t.global_checksum = global_->checksum;
      t.message = "the job succeeded; serve global version " + std::to_string(global_->version);
      return t;
    }
    case JobState::kFailed: {
      TaskInfo t = WaitTask("the job failed: " + message_);
      t.retry_after_ms = std::max(options_.retry_after_ms, 5000);
      return t;
    }
    case JobState::kWaitingForAgents:
      return WaitTask(message_);
    case JobState::kInitializing: {
      if (initializer_.empty()) {
        // Only an agent that declared the agreed layout, and has not already
        // uploaded something else, may provide the initial state.
        if (agent.layout_key != expected_layout_key_) {
          return WaitTask(
              "your trainable layout (Join capabilities.trainable_layout) differs from the one " +
              std::string("the majority of agents declared; another agent initializes the model"));
        }
        if (failed_initializers_.count(agent_id)) {
          return WaitTask("your initial state did not have the declared layout; another agent initializes");
        }
        initializer_ = agent_id;
        initializer_deadline_ms_ = now + options_.round_timeout_ms;
        log::Info("asked agent to initialize the global model", {{"agent", agent_id}});
      }
      if (initializer_ != agent_id)
        return WaitTask("agent " + initializer_ + " is uploading the initial model");
      TaskInfo t;
      t.kind = TaskKind::kInitialize;
      t.round = 0;
      t.deadline_unix_ms = initializer_deadline_ms_;
      t.config = options_.train;
      t.message = "upload your initial trainable state (round 0, is_delta=false)";
      return t;
    }
    case JobState::kRunning:
      break;
  }

  TaskInfo t;
  t.round = round_;
  t.global_version = global_->version;
  t.global_checksum = global_->checksum;
  t.config = options_.train;
  const RoundsSpec& rounds = options_.train.spec->rounds;
  t.config.learning_rate = static_cast<float>(
      ScheduledLearningRate(rounds.learningRate, rounds.learningRateSchedule, round_, options_.total_rounds));
  t.config.scaffold_control = SentControlLocked();
  if (options_.secagg.enabled) {
    t.config.secure_aggregation = true;
    t.config.secagg_clip_norm = SecAggClipNormLocked();
    t.config.secagg_max_weight = options_.dp.enabled ? 0 : options_.max_weight;  // DP: every weight 1
  }
  if (phase_ == Phase::kTrain && options_.async) {
    if (agent.last_base_version >= global_->version) {
      return WaitTask("your update on global version " + std::to_string(global_->version) + " is buffered (" +
                      std::to_string(train_.answered.size()) + " of " +
                      std::to_string(options_.async_buffer_size) + "); wait for the next version");
    }
    t.kind = TaskKind::kTrain;
    t.deadline_unix_ms = now + options_.round_timeout_ms;
    return t;
  }
  if (phase_ == Phase::kTrain) {
    if (!train_.invited.count(agent_id)) {
      return WaitTask("not selected for round " + std::to_string(round_));
    }
    if (secagg_ && secagg_->Advertised(agent_id)) {
      return WaitTask("secure aggregation of round " + std::to_string(round_) + " is in progress");
    }
    if (train_.answered.count(agent_id)) {
      return WaitTask("update for round " + std::to_string(round_) + " received; waiting for " +
                      std::to_string(train_.target - std::min(train_.target, train_.answered.size())) +
                      " more");
    }
    t.kind = TaskKind::kTrain;
    t.deadline_unix_ms = train_.deadline_ms;
    t.evaluate_global = pending_eval_round_ > 0 && pending_eval_version_ == global_->version &&
                        agent.evaluates_before_training && !pending_eval_.reported.count(agent_id);
    return t;
  }
  if (phase_ == Phase::kEvaluate) {
    if (!eval_.asked.count(agent_id) || eval_.reported.count(agent_id)) {
      return WaitTask("evaluation of round " + std::to_string(round_) + " in progress");
    }
    t.kind = TaskKind::kEvaluate;
    t.deadline_unix_ms = eval_.deadline_ms;
    return t;
  }
  (void)held_version;  // Delta downloads from the held version come with a later protocol revision.
  return WaitTask(message_);
}

UpdateVerdict RoundEngine::RejectLocked(const UpdateMeta& meta, std::string_view label, std::string reason) {
  if (metrics_) metrics_->UpdateRejected(label);
  log::Warn("update rejected", {{"agent", meta.agent_id}, {"round", meta.round}, {"reason", reason}});
  UpdateVerdict v;
  v.accepted = false;
  v.reason = std::move(reason);
  v.reason_label = std::string(label);
  v.round = meta.round;
  return v;
}

UpdateVerdict RoundEngine::ValidateLocked(const UpdateMeta& meta, const TensorBundle& bundle, double* norm) {
  if (Status s = CheckSameLayout(global_->bundle, bundle); !s.ok()) {
    return RejectLocked(
        meta, "layout",
        "update layout differs from global version " + std::to_string(global_->version) + ": " + s.message());
  }
  // One vectorised pass gives the norm and finiteness (a sum of squares of
  // finite floats cannot overflow a double); it used to be three passes.
  *norm = FastL2Norm(bundle);
  if (!std::isfinite(*norm)) {
    Status s = CheckFinite(bundle);  // names the offending value
    return RejectLocked(meta, "non_finite",
                        s.ok() ? std::string("the update's norm is not finite") : s.message());
  }
  if (Status s = CheckNormBound(*norm, options_.strategy.maxUpdateNorm); !s.ok()) {
    return RejectLocked(meta, "norm_bound", s.message());
  }
  return UpdateVerdict{};
}

int64_t RoundEngine::BoundedWeightLocked(const std::string& agent_id, std::string_view kind, int64_t claimed,
                                         int64_t declared) {
  int64_t weight = std::min(claimed, declared);
  if (options_.max_weight > 0) weight = std::min(weight, options_.max_weight);
  if (weight == claimed) return weight;
  // Above the Join declaration is suspicious; above the cap is what a large
  // honest dataset looks like.
  const bool above_join = claimed > declared;
  if (metrics_) metrics_->WeightClamped(kind, above_join ? "above_join" : "above_cap");
  const log::Fields fields = {{"agent", agent_id},          {"kind", kind},
                              {"claimed", claimed},         {"declared_at_join", declared},
                              {"cap", options_.max_weight}, {"weight", weight}};
  if (above_join) {
    log::Warn("weight clamped: the agent claims more examples than it declared at Join", fields);
  } else {
    log::Debug("weight clamped to the per-round cap (localSteps x batchSize)", fields);
  }
  return weight;
}

UpdateVerdict RoundEngine::AddLocked(const UpdateMeta& meta, const TensorBundle& bundle, double norm) {
  auto agent = agents_.find(meta.agent_id);
  const int64_t declared = agent == agents_.end() ? 0 : agent->second.num_train_examples;
  // A self-reported count is never taken at its word (issue 10, item 4).
  const int64_t weight = BoundedWeightLocked(meta.agent_id, "update", meta.num_examples, declared);
  // An agent without training data answers with weight 0: it counts as an
  // answer (the round need not wait for it) but moves nothing.
  if (weight > 0) {
    if (strategy_->NeedsAllUpdates() && strategy_->MaxUpdates() > 0 &&
        strategy_->count() >= strategy_->MaxUpdates()) {
      return RejectLocked(meta, "capacity",
                          "strategy " + std::string(strategy_->name()) +
                              " holds every update and already has " + std::to_string(strategy_->count()) +
                              " for round " + std::to_string(round_) + " (spec.strategy.maxBufferedUpdates)");
    }
    const double bound =
        options_.dp.enabled ? options_.dp.clip_norm : AutoClipNorm(options_, global_->bundle.NumElements());
    // DP: every update counts once, however many examples it saw (the sum's sensitivity).
    const int64_t counted = options_.dp.enabled ? 1 : weight;
    Status added;
    if (bound > 0 && norm > bound) {
      TensorBundle clipped = bundle;
      const double scale = bound / norm;
      for (NamedTensor& t : clipped.tensors) {
        for (float& x : t.values) x = static_cast<float>(static_cast<double>(x) * scale);
      }
      if (metrics_) metrics_->UpdateClipped();
      log::Info(options_.dp.enabled ? "update clipped to the privacy clip norm"
                                    : "update clipped to the default norm bound",
                {{"agent", meta.agent_id}, {"round", meta.round}, {"norm", norm}, {"bound", bound}});
      added = strategy_->Add(clipped, counted);
    } else {
      added = strategy_->Add(bundle, counted);
    }
    if (!added.ok()) return RejectLocked(meta, "invalid", added.message());
  }
  train_.answered.insert(meta.agent_id);
  if (std::isfinite(meta.train_loss)) {
    train_.train_loss_sum += static_cast<double>(weight) * meta.train_loss;
    train_.examples += static_cast<double>(weight);
  }
  current_.bytes_up += meta.encoded_bytes;
  current_.raw_bytes_up += meta.raw_bytes;
  if (meta.feedback_examples > 0) {
    // Informational only; bounded so a lying agent cannot bloat the record.
    current_.feedback_examples[meta.agent_id] =
        std::min(meta.feedback_examples, kMaxReportedFeedbackExamples);
  }
  if (metrics_) metrics_->UpdateAccepted(meta.encoded_bytes, meta.raw_bytes);
  UpdateVerdict v;
  v.accepted = true;
  v.round = meta.round;
  return v;
}

std::string RoundEngine::CloseDetailLocked(int64_t round) const {
  const RoundRecord* record = nullptr;
  if (current_.round == round && !current_.close_reason.empty()) record = &current_;
  for (const RoundRecord& r : history_) {
    if (r.round == round) record = &r;
  }
  if (!record) return "";
  return " (" + record->close_reason + ", " + std::to_string(record->participants) + " updates)";
}

UpdateVerdict RoundEngine::CheckUpdateHeader(const UpdateMeta& meta) {
  std::lock_guard<std::mutex> lock(mu_);
  const int64_t now = clock_->NowUnixMs();
  TickLocked(now);
  return PrecheckLocked(meta);
}

std::shared_ptr<const TensorBundle> RoundEngine::ExpectedLayout(const UpdateMeta& meta) const {
  std::lock_guard<std::mutex> lock(mu_);
  if (meta.round == 0 || !meta.is_delta) return global_ ? nullptr : expected_layout_;
  if (!global_) return nullptr;
  // Aliases the published model: it stays alive as long as the caller holds this.
  return std::shared_ptr<const TensorBundle>(global_, &global_->bundle);
}

UpdateVerdict RoundEngine::PrecheckLocked(const UpdateMeta& meta) {
  const std::string r = std::to_string(meta.round);
  auto agent_it = agents_.find(meta.agent_id);
  if (agent_it == agents_.end()) {
    return RejectLocked(meta, "unknown_agent",
                        "agent \"" + meta.agent_id + "\" has not joined this job: call Join first");
  }
  const Agent& agent = agent_it->second;
  if (state_ == JobState::kSucceeded || state_ == JobState::kFailed) {
    return RejectLocked(meta, "round_closed", "round " + r + " is closed: the job has finished");
  }
  if (meta.round == 0 || !meta.is_delta) {
    if (global_) {
      return RejectLocked(meta, "already_initialized",
                          "the global model is already initialized (version " +
                              std::to_string(global_->version) + "); ask for a task");
    }
    if (meta.round != 0 || meta.is_delta) {
      return RejectLocked(meta, "bad_request",
                          "an INITIALIZE upload is a full state with round 0 and is_delta=false");
    }
    if (state_ != JobState::kInitializing || initializer_ != meta.agent_id) {
      return RejectLocked(meta, "not_initializer",
                          "agent " + meta.agent_id + " was not asked to initialize; ask for a task");
    }
    return UpdateVerdict{};
  }
  if (!global_) {
    return RejectLocked(meta, "not_initialized", "the global model is not initialized yet; ask for a task");
  }
  if (options_.secagg.enabled) {
    return RejectLocked(
        meta, "secure_aggregation",
        "this job uses secure aggregation: updates go masked through SecAggSubmitMasked, never "
        "in clear (spec.privacy.secureAggregation; update the agent)");
  }
  if (meta.num_examples < 0) {
    return RejectLocked(meta, "bad_request",
                        "num_examples must be >= 0, got " + std::to_string(meta.num_examples));
  }
  if (meta.evaluation) {
    if (Status s = CheckEvaluationValues(*meta.evaluation); !s.ok()) {
      return RejectLocked(meta, "bad_request", "the update's evaluation: " + s.message());
    }
  }
  if (options_.async) {
    if (phase_ == Phase::kEvaluate) {
      return RejectLocked(meta, "round_closed",
                          "the last asynchronous round has closed (evaluating global version " +
                              std::to_string(global_->version) + "); ask for a task");
    }
    if (phase_ != Phase::kTrain) {
      return RejectLocked(meta, "round_not_open", "no round is open (" + message_ + "); ask for a task");
    }
    if (meta.round > round_) {
      return RejectLocked(meta, "round_not_open",
                          "round " + r + " has not started (the open round is " + std::to_string(round_) +
                              "); ask for a task");
    }
    if (meta.base_version < 1 || meta.base_version > global_->version) {
      return RejectLocked(meta, "stale_base",
                          "base version " + std::to_string(meta.base_version) +
                              " was never published (current version " + std::to_string(global_->version) +
                              "); fetch the global and train again");
    }
    if (meta.base_version <= agent.last_base_version) {
      return RejectLocked(meta, "replay",
                          "agent " + meta.agent_id + " already contributed an update trained on version " +
                              std::to_string(agent.last_base_version) +
                              " (a replay or resend); fetch the current global and train again");
    }
    const int64_t staleness = global_->version - meta.base_version;
    if (options_.max_staleness > 0 && staleness > options_.max_staleness) {
      return RejectLocked(meta, "too_stale",
                          "update trained on version " + std::to_string(meta.base_version) + " is " +
                              std::to_string(staleness) + " versions stale (spec.rounds.maxStaleness " +
                              std::to_string(options_.max_staleness) + "); fetch the current global");
    }
    return UpdateVerdict{};
  }
  if (meta.round < round_ || (meta.round == round_ && phase_ == Phase::kEvaluate)) {
    if (agent.last_accepted_round >= meta.round) {
      return RejectLocked(meta, "replay",
                          "round " + r + " already counted an update from agent " + meta.agent_id +
                              " (a replay or resend of an old round); ask for a task");
    }
    return RejectLocked(meta, "round_closed",
                        "round " + r + " is closed" + CloseDetailLocked(meta.round) +
                            ": this update arrived late; ask for a task");
  }
  if (meta.round > round_ || phase_ != Phase::kTrain) {
    return RejectLocked(
        meta, "round_not_open",
        "round " + r + " has not started (next round is " + std::to_string(round_) + "); ask for a task");
  }
  if (!train_.invited.count(meta.agent_id)) {
    return RejectLocked(meta, "not_participant",
                        "agent " + meta.agent_id + " is not a participant of round " + r);
  }
  if (train_.answered.count(meta.agent_id)) {
    return RejectLocked(
        meta, "duplicate",
        "an update from agent " + meta.agent_id + " for round " + r + " was already accepted");
  }
  if (meta.base_version != global_->version) {
    return RejectLocked(meta, "stale_base",
                        "stale base version " + std::to_string(meta.base_version) + ": round " + r +
                            " trains on global version " + std::to_string(global_->version) +
                            "; fetch it and train again");
  }
  return UpdateVerdict{};
}

UpdateVerdict RoundEngine::SubmitUpdate(const UpdateMeta& meta, const TensorBundle& bundle) {
  std::lock_guard<std::mutex> lock(mu_);
  const int64_t now = clock_->NowUnixMs();
  auto agent_it = agents_.find(meta.agent_id);
  if (agent_it != agents_.end()) agent_it->second.last_seen_ms = now;
  TickLocked(now);
  // The header checks again: the state may have moved while the body arrived.
  if (UpdateVerdict v = PrecheckLocked(meta); !v.reason_label.empty()) return v;
  Agent& agent = agent_it->second;
  if (meta.round == 0 || !meta.is_delta) return SubmitInitialLocked(meta, bundle, now);
  if (options_.async) return SubmitAsyncLocked(meta, bundle, agent, now);
  double norm = 0;
  if (UpdateVerdict v = ValidateLocked(meta, bundle, &norm); !v.reason_label.empty()) return v;
  UpdateVerdict v = AddLocked(meta, bundle, norm);
  if (!v.accepted) return v;
  agent.last_accepted_round = meta.round;
  if (meta.evaluation) {
    // Round pending_eval_round_'s global, asked for by this round's TRAIN task.
    // Another version (an agent that evaluated something else) is not counted.
    if (pending_eval_round_ > 0 && meta.evaluation->global_version == pending_eval_version_ &&
        !pending_eval_.reported.count(meta.agent_id)) {
      EvalReport report = *meta.evaluation;
      report.agent_id = meta.agent_id;
      report.round = pending_eval_round_;
      FoldEvaluationLocked(&pending_eval_, report);
    } else {
      log::Warn("evaluation with the update not counted: no evaluation of that version is pending",
                {{"agent", meta.agent_id},
                 {"global_version", meta.evaluation->global_version},
                 {"pending_version", pending_eval_round_ > 0 ? pending_eval_version_ : 0}});
    }
  }
  log::Info("update accepted", {{"agent", meta.agent_id},
                                {"round", meta.round},
                                {"num_examples", meta.num_examples},
                                {"norm", norm},
                                {"bytes", meta.encoded_bytes},
                                {"answered", train_.answered.size()},
                                {"target", train_.target},
                                {"invited", train_.invited.size()}});
  TickLocked(now);
  return v;
}

UpdateVerdict RoundEngine::SubmitAsyncLocked(const UpdateMeta& meta, const TensorBundle& bundle, Agent& agent,
                                             int64_t now) {
  // PrecheckLocked has checked phase, round, base version, replay and staleness.
  const int64_t staleness = global_->version - meta.base_version;
  double norm = 0;
  if (UpdateVerdict v = ValidateLocked(meta, bundle, &norm); !v.reason_label.empty()) return v;
  // FedBuff: a stale delta was computed against an older model; it still
  // points somewhere useful, but with less authority.
  const double weight = std::pow(1.0 + static_cast<double>(staleness), -options_.staleness_exponent);
  UpdateVerdict v;
  if (staleness > 0 && weight != 1.0) {
    TensorBundle scaled = bundle;
    for (NamedTensor& t : scaled.tensors) {
      for (float& x : t.values) x = static_cast<float>(static_cast<double>(x) * weight);
    }
    v = AddLocked(meta, scaled, FastL2Norm(scaled));
  } else {
    v = AddLocked(meta, bundle, norm);
  }
  if (!v.accepted) return v;
  agent.last_base_version = meta.base_version;
  train_.staleness_sum += static_cast<double>(staleness);
  log::Info("async update buffered", {{"agent", meta.agent_id},
                                      {"round", round_},
                                      {"base_version", meta.base_version},
                                      {"staleness", staleness},
                                      {"weight", weight},
                                      {"buffered", train_.answered.size()},
                                      {"buffer_size", options_.async_buffer_size}});
  v.round = round_;
  TickLocked(now);
  return v;
}

UpdateVerdict RoundEngine::SubmitInitialLocked(const UpdateMeta& meta, const TensorBundle& bundle,
                                               int64_t now) {
  auto reject = [&](std::string_view label, std::string reason) {
    if (metrics_) metrics_->UpdateRejected(label);
    log::Warn("initial upload rejected", {{"agent", meta.agent_id}, {"reason", reason}});
    UpdateVerdict v;
    v.reason = std::move(reason);
    v.reason_label = std::string(label);
    v.round = meta.round;
    return v;
  };
  // PrecheckLocked has checked the state, the round and the initializer.
  if (bundle.tensors.empty()) return reject("bad_request", "the initial state has no tensors");
  if (!expected_layout_)
    return reject("layout", "no trainable layout has been agreed on yet; ask for a task");
  if (Status s = CheckSameLayout(*expected_layout_, bundle); !s.ok()) {
    InitializerFailedLocked(meta.agent_id, s.message());
    return reject("layout",
                  "the initial state does not have the trainable layout the majority of agents "
                  "declared at Join: " +
                      s.message());
  }
  if (Status s = CheckFinite(bundle); !s.ok()) return reject("non_finite", s.message());
  if (Status s = CheckLoraLayout(bundle, options_.adapter); !s.ok()) return reject("layout", s.message());
  if (Status s = PublishGlobalLocked(bundle, 1); !s.ok()) return reject("invalid", s.message());
  if (metrics_) metrics_->UpdateAccepted(meta.encoded_bytes, meta.raw_bytes);
  initializer_.clear();
  state_ = JobState::kRunning;
  phase_ = Phase::kIdle;
  round_ = 1;
  log::Info("global model initialized", {{"agent", meta.agent_id},
                                         {"tensors", bundle.tensors.size()},
                                         {"elements", bundle.NumElements()},
                                         {"checksum", global_->checksum}});
  SaveCheckpointLocked(/*completed_round=*/0);
  TickLocked(now);
  UpdateVerdict v;
  v.accepted = true;
  v.round = 0;
  return v;
}

Status RoundEngine::ReportEvaluation(const EvalReport& report) {
  std::lock_guard<std::mutex> lock(mu_);
  const int64_t now = clock_->NowUnixMs();
  if (auto it = agents_.find(report.agent_id); it != agents_.end()) it->second.last_seen_ms = now;
  TickLocked(now);
  if (state_ != JobState::kRunning || phase_ != Phase::kEvaluate || report.round != round_ || !global_ ||
      report.global_version != global_->version) {
    return FailedPreconditionError("no evaluation of round " + std::to_string(report.round) + " (version " +
                                   std::to_string(report.global_version) +
                                   ") is open; the aggregator is at round " + std::to_string(round_) +
                                   ", phase " + std::string(PhaseName(phase_)) + ": ask for a task");
  }
  if (!eval_.asked.count(report.agent_id)) {
    return FailedPreconditionError("agent " + report.agent_id + " was not asked to evaluate round " +
                                   std::to_string(round_));
  }
  if (eval_.reported.count(report.agent_id)) {
    return AlreadyExistsError("agent " + report.agent_id + " already reported round " +
                              std::to_string(round_));
  }
  FEDGE_RETURN_IF_ERROR(CheckEvaluationValues(report));
  FoldEvaluationLocked(&eval_, report);
  TickLocked(now);
  return OkStatus();
}

void RoundEngine::FoldEvaluationLocked(EvalRound* eval, const EvalReport& report) {
  // The same bound as update weights: one agent cannot outvote the others'
  // held-out sets by claiming a huge one.
  auto agent = agents_.find(report.agent_id);
  const int64_t weight = BoundedWeightLocked(report.agent_id, "evaluation", report.num_examples,
                                             agent == agents_.end() ? 0 : agent->second.num_eval_examples);
  const double n = static_cast<double>(weight);
  if (report.accuracy) {
    eval->correct += *report.accuracy * n;
    eval->acc_examples += weight;
  }
  if (report.loss) {
    eval->loss_sum += *report.loss * n;
    eval->loss_examples += weight;
  }
  eval->reported.insert(report.agent_id);
  log::Info("evaluation reported", {{"agent", report.agent_id},
                                    {"round", report.round},
                                    {"num_examples", report.num_examples},
                                    {"weight", weight},
                                    {"accuracy", report.accuracy.value_or(NAN)},
                                    {"loss", report.loss.value_or(NAN)},
                                    {"with_update", eval != &eval_}});
}

bool RoundEngine::DefersEvaluationLocked(int64_t now) const {
  if (!options_.evaluate_with_next_round || options_.async || options_.secagg.enabled || options_.dp.enabled)
    return false;
  // The last round's evaluation is the job's result: it has no next round.
  if (round_ >= options_.total_rounds) return false;
  // Only when the next round invites every live agent, so that every agent
  // the phase would ask is asked (client sampling keeps the phase).
  if (options_.fraction < 1.0) return false;
  const std::vector<std::string> live = LiveAgentsLocked(now);
  if (live.empty()) return false;
  for (const std::string& id : live) {
    auto it = agents_.find(id);
    if (it == agents_.end() || !it->second.evaluates_before_training) return false;
  }
  return true;
}

void RoundEngine::ApplyPendingEvaluationLocked() {
  if (pending_eval_round_ == 0) return;
  const int64_t round = pending_eval_round_;
  pending_eval_round_ = 0;
  auto record = std::find_if(history_.begin(), history_.end(),
                             [round](const RoundRecord& r) { return r.round == round; });
  if (record == history_.end()) return;
  if (pending_eval_.acc_examples > 0)
    record->accuracy = pending_eval_.correct / static_cast<double>(pending_eval_.acc_examples);
  if (pending_eval_.loss_examples > 0)
    record->loss = pending_eval_.loss_sum / static_cast<double>(pending_eval_.loss_examples);
  record->eval_examples = std::max(pending_eval_.acc_examples, pending_eval_.loss_examples);
  record->evaluators = static_cast<int>(pending_eval_.reported.size());
  if (metrics_) metrics_->SetRoundEvaluation(record->accuracy.value_or(NAN), record->loss.value_or(NAN));
  log::Info("round evaluated with the next round's updates", {{"round", round},
                                                              {"global_version", pending_eval_version_},
                                                              {"evaluators", record->evaluators},
                                                              {"accuracy", record->accuracy.value_or(NAN)},
                                                              {"loss", record->loss.value_or(NAN)},
                                                              {"eval_examples", record->eval_examples}});
  pending_eval_ = EvalRound{};
}

StatusOr<std::shared_ptr<const GlobalModel>> RoundEngine::Global(int64_t version) const {
  std::lock_guard<std::mutex> lock(mu_);
  if (!global_) return NotFoundError("no global model yet: the job is initializing; ask for a task");
  if (version != 0 && version != global_->version) {
    return NotFoundError("global version " + std::to_string(version) +
                         " is not available; the current version is " + std::to_string(global_->version) +
                         ": ask for a task");
  }
  return global_;
}

void RoundEngine::RecordBytesSent(uint64_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  if (metrics_) metrics_->BytesSent(bytes);
  if (state_ == JobState::kRunning && phase_ != Phase::kIdle) current_.bytes_down += bytes;
}

void RoundEngine::Tick() {
  std::lock_guard<std::mutex> lock(mu_);
  TickLocked(clock_->NowUnixMs());
}

EngineStatus RoundEngine::GetStatus() {
  std::lock_guard<std::mutex> lock(mu_);
  TickLocked(clock_->NowUnixMs());
  EngineStatus s;
  s.job = options_.job;
  s.state = state_;
  s.round = std::min<int64_t>(round_, options_.total_rounds);
  if (!global_) s.round = 0;
  s.total_rounds = options_.total_rounds;
  s.phase = phase_;
  if (global_) {
    s.global_version = global_->version;
    s.global_checksum = global_->checksum;
  }
  s.agents_joined = static_cast<int>(agents_.size());
  s.rounds = history_;
  s.final_accuracy = final_accuracy_;
  s.message = message_;
  s.checkpoint = checkpoint_;
  s.checkpoint.enabled = checkpoints_ != nullptr;
  if (options_.dp.enabled) {
    PrivacyStatus p;
    p.epsilon = privacy_.Epsilon(options_.dp.delta);
    p.delta = options_.dp.delta;
    p.target_epsilon = options_.dp.target_epsilon;
    p.noise_multiplier = options_.dp.noise_multiplier;
    p.clip_norm = options_.dp.clip_norm;
    p.rounds_accounted = privacy_rounds_;
    p.budget_exhausted = privacy_exhausted_;
    s.privacy = p;
  }
  return s;
}

bool RoundEngine::AllAgentsDone() const {
  std::lock_guard<std::mutex> lock(mu_);
  if (state_ != JobState::kSucceeded) return false;
  for (const auto& [id, agent] : agents_) {
    if (!agent.got_done) return false;
  }
  return true;
}

std::optional<int64_t> RoundEngine::FinishedAtMs() const {
  std::lock_guard<std::mutex> lock(mu_);
  return finished_at_ms_;
}

// --- state machine ---------------------------------------------------------

std::vector<std::string> RoundEngine::LiveAgentsLocked(int64_t now) const {
  std::vector<std::string> live;
  for (const auto& [id, agent] : agents_) {
    if (now - agent.last_seen_ms <= options_.agent_liveness_ms) live.push_back(id);
  }
  return live;  // sorted: agents_ is an ordered map
}

void RoundEngine::TickLocked(int64_t now) {
  if (state_ == JobState::kSucceeded || state_ == JobState::kFailed) return;
  const size_t joined = agents_.size();
  const size_t expected = static_cast<size_t>(options_.expected_agents);

  if (!global_) {
    if (!initializer_.empty() && now >= initializer_deadline_ms_) {
      log::Warn("initializing agent missed its deadline; asking another", {{"agent", initializer_}});
      initializer_.clear();
    }
    if (joined < expected) {
      state_ = JobState::kWaitingForAgents;
      message_ =
          "waiting for agents: " + std::to_string(joined) + " of " + std::to_string(expected) + " joined";
    } else if (ChooseLayoutLocked()) {
      state_ = JobState::kInitializing;
      message_ = "waiting for the initial model upload";
    } else {
      state_ = JobState::kWaitingForAgents;
    }
    return;
  }

  // Each pass makes at most one transition; loop until nothing changes (a
  // round can close, evaluate with nobody live and start the next in one go).
  for (int guard = 0; guard < 16; ++guard) {
    if (state_ == JobState::kSucceeded || state_ == JobState::kFailed) return;
    if (phase_ == Phase::kIdle) {
      if (round_ > options_.total_rounds) {
        state_ = JobState::kSucceeded;
        finished_at_ms_ = now;
        message_ = "all " + std::to_string(options_.total_rounds) + " rounds completed";
        log::Info("job succeeded", {{"rounds", options_.total_rounds},
                                    {"global_version", global_->version},
                                    {"final_accuracy", final_accuracy_.value_or(NAN)}});
        return;
      }
      if (joined < expected) {
        state_ = JobState::kWaitingForAgents;
        message_ =
            "waiting for agents: " + std::to_string(joined) + " of " + std::to_string(expected) + " joined";
        return;
      }
      if (LiveAgentsLocked(now).empty()) {
        state_ = JobState::kWaitingForAgents;
        message_ = "waiting for agents: none has been heard from recently";
        return;
      }
      StartTrainLocked(now);
      continue;
    }
    if (phase_ == Phase::kTrain && options_.async) {
      const size_t buffered = train_.answered.size();
      if (buffered >= static_cast<size_t>(options_.async_buffer_size)) {
        CloseTrainLocked(now, "buffer_full");
        continue;
      }
      if (now < train_.deadline_ms) return;
      if (buffered > 0) {
        // Agents left: a partial buffer beats a job that never moves again.
        log::Warn("async buffer not filled by the round timeout; aggregating what it holds",
                  {{"round", round_}, {"buffered", buffered}, {"buffer_size", options_.async_buffer_size}});
        CloseTrainLocked(now, "buffer_timeout");
        continue;
      }
      train_.deadline_ms = now + options_.round_timeout_ms;
      return;
    }
    if (phase_ == Phase::kTrain && secagg_) {
      if (TickSecAggLocked(now)) continue;
      return;
    }
    if (phase_ == Phase::kTrain) {
      const size_t invited = train_.invited.size(), answered = train_.answered.size();
      if (answered == invited) {
        CloseTrainLocked(now, "all_answered");
        continue;
      }
      if (answered >= train_.target) {
        CloseTrainLocked(now, "target_reached");
        continue;
      }
      if (now < train_.deadline_ms) return;
      const size_t required =
          options_.quorum > 0 ? std::min(invited, static_cast<size_t>(options_.quorum)) : train_.target;
      if (answered >= required) {
        CloseTrainLocked(now, "quorum_at_deadline");
        continue;
      }
      if (train_.extensions < options_.max_deadline_extensions) {
        ++train_.extensions;
        train_.deadline_ms = now + options_.round_timeout_ms;
        log::Warn("round deadline extended: quorum not reached",
                  {{"round", round_},
                   {"updates", answered},
                   {"required", required},
                   {"extension", train_.extensions},
                   {"new_deadline_unix_ms", train_.deadline_ms}});
        return;
      }
      if (options_.quorum == 0 && answered >= 1) {
        log::Warn("closing round below quorum after the extended deadline",
                  {{"round", round_}, {"updates", answered}, {"invited", invited}});
        CloseTrainLocked(now, "below_quorum_after_extension");
        continue;
      }
      FailLocked("round " + std::to_string(round_) + ": " + std::to_string(answered) + " of " +
                 std::to_string(required) + " required updates arrived by the extended deadline");
      return;
    }
    if (phase_ == Phase::kEvaluate) {
      if (eval_.reported.size() == eval_.asked.size() || now >= eval_.deadline_ms) {
        CloseEvalLocked(now);
        continue;
      }
      return;
    }
  }
}

void RoundEngine::InitializerFailed(const std::string& agent_id, const std::string& why) {
  std::lock_guard<std::mutex> lock(mu_);
  InitializerFailedLocked(agent_id, why);
}

void RoundEngine::InitializerFailedLocked(const std::string& agent_id, const std::string& why) {
  if (global_) return;
  // Refused for good: ask someone else (issue 10, item 6).
  failed_initializers_.insert(agent_id);
  if (initializer_ == agent_id) initializer_.clear();
  log::Warn("initial state refused: not the layout the agents declared; asking another agent",
            {{"agent", agent_id}, {"error", why}});
}

bool RoundEngine::ChooseLayoutLocked() {
  if (expected_layout_) return true;
  // A majority of the expected agents, so one agent (or a minority) cannot
  // choose what everybody trains (issue 10, item 6).
  const size_t needed = static_cast<size_t>(options_.expected_agents) / 2 + 1;
  std::map<std::string, std::pair<size_t, const Agent*>> votes;
  size_t declared = 0;
  for (const auto& [id, agent] : agents_) {
    if (agent.layout_key.empty()) continue;
    ++declared;
    auto& v = votes[agent.layout_key];
    ++v.first;
    v.second = &agent;
  }
  size_t best = 0;
  for (const auto& [key, v] : votes) {
    if (v.first >= needed) {
      expected_layout_ = v.second->layout;
      expected_layout_key_ = key;
      log::Info("trainable layout agreed", {{"agents", v.first},
                                            {"needed", needed},
                                            {"tensors", expected_layout_->tensors.size()},
                                            {"elements", ShapeElements(*expected_layout_)}});
      return true;
    }
    best = std::max(best, v.first);
  }
  message_ = "waiting for " + std::to_string(needed) +
             " agents to declare the same trainable layout at Join (capabilities.trainable_layout): " +
             std::to_string(declared) + " of " + std::to_string(agents_.size()) +
             " joined agents declared one";
  if (declared > 0) message_ += ", at most " + std::to_string(best) + " agree";
  if (declared < agents_.size())
    message_ += "; agents that declare none are older than this aggregator: upgrade them";
  return false;
}

void RoundEngine::StartAsyncLocked(int64_t now) {
  train_ = TrainRound{};
  train_.target = static_cast<size_t>(options_.async_buffer_size);
  train_.deadline_ms = now + options_.round_timeout_ms;
  strategy_->Begin(global_->bundle);
  current_ = RoundRecord{};
  current_.round = round_;
  round_started_ms_ = now;
  state_ = JobState::kRunning;
  phase_ = Phase::kTrain;
  message_ = "round " + std::to_string(round_) + " (async): buffering " +
             std::to_string(options_.async_buffer_size) + " updates";
  log::Info(
      "async round started",
      {{"round", round_}, {"global_version", global_->version}, {"buffer_size", options_.async_buffer_size}});
}

void RoundEngine::StartTrainLocked(int64_t now) {
  if (options_.async) {
    StartAsyncLocked(now);
    return;
  }
  std::vector<std::string> live = LiveAgentsLocked(now);
  // Deterministic per (seed, round): a resumed job invites the same agents.
  std::mt19937_64 rng(options_.seed ^ (static_cast<uint64_t>(round_) * 0x9E3779B97F4A7C15ull));
  std::shuffle(live.begin(), live.end(), rng);
  const size_t n = live.size();
  size_t k = static_cast<size_t>(std::ceil(static_cast<double>(n) * options_.fraction - 1e-9));
  k = std::max(k, std::min(n, static_cast<size_t>(options_.quorum)));
  k = std::clamp<size_t>(k, 1, n);
  // Over-selection: stragglers and dropouts cost nothing once `k` answered.
  size_t invite = static_cast<size_t>(std::ceil(static_cast<double>(k) * options_.over_selection - 1e-9));
  invite = std::clamp<size_t>(invite, k, n);
  const double sampling_rate = static_cast<double>(invite) / static_cast<double>(n);
  if (PrivacyBudgetStopsLocked(sampling_rate, invite, now)) return;
  train_ = TrainRound{};
  train_.target = k;
  train_.sampling_rate = sampling_rate;
  train_.invited.insert(live.begin(), live.begin() + static_cast<std::ptrdiff_t>(invite));
  train_.deadline_ms = now + options_.round_timeout_ms;
  // SCAFFOLD needs N and the K x eta of the task (as the float the agents receive).
  const RoundsSpec& rounds = options_.train.spec->rounds;
  strategy_->SetRoundContext(
      RoundContext{static_cast<int64_t>(agents_.size()), rounds.localSteps,
                   static_cast<double>(static_cast<float>(ScheduledLearningRate(
                       rounds.learningRate, rounds.learningRateSchedule, round_, options_.total_rounds)))});
  strategy_->Begin(global_->bundle);
  current_ = RoundRecord{};
  current_.round = round_;
  current_.invited = static_cast<int>(invite);
  if (options_.secagg.enabled) StartSecAggLocked(now);
  round_started_ms_ = now;
  state_ = JobState::kRunning;
  phase_ = Phase::kTrain;
  message_ = "round " + std::to_string(round_) + ": training";
  log::Info("round started", {{"round", round_},
                              {"invited", invite},
                              {"target", k},
                              {"live_agents", n},
                              {"global_version", global_->version},
                              {"max_weight", options_.max_weight},
                              {"norm_bound", AutoClipNorm(options_, global_->bundle.NumElements())},
                              {"deadline_unix_ms", train_.deadline_ms}});
}

void RoundEngine::CloseTrainLocked(int64_t now, const std::string& reason) {
  // The previous round's evaluation came with this round's updates: complete
  // its record before this round's joins the history.
  ApplyPendingEvaluationLocked();
  if (strategy_->count() == 0) {
    // Only zero-weight answers: the model carries over under the next version
    // so the round still completes like any other.
    log::Warn("round had no weighted updates; global unchanged", {{"round", round_}});
  }
  auto next =
      strategy_->count() == 0 ? StatusOr<TensorBundle>(global_->bundle) : strategy_->Finish(global_->bundle);
  if (!next.ok()) {
    FailLocked("round " + std::to_string(round_) + ": aggregation failed: " + next.status().message());
    return;
  }
  if (options_.dp.enabled) {
    AddPrivacyNoiseLocked(global_->bundle, &*next,
                          options_.secagg.enabled ? secagg_survivors_ : strategy_->count());
  }
  if (Status s = PublishGlobalLocked(std::move(*next), global_->version + 1); !s.ok()) {
    FailLocked("round " + std::to_string(round_) + ": cannot encode the new global: " + s.message());
    return;
  }
  current_.participants = static_cast<int>(train_.answered.size());
  if (train_.examples > 0) current_.train_loss = train_.train_loss_sum / train_.examples;
  current_.close_reason = reason;
  current_.global_version = global_->version;
  if (options_.async) {
    current_.invited = current_.participants;
    log::Info(
        "async round aggregated",
        {{"round", round_},
         {"updates", current_.participants},
         {"reason", reason},
         {"mean_staleness", current_.participants > 0 ? train_.staleness_sum / current_.participants : 0.0},
         {"global_version", global_->version}});
    if (round_ < options_.total_rounds) {
      // Only the final version is evaluated: a blocking evaluation per
      // version would make the asynchronous mode synchronous again.
      CompleteRoundLocked(now);
      StartAsyncLocked(now);
      return;
    }
  }
  if (DefersEvaluationLocked(now)) {
    pending_eval_ = EvalRound{};
    pending_eval_round_ = round_;
    pending_eval_version_ = global_->version;
    log::Info("round aggregated", {{"round", round_},
                                   {"participants", current_.participants},
                                   {"reason", reason},
                                   {"global_version", global_->version},
                                   {"train_loss", current_.train_loss.value_or(NAN)},
                                   {"evaluation", "with the next round's updates"}});
    // The record (without its evaluation yet) and the checkpoint; the next
    // round starts on this Tick.
    CompleteRoundLocked(now);
    return;
  }
  // The new global goes to disk now, not after the evaluation: an aggregator
  // that dies while agents evaluate resumes with this round's model (its
  // record then lacks the evaluation).
  {
    RoundRecord pending = current_;
    pending.seconds = static_cast<double>(now - round_started_ms_) / 1000.0;
    SaveCheckpointLocked(round_, &pending);
  }
  std::vector<std::string> live = LiveAgentsLocked(now);
  eval_ = EvalRound{};
  eval_.asked.insert(live.begin(), live.end());
  eval_.deadline_ms = now + options_.round_timeout_ms;
  phase_ = Phase::kEvaluate;
  message_ = "round " + std::to_string(round_) + ": evaluating";
  log::Info("round aggregated", {{"round", round_},
                                 {"participants", current_.participants},
                                 {"reason", reason},
                                 {"global_version", global_->version},
                                 {"train_loss", current_.train_loss.value_or(NAN)},
                                 {"evaluators", eval_.asked.size()}});
}

void RoundEngine::CloseEvalLocked(int64_t now) {
  if (eval_.acc_examples > 0) current_.accuracy = eval_.correct / static_cast<double>(eval_.acc_examples);
  if (eval_.loss_examples > 0) current_.loss = eval_.loss_sum / static_cast<double>(eval_.loss_examples);
  current_.eval_examples = std::max(eval_.acc_examples, eval_.loss_examples);
  current_.evaluators = static_cast<int>(eval_.reported.size());
  CompleteRoundLocked(now);
}

void RoundEngine::CompleteRoundLocked(int64_t now) {
  current_.seconds = static_cast<double>(now - round_started_ms_) / 1000.0;
  history_.push_back(current_);
  if (round_ == options_.total_rounds) final_accuracy_ = current_.accuracy;
  if (metrics_) {
    metrics_->RoundCompleted(current_.seconds);
    metrics_->SetRoundEvaluation(current_.accuracy.value_or(NAN), current_.loss.value_or(NAN));
  }
  log::Info("round closed", {{"round", round_},
                             {"participants", current_.participants},
                             {"loss", current_.loss.value_or(NAN)},
                             {"accuracy", current_.accuracy.value_or(NAN)},
                             {"eval_examples", current_.eval_examples},
                             {"bytes_up", current_.bytes_up},
                             {"bytes_down", current_.bytes_down},
                             {"seconds", current_.seconds},
                             {"global_version", current_.global_version}});
  SaveCheckpointLocked(round_);
  ++round_;
  phase_ = Phase::kIdle;
}

void RoundEngine::AddPrivacyNoiseLocked(const TensorBundle& global, TensorBundle* next, int updates) {
  // The strategy gave global + S / updates (S: the sum of the clipped updates, weight 1
  // each). Publish global + (S + Z) / target with Z ~ N(0, (sigma C)^2 I).
  const double target = static_cast<double>(std::max<size_t>(train_.target, 1));
  const double rescale = static_cast<double>(updates) / target;
  // Distributed: the agents' noise shares are in the sum already; the survivors' shares
  // add up to sigma * sqrt(survivors / advertisers), which is what this round gets.
  const double sigma = options_.dp.distributed && secagg_advertised_ > 0
                           ? options_.dp.noise_multiplier * std::sqrt(static_cast<double>(secagg_survivors_) /
                                                                      static_cast<double>(secagg_advertised_))
                           : options_.dp.noise_multiplier;
  std::normal_distribution<double> noise(0.0, options_.dp.noise_multiplier * options_.dp.clip_norm / target);
  for (NamedTensor& t : next->tensors) {
    const NamedTensor* g = global.Find(t.name);
    for (size_t i = 0; i < t.values.size(); ++i) {
      const double base = g != nullptr ? static_cast<double>(g->values[i]) : 0.0;
      const double mean_delta = static_cast<double>(t.values[i]) - base;
      t.values[i] = static_cast<float>(base + mean_delta * rescale +
                                       (options_.dp.distributed ? 0.0 : noise(noise_rng_)));
    }
  }
  if (Status s = privacy_.Compose(sigma, train_.sampling_rate); !s.ok()) {
    FailLocked("round " + std::to_string(round_) + ": privacy accounting failed: " + s.message());
    return;
  }
  ++privacy_rounds_;
  const double eps = privacy_.Epsilon(options_.dp.delta);
  current_.epsilon = eps;
  if (metrics_) metrics_->SetPrivacyEpsilon(eps);
  log::Info("privacy noise added", {{"round", round_},
                                    {"updates", updates},
                                    {"target", train_.target},
                                    {"sampling_rate", train_.sampling_rate},
                                    {"noise_stddev", sigma * options_.dp.clip_norm / target},
                                    {"distributed", options_.dp.distributed},
                                    {"effective_noise_multiplier", sigma},
                                    {"epsilon", eps},
                                    {"delta", options_.dp.delta}});
}

bool RoundEngine::PrivacyBudgetStopsLocked(double sampling_rate, size_t invited, int64_t now) {
  if (!options_.dp.enabled || !(options_.dp.target_epsilon > 0)) return false;
  const double sigma = PrivacyNoiseMultiplierAtWorstLocked(invited);
  const double after = privacy_.EpsilonAfter(sigma, sampling_rate, options_.dp.delta);
  if (after <= options_.dp.target_epsilon) return false;
  privacy_exhausted_ = true;
  if (!history_.empty()) final_accuracy_ = history_.back().accuracy;
  state_ = JobState::kSucceeded;
  phase_ = Phase::kIdle;
  finished_at_ms_ = now;
  message_ = "privacy budget exhausted: round " + std::to_string(round_) + " would take epsilon to " +
             std::to_string(after) + " > targetEpsilon " + std::to_string(options_.dp.target_epsilon) +
             " (delta " + std::to_string(options_.dp.delta) +
             (sigma < options_.dp.noise_multiplier ? ", at noise multiplier " + std::to_string(sigma) +
                                                         " if its dropouts are the most secure "
                                                         "aggregation allows"
                                                   : std::string()) +
             "); the job ends after " + std::to_string(round_ - 1) + " of " +
             std::to_string(options_.total_rounds) + " rounds";
  log::Warn("privacy budget exhausted; job ends early", {{"completed_rounds", round_ - 1},
                                                         {"epsilon", privacy_.Epsilon(options_.dp.delta)},
                                                         {"epsilon_after_next_round", after},
                                                         {"target_epsilon", options_.dp.target_epsilon},
                                                         {"global_version", global_->version}});
  return true;
}

void RoundEngine::FailLocked(const std::string& message) {
  state_ = JobState::kFailed;
  phase_ = Phase::kIdle;
  message_ = message;
  finished_at_ms_ = clock_->NowUnixMs();
  log::Error("job failed", {{"reason", message}});
}

Status RoundEngine::PublishGlobalLocked(TensorBundle bundle, int64_t version) {
  auto model = std::make_shared<GlobalModel>();
  auto encoded = EncodeBundle(bundle, options_.global_encoding);
  if (!encoded.ok() && options_.global_encoding.codec != Codec::kFp32) {
    // A value outside the download codec's range (fp16: |x| >= 65520) would
    // decode as Inf: this version goes out in fp32 (lossless), the next one is
    // tried in the job's codec again.
    EncodeOptions fp32 = options_.global_encoding;
    fp32.codec = Codec::kFp32;
    log::Warn("the global does not fit spec.compression.globalCodec; sending this version in fp32",
              {{"global_version", version},
               {"global_codec", CodecName(options_.global_encoding.codec)},
               {"error", encoded.status().message()}});
    encoded = EncodeBundle(bundle, fp32);
  }
  if (!encoded.ok()) return encoded.status();
  model->encoded = std::move(encoded).value();
  model->checksum = Sha256Hex(model->encoded);
  model->version = version;
  model->bundle = std::move(bundle);
  global_ = std::move(model);
  if (metrics_) metrics_->SetGlobalVersion(version);
  return OkStatus();
}

std::shared_ptr<const std::string> RoundEngine::SentControlLocked() {
  std::shared_ptr<const std::string> control = strategy_->ServerControl();
  if (!control || control->empty() || options_.global_encoding.codec == Codec::kFp32) return control;
  if (control == control_source_) return control_sent_;
  control_source_ = control;
  control_sent_ = control;  // fp32, unless it re-encodes below
  auto c = DecodeBundle(*control);
  if (!c.ok()) {
    log::Error("cannot decode the SCAFFOLD control to re-encode it; sending it in fp32",
               {{"error", c.status().ToString()}});
    return control_sent_;
  }
  auto encoded = EncodeBundle(*c, options_.global_encoding);
  if (!encoded.ok()) {
    log::Warn(
        "the SCAFFOLD control does not fit spec.compression.globalCodec; sending it in fp32",
        {{"global_codec", CodecName(options_.global_encoding.codec)}, {"error", encoded.status().message()}});
    return control_sent_;
  }
  control_sent_ = std::make_shared<const std::string>(std::move(encoded).value());
  return control_sent_;
}

void RoundEngine::SaveCheckpointLocked(int64_t completed_round, const RoundRecord* pending) {
  if (!checkpoints_) return;
  CheckpointData data;
  data.job = options_.job;
  data.completed_round = completed_round;
  data.total_rounds = options_.total_rounds;
  data.global_version = global_->version;
  data.global_checksum = global_->checksum;
  data.history = history_;
  if (pending) data.history.push_back(*pending);
  data.final_accuracy = final_accuracy_;
  data.global = global_->bundle;
  data.strategy_state = strategy_->SaveState();
  if (options_.dp.enabled) {
    data.privacy_rdp = privacy_.rdp();
    data.privacy_rounds = privacy_rounds_;
  }
  if (Status s = checkpoints_->Save(data); !s.ok()) {
    // The job goes on: losing a checkpoint costs a round on restart, stopping
    // costs the job. Counted and shown in /v1/status for the operator.
    ++checkpoint_.failures;
    checkpoint_.last_error = s.ToString();
    checkpoint_.ok = false;
    if (metrics_) metrics_->CheckpointFailed();
    log::Error("checkpoint failed", {{"round", completed_round},
                                     {"global_version", global_->version},
                                     {"failures", checkpoint_.failures},
                                     {"error", s.ToString()}});
    return;
  }
  checkpoint_.ok = true;
  checkpoint_.saved_round = completed_round;
  checkpoint_.saved_version = global_->version;
  checkpoint_.saved_unix_ms = clock_->NowUnixMs();
  if (metrics_) metrics_->CheckpointSaved(checkpoint_.saved_unix_ms / 1000.0);
  log::Info("checkpoint written", {{"dir", checkpoints_->dir()},
                                   {"completed_round", completed_round},
                                   {"global_version", global_->version},
                                   {"evaluated", pending == nullptr}});
}

}  // namespace fedge::aggregator
