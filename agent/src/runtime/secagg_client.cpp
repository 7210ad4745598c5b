#include "fedge/agent/runtime/secagg_client.h"

#include <algorithm>

#include "fedge/log.h"
#include "fedge/secagg/protocol.h"

namespace fedge::agent {

namespace {

namespace v1 = fedge::v1;
using Clock = std::chrono::steady_clock;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

Status FromGrpcStatus(const grpc::Status& s, std::string_view what) {
  if (s.ok()) return OkStatus();
  return Status(static_cast<StatusCode>(s.error_code()), std::string(what) + ": " + s.error_message());
}

// One unary call with the hooks' deadline and cancellation.
template <typename Req, typename Resp, typename Method>
Status Call(const SecAggHooks& hooks, Method method, const Req& req, Resp* resp, std::string_view what,
            SecAggReport* report) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + hooks.call_deadline);
  if (!hooks.begin_call(&ctx)) return CancelledError("stopping");
  grpc::Status gs = method(&ctx, req, resp);
  hooks.end_call();
  report->bytes_sent += req.ByteSizeLong();
  return FromGrpcStatus(gs, what);
}

}  // namespace

StatusOr<SecAggReport> RunSecureAggregation(v1::Aggregator::Stub* stub, int64_t round,
                                            const v1::SecureAggregationConfig& config,
                                            const TensorBundle& delta, int64_t num_examples,
                                            const SecAggHooks& hooks) {
  SecAggReport report;
  const auto start = Clock::now();
  Clock::duration work{};
  const std::string r = std::to_string(round);
  // The aggregator's FAILED_PRECONDITION: the round went on without this agent.
  auto left = [&](std::string where, const Status& why) -> StatusOr<SecAggReport> {
    report.left_at = where + ": " + why.message();
    report.protocol_seconds = Seconds(Clock::now() - start);
    report.mask_seconds = Seconds(work);
    log::Warn("left secure aggregation", {{"round", round}, {"phase", where}, {"reason", why.message()}});
    return report;
  };
  auto proceed = [&](std::string_view phase) { return !hooks.before_phase || hooks.before_phase(phase); };

  auto t0 = Clock::now();
  FEDGE_ASSIGN_OR_RETURN(secagg::SecAggClient client, secagg::SecAggClient::Create());
  work += Clock::now() - t0;

  // advertise -> roster
  v1::SecAggAdvertiseRequest adv;
  *adv.mutable_header() = hooks.header();
  adv.set_round(round);
  adv.set_enc_public_key(client.enc_public_key());
  adv.set_mask_public_key(client.mask_public_key());
  v1::SecAggRoster roster;
  for (;;) {
    roster.Clear();
    Status st = Call(
        hooks, [&](grpc::ClientContext* c, const auto& q, auto* p) { return stub->SecAggAdvertise(c, q, p); },
        adv, &roster, "SecAggAdvertise round " + r, &report);
    if (st.code() == StatusCode::kFailedPrecondition) return left("advertise", st);
    FEDGE_RETURN_IF_ERROR(st);
    if (roster.ready()) break;
    if (!hooks.sleep(std::chrono::milliseconds(std::clamp(roster.retry_after_ms(), 10, 5000)))) {
      return CancelledError("stopping");
    }
  }
  secagg::Roster ros;
  ros.index = roster.index();
  ros.params.round = round;
  ros.params.context = roster.context();
  ros.params.threshold = roster.threshold();
  ros.params.ring.bits = static_cast<int>(roster.ring_bits());
  ros.params.ring.levels = roster.levels();
  ros.params.range = roster.range();
  ros.params.clip_norm = roster.clip_norm();
  ros.params.values = roster.values();
  ros.params.rotation_seed = roster.rotation_seed();
  ros.params.noise_stddev = roster.noise_stddev();
  for (const v1::SecAggPeer& p : roster.neighbours()) {
    ros.neighbours.push_back({p.agent_id(), p.index(), p.enc_public_key(), p.mask_public_key()});
  }
  // The agent clips to the bound the job set, whatever the roster says.
  if (config.clip_norm() > 0 && !(ros.params.clip_norm > 0 && ros.params.clip_norm <= config.clip_norm())) {
    ros.params.clip_norm = config.clip_norm();
  }
  if (ros.params.values != delta.NumElements()) {
    return FailedPreconditionError("round " + r + " masks " + std::to_string(ros.params.values) +
                                   " values; this agent's update has " + std::to_string(delta.NumElements()));
  }
  report.values = ros.params.values;
  report.ring_bits = ros.params.ring.bits;

  // share -> inbox
  if (!proceed("share")) return left("share", CancelledError("dropped out before sharing (fault injection)"));
  t0 = Clock::now();
  auto shares = client.ShareKeys(ros);
  work += Clock::now() - t0;
  if (!shares.ok()) return shares.status().WithContext("secure aggregation roster of round " + r);
  v1::SecAggShareKeysRequest share_req;
  *share_req.mutable_header() = hooks.header();
  share_req.set_round(round);
  for (const secagg::EncryptedShare& s : *shares) {
    v1::SecAggShare* out = share_req.add_shares();
    out->set_from(s.from);
    out->set_to(s.to);
    out->set_ciphertext(s.ciphertext);
  }
  v1::SecAggInbox inbox;
  for (;;) {
    inbox.Clear();
    Status st = Call(
        hooks, [&](grpc::ClientContext* c, const auto& q, auto* p) { return stub->SecAggShareKeys(c, q, p); },
        share_req, &inbox, "SecAggShareKeys round " + r, &report);
    if (st.code() == StatusCode::kFailedPrecondition) return left("share", st);
    FEDGE_RETURN_IF_ERROR(st);
    if (inbox.ready()) break;
    share_req.clear_shares();  // they are in: poll without resending them
    if (!hooks.sleep(std::chrono::milliseconds(std::clamp(inbox.retry_after_ms(), 10, 5000)))) {
      return CancelledError("stopping");
    }
  }
  std::vector<secagg::EncryptedShare> received;
  for (const v1::SecAggShare& s : inbox.shares()) received.push_back({s.from(), s.to(), s.ciphertext()});
  t0 = Clock::now();
  if (Status st = client.ReceiveShares(received); !st.ok()) {
    return st.WithContext("secure aggregation inbox of round " + r);
  }

  // masked input
  if (!proceed("masked"))
    return left("masked", CancelledError("dropped out before masking (fault injection)"));
  std::vector<double> values;
  values.reserve(static_cast<size_t>(delta.NumElements()));
  for (const NamedTensor& t : delta.tensors) values.insert(values.end(), t.values.begin(), t.values.end());
  const double weight = config.max_weight() > 0
                            ? std::min(1.0, static_cast<double>(std::max<int64_t>(num_examples, 0)) /
                                                static_cast<double>(config.max_weight()))
                            : 1.0;
  auto masked = client.MaskInput(values, weight, hooks.seed, &report.clipped);
  work += Clock::now() - t0;
  if (!masked.ok()) return masked.status().WithContext("masking the update of round " + r);
  report.masked_bytes = masked->size();
  uint64_t offset = 0;
  int resumes = 0;
  while (offset < masked->size()) {
    v1::SecAggMaskedInput piece;
    *piece.mutable_header() = hooks.header();
    piece.set_round(round);
    piece.set_offset(offset);
    piece.set_total_bytes(masked->size());
    piece.set_data(masked->substr(offset, std::min<uint64_t>(hooks.chunk_bytes, masked->size() - offset)));
    piece.set_feedback_examples(hooks.feedback_examples);
    v1::SecAggMaskedAck ack;
    Status st = Call(
        hooks,
        [&](grpc::ClientContext* c, const auto& q, auto* p) { return stub->SecAggSubmitMasked(c, q, p); },
        piece, &ack, "SecAggSubmitMasked round " + r, &report);
    if (st.code() == StatusCode::kFailedPrecondition && ack.received_bytes() != offset && resumes++ < 3) {
      offset = ack.received_bytes();  // the aggregator holds another amount: go on from there
      continue;
    }
    if (st.code() == StatusCode::kFailedPrecondition) return left("masked", st);
    FEDGE_RETURN_IF_ERROR(st);
    offset = std::max<uint64_t>(ack.received_bytes(), offset + piece.data().size());
  }
  log::Info("masked input sent", {{"round", round}, {"bytes", masked->size()}});

  // unmask
  if (!proceed("unmask"))
    return left("unmask", CancelledError("dropped out before unmasking (fault injection)"));
  v1::SecAggUnmaskRequest ask_req;
  *ask_req.mutable_header() = hooks.header();
  ask_req.set_round(round);
  v1::SecAggUnmaskResponse ask;
  for (;;) {
    ask.Clear();
    Status st = Call(
        hooks, [&](grpc::ClientContext* c, const auto& q, auto* p) { return stub->SecAggUnmask(c, q, p); },
        ask_req, &ask, "SecAggUnmask round " + r, &report);
    if (st.code() == StatusCode::kFailedPrecondition) return left("unmask", st);
    FEDGE_RETURN_IF_ERROR(st);
    if (ask.ready()) break;
    if (!hooks.sleep(std::chrono::milliseconds(std::clamp(ask.retry_after_ms(), 10, 5000)))) {
      return CancelledError("stopping");
    }
  }
  secagg::UnmaskAsk what;
  what.survivors.assign(ask.survivors().begin(), ask.survivors().end());
  what.dropped.assign(ask.dropped().begin(), ask.dropped().end());
  t0 = Clock::now();
  auto reveal = client.Unmask(what);
  work += Clock::now() - t0;
  if (!reveal.ok()) {
    // An unsafe ask: refuse to reveal anything (the round fails without this agent's shares).
    log::Error("refused an unsafe unmask request", {{"round", round}, {"reason", reveal.status().message()}});
    return reveal.status().WithContext("secure aggregation unmask of round " + r);
  }
  v1::SecAggUnmaskRequest answer;
  *answer.mutable_header() = hooks.header();
  answer.set_round(round);
  answer.set_answer(true);
  for (const secagg::RevealedShare& s : *reveal) {
    v1::SecAggRevealedShare* out = answer.add_shares();
    out->set_owner(s.owner);
    out->set_mask_key(s.mask_key);
    out->set_share(s.share);
  }
  v1::SecAggUnmaskResponse done;
  Status st = Call(
      hooks, [&](grpc::ClientContext* c, const auto& q, auto* p) { return stub->SecAggUnmask(c, q, p); },
      answer, &done, "SecAggUnmask round " + r, &report);
  if (st.code() == StatusCode::kFailedPrecondition) return left("unmask", st);
  FEDGE_RETURN_IF_ERROR(st);
  report.unmasked = true;
  report.protocol_seconds = Seconds(Clock::now() - start);
  report.mask_seconds = Seconds(work);
  return report;
}

}  // namespace fedge::agent
