#include "fedge/aggregator/server.h"

#include <grpcpp/grpcpp.h>
#include <grpcpp/resource_quota.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <map>
#include <set>

#include "fedge.grpc.pb.h"
#include "fedge/aggregator/peer_identity.h"
#include "fedge/http_server.h"
#include "fedge/log.h"
#include "json_util.h"

namespace fedge::aggregator {
namespace {

grpc::Status ToGrpc(const Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), s.message());
}

}  // namespace

// The gRPC adapter: moves messages between streams and the ProtocolHandler.
// Every method uses gRPC's async completion-queue API: ServerOptions::
// grpc_threads completion queues (2 by default), each drained by one thread
// that also polls the sockets, so a message is read, handled and answered on
// the thread whose queue it belongs to. gRPC 1.51's callback API ran the same
// work on two CallbackAlternativeCQ threads handing completions to each other
// through futexes (5.3 context switches per agent round against 1.1 with one
// queue, 3.1 with two; bench/grpc_api_bench.cpp, aggregator/README.md
// "Session 22"). A call waiting for its peer holds no
// thread (issue 10, item 7: 200 half-open streams made 200 threads with the
// synchronous API): every call is a small state machine with at most one
// operation in flight, whose completion tag is the call itself. The in-flight
// limits live here:
//   - at most max_open_streams SubmitUpdate + FetchGlobal streams at once;
//   - per agent (after its session is checked) one SubmitUpdate and
//     kFetchesPerAgent FetchGlobal streams;
//   - a SubmitUpdate stream must send its header within
//     stream_header_timeout_ms, and any stream that moves no message for
//     stream_idle_timeout_ms is cancelled (CancelStalled, from the ticker);
//   - upload bytes are counted as they arrive (ProtocolHandler,
//     max_upload_buffer_bytes).
//   - FetchGlobal is a raw method (ByteBuffer): the global's bytes go out as
//     slices that reference the engine's encoded GlobalModel, never copied
//     per fetch (ProtocolHandler::NextChunkWire).
using AsyncAggregator = v1::Aggregator::WithAsyncMethod_Join<v1::Aggregator::WithAsyncMethod_GetTask<
    v1::Aggregator::WithRawMethod_FetchGlobal<v1::Aggregator::WithAsyncMethod_SubmitUpdate<
        v1::Aggregator::WithAsyncMethod_ReportMetrics<v1::Aggregator::WithAsyncMethod_GetUploadStatus<
            v1::Aggregator::WithAsyncMethod_SecAggAdvertise<v1::Aggregator::WithAsyncMethod_SecAggShareKeys<
                v1::Aggregator::WithAsyncMethod_SecAggSubmitMasked<
                    v1::Aggregator::WithAsyncMethod_SecAggUnmask<v1::Aggregator::Service>>>>>>>>>>;

class AggregatorServer::Service final : public AsyncAggregator {
 public:
  static constexpr int kUploadsPerAgent = 1;
  static constexpr int kFetchesPerAgent = 2;

  Service(ProtocolHandler* handler, AggregatorMetrics* metrics, const ServerOptions& options,
          std::shared_ptr<TokenFile> tokens)
      : handler_(handler), metrics_(metrics), options_(options), tokens_(std::move(tokens)) {}

  // A completion-queue tag: every call, with its one operation in flight.
  class Call {
   public:
    virtual ~Call() = default;
    // `ok`: the operation's outcome (false: the call broke, or the server is
    // shutting down and it was never matched).
    virtual void Proceed(bool ok) = 0;
    // The queue is draining (StopPolling): `ok` was the call's last
    // completion; release what it holds, start nothing, delete it.
    virtual void Abandon() { delete this; }
  };
  template <class Request, class Response>
  class UnaryCall;
  class Stream;
  class FetchCall;
  class UploadCall;

  // One queue per polling thread; before BuildAndStart.
  void AddQueues(grpc::ServerBuilder* builder, int n);
  // Requests the first calls and starts the polling threads; after BuildAndStart.
  void StartPolling();
  // After grpc::Server::Shutdown: no operation starts any more, the queues
  // are drained (each call deleted with its last completion) and the threads joined.
  void StopPolling();

  // A queue with the lock that keeps operations from starting once it shuts down.
  struct Queue {
    std::unique_ptr<grpc::ServerCompletionQueue> cq;
    std::mutex mu;
    bool draining = false;  // guarded by mu
    std::thread thread;
  };
  // Requests the next call of the method `Spawn` names on `q` (a matched call
  // asks for its successor at once, so a method always has calls waiting).
  template <class C>
  void Spawn(Queue* q) {
    new C(this, q);
  }
  template <class Request, class Response>
  void SpawnUnary(Queue* q, typename UnaryCall<Request, Response>::RequestFn request,
                  void (Service::*handle)(UnaryCall<Request, Response>*)) {
    UnaryCall<Request, Response>::Spawn(this, q, request, handle);
  }

  void Join(UnaryCall<v1::JoinRequest, v1::JoinResponse>* call);
  void GetTask(UnaryCall<v1::TaskRequest, v1::Task>* call);
  void GetUploadStatus(UnaryCall<v1::UploadStatusRequest, v1::UploadStatus>* call);
  void SecAggAdvertise(UnaryCall<v1::SecAggAdvertiseRequest, v1::SecAggRoster>* call);
  void SecAggShareKeys(UnaryCall<v1::SecAggShareKeysRequest, v1::SecAggInbox>* call);
  void SecAggSubmitMasked(UnaryCall<v1::SecAggMaskedInput, v1::SecAggMaskedAck>* call);
  void SecAggUnmask(UnaryCall<v1::SecAggUnmaskRequest, v1::SecAggUnmaskResponse>* call);
  void ReportMetrics(UnaryCall<v1::MetricsReport, v1::MetricsAck>* call);

  // Answers the parked GetTask calls whose task may have changed (the
  // engine's TaskEpoch moved) or whose wait ended; `all`: every one (at
  // shutdown). Cheap when nothing moved: one engine lock. Called after every
  // call that can move the engine and by the ticker.
  void WakeParked(bool all = false);
  size_t parked_tasks() const {
    std::lock_guard<std::mutex> lock(park_mu_);
    return parked_.size();
  }
  uint64_t get_task_calls() const { return get_task_calls_.load(std::memory_order_relaxed); }

