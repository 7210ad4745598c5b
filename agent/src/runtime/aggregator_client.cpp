#include "fedge/agent/runtime/aggregator_client.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <optional>
#include <random>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "fedge/agent/runtime/metrics.h"
#include "fedge/agent/runtime/secagg_client.h"
#include "fedge/agent/runtime/serving_model.h"
#include "fedge/agent/runtime/update.h"
#include "fedge/job_spec_fields.h"
#include "fedge/log.h"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>

namespace fedge::agent {

namespace {

namespace v1 = fedge::v1;

// One connection attempt's budget (TCP + TLS + HTTP/2 handshake): gRPC's
// default, enough for a satellite or congested cellular link.
constexpr int kConnectTimeoutMs = 20'000;

std::chrono::system_clock::time_point DeadlineIn(std::chrono::milliseconds d) {
  return std::chrono::system_clock::now() + d;
}

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

std::string_view KindName(v1::TaskKind kind) {
  switch (kind) {
    case v1::TASK_KIND_WAIT:
      return "wait";
    case v1::TASK_KIND_INITIALIZE:
      return "initialize";
    case v1::TASK_KIND_TRAIN:
      return "train";
    case v1::TASK_KIND_EVALUATE:
      return "evaluate";
    case v1::TASK_KIND_DONE:
      return "done";
    default:
      return "unspecified";
  }
}

std::function<double()> MakeUniform(uint64_t seed) {
  if (seed == 0) seed = (static_cast<uint64_t>(std::random_device{}()) << 32) ^ std::random_device{}();
  auto rng = std::make_shared<std::mt19937_64>(seed);
  return [rng] { return std::uniform_real_distribution<double>(0.0, 1.0)(*rng); };
}

int64_t MemoryBytes() {
  long pages = ::sysconf(_SC_PHYS_PAGES);
  long page = ::sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? static_cast<int64_t>(pages) * page : 0;
}

}  // namespace

Status FromGrpc(const grpc::Status& status, std::string_view what) {
  if (status.ok()) return OkStatus();
  return Status(static_cast<StatusCode>(status.error_code()),
                std::string(what) + ": " + status.error_message());
}

std::shared_ptr<grpc::Channel> AggregatorClient::Dial(const std::string& address, const ChannelTls& tls) {
  grpc::ChannelArguments args;
  // A GlobalChunk is 4 MiB of data plus framing: above gRPC's default limit.
  args.SetMaxReceiveMessageSize(16 << 20);
  // gRPC's own reconnect backoff (default up to 120 s) would otherwise keep the
  // channel failing fast long after the aggregator is back.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 10'000);
  // Despite its name, GRPC_ARG_MIN_RECONNECT_BACKOFF_MS is the subchannel's
  // minimum connect timeout: the time one attempt gets for TCP, TLS and the
  // HTTP/2 settings exchange. It was 100 ms, so a link with more than ~50 ms
  // of round trip (or a loaded host) never connected: every attempt was shut
  // down ("tcp handshaker shutdown") and the next one too
  // (UploadResumeTest.ConnectsOverALinkSlowerThanTheOldConnectTimeout).
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, kConnectTimeoutMs);
  if (tls.root_ca_pem.empty()) {
    return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
  }
  // An address rewritten to an IP (pod runner, port-forward) still verifies the
  // certificate against the Service name it was issued for.
  if (!tls.server_name.empty()) args.SetSslTargetNameOverride(tls.server_name);
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = tls.root_ca_pem;
  ssl.pem_cert_chain = tls.cert_pem;
  ssl.pem_private_key = tls.key_pem;
  return grpc::CreateCustomChannel(address, grpc::SslCredentials(ssl), args);
}

AggregatorClient::AggregatorClient(std::shared_ptr<grpc::Channel> channel, ClientOptions options,
                                   ClientDeps deps)
    : options_(std::move(options)),
      deps_(deps),
      channel_(channel),
      stub_(v1::Aggregator::NewStub(channel)),
      backoff_(options_.backoff_initial, options_.backoff_max, MakeUniform(options_.jitter_seed)),
      encoder_(deps_.store != nullptr ? deps_.store->ResidualPath() : "", options_.job),
      scaffold_(deps_.store != nullptr ? deps_.store->ScaffoldControlPath() : "", options_.job) {
  if (deps_.trainer == nullptr || deps_.serving == nullptr || deps_.metrics == nullptr ||
      deps_.train_data == nullptr || deps_.eval_data == nullptr) {
    DieBecause("AggregatorClient needs trainer, serving, metrics, train_data and eval_data",
               InvalidArgumentError("missing dependency"));
  }
  options_.chunk_bytes = std::clamp<size_t>(options_.chunk_bytes, 1, kMaxChunkBytes);
  layout_ = deps_.trainer->ExportTrainable();
}

AggregatorClient::~AggregatorClient() = default;

void AggregatorClient::Restore(PersistedGlobal global) {
  held_.version = global.version;
  held_.checksum = std::move(global.checksum);
  held_.bundle = std::move(global.bundle);
}

void AggregatorClient::Stop() {
  stop_.Stop();
  std::lock_guard<std::mutex> lock(call_mu_);
  if (call_ != nullptr) call_->TryCancel();
}

