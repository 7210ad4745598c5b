// The secure-aggregation protocol (SecAgg, Bonawitz et al. 2017, with the sparse
// neighbourhoods of SecAgg+, Bell et al. 2020) as two plain classes: SecAggClient is
// one agent's side of one round, SecAggServer the aggregator's. No sockets, no
// clock: callers pass `now` and move the structs below over whatever transport they
// use (fedge: protocol v1's SecAgg* RPCs, proto/fedge.proto).
//
//   advertise  every invited agent sends two fresh X25519 public keys (share
//              encryption c_u, masking s_u). Closes when all invited agents did or
//              at the advertise deadline: U1. The server numbers U1 1..|U1| and
//              links each agent to k neighbours on a ring (k = `neighbours`; 0 or
//              >= |U1| - 1: everyone, plain SecAgg). Roster: index, neighbours' keys,
//              round parameters.
//   share      each agent Shamir-splits its self-mask seed b_u and its masking
//              private key s_u^SK t-of-k among its neighbours, encrypts each pair of
//              shares for its neighbour (AES-256-GCM, key from X25519(c_u, c_v),
//              bound to the job, round and both indices) and sends them through the
//              server. U2: senders (minus any left with fewer than t neighbours in
//              U2). Inbox: the shares addressed to you from U2 — their senders are
//              exactly your masking partners.
//   masked     y_u = q(x_u) + PRG(b_u) + sum_{partners v} sign(u, v) PRG(s_uv) mod
//              2^bits, s_uv from X25519(s_u, s_v) (sign + when u's index is lower).
//              q: weight, clip to clip_norm, rotate, quantize (ring.h); the last
//              element carries the weight. U3: complete inputs at close.
//   unmask     every agent of U3 is told U3 and U2 \ U3 and reveals, for each of its
//              partners, the share of b_v if v is in U3 or of s_v^SK if v dropped —
//              never both (one answer per round; it refuses fewer than
//              max(t, 2) survivors or itself missing). With t shares of each, the
//              server removes the self masks of U3 and the masks U3 shares with the
//              dropped agents; the pairwise masks inside U3 cancel. What is left is
//              sum_u q(x_u): the server decodes only that sum.
//
// Security (honest-but-curious server, as in the papers): the server sees masked
// inputs that are uniform in Z_2^bits, at most one secret per agent, and the sum of
// at least max(t, 2) inputs. t > k / 2 keeps a server that lies about who dropped
// from collecting both secrets of an agent. Not covered: an actively malicious
// server that hands agents inconsistent rosters (SecAgg's consistency-check round
// with signatures is not implemented) and malicious agents (a masked input cannot
// be checked for its norm).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "fedge/secagg/crypto.h"
#include "fedge/secagg/ring.h"
#include "fedge/secagg/shamir.h"
#include "fedge/status.h"

namespace fedge::secagg {

// What the roster publishes; the same for every participant of a round.
struct RoundParams {
  int64_t round = 0;
  std::string context;   // binds keys, shares and masks to the job and round
  int threshold = 0;     // shares that reconstruct a secret
  RingSpec ring;         // ring bits and integer levels per agent
  double range = 0;      // per-coordinate clip range after rotation
  double clip_norm = 0;  // L2 bound of the weighted update, applied by the agent
  int64_t values = 0;    // update values; a masked input has values + 1 elements
  uint64_t rotation_seed = 0;
  double noise_stddev = 0;  // distributed DP: Gaussian std each agent adds per value (0: none)
};

struct PeerKeys {
  std::string agent_id;
  uint32_t index = 0;
  Bytes enc_public_key;
  Bytes mask_public_key;
};

struct Roster {
  uint32_t index = 0;  // yours, >= 1
  RoundParams params;
  std::vector<PeerKeys> neighbours;
};

struct EncryptedShare {
  uint32_t from = 0;
  uint32_t to = 0;
  Bytes ciphertext;
};

// A share the server asked for in the unmask phase: of the owner's self-mask seed
// (owner survived) or of its masking private key (owner dropped).
struct RevealedShare {
  uint32_t owner = 0;
  bool mask_key = false;
  Bytes share;  // EncodeShare
};

struct UnmaskAsk {
  std::vector<uint32_t> survivors;  // U3
  std::vector<uint32_t> dropped;    // U2 \ U3
};

// Bytes of a masked input for `params`.
inline uint64_t MaskedInputBytes(const RoundParams& params) {
  return static_cast<uint64_t>(params.values + 1) * RingElementBytes(params.ring);
}

// One agent, one round. Not thread-safe.
class SecAggClient {
 public:
  // Fresh key pairs and self-mask seed from the CSPRNG.
  static StatusOr<SecAggClient> Create();

