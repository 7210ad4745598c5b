#include "fedge/secagg/protocol.h"

#include <algorithm>
#include <cmath>
#include <random>

namespace fedge::secagg {

namespace {

void PutU32(Bytes* out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}
bool GetU32(const Bytes& in, size_t* off, uint32_t* v) {
  if (*off + 4 > in.size()) return false;
  *v = 0;
  for (int i = 0; i < 4; ++i)
    *v |= static_cast<uint32_t>(static_cast<unsigned char>(in[*off + i])) << (8 * i);
  *off += 4;
  return true;
}

// Binds a sealed share to the round and both ends: the server cannot move it.
std::string ShareAad(const std::string& context, uint32_t from, uint32_t to) {
  return context + "/share/" + std::to_string(from) + "->" + std::to_string(to);
}

std::string ShareKeyContext(const std::string& context) { return context + "/share-key"; }
std::string MaskContext(const std::string& context) { return context + "/mask"; }

uint64_t SeedFromCsprng() {
  auto b = RandomBytes(8);
  uint64_t v = 0;
  if (b.ok()) {
    for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(static_cast<unsigned char>((*b)[i])) << (8 * i);
  }
  return v;
}

}  // namespace

std::string_view SecAggPhaseName(SecAggPhase phase) {
  switch (phase) {
    case SecAggPhase::kAdvertise:
      return "advertise";
    case SecAggPhase::kShare:
      return "share";
    case SecAggPhase::kMasked:
      return "masked";
    case SecAggPhase::kUnmask:
      return "unmask";
    case SecAggPhase::kDone:
      return "done";
    case SecAggPhase::kFailed:
      return "failed";
  }
  return "unknown";
}

// ---------------------------------------------------------------- client

StatusOr<SecAggClient> SecAggClient::Create() {
  SecAggClient c;
  FEDGE_ASSIGN_OR_RETURN(c.enc_, GenerateKeyPair());
  FEDGE_ASSIGN_OR_RETURN(c.mask_, GenerateKeyPair());
  FEDGE_ASSIGN_OR_RETURN(c.self_seed_, RandomBytes(kKeyBytes));
  return c;
}

StatusOr<std::vector<EncryptedShare>> SecAggClient::ShareKeys(const Roster& roster) {
  const RoundParams& p = roster.params;
  if (roster.index == 0) return InvalidArgumentError("roster without an index for this agent");
  if (p.threshold < 1 || static_cast<size_t>(p.threshold) > roster.neighbours.size()) {
    return InvalidArgumentError("roster threshold " + std::to_string(p.threshold) + " does not fit " +
                                std::to_string(roster.neighbours.size()) + " neighbours");
  }
  if (p.ring.bits != 16 && p.ring.bits != 32)
    return InvalidArgumentError("roster ring must be 16 or 32 bits");
  if (p.ring.levels < 1 || !(p.range > 0) || p.values < 0 || p.context.empty()) {
    return InvalidArgumentError("roster parameters out of range");
  }
  index_ = roster.index;
  params_ = p;
  neighbours_.clear();
  std::vector<uint32_t> xs;
  for (const PeerKeys& n : roster.neighbours) {
    if (n.index == 0 || n.index == index_ || neighbours_.count(n.index)) {
      return InvalidArgumentError("roster neighbour indices must be distinct, non-zero and not this agent's");
    }
    neighbours_[n.index] = n;
    xs.push_back(n.index);
  }
  FEDGE_ASSIGN_OR_RETURN(auto seed_shares, ShamirSplit(self_seed_, p.threshold, xs));
  FEDGE_ASSIGN_OR_RETURN(auto key_shares, ShamirSplit(mask_.private_key, p.threshold, xs));
  std::vector<EncryptedShare> out;
  for (size_t i = 0; i < xs.size(); ++i) {
    const PeerKeys& n = neighbours_[xs[i]];
    FEDGE_ASSIGN_OR_RETURN(Bytes key,
                           AgreeKey(enc_.private_key, n.enc_public_key, ShareKeyContext(p.context)));
    Bytes plain;
    Bytes a = EncodeShare(seed_shares[i]), b = EncodeShare(key_shares[i]);
    PutU32(&plain, static_cast<uint32_t>(a.size()));
    plain += a;
    plain += b;
    EncryptedShare s;
    s.from = index_;
    s.to = n.index;
    FEDGE_ASSIGN_OR_RETURN(s.ciphertext, Seal(key, ShareAad(p.context, index_, n.index), plain));
    out.push_back(std::move(s));
  }
  return out;
}

Status SecAggClient::ReceiveShares(const std::vector<EncryptedShare>& inbox) {
  if (index_ == 0) return FailedPreconditionError("shares received before the roster");
  held_.clear();
  partners_.clear();
  for (const EncryptedShare& s : inbox) {
    auto n = neighbours_.find(s.from);
    if (s.to != index_ || n == neighbours_.end() || held_.count(s.from)) {
      return InvalidArgumentError("inbox share " + std::to_string(s.from) + "->" + std::to_string(s.to) +
                                  " is not from a neighbour to this agent (index " + std::to_string(index_) +
                                  ")");
    }
    FEDGE_ASSIGN_OR_RETURN(
        Bytes key, AgreeKey(enc_.private_key, n->second.enc_public_key, ShareKeyContext(params_.context)));
    FEDGE_ASSIGN_OR_RETURN(Bytes plain, Open(key, ShareAad(params_.context, s.from, s.to), s.ciphertext));
    size_t off = 0;
    uint32_t alen = 0;
    if (!GetU32(plain, &off, &alen) || off + alen > plain.size()) {
      return InvalidArgumentError("malformed share from " + std::to_string(s.from));
    }
    Held h;
    h.seed_share = plain.substr(off, alen);
    h.key_share = plain.substr(off + alen);
    held_[s.from] = std::move(h);
    partners_.insert(s.from);
  }
  return OkStatus();
}

StatusOr<Bytes> SecAggClient::MaskInput(const std::vector<double>& values, double weight, uint64_t seed,
                                        int64_t* clipped) {
  if (index_ == 0) return FailedPreconditionError("masked input before the roster");
  if (static_cast<int64_t>(values.size()) != params_.values) {
    return InvalidArgumentError("update has " + std::to_string(values.size()) +
                                " values; the round expects " + std::to_string(params_.values));
  }
  const double w = std::isfinite(weight) ? std::clamp(weight, 0.0, 1.0) : 0.0;
  std::vector<double> x(values.size());
  double norm2 = 0;
  for (size_t i = 0; i < values.size(); ++i) {
    x[i] = std::isfinite(values[i]) ? w * values[i] : 0.0;
    norm2 += x[i] * x[i];
  }
  const double norm = std::sqrt(norm2);
  if (params_.clip_norm > 0 && norm > params_.clip_norm) {
    const double s = params_.clip_norm / norm;
    for (double& v : x) v *= s;
  }
  Rotate(&x, params_.rotation_seed, /*inverse=*/false);
  std::mt19937_64 rng(seed != 0 ? seed : SeedFromCsprng());
  if (params_.noise_stddev > 0) {
    std::normal_distribution<double> noise(0.0, params_.noise_stddev);
    for (double& v : x) v += noise(rng);
  }
  std::vector<uint32_t> y = QuantizeToRing(x, params_.range, params_.ring, rng, clipped);
  // The weight rides as the last element, quantized over [0, 1].
  std::vector<uint32_t> wq = QuantizeToRing({w}, 1.0, params_.ring, rng);
  y.push_back(wq[0]);
  FEDGE_RETURN_IF_ERROR(AddPrgMask(self_seed_, params_.ring.bits, +1, &y));
  for (uint32_t v : partners_) {
    FEDGE_ASSIGN_OR_RETURN(Bytes pair, AgreeKey(mask_.private_key, neighbours_[v].mask_public_key,
                                                MaskContext(params_.context)));
    FEDGE_RETURN_IF_ERROR(AddPrgMask(pair, params_.ring.bits, index_ < v ? +1 : -1, &y));
  }
  return PackRing(y, params_.ring.bits);
}

StatusOr<std::vector<RevealedShare>> SecAggClient::Unmask(const UnmaskAsk& ask) {
  if (unmasked_) return FailedPreconditionError("this round's unmask shares were already given");
  std::set<uint32_t> survivors(ask.survivors.begin(), ask.survivors.end());
  std::set<uint32_t> dropped(ask.dropped.begin(), ask.dropped.end());
  if (!survivors.count(index_))
    return FailedPreconditionError("unmask ask does not list this agent as a survivor");
  const size_t floor = static_cast<size_t>(std::max(params_.threshold, 2));
  if (survivors.size() < floor) {
    return FailedPreconditionError("unmask ask lists " + std::to_string(survivors.size()) +
                                   " survivors; revealing needs at least " + std::to_string(floor) +
                                   " (a sum of fewer would expose an update)");
  }
  for (uint32_t d : dropped) {
    if (survivors.count(d)) {
      return FailedPreconditionError("unmask ask lists agent " + std::to_string(d) +
                                     " as survivor and dropped");
    }
  }
  unmasked_ = true;
  std::vector<RevealedShare> out;
  for (const auto& [owner, held] : held_) {
    if (survivors.count(owner)) {
      out.push_back(RevealedShare{owner, /*mask_key=*/false, held.seed_share});
    } else if (dropped.count(owner)) {
      out.push_back(RevealedShare{owner, /*mask_key=*/true, held.key_share});
    }
  }
  return out;
}

// ---------------------------------------------------------------- server

SecAggServer::SecAggServer(SecAggServerOptions options) : options_(std::move(options)) {
  invited_.insert(options_.invited.begin(), options_.invited.end());
  deadline_ms_ = options_.advertise_deadline_ms;
  params_.round = options_.round;
  params_.context = "fedge-secagg/" + options_.job + "/round-" + std::to_string(options_.round);
  params_.values = options_.values;
  params_.clip_norm = options_.clip_norm;
  params_.rotation_seed = options_.rotation_seed;
}

bool SecAggServer::IsInvited(const std::string& agent_id) const { return invited_.count(agent_id) > 0; }

bool SecAggServer::Advertised(const std::string& agent_id) const {
  return enc_keys_.count(agent_id) > 0 || members_.count(agent_id) > 0;
}

bool SecAggServer::FinishedFor(const std::string& agent_id) const {
  if (phase_ == SecAggPhase::kDone || phase_ == SecAggPhase::kFailed) return true;
  const Member* m = Find(agent_id);
  return m != nullptr && m->answered;
}

SecAggServer::Member* SecAggServer::Find(const std::string& agent_id) {
  auto it = members_.find(agent_id);
  return it == members_.end() ? nullptr : &it->second;
}
const SecAggServer::Member* SecAggServer::Find(const std::string& agent_id) const {
  auto it = members_.find(agent_id);
  return it == members_.end() ? nullptr : &it->second;
}

void SecAggServer::Fail(std::string why) {
  phase_ = SecAggPhase::kFailed;
  failure_ = std::move(why);
}

Status SecAggServer::Advertise(const std::string& agent_id, const Bytes& enc_public_key,
                               const Bytes& mask_public_key, int64_t now) {
  if (!IsInvited(agent_id)) return FailedPreconditionError("agent " + agent_id + " is not in this round");
  if (phase_ != SecAggPhase::kAdvertise) {
    if (Advertised(agent_id)) return OkStatus();  // a retried call
    return FailedPreconditionError("secure aggregation of round " + std::to_string(options_.round) +
                                   " no longer takes keys (phase " + std::string(SecAggPhaseName(phase_)) +
                                   ")");
  }
  if (enc_public_key.size() != kKeyBytes || mask_public_key.size() != kKeyBytes) {
    return InvalidArgumentError("secure-aggregation public keys must be 32-byte X25519 keys");
  }
  auto it = enc_keys_.find(agent_id);
  if (it != enc_keys_.end() && (it->second != enc_public_key || mask_keys_[agent_id] != mask_public_key)) {
    return FailedPreconditionError("agent " + agent_id + " already advertised other keys for this round");
  }
  enc_keys_[agent_id] = enc_public_key;
  mask_keys_[agent_id] = mask_public_key;
  Tick(now);
  return OkStatus();
}

void SecAggServer::CloseAdvertise(int64_t now) {
  // Indices in a seeded shuffle of the advertisers, so ring neighbours are not
  // whatever sorts together.
  for (const auto& [id, key] : enc_keys_) u1_.push_back(id);
  std::mt19937_64 rng(options_.rotation_seed ^ 0x5EC466u);
  for (size_t i = u1_.size(); i > 1; --i) std::swap(u1_[i - 1], u1_[rng() % i]);
  const size_t n = u1_.size();
  size_t k = n > 0 ? n - 1 : 0;
  if (options_.neighbours > 0 && static_cast<size_t>(options_.neighbours) < k) {
    k = static_cast<size_t>(options_.neighbours);
    k += k % 2;  // a ring: k / 2 on each side
    k = std::min(k, n - 1);
  }
  const int t = options_.threshold > 0 ? options_.threshold : static_cast<int>(k / 2 + 1);
  if (n < 2 || static_cast<size_t>(t) > k) {
    Fail("round " + std::to_string(options_.round) + ": " + std::to_string(n) + " of " +
         std::to_string(invited_.size()) +
         " invited agents advertised keys; secure aggregation needs at least " +
         std::to_string(std::max(2, t + 1)) + " (threshold " + std::to_string(t) + ")");
    return;
  }
  auto ring = ChooseRing(static_cast<int>(n));
  if (!ring.ok()) {
    Fail(ring.status().message());
    return;
  }
  params_.threshold = t;
  params_.ring = *ring;
  const double values = static_cast<double>(std::max<int64_t>(options_.values, 1));
  // Noise shares sized for every advertiser surviving; fewer survivors add less
  // (the round engine accounts for what was actually added).
  params_.noise_stddev = options_.noise_multiplier > 0
                             ? options_.noise_multiplier * options_.clip_norm / std::sqrt(double(n))
                             : 0;
  // A rotated coordinate of a vector of norm <= C has a spread of about C / sqrt(values);
  // 8 of those (plus the noise's) leaves clipping to far tails.
  const double spread = std::sqrt(options_.clip_norm * options_.clip_norm / values +
                                  params_.noise_stddev * params_.noise_stddev);
  params_.range = 8 * spread;
  if (params_.noise_stddev == 0) params_.range = std::min(params_.range, options_.clip_norm);
  if (!(params_.range > 0)) params_.range = 1;
  for (size_t i = 0; i < n; ++i) {
    Member m;
    m.agent_id = u1_[i];
    m.index = static_cast<uint32_t>(i + 1);
    m.enc_pk = enc_keys_[u1_[i]];
    m.mask_pk = mask_keys_[u1_[i]];
    if (k >= n - 1) {
      for (size_t j = 0; j < n; ++j) {
        if (j != i) m.neighbours.push_back(static_cast<uint32_t>(j + 1));
      }
    } else {
      for (size_t d = 1; d <= k / 2; ++d) {
        m.neighbours.push_back(static_cast<uint32_t>((i + d) % n + 1));
        m.neighbours.push_back(static_cast<uint32_t>((i + n - d) % n + 1));
      }
      std::sort(m.neighbours.begin(), m.neighbours.end());
    }
    members_[u1_[i]] = std::move(m);
  }
  phase_ = SecAggPhase::kShare;
  deadline_ms_ = now + options_.phase_timeout_ms;
}

StatusOr<std::optional<Roster>> SecAggServer::RosterFor(const std::string& agent_id) const {
  if (phase_ == SecAggPhase::kFailed)
    return FailedPreconditionError("secure aggregation failed: " + failure_);
  if (phase_ == SecAggPhase::kAdvertise) {
    if (!Advertised(agent_id)) return FailedPreconditionError("advertise keys first");
    return std::optional<Roster>();
  }
  const Member* m = Find(agent_id);
  if (m == nullptr) return FailedPreconditionError("agent " + agent_id + " missed the key advertisement");
  Roster r;
  r.index = m->index;
  r.params = params_;
  for (uint32_t j : m->neighbours) {
    const Member& n = members_.at(u1_[j - 1]);
    r.neighbours.push_back(PeerKeys{n.agent_id, n.index, n.enc_pk, n.mask_pk});
  }
  return std::optional<Roster>(std::move(r));
}

Status SecAggServer::ShareKeys(const std::string& agent_id, std::vector<EncryptedShare> shares, int64_t now) {
  Member* m = Find(agent_id);
  if (m == nullptr) return FailedPreconditionError("agent " + agent_id + " is not in this round's roster");
  if (m->shared && shares.empty()) return OkStatus();  // a poll after sharing
  if (phase_ != SecAggPhase::kShare) {
    if (m->shared) return OkStatus();  // a retried call
    return FailedPreconditionError("secure aggregation of round " + std::to_string(options_.round) +
                                   " no longer takes shares (phase " + std::string(SecAggPhaseName(phase_)) +
                                   ")");
  }
  std::set<uint32_t> want(m->neighbours.begin(), m->neighbours.end()), got;
  for (const EncryptedShare& s : shares) {
    if (s.from != m->index || !want.count(s.to) || !got.insert(s.to).second || s.ciphertext.size() > 4096) {
      return InvalidArgumentError("shares must go from your index " + std::to_string(m->index) +
                                  " to each of your neighbours exactly once");
    }
  }
  if (got.size() != want.size()) {
    return InvalidArgumentError("expected a share for each of your " + std::to_string(want.size()) +
                                " neighbours, got " + std::to_string(got.size()));
  }
  m->sent = std::move(shares);
  m->shared = true;
  Tick(now);
  return OkStatus();
}

void SecAggServer::CloseShare(int64_t now) {
  // An agent with fewer than t neighbours in U2 could not be unmasked: leave it out,
  // until every remaining one has enough.
  for (bool changed = true; changed;) {
    changed = false;
    for (auto& [id, m] : members_) {
      if (!m.shared) continue;
      int live = 0;
      for (uint32_t j : m.neighbours) live += members_.at(u1_[j - 1]).shared ? 1 : 0;
      if (live < params_.threshold) {
        m.shared = false;
        changed = true;
      }
    }
  }
  size_t u2 = 0;
  for (const auto& [id, m] : members_) u2 += m.shared ? 1 : 0;
  if (u2 < static_cast<size_t>(std::max(params_.threshold, 2))) {
    Fail("round " + std::to_string(options_.round) + ": only " + std::to_string(u2) +
         " agents completed the key sharing; secure aggregation needs at least " +
         std::to_string(std::max(params_.threshold, 2)));
    return;
  }
  sum_.assign(static_cast<size_t>(params_.values + 1), 0);
  phase_ = SecAggPhase::kMasked;
  deadline_ms_ = now + options_.phase_timeout_ms;
}

StatusOr<std::optional<std::vector<EncryptedShare>>> SecAggServer::InboxFor(
    const std::string& agent_id) const {
  if (phase_ == SecAggPhase::kFailed)
    return FailedPreconditionError("secure aggregation failed: " + failure_);
  const Member* m = Find(agent_id);
  if (m == nullptr) return FailedPreconditionError("agent " + agent_id + " is not in this round's roster");
  if (phase_ == SecAggPhase::kAdvertise || phase_ == SecAggPhase::kShare) {
    return std::optional<std::vector<EncryptedShare>>();
  }
  if (!m->shared)
    return FailedPreconditionError("agent " + agent_id + " was left out of this round's key sharing");
  std::vector<EncryptedShare> inbox;
  for (uint32_t j : m->neighbours) {
    const Member& n = members_.at(u1_[j - 1]);
    if (!n.shared) continue;
    for (const EncryptedShare& s : n.sent) {
      if (s.to == m->index) inbox.push_back(s);
    }
  }
  return std::optional<std::vector<EncryptedShare>>(std::move(inbox));
}

Status SecAggServer::SubmitMasked(const std::string& agent_id, uint64_t offset, const std::string& data,
                                  int64_t now, uint64_t* received) {
  Member* m = Find(agent_id);
  if (m == nullptr || !m->shared) {
    return FailedPreconditionError("agent " + agent_id + " is not a masking participant of this round");
  }
  const uint64_t total = MaskedInputBytes(params_);
  if (phase_ != SecAggPhase::kMasked) {
    if (m->masked) {
      *received = total;
      return OkStatus();
    }
    return FailedPreconditionError("secure aggregation of round " + std::to_string(options_.round) +
                                   " no longer takes masked inputs (phase " +
                                   std::string(SecAggPhaseName(phase_)) + ")");
  }
  if (m->masked) {
    *received = total;
    return OkStatus();
  }
  if (offset != m->buffer.size()) {
    *received = m->buffer.size();
    return FailedPreconditionError("masked input offset " + std::to_string(offset) +
                                   "; the aggregator holds " + std::to_string(m->buffer.size()) +
                                   " bytes: resume from there");
  }
  if (m->buffer.size() + data.size() > total) {
    return InvalidArgumentError("masked input longer than " + std::to_string(total) + " bytes");
  }
  m->buffer += data;
  *received = m->buffer.size();
  masked_bytes_ += data.size();
  if (m->buffer.size() == total) {
    auto input = UnpackRing(m->buffer, params_.ring.bits, static_cast<size_t>(params_.values + 1));
    if (!input.ok()) return input.status();
    if (options_.on_masked_input) options_.on_masked_input(agent_id, *input, params_);
    RingAdd(&sum_, *input, params_.ring.bits);
    std::string().swap(m->buffer);
    m->masked = true;
    Tick(now);
  }
  return OkStatus();
}

void SecAggServer::CloseMasked(int64_t now) {
  for (const auto& [id, m] : members_) {
    if (m.masked)
      u3_.push_back(m.index);
    else if (m.shared)
      dropped_.push_back(m.index);
  }
  std::sort(u3_.begin(), u3_.end());
  std::sort(dropped_.begin(), dropped_.end());
  if (u3_.size() < static_cast<size_t>(std::max(params_.threshold, 2))) {
    Fail("round " + std::to_string(options_.round) + ": " + std::to_string(u3_.size()) +
         " masked inputs arrived; secure aggregation needs at least " +
         std::to_string(std::max(params_.threshold, 2)));
    return;
  }
  phase_ = SecAggPhase::kUnmask;
  deadline_ms_ = now + options_.phase_timeout_ms;
}

StatusOr<std::optional<UnmaskAsk>> SecAggServer::UnmaskAskFor(const std::string& agent_id) const {
  if (phase_ == SecAggPhase::kFailed)
    return FailedPreconditionError("secure aggregation failed: " + failure_);
  const Member* m = Find(agent_id);
  if (m == nullptr) return FailedPreconditionError("agent " + agent_id + " is not in this round's roster");
  if (phase_ == SecAggPhase::kAdvertise || phase_ == SecAggPhase::kShare || phase_ == SecAggPhase::kMasked) {
    return std::optional<UnmaskAsk>();
  }
  if (!m->masked)
    return FailedPreconditionError("agent " + agent_id + "'s masked input did not arrive in time");
  return std::optional<UnmaskAsk>(UnmaskAsk{u3_, dropped_});
}

Status SecAggServer::Unmask(const std::string& agent_id, const std::vector<RevealedShare>& shares,
                            int64_t now) {
  Member* m = Find(agent_id);
  if (m == nullptr || !m->masked) return FailedPreconditionError("agent " + agent_id + " is not a survivor");
  if (m->answered || phase_ == SecAggPhase::kDone) return OkStatus();
  if (phase_ != SecAggPhase::kUnmask) {
    return FailedPreconditionError("secure aggregation of round " + std::to_string(options_.round) +
                                   " is not unmasking (phase " + std::string(SecAggPhaseName(phase_)) + ")");
  }
  const std::set<uint32_t> survivors(u3_.begin(), u3_.end()), dropped(dropped_.begin(), dropped_.end());
  std::vector<std::pair<uint32_t, ShamirShare>> seeds, keys;
  std::set<uint32_t> seen;
  for (const RevealedShare& r : shares) {
    const bool neighbour =
        std::binary_search(m->neighbours.begin(), m->neighbours.end(), r.owner) ||
        std::find(m->neighbours.begin(), m->neighbours.end(), r.owner) != m->neighbours.end();
    const bool right_kind = r.mask_key ? dropped.count(r.owner) > 0 : survivors.count(r.owner) > 0;
    if (!neighbour || !right_kind || !seen.insert(r.owner).second) {
      return InvalidArgumentError("unmask share for agent index " + std::to_string(r.owner) +
                                  " was not asked of you (or is of the wrong kind)");
    }
    auto share = DecodeShare(r.share);
    if (!share.ok()) return share.status();
    if (share->x != m->index) return InvalidArgumentError("unmask share does not carry your index");
    (r.mask_key ? keys : seeds).emplace_back(r.owner, std::move(*share));
  }
  for (auto& [owner, s] : seeds) seed_shares_[owner].push_back(std::move(s));
  for (auto& [owner, s] : keys) key_shares_[owner].push_back(std::move(s));
  m->answered = true;
  Tick(now);
  return OkStatus();
}

bool SecAggServer::TryFinish() {
  const size_t t = static_cast<size_t>(params_.threshold);
  for (uint32_t v : u3_) {
    if (seed_shares_[v].size() < t) return false;
  }
  for (uint32_t v : dropped_) {
    if (key_shares_[v].size() < t) return false;
  }
  std::vector<uint32_t> sum = sum_;
  const int bits = params_.ring.bits;
  for (uint32_t v : u3_) {
    auto seed = ShamirCombine(seed_shares_[v], params_.threshold, kKeyBytes);
    Status st = seed.ok() ? AddPrgMask(*seed, bits, -1, &sum) : seed.status();
    if (!st.ok()) {
      Fail("cannot remove the self mask of agent index " + std::to_string(v) + ": " + st.message());
      return true;
    }
  }
  const std::set<uint32_t> survivors(u3_.begin(), u3_.end());
  for (uint32_t v : dropped_) {
    auto key = ShamirCombine(key_shares_[v], params_.threshold, kKeyBytes);
    const Member& dv = members_.at(u1_[v - 1]);
    auto pub = key.ok() ? PublicKeyOf(*key) : StatusOr<Bytes>(key.status());
    if (!pub.ok() || *pub != dv.mask_pk) {
      Fail("the shares of dropped agent index " + std::to_string(v) + " do not give its advertised key");
      return true;
    }
    for (uint32_t w : dv.neighbours) {
      if (!survivors.count(w)) continue;
      const Member& mw = members_.at(u1_[w - 1]);
      auto pair = AgreeKey(*key, mw.mask_pk, MaskContext(params_.context));
      // w added sign(w, v) PRG(s_wv): take it away.
      Status st = pair.ok() ? AddPrgMask(*pair, bits, w < v ? -1 : +1, &sum) : pair.status();
      if (!st.ok()) {
        Fail("cannot remove the masks of dropped agent index " + std::to_string(v) + ": " + st.message());
        return true;
      }
    }
  }
  const std::vector<uint32_t> weight_elem(sum.end() - 1, sum.end());
  weight_sum_ = DecodeRing(weight_elem, 1.0, params_.ring)[0];
  sum.pop_back();
  weighted_sum_ = DecodeRing(sum, params_.range, params_.ring);
  Rotate(&weighted_sum_, params_.rotation_seed, /*inverse=*/true);
  phase_ = SecAggPhase::kDone;
  return true;
}

void SecAggServer::Tick(int64_t now) {
  for (int guard = 0; guard < 8; ++guard) {
    const SecAggPhase before = phase_;
    switch (phase_) {
      case SecAggPhase::kAdvertise:
        if (enc_keys_.size() == invited_.size() || now >= deadline_ms_) CloseAdvertise(now);
        break;
      case SecAggPhase::kShare: {
        bool all = true;
        for (const auto& [id, m] : members_) all = all && m.shared;
        if (all || now >= deadline_ms_) CloseShare(now);
        break;
      }
      case SecAggPhase::kMasked: {
        bool all = true;
        for (const auto& [id, m] : members_) all = all && (!m.shared || m.masked);
        if (all || now >= deadline_ms_) CloseMasked(now);
        break;
      }
      case SecAggPhase::kUnmask: {
        if (TryFinish()) break;
        bool all = true;
        for (uint32_t v : u3_) all = all && members_.at(u1_[v - 1]).answered;
        if (all || now >= deadline_ms_) {
          Fail("round " + std::to_string(options_.round) +
               ": too few unmask shares to remove the masks (threshold " + std::to_string(params_.threshold) +
               ")");
        }
        break;
      }
      case SecAggPhase::kDone:
      case SecAggPhase::kFailed:
        return;
    }
    if (phase_ == before) return;
  }
}

std::vector<std::string> SecAggServer::survivors() const {
  std::vector<std::string> out;
  for (uint32_t v : u3_) out.push_back(u1_[v - 1]);
  return out;
}

std::vector<std::string> SecAggServer::dropped() const {
  std::vector<std::string> out;
  for (uint32_t v : dropped_) out.push_back(u1_[v - 1]);
  return out;
}

}  // namespace fedge::secagg