bool AggregatorClient::BeginCall(grpc::ClientContext* ctx) {
  std::lock_guard<std::mutex> lock(call_mu_);
  // Stop() sets the flag before taking call_mu_: either we see it here or it
  // sees (and cancels) this call.
  if (stop_.stopped()) return false;
  call_ = ctx;
  return true;
}

void AggregatorClient::EndCall() {
  std::lock_guard<std::mutex> lock(call_mu_);
  call_ = nullptr;
}

Status AggregatorClient::Fatal(Status status) {
  fatal_ = status;
  return status;
}

v1::RequestHeader AggregatorClient::Header() const {
  v1::RequestHeader h;
  h.set_protocol_version(kProtocolVersion);
  h.set_job(options_.job);
  h.set_agent_id(options_.agent_id);
  h.set_session(session_);
  if (!options_.token_file.empty() && !session_.empty()) h.set_token(CurrentToken(/*force=*/false));
  return h;
}

std::string AggregatorClient::CurrentToken(bool force) const {
  std::lock_guard<std::mutex> lock(token_mu_);
  if (token_.empty()) token_ = options_.token;
  if (options_.token_file.empty()) return token_;
  const auto now = std::chrono::steady_clock::now();
  if (!force && token_read_.time_since_epoch().count() != 0 && now - token_read_ < options_.token_recheck) {
    return token_;
  }
  token_read_ = now;
  // The kubelet may have rotated the file since the last read (a projected
  // token lives 10 minutes); a failed read keeps the last token.
  auto token = ReadTokenFile(options_.token_file);
  if (token.ok()) {
    token_ = std::move(*token);
  } else {
    log::Warn("cannot re-read the token file; presenting the token read before",
              {{"path", options_.token_file}, {"error", token.status().ToString()}});
  }
  return token_;
}

StatusOr<RunOutcome> AggregatorClient::Run() {
  log::Info("aggregator client started", {{"job", options_.job}, {"agent_id", options_.agent_id}});
  while (!stop_.stopped()) {
    if (redial_) {
      if (std::shared_ptr<grpc::Channel> channel = redial_()) {
        channel_ = std::move(channel);
        stub_ = v1::Aggregator::NewStub(channel_);
      }
    }
    Status st;
    bool done = false;
    if (session_.empty()) {
      st = Join();
    } else {
      const auto asked = std::chrono::steady_clock::now();
      const std::chrono::milliseconds wait = TaskWait();
      auto task = GetTask();
      st = task.status();
      if (st.ok()) {
        switch (task->kind()) {
          case v1::TASK_KIND_WAIT: {
            // A long-poll the aggregator held (most of) its time: ask again
            // at once. An early WAIT means it did not hold the call: poll.
            if (wait.count() > 0 && std::chrono::steady_clock::now() - asked >= wait / 2) break;
            int ms = task->retry_after_ms() > 0 ? task->retry_after_ms() : 1000;
            ms = std::clamp(ms, 10, 60'000);
            log::Debug("waiting", {{"retry_after_ms", ms}, {"message", task->message()}});
            stop_.SleepFor(std::chrono::milliseconds(ms));
            break;
          }
          case v1::TASK_KIND_INITIALIZE:
            st = DoInitialize(*task);
            break;
          case v1::TASK_KIND_TRAIN:
            st = DoTrain(*task);
            break;
          case v1::TASK_KIND_EVALUATE:
            st = DoEvaluate(*task);
            break;
          case v1::TASK_KIND_DONE:
            st = DoDone(*task);
            done = st.ok();
            break;
          default:
            log::Warn("unknown task kind; waiting", {{"kind", static_cast<int>(task->kind())}});
            stop_.SleepFor(std::chrono::seconds(1));
            break;
        }
      }
    }
    if (!fatal_.ok()) {
      log::Error("aggregator client giving up", {{"error", fatal_.ToString()}});
      return fatal_;
    }
    if (stop_.stopped()) break;
    if (st.ok()) {
      backoff_.Reset();
      if (done) return RunOutcome::kDone;
      continue;
    }
    auto delay = backoff_.Next();
    switch (st.code()) {
      case StatusCode::kUnauthenticated:
      case StatusCode::kNotFound:
        // The aggregator no longer knows our session: most likely it restarted.
        if (!session_.empty()) {
          log::Warn("session lost; rejoining", {{"error", st.ToString()}, {"retry_in_ms", delay.count()}});
          session_.clear();
        } else {
          log::Error("join refused; retrying", {{"error", st.ToString()}, {"retry_in_ms", delay.count()}});
        }
        break;
      case StatusCode::kFailedPrecondition:
        log::Error("aggregator refused the request",
                   {{"error", st.ToString()}, {"retry_in_ms", delay.count()}});
        break;
      case StatusCode::kUnavailable:
      case StatusCode::kDeadlineExceeded:
        log::Warn(
            "aggregator unreachable; backing off",
            {{"error", st.ToString()}, {"attempt", backoff_.attempt()}, {"retry_in_ms", delay.count()}});
        break;
      default:
        log::Error("task failed; backing off", {{"error", st.ToString()}, {"retry_in_ms", delay.count()}});
        break;
    }
    const bool unreachable =
        st.code() == StatusCode::kUnavailable || st.code() == StatusCode::kDeadlineExceeded;
    if (!WaitPolling(delay, unreachable)) break;
  }
  log::Info("aggregator client stopped", {{"job", options_.job}});
  return RunOutcome::kStopped;
}

bool AggregatorClient::WaitPolling(std::chrono::milliseconds delay, bool until_connected) {
  if (channel_ == nullptr) return stop_.SleepFor(delay);
  const auto until = std::chrono::steady_clock::now() + delay;
  channel_->GetState(/*try_to_connect=*/true);
  while (!stop_.stopped()) {
    auto left = until - std::chrono::steady_clock::now();
    if (left <= std::chrono::steady_clock::duration::zero()) return true;
    // Short slices: Stop() must end the wait promptly (it cannot wake WaitForConnected).
    auto slice = std::min<std::chrono::steady_clock::duration>(left, std::chrono::milliseconds(200));
    bool ready = channel_->WaitForConnected(std::chrono::system_clock::now() + slice);
    if (ready && until_connected) return true;
    if (ready) stop_.SleepFor(std::chrono::duration_cast<std::chrono::milliseconds>(slice));
  }
  return false;
}

StatusOr<std::string> ReadTokenFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    std::string why = "cannot read token file " + path + ": " + std::strerror(err);
    return err == ENOENT ? NotFoundError(why) : UnavailableError(why);
  }
  // One byte past the limit tells a full file from an oversized one.
  std::string text(kMaxTokenFileBytes + 1, '\0');
  size_t got = 0;
  while (got < text.size()) {
    const ssize_t n = ::read(fd, text.data() + got, text.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      return UnavailableError("cannot read token file " + path + ": " + std::strerror(err));
    }
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  ::close(fd);
  if (got > kMaxTokenFileBytes) {
    return InvalidArgumentError("token file " + path + " holds more than " +
                                std::to_string(kMaxTokenFileBytes) + " bytes: it is not a token");
  }
  text.resize(got);
  const char* ws = " \t\r\n";
  const size_t first = text.find_first_not_of(ws);
  if (first == std::string::npos) return InvalidArgumentError("token file " + path + " is empty");
  return text.substr(first, text.find_last_not_of(ws) + 1 - first);
}