  const Bytes& enc_public_key() const { return enc_.public_key; }
  const Bytes& mask_public_key() const { return mask_.public_key; }

  // Encrypted shares for every neighbour of the roster. INVALID_ARGUMENT for a roster
  // that cannot be right (no index, threshold above the neighbours, bad keys).
  StatusOr<std::vector<EncryptedShare>> ShareKeys(const Roster& roster);

  // Decrypts the inbox; its senders become the masking partners. PERMISSION_DENIED
  // if a share does not authenticate, INVALID_ARGUMENT if it does not come from a
  // neighbour or is addressed to someone else.
  Status ReceiveShares(const std::vector<EncryptedShare>& inbox);

  // The masked input of `values` (the flattened update) with FedAvg weight
  // `weight` in [0, 1]: weight x values clipped to clip_norm, Gaussian noise of
  // noise_stddev added (distributed DP), rotated, quantized, masked. `seed` drives
  // the rounding and the noise (0: from the CSPRNG). `clipped` (optional): coordinates
  // clipped to the range. INVALID_ARGUMENT for the wrong number of values.
  StatusOr<Bytes> MaskInput(const std::vector<double>& values, double weight, uint64_t seed = 0,
                            int64_t* clipped = nullptr);

  // The shares the server asks for (see the file comment). FAILED_PRECONDITION if
  // called twice, or if the ask is unsafe (this agent not a survivor, fewer than
  // max(threshold, 2) survivors, an agent both survived and dropped).
  StatusOr<std::vector<RevealedShare>> Unmask(const UnmaskAsk& ask);

  uint32_t index() const { return index_; }
  const std::set<uint32_t>& partners() const { return partners_; }

 private:
  struct Held {  // a neighbour's shares of its secrets, held by this agent
    Bytes seed_share;
    Bytes key_share;
  };

  KeyPair enc_;
  KeyPair mask_;
  Bytes self_seed_;
  uint32_t index_ = 0;
  RoundParams params_;
  std::map<uint32_t, PeerKeys> neighbours_;
  std::map<uint32_t, Held> held_;
  std::set<uint32_t> partners_;
  bool unmasked_ = false;
};

enum class SecAggPhase { kAdvertise, kShare, kMasked, kUnmask, kDone, kFailed };
std::string_view SecAggPhaseName(SecAggPhase phase);

struct SecAggServerOptions {
  std::string job;
  int64_t round = 0;
  std::vector<std::string> invited;
  int threshold = 0;   // 0: floor(k / 2) + 1
  int neighbours = 0;  // k; 0: every other agent
  double clip_norm = 0;
  int64_t values = 0;  // update values (the global's element count)
  uint64_t rotation_seed = 0;
  // Distributed DP: sigma x clip_norm is split across the agents of U1, each adding
  // N(0, sigma^2 C^2 / |U1|). 0: none.
  double noise_multiplier = 0;
  int64_t advertise_deadline_ms = 0;
  int64_t phase_timeout_ms = 60'000;
  // Sees each complete masked input exactly as the server holds it (audits, tests).
  std::function<void(const std::string& agent_id, const std::vector<uint32_t>& input,
                     const RoundParams& params)>
      on_masked_input;
};

// The aggregator's side of one round. Not thread-safe (the round engine's mutex
// guards it). Errors are for the calling agent: FAILED_PRECONDITION when it is not
// its turn or it is not a participant, INVALID_ARGUMENT for malformed input.
class SecAggServer {
 public:
  explicit SecAggServer(SecAggServerOptions options);