  // Cancels streams past their header or idle timeout. Called by the ticker.
  void CancelStalled();
  // Cancels the upload streams holding `agent`'s upload slot.
  void SupersedeUploadsOf(const std::string& agent);
  size_t open_streams() const {
    std::lock_guard<std::mutex> lock(mu_);
    return streams_.size();
  }

 private:
  static constexpr int64_t kMaxTaskWaitMs = 20'000;  // below agent_liveness_ms (>= 60 s)
  int64_t MaxTaskWaitMs() const { return std::clamp<int64_t>(options_.max_task_wait_ms, 0, kMaxTaskWaitMs); }

  struct ParkedTask {
    UnaryCall<v1::TaskRequest, v1::Task>* call;  // answered (Finish) exactly once
    const v1::TaskRequest* request;              // the call's, until Finish
    v1::Task* response;
    int64_t deadline_ms;
    uint64_t epoch;  // TaskEpoch when the WAIT answer was made
  };
  // Holds `task` unless the epoch moved since it was answered (then false:
  // ask again) or the server is stopping (then it is answered now).
  bool Park(ParkedTask task);

  static int64_t NowMs() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }
  // False (and counted) when max_open_streams are open already.
  bool Register(Stream* stream);
  void Unregister(Stream* stream);
  // Takes one of `agent`'s `kind` slots; false when it has `limit` already.
  bool Acquire(const std::string& agent, bool upload);
  void Release(const std::string& agent, bool upload);
  void Refused(std::string_view reason) {
    if (metrics_) metrics_->StreamRefused(reason);
  }

  // Before any handler (issue 10 item 8): with mutual TLS, the connection's
  // certificate must name the agent the request claims to be (peer_identity.h);
  // with a tokens file, a session request must come from an agent still listed
  // (the operator removes a token to revoke the agent; Join checks it itself).
  Status Peer(const grpc::ServerContextBase& ctx, const v1::RequestHeader& header) const {
    if (!options_.tls_client_ca_pem.empty()) FEDGE_RETURN_IF_ERROR(CheckPeerIdentity(ctx, header.agent_id()));
    if (tokens_ && !header.session().empty() && !tokens_->Listed(header.agent_id())) {
      return UnauthenticatedError("agent \"" + header.agent_id() +
                                  "\" was revoked: its token is no longer in the tokens file");
    }
    return OkStatus();
  }

  ProtocolHandler* const handler_;
  AggregatorMetrics* const metrics_;
  const ServerOptions& options_;
  const std::shared_ptr<TokenFile> tokens_;  // null without --tokens-file

  mutable std::mutex mu_;
  std::set<Stream*> streams_;                     // guarded by mu_
  std::map<std::string, int> uploads_, fetches_;  // guarded by mu_; open streams per agent

  // Lock order: park_mu_ before the engine's (TaskEpoch is read under it).
  mutable std::mutex park_mu_;
  std::vector<ParkedTask> parked_;  // guarded by park_mu_
  uint64_t woken_epoch_ = 0;        // guarded by park_mu_; epoch of the last full pass
  int64_t next_deadline_ms_ = 0;    // guarded by park_mu_; earliest parked deadline
  bool stopping_ = false;           // guarded by park_mu_; answer, never park
  std::atomic<uint64_t> get_task_calls_{0};
  std::vector<std::unique_ptr<Queue>> queues_;
};

// A unary call: requested ahead, handled by `Handle` on the polling thread
// once matched (which may keep it, as GetTask's long-poll does, and answer it
// later from another thread), deleted when its answer completes.
template <class Request, class Response>
class AggregatorServer::Service::UnaryCall final : public Call {
 public:
  // Service::Request<Method>, the new-call queue and the notification queue both `q`'s.
  using RequestFn = void (*)(Service*, grpc::ServerContext*, Request*,
                             grpc::ServerAsyncResponseWriter<Response>*, grpc::CompletionQueue*,
                             grpc::ServerCompletionQueue*, void*);
  using HandleFn = void (Service::*)(UnaryCall*);

  static void Spawn(Service* service, Queue* q, RequestFn request, HandleFn handle) {
    new UnaryCall(service, q, request, handle);
  }

  void Proceed(bool ok) override {
    if (answered_ || !ok) {  // the answer completed, or never matched (shutdown)
      delete this;
      return;
    }
    Spawn(service_, q_, request_fn_, handle_);
    (service_->*handle_)(this);
  }

  // Answers the call with response() (not sent unless `status` is OK). Once.
  void Finish(const grpc::Status& status) {
    answered_ = true;
    writer_.Finish(response_, status, this);
  }
  const grpc::ServerContext& context() const { return ctx_; }
  const Request& request() const { return request_; }
  Response* response() { return &response_; }

 private:
  UnaryCall(Service* service, Queue* q, RequestFn request, HandleFn handle)
      : service_(service), q_(q), request_fn_(request), handle_(handle), writer_(&ctx_) {
    request_fn_(service_, &ctx_, &request_, &writer_, q_->cq.get(), q_->cq.get(), this);
  }

  Service* const service_;
  Queue* const q_;
  const RequestFn request_fn_;
  const HandleFn handle_;
  grpc::ServerContext ctx_;
  Request request_;
  Response response_;
  grpc::ServerAsyncResponseWriter<Response> writer_;
  bool answered_ = false;
};

bool AggregatorServer::Service::Park(ParkedTask task) {
  std::lock_guard<std::mutex> lock(park_mu_);
  if (stopping_) {
    task.call->Finish(grpc::Status::OK);  // the WAIT answer already made
    return true;
  }
  // Under park_mu_: a WakeParked that starts after this sees the entry, and
  // an epoch change before it is caught here.
  if (handler_->engine()->TaskEpoch() != task.epoch) return false;
  if (parked_.empty() || task.deadline_ms < next_deadline_ms_) next_deadline_ms_ = task.deadline_ms;
  parked_.push_back(task);
  return true;
}

