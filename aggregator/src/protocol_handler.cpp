#include "fedge/aggregator/protocol_handler.h"

#include <algorithm>
#include <set>

#include "fedge/job_spec_fields.h"
#include "fedge/log.h"

namespace fedge::aggregator {

namespace {

// The fixed header of an encoded bundle (docs/formats.md).
constexpr size_t kBundleHeaderBytes = 36;

UpdateMeta MetaFromHeader(const v1::UpdateHeader& header) {
  UpdateMeta meta;
  meta.agent_id = header.header().agent_id();
  meta.round = header.round();
  meta.base_version = header.base_version();
  meta.num_examples = header.num_examples();
  meta.is_delta = header.is_delta();
  meta.train_loss = header.train_loss();
  meta.steps = header.steps();
  meta.encoded_bytes = header.total_bytes();
  meta.feedback_examples = header.feedback_examples();
  if (header.has_evaluation()) {
    const v1::Evaluation& e = header.evaluation();
    EvalReport report;
    report.global_version = e.global_version();
    report.num_examples = e.num_examples();
    if (auto it = e.values().find("accuracy"); it != e.values().end()) report.accuracy = it->second;
    if (auto it = e.values().find("loss"); it != e.values().end()) report.loss = it->second;
    meta.evaluation = std::move(report);
  }
  return meta;
}

// Elements of `layout` by its shapes (a declared layout has no values).
uint64_t ShapeElements(const TensorBundle& layout) {
  uint64_t n = 0;
  for (const NamedTensor& t : layout.tensors)
    n += static_cast<uint64_t>(std::max<int64_t>(t.NumElements(), 0));
  return n;
}

// Capabilities.trainable_layout as a bundle without values, within the
// limits the decoder applies to any bundle.
StatusOr<TensorBundle> LayoutFromJoin(const v1::Capabilities& caps) {
  const DecodeLimits limits;
  TensorBundle layout;
  if (static_cast<uint64_t>(caps.trainable_layout_size()) > limits.max_tensors) {
    return InvalidArgumentError("capabilities.trainable_layout lists " +
                                std::to_string(caps.trainable_layout_size()) + " tensors, more than " +
                                std::to_string(limits.max_tensors));
  }
  std::set<std::string> names;
  uint64_t total = 0;
  for (const v1::TensorShape& t : caps.trainable_layout()) {
    const std::string what = "capabilities.trainable_layout \"" + t.name().substr(0, 64) + "\"";
    if (t.name().empty() || t.name().size() > limits.max_name_bytes) {
      return InvalidArgumentError(what + ": a tensor name must have 1.." +
                                  std::to_string(limits.max_name_bytes) + " bytes");
    }
    if (!names.insert(t.name()).second) return InvalidArgumentError(what + ": listed twice");
    if (static_cast<uint64_t>(t.dims_size()) > limits.max_rank) {
      return InvalidArgumentError(what + ": rank above " + std::to_string(limits.max_rank));
    }
    NamedTensor nt;
    nt.name = t.name();
    nt.shape.assign(t.dims().begin(), t.dims().end());
    const int64_t n = nt.NumElements();
    if (n < 0 || static_cast<uint64_t>(n) > limits.max_total_elements - total) {
      return InvalidArgumentError(what + ": negative dimension or more than " +
                                  std::to_string(limits.max_total_elements) + " elements in all");
    }
    total += static_cast<uint64_t>(n);
    layout.tensors.push_back(std::move(nt));
  }
  return layout;
}

// Why a revoked pod's token or session is refused (revoked_pods.h).
std::string RevokedPodMessage(const std::string& agent, const std::string& pod, const std::string& uid) {
  return "agent \"" + agent + "\" presented the token of pod " + (pod.empty() ? "" : pod + " ") + "(uid " +
         uid +
         "), which is being deleted, has ended or was gone before the operator began watching (the "
         "operator revoked it); only the node's current agent pod joins";
}

v1::SubmitUpdateResponse ToResponse(const UpdateVerdict& verdict) {
  v1::SubmitUpdateResponse r;
  r.set_accepted(verdict.accepted);
  r.set_reason(verdict.reason);
  r.set_reason_code(verdict.reason_label);
  r.set_round(verdict.round);
  return r;
}

}  // namespace

PartialUpload::~PartialUpload() {
  if (buffered) buffered->fetch_sub(data.size());
}

ProtocolHandler::ProtocolHandler(RoundEngine* engine, AggregatorMetrics* metrics, ProtocolOptions options)
    : engine_(engine), metrics_(metrics), options_(std::move(options)) {}

Status ProtocolHandler::CheckVersionAndJob(const v1::RequestHeader& header) const {
  if (header.protocol_version() != kProtocolVersion) {
    return FailedPreconditionError("protocol version " + std::to_string(header.protocol_version()) +
                                   " not supported; this aggregator speaks " +
                                   std::to_string(kProtocolVersion));
  }
  const std::string& job = engine_->options().job;
  if (header.job() != job) {
    return NotFoundError("job \"" + header.job() + "\" is not served here; this aggregator runs job \"" +
                         job + "\"");
  }
  if (header.agent_id().empty()) return InvalidArgumentError("header.agent_id is empty");
  return OkStatus();
}

Status ProtocolHandler::CheckHeader(const v1::RequestHeader& header) {
  FEDGE_RETURN_IF_ERROR(CheckVersionAndJob(header));
  FEDGE_RETURN_IF_ERROR(engine_->CheckSession(header.agent_id(), header.session()));
  if (!options_.token_verifier) return OkStatus();
  return CheckSessionToken(header);
}

Status ProtocolHandler::CheckSessionToken(const v1::RequestHeader& header) {
  const std::string& agent = header.agent_id();
  const int64_t now_s = options_.token_verifier->clock()->NowUnixMs() / 1000;
  std::unique_lock<std::mutex> lock(credentials_mu_);
  auto it = credentials_.find(agent);
  if (it == credentials_.end() || it->second.session != header.session()) {
    // The engine knows the session but no token established it (it cannot
    // happen while both live in this process; refuse rather than assume).
    return UnauthenticatedError("no token is on record for the session of agent \"" + agent + "\"; rejoin");
  }
  if (options_.revoked_pods) {
    const std::string pod_uid = it->second.pod_uid;
    const int64_t issued = it->second.issued_unix_s;
    lock.unlock();  // Revoked may re-read its file
    if (options_.revoked_pods->Revoked(pod_uid, issued)) {
      lock.lock();
      it = credentials_.find(agent);
      if (it != credentials_.end() && it->second.pod_uid == pod_uid) credentials_.erase(it);
      lock.unlock();
      if (metrics_) metrics_->SessionEnded("pod_gone");
      log::Warn("session ended: its pod is gone", {{"agent", agent}, {"pod_uid", pod_uid}});
      return PermissionDeniedError(RevokedPodMessage(agent, "", pod_uid));
    }
    lock.lock();
    it = credentials_.find(agent);
    if (it == credentials_.end() || it->second.session != header.session()) {
      return UnauthenticatedError("the session of agent \"" + agent + "\" was replaced; rejoin");
    }
  }
  if (!header.token().empty() && header.token() != it->second.token) {
    // A renewed token: verify it outside the lock (a signature check), then
    // record it if the session is still the one it was presented for.
    const std::string pod_uid = it->second.pod_uid;
    lock.unlock();
    std::string_view reason;
    auto claims = options_.token_verifier->Verify(header.token(), agent, &reason);
    if (!claims.ok() && claims.status().code() != StatusCode::kUnavailable) {
      if (metrics_) metrics_->SessionEnded("token_refused");
      log::Warn("renewed token refused",
                {{"agent", agent}, {"reason", reason}, {"error", claims.status().message()}});
      return Status(claims.status().code(), "the token presented in the session of agent \"" + agent +
                                                "\" was refused: " + claims.status().message());
    }
    if (claims.ok() && claims->pod_uid != pod_uid) {
      if (metrics_) metrics_->SessionEnded("other_pod");
      log::Warn("renewed token refused: another pod", {{"agent", agent},
                                                       {"pod", claims->pod_name},
                                                       {"pod_uid", claims->pod_uid},
                                                       {"session_pod_uid", pod_uid}});
      return PermissionDeniedError("agent \"" + agent + "\" presented the token of pod " + claims->pod_name +
                                   " (uid " + claims->pod_uid + ") in the session of pod uid " + pod_uid +
                                   "; a new pod joins again");
    }
    lock.lock();
    it = credentials_.find(agent);
    if (it == credentials_.end() || it->second.session != header.session()) {
      return UnauthenticatedError("the session of agent \"" + agent + "\" was replaced; rejoin");
    }
    // UNAVAILABLE: signed with a key the JWKS file does not hold yet; the
    // session goes on with the token it has and the next request retries.
    if (claims.ok() && claims->expires_unix_s > it->second.expires_unix_s) {
      it->second.token = header.token();
      it->second.expires_unix_s = claims->expires_unix_s;
    }
  }
  if (now_s > it->second.expires_unix_s + options_.session_grace_s) {
    const int64_t expired = it->second.expires_unix_s;
    credentials_.erase(it);
    lock.unlock();
    if (metrics_) metrics_->SessionEnded("token_expired");
    log::Warn("session ended: its token expired",
              {{"agent", agent}, {"token_expired_unix_s", expired}, {"grace_s", options_.session_grace_s}});
    return UnauthenticatedError("the newest token agent \"" + agent + "\" presented expired at unix " +
                                std::to_string(expired) + ", more than " +
                                std::to_string(options_.session_grace_s) +
                                " s ago (--agent-session-grace-seconds); rejoin with a fresh token");
  }
  return OkStatus();
}

Status ProtocolHandler::Join(const v1::JoinRequest& request, v1::JoinResponse* response) {
  FEDGE_RETURN_IF_ERROR(CheckVersionAndJob(request.header()));
  const std::string& agent = request.header().agent_id();
  std::string node_name = request.node_name();
  std::string pod_uid;
  int64_t token_expires_unix_s = 0;
  int64_t token_issued_unix_s = 0;
  if (options_.token_verifier) {
    // Size, then structure, then the signature, then the claims: the checks
    // cost the aggregator nothing until a token is shaped like one.
    std::string_view reason;
    auto claims = options_.token_verifier->Verify(request.token(), agent, &reason);
    if (!claims.ok()) {
      if (metrics_) metrics_->JoinRefused(reason);
      log::Warn("join refused", {{"agent", agent},
                                 {"node", request.node_name()},
                                 {"reason", reason},
                                 {"error", claims.status().message()}});
      return Status(claims.status().code(),
                    claims.status().message() + " (job \"" + engine_->options().job + "\")");
    }
    log::Info("agent token verified", {{"agent", agent},
                                       {"pod", claims->pod_name},
                                       {"pod_uid", claims->pod_uid},
                                       {"node", claims->node_name},
                                       {"token_expires_unix_s", claims->expires_unix_s}});
    if (options_.revoked_pods && options_.revoked_pods->Revoked(claims->pod_uid, claims->issued_unix_s)) {
      if (metrics_) metrics_->JoinRefused("pod_gone");
      log::Warn("join refused: the token's pod is gone",
                {{"agent", agent}, {"pod", claims->pod_name}, {"pod_uid", claims->pod_uid}});
      return PermissionDeniedError(RevokedPodMessage(agent, claims->pod_name, claims->pod_uid));
    }
    node_name = claims->node_name;  // the issuer's word, not the agent's
    pod_uid = claims->pod_uid;
    token_expires_unix_s = claims->expires_unix_s;
    token_issued_unix_s = claims->issued_unix_s;
  } else if (options_.token_file) {
    if (Status s = options_.token_file->Check(agent, request.token()); !s.ok()) {
      if (metrics_)
        metrics_->JoinRefused(s.code() == StatusCode::kUnavailable ? "unknown_agent" : "wrong_token");
      log::Warn("join refused", {{"agent", agent}, {"node", request.node_name()}, {"error", s.message()}});
      return Status(s.code(), s.message() + " for job \"" + engine_->options().job +
                                  "\"; check the agent's token secret");
    }
  } else if (!options_.tokens.empty()) {
    auto it = options_.tokens.find(agent);
    if (it == options_.tokens.end() || !TokenMatches(it->second, request.token())) {
      if (metrics_) metrics_->JoinRefused("wrong_token");
      log::Warn("join refused: bad token", {{"agent", agent}, {"node", request.node_name()}});
      return UnauthenticatedError("agent \"" + agent + "\" presented no valid token for job \"" +
                                  engine_->options().job + "\"; check the agent's token secret");
    }
  }
  // An agent that declares its codecs must offer the job's: it could never
  // upload an update the round would take. (Declaring none is allowed; every
  // upload is still checked against the job's codec.)
  const auto& codecs = request.capabilities().codecs();
  const std::string& job_codec = engine_->options().train.spec->compression.codec;
  if (!codecs.empty() && std::find(codecs.begin(), codecs.end(), job_codec) == codecs.end()) {
    std::string offered;
    for (const std::string& c : codecs) offered += (offered.empty() ? "" : ", ") + c;
    return FailedPreconditionError("agent \"" + agent + "\" offers the update codecs " + offered +
                                   " but job \"" + engine_->options().job + "\" uses " + job_codec +
                                   " (spec.compression.codec); run an agent that supports it");
  }
  AgentInfo info;
  info.node_name = node_name;
  info.num_train_examples = request.capabilities().num_train_examples();
  info.num_eval_examples = request.capabilities().num_eval_examples();
  info.evaluates_before_training = request.capabilities().evaluates_before_training();
  FEDGE_ASSIGN_OR_RETURN(info.layout, LayoutFromJoin(request.capabilities()));
  response->set_session(engine_->Join(agent, info));
  if (options_.token_verifier) {
    std::lock_guard<std::mutex> lock(credentials_mu_);
    SessionCredential& c = credentials_[agent];
    c.session = response->session();
    c.token = request.token();
    c.pod_uid = pod_uid;
    c.expires_unix_s = token_expires_unix_s;
    c.issued_unix_s = token_issued_unix_s;
  }
  response->set_protocol_version(kProtocolVersion);
  auto global = engine_->Global(0);
  response->set_global_version(global.ok() ? (*global)->version : 0);
  response->set_total_rounds(engine_->options().total_rounds);
  // Uploads verify with XXH3-128 (issue 14, item 2: SHA-256 was 57 us of
  // ~0.6 ms CPU per update). SHA-256 uploads of older agents stay accepted.
  response->set_upload_checksum(v1::CHECKSUM_XXH3_128);
  return OkStatus();
}

Status ProtocolHandler::GetTask(const v1::TaskRequest& request, v1::Task* response) {
  FEDGE_RETURN_IF_ERROR(CheckHeader(request.header()));
  TaskInfo task = engine_->GetTask(request.header().agent_id(), request.held_version());
  switch (task.kind) {
    case TaskKind::kWait:
      response->set_kind(v1::TASK_KIND_WAIT);
      break;
    case TaskKind::kInitialize:
      response->set_kind(v1::TASK_KIND_INITIALIZE);
      break;
    case TaskKind::kTrain:
      response->set_kind(v1::TASK_KIND_TRAIN);
      break;
    case TaskKind::kEvaluate:
      response->set_kind(v1::TASK_KIND_EVALUATE);
      break;
    case TaskKind::kDone:
      response->set_kind(v1::TASK_KIND_DONE);
      break;
  }
  response->set_round(task.round);
  response->set_global_version(task.global_version);
  response->set_global_checksum(task.global_checksum);
  response->set_deadline_unix_ms(task.deadline_unix_ms);
  response->set_retry_after_ms(task.retry_after_ms);
  response->set_message(task.message);
  response->set_evaluate_global(task.evaluate_global);
  if (task.kind == TaskKind::kTrain || task.kind == TaskKind::kInitialize ||
      task.kind == TaskKind::kEvaluate) {
    if (!task.config.spec) return InternalError("the engine handed out a task without the job spec");
    v1::TrainingConfig* c = response->mutable_config();
    // The spec's fields through the field table; then the round's own values.
    FEDGE_RETURN_IF_ERROR(TrainingToWire(*task.config.spec, c));
    if (task.config.learning_rate > 0) c->set_learning_rate(task.config.learning_rate);
    if (task.config.secure_aggregation) {
      c->mutable_secure_aggregation()->set_enabled(true);
      c->mutable_secure_aggregation()->set_clip_norm(task.config.secagg_clip_norm);
      c->mutable_secure_aggregation()->set_max_weight(task.config.secagg_max_weight);
    }
    if (task.kind == TaskKind::kTrain && task.config.scaffold_control) {
      c->mutable_scaffold()->set_enabled(true);
      c->mutable_scaffold()->set_control(*task.config.scaffold_control);
    }
  }
  return OkStatus();
}

Status ProtocolHandler::OpenFetch(const v1::FetchGlobalRequest& request, GlobalStream* stream) {
  FEDGE_RETURN_IF_ERROR(CheckHeader(request.header()));
  FEDGE_ASSIGN_OR_RETURN(stream->global, engine_->Global(request.version()));
  stream->chunk_bytes = std::clamp<size_t>(options_.chunk_bytes, 1, kMaxChunkBytes);
  stream->sent = 0;
  return OkStatus();
}

bool ProtocolHandler::NextChunk(GlobalStream* stream, v1::GlobalChunk* chunk) const {
  const std::string& bytes = stream->global->encoded;
  // An empty bundle still gets one (metadata) chunk.
  if (stream->started && stream->sent >= bytes.size()) return false;
  stream->started = true;
  const size_t offset = static_cast<size_t>(stream->sent);
  const size_t n = std::min(stream->chunk_bytes, bytes.size() - offset);
  chunk->set_version(stream->global->version);
  chunk->set_total_bytes(bytes.size());
  chunk->set_checksum(stream->global->checksum);
  chunk->set_offset(offset);
  chunk->set_data(bytes.data() + offset, n);
  stream->sent += n;
  return true;
}

bool ProtocolHandler::NextChunkWire(GlobalStream* stream, std::string* prefix, std::string_view* data) const {
  const std::string& bytes = stream->global->encoded;
  if (stream->started && stream->sent >= bytes.size()) return false;
  stream->started = true;
  const size_t offset = static_cast<size_t>(stream->sent);
  const size_t n = std::min(stream->chunk_bytes, bytes.size() - offset);
  v1::GlobalChunk head;  // every field but data (field 5, serialized last)
  head.set_version(stream->global->version);
  head.set_total_bytes(bytes.size());
  head.set_checksum(stream->global->checksum);
  head.set_offset(offset);
  prefix->clear();
  head.AppendToString(prefix);
  // The data field's tag (field 5, length-delimited) and its varint length.
  prefix->push_back(static_cast<char>((5 << 3) | 2));
  for (uint64_t v = n;; v >>= 7) {
    if (v < 0x80) {
      prefix->push_back(static_cast<char>(v));
      break;
    }
    prefix->push_back(static_cast<char>((v & 0x7f) | 0x80));
  }
  *data = std::string_view(bytes).substr(offset, n);
  stream->sent += n;
  return true;
}

void ProtocolHandler::CloseFetch(const GlobalStream& stream) { engine_->RecordBytesSent(stream.sent); }

Status ProtocolHandler::FetchGlobal(const v1::FetchGlobalRequest& request,
                                    const std::function<bool(const v1::GlobalChunk&)>& write) {
  GlobalStream stream;
  FEDGE_RETURN_IF_ERROR(OpenFetch(request, &stream));
  Status result;
  v1::GlobalChunk c;
  while (NextChunk(&stream, &c)) {
    if (!write(c)) {
      result =
          CancelledError("the agent closed the FetchGlobal stream at offset " + std::to_string(c.offset()));
      stream.sent = c.offset();
      break;
    }
  }
  CloseFetch(stream);
  return result;
}

v1::SubmitUpdateResponse ProtocolHandler::Reject(const v1::UpdateHeader& header, std::string_view label,
                                                 std::string reason) {
  if (metrics_) metrics_->UpdateRejected(label);
  log::Warn("update rejected",
            {{"agent", header.header().agent_id()}, {"round", header.round()}, {"reason", reason}});
  v1::SubmitUpdateResponse r;
  r.set_accepted(false);
  r.set_reason(std::move(reason));
  r.set_reason_code(std::string(label));
  r.set_round(header.round());
  return r;
}

Status ProtocolHandler::BeginUpdate(const v1::UpdateHeader& header, v1::SubmitUpdateResponse* rejection,
                                    bool* rejected) {
  *rejected = false;
  if (Status s = CheckHeader(header.header()); !s.ok()) {
    // Counted like content rejections: a flood of uploads from strangers shows.
    if (s.code() == StatusCode::kUnauthenticated && metrics_) {
      metrics_->UpdateRejected(engine_->IsJoined(header.header().agent_id()) ? "unknown_session"
                                                                             : "unknown_agent");
    }
    return s;
  }
  if (header.total_bytes() > options_.max_update_bytes) {
    *rejection = Reject(header, "too_large",
                        "update of " + std::to_string(header.total_bytes()) + " bytes exceeds the limit of " +
                            std::to_string(options_.max_update_bytes) + " bytes (--max-update-bytes)");
    *rejected = true;
    return OkStatus();
  }
  if (header.total_bytes() == 0) {
    *rejection = Reject(header, "bad_request", "update header declares total_bytes = 0");
    *rejected = true;
    return OkStatus();
  }
  // Everything the header alone decides is decided before any data arrives
  // (issue 10, item 3): a closed or future round, a non-participant, a
  // replay, a stale base or an upload larger than any encoding of the
  // global's layout costs the aggregator nothing.
  const UpdateMeta meta = MetaFromHeader(header);
  UpdateVerdict verdict = engine_->CheckUpdateHeader(meta);  // counts its own rejections
  if (!verdict.reason_label.empty()) {
    *rejection = ToResponse(verdict);
    *rejected = true;
    return OkStatus();
  }
  if (auto layout = engine_->ExpectedLayout(meta); layout != nullptr) {
    const uint64_t most = MaxEncodedBytes(*layout);
    if (header.total_bytes() > most) {
      *rejection = Reject(header, "too_large",
                          "update of " + std::to_string(header.total_bytes()) +
                              " bytes is larger than any encoding of the global model's layout (" +
                              std::to_string(most) + " bytes at most): it cannot be an update of this job");
      *rejected = true;
    }
  }
  return OkStatus();
}

v1::SubmitUpdateResponse ProtocolHandler::RejectLayout(const v1::UpdateHeader& header,
                                                       const std::string& what) {
  if (header.round() == 0 || !header.is_delta()) {
    // An initializer that sends another layout is not asked again.
    engine_->InitializerFailed(header.header().agent_id(), what);
    return Reject(header, "layout",
                  "the initial state does not have the trainable layout the majority of agents declared at "
                  "Join: " +
                      what);
  }
  return Reject(header, "layout", "update layout differs from the global model: " + what);
}

bool ProtocolHandler::AppendChunk(const v1::UpdateHeader& header, const std::string& chunk,
                                  std::string* buffer, v1::SubmitUpdateResponse* rejection) {
  if (metrics_) metrics_->BytesReceived(chunk.size());
  if (chunk.size() > kMaxChunkBytes) {
    *rejection = Reject(header, "bad_request",
                        "chunk of " + std::to_string(chunk.size()) + " bytes exceeds the 4 MiB chunk limit");
    return false;
  }
  if (buffer->size() + chunk.size() > header.total_bytes()) {
    *rejection = Reject(header, "size_mismatch",
                        "more data than the declared total_bytes " + std::to_string(header.total_bytes()));
    return false;
  }
  if (buffer->empty()) buffer->reserve(header.total_bytes());
  const size_t before = buffer->size();
  const bool had_header = before >= kBundleHeaderBytes;
  buffer->append(chunk);
  if (!had_header && buffer->size() >= kBundleHeaderBytes) {
    // The bundle's own header says how it is encoded and how many tensors
    // follow: a delta in another encoding than the job's (an agent uploading
    // fp32 in an int8 job, ignoring the task's config), or a tensor count other
    // than the global's, is refused before the rest of the body arrives. The
    // initial state (round 0, full state) is fp32 by contract.
    auto bh = InspectBundle(std::string_view(*buffer).substr(0, kBundleHeaderBytes));
    if (!bh.ok()) {
      *rejection = Reject(header, "decode", "cannot decode the update: " + bh.status().message());
      buffer->resize(before);  // a refused chunk leaves the buffer as it was
      return false;
    }
    if (header.is_delta() && header.round() > 0) {
      if (Status st = CheckBundleMatches(engine_->options().train.spec->compression, *bh); !st.ok()) {
        *rejection = Reject(header, "codec", st.message());
        buffer->resize(before);
        return false;
      }
    }
    if (auto layout = engine_->ExpectedLayout(MetaFromHeader(header)); layout != nullptr) {
      if (bh->tensor_count != layout->tensors.size()) {
        *rejection = RejectLayout(header, std::to_string(bh->tensor_count) + " tensors, expected " +
                                              std::to_string(layout->tensors.size()));
        buffer->resize(before);
        return false;
      }
    }
  }
  return true;
}

v1::SubmitUpdateResponse ProtocolHandler::FinishUpdate(const v1::UpdateHeader& header,
                                                       const std::string& data) {
  if (data.size() != header.total_bytes()) {
    return Reject(header, "size_mismatch",
                  "received " + std::to_string(data.size()) + " bytes, header declared " +
                      std::to_string(header.total_bytes()) + " (stream cut short?)");
  }
  // One pass for the declared checksum and the bundle's own trailer when
  // both use the same algorithm, as every agent's uploads do (DecodeBundle
  // takes the trailer verdict from it below).
  ChecksumAlgorithm algorithm;
  switch (header.checksum_algorithm()) {
    case v1::CHECKSUM_SHA256:
      algorithm = ChecksumAlgorithm::kSha256;
      break;
    case v1::CHECKSUM_XXH3_128:
      algorithm = ChecksumAlgorithm::kXxh3_128;
      break;
    default:
      return Reject(header, "checksum",
                    "unknown checksum_algorithm " + std::to_string(header.checksum_algorithm()) +
                        ": this aggregator verifies sha256 (0) and xxh3-128 (1); upgrade the aggregator "
                        "or send one of those");
  }
  const BundleChecksums checksums = ChecksumBundle(data, algorithm);
  if (checksums.hex != header.checksum()) {
    return Reject(header, "checksum",
                  "checksum mismatch (" + std::string(ChecksumAlgorithmName(algorithm)) +
                      "): the update was corrupted in transit; submit it again");
  }
  UpdateMeta meta = MetaFromHeader(header);
  // Decode limits from the global's actual layout (issue 10, item 3): a
  // compressed bundle that would expand past the global's size, or has other
  // tensors, is refused from its table, before any value is decoded.
  std::shared_ptr<const TensorBundle> layout = engine_->ExpectedLayout(meta);
  DecodeLimits limits;
  limits.max_encoded_bytes = options_.max_update_bytes;
  limits.checksums = &checksums;
  if (layout != nullptr) {
    limits.expected_layout = layout.get();
    limits.max_tensors = static_cast<uint32_t>(layout->tensors.size());
    limits.max_total_elements = std::max<uint64_t>(ShapeElements(*layout), 1);
  } else {
    // The initial state, before anyone knows the layout: at most
    // --max-update-bytes as float32.
    limits.max_total_elements = std::max<uint64_t>(options_.max_update_bytes / 4, 1);
  }
  auto bundle = DecodeBundle(data, limits);
  if (!bundle.ok()) {
    if (bundle.status().code() == StatusCode::kFailedPrecondition) {
      return RejectLayout(header, bundle.status().message());
    }
    return Reject(header, "decode", "cannot decode the update: " + bundle.status().message());
  }
  meta.encoded_bytes = data.size();
  meta.raw_bytes = header.raw_bytes() > 0 ? header.raw_bytes() : bundle->Fp32Bytes();
  return ToResponse(engine_->SubmitUpdate(meta, *bundle));  // counts its own rejections
}

namespace {

// Fields that identify the bytes of an upload: a resume must repeat them.
bool SameUpload(const v1::UpdateHeader& a, const v1::UpdateHeader& b) {
  return a.round() == b.round() && a.base_version() == b.base_version() &&
         a.total_bytes() == b.total_bytes() && a.checksum() == b.checksum() && a.is_delta() == b.is_delta();
}

}  // namespace

void ProtocolHandler::EraseUploadLocked(const std::string& key) {
  auto it = uploads_.find(key);
  if (it == uploads_.end()) return;
  upload_bytes_ -= it->second->header.total_bytes();
  uploads_.erase(it);
  if (metrics_) metrics_->SetPartialUploadBytes(upload_bytes_);
}

void ProtocolHandler::DropClosedUploadsLocked() {
  for (auto it = uploads_.begin(); it != uploads_.end();) {
    const PartialUpload& p = *it->second;
    if (!p.in_use && !engine_->AcceptsUpdatesFor(p.header.round())) {
      log::Info("partial upload dropped: its round closed", {{"agent", p.header.header().agent_id()},
                                                             {"upload_id", p.header.upload_id()},
                                                             {"round", p.header.round()},
                                                             {"received_bytes", p.received.load()}});
      upload_bytes_ -= p.header.total_bytes();
      it = uploads_.erase(it);
    } else {
      ++it;
    }
  }
  if (metrics_) metrics_->SetPartialUploadBytes(upload_bytes_);
}

void ProtocolHandler::DropClosedUploads() {
  std::lock_guard<std::mutex> lock(uploads_mu_);
  DropClosedUploadsLocked();
  if (metrics_) metrics_->SetUploadBufferBytes(buffered_->load());
}

size_t ProtocolHandler::partial_uploads() const {
  std::lock_guard<std::mutex> lock(uploads_mu_);
  return uploads_.size();
}

uint64_t ProtocolHandler::partial_bytes() const {
  std::lock_guard<std::mutex> lock(uploads_mu_);
  return upload_bytes_;
}

uint64_t ProtocolHandler::partial_received_bytes() const {
  std::lock_guard<std::mutex> lock(uploads_mu_);
  uint64_t n = 0;
  for (const auto& [key, p] : uploads_) n += p->received.load();
  return n;
}

Status ProtocolHandler::OpenUpload(const v1::UpdateHeader& header, UploadStream* stream,
                                   v1::SubmitUpdateResponse* rejection, bool* rejected) {
  FEDGE_RETURN_IF_ERROR(BeginUpdate(header, rejection, rejected));
  if (*rejected) return OkStatus();
  stream->header = header;
  stream->resumable = false;
  const uint64_t total = header.total_bytes();
  if (header.upload_id().empty()) {
    if (header.offset() != 0) {
      *rejection = Reject(
          header, "bad_request",
          "offset " + std::to_string(header.offset()) + " without an upload_id: only named uploads resume");
      *rejected = true;
      return OkStatus();
    }
    stream->partial = std::make_shared<PartialUpload>();
    stream->partial->header = header;
    stream->partial->buffered = buffered_;
    return OkStatus();
  }

  const std::string key = header.header().agent_id() + "\n" + header.upload_id();
  std::lock_guard<std::mutex> lock(uploads_mu_);
  DropClosedUploadsLocked();
  auto it = uploads_.find(key);
  if (it != uploads_.end() && !it->second->in_use && !SameUpload(it->second->header, header)) {
    // Same name, other bytes: the agent started over with a new update.
    EraseUploadLocked(key);
    it = uploads_.end();
  }
  if (it != uploads_.end()) {
    PartialUpload& p = *it->second;
    const uint64_t held = p.received.load();
    if (p.in_use) {
      *rejection = Reject(header, "upload_busy",
                          "upload \"" + header.upload_id() +
                              "\" is still being received on another stream; retry after it ends");
      rejection->set_resume_offset(held);
      *rejected = true;
      return OkStatus();
    }
    if (header.offset() != held) {
      *rejection = Reject(header, "bad_offset",
                          "upload \"" + header.upload_id() + "\" holds " + std::to_string(held) +
                              " bytes; resume with offset " + std::to_string(held) + ", not " +
                              std::to_string(header.offset()));
      rejection->set_resume_offset(held);
      *rejected = true;
      return OkStatus();
    }
    p.in_use = true;
    p.last_used = ++upload_clock_;
    stream->partial = it->second;
    stream->resumable = true;
    log::Info("upload resumed", {{"agent", header.header().agent_id()},
                                 {"upload_id", header.upload_id()},
                                 {"offset", held},
                                 {"total_bytes", total}});
    return OkStatus();
  }
  if (header.offset() != 0) {
    *rejection = Reject(header, "unknown_upload",
                        "no partial upload \"" + header.upload_id() +
                            "\" is held (its round closed, it was evicted or the aggregator restarted); "
                            "send it again from offset 0");
    *rejected = true;
    return OkStatus();
  }
  stream->partial = std::make_shared<PartialUpload>();
  stream->partial->key = key;
  stream->partial->header = header;
  stream->partial->buffered = buffered_;
  if (!engine_->AcceptsUpdatesFor(header.round())) return OkStatus();  // the engine will say why
  if (options_.max_partial_bytes == 0) return OkStatus();              // resumption disabled
  // One partial per agent: a new upload supersedes the agent's older ones.
  const std::string prefix = header.header().agent_id() + "\n";
  for (auto j = uploads_.lower_bound(prefix);
       j != uploads_.end() && j->first.compare(0, prefix.size(), prefix) == 0;) {
    if (j->second->in_use) {
      ++j;
      continue;
    }
    upload_bytes_ -= j->second->header.total_bytes();
    j = uploads_.erase(j);
  }
  if (metrics_) metrics_->SetPartialUploadBytes(upload_bytes_);
  while (upload_bytes_ + total > options_.max_partial_bytes) {
    auto victim = uploads_.end();
    for (auto j = uploads_.begin(); j != uploads_.end(); ++j) {
      if (!j->second->in_use &&
          (victim == uploads_.end() || j->second->last_used < victim->second->last_used)) {
        victim = j;
      }
    }
    if (victim == uploads_.end()) break;
    log::Warn("partial upload evicted: partial-upload budget full",
              {{"agent", victim->second->header.header().agent_id()},
               {"upload_id", victim->second->header.upload_id()},
               {"budget_bytes", options_.max_partial_bytes}});
    EraseUploadLocked(victim->first);
  }
  if (upload_bytes_ + total > options_.max_partial_bytes) {
    log::Warn("upload received without resumption: partial-upload budget full",
              {{"agent", header.header().agent_id()}, {"total_bytes", total}});
    return OkStatus();
  }
  stream->partial->in_use = true;
  stream->partial->last_used = ++upload_clock_;
  uploads_[key] = stream->partial;
  upload_bytes_ += total;
  if (metrics_) metrics_->SetPartialUploadBytes(upload_bytes_);
  stream->resumable = true;
  return OkStatus();
}

bool ProtocolHandler::AppendUpload(UploadStream* stream, const std::string& chunk,
                                   v1::SubmitUpdateResponse* rejection, Status* error) {
  PartialUpload& p = *stream->partial;
  // Counted as the bytes arrive (issue 10, item 7): many slow or unfinished
  // uploads cannot together hold more than the budget.
  const uint64_t n = chunk.size();
  uint64_t buffered = buffered_->fetch_add(n) + n;
  if (options_.max_upload_buffer_bytes > 0 && buffered > options_.max_upload_buffer_bytes) {
    // Uploads still arriving come before idle partial ones: drop those (least
    // recently used first) until this chunk fits.
    std::lock_guard<std::mutex> lock(uploads_mu_);
    while (buffered_->load() > options_.max_upload_buffer_bytes) {
      auto victim = uploads_.end();
      for (auto j = uploads_.begin(); j != uploads_.end(); ++j) {
        if (!j->second->in_use &&
            (victim == uploads_.end() || j->second->last_used < victim->second->last_used))
          victim = j;
      }
      if (victim == uploads_.end()) break;
      log::Warn("partial upload evicted: the upload buffer is full",
                {{"agent", victim->second->header.header().agent_id()},
                 {"upload_id", victim->second->header.upload_id()},
                 {"held_bytes", victim->second->received.load()},
                 {"buffer_bytes", options_.max_upload_buffer_bytes}});
      EraseUploadLocked(victim->first);  // its bytes go back when nobody holds it
    }
    buffered = buffered_->load();
  }
  if (metrics_) metrics_->SetUploadBufferBytes(buffered);
  if (options_.max_upload_buffer_bytes > 0 && buffered > options_.max_upload_buffer_bytes) {
    buffered_->fetch_sub(n);
    const std::string why = "the aggregator holds " + std::to_string(buffered - n) +
                            " bytes of incomplete uploads, its limit is " +
                            std::to_string(options_.max_upload_buffer_bytes) +
                            " (--max-upload-buffer-bytes); retry later";
    *rejection = Reject(stream->header, "buffer_full", why);
    if (error) *error = ResourceExhaustedError(why);
    if (stream->resumable) {
      // A named upload keeps what it holds: the agent resumes it later.
      std::lock_guard<std::mutex> lock(uploads_mu_);
      p.in_use = false;
      p.last_used = ++upload_clock_;
      stream->resumable = false;
    }
    return false;
  }
  if (!AppendChunk(stream->header, chunk, &p.data, rejection)) {
    buffered_->fetch_sub(n);
    if (stream->resumable) {
      std::lock_guard<std::mutex> lock(uploads_mu_);
      EraseUploadLocked(p.key);
      stream->resumable = false;
    }
    return false;
  }
  p.received.store(p.data.size());
  return true;
}

v1::SubmitUpdateResponse ProtocolHandler::CloseUpload(UploadStream* stream) {
  PartialUpload& p = *stream->partial;
  const uint64_t total = stream->header.total_bytes();
  if (stream->resumable && p.data.size() < total) {
    {
      std::lock_guard<std::mutex> lock(uploads_mu_);
      p.in_use = false;
      p.last_used = ++upload_clock_;
    }
    const uint64_t held = p.data.size();
    v1::SubmitUpdateResponse r =
        Reject(stream->header, "incomplete",
               "upload \"" + stream->header.upload_id() + "\" incomplete: " + std::to_string(held) + " of " +
                   std::to_string(total) + " bytes received; resume with offset " + std::to_string(held));
    r.set_resume_offset(held);
    return r;
  }
  if (stream->resumable) {
    std::lock_guard<std::mutex> lock(uploads_mu_);
    EraseUploadLocked(p.key);
    stream->resumable = false;
  }
  return FinishUpdate(stream->header, p.data);
}

void ProtocolHandler::ReleaseUpload(UploadStream* stream) {
  if (!stream->partial || !stream->resumable) return;
  std::lock_guard<std::mutex> lock(uploads_mu_);
  stream->partial->in_use = false;
}

Status ProtocolHandler::GetUploadStatus(const v1::UploadStatusRequest& request, v1::UploadStatus* response) {
  FEDGE_RETURN_IF_ERROR(CheckHeader(request.header()));
  std::lock_guard<std::mutex> lock(uploads_mu_);
  DropClosedUploadsLocked();
  auto it = uploads_.find(request.header().agent_id() + "\n" + request.upload_id());
  if (it == uploads_.end()) {
    response->set_found(false);
    response->set_message("no partial upload \"" + request.upload_id() + "\" is held; send it from offset 0");
    return OkStatus();
  }
  const PartialUpload& p = *it->second;
  response->set_found(true);
  response->set_received_bytes(p.received.load());
  response->set_total_bytes(p.header.total_bytes());
  response->set_round(p.header.round());
  response->set_message(p.in_use ? "still receiving on another stream" : "resume from received_bytes");
  return OkStatus();
}

Status ProtocolHandler::ReportMetrics(const v1::MetricsReport& request) {
  FEDGE_RETURN_IF_ERROR(CheckHeader(request.header()));
  if (request.phase() != "evaluate") {
    return InvalidArgumentError("phase \"" + request.phase() +
                                "\" is not reported to the aggregator; use \"evaluate\"");
  }
  EvalReport report;
  report.agent_id = request.header().agent_id();
  report.round = request.round();
  report.global_version = request.global_version();
  report.num_examples = request.num_examples();
  if (auto it = request.values().find("accuracy"); it != request.values().end()) report.accuracy = it->second;
  if (auto it = request.values().find("loss"); it != request.values().end()) report.loss = it->second;
  return engine_->ReportEvaluation(report);
}

}  // namespace fedge::aggregator