Status AggregatorClient::Join() {
  v1::JoinRequest req;
  session_.clear();
  *req.mutable_header() = Header();
  req.set_node_name(options_.node_name);
  req.set_token(CurrentToken(/*force=*/true));
  auto* caps = req.mutable_capabilities();
  for (const std::string& codec : CompressionCodecNames()) caps->add_codecs(codec);
  caps->set_num_train_examples(static_cast<int64_t>(deps_.train_data->size()));
  caps->set_num_eval_examples(static_cast<int64_t>(deps_.eval_data->size()));
  caps->set_evaluates_before_training(true);
  caps->set_model_family(options_.model_family);
  caps->set_cpus(static_cast<int32_t>(std::thread::hardware_concurrency()));
  caps->set_memory_bytes(MemoryBytes());
  // The aggregator takes the initial state only with the layout most agents declare.
  for (const NamedTensor& t : layout_.tensors) {
    v1::TensorShape* shape = caps->add_trainable_layout();
    shape->set_name(t.name);
    for (int64_t d : t.shape) shape->add_dims(d);
  }

  grpc::ClientContext ctx;
  ctx.set_deadline(DeadlineIn(options_.deadlines.join));
  if (!BeginCall(&ctx)) return CancelledError("stopping");
  v1::JoinResponse resp;
  grpc::Status gs = stub_->Join(&ctx, req, &resp);
  EndCall();
  if (!gs.ok()) {
    Status st = FromGrpc(gs, "Join " + options_.job);
    switch (st.code()) {
      case StatusCode::kFailedPrecondition:
        return Fatal(st.WithContext("protocol mismatch (this agent speaks v" +
                                    std::to_string(kProtocolVersion) + ")"));
      case StatusCode::kUnauthenticated: {
        // A projected token may be refused for a while and then not (expired
        // and about to be renewed, a clock being corrected): retry, re-reading
        // the file, before giving up. A static token would be refused forever.
        const auto now = std::chrono::steady_clock::now();
        if (!join_refused_since_) join_refused_since_ = now;
        if (!options_.token_file.empty() && now - *join_refused_since_ < options_.join_refusal_retry)
          return st;
        return Fatal(st.WithContext("the aggregator refused this agent's token (--token/--token-file)"));
      }
      case StatusCode::kPermissionDenied:
        // Mutual TLS: the client certificate names another agent than --agent-id; or the
        // token is another node's, or its pod's (revoked: the pod is being deleted).
        return Fatal(
            st.WithContext("the aggregator refused this agent (--agent-id with its token or --tls-cert)"));
      case StatusCode::kInvalidArgument:
        return Fatal(st);
      default:
        return st;
    }
  }
  if (resp.protocol_version() != kProtocolVersion) {
    return Fatal(FailedPreconditionError("aggregator answered Join with protocol v" +
                                         std::to_string(resp.protocol_version()) + "; this agent speaks v" +
                                         std::to_string(kProtocolVersion)));
  }
  if (resp.session().empty()) return InternalError("aggregator answered Join without a session");
  session_ = resp.session();
  join_refused_since_.reset();
  server_task_wait_ = std::chrono::milliseconds(resp.max_task_wait_ms());
  // A value this agent does not know (a newer aggregator) falls back to
  // SHA-256, which every aggregator verifies.
  upload_checksum_ = resp.upload_checksum() == v1::CHECKSUM_XXH3_128 ? ChecksumAlgorithm::kXxh3_128
                                                                     : ChecksumAlgorithm::kSha256;
  log::Info("joined", {{"job", options_.job},
                       {"agent_id", options_.agent_id},
                       {"global_version", resp.global_version()},
                       {"total_rounds", resp.total_rounds()}});
  return OkStatus();
}