void AggregatorServer::Service::WakeParked(bool all) {
  std::vector<ParkedTask> batch;
  uint64_t epoch = 0;
  const int64_t now = NowMs();
  {
    std::lock_guard<std::mutex> lock(park_mu_);
    if (all) stopping_ = true;
    if (parked_.empty()) return;
    epoch = handler_->engine()->TaskEpoch();
    if (!all && epoch == woken_epoch_ && now < next_deadline_ms_) return;
    woken_epoch_ = epoch;
    batch.swap(parked_);
    next_deadline_ms_ = 0;
  }
  std::vector<ParkedTask> keep;
  for (ParkedTask& t : batch) {
    if (!all && t.epoch == epoch && now < t.deadline_ms) {
      keep.push_back(t);
      continue;
    }
    if (!all) {
      // Ask again; still WAIT and time left: stay parked.
      const uint64_t asked_at = handler_->engine()->TaskEpoch();
      t.response->Clear();
      Status s = handler_->GetTask(*t.request, t.response);
      if (s.ok() && t.response->kind() == v1::TASK_KIND_WAIT && now < t.deadline_ms) {
        t.epoch = asked_at;
        keep.push_back(t);
        continue;
      }
      if (!s.ok()) {
        t.call->Finish(ToGrpc(s));
        continue;
      }
    }
    t.call->Finish(grpc::Status::OK);
  }
  if (keep.empty()) return;
  bool again = false;
  {
    std::lock_guard<std::mutex> lock(park_mu_);
    for (const ParkedTask& t : keep) {
      if (parked_.empty() || t.deadline_ms < next_deadline_ms_) next_deadline_ms_ = t.deadline_ms;
      parked_.push_back(t);
      again |= t.epoch != woken_epoch_;
    }
  }
  if (again) WakeParked();  // the epoch moved during this pass
}

void AggregatorServer::Service::Join(UnaryCall<v1::JoinRequest, v1::JoinResponse>* call) {
  Status peer = Peer(call->context(), call->request().header());
  Status s = peer.ok() ? handler_->Join(call->request(), call->response()) : peer;
  if (s.ok()) call->response()->set_max_task_wait_ms(static_cast<uint32_t>(MaxTaskWaitMs()));
  call->Finish(ToGrpc(s));
  WakeParked();
}

// A WAIT answer to a request with wait_ms > 0 is held (parked) until the
// engine's TaskEpoch moves or the wait ends (issue 14, item 2: 10,000
// agents polling every retry_after_ms were 50,000 calls a second).
void AggregatorServer::Service::GetTask(UnaryCall<v1::TaskRequest, v1::Task>* call) {
  get_task_calls_.fetch_add(1, std::memory_order_relaxed);
  const v1::TaskRequest& request = call->request();
  Status peer = Peer(call->context(), request.header());
  if (!peer.ok()) {
    call->Finish(ToGrpc(peer));
    return;
  }
  const int64_t wait_ms = std::min<int64_t>(request.wait_ms(), MaxTaskWaitMs());
  const int64_t deadline_ms = NowMs() + wait_ms;
  while (true) {
    const uint64_t epoch = handler_->engine()->TaskEpoch();
    v1::Task* response = call->response();
    response->Clear();
    Status s = handler_->GetTask(request, response);
    if (!s.ok() || response->kind() != v1::TASK_KIND_WAIT || wait_ms <= 0) {
      call->Finish(ToGrpc(s));
      break;
    }
    if (Park(ParkedTask{call, &request, response, deadline_ms, epoch})) break;
    // The epoch moved while this call was asking: ask again.
  }
  WakeParked();  // the call may have moved the engine (a deadline tick)
}

void AggregatorServer::Service::GetUploadStatus(UnaryCall<v1::UploadStatusRequest, v1::UploadStatus>* call) {
  Status peer = Peer(call->context(), call->request().header());
  call->Finish(ToGrpc(peer.ok() ? handler_->GetUploadStatus(call->request(), call->response()) : peer));
}

// Secure aggregation (secagg_handler.cpp): unary calls the agent repeats while a phase collects.
void AggregatorServer::Service::SecAggAdvertise(
    UnaryCall<v1::SecAggAdvertiseRequest, v1::SecAggRoster>* call) {
  Status peer = Peer(call->context(), call->request().header());
  call->Finish(ToGrpc(peer.ok() ? handler_->SecAggAdvertise(call->request(), call->response()) : peer));
}
void AggregatorServer::Service::SecAggShareKeys(
    UnaryCall<v1::SecAggShareKeysRequest, v1::SecAggInbox>* call) {
  Status peer = Peer(call->context(), call->request().header());
  call->Finish(ToGrpc(peer.ok() ? handler_->SecAggShareKeys(call->request(), call->response()) : peer));
}
void AggregatorServer::Service::SecAggSubmitMasked(
    UnaryCall<v1::SecAggMaskedInput, v1::SecAggMaskedAck>* call) {
  Status peer = Peer(call->context(), call->request().header());
  call->Finish(ToGrpc(peer.ok() ? handler_->SecAggSubmitMasked(call->request(), call->response()) : peer));
}
void AggregatorServer::Service::SecAggUnmask(
    UnaryCall<v1::SecAggUnmaskRequest, v1::SecAggUnmaskResponse>* call) {
  Status peer = Peer(call->context(), call->request().header());
  call->Finish(ToGrpc(peer.ok() ? handler_->SecAggUnmask(call->request(), call->response()) : peer));
}

void AggregatorServer::Service::ReportMetrics(UnaryCall<v1::MetricsReport, v1::MetricsAck>* call) {
  Status peer = Peer(call->context(), call->request().header());
  call->Finish(ToGrpc(peer.ok() ? handler_->ReportMetrics(call->request()) : peer));
  WakeParked();
}

// What the stall watchdog needs of a stream.
class AggregatorServer::Service::Stream {
 public:
  Stream(Service* service, grpc::ServerContext* ctx) : service_(service), ctx_(ctx) {}
  virtual ~Stream() = default;
  void Touch() { last_ms_.store(NowMs()); }
  // Called under Service::mu_: true when this is an upload stream holding
  // `agent`'s upload slot.
  bool HoldsUploadOf(const std::string& agent) const { return !slot_agent_.empty() && slot_agent_ == agent; }
  // Called under Service::mu_: a newer upload stream of the same agent arrived,
  // so this one is cancelled (what arrived is kept for the resume).
  void Supersede() {
    if (cancelled_) return;
    cancelled_ = true;
    service_->Refused("superseded");
    log::Warn("upload stream superseded by a newer one of its agent",
              {{"peer", ctx_->peer()}, {"agent", agent_}, {"idle_ms", NowMs() - last_ms_.load()}});
    ctx_->TryCancel();
  }
  // Called under Service::mu_.
  void CancelIfStalled(int64_t now) {
    if (cancelled_) return;
    const bool waiting_for_header = !started_.load();
    const int64_t limit = waiting_for_header ? service_->options_.stream_header_timeout_ms
                                             : service_->options_.stream_idle_timeout_ms;
    if (limit <= 0 || now - last_ms_.load() < limit) return;
    cancelled_ = true;
    service_->Refused(waiting_for_header ? "header_timeout" : "idle_timeout");
    log::Warn("stream cancelled: no progress", {{"peer", ctx_->peer()},
                                                {"agent", agent_},
                                                {"waited_ms", now - last_ms_.load()},
                                                {"limit_ms", limit},
                                                {"phase", waiting_for_header ? "header" : "data"}});
    ctx_->TryCancel();
  }

