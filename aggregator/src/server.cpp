#include "fedge/aggregator/server.h"

#include <grpcpp/grpcpp.h>

#include "fedge.grpc.pb.h"
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
class AggregatorServer::Service final : public v1::Aggregator::Service {
 public:
  explicit Service(ProtocolHandler* handler) : handler_(handler) {}

  grpc::Status Join(grpc::ServerContext*, const v1::JoinRequest* request,
                    v1::JoinResponse* response) override {
    return ToGrpc(handler_->Join(*request, response));
  }

  grpc::Status GetTask(grpc::ServerContext*, const v1::TaskRequest* request, v1::Task* response) override {
    return ToGrpc(handler_->GetTask(*request, response));
  }

  grpc::Status FetchGlobal(grpc::ServerContext* context, const v1::FetchGlobalRequest* request,
                           grpc::ServerWriter<v1::GlobalChunk>* writer) override {
    return ToGrpc(handler_->FetchGlobal(*request, [&](const v1::GlobalChunk& chunk) {
      return !context->IsCancelled() && writer->Write(chunk);
    }));
  }

  grpc::Status SubmitUpdate(grpc::ServerContext*, grpc::ServerReader<v1::UpdateChunk>* reader,
                            v1::SubmitUpdateResponse* response) override {
    v1::UpdateChunk chunk;
    if (!reader->Read(&chunk) || !chunk.has_header()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "SubmitUpdate: the first message must carry the UpdateHeader");
    }
    const v1::UpdateHeader header = chunk.header();
    bool rejected = false;
    UploadStream upload;
    if (Status s = handler_->OpenUpload(header, &upload, response, &rejected); !s.ok()) return ToGrpc(s);
    // Answering early ends the call; the agent's remaining writes fail and its
    // Finish() returns this response, so oversize data is never buffered.
    if (rejected) return grpc::Status::OK;
    // Read() is false at the agent's WritesDone and when the stream breaks; a
    // named upload then keeps what arrived for the agent to resume.
    while (reader->Read(&chunk)) {
      if (chunk.has_header()) {
        handler_->ReleaseUpload(&upload);
        return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                            "SubmitUpdate: a second UpdateHeader in the stream");
      }
      if (!handler_->AppendUpload(&upload, chunk.data(), response)) return grpc::Status::OK;
    }
    *response = handler_->CloseUpload(&upload);
    return grpc::Status::OK;
  }

  grpc::Status GetUploadStatus(grpc::ServerContext*, const v1::UploadStatusRequest* request,
                               v1::UploadStatus* response) override {
    return ToGrpc(handler_->GetUploadStatus(*request, response));
  }

  grpc::Status ReportMetrics(grpc::ServerContext*, const v1::MetricsReport* request,
                             v1::MetricsAck*) override {
    return ToGrpc(handler_->ReportMetrics(*request));
  }

 private:
  ProtocolHandler* const handler_;
};

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
  return j.dump();
}

StatusOr<std::unique_ptr<AggregatorServer>> AggregatorServer::Create(const JobSpec& spec,
                                                                     ServerOptions options) {
  std::unique_ptr<AggregatorServer> server(new AggregatorServer());
  if (!options.clock) options.clock = SystemClock::Get();
  server->metrics_ = std::make_unique<AggregatorMetrics>();

  ProtocolOptions protocol;
  protocol.max_update_bytes = options.max_update_bytes;
  protocol.max_partial_bytes = options.max_partial_upload_bytes;
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

  EngineOptions engine_options = EngineOptionsFromSpec(spec, options.expected_agents);
  if (options.round_timeout_ms > 0) engine_options.round_timeout_ms = options.round_timeout_ms;
  if (options.retry_after_ms > 0) engine_options.retry_after_ms = options.retry_after_ms;

  std::optional<CheckpointData> resume;
  if (!options.checkpoint_dir.empty()) {
    server->checkpoints_ = std::make_unique<CheckpointStore>(options.checkpoint_dir);
    FEDGE_ASSIGN_OR_RETURN(resume, server->checkpoints_->Load());
  }
  FEDGE_ASSIGN_OR_RETURN(
      server->engine_,
      RoundEngine::Create(engine_options, options.clock, server->checkpoints_.get(), server->metrics_.get()));
  if (resume) FEDGE_RETURN_IF_ERROR(server->engine_->Restore(std::move(*resume)));

  server->handler_ =
      std::make_unique<ProtocolHandler>(server->engine_.get(), server->metrics_.get(), protocol);
  server->service_ = std::make_unique<Service>(server->handler_.get());
  server->options_ = std::move(options);
  return server;
}

std::shared_ptr<grpc::ServerCredentials> AggregatorServer::ServerCredentials() const {
  if (options_.tls_cert_pem.empty()) return grpc::InsecureServerCredentials();
  grpc::SslServerCredentialsOptions ssl(options_.tls_client_ca_pem.empty()
                                            ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                                            : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  ssl.pem_root_certs = options_.tls_client_ca_pem;
  ssl.pem_key_cert_pairs.push_back({options_.tls_key_pem, options_.tls_cert_pem});
  return grpc::SslServerCredentials(ssl);
}

AggregatorServer::~AggregatorServer() { Shutdown(std::chrono::seconds(2)); }

int AggregatorServer::http_port() const { return http_ ? http_->port() : 0; }

Status AggregatorServer::Start() {
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options_.grpc_address, ServerCredentials(), &grpc_port_);
  // Chunks are <= 4 MiB; leave room for the message framing around them.
  builder.SetMaxReceiveMessageSize(static_cast<int>(kMaxChunkBytes + (64 << 10)));
  builder.SetMaxSendMessageSize(static_cast<int>(kMaxChunkBytes + (64 << 10)));
  builder.RegisterService(service_.get());
  grpc_server_ = builder.BuildAndStart();
  if (!grpc_server_ || grpc_port_ == 0) {
    grpc_server_.reset();
    return UnavailableError("cannot listen for gRPC on " + options_.grpc_address);
  }

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
      lock.lock();
    }
  });
  log::Info("aggregator serving", {{"job", engine_->options().job},
                                   {"grpc_port", grpc_port_},
                                   {"tls", options_.tls_cert_pem.empty()        ? "off"
                                           : options_.tls_client_ca_pem.empty() ? "server"
                                                                                : "mutual"},
                                   {"http_port", http_port()},
                                   {"expected_agents", engine_->options().expected_agents},
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
  if (grpc_server_) {
    grpc_server_->Shutdown(std::chrono::system_clock::now() + grace);
    grpc_server_->Wait();
  }
  if (http_) http_->Stop();
  if (started) log::Info("aggregator stopped", {{"job", engine_->options().job}});
}

}  // namespace fedge::aggregator
