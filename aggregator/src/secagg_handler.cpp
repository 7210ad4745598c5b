// Protocol v1's SecAgg* RPCs: proto <-> secagg structs around RoundEngine::SecAgg*.
#include "fedge/aggregator/protocol_handler.h"

namespace fedge::aggregator {

namespace {

constexpr int kSecAggRetryMs = 50;  // polling interval while a phase collects

}  // namespace

Status ProtocolHandler::SecAggAdvertise(const v1::SecAggAdvertiseRequest& request,
                                        v1::SecAggRoster* response) {
  FEDGE_RETURN_IF_ERROR(CheckHeader(request.header()));
  FEDGE_ASSIGN_OR_RETURN(auto roster,
                         engine_->SecAggAdvertise(request.header().agent_id(), request.round(),
                                                  request.enc_public_key(), request.mask_public_key()));
  response->set_round(request.round());
  if (!roster) {
    response->set_ready(false);
    response->set_retry_after_ms(kSecAggRetryMs);
    return OkStatus();
  }
  const secagg::RoundParams& p = roster->params;
  response->set_ready(true);
  response->set_index(roster->index);
  response->set_context(p.context);
  response->set_threshold(p.threshold);
  response->set_ring_bits(static_cast<uint32_t>(p.ring.bits));
  response->set_levels(p.ring.levels);
  response->set_range(p.range);
  response->set_clip_norm(p.clip_norm);
  response->set_values(p.values);
  response->set_rotation_seed(p.rotation_seed);
  response->set_noise_stddev(p.noise_stddev);
  for (const secagg::PeerKeys& n : roster->neighbours) {
    v1::SecAggPeer* peer = response->add_neighbours();
    peer->set_agent_id(n.agent_id);
    peer->set_index(n.index);
    peer->set_enc_public_key(n.enc_public_key);
    peer->set_mask_public_key(n.mask_public_key);
  }
  return OkStatus();
}

Status ProtocolHandler::SecAggShareKeys(const v1::SecAggShareKeysRequest& request,
                                        v1::SecAggInbox* response) {
  FEDGE_RETURN_IF_ERROR(CheckHeader(request.header()));
  std::vector<secagg::EncryptedShare> shares;
  for (const v1::SecAggShare& s : request.shares()) shares.push_back({s.from(), s.to(), s.ciphertext()});
  FEDGE_ASSIGN_OR_RETURN(
      auto inbox, engine_->SecAggShareKeys(request.header().agent_id(), request.round(), std::move(shares)));
  if (!inbox) {
    response->set_ready(false);
    response->set_retry_after_ms(kSecAggRetryMs);
    return OkStatus();
  }
  response->set_ready(true);
  for (const secagg::EncryptedShare& s : *inbox) {
    v1::SecAggShare* out = response->add_shares();
    out->set_from(s.from);
    out->set_to(s.to);
    out->set_ciphertext(s.ciphertext);
  }
  return OkStatus();
}

Status ProtocolHandler::SecAggSubmitMasked(const v1::SecAggMaskedInput& request,
                                           v1::SecAggMaskedAck* response) {
  FEDGE_RETURN_IF_ERROR(CheckHeader(request.header()));
  if (request.data().size() > kMaxChunkBytes) {
    return InvalidArgumentError("masked input pieces are at most " + std::to_string(kMaxChunkBytes) +
                                " bytes");
  }
  uint64_t received = 0;
  Status st = engine_->SecAggSubmitMasked(request.header().agent_id(), request.round(), request.offset(),
                                          request.data(), &received, request.feedback_examples());
  response->set_received_bytes(received);
  response->set_complete(st.ok() && request.total_bytes() > 0 && received == request.total_bytes());
  return st;
}

Status ProtocolHandler::SecAggUnmask(const v1::SecAggUnmaskRequest& request,
                                     v1::SecAggUnmaskResponse* response) {
  FEDGE_RETURN_IF_ERROR(CheckHeader(request.header()));
  std::vector<secagg::RevealedShare> shares;
  for (const v1::SecAggRevealedShare& s : request.shares())
    shares.push_back({s.owner(), s.mask_key(), s.share()});
  FEDGE_ASSIGN_OR_RETURN(auto ask, engine_->SecAggUnmask(request.header().agent_id(), request.round(),
                                                         request.answer(), shares));
  if (request.answer()) {
    response->set_ready(true);
    response->set_done(true);
    return OkStatus();
  }
  if (!ask) {
    response->set_ready(false);
    response->set_retry_after_ms(kSecAggRetryMs);
    return OkStatus();
  }
  response->set_ready(true);
  for (uint32_t v : ask->survivors) response->add_survivors(v);
  for (uint32_t v : ask->dropped) response->add_dropped(v);
  return OkStatus();
}

}  // namespace fedge::aggregator
