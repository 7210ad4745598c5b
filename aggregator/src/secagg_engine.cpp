// The round engine's secure-aggregation half (SecAggOptions in round_engine.h):
// one secagg::SecAggServer per synchronous train phase, driven by the agents'
// SecAgg* RPCs and the engine's Tick; its unmasked sum becomes the round's one
// update to the strategy.
#include <openssl/rand.h>

#include <algorithm>
#include <cmath>

#include "fedge/aggregator/round_engine.h"
#include "fedge/log.h"

namespace fedge::aggregator {

Status RoundEngine::CheckSecAggOptions(const EngineOptions& options) {
  const SecAggOptions& sa = options.secagg;
  if (options.dp.enabled && options.dp.distributed && !sa.enabled) {
    return InvalidArgumentError(
        "spec.privacy.differentialPrivacy.mode distributed needs spec.privacy.secureAggregation.enabled (the "
        "agents' noise shares are only complete and hidden in a masked sum)");
  }
  if (!sa.enabled) return OkStatus();
  const std::string p = "spec.privacy.secureAggregation";
  static const char* kLinear[] = {"fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad"};
  if (std::find(std::begin(kLinear), std::end(kLinear), options.strategy.name) == std::end(kLinear)) {
    return InvalidArgumentError(
        p + " gives the aggregator only the sum of the updates; strategy " + options.strategy.name +
        " needs each agent's update. Use fedavg, fedprox, fedavgm, fedadam, fedyogi or "
        "fedadagrad, or turn secure aggregation off");
  }
  if (options.async) return InvalidArgumentError(p + " needs synchronous rounds (spec.rounds.mode: sync)");
  if (options.adapter.aggregation == "product") {
    return InvalidArgumentError(
        p +
        " needs spec.adapter.aggregation factors or frozen-a: product re-factors each "
        "agent's update");
  }
  if (sa.threshold < 0 || sa.neighbours < 0)
    return InvalidArgumentError(p + " threshold and neighbours must be >= 0");
  if (sa.threshold == 1) {
    return InvalidArgumentError(p +
                                ".threshold must be 0 (default) or >= 2: one share must not reveal a secret");
  }
  if (sa.neighbours > 0 && sa.threshold > 0 && 2 * sa.threshold <= sa.neighbours) {
    return InvalidArgumentError(p +
                                ".threshold must be above neighbours / 2 (a lying aggregator could otherwise "
                                "collect both secrets of an agent)");
  }
  if (sa.neighbours > 0 && sa.threshold > sa.neighbours) {
    return InvalidArgumentError(p + ".threshold must be at most neighbours");
  }
  return OkStatus();
}

double RoundEngine::SecAggClipNormLocked() const {
  if (options_.dp.enabled) return options_.dp.clip_norm;
  if (options_.strategy.maxUpdateNorm > 0) return options_.strategy.maxUpdateNorm;
  if (options_.strategy.clipNorm > 0) return options_.strategy.clipNorm;
  const double bound = AutoClipNorm(options_, global_ ? global_->bundle.NumElements() : 0);
  return bound > 0 ? bound : 1.0;
}

double RoundEngine::PrivacyNoiseMultiplierAtWorstLocked(size_t invited) const {
  const double sigma = options_.dp.noise_multiplier;
  if (!options_.dp.distributed || !options_.secagg.enabled) return sigma;
  // Mirrors SecAggServer::CloseAdvertise (k, t of m advertisers). A published round has
  // at least t + 1 survivors: each survivor's self-mask seed is rebuilt from t shares
  // held by other survivors (an agent holds no share of its own secrets).
  double worst = 1.0;
  for (size_t m = 2; m <= invited; ++m) {
    size_t k = m - 1;
    const int neighbours = options_.secagg.neighbours;
    if (neighbours > 0 && static_cast<size_t>(neighbours) < k) {
      k = static_cast<size_t>(neighbours);
      k += k % 2;
      k = std::min(k, m - 1);
    }
    const size_t t =
        options_.secagg.threshold > 0 ? static_cast<size_t>(options_.secagg.threshold) : k / 2 + 1;
    if (t > k) continue;  // the round would fail, not publish
    worst = std::min(worst, static_cast<double>(std::max<size_t>(t + 1, 2)) / static_cast<double>(m));
  }
  return sigma * std::sqrt(worst);
}

void RoundEngine::StartSecAggLocked(int64_t now) {
  secagg::SecAggServerOptions so;
  so.job = options_.job;
  so.round = round_;
  so.invited.assign(train_.invited.begin(), train_.invited.end());
  so.threshold = options_.secagg.threshold;
  so.neighbours = options_.secagg.neighbours;
  so.clip_norm = SecAggClipNormLocked();
  so.values = global_->bundle.NumElements();
  if (RAND_bytes(reinterpret_cast<unsigned char*>(&so.rotation_seed), sizeof(so.rotation_seed)) != 1) {
    so.rotation_seed = options_.seed ^ static_cast<uint64_t>(round_);
  }
  so.noise_multiplier = options_.dp.enabled && options_.dp.distributed ? options_.dp.noise_multiplier : 0;
  so.advertise_deadline_ms = train_.deadline_ms;
  so.phase_timeout_ms =
      options_.secagg.phase_timeout_ms > 0 ? options_.secagg.phase_timeout_ms : options_.round_timeout_ms;
  so.on_masked_input = options_.secagg.on_masked_input;
  secagg_ = std::make_unique<secagg::SecAggServer>(std::move(so));
  log::Info("secure aggregation started",
            {{"round", round_}, {"invited", train_.invited.size()}, {"clip_norm", SecAggClipNormLocked()}});
}

bool RoundEngine::TickSecAggLocked(int64_t now) {
  secagg_->Tick(now);
  if (secagg_->phase() == secagg::SecAggPhase::kFailed) {
    const std::string why = secagg_->failure();
    secagg_.reset();
    if (train_.extensions < options_.max_deadline_extensions) {
      // Start the round over once with whoever is live now.
      const int extensions = train_.extensions + 1;
      log::Warn("secure aggregation failed; restarting the round", {{"round", round_}, {"reason", why}});
      phase_ = Phase::kIdle;
      StartTrainLocked(now);
      train_.extensions = extensions;
      return true;
    }
    FailLocked("secure aggregation of round " + std::to_string(round_) + " failed twice: " + why);
    return true;
  }
  if (secagg_->phase() != secagg::SecAggPhase::kDone) return false;

  const std::vector<std::string> survivors = secagg_->survivors();
  const double weight_sum = secagg_->weight_sum();
  const std::vector<double>& sum = secagg_->weighted_sum();
  // One update: the survivors' weighted mean (FedAvg's step), given weight 1.
  if (weight_sum > 0) {
    TensorBundle mean = global_->bundle;
    size_t i = 0;
    for (NamedTensor& t : mean.tensors) {
      for (float& v : t.values) v = static_cast<float>(sum[i++] / weight_sum);
    }
    if (Status s = strategy_->Add(mean, 1); !s.ok()) {
      FailLocked("secure aggregation of round " + std::to_string(round_) +
                 ": the unmasked sum is unusable: " + s.message());
      return true;
    }
  }
  const uint64_t bytes = secagg_->masked_bytes();
  const uint64_t raw = static_cast<uint64_t>(global_->bundle.NumElements()) * 4 * survivors.size();
  for (auto it = current_.feedback_examples.begin(); it != current_.feedback_examples.end();) {
    it = std::find(survivors.begin(), survivors.end(), it->first) == survivors.end()
             ? current_.feedback_examples.erase(it)
             : std::next(it);
  }
  for (const std::string& id : survivors) {
    train_.answered.insert(id);
    auto agent = agents_.find(id);
    if (agent != agents_.end()) agent->second.last_accepted_round = round_;
  }
  current_.bytes_up += bytes;
  current_.raw_bytes_up += raw;
  if (metrics_) {
    for (size_t k = 0; k < survivors.size(); ++k)
      metrics_->UpdateAccepted(bytes / survivors.size(), raw / survivors.size());
  }
  secagg_survivors_ = static_cast<int>(survivors.size());
  secagg_advertised_ = static_cast<int>(secagg_->advertised());
  log::Info(
      "secure aggregation unmasked the round's sum",
      {{"round", round_},
       {"advertised", secagg_->advertised()},
       {"survivors", survivors.size()},
       {"dropped_after_sharing", secagg_->dropped().size()},
       {"weight_sum", weight_sum},
       {"ring_bits", secagg_->params().ring.bits},
       {"masked_bytes", bytes},
       {"bytes_per_value", survivors.empty() ? 0.0
                                             : static_cast<double>(bytes) / survivors.size() /
                                                   std::max<int64_t>(global_->bundle.NumElements(), 1)}});
  secagg_.reset();
  CloseTrainLocked(now, "secure_aggregation");
  return true;
}

Status RoundEngine::SecAggCallLocked(const std::string& agent_id, int64_t round, int64_t now) {
  auto agent = agents_.find(agent_id);
  if (agent == agents_.end()) return UnauthenticatedError("unknown agent " + agent_id + ": join again");
  agent->second.last_seen_ms = now;
  TickLocked(now);
  if (!options_.secagg.enabled) return FailedPreconditionError("this job does not use secure aggregation");
  if (!secagg_ || phase_ != Phase::kTrain || round != round_) {
    return FailedPreconditionError(
        "round " + std::to_string(round) + " is not running secure aggregation now (current round " +
        std::to_string(round_) + ", phase " + std::string(PhaseName(phase_)) + "); ask GetTask what to do");
  }
  return OkStatus();
}

StatusOr<std::optional<secagg::Roster>> RoundEngine::SecAggAdvertise(const std::string& agent_id,
                                                                     int64_t round,
                                                                     const secagg::Bytes& enc_public_key,
                                                                     const secagg::Bytes& mask_public_key) {
  std::lock_guard<std::mutex> lock(mu_);
  const int64_t now = clock_->NowUnixMs();
  FEDGE_RETURN_IF_ERROR(SecAggCallLocked(agent_id, round, now));
  FEDGE_RETURN_IF_ERROR(secagg_->Advertise(agent_id, enc_public_key, mask_public_key, now));
  auto roster = secagg_->RosterFor(agent_id);
  TickLocked(now);
  return roster;
}

StatusOr<std::optional<std::vector<secagg::EncryptedShare>>> RoundEngine::SecAggShareKeys(
    const std::string& agent_id, int64_t round, std::vector<secagg::EncryptedShare> shares) {
  std::lock_guard<std::mutex> lock(mu_);
  const int64_t now = clock_->NowUnixMs();
  FEDGE_RETURN_IF_ERROR(SecAggCallLocked(agent_id, round, now));
  FEDGE_RETURN_IF_ERROR(secagg_->ShareKeys(agent_id, std::move(shares), now));
  auto inbox = secagg_->InboxFor(agent_id);
  TickLocked(now);
  return inbox;
}

Status RoundEngine::SecAggSubmitMasked(const std::string& agent_id, int64_t round, uint64_t offset,
                                       const std::string& data, uint64_t* received,
                                       int64_t feedback_examples) {
  std::lock_guard<std::mutex> lock(mu_);
  const int64_t now = clock_->NowUnixMs();
  FEDGE_RETURN_IF_ERROR(SecAggCallLocked(agent_id, round, now));
  Status st = secagg_->SubmitMasked(agent_id, offset, data, now, received);
  if (st.ok() && feedback_examples > 0) {
    // Informational, bounded as for plain updates; agents whose input does not reach the
    // sum are dropped from it when the round unmasks (TickSecAggLocked).
    current_.feedback_examples[agent_id] = std::min(feedback_examples, kMaxReportedFeedbackExamples);
  }
  TickLocked(now);
  return st;
}

StatusOr<std::optional<secagg::UnmaskAsk>> RoundEngine::SecAggUnmask(
    const std::string& agent_id, int64_t round, bool answer,
    const std::vector<secagg::RevealedShare>& shares) {
  std::lock_guard<std::mutex> lock(mu_);
  const int64_t now = clock_->NowUnixMs();
  FEDGE_RETURN_IF_ERROR(SecAggCallLocked(agent_id, round, now));
  if (answer) {
    FEDGE_RETURN_IF_ERROR(secagg_->Unmask(agent_id, shares, now));
    TickLocked(now);  // may unmask the sum and close the round
    return std::optional<secagg::UnmaskAsk>(secagg::UnmaskAsk{});
  }
  auto ask = secagg_->UnmaskAskFor(agent_id);
  TickLocked(now);
  return ask;
}

}  // namespace fedge::aggregator