 protected:
  Service* const service_;
  grpc::ServerContext* const ctx_;
  std::atomic<bool> started_{false};  // the header (upload) or the first write (fetch) happened
  std::string agent_;                 // set once the session is checked; guarded by Service::mu_ for reads
  std::string slot_agent_;            // guarded by Service::mu_; set while an upload holds its agent's slot
  bool registered_ = false;
  bool holds_slot_ = false;

 private:
  std::atomic<int64_t> last_ms_{0};
  bool cancelled_ = false;  // guarded by Service::mu_
};

class AggregatorServer::Service::FetchCall final : public Call, public Stream {
 public:
  FetchCall(Service* service, Queue* q) : Stream(service, &ctx_), q_(q), writer_(&ctx_) {
    service_->RequestFetchGlobal(&ctx_, &raw_request_, &writer_, q_->cq.get(), q_->cq.get(), this);
  }

  void Proceed(bool ok) override {
    switch (state_) {
      case State::kRequested:
        if (!ok) {
          delete this;  // never matched: the server is shutting down
          return;
        }
        service_->Spawn<FetchCall>(q_);
        Touch();
        Open();
        return;
      case State::kWriting:
        Touch();
        if (!ok) {
          stream_.sent = last_offset_;  // the last chunk did not go out
          ReleaseSlot();
          End(grpc::Status(grpc::StatusCode::CANCELLED, "the agent closed the FetchGlobal stream"));
          return;
        }
        NextWrite();
        return;
      case State::kFinishing:
        Abandon();
        return;
    }
  }

  void Abandon() override {
    if (opened_) service_->handler_->CloseFetch(stream_);
    ReleaseSlot();
    if (registered_) service_->Unregister(this);
    delete this;
  }

 private:
  enum class State { kRequested, kWriting, kFinishing };

  void Open() {
    registered_ = service_->Register(this);
    if (!registered_) {
      End(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                       "the aggregator has too many open streams; retry later"));
      return;
    }
    v1::FetchGlobalRequest request;
    if (!ParseRequest(raw_request_, &request)) {
      End(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                       "FetchGlobal: the request is not a FetchGlobalRequest message"));
      return;
    }
    if (Status s = service_->Peer(ctx_, request.header()); !s.ok()) {
      End(ToGrpc(s));
      return;
    }
    if (Status s = service_->handler_->OpenFetch(request, &stream_); !s.ok()) {
      End(ToGrpc(s));
      return;
    }
    opened_ = true;
    const std::string& agent = request.header().agent_id();
    if (!service_->Acquire(agent, /*upload=*/false)) {
      End(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                       "agent \"" + agent + "\" already has " + std::to_string(kFetchesPerAgent) +
                           " FetchGlobal streams open; finish them first"));
      return;
    }
    {
      std::lock_guard<std::mutex> lock(service_->mu_);
      agent_ = agent;
      slot_agent_ = agent;
    }
    holds_slot_ = true;
    started_ = true;
    NextWrite();
  }

  void End(const grpc::Status& status) {
    state_ = State::kFinishing;
    writer_.Finish(status, this);
  }

  void ReleaseSlot() {
    if (!holds_slot_) return;
    holds_slot_ = false;
    service_->Release(agent_, /*upload=*/false);
  }

  static bool ParseRequest(const grpc::ByteBuffer& raw, v1::FetchGlobalRequest* request) {
    std::vector<grpc::Slice> slices;
    if (!raw.Dump(&slices).ok()) return false;
    std::string bytes;
    for (const grpc::Slice& slice : slices)
      bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
    return request->ParseFromString(bytes);
  }

  // The slice's reference to the GlobalModel its bytes live in.
  static void DropGlobal(void* global) { delete static_cast<std::shared_ptr<const GlobalModel>*>(global); }

  void NextWrite() {
    last_offset_ = stream_.sent;
    std::string_view data;
    if (!service_->handler_->NextChunkWire(&stream_, &prefix_, &data)) {
      ReleaseSlot();  // before the agent can see the end of the stream
      End(grpc::Status::OK);
      return;
    }
    grpc::Slice slices[2] = {
        grpc::Slice(prefix_),
        // No copy: the transport holds the GlobalModel until the bytes are sent.
        grpc::Slice(const_cast<char*>(data.data()), data.size(), &DropGlobal,
                    new std::shared_ptr<const GlobalModel>(stream_.global)),
    };
    chunk_ = grpc::ByteBuffer(slices, data.empty() ? 1 : 2);
    state_ = State::kWriting;
    writer_.Write(chunk_, this);
  }

  Queue* const q_;
  grpc::ServerContext ctx_;
  grpc::ByteBuffer raw_request_;
  grpc::ServerAsyncWriter<grpc::ByteBuffer> writer_;
  State state_ = State::kRequested;
  GlobalStream stream_;
  std::string prefix_;
  grpc::ByteBuffer chunk_;    // the write in flight
  uint64_t last_offset_ = 0;  // offset of the chunk in flight
  bool opened_ = false;
};

class AggregatorServer::Service::UploadCall final : public Call, public Stream {
 public:
  UploadCall(Service* service, Queue* q) : Stream(service, &ctx_), q_(q), reader_(&ctx_) {
    service_->RequestSubmitUpdate(&ctx_, &reader_, q_->cq.get(), q_->cq.get(), this);
  }