std::chrono::milliseconds AggregatorClient::TaskWait() const {
  return std::max(std::chrono::milliseconds(0), std::min(options_.task_wait, server_task_wait_));
}

StatusOr<v1::Task> AggregatorClient::GetTask() {
  v1::TaskRequest req;
  *req.mutable_header() = Header();
  req.set_held_version(held_.version);
  const std::chrono::milliseconds wait = TaskWait();
  if (wait.count() > 0) req.set_wait_ms(static_cast<uint32_t>(wait.count()));
  grpc::ClientContext ctx;
  ctx.set_deadline(DeadlineIn(options_.deadlines.get_task + wait));
  if (!BeginCall(&ctx)) return CancelledError("stopping");
  v1::Task task;
  grpc::Status gs = stub_->GetTask(&ctx, req, &task);
  EndCall();
  if (!gs.ok()) return FromGrpc(gs, "GetTask");
  if (task.kind() != v1::TASK_KIND_WAIT) {
    log::Info("task", {{"kind", KindName(task.kind())},
                       {"round", task.round()},
                       {"global_version", task.global_version()},
                       {"codec", task.config().update_codec()}});
  }
  return task;
}

StatusOr<AggregatorClient::Held> AggregatorClient::Fetch(int64_t version, const std::string& checksum) {
  v1::FetchGlobalRequest req;
  *req.mutable_header() = Header();
  req.set_version(version);
  grpc::ClientContext ctx;
  ctx.set_deadline(DeadlineIn(options_.deadlines.fetch));
  if (!BeginCall(&ctx)) return CancelledError("stopping");
  auto reader = stub_->FetchGlobal(&ctx, req);
  ChunkAssembler assembler(version, checksum);
  Status bad;
  v1::GlobalChunk chunk;
  while (reader->Read(&chunk)) {
    deps_.metrics->bytes_received_total.Increment(static_cast<double>(chunk.data().size()));
    if (!bad.ok()) continue;
    bad = assembler.Add(chunk.version(), chunk.total_bytes(), chunk.checksum(), chunk.offset(), chunk.data());
    if (!bad.ok()) ctx.TryCancel();
  }
  grpc::Status gs = reader->Finish();
  EndCall();
  if (!bad.ok()) return bad;
  if (!gs.ok()) return FromGrpc(gs, "FetchGlobal v" + std::to_string(version));
  FEDGE_ASSIGN_OR_RETURN(std::string bytes, assembler.Finish());
  auto bundle = DecodeBundle(bytes);
  if (!bundle.ok())
    return bundle.status().WithContext("decoding global v" + std::to_string(assembler.version()));
  Status layout = CheckSameLayout(layout_, *bundle);
  if (!layout.ok()) {
    return Fatal(FailedPreconditionError(
        "global v" + std::to_string(assembler.version()) +
        " does not fit this agent's model (do the job's labels, LoRA rank and targets match?): " +
        layout.message()));
  }
  Held held;
  held.version = assembler.version();
  held.checksum = assembler.checksum();
  held.bundle = std::move(bundle).value();
  return held;
}

Status AggregatorClient::EnsureGlobal(int64_t version, const std::string& checksum) {
  if (held_.version != 0 && version == held_.version && (checksum.empty() || checksum == held_.checksum)) {
    return OkStatus();
  }
  auto start = std::chrono::steady_clock::now();
  FEDGE_ASSIGN_OR_RETURN(Held fetched, Fetch(version, checksum));
  held_ = std::move(fetched);
  double fetch_seconds = SecondsSince(start);
  auto install_start = std::chrono::steady_clock::now();
  Status st = deps_.serving->Install(held_.bundle, held_.version);
  if (!st.ok()) return Fatal(st);
  double install_seconds = SecondsSince(install_start);
  deps_.metrics->global_version.Set(static_cast<double>(held_.version));
  if (deps_.store != nullptr) {
    Status saved = deps_.store->SaveGlobal(held_.bundle, held_.version, held_.checksum);
    if (!saved.ok()) log::Warn("cannot persist the global model", {{"error", saved.ToString()}});
  }
  log::Info(
      "global installed",
      {{"version", held_.version}, {"fetch_seconds", fetch_seconds}, {"install_seconds", install_seconds}});
  return OkStatus();
}

namespace {

// Transport failures after which the aggregator may hold part of the upload.
bool Resumable(StatusCode code) {
  return code == StatusCode::kUnavailable || code == StatusCode::kDeadlineExceeded ||
         code == StatusCode::kInternal || code == StatusCode::kUnknown || code == StatusCode::kAborted ||
         code == StatusCode::kResourceExhausted;
}

// Unique per agent and update: a retrain of the same round is another upload.
std::string UploadId(const v1::UpdateHeader& h) {
  return (h.round() == 0 ? std::string("init") : "round-" + std::to_string(h.round())) + "-" +
         h.checksum().substr(0, 16);
}

}  // namespace

