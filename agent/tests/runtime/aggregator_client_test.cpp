// The client loop against a real gRPC server on loopback: a small scripted
// implementation of the Aggregator service (WAIT -> INITIALIZE -> TRAIN ->
// EVALUATE -> DONE) that records everything it receives.
#include <gtest/gtest.h>

#include <algorithm>
#include <condition_variable>
#include <filesystem>
#include <functional>
#include <future>
#include <map>
#include <set>
#include <thread>

#include <grpc/grpc_security_constants.h>
#include <grpcpp/grpcpp.h>
#include <prometheus/counter.h>
#include <prometheus/gauge.h>

#include "fake_classifier.h"
#include "fedge/agent/runtime/aggregator_client.h"
#include "fedge/agent/runtime/metrics.h"
#include "fedge/agent/runtime/serving_model.h"
#include "fedge/agent/runtime/state_store.h"
#include "fedge/agent/runtime/tls_files.h"
#include "fedge/agent/runtime/update.h"
#include "fedge/http_server.h"
#include "fedge/safetensors.h"
#include "mounted_secret.h"
#include "serving_test_util.h"
#include "test_pki.h"

namespace fedge::agent {
namespace {

namespace v1 = fedge::v1;
using testing::FakeClassifier;
using testing::TestLabels;

struct ReceivedUpdate {
  v1::UpdateHeader header;
  std::vector<size_t> chunk_sizes;
  std::string payload;
};

// State of the scripted job; survives a server restart (like a checkpoint).
struct World {
  std::mutex mu;
  std::condition_variable cv;
  int waits_left = 2;  // WAITs before INITIALIZE
  int phase = 0;       // 0 initialize, 1 train, 2 evaluate, 3 done
  TensorBundle global;
  int64_t version = 0;
  std::string encoded;
  std::string checksum;
  std::vector<v1::JoinRequest> joins;
  std::vector<ReceivedUpdate> updates;
  std::vector<v1::MetricsReport> reports;
  std::vector<int64_t> fetched_versions;
  std::vector<std::string> peer_certs;  // the client certificate of each Join/GetTask ("" none)
  std::string codec = "fp32";
  size_t send_chunk = 100;  // small, so the global arrives in many chunks
  // Resumable uploads: a stream carrying an upload_id breaks (UNAVAILABLE) once
  // cut_upload_after bytes of it arrived, cuts_left times; what arrived is kept
  // in `partials` (unless forget_partials) for GetUploadStatus and a resume.
  size_t cut_upload_after = 0;
  int cuts_left = 0;
  bool forget_partials = false;
  std::map<std::string, std::string> partials;     // upload_id -> bytes held
  std::map<std::string, uint64_t> partial_totals;  // upload_id -> declared total_bytes
  std::vector<uint64_t> stream_offsets;            // UpdateHeader.offset of every stream
  int status_queries = 0;
  v1::TrainingConfig config;
  bool evaluate_global = false;  // Task.evaluate_global of the TRAIN task
  // JoinResponse.upload_checksum; SHA-256 is what an older aggregator answers.
  v1::ChecksumAlgorithm upload_checksum = v1::CHECKSUM_SHA256;
  // Joins refused with UNAUTHENTICATED before one is accepted (their tokens
  // recorded), and the RequestHeader.token of every GetTask.
  int refuse_joins = 0;
  std::vector<std::string> refused_join_tokens;
  std::vector<std::string> task_tokens;
  std::function<void(size_t)> on_task;  // called with the GetTask count, under mu

  void SetGlobal(TensorBundle bundle) {
    global = std::move(bundle);
    ++version;
    EncodeOptions eo;
    encoded = *EncodeBundle(global, eo);
    checksum = Sha256Hex(encoded);
  }
};

class FakeAggregator final : public v1::Aggregator::Service {
 public:
  explicit FakeAggregator(World* world, std::string session_prefix)
      : w_(world), prefix_(std::move(session_prefix)) {}

  grpc::Status Join(grpc::ServerContext* ctx, const v1::JoinRequest* req, v1::JoinResponse* resp) override {
    std::lock_guard<std::mutex> lock(w_->mu);
    RecordPeer(ctx);
    if (req->header().protocol_version() != 1) {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "this aggregator speaks protocol v1");
    }
    if (w_->refuse_joins > 0) {
      --w_->refuse_joins;
      w_->refused_join_tokens.push_back(req->token());
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "the token expired");
    }
    w_->joins.push_back(*req);
    std::string session = prefix_ + std::to_string(w_->joins.size());
    sessions_.insert(session);
    resp->set_session(session);
    resp->set_protocol_version(1);
    resp->set_global_version(w_->version);
    resp->set_total_rounds(1);
    resp->set_upload_checksum(w_->upload_checksum);
    w_->cv.notify_all();
    return grpc::Status::OK;
  }