  void Proceed(bool ok) override {
    switch (state_) {
      case State::kRequested:
        if (!ok) {
          delete this;  // never matched: the server is shutting down
          return;
        }
        service_->Spawn<UploadCall>(q_);
        Touch();
        registered_ = service_->Register(this);
        if (!registered_) {
          End(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                           "the aggregator has too many open streams; retry later"));
          return;
        }
        Read();
        return;
      case State::kReading:
        Touch();
        OnRead(ok);
        return;
      case State::kFinishing:
        Abandon();
        return;
    }
  }

  void Abandon() override {
    if (opened_ && !closed_) service_->handler_->ReleaseUpload(&upload_);
    ReleaseSlot();
    if (registered_) service_->Unregister(this);
    delete this;
  }

 private:
  enum class State { kRequested, kReading, kFinishing };

  void Read() {
    state_ = State::kReading;
    reader_.Read(&chunk_, this);
  }

  void OnRead(bool ok) {
    if (!started_) {
      OnHeader(ok);
      return;
    }
    if (!ok) {
      // WritesDone, or the stream broke: a named upload keeps what arrived.
      response_ = service_->handler_->CloseUpload(&upload_);
      closed_ = true;
      End(grpc::Status::OK);
      service_->WakeParked();  // the update may have closed the round
      return;
    }
    if (chunk_.has_header()) {
      End(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                       "SubmitUpdate: a second UpdateHeader in the stream"));
      return;
    }
    Status error;
    if (!service_->handler_->AppendUpload(&upload_, chunk_.data(), &response_, &error)) {
      closed_ = true;
      // Answering early ends the call; the agent's remaining writes fail.
      End(error.ok() ? grpc::Status::OK : ToGrpc(error));
      return;
    }
    Read();
  }

  // Gives the agent's upload slot back before the answer goes out: the agent
  // may start its next upload as soon as it has the answer, before the call is done.
  void End(const grpc::Status& status) {
    ReleaseSlot();
    state_ = State::kFinishing;
    reader_.Finish(response_, status, this);
  }
  void ReleaseSlot() {
    if (!holds_slot_) return;
    holds_slot_ = false;
    {
      std::lock_guard<std::mutex> lock(service_->mu_);
      slot_agent_.clear();
    }
    service_->Release(agent_, /*upload=*/true);
  }

  void OnHeader(bool ok) {
    if (!ok || !chunk_.has_header()) {
      End(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                       "SubmitUpdate: the first message must carry the UpdateHeader"));
      return;
    }
    started_ = true;
    const v1::UpdateHeader& header = chunk_.header();
    if (Status s = service_->Peer(ctx_, header.header()); !s.ok()) {
      End(ToGrpc(s));
      return;
    }
    // The session first: a stranger must not take an agent's upload slot.
    if (Status s = service_->handler_->CheckHeader(header.header()); !s.ok()) {
      bool rejected = false;
      // Only for its counting (unknown_agent/session); the answer is the header check's.
      static_cast<void>(service_->handler_->BeginUpdate(header, &response_, &rejected));
      End(ToGrpc(s));
      return;
    }
    const std::string& agent = header.header().agent_id();
    if (!service_->Acquire(agent, /*upload=*/true)) {
      // Like a resume while the first stream still holds the upload. An agent
      // opens a new upload only when it believes the old one is dead, and a
      // connection reset does not always reach the old stream's pending read
      // (then it would hold the slot until the idle timeout): the older stream
      // is cancelled, keeps what arrived, and the agent's retry resumes from it.
      response_.set_accepted(false);
      response_.set_round(header.round());
      response_.set_reason_code("upload_busy");
      response_.set_reason("agent \"" + agent +
                           "\" already has an upload stream open; one at a time - retry after it ends");
      service_->Refused("agent_busy");
      service_->SupersedeUploadsOf(agent);
      End(grpc::Status::OK);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(service_->mu_);
      agent_ = agent;
      slot_agent_ = agent;
    }
    holds_slot_ = true;
    bool rejected = false;
    if (Status s = service_->handler_->OpenUpload(header, &upload_, &response_, &rejected); !s.ok()) {
      End(ToGrpc(s));
      return;
    }
    if (rejected) {
      End(grpc::Status::OK);  // answered from the header; the data is never read
      return;
    }
    opened_ = true;
    Read();
  }

  Queue* const q_;
  grpc::ServerContext ctx_;
  grpc::ServerAsyncReader<v1::SubmitUpdateResponse, v1::UpdateChunk> reader_;
  State state_ = State::kRequested;
  v1::SubmitUpdateResponse response_;
  v1::UpdateChunk chunk_;
  UploadStream upload_;
  bool opened_ = false;  // OpenUpload succeeded
  bool closed_ = false;  // CloseUpload ran or AppendUpload ended it
};

void AggregatorServer::Service::AddQueues(grpc::ServerBuilder* builder, int n) {
  for (int i = 0; i < std::max(1, n); ++i) {
    auto q = std::make_unique<Queue>();
    q->cq = builder->AddCompletionQueue();
    queues_.push_back(std::move(q));
  }
}

void AggregatorServer::Service::StartPolling() {
  // Calls requested ahead per queue and method; a matched call requests its
  // successor on the polling thread. Calls that arrive while that thread is
  // busy wait in gRPC's pending queue (see Start).
  constexpr int kCallsAhead = 32;
  for (auto& owned : queues_) {
    Queue* q = owned.get();
    for (int i = 0; i < kCallsAhead; ++i) {
      SpawnUnary(
          q, [](Service* s, auto... a) { s->RequestJoin(a...); }, &Service::Join);
      SpawnUnary(
          q, [](Service* s, auto... a) { s->RequestGetTask(a...); }, &Service::GetTask);
      SpawnUnary(
          q, [](Service* s, auto... a) { s->RequestReportMetrics(a...); }, &Service::ReportMetrics);
      Spawn<FetchCall>(q);
      Spawn<UploadCall>(q);
    }
    // Rare methods: one call waiting each.
    SpawnUnary(
        q, [](Service* s, auto... a) { s->RequestGetUploadStatus(a...); }, &Service::GetUploadStatus);
    SpawnUnary(
        q, [](Service* s, auto... a) { s->RequestSecAggAdvertise(a...); }, &Service::SecAggAdvertise);
    SpawnUnary(
        q, [](Service* s, auto... a) { s->RequestSecAggShareKeys(a...); }, &Service::SecAggShareKeys);
    SpawnUnary(
        q, [](Service* s, auto... a) { s->RequestSecAggSubmitMasked(a...); }, &Service::SecAggSubmitMasked);
    SpawnUnary(
        q, [](Service* s, auto... a) { s->RequestSecAggUnmask(a...); }, &Service::SecAggUnmask);
    q->thread = std::thread([q] {
      void* tag = nullptr;
      bool ok = false;
      while (q->cq->Next(&tag, &ok)) {
        std::lock_guard<std::mutex> lock(q->mu);
        if (q->draining) {
          static_cast<Call*>(tag)->Abandon();  // its last operation: nothing may start now
          continue;
        }
        static_cast<Call*>(tag)->Proceed(ok);
      }
    });
  }
}