Status AggregatorClient::SendFrom(const v1::UpdateHeader& header, const std::string& payload, uint64_t offset,
                                  v1::SubmitUpdateResponse* resp) {
  grpc::ClientContext ctx;
  ctx.set_deadline(DeadlineIn(options_.deadlines.submit));
  if (!BeginCall(&ctx)) return CancelledError("stopping");
  auto writer = stub_->SubmitUpdate(&ctx, resp);
  v1::UpdateChunk first;
  *first.mutable_header() = header;
  first.mutable_header()->set_offset(offset);
  bool ok = writer->Write(first);
  uint64_t sent = 0;
  const std::string_view rest = std::string_view(payload).substr(std::min<uint64_t>(offset, payload.size()));
  for (std::string_view part : SplitChunks(rest, options_.chunk_bytes)) {
    if (!ok) break;
    if (part.empty()) continue;
    v1::UpdateChunk chunk;
    chunk.set_data(part.data(), part.size());
    ok = writer->Write(chunk);
    if (ok) sent += part.size();
  }
  if (ok) writer->WritesDone();
  grpc::Status gs = writer->Finish();
  EndCall();
  deps_.metrics->bytes_sent_total.Increment(static_cast<double>(sent));
  return FromGrpc(
      gs, "SubmitUpdate round " + std::to_string(header.round()) + " from byte " + std::to_string(offset));
}

StatusOr<uint64_t> AggregatorClient::HeldBytes(const std::string& upload_id, uint64_t total_bytes) {
  grpc::ClientContext ctx;
  ctx.set_deadline(DeadlineIn(options_.deadlines.report));
  if (!BeginCall(&ctx)) return CancelledError("stopping");
  v1::UploadStatusRequest req;
  *req.mutable_header() = Header();
  req.set_upload_id(upload_id);
  v1::UploadStatus status;
  grpc::Status gs = stub_->GetUploadStatus(&ctx, req, &status);
  EndCall();
  if (!gs.ok()) return FromGrpc(gs, "GetUploadStatus " + upload_id);
  if (!status.found() || status.total_bytes() != total_bytes || status.received_bytes() > total_bytes)
    return 0;
  return status.received_bytes();
}

Status AggregatorClient::Submit(const v1::UpdateHeader& header, const std::string& payload, bool* accepted) {
  *accepted = false;
  v1::UpdateHeader h = header;
  h.set_upload_id(UploadId(header));
  Backoff backoff(options_.backoff_initial, options_.backoff_max, MakeUniform(options_.jitter_seed));
  const int attempts = std::max(1, options_.upload_attempts);
  uint64_t offset = 0;
  for (int attempt = 1;; ++attempt) {
    v1::SubmitUpdateResponse resp;
    Status st = SendFrom(h, payload, offset, &resp);
    if (st.ok() && resp.accepted()) {
      *accepted = true;
      return OkStatus();
    }
    if (st.ok()) {
      // The aggregator answered. Only an upload it holds part of is worth another stream.
      const std::string& code = resp.reason_code();
      const bool resume = code == "incomplete" || code == "bad_offset" || code == "upload_busy";
      const bool restart = code == "unknown_upload" && offset > 0;
      if ((resume || restart) && attempt < attempts && !stop_.stopped()) {
        const uint64_t previous = offset;
        offset = restart ? 0 : std::min<uint64_t>(resp.resume_offset(), payload.size());
        // The server's per-agent stream limit answers upload_busy without an
        // offset (its old stream, cut by the link, is not closed yet): keep
        // resuming from where we were; starting over would resend what the
        // aggregator holds.
        const bool kept = code == "upload_busy" && resp.resume_offset() == 0;
        if (kept) offset = previous;
        log::Warn("upload interrupted; resuming", {{"round", h.round()},
                                                   {"upload_id", h.upload_id()},
                                                   {"reason", resp.reason()},
                                                   {"offset", offset},
                                                   {"attempt", attempt}});
        if (code == "upload_busy" && !stop_.SleepFor(backoff.Next())) return CancelledError("stopping");
        if (offset > 0 && !kept) deps_.metrics->upload_resumes_total.Increment();
        continue;
      }
      log::Warn("update rejected",
                {{"round", h.round()}, {"reason", resp.reason()}, {"reason_code", resp.reason_code()}});
      return OkStatus();
    }
    if (!Resumable(st.code()) || attempt >= attempts || stop_.stopped()) return st;
    // The stream broke. Ask the aggregator what it kept (retrying while it is
    // unreachable) and send the rest.
    for (;;) {
      auto delay = backoff.Next();
      log::Warn("upload broken; will resume", {{"round", h.round()},
                                               {"upload_id", h.upload_id()},
                                               {"error", st.ToString()},
                                               {"attempt", attempt},
                                               {"retry_in_ms", delay.count()}});
      if (!WaitPolling(delay, /*until_connected=*/true)) return CancelledError("stopping");
      auto held = HeldBytes(h.upload_id(), payload.size());
      if (held.ok()) {
        offset = *held;
        if (offset > 0) deps_.metrics->upload_resumes_total.Increment();
        log::Info("upload resuming",
                  {{"upload_id", h.upload_id()}, {"offset", offset}, {"total_bytes", payload.size()}});
        break;
      }
      st = held.status();
      if (!Resumable(st.code()) || ++attempt >= attempts) return st;
    }
  }
}