  grpc::Status GetTask(grpc::ServerContext* ctx, const v1::TaskRequest* req, v1::Task* task) override {
    std::lock_guard<std::mutex> lock(w_->mu);
    RecordPeer(ctx);
    if (!sessions_.count(req->header().session())) {
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "unknown session");
    }
    w_->task_tokens.push_back(req->header().token());
    if (w_->on_task) w_->on_task(w_->task_tokens.size());
    if (w_->waits_left > 0) {
      --w_->waits_left;
      task->set_kind(v1::TASK_KIND_WAIT);
      task->set_retry_after_ms(5);
      return grpc::Status::OK;
    }
    task->set_global_version(w_->version);
    task->set_global_checksum(w_->checksum);
    *task->mutable_config() = w_->config;
    switch (w_->phase) {
      case 0:
        task->set_kind(v1::TASK_KIND_INITIALIZE);
        break;
      case 1:
        task->set_kind(v1::TASK_KIND_TRAIN);
        task->set_round(1);
        task->set_evaluate_global(w_->evaluate_global);
        break;
      case 2:
        task->set_kind(v1::TASK_KIND_EVALUATE);
        task->set_round(1);
        break;
      default:
        task->set_kind(v1::TASK_KIND_DONE);
        task->set_round(1);
        break;
    }
    return grpc::Status::OK;
  }

  grpc::Status FetchGlobal(grpc::ServerContext*, const v1::FetchGlobalRequest* req,
                           grpc::ServerWriter<v1::GlobalChunk>* writer) override {
    std::string bytes, checksum;
    int64_t version;
    size_t chunk;
    {
      std::lock_guard<std::mutex> lock(w_->mu);
      if (!sessions_.count(req->header().session())) {
        return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "unknown session");
      }
      if (req->version() != 0 && req->version() != w_->version) {
        return grpc::Status(grpc::StatusCode::NOT_FOUND, "no such version");
      }
      w_->fetched_versions.push_back(w_->version);
      bytes = w_->encoded;
      checksum = w_->checksum;
      version = w_->version;
      chunk = w_->send_chunk;
    }
    for (size_t off = 0; off < bytes.size(); off += chunk) {
      v1::GlobalChunk c;
      if (off == 0) {
        c.set_version(version);
        c.set_total_bytes(bytes.size());
        c.set_checksum(checksum);
      }
      c.set_offset(off);
      c.set_data(bytes.substr(off, chunk));
      if (!writer->Write(c)) break;
    }
    return grpc::Status::OK;
  }

  grpc::Status SubmitUpdate(grpc::ServerContext*, grpc::ServerReader<v1::UpdateChunk>* reader,
                            v1::SubmitUpdateResponse* resp) override {
    ReceivedUpdate u;
    v1::UpdateChunk chunk;
    if (!reader->Read(&chunk) || !chunk.has_header()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "the header must come first");
    }
    u.header = chunk.header();
    const std::string& id = u.header.upload_id();
    size_t cut_after = 0;
    {
      std::lock_guard<std::mutex> lock(w_->mu);
      w_->stream_offsets.push_back(u.header.offset());
      if (u.header.offset() > 0) {
        auto it = w_->partials.find(id);
        if (it == w_->partials.end() || it->second.size() != u.header.offset()) {
          resp->set_accepted(false);
          resp->set_reason("no partial upload of that size is held");
          resp->set_reason_code(it == w_->partials.end() ? "unknown_upload" : "bad_offset");
          if (it != w_->partials.end()) resp->set_resume_offset(it->second.size());
          return grpc::Status::OK;
        }
        u.payload = it->second;
      }
      if (!id.empty() && w_->cuts_left > 0 && u.header.offset() == 0) cut_after = w_->cut_upload_after;
    }
    while (reader->Read(&chunk)) {
      if (chunk.has_header()) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "second header");
      u.chunk_sizes.push_back(chunk.data().size());
      u.payload += chunk.data();
      if (cut_after > 0 && u.payload.size() >= cut_after && u.payload.size() < u.header.total_bytes()) {
        std::lock_guard<std::mutex> lock(w_->mu);
        --w_->cuts_left;
        if (!w_->forget_partials) {
          w_->partials[id] = u.payload;
          w_->partial_totals[id] = u.header.total_bytes();
        }
        return grpc::Status(grpc::StatusCode::UNAVAILABLE, "connection reset by peer (test)");
      }
    }
    std::lock_guard<std::mutex> lock(w_->mu);
    w_->partials.erase(id);
    if (!sessions_.count(u.header.header().session())) {
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "unknown session");
    }
    w_->updates.push_back(u);
    w_->cv.notify_all();
    auto decoded = DecodeBundle(u.payload);
    const ChecksumAlgorithm algorithm = u.header.checksum_algorithm() == v1::CHECKSUM_XXH3_128
                                            ? ChecksumAlgorithm::kXxh3_128
                                            : ChecksumAlgorithm::kSha256;
    if (!decoded.ok() || ChecksumHex(algorithm, u.payload) != u.header.checksum()) {
      resp->set_accepted(false);
      resp->set_reason("bad payload");
      return grpc::Status::OK;
    }
    if (w_->phase == 0 && !u.header.is_delta()) {
      w_->SetGlobal(*decoded);
      w_->phase = 1;
    } else if (w_->phase == 1 && u.header.is_delta() && u.header.base_version() == w_->version) {
      TensorBundle next = w_->global;
      for (auto& t : next.tensors) {
        const auto& d = decoded->Find(t.name)->values;
        for (size_t i = 0; i < t.values.size(); ++i) t.values[i] += d[i];
      }
      w_->SetGlobal(next);
      w_->phase = 2;
    } else {
      resp->set_accepted(false);
      resp->set_reason("unexpected update");
      return grpc::Status::OK;
    }
    resp->set_accepted(true);
    resp->set_round(u.header.round());
    return grpc::Status::OK;
  }

  grpc::Status GetUploadStatus(grpc::ServerContext*, const v1::UploadStatusRequest* req,
                               v1::UploadStatus* resp) override {
    std::lock_guard<std::mutex> lock(w_->mu);
    ++w_->status_queries;
    auto it = w_->partials.find(req->upload_id());
    resp->set_found(it != w_->partials.end());
    if (it != w_->partials.end()) {
      resp->set_received_bytes(it->second.size());
      resp->set_total_bytes(w_->partial_totals[req->upload_id()]);
    }
    return grpc::Status::OK;
  }

  grpc::Status ReportMetrics(grpc::ServerContext*, const v1::MetricsReport* req, v1::MetricsAck*) override {
    std::lock_guard<std::mutex> lock(w_->mu);
    w_->reports.push_back(*req);
    if (w_->phase == 2) w_->phase = 3;
    return grpc::Status::OK;
  }

 private:
  // Requires w_->mu.
  void RecordPeer(grpc::ServerContext* ctx) {
    auto certs = ctx->auth_context()->FindPropertyValues(GRPC_X509_PEM_CERT_PROPERTY_NAME);
    w_->peer_certs.push_back(certs.empty() ? "" : std::string(certs.front().data(), certs.front().size()));
    w_->cv.notify_all();
  }

  World* w_;
  std::string prefix_;
  std::set<std::string> sessions_;  // guarded by w_->mu; lost on restart
};

class Server {
 public:
  Server(World* world, std::string prefix, int port,
         std::shared_ptr<grpc::ServerCredentials> creds = grpc::InsecureServerCredentials())
      : service_(world, std::move(prefix)) {
    grpc::ServerBuilder b;
    b.AddListeningPort("127.0.0.1:" + std::to_string(port), creds, &port_);
    b.RegisterService(&service_);
    server_ = b.BuildAndStart();
  }
  ~Server() { Shutdown(); }
  void Shutdown() {
    if (server_) {
      server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
      server_->Wait();
      server_.reset();
    }
  }
  int port() const { return port_; }

 private:
  FakeAggregator service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

class AggregatorClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::TestDir("client-test");
    for (int i = 0; i < 10; ++i) train_.push_back({"text " + std::to_string(i), i % 3});
    for (int i = 0; i < 4; ++i) eval_.push_back({"eval " + std::to_string(i), i % 2 == 0 ? 2 : 1});
    world_.config.set_local_steps(7);
    world_.config.set_batch_size(4);
    world_.config.set_learning_rate(0.25f);  // exact in binary: deltas compare exactly
    world_.config.set_weight_decay(0.01f);
    world_.config.set_seed(11);
    world_.config.set_max_grad_norm(1.0f);
    world_.config.set_block_size(4);
    auto serving_model = std::make_unique<FakeClassifier>(TestLabels());
    serving_fake_ = serving_model.get();
    serving_ = std::make_unique<ServingModel>(std::move(serving_model), "default/job");
    store_ = std::make_unique<StateStore>(dir_.string(), "default/job");
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::unique_ptr<AggregatorClient> MakeClient(int port, TrainableModel* trainer = nullptr,
                                               ServingModel* serving = nullptr, size_t chunk_bytes = 64,
                                               const ChannelTls& tls = {}) {
    ClientOptions o;
    o.job = "default/job";
    o.agent_id = "agent-7";
    o.node_name = "node-7";
    o.token = "secret";
    o.token_file = token_file_;
    o.token_recheck = token_recheck_;
    o.join_refusal_retry = join_refusal_retry_;
    o.backoff_initial = std::chrono::milliseconds(5);
    o.backoff_max = std::chrono::milliseconds(50);
    o.jitter_seed = 1;
    o.chunk_bytes = chunk_bytes;  // default 64: many chunks even for a tiny update
    ClientDeps d;
    d.trainer = trainer != nullptr ? trainer : &trainer_;
    d.serving = serving != nullptr ? serving : serving_.get();
    d.store = store_.get();
    d.metrics = &metrics_;
    d.train_data = &train_;
    d.eval_data = &eval_;
    return std::make_unique<AggregatorClient>(
        AggregatorClient::Dial("127.0.0.1:" + std::to_string(port), tls), o, d);
  }