void AggregatorServer::Service::StopPolling() {
  for (auto& q : queues_) {
    {
      std::lock_guard<std::mutex> lock(q->mu);
      q->draining = true;
    }
    q->cq->Shutdown();
  }
  for (auto& q : queues_) {
    if (q->thread.joinable()) q->thread.join();
  }
}

bool AggregatorServer::Service::Register(Stream* stream) {
  std::lock_guard<std::mutex> lock(mu_);
  if (options_.max_open_streams > 0 && streams_.size() >= static_cast<size_t>(options_.max_open_streams)) {
    Refused("too_many_streams");
    return false;
  }
  streams_.insert(stream);
  if (metrics_) metrics_->SetOpenStreams(static_cast<int64_t>(streams_.size()));
  return true;
}

void AggregatorServer::Service::Unregister(Stream* stream) {
  std::lock_guard<std::mutex> lock(mu_);
  streams_.erase(stream);
  if (metrics_) metrics_->SetOpenStreams(static_cast<int64_t>(streams_.size()));
}

bool AggregatorServer::Service::Acquire(const std::string& agent, bool upload) {
  std::lock_guard<std::mutex> lock(mu_);
  int& n = (upload ? uploads_ : fetches_)[agent];
  if (n >= (upload ? kUploadsPerAgent : kFetchesPerAgent)) {
    if (!upload) Refused("agent_busy");
    return false;
  }
  ++n;
  return true;
}

void AggregatorServer::Service::Release(const std::string& agent, bool upload) {
  std::lock_guard<std::mutex> lock(mu_);
  auto& slots = upload ? uploads_ : fetches_;
  auto it = slots.find(agent);
  if (it != slots.end() && --it->second <= 0) slots.erase(it);
}

void AggregatorServer::Service::SupersedeUploadsOf(const std::string& agent) {
  std::lock_guard<std::mutex> lock(mu_);
  for (Stream* s : streams_) {
    if (s->HoldsUploadOf(agent)) s->Supersede();
  }
}

void AggregatorServer::Service::CancelStalled() {
  const int64_t now = NowMs();
  std::lock_guard<std::mutex> lock(mu_);
  for (Stream* s : streams_) s->CancelIfStalled(now);
}

uint64_t GrpcMemoryBytes(const ServerOptions& options) {
  if (options.grpc_memory_bytes > 0) return options.grpc_memory_bytes;
  if (options.max_upload_buffer_bytes == 0) return 0;
  return options.max_upload_buffer_bytes + kGrpcBaseMemoryBytes;
}

std::string StatusJson(const EngineStatus& s) {
  nlohmann::json rounds = nlohmann::json::array();
  for (const RoundRecord& r : s.rounds) rounds.push_back(nlohmann::json::parse(RoundRecordToJson(r)));
  nlohmann::json j = {
      {"job", s.job},
      {"state", JobStateName(s.state)},
      {"round", s.round},
      {"total_rounds", s.total_rounds},
      {"phase", PhaseName(s.phase)},
      {"global_version", s.global_version},
      {"global_checksum", s.global_checksum},
      {"agents_joined", s.agents_joined},
      {"rounds", rounds},
      {"final_accuracy", OptionalToJson(s.final_accuracy)},
      {"message", s.message},
  };
  if (s.checkpoint.enabled) {
    j["checkpoint"] = {
        {"ok", s.checkpoint.ok},
        {"failures", s.checkpoint.failures},
        {"last_error", s.checkpoint.last_error},
        {"round", s.checkpoint.saved_round},
        {"global_version", s.checkpoint.saved_version},
        {"saved_unix_ms", s.checkpoint.saved_unix_ms},
        // The names the operator's status reporter reads (status.checkpoint and the
        // CheckpointFailing condition; operator/controller/src/status_reporter.cpp).
        // Only whether the last attempt failed is tracked, so "consecutive" is 0 or 1.
        {"consecutive_failures", s.checkpoint.ok ? 0 : 1},
        {"failures_total", s.checkpoint.failures},
        {"last_saved_round", s.checkpoint.saved_round},
    };
  }
  if (s.privacy) {
    // Read by the operator's status reporter: status.epsilonSpent and the
    // PrivacyBudgetExhausted condition.
    j["privacy"] = {
        {"epsilon",
         std::isfinite(s.privacy->epsilon) ? nlohmann::json(s.privacy->epsilon) : nlohmann::json()},
        {"delta", s.privacy->delta},
        {"target_epsilon", s.privacy->target_epsilon},
        {"noise_multiplier", s.privacy->noise_multiplier},
        {"clip_norm", s.privacy->clip_norm},
        {"rounds_accounted", s.privacy->rounds_accounted},
        {"budget_exhausted", s.privacy->budget_exhausted},
    };
  }
  return j.dump();
}

namespace {

// The verifier the agent_token_* options ask for; null when none is set.
StatusOr<std::shared_ptr<ServiceAccountTokenVerifier>> AgentTokenVerifier(const ServerOptions& options) {
  const int set = !options.agent_token_jwks_file.empty() + !options.agent_token_issuer.empty() +
                  !options.agent_token_audience.empty() + !options.agent_token_service_account.empty();
  if (set == 0) return std::shared_ptr<ServiceAccountTokenVerifier>();
  if (set != 4) {
    return InvalidArgumentError(
        "service-account tokens need all of --agent-token-jwks-file, --agent-token-issuer, "
        "--agent-token-audience and --agent-token-service-account (or none of them)");
  }
  if (!options.tokens_file.empty()) {
    return InvalidArgumentError(
        "--tokens-file and --agent-token-* are two ways to check Join tokens; give one of them");
  }
  ServiceAccountTokenPolicy policy;
  policy.issuer = options.agent_token_issuer;
  policy.audience = options.agent_token_audience;
  Status sa = ParseServiceAccountName(options.agent_token_service_account, &policy);
  if (!sa.ok()) return sa.WithContext("--agent-token-service-account");
  auto verifier = ServiceAccountTokenVerifier::Open(options.agent_token_jwks_file, policy, options.clock);
  if (!verifier.ok()) return verifier.status().WithContext("--agent-token-jwks-file");
  return std::shared_ptr<ServiceAccountTokenVerifier>(std::move(*verifier));
}

}  // namespace