Status AggregatorClient::DoInitialize(const v1::Task& task) {
  auto start = std::chrono::steady_clock::now();
  TensorBundle state = deps_.trainer->ExportTrainable();
  // The full state travels in fp32 whatever the job's codec (the aggregator
  // checks deltas only), zstd as the job says.
  FEDGE_ASSIGN_OR_RETURN(JobSpec job, TrainingFromWire(task.config()));
  EncodeOptions eo;
  eo.codec = Codec::kFp32;
  eo.zstd = job.compression.zstd;
  eo.trailer = upload_checksum_;
  FEDGE_ASSIGN_OR_RETURN(std::string payload, EncodeBundle(state, eo));
  v1::UpdateHeader h;
  *h.mutable_header() = Header();
  h.set_round(0);
  h.set_base_version(0);
  h.set_num_examples(static_cast<int64_t>(deps_.train_data->size()));
  h.set_total_bytes(payload.size());
  h.set_checksum(ChecksumHex(upload_checksum_, payload));
  h.set_checksum_algorithm(upload_checksum_ == ChecksumAlgorithm::kXxh3_128 ? v1::CHECKSUM_XXH3_128
                                                                            : v1::CHECKSUM_SHA256);
  h.set_is_delta(false);
  h.set_raw_bytes(state.Fp32Bytes());
  bool accepted = false;
  FEDGE_RETURN_IF_ERROR(Submit(h, payload, &accepted));
  deps_.metrics->update_bytes.Set(static_cast<double>(payload.size()));
  deps_.metrics->update_raw_bytes.Set(static_cast<double>(state.Fp32Bytes()));
  log::Info("initial state submitted", {{"round", task.round()},
                                        {"bytes", payload.size()},
                                        {"raw_bytes", state.Fp32Bytes()},
                                        {"accepted", accepted},
                                        {"seconds", SecondsSince(start)}});
  return OkStatus();
}