  SecAggPhase phase() const { return phase_; }
  const std::string& failure() const { return failure_; }
  bool IsInvited(const std::string& agent_id) const;
  // True once the agent advertised keys (it is in the protocol for this round).
  bool Advertised(const std::string& agent_id) const;
  // True once the agent has nothing left to do this round.
  bool FinishedFor(const std::string& agent_id) const;

  Status Advertise(const std::string& agent_id, const Bytes& enc_public_key, const Bytes& mask_public_key,
                   int64_t now);
  // nullopt while keys are still being collected.
  StatusOr<std::optional<Roster>> RosterFor(const std::string& agent_id) const;

  // Once an agent's shares are in, a call with no shares is a poll (OK).
  Status ShareKeys(const std::string& agent_id, std::vector<EncryptedShare> shares, int64_t now);
  StatusOr<std::optional<std::vector<EncryptedShare>>> InboxFor(const std::string& agent_id) const;

  // One piece of a masked input at `offset`; `*received` = bytes held after it.
  Status SubmitMasked(const std::string& agent_id, uint64_t offset, const std::string& data, int64_t now,
                      uint64_t* received);

  StatusOr<std::optional<UnmaskAsk>> UnmaskAskFor(const std::string& agent_id) const;
  Status Unmask(const std::string& agent_id, const std::vector<RevealedShare>& shares, int64_t now);

  // Closes phases whose deadline passed (and any whose inputs are all in).
  void Tick(int64_t now);

  // kDone: sum of the survivors' weight x update (decoded, unrotated) and of their weights.
  const std::vector<double>& weighted_sum() const { return weighted_sum_; }
  double weight_sum() const { return weight_sum_; }
  std::vector<std::string> survivors() const;  // U3
  std::vector<std::string> dropped() const;    // U2 \ U3 (masks recovered)
  size_t advertised() const { return u1_.size(); }
  uint64_t masked_bytes() const { return masked_bytes_; }
  const RoundParams& params() const { return params_; }
  int64_t deadline_ms() const { return deadline_ms_; }

 private:
  struct Member {
    std::string agent_id;
    uint32_t index = 0;
    Bytes enc_pk, mask_pk;
    std::vector<uint32_t> neighbours;
    bool shared = false;  // in U2
    std::vector<EncryptedShare> sent;
    std::string buffer;     // masked input so far
    bool masked = false;    // in U3
    bool answered = false;  // unmask shares received
  };

  void CloseAdvertise(int64_t now);
  void CloseShare(int64_t now);
  void CloseMasked(int64_t now);
  // True when every secret needed has `threshold` shares (then reconstructs).
  bool TryFinish();
  void Fail(std::string why);
  Member* Find(const std::string& agent_id);
  const Member* Find(const std::string& agent_id) const;

  SecAggServerOptions options_;
  SecAggPhase phase_ = SecAggPhase::kAdvertise;
  std::string failure_;
  int64_t deadline_ms_ = 0;
  RoundParams params_;
  std::set<std::string> invited_;
  std::map<std::string, Bytes> enc_keys_, mask_keys_;  // advertised, before numbering
  std::vector<std::string> u1_;                        // by index - 1
  std::map<std::string, Member> members_;
  std::vector<uint32_t> u3_, dropped_;
  std::vector<uint32_t> sum_;
  uint64_t masked_bytes_ = 0;
  std::map<uint32_t, std::vector<ShamirShare>> seed_shares_, key_shares_;  // by owner
  std::vector<double> weighted_sum_;
  double weight_sum_ = 0;
};

}  // namespace fedge::secagg