StatusOr<std::unique_ptr<AggregatorServer>> AggregatorServer::Create(const JobSpec& spec,
                                                                     ServerOptions options) {
  std::unique_ptr<AggregatorServer> server(new AggregatorServer());
  if (!options.clock) options.clock = SystemClock::Get();
  server->metrics_ = std::make_unique<AggregatorMetrics>();

  ProtocolOptions protocol;
  protocol.max_update_bytes = options.max_update_bytes;
  protocol.max_partial_bytes = options.max_partial_upload_bytes;
  protocol.max_upload_buffer_bytes = options.max_upload_buffer_bytes;
  // First: it also refuses --tokens-file with the --agent-token-* options.
  FEDGE_ASSIGN_OR_RETURN(protocol.token_verifier, AgentTokenVerifier(options));
  if (options.agent_session_grace_s < 0) {
    return InvalidArgumentError("--agent-session-grace-seconds must not be negative, got " +
                                std::to_string(options.agent_session_grace_s));
  }
  protocol.session_grace_s = options.agent_session_grace_s;
  if (!options.agent_revoked_pods_file.empty()) {
    if (!protocol.token_verifier) {
      return InvalidArgumentError(
          "--agent-revoked-pods-file lists pods whose service-account tokens are refused; it needs the "
          "--agent-token-* flags");
    }
    auto revoked = RevokedPods::Open(options.agent_revoked_pods_file, options.clock);
    if (!revoked.ok()) return revoked.status().WithContext("--agent-revoked-pods-file");
    protocol.revoked_pods = std::move(*revoked);
  }
  if (!options.tokens_file.empty()) {
    // Re-read when it changes: agents of nodes that join later get their tokens then.
    FEDGE_ASSIGN_OR_RETURN(protocol.token_file, TokenFile::Open(options.tokens_file, options.clock));
  }
  if (options.tls_cert_pem.empty() != options.tls_key_pem.empty()) {
    return InvalidArgumentError("TLS needs both a certificate and its private key");
  }
  if (!options.tls_client_ca_pem.empty() && options.tls_cert_pem.empty()) {
    return InvalidArgumentError("a client CA (mutual TLS) needs a serving certificate and key too");
  }
  if (!options.tls_cert_file.empty() || !options.tls_key_file.empty() ||
      !options.tls_client_ca_file.empty()) {
    if (options.tls_cert_file.empty() != options.tls_cert_pem.empty() ||
        options.tls_key_file.empty() != options.tls_key_pem.empty() ||
        options.tls_client_ca_file.empty() != options.tls_client_ca_pem.empty()) {
      return InvalidArgumentError(
          "TLS files to re-read need the contents read from them at start: set each *_file with its *_pem");
    }
    if (options.tls_refresh_interval_s == 0) {
      return InvalidArgumentError("tls_refresh_interval_s must be at least 1 second");
    }
  }

  EngineOptions engine_options = EngineOptionsFromSpec(spec, options.expected_agents);
  if (options.round_timeout_ms > 0) engine_options.round_timeout_ms = options.round_timeout_ms;
  if (options.retry_after_ms > 0) engine_options.retry_after_ms = options.retry_after_ms;
  if (options.secagg_phase_timeout_ms > 0)
    engine_options.secagg.phase_timeout_ms = options.secagg_phase_timeout_ms;
  engine_options.secagg.on_masked_input = options.secagg_on_masked_input;
  if (options.blocking_evaluation) engine_options.evaluate_with_next_round = false;

  std::optional<CheckpointData> resume;
  if (!options.checkpoint_dir.empty()) {
    server->checkpoints_ = std::make_unique<CheckpointStore>(options.checkpoint_dir);
    FEDGE_ASSIGN_OR_RETURN(resume, server->checkpoints_->Load());
  }
  FEDGE_ASSIGN_OR_RETURN(
      server->engine_,
      RoundEngine::Create(engine_options, options.clock, server->checkpoints_.get(), server->metrics_.get()));
  if (options.serve_final) {
    if (options.checkpoint_dir.empty()) {
      return InvalidArgumentError("serving the final global model needs the job's checkpoint directory");
    }
    if (!resume) {
      return FailedPreconditionError(
          "no checkpoint in " + options.checkpoint_dir +
          ": the final global model to serve is the job's checkpoint (was the job run "
          "with spec.aggregator.checkpoint.enabled: false, or its volume replaced?)");
    }
  }
  if (resume) FEDGE_RETURN_IF_ERROR(server->engine_->Restore(std::move(*resume)));
  if (options.serve_final) FEDGE_RETURN_IF_ERROR(server->engine_->ServeFinal());

  server->handler_ =
      std::make_unique<ProtocolHandler>(server->engine_.get(), server->metrics_.get(), protocol);
  server->options_ = std::move(options);
  server->service_ = std::make_unique<Service>(server->handler_.get(), server->metrics_.get(),
                                               server->options_, protocol.token_file);
  return server;
}