Status AggregatorClient::DoTrain(const v1::Task& task) {
  auto start = std::chrono::steady_clock::now();
  FEDGE_RETURN_IF_ERROR(EnsureGlobal(task.global_version(), task.global_checksum()));
  const v1::TrainingConfig& c = task.config();
  // The job's fields as the task carries them (rounds.learningRate: this
  // round's rate); what the aggregator did not send keeps the spec's default.
  FEDGE_ASSIGN_OR_RETURN(JobSpec job, TrainingFromWire(c));
  const CompressionSpec& compression = job.compression;
  auto encode = EncodeOptionsFor(compression);
  if (!encode.ok()) {
    return FailedPreconditionError("round " + std::to_string(task.round()) + ": " +
                                   encode.status().message() + ", which this agent does not offer");
  }
  const std::string& codec_name = compression.codec;
  // The previous round's global, evaluated here instead of in an EVALUATE task
  // of its own: the same work in the same order, the result with the update.
  std::optional<v1::Evaluation> evaluation;
  if (task.evaluate_global()) {
    FEDGE_ASSIGN_OR_RETURN(evaluation, EvaluateHeld(task.round() - 1));
  }
  Status imported = deps_.trainer->ImportTrainable(held_.bundle);
  if (!imported.ok()) return Fatal(imported.WithContext("loading global v" + std::to_string(held_.version)));

  TrainOptions to;
  to.steps = job.rounds.localSteps;
  to.batch_size = job.rounds.batchSize;
  to.learning_rate = job.rounds.learningRate;
  to.weight_decay = job.rounds.weightDecay;
  to.max_grad_norm = job.rounds.maxGradNorm;
  to.proximal_mu = job.strategy.proximalMu;
  to.logit_adjustment = job.strategy.logitAdjustment;
  ApplyTrainerSpec(job, to);  // rounds.optimizerState, strategy.restrictedSoftmax
  to.seed = MixTrainingSeed(job.rounds.seed, options_.agent_id, task.round());
  // SCAFFOLD: correct every local step by c - c_i (c from the task, c_i from the node).
  std::optional<TensorBundle> scaffold_c;
  if (c.scaffold().enabled()) {
    if (!c.scaffold().control().empty()) {
      DecodeLimits limits;
      limits.expected_layout = &held_.bundle;
      auto decoded = DecodeBundle(c.scaffold().control(), limits);
      if (!decoded.ok()) {
        return decoded.status().WithContext("round " + std::to_string(task.round()) +
                                            ": the task's SCAFFOLD control variate");
      }
      scaffold_c = std::move(*decoded);
    }
    const std::optional<TensorBundle>& c_i = scaffold_.Get(task.round());
    FEDGE_ASSIGN_OR_RETURN(
        TensorBundle correction,
        ScaffoldCorrection(held_.bundle, scaffold_c ? &*scaffold_c : nullptr, c_i ? &*c_i : nullptr));
    to.step_correction = std::make_shared<const TensorBundle>(std::move(correction));
  }
  auto train_start = std::chrono::steady_clock::now();
  MixedTrainingSet mixed;
  if (deps_.training_set) mixed = deps_.training_set(*deps_.train_data, to.seed);
  const std::vector<Example>& train_set = deps_.training_set ? mixed.examples : *deps_.train_data;
  auto result = deps_.trainer->Train(train_set, to);
  if (!result.ok()) return result.status().WithContext("training round " + std::to_string(task.round()));
  double train_seconds = SecondsSince(train_start);
  if (stop_.stopped()) {
    log::Info("stopping: dropping the update of this round", {{"round", task.round()}});
    return OkStatus();
  }

  FEDGE_ASSIGN_OR_RETURN(TensorBundle delta, ComputeDelta(deps_.trainer->ExportTrainable(), held_.bundle));
  std::optional<TensorBundle> next_c_i;
  if (c.scaffold().enabled()) {
    // The aggregator derives Delta c_i from the delta with the task's K and eta.
    if (result->steps != to.steps) {
      return InternalError("SCAFFOLD: the trainer ran " + std::to_string(result->steps) +
                           " steps, the task asked for " + std::to_string(to.steps));
    }
    const std::optional<TensorBundle>& c_i = scaffold_.Get(task.round());
    FEDGE_ASSIGN_OR_RETURN(
        TensorBundle next,
        ScaffoldNextControl(delta, scaffold_c ? &*scaffold_c : nullptr, c_i ? &*c_i : nullptr,
                            static_cast<double>(to.steps) * to.learning_rate));
    next_c_i = std::move(next);
  }
  if (c.secure_aggregation().enabled()) {
    return SubmitSecurely(task, delta, deps_.train_data->size(), result->steps, result->mean_loss,
                          mixed.feedback_used);
  }
  UpdateCodecConfig cc;
  cc.encode = *encode;
  cc.encode.trailer = upload_checksum_;
  cc.error_feedback = compression.errorFeedback;
  auto encoded =
      encoder_.Encode(delta, cc, task.round(),
                      MixTrainingSeed(job.rounds.seed, options_.agent_id + "/rounding", task.round()));
  if (!encoded.ok())
    return encoded.status().WithContext("encoding the update of round " + std::to_string(task.round()));
  const std::string& payload = encoded->payload;

  v1::UpdateHeader h;
  *h.mutable_header() = Header();
  h.set_round(task.round());
  h.set_base_version(held_.version);
  h.set_num_examples(static_cast<int64_t>(deps_.train_data->size()));
  h.set_total_bytes(payload.size());
  h.set_checksum(ChecksumHex(upload_checksum_, payload));
  h.set_checksum_algorithm(upload_checksum_ == ChecksumAlgorithm::kXxh3_128 ? v1::CHECKSUM_XXH3_128
                                                                            : v1::CHECKSUM_SHA256);
  h.set_train_loss(result->mean_loss);
  h.set_steps(result->steps);
  h.set_is_delta(true);
  h.set_raw_bytes(delta.Fp32Bytes());
  h.set_feedback_examples(mixed.feedback_used);
  if (evaluation) *h.mutable_evaluation() = std::move(*evaluation);
  bool accepted = false;
  Status submitted = Submit(h, payload, &accepted);
  encoder_.Finish(accepted);  // keeps (and persists) the residual only if the update counted
  if (accepted && next_c_i) scaffold_.Set(std::move(*next_c_i), task.round());
  FEDGE_RETURN_IF_ERROR(submitted);

  deps_.metrics->update_raw_bytes_total.Increment(static_cast<double>(delta.Fp32Bytes()));
  deps_.metrics->update_encoded_bytes_total.Increment(static_cast<double>(payload.size()));
  deps_.metrics->error_feedback_residual_norm.Set(encoder_.ResidualNorm());
  deps_.metrics->train_steps_total.Increment(result->steps);
  deps_.metrics->train_loss.Set(result->mean_loss);
  deps_.metrics->update_bytes.Set(static_cast<double>(payload.size()));
  deps_.metrics->update_raw_bytes.Set(static_cast<double>(delta.Fp32Bytes()));
  if (accepted) deps_.metrics->rounds_participated_total.Increment();
  log::Info("round trained", {{"round", task.round()},
                              {"base_version", held_.version},
                              {"steps", result->steps},
                              {"loss", result->mean_loss},
                              {"feedback_examples", mixed.feedback_used},
                              {"codec", codec_name},
                              {"topk_fraction", cc.encode.topk_fraction},
                              {"error_feedback", cc.error_feedback && cc.Lossy()},
                              {"residual_applied", encoded->feedback_applied},
                              {"bytes", payload.size()},
                              {"raw_bytes", delta.Fp32Bytes()},
                              {"accepted", accepted},
                              {"train_seconds", train_seconds},
                              {"seconds", SecondsSince(start)}});
  return OkStatus();
}