  // Runs the client on a thread; fails the test (and stops it) after 30 s.
  StatusOr<RunOutcome> RunWithDeadline(AggregatorClient& client) {
    auto fut = std::async(std::launch::async, [&] { return client.Run(); });
    if (fut.wait_for(std::chrono::seconds(30)) != std::future_status::ready) {
      ADD_FAILURE() << "client loop did not finish within 30 s";
      client.Stop();
    }
    return fut.get();
  }

  // One client with `chunk_bytes` against a fresh aggregator on world_, run to its
  // end within the deadline; a failed run fails the test. World_ holds what it saw.
  void RunClient(size_t chunk_bytes = 64) {
    Server server(&world_, "s", 0);
    auto client = MakeClient(server.port(), nullptr, nullptr, chunk_bytes);
    auto outcome = RunWithDeadline(*client);
    ASSERT_TRUE(outcome.ok()) << outcome.status().ToString();
  }

  std::filesystem::path dir_;
  std::string token_file_;  // ClientOptions::token_file of the clients MakeClient makes
  std::chrono::milliseconds token_recheck_{10'000};
  std::chrono::milliseconds join_refusal_retry_{180'000};
  World world_;
  FakeClassifier trainer_{TestLabels()};
  FakeClassifier* serving_fake_ = nullptr;
  std::unique_ptr<ServingModel> serving_;
  std::unique_ptr<StateStore> store_;
  AgentMetrics metrics_;
  std::vector<Example> train_;
  std::vector<Example> eval_;
};

// Issue 14, item 2: an aggregator that asks for XXH3-128 gets XXH3-128
// uploads (header checksum and bundle trailer). One that does not (older
// aggregators: RunsInitializeTrainEvaluateDoneAndServesTheFinalGlobal) gets
// SHA-256.
TEST_F(AggregatorClientTest, UploadsUseXxh3WhenTheAggregatorAsksForIt) {
  world_.config.set_update_codec("int8");
  world_.config.set_block_size(64);
  world_.codec = "int8";
  world_.upload_checksum = v1::CHECKSUM_XXH3_128;
  RunClient();
  std::lock_guard<std::mutex> lock(world_.mu);
  ASSERT_EQ(world_.updates.size(), 2u);
  for (const ReceivedUpdate& u : world_.updates) {  // INITIALIZE and TRAIN
    EXPECT_EQ(u.header.checksum_algorithm(), v1::CHECKSUM_XXH3_128);
    EXPECT_EQ(u.header.checksum(), Xxh3_128Hex(u.payload));
    auto header = InspectBundle(u.payload);
    ASSERT_TRUE(header.ok()) << header.status().ToString();
    EXPECT_EQ(header->trailer, ChecksumAlgorithm::kXxh3_128);
    EXPECT_TRUE(DecodeBundle(u.payload).ok());
  }
}

TEST_F(AggregatorClientTest, RunsInitializeTrainEvaluateDoneAndServesTheFinalGlobal) {
  world_.codec = "fp32";
  world_.config.set_update_codec("fp32");
  TensorBundle initial = trainer_.ExportTrainable();
  Server server(&world_, "s", 0);
  auto client = MakeClient(server.port());
  auto outcome = RunWithDeadline(*client);
  ASSERT_TRUE(outcome.ok()) << outcome.status().ToString();
  EXPECT_EQ(*outcome, RunOutcome::kDone);

  std::lock_guard<std::mutex> lock(world_.mu);
  ASSERT_EQ(world_.joins.size(), 1u);
  const v1::JoinRequest& join = world_.joins[0];
  EXPECT_EQ(join.header().protocol_version(), 1u);
  EXPECT_EQ(join.header().job(), "default/job");
  EXPECT_EQ(join.header().agent_id(), "agent-7");
  EXPECT_EQ(join.header().session(), "");
  EXPECT_EQ(join.node_name(), "node-7");
  EXPECT_EQ(join.token(), "secret");
  EXPECT_EQ(join.capabilities().num_train_examples(), 10);
  EXPECT_EQ(join.capabilities().num_eval_examples(), 4);
  EXPECT_EQ(
      std::vector<std::string>(join.capabilities().codecs().begin(), join.capabilities().codecs().end()),
      (std::vector<std::string>{"fp32", "fp16", "bf16", "int8", "int4"}));

  ASSERT_EQ(world_.updates.size(), 2u);
  // INITIALIZE: the fresh state, in full, fp32.
  const ReceivedUpdate& init = world_.updates[0];
  EXPECT_FALSE(init.header.is_delta());
  EXPECT_EQ(init.header.round(), 0);
  EXPECT_EQ(init.header.base_version(), 0);
  EXPECT_EQ(init.header.num_examples(), 10);
  EXPECT_EQ(init.header.total_bytes(), init.payload.size());
  EXPECT_EQ(init.header.checksum(), Sha256Hex(init.payload));
  EXPECT_EQ(init.header.checksum_algorithm(), v1::CHECKSUM_SHA256);  // an older aggregator asks for nothing
  EXPECT_EQ(init.header.raw_bytes(), initial.Fp32Bytes());
  auto init_bundle = DecodeBundle(init.payload);
  ASSERT_TRUE(init_bundle.ok());
  for (const auto& t : initial.tensors) EXPECT_EQ(init_bundle->Find(t.name)->values, t.values) << t.name;

  // TRAIN: a delta against v1 with the round's hyper-parameters.
  const ReceivedUpdate& upd = world_.updates[1];
  EXPECT_TRUE(upd.header.is_delta());
  EXPECT_EQ(upd.header.header().session(), "s1");
  EXPECT_EQ(upd.header.round(), 1);
  EXPECT_EQ(upd.header.base_version(), 1);
  EXPECT_EQ(upd.header.num_examples(), 10);
  EXPECT_EQ(upd.header.steps(), 7);
  EXPECT_DOUBLE_EQ(upd.header.train_loss(), 0.5 + 1.0 / 7);
  EXPECT_EQ(upd.header.total_bytes(), upd.payload.size());
  EXPECT_EQ(upd.header.checksum(), Sha256Hex(upd.payload));
  EXPECT_EQ(upd.header.raw_bytes(), initial.Fp32Bytes());
  ASSERT_GT(upd.chunk_sizes.size(), 1u);
  for (size_t s : upd.chunk_sizes) {
    EXPECT_LE(s, 64u);
    EXPECT_LE(s, kMaxChunkBytes);
  }
  auto delta = DecodeBundle(upd.payload);
  ASSERT_TRUE(delta.ok()) << delta.status().ToString();
  const auto& dw = delta->Find("classifier.weight")->values;
  const auto& db = delta->Find("classifier.bias")->values;
  for (size_t i = 0; i < dw.size(); ++i) EXPECT_FLOAT_EQ(dw[i], 0.25f * float(i + 1)) << i;
  for (float v : db) EXPECT_FLOAT_EQ(v, -0.25f);
  EXPECT_EQ(trainer_.last_train.steps, 7);
  EXPECT_EQ(trainer_.last_train.batch_size, 4);
  EXPECT_DOUBLE_EQ(trainer_.last_train.learning_rate, 0.25);
  EXPECT_EQ(trainer_.last_train.seed, MixTrainingSeed(11, "agent-7", 1));

  // EVALUATE: the new v2, fetched once and reported on the local eval set.
  ASSERT_EQ(world_.reports.size(), 1u);
  const v1::MetricsReport& report = world_.reports[0];
  EXPECT_EQ(report.phase(), "evaluate");
  EXPECT_EQ(report.round(), 1);
  EXPECT_EQ(report.global_version(), 2);
  EXPECT_EQ(report.num_examples(), 4);
  // After the update every bias is equal but index 2 (0.2 - 0.25): argmax is 2,
  // and eval labels 2 are half of the set.
  EXPECT_DOUBLE_EQ(report.values().at("accuracy"), 0.5);
  EXPECT_DOUBLE_EQ(report.values().at("loss"), 1.25);
  // v1 for TRAIN, v2 for EVALUATE; DONE at v2 needs no fetch.
  EXPECT_EQ(world_.fetched_versions, (std::vector<int64_t>{1, 2}));

  // Serving got the final global, the state dir holds it, metrics saw it.
  EXPECT_TRUE(serving_->ready());
  EXPECT_EQ(serving_->version(), 2);
  TensorBundle served = serving_fake_->ExportTrainable();
  for (const auto& t : world_.global.tensors) EXPECT_EQ(served.Find(t.name)->values, t.values) << t.name;
  auto persisted = store_->LoadGlobal();
  ASSERT_TRUE(persisted.ok()) << persisted.status().ToString();
  ASSERT_TRUE(persisted->has_value());
  EXPECT_EQ((*persisted)->version, 2);
  EXPECT_EQ((*persisted)->checksum, world_.checksum);
  EXPECT_TRUE((*persisted)->final) << "told DONE with v2: a restart after the job serves it without joining";
  EXPECT_EQ(metrics_.global_version.Value(), 2);
  EXPECT_EQ(metrics_.train_steps_total.Value(), 7);
  EXPECT_EQ(metrics_.rounds_participated_total.Value(), 1);
  EXPECT_EQ(metrics_.update_bytes.Value(), double(upd.payload.size()));
  EXPECT_EQ(metrics_.bytes_sent_total.Value(), double(init.payload.size() + upd.payload.size()));
  EXPECT_GT(metrics_.bytes_received_total.Value(), 0);
  EXPECT_DOUBLE_EQ(metrics_.eval_accuracy.Value(), 0.5);
}

// A TRAIN task with evaluate_global: the agent evaluates the global it is
// about to train from (v1) first, as an EVALUATE task would, and sends the
// result in the update's header instead of a ReportMetrics call.
TEST_F(AggregatorClientTest, ATrainTaskThatAsksForTheEvaluationGetsItWithTheUpdate) {
  world_.evaluate_global = true;
  FakeClassifier reference(TestLabels());  // what v1, the initial state, scores on the eval set
  ASSERT_TRUE(reference.ImportTrainable(trainer_.ExportTrainable()).ok());
  auto expected = reference.Evaluate(eval_, 8);
  ASSERT_TRUE(expected.ok());
  RunClient();

  std::lock_guard<std::mutex> lock(world_.mu);
  ASSERT_EQ(world_.joins.size(), 1u);
  EXPECT_TRUE(world_.joins[0].capabilities().evaluates_before_training());
  ASSERT_EQ(world_.updates.size(), 2u);
  EXPECT_FALSE(world_.updates[0].header.has_evaluation());  // INITIALIZE
  const v1::UpdateHeader& h = world_.updates[1].header;
  ASSERT_TRUE(h.has_evaluation());
  EXPECT_EQ(h.evaluation().global_version(), 1);
  EXPECT_EQ(h.evaluation().num_examples(), 4);
  EXPECT_DOUBLE_EQ(h.evaluation().values().at("accuracy"), expected->accuracy);
  EXPECT_DOUBLE_EQ(h.evaluation().values().at("loss"), expected->mean_loss);
  // Of v1, before training (then v2, after it, for the EVALUATE task).
  EXPECT_EQ(trainer_.trains_before_evaluate, (std::vector<int>{0, 1}));
  // The training itself is what it is without the evaluation.
  EXPECT_EQ(trainer_.last_train.steps, 7);
  EXPECT_EQ(trainer_.last_train.seed, MixTrainingSeed(11, "agent-7", 1));
  // Only the EVALUATE task of v2 was a ReportMetrics call.
  ASSERT_EQ(world_.reports.size(), 1u);
  EXPECT_EQ(world_.reports[0].global_version(), 2);
  EXPECT_EQ(world_.fetched_versions, (std::vector<int64_t>{1, 2}));
}

TEST_F(AggregatorClientTest, BrokenUploadsResumeFromTheBytesTheAggregatorHeld) {
  world_.cut_upload_after = 32;
  world_.cuts_left = 2;  // the INITIALIZE upload and the round-1 update each break once
  Server server(&world_, "s", 0);
  auto client = MakeClient(server.port(), nullptr, nullptr, /*chunk_bytes=*/16);
  auto outcome = RunWithDeadline(*client);
  ASSERT_TRUE(outcome.ok()) << outcome.status().ToString();
  EXPECT_EQ(*outcome, RunOutcome::kDone);
  std::lock_guard<std::mutex> lock(world_.mu);
  EXPECT_EQ(world_.cuts_left, 0);
  ASSERT_EQ(world_.updates.size(), 2u);
  for (const ReceivedUpdate& u : world_.updates) {
    ASSERT_GT(u.header.total_bytes(), 32u);  // large enough to be cut
    EXPECT_FALSE(u.header.upload_id().empty());
    // Held prefix + resumed rest = the whole update, byte for byte.
    EXPECT_EQ(u.payload.size(), u.header.total_bytes());
    EXPECT_EQ(Sha256Hex(u.payload), u.header.checksum());
    // The resumed stream carried only the rest.
    EXPECT_GE(u.header.offset(), 32u);
    size_t rest = 0;
    for (size_t n : u.chunk_sizes) rest += n;
    EXPECT_EQ(rest, u.header.total_bytes() - u.header.offset());
  }
  EXPECT_NE(world_.updates[0].header.upload_id(), world_.updates[1].header.upload_id());
  EXPECT_EQ(world_.status_queries, 2);
  EXPECT_TRUE(world_.partials.empty());
  EXPECT_EQ(metrics_.upload_resumes_total.Value(), 2);
  EXPECT_EQ(metrics_.rounds_participated_total.Value(), 1);
  EXPECT_EQ(world_.phase, 3);  // the job went on to evaluate and finish
}

TEST_F(AggregatorClientTest, BrokenUploadStartsOverWhenTheAggregatorHoldsNothing) {
  world_.cut_upload_after = 32;
  world_.cuts_left = 1;
  world_.forget_partials = true;  // e.g. the aggregator restarted or evicted it
  ASSERT_NO_FATAL_FAILURE(RunClient(/*chunk_bytes=*/16));
  std::lock_guard<std::mutex> lock(world_.mu);
  ASSERT_EQ(world_.updates.size(), 2u);
  EXPECT_EQ(world_.updates[0].header.offset(), 0u);
  EXPECT_EQ(Sha256Hex(world_.updates[0].payload), world_.updates[0].header.checksum());
  EXPECT_EQ(world_.status_queries, 1);
  // Three streams: the broken one, its restart from byte 0, the round-1 update.
  EXPECT_EQ(world_.stream_offsets, (std::vector<uint64_t>{0, 0, 0}));
  EXPECT_EQ(metrics_.upload_resumes_total.Value(), 0);
}

TEST_F(AggregatorClientTest, Int8UpdatesDecodeToTheDeltaWithinTheCodecError) {
  world_.config.set_update_codec("int8");
  ASSERT_NO_FATAL_FAILURE(RunClient());
  std::lock_guard<std::mutex> lock(world_.mu);
  ASSERT_EQ(world_.updates.size(), 2u);
  auto delta = DecodeBundle(world_.updates[1].payload);
  ASSERT_TRUE(delta.ok());
  const auto& dw = delta->Find("classifier.weight")->values;
  // Blocks of 4: the largest |value| in a block is at most 0.25 * 14 = 3.5, so
  // the int8 step is <= 3.5/127.
  for (size_t i = 0; i < dw.size(); ++i) EXPECT_NEAR(dw[i], 0.25f * float(i + 1), 3.5 / 127) << i;
  EXPECT_LT(world_.updates[1].payload.size(), world_.updates[0].payload.size());
}

// SCAFFOLD: the task's c corrects every step (c_i = 0 on a fresh node) and the
// agent keeps c_i+ = c_i - c - delta / (K eta) in its state dir. K = 7, eta = 0.25
// (K eta = 1.75), c = 0.5 for every weight and -1 for every bias. The fake trains
//   weight[i] += 0.25 (i + 1) - 1.75 * 0.5,  bias += -0.25 + 1.75 * 1 = 1.5
// so c_i+ = -0.5 - (0.25 (i + 1) - 0.875) / 1.75 = -(i + 1) / 7 for the weights and
// 1 - 1.5 / 1.75 = 1 / 7 for the biases. Nothing beyond the delta is uploaded.
TEST_F(AggregatorClientTest, ScaffoldCorrectsTheStepsAndKeepsTheControlVariateInTheStateDir) {
  world_.config.set_update_codec("fp32");
  TensorBundle c = trainer_.ExportTrainable();
  for (float& v : c.Find("classifier.weight")->values) v = 0.5f;
  for (float& v : c.Find("classifier.bias")->values) v = -1.0f;
  world_.config.mutable_scaffold()->set_enabled(true);
  world_.config.mutable_scaffold()->set_control(*EncodeBundle(c, EncodeOptions{}));
  ASSERT_NO_FATAL_FAILURE(RunClient());
  std::lock_guard<std::mutex> lock(world_.mu);
  ASSERT_EQ(world_.updates.size(), 2u);
  ASSERT_NE(trainer_.last_train.step_correction, nullptr);
  EXPECT_EQ(trainer_.last_train.step_correction->Find("classifier.weight")->values,
            c.Find("classifier.weight")->values);
  EXPECT_EQ(trainer_.last_train.step_correction->Find("classifier.bias")->values,
            c.Find("classifier.bias")->values);
  auto delta = DecodeBundle(world_.updates[1].payload);
  ASSERT_TRUE(delta.ok()) << delta.status().ToString();
  EXPECT_EQ(delta->tensors.size(), 2u) << "the update holds the model delta only";
  const auto& dw = delta->Find("classifier.weight")->values;
  for (size_t i = 0; i < dw.size(); ++i) EXPECT_FLOAT_EQ(dw[i], 0.25f * float(i + 1) - 0.875f) << i;
  for (float v : delta->Find("classifier.bias")->values) EXPECT_FLOAT_EQ(v, 1.5f);

  std::map<std::string, std::string> meta;
  auto c_i = ReadSafetensorsBundle((dir_ / "scaffold-control.safetensors").string(), &meta);
  ASSERT_TRUE(c_i.ok()) << c_i.status().ToString();
  EXPECT_EQ(meta["job"], "default/job");
  EXPECT_EQ(meta["round"], "1");
  const auto& ciw = c_i->Find("classifier.weight")->values;
  for (size_t i = 0; i < ciw.size(); ++i) EXPECT_NEAR(ciw[i], -float(i + 1) / 7, 1e-6) << i;
  for (float v : c_i->Find("classifier.bias")->values) EXPECT_NEAR(v, 1.0f / 7, 1e-6);
}

TEST_F(AggregatorClientTest, TopKInt4WithErrorFeedbackUploadsV2AndKeepsTheResidualInTheStateDir) {
  world_.config.set_update_codec("int4");
  world_.config.set_topk_fraction(0.25);
  world_.config.set_error_feedback(true);
  ASSERT_NO_FATAL_FAILURE(RunClient());
  std::lock_guard<std::mutex> lock(world_.mu);
  ASSERT_EQ(world_.updates.size(), 2u);
  const ReceivedUpdate& upd = world_.updates[1];
  auto header = InspectBundle(upd.payload);
  ASSERT_TRUE(header.ok());
  EXPECT_EQ(header->version, 2);
  EXPECT_EQ(header->codec, Codec::kInt4);
  EXPECT_TRUE(header->sparse);
  auto sent = DecodeBundle(upd.payload);
  ASSERT_TRUE(sent.ok()) << sent.status().ToString();
  // What top-k dropped is the residual, persisted for the next round.
  EXPECT_TRUE(std::filesystem::exists(dir_ / "error-feedback.safetensors"));
  EXPECT_GT(metrics_.error_feedback_residual_norm.Value(), 0);
  EXPECT_EQ(metrics_.update_raw_bytes_total.Value(), double(upd.header.raw_bytes()));
  EXPECT_EQ(metrics_.update_encoded_bytes_total.Value(), double(upd.payload.size()));  // framing > 21 floats
}

TEST_F(AggregatorClientTest, RejoinsAndFinishesAfterTheAggregatorRestarts) {
  world_.config.set_update_codec("fp32");
  auto first = std::make_unique<Server>(&world_, "a", 0);
  int port = first->port();
  auto client = MakeClient(port);
  auto fut = std::async(std::launch::async, [&] { return client->Run(); });
  {
    // Let the first incarnation take the initial state, then kill it.
    std::unique_lock<std::mutex> lock(world_.mu);
    ASSERT_TRUE(world_.cv.wait_for(lock, std::chrono::seconds(30), [&] { return world_.phase >= 1; }));
  }
  first->Shutdown();
  // The restarted aggregator knows the job (its "checkpoint" is world_) but no sessions.
  Server second(&world_, "b", port);
  ASSERT_EQ(second.port(), port);
  ASSERT_EQ(fut.wait_for(std::chrono::seconds(30)), std::future_status::ready);
  auto outcome = fut.get();
  ASSERT_TRUE(outcome.ok()) << outcome.status().ToString();
  EXPECT_EQ(*outcome, RunOutcome::kDone);
  std::lock_guard<std::mutex> lock(world_.mu);
  ASSERT_EQ(world_.joins.size(), 2u);
  EXPECT_EQ(world_.updates.back().header.header().session(), "b2");
  EXPECT_EQ(serving_->version(), 2);
}

// A projected service-account token is rotated in place by the kubelet (a
// symlink swap) and lives 10 minutes: the client read --token-file once at
// start, so an agent rejoining a restarted aggregator later presented an
// expired token. Now every Join reads the file again.
TEST_F(AggregatorClientTest, RejoinPresentsTheTokenTheFileHoldsNow) {
  testing::MountedSecret mount("client-token-rotation");
  mount.Publish({{"token", "  token-1\n"}});
  token_file_ = mount.path("token");
  world_.config.set_update_codec("fp32");
  auto first = std::make_unique<Server>(&world_, "a", 0);
  const int port = first->port();
  auto client = MakeClient(port);
  auto fut = std::async(std::launch::async, [&] { return client->Run(); });
  {
    std::unique_lock<std::mutex> lock(world_.mu);
    ASSERT_TRUE(world_.cv.wait_for(lock, std::chrono::seconds(30), [&] { return world_.phase >= 1; }));
  }
  mount.Publish({{"token", "token-2\n"}});  // the kubelet's refresh
  first->Shutdown();
  Server second(&world_, "b", port);
  ASSERT_EQ(fut.wait_for(std::chrono::seconds(30)), std::future_status::ready);
  auto outcome = fut.get();
  ASSERT_TRUE(outcome.ok()) << outcome.status().ToString();
  std::lock_guard<std::mutex> lock(world_.mu);
  ASSERT_EQ(world_.joins.size(), 2u);
  EXPECT_EQ(world_.joins[0].token(), "token-1");
  EXPECT_EQ(world_.joins[1].token(), "token-2");
}

// Every request after Join carries the token the file holds (re-read every
// token_recheck): the aggregator extends the session to a renewed token's
// expiry, so a live agent's session never ends at the first token's.
TEST_F(AggregatorClientTest, EveryRequestCarriesTheTokenTheFileHoldsNow) {
  testing::MountedSecret mount("client-token-header");
  mount.Publish({{"token", "token-1\n"}});
  token_file_ = mount.path("token");
  token_recheck_ = std::chrono::milliseconds(0);
  world_.config.set_update_codec("fp32");
  world_.waits_left = 4;
  world_.on_task = [&](size_t n) {
    if (n == 2) mount.Publish({{"token", "token-2\n"}});  // the kubelet's renewal
  };
  Server server(&world_, "a", 0);
  auto client = MakeClient(server.port());
  auto outcome = RunWithDeadline(*client);
  ASSERT_TRUE(outcome.ok()) << outcome.status().ToString();
  std::lock_guard<std::mutex> lock(world_.mu);
  ASSERT_EQ(world_.joins.size(), 1u);
  EXPECT_EQ(world_.joins[0].token(), "token-1");
  EXPECT_TRUE(world_.joins[0].header().token().empty());  // Join has its own field
  ASSERT_GE(world_.task_tokens.size(), 5u);
  EXPECT_EQ(world_.task_tokens[0], "token-1");
  EXPECT_EQ(world_.task_tokens[1], "token-1");
  for (size_t i = 2; i < world_.task_tokens.size(); ++i) EXPECT_EQ(world_.task_tokens[i], "token-2") << i;
  ASSERT_FALSE(world_.updates.empty());
  EXPECT_EQ(world_.updates.back().header.header().token(), "token-2");
}

// A projected token refused at Join (expired before the kubelet renewed it, a
// clock being corrected) is retried, re-reading the file, within
// join_refusal_retry; past it, or with a static token, the refusal is fatal.
TEST_F(AggregatorClientTest, AJoinRefusedForItsTokenIsRetriedWithTheRenewedFile) {
  testing::MountedSecret mount("client-token-refused");
  mount.Publish({{"token", "expired-token"}});
  token_file_ = mount.path("token");
  world_.config.set_update_codec("fp32");
  world_.refuse_joins = 3;
  Server server(&world_, "a", 0);
  std::thread renew([&] {
    for (;;) {
      {
        std::lock_guard<std::mutex> lock(world_.mu);
        if (world_.refused_join_tokens.size() >= 2) break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    mount.Publish({{"token", "renewed-token"}});
  });
  auto client = MakeClient(server.port());
  auto outcome = RunWithDeadline(*client);
  renew.join();
  ASSERT_TRUE(outcome.ok()) << outcome.status().ToString();
  EXPECT_EQ(*outcome, RunOutcome::kDone);
  std::lock_guard<std::mutex> lock(world_.mu);
  ASSERT_EQ(world_.refused_join_tokens.size(), 3u);
  EXPECT_EQ(world_.refused_join_tokens[0], "expired-token");
  ASSERT_EQ(world_.joins.size(), 1u);
  EXPECT_EQ(world_.joins[0].token(), "renewed-token");
}

TEST_F(AggregatorClientTest, AJoinRefusedForItsTokenIsFatalPastTheRetryWindowOrWithAStaticToken) {
  for (bool with_file : {true, false}) {
    SCOPED_TRACE(with_file ? "token file, no retry window" : "static token");
    testing::MountedSecret mount("client-token-fatal");
    mount.Publish({{"token", "token-1"}});
    token_file_ = with_file ? mount.path("token") : "";
    join_refusal_retry_ = std::chrono::milliseconds(0);
    World world;
    world.refuse_joins = 1000;
    Server server(&world, "a", 0);
    auto client = MakeClient(server.port());
    auto outcome = RunWithDeadline(*client);
    ASSERT_FALSE(outcome.ok());
    EXPECT_EQ(outcome.status().code(), StatusCode::kUnauthenticated) << outcome.status().ToString();
    EXPECT_NE(outcome.status().message().find("refused this agent's token"), std::string::npos)
        << outcome.status().ToString();
    std::lock_guard<std::mutex> lock(world.mu);
    EXPECT_EQ(world.refused_join_tokens.size(), 1u);
  }
}

// A token file that cannot be read at a rejoin (gone, or not a token) does not
// end the agent: it joins with the token it read last.
TEST_F(AggregatorClientTest, RejoinKeepsTheLastTokenWhenTheFileCannotBeRead) {
  testing::MountedSecret mount("client-token-broken");
  mount.Publish({{"token", "token-1"}});
  token_file_ = mount.path("token");
  world_.config.set_update_codec("fp32");
  auto first = std::make_unique<Server>(&world_, "a", 0);
  const int port = first->port();
  auto client = MakeClient(port);
  auto fut = std::async(std::launch::async, [&] { return client->Run(); });
  {
    std::unique_lock<std::mutex> lock(world_.mu);
    ASSERT_TRUE(world_.cv.wait_for(lock, std::chrono::seconds(30), [&] { return world_.phase >= 1; }));
  }
  mount.Publish({{"token", std::string(kMaxTokenFileBytes + 1, 't')}});
  first->Shutdown();
  Server second(&world_, "b", port);
  ASSERT_EQ(fut.wait_for(std::chrono::seconds(30)), std::future_status::ready);
  auto outcome = fut.get();
  ASSERT_TRUE(outcome.ok()) << outcome.status().ToString();
  std::lock_guard<std::mutex> lock(world_.mu);
  ASSERT_EQ(world_.joins.size(), 2u);
  EXPECT_EQ(world_.joins[1].token(), "token-1");
}

TEST(ReadTokenFileTest, TrimsAndBoundsWhatItReads) {
  testing::MountedSecret mount("read-token-file");
  mount.Publish({{"ok", "\n eyJhbGciOiJSUzI1NiJ9.e30.c2ln \r\n"},
                 {"blank", " \n\t"},
                 {"big", std::string(kMaxTokenFileBytes + 1, 'x')},
                 {"max", std::string(kMaxTokenFileBytes, 'x')}});
  auto ok = ReadTokenFile(mount.path("ok"));
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_EQ(*ok, "eyJhbGciOiJSUzI1NiJ9.e30.c2ln");
  EXPECT_EQ(ReadTokenFile(mount.path("max"))->size(), kMaxTokenFileBytes);
  EXPECT_EQ(ReadTokenFile(mount.path("blank")).status().code(), StatusCode::kInvalidArgument);
  auto big = ReadTokenFile(mount.path("big"));
  EXPECT_EQ(big.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(big.status().message().find(mount.path("big")), std::string::npos);
  EXPECT_EQ(ReadTokenFile(mount.path("missing")).status().code(), StatusCode::kNotFound);
}

TEST_F(AggregatorClientTest, RetriesWhileTheAggregatorIsDownAndStopsPromptly) {
  auto port = PickFreePort();
  ASSERT_TRUE(port.ok());
  auto client = MakeClient(*port);  // nothing listens there
  auto fut = std::async(std::launch::async, [&] { return client->Run(); });
  EXPECT_EQ(fut.wait_for(std::chrono::milliseconds(200)), std::future_status::timeout);
  auto start = std::chrono::steady_clock::now();
  client->Stop();
  ASSERT_EQ(fut.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
  auto outcome = fut.get();
  ASSERT_TRUE(outcome.ok());
  EXPECT_EQ(*outcome, RunOutcome::kStopped);
}

TEST_F(AggregatorClientTest, StopEndsALongWaitAtOnce) {
  Server server(&world_, "s", 0);
  world_.waits_left = 1000;
  auto client = MakeClient(server.port());
  auto fut = std::async(std::launch::async, [&] { return client->Run(); });
  {
    std::unique_lock<std::mutex> lock(world_.mu);
    ASSERT_TRUE(world_.cv.wait_for(lock, std::chrono::seconds(30), [&] { return !world_.joins.empty(); }));
  }
  client->Stop();
  ASSERT_EQ(fut.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  EXPECT_EQ(*fut.get(), RunOutcome::kStopped);
}

TEST_F(AggregatorClientTest, LargeStatesTravelInChunksWithinGrpcDefaultMessageLimits) {
  // 1.5M incompressible floats: ~6 MB per full state, more than one chunk, and
  // the server keeps gRPC's default 4 MiB receive limit; its global chunks are
  // exactly 4 MiB of data (above the client's default limit, hence Dial's).
  FakeClassifier big_trainer(TestLabels(), 1'500'000);
  ServingModel big_serving(std::make_unique<FakeClassifier>(TestLabels(), 1'500'000), "default/job");
  world_.send_chunk = kMaxChunkBytes;
  world_.config.set_update_codec("fp32");
  Server server(&world_, "s", 0);
  auto client = MakeClient(server.port(), &big_trainer, &big_serving, kSendChunkBytes);
  auto outcome = RunWithDeadline(*client);
  ASSERT_TRUE(outcome.ok()) << outcome.status().ToString();
  EXPECT_EQ(*outcome, RunOutcome::kDone);
  std::lock_guard<std::mutex> lock(world_.mu);
  ASSERT_EQ(world_.updates.size(), 2u);
  const ReceivedUpdate& init = world_.updates[0];
  EXPECT_GT(init.payload.size(), kMaxChunkBytes);
  ASSERT_GE(init.chunk_sizes.size(), 2u);
  for (size_t s : init.chunk_sizes) EXPECT_LE(s, kMaxChunkBytes);
  EXPECT_EQ(init.header.checksum(), Sha256Hex(init.payload));
  EXPECT_EQ(big_serving.version(), 2);
}

class RefusingAggregator final : public v1::Aggregator::Service {
 public:
  grpc::Status Join(grpc::ServerContext*, const v1::JoinRequest*, v1::JoinResponse*) override {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "this aggregator speaks protocol v2");
  }
};

TEST_F(AggregatorClientTest, ProtocolRefusalAtJoinIsFatalWithTheReason) {
  RefusingAggregator service;
  grpc::ServerBuilder b;
  int port = 0;
  b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  b.RegisterService(&service);
  auto server = b.BuildAndStart();
  auto client = MakeClient(port);
  auto outcome = RunWithDeadline(*client);
  ASSERT_FALSE(outcome.ok());
  EXPECT_EQ(outcome.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(outcome.status().message().find("protocol v2"), std::string::npos) << outcome.status().message();
  server->Shutdown();
}

TEST_F(AggregatorClientTest, GlobalWithAnotherLayoutIsFatal) {
  Server server(&world_, "s", 0);
  {
    std::lock_guard<std::mutex> lock(world_.mu);
    TensorBundle other;
    other.tensors.push_back({"classifier.weight", {3, 3}, std::vector<float>(9, 0.0f)});
    world_.SetGlobal(other);
    world_.phase = 1;
    world_.waits_left = 0;
  }
  auto client = MakeClient(server.port());
  auto outcome = RunWithDeadline(*client);
  ASSERT_FALSE(outcome.ok());
  EXPECT_EQ(outcome.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(outcome.status().message().find("does not fit"), std::string::npos) << outcome.status().message();
  EXPECT_FALSE(serving_->ready());
}

TEST_F(AggregatorClientTest, HeldVersionFromTheStateDirSkipsTheFetchForEvaluate) {
  Server server(&world_, "s", 0);
  {
    std::lock_guard<std::mutex> lock(world_.mu);
    world_.SetGlobal(trainer_.ExportTrainable());
    world_.phase = 2;
    world_.waits_left = 0;
  }
  auto client = MakeClient(server.port());
  client->Restore(PersistedGlobal{world_.global, world_.version, world_.checksum});
  auto outcome = RunWithDeadline(*client);
  ASSERT_TRUE(outcome.ok()) << outcome.status().ToString();
  std::lock_guard<std::mutex> lock(world_.mu);
  EXPECT_TRUE(world_.fetched_versions.empty());
  ASSERT_EQ(world_.reports.size(), 1u);
  EXPECT_EQ(world_.reports[0].global_version(), 1);
}

// ---- client certificate rotation (issue 10 item 8) --------------------------------------
// The aggregator requires a client certificate from its CA (mutual TLS), as
// fedge-aggregator --tls-client-ca does; the agent's files are a mounted Secret the
// operator renews.
class ClientTlsTest : public AggregatorClientTest {
 protected:
  void SetUp() override {
    AggregatorClientTest::SetUp();
    ca_ = testing::MakeCert("job-ca", nullptr);
    serving_ = testing::MakeCert("aggregator", &ca_, "DNS:aggregator.ns.svc");
  }
  std::shared_ptr<grpc::ServerCredentials> Mtls() const {
    grpc::SslServerCredentialsOptions ssl(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
    ssl.pem_root_certs = ca_.cert_pem;
    ssl.pem_key_cert_pairs.push_back({serving_.key_pem, serving_.cert_pem});
    return grpc::SslServerCredentials(ssl);
  }
  void Publish(testing::MountedSecret& secret, const testing::TestCert& client) {
    secret.Publish({{"ca.crt", ca_.cert_pem}, {"tls.crt", client.cert_pem}, {"tls.key", client.key_pem}});
  }
  // A client reading its credentials from `secret`, re-dialing when they change
  // (interval 0: every loop step looks), as fedge-agent is wired.
  std::unique_ptr<AggregatorClient> MakeTlsClient(int port, const testing::MountedSecret& secret) {
    auto files = TlsFiles::Open(
        {secret.path("ca.crt"), secret.path("tls.crt"), secret.path("tls.key"), "aggregator.ns.svc"},
        std::chrono::milliseconds(0));
    EXPECT_TRUE(files.ok()) << files.status().ToString();
    std::shared_ptr<TlsFiles> shared = std::move(files).value();
    auto client = MakeClient(port, nullptr, nullptr, 64, shared->Current());
    // Counts the loop's steps (each asks the redialer first).
    client->SetRedialer([this, redial = RedialOnTlsChange("127.0.0.1:" + std::to_string(port), shared)] {
      {
        std::lock_guard<std::mutex> lock(world_.mu);
        ++steps_;
        world_.cv.notify_all();
      }
      return redial();
    });
    return client;
  }
  // Waits until `pred` holds on the world (under its lock), up to 20 s.
  bool WaitFor(const std::function<bool()>& pred) {
    std::unique_lock<std::mutex> lock(world_.mu);
    return world_.cv.wait_for(lock, std::chrono::seconds(20), pred);
  }

  testing::TestCert ca_, serving_;
  int steps_ = 0;  // guarded by world_.mu
};

TEST_F(ClientTlsTest, RenewedCertificateIsPresentedOnTheNextConnectionWithoutRejoining) {
  world_.waits_left = 1'000'000;  // keep the agent asking (WAIT every 5 ms)
  testing::TestCert first = testing::MakeCert("agent-7", &ca_), renewed = testing::MakeCert("agent-7", &ca_);
  testing::MountedSecret secret("client-tls-renew");
  Publish(secret, first);
  Server server(&world_, "s", 0, Mtls());
  auto client = MakeTlsClient(server.port(), secret);
  auto run = std::async(std::launch::async, [&] { return client->Run(); });
  auto count = [&](const std::string& pem) {
    return std::count(world_.peer_certs.begin(), world_.peer_certs.end(), pem);
  };
  EXPECT_TRUE(WaitFor([&] { return count(first.cert_pem) >= 3; })) << "the first certificate in use";
  Publish(secret, renewed);  // the operator renewed it; the kubelet swapped the files
  bool switched = WaitFor([&] { return count(renewed.cert_pem) >= 3; });
  client->Stop();
  ASSERT_TRUE(run.get().ok());
  EXPECT_TRUE(switched) << "the renewed certificate was never presented";
  std::lock_guard<std::mutex> lock(world_.mu);
  auto first_new = std::find(world_.peer_certs.begin(), world_.peer_certs.end(), renewed.cert_pem);
  EXPECT_EQ(std::count(first_new, world_.peer_certs.end(), first.cert_pem), 0)
      << "the old channel is dropped";
  EXPECT_EQ(world_.joins.size(), 1u) << "the session survives the new connection";
}

// What an agent that never re-read its files meets once its certificate expires: every
// handshake fails. Here the first certificate is from a CA the aggregator does not
// trust; the operator's replacement lets the same process join and finish.
TEST_F(ClientTlsTest, RefusedCertificateIsReplacedWithoutARestart) {
  testing::TestCert other_ca = testing::MakeCert("other-ca", nullptr);
  testing::MountedSecret secret("client-tls-replace");
  Publish(secret, testing::MakeCert("agent-7", &other_ca));
  Server server(&world_, "s", 0, Mtls());
  auto client = MakeTlsClient(server.port(), secret);
  auto run = std::async(std::launch::async, [&] { return client->Run(); });
  // Three Joins refused at the handshake: the aggregator never sees a request.
  EXPECT_TRUE(WaitFor([&] { return steps_ >= 4; }));
  {
    std::lock_guard<std::mutex> lock(world_.mu);
    EXPECT_TRUE(world_.joins.empty());
  }
  Publish(secret, testing::MakeCert("agent-7", &ca_));
  if (run.wait_for(std::chrono::seconds(30)) != std::future_status::ready) {
    ADD_FAILURE() << "the agent did not finish with the replaced certificate";
    client->Stop();
  }
  auto outcome = run.get();
  ASSERT_TRUE(outcome.ok()) << outcome.status().ToString();
  EXPECT_EQ(*outcome, RunOutcome::kDone);
  EXPECT_EQ(world_.joins.size(), 1u);
}

}  // namespace
}  // namespace fedge::agent