std::shared_ptr<grpc::ServerCredentials> AggregatorServer::ServerCredentials() const {
  if (options_.tls_cert_pem.empty()) return grpc::InsecureServerCredentials();
  if (!options_.tls_cert_file.empty()) {
    // Re-read on an interval (gRPC's file watcher keeps the last good pair when
    // a read fails): the serving certificate is renewed in place.
    namespace gx = grpc::experimental;
    auto provider = std::make_shared<gx::FileWatcherCertificateProvider>(
        options_.tls_key_file, options_.tls_cert_file, options_.tls_client_ca_file,
        options_.tls_refresh_interval_s);
    gx::TlsServerCredentialsOptions tls(provider);
    tls.watch_identity_key_cert_pairs();
    if (options_.tls_client_ca_file.empty()) {
      tls.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
    } else {
      tls.watch_root_certs();
      tls.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
    }
    return gx::TlsServerCredentials(tls);
  }
  grpc::SslServerCredentialsOptions ssl(options_.tls_client_ca_pem.empty()
                                            ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                                            : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  ssl.pem_root_certs = options_.tls_client_ca_pem;
  ssl.pem_key_cert_pairs.push_back({options_.tls_key_pem, options_.tls_cert_pem});
  return grpc::SslServerCredentials(ssl);
}

AggregatorServer::~AggregatorServer() { Shutdown(std::chrono::seconds(2)); }

int AggregatorServer::http_port() const { return http_ ? http_->port() : 0; }

size_t AggregatorServer::open_streams() const { return service_->open_streams(); }

size_t AggregatorServer::parked_tasks() const { return service_->parked_tasks(); }

uint64_t AggregatorServer::get_task_calls() const { return service_->get_task_calls(); }

Status AggregatorServer::Start() {
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options_.grpc_address, ServerCredentials(), &grpc_port_);
  // Chunks are <= 4 MiB; leave room for the message framing around them.
  builder.SetMaxReceiveMessageSize(static_cast<int>(kMaxChunkBytes + (64 << 10)));
  builder.SetMaxSendMessageSize(static_cast<int>(kMaxChunkBytes + (64 << 10)));
  // In-flight limits (issue 10, item 7): gRPC's own buffers and threads are
  // bounded by a quota, a connection carries at most a few streams at once,
  // and dead or idle peers are found and dropped. The quota is also what
  // frees the spare read buffer every connection keeps (issue 14, item 2;
  // ServerOptions::grpc_memory_bytes); the stream window is fixed so that
  // memory pressure does not shrink it under uploads already in flight.
  grpc::ResourceQuota quota("fedge-aggregator");
  if (const uint64_t bytes = GrpcMemoryBytes(options_); bytes > 0) quota.Resize(bytes);
  if (options_.grpc_max_threads > 0) quota.SetMaxThreads(options_.grpc_max_threads);
  builder.SetResourceQuota(quota);
  if (options_.max_streams_per_connection > 0) {
    builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, options_.max_streams_per_connection);
  }
  builder.AddChannelArgument(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  if (options_.grpc_stream_window_bytes > 0) {
    builder.AddChannelArgument(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, options_.grpc_stream_window_bytes);
  }
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 60'000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 20'000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_IDLE_MS, 300'000);
  // Calls that arrive while the polling threads are busy wait in gRPC's
  // pending queue. Debian's gRPC 1.51 does not limit it (its library has no
  // such argument); later releases refuse calls past these two (1,000 and
  // 3,000 by default, below what 10,000 agents send when a round opens), so
  // they are raised for a newer libgrpc: the streams per connection bound it.
  builder.AddChannelArgument("grpc.server.max_pending_requests", 1 << 20);
  builder.AddChannelArgument("grpc.server.max_pending_requests_hard_limit", 1 << 20);
  builder.RegisterService(service_.get());
  service_->AddQueues(&builder, options_.grpc_threads);
  grpc_server_ = builder.BuildAndStart();
  if (!grpc_server_ || grpc_port_ == 0) {
    grpc_server_.reset();
    return UnavailableError("cannot listen for gRPC on " + options_.grpc_address);
  }
  service_->StartPolling();

  if (!options_.http_address.empty()) {
    http_ = std::make_unique<HttpServer>(options_.http_address);
    http_->Handle("GET", "/healthz", [](const HttpRequest&) { return HttpResponse::Text(200, "ok\n"); });
    RoundEngine* engine = engine_.get();
    http_->Handle("GET", "/readyz", [engine](const HttpRequest&) {
      EngineStatus s = engine->GetStatus();
      if (s.state == JobState::kFailed) return HttpResponse::Text(503, "job failed: " + s.message + "\n");
      return HttpResponse::Text(200, "ready: " + std::string(JobStateName(s.state)) + "\n");
    });
    http_->Handle("GET", "/v1/status", [engine](const HttpRequest&) {
      return HttpResponse::Json(200, StatusJson(engine->GetStatus()));
    });
    http_->HandleMetrics(metrics_->registry());
    if (Status s = http_->Start(); !s.ok()) {
      grpc_server_->Shutdown();
      service_->StopPolling();
      grpc_server_.reset();
      http_.reset();
      return s;
    }
  }

  {
    std::lock_guard<std::mutex> lock(mu_);
    started_ = true;
  }
  ticker_ = std::thread([this] {
    std::unique_lock<std::mutex> lock(mu_);
    while (!stopping_) {
      cv_.wait_for(lock, std::chrono::milliseconds(options_.tick_interval_ms));
      if (stopping_) break;
      lock.unlock();
      engine_->Tick();
      handler_->DropClosedUploads();
      service_->CancelStalled();
      service_->WakeParked();
      lock.lock();
    }
  });
  log::Info("aggregator serving",
            {{"job", engine_->options().job},
             {"grpc_port", grpc_port_},
             {"tls", options_.tls_cert_pem.empty()        ? "off"
                     : options_.tls_client_ca_pem.empty() ? "server"
                                                          : "mutual"},
             {"join_tokens", !options_.agent_token_jwks_file.empty() ? "service_account"
                             : !options_.tokens_file.empty()         ? "tokens_file"
                                                                     : "none"},
             {"http_port", http_port()},
             {"grpc_memory_bytes", static_cast<int64_t>(GrpcMemoryBytes(options_))},
             // Serving the final global trains nothing: no agent is waited for.
             {"mode", options_.serve_final ? "serve-final" : "train"},
             {"expected_agents", options_.serve_final ? 0 : engine_->options().expected_agents},
             {"rounds", engine_->options().total_rounds}});
  return OkStatus();
}

void AggregatorServer::Shutdown(std::chrono::milliseconds grace) {
  bool started = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (shut_down_) return;
    shut_down_ = true;
    stopping_ = true;
    started = started_;
  }
  cv_.notify_all();
  if (ticker_.joinable()) ticker_.join();
  if (service_) service_->WakeParked(/*all=*/true);  // no call is left waiting on the engine
  if (grpc_server_) {
    grpc_server_->Shutdown(std::chrono::system_clock::now() + grace);
    grpc_server_->Wait();
    service_->StopPolling();
  }
  if (http_) http_->Stop();
  if (started) log::Info("aggregator stopped", {{"job", engine_->options().job}});
}

}  // namespace fedge::aggregator