Status AggregatorClient::SubmitSecurely(const v1::Task& task, const TensorBundle& delta, int64_t num_examples,
                                        int steps, double loss, int64_t feedback_examples) {
  SecAggHooks hooks;
  hooks.header = [this] { return Header(); };
  hooks.sleep = [this](std::chrono::milliseconds d) { return stop_.SleepFor(d); };
  hooks.begin_call = [this](grpc::ClientContext* ctx) { return BeginCall(ctx); };
  hooks.end_call = [this] { EndCall(); };
  hooks.before_phase = options_.secagg_before_phase;
  hooks.chunk_bytes = options_.chunk_bytes;
  hooks.feedback_examples = feedback_examples;
  FEDGE_ASSIGN_OR_RETURN(SecAggReport report,
                         RunSecureAggregation(stub_.get(), task.round(), task.config().secure_aggregation(),
                                              delta, num_examples, hooks));
  deps_.metrics->update_raw_bytes_total.Increment(static_cast<double>(delta.Fp32Bytes()));
  deps_.metrics->update_encoded_bytes_total.Increment(static_cast<double>(report.masked_bytes));
  deps_.metrics->update_bytes.Set(static_cast<double>(report.masked_bytes));
  deps_.metrics->update_raw_bytes.Set(static_cast<double>(delta.Fp32Bytes()));
  deps_.metrics->train_steps_total.Increment(steps);
  deps_.metrics->train_loss.Set(loss);
  if (report.unmasked) deps_.metrics->rounds_participated_total.Increment();
  log::Info("round trained (secure aggregation)", {{"round", task.round()},
                                                   {"steps", steps},
                                                   {"loss", loss},
                                                   {"feedback_examples", feedback_examples},
                                                   {"masked_bytes", report.masked_bytes},
                                                   {"bytes_sent", report.bytes_sent},
                                                   {"raw_bytes", delta.Fp32Bytes()},
                                                   {"ring_bits", report.ring_bits},
                                                   {"clipped_values", report.clipped},
                                                   {"unmasked", report.unmasked},
                                                   {"left_at", report.left_at},
                                                   {"mask_seconds", report.mask_seconds},
                                                   {"protocol_seconds", report.protocol_seconds}});
  return OkStatus();
}

StatusOr<v1::Evaluation> AggregatorClient::EvaluateHeld(int64_t round) {
  auto start = std::chrono::steady_clock::now();
  EvalResult eval;
  if (!deps_.eval_data->empty()) {
    Status imported = deps_.trainer->ImportTrainable(held_.bundle);
    if (!imported.ok())
      return Fatal(imported.WithContext("loading global v" + std::to_string(held_.version)));
    auto result = deps_.trainer->Evaluate(*deps_.eval_data, options_.eval_batch_size);
    if (!result.ok())
      return result.status().WithContext("evaluating global v" + std::to_string(held_.version));
    eval = *result;
  }
  v1::Evaluation out;
  out.set_global_version(held_.version);
  out.set_num_examples(eval.num_examples);
  // A causal LM has no accuracy; its held-out loss is the figure.
  const bool has_accuracy = options_.model_family != "llama";
  if (has_accuracy) (*out.mutable_values())["accuracy"] = eval.accuracy;
  (*out.mutable_values())["loss"] = eval.mean_loss;
  if (eval.num_examples > 0 && has_accuracy) deps_.metrics->eval_accuracy.Set(eval.accuracy);
  log::Info("evaluated", {{"round", round},
                          {"global_version", held_.version},
                          {"accuracy", eval.accuracy},
                          {"loss", eval.mean_loss},
                          {"examples", eval.num_examples},
                          {"seconds", SecondsSince(start)}});
  return out;
}

Status AggregatorClient::DoEvaluate(const v1::Task& task) {
  FEDGE_RETURN_IF_ERROR(EnsureGlobal(task.global_version(), task.global_checksum()));
  FEDGE_ASSIGN_OR_RETURN(v1::Evaluation eval, EvaluateHeld(task.round()));
  v1::MetricsReport report;
  *report.mutable_header() = Header();
  report.set_round(task.round());
  report.set_global_version(eval.global_version());
  report.set_phase("evaluate");
  report.set_num_examples(eval.num_examples());
  *report.mutable_values() = eval.values();
  grpc::ClientContext ctx;
  ctx.set_deadline(DeadlineIn(options_.deadlines.report));
  if (!BeginCall(&ctx)) return CancelledError("stopping");
  v1::MetricsAck ack;
  grpc::Status gs = stub_->ReportMetrics(&ctx, report, &ack);
  EndCall();
  if (!gs.ok()) return FromGrpc(gs, "ReportMetrics round " + std::to_string(task.round()));
  return OkStatus();
}

Status AggregatorClient::DoDone(const v1::Task& task) {
  if (task.global_version() > 0) {
    FEDGE_RETURN_IF_ERROR(EnsureGlobal(task.global_version(), task.global_checksum()));
    // Marked final: an agent restarted after the job (its pod recreated on the node)
    // serves it without looking for an aggregator that has gone (Agent::Run).
    if (deps_.store != nullptr && held_.version == task.global_version()) {
      Status saved = deps_.store->SaveGlobal(held_.bundle, held_.version, held_.checksum, /*final=*/true);
      if (!saved.ok()) log::Warn("cannot mark the global model final", {{"error", saved.ToString()}});
    }
  }
  log::Info("job done", {{"job", options_.job}, {"global_version", held_.version}});
  return OkStatus();
}

}  // namespace fedge::agent
