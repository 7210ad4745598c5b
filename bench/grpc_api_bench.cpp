// fedge_bench_grpc_api: what gRPC's callback API costs the server per agent
// round, against the async completion-queue API with one polling thread per
// core (issue 14, item 2).
//
// fedge-aggregator serves every RPC with the callback API. In gRPC 1.51 with
// the epoll1 poller that API runs its completions on CallbackAlternativeCQ's
// "nexting" threads, and a profile of fedge_bench_scale put half of the
// aggregator's CPU in the kernel, most of it threads waking each other
// (aggregator/README.md, "Sessions 20-21"). Whether a rewrite of the
// aggregator's server on the async API would save CPU is measured here first,
// on the same messages and the same traffic shape, with no fedge logic behind
// either server:
//
//   one iteration = 2 unary MetricsReport calls (an agent's GetTask and its
//   ReportMetrics), 1 client-streaming SubmitUpdate (a header chunk and one
//   data chunk of --upload-bytes, the int8 update) and 1 server-streaming
//   FetchGlobal (one GlobalChunk of --global-bytes, written as a slice that
//   references the server's bytes, then the status, as the aggregator does).
//
// The server runs in a forked child, so its CPU (utime + stime from
// /proc/<pid>/stat) and context switches (summed over /proc/<pid>/task/*) are
// its own; the load generator (sync stubs, --threads threads over --channels
// connections) runs in this process and shares the cores, as in
// fedge_bench_scale. Each --pairs pair runs both APIs back to back in
// alternating order, and the ratios async / callback are printed.
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "fedge.grpc.pb.h"
#include "fedge/version.h"

namespace {

namespace v1 = fedge::v1;

// ---------------------------------------------------------------- servers --

// The serialized GlobalChunk every FetchGlobal sends; built before serving.
std::string* g_global = nullptr;

grpc::ByteBuffer GlobalBuffer() {
  grpc::Slice slice(const_cast<char*>(g_global->data()), g_global->size(), grpc::Slice::STATIC_SLICE);
  return grpc::ByteBuffer(&slice, 1);
}

// The callback API, as fedge-aggregator uses it (server.cpp).
class CallbackServer final
    : public v1::Aggregator::WithRawCallbackMethod_FetchGlobal<v1::Aggregator::CallbackService> {
 public:
  grpc::ServerUnaryReactor* ReportMetrics(grpc::CallbackServerContext* ctx, const v1::MetricsReport*,
                                          v1::MetricsAck*) override {
    auto* reactor = ctx->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  grpc::ServerReadReactor<v1::UpdateChunk>* SubmitUpdate(grpc::CallbackServerContext*,
                                                         v1::SubmitUpdateResponse* response) override {
    class Upload final : public grpc::ServerReadReactor<v1::UpdateChunk> {
     public:
      explicit Upload(v1::SubmitUpdateResponse* response) : response_(response) { StartRead(&chunk_); }
      void OnReadDone(bool ok) override {
        if (!ok) {
          response_->set_accepted(bytes_ > 0);
          Finish(grpc::Status::OK);
          return;
        }
        bytes_ += chunk_.data().size();
        StartRead(&chunk_);
      }
      void OnDone() override { delete this; }

     private:
      v1::SubmitUpdateResponse* const response_;
      v1::UpdateChunk chunk_;
      size_t bytes_ = 0;
    };
    return new Upload(response);
  }

  grpc::ServerWriteReactor<grpc::ByteBuffer>* FetchGlobal(grpc::CallbackServerContext*,
                                                          const grpc::ByteBuffer*) override {
    class Fetch final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
     public:
      Fetch() : chunk_(GlobalBuffer()) { StartWrite(&chunk_); }
      void OnWriteDone(bool ok) override {
        Finish(ok ? grpc::Status::OK : grpc::Status(grpc::StatusCode::CANCELLED, "write failed"));
      }
      void OnDone() override { delete this; }

     private:
      grpc::ByteBuffer chunk_;
    };
    return new Fetch();
  }
};

// The async completion-queue API: one completion queue and one thread per
// core, each thread polling its own queue; every call is a small state
// machine whose tag is itself.
using AsyncService =
    v1::Aggregator::WithAsyncMethod_ReportMetrics<v1::Aggregator::WithAsyncMethod_SubmitUpdate<
        v1::Aggregator::WithRawMethod_FetchGlobal<v1::Aggregator::Service>>>;

class Call {
 public:
  virtual ~Call() = default;
  // `ok` is the completion's; false on a shutting-down queue or a broken call.
  virtual void Proceed(bool ok) = 0;
};

class UnaryCall final : public Call {
 public:
  UnaryCall(AsyncService* service, grpc::ServerCompletionQueue* cq)
      : service_(service), cq_(cq), responder_(&ctx_) {
    service_->RequestReportMetrics(&ctx_, &request_, &responder_, cq_, cq_, this);
  }
  void Proceed(bool ok) override {
    if (!requested_) {
      requested_ = true;
      if (!ok) {
        delete this;
        return;
      }
      new UnaryCall(service_, cq_);  // the next call of this kind
      responder_.Finish(v1::MetricsAck(), grpc::Status::OK, this);
      return;
    }
    delete this;
  }

 private:
  AsyncService* const service_;
  grpc::ServerCompletionQueue* const cq_;
  grpc::ServerContext ctx_;
  v1::MetricsReport request_;
  grpc::ServerAsyncResponseWriter<v1::MetricsAck> responder_;
  bool requested_ = false;
};

class UploadCall final : public Call {
 public:
  UploadCall(AsyncService* service, grpc::ServerCompletionQueue* cq)
      : service_(service), cq_(cq), reader_(&ctx_) {
    service_->RequestSubmitUpdate(&ctx_, &reader_, cq_, cq_, this);
  }
  void Proceed(bool ok) override {
    switch (state_) {
      case State::kRequested:
        if (!ok) {
          delete this;
          return;
        }
        new UploadCall(service_, cq_);
        state_ = State::kReading;
        reader_.Read(&chunk_, this);
        return;
      case State::kReading:
        if (ok) {
          bytes_ += chunk_.data().size();
          reader_.Read(&chunk_, this);
          return;
        }
        response_.set_accepted(bytes_ > 0);
        state_ = State::kFinishing;
        reader_.Finish(response_, grpc::Status::OK, this);
        return;
      case State::kFinishing:
        delete this;
        return;
    }
  }

 private:
  enum class State { kRequested, kReading, kFinishing };
  AsyncService* const service_;
  grpc::ServerCompletionQueue* const cq_;
  grpc::ServerContext ctx_;
  grpc::ServerAsyncReader<v1::SubmitUpdateResponse, v1::UpdateChunk> reader_;
  v1::UpdateChunk chunk_;
  v1::SubmitUpdateResponse response_;
  size_t bytes_ = 0;
  State state_ = State::kRequested;
};

class FetchCall final : public Call {
 public:
  FetchCall(AsyncService* service, grpc::ServerCompletionQueue* cq)
      : service_(service), cq_(cq), writer_(&ctx_) {
    service_->RequestFetchGlobal(&ctx_, &request_, &writer_, cq_, cq_, this);
  }
  void Proceed(bool ok) override {
    switch (state_) {
      case State::kRequested:
        if (!ok) {
          delete this;
          return;
        }
        new FetchCall(service_, cq_);
        state_ = State::kWriting;
        chunk_ = GlobalBuffer();
        writer_.Write(chunk_, this);
        return;
      case State::kWriting:
        state_ = State::kFinishing;
        writer_.Finish(ok ? grpc::Status::OK : grpc::Status(grpc::StatusCode::CANCELLED, "write failed"),
                       this);
        return;
      case State::kFinishing:
        delete this;
        return;
    }
  }

 private:
  enum class State { kRequested, kWriting, kFinishing };
  AsyncService* const service_;
  grpc::ServerCompletionQueue* const cq_;
  grpc::ServerContext ctx_;
  grpc::ByteBuffer request_;
  grpc::ServerAsyncWriter<grpc::ByteBuffer> writer_;
  grpc::ByteBuffer chunk_;
  State state_ = State::kRequested;
};

volatile sig_atomic_t g_stop = 0;

// Serves `api` on 127.0.0.1, writes the port to `port_fd`, and returns when
// SIGTERM arrives. Runs in the forked child.
int Serve(const std::string& api, int port_fd, int cq_threads, int calls_per_cq) {
  signal(SIGTERM, [](int) { g_stop = 1; });
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.SetMaxReceiveMessageSize(8 << 20);
  builder.SetMaxSendMessageSize(8 << 20);
  CallbackServer callback;
  AsyncService async;
  std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> cqs;
  if (api == "callback") {
    builder.RegisterService(&callback);
  } else {
    builder.RegisterService(&async);
    for (int i = 0; i < cq_threads; ++i) cqs.push_back(builder.AddCompletionQueue());
  }
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) {
    std::fprintf(stderr, "cannot serve the %s API\n", api.c_str());
    return 1;
  }
  std::vector<std::thread> threads;
  for (auto& cq : cqs) {
    for (int i = 0; i < calls_per_cq; ++i) {
      new UnaryCall(&async, cq.get());
      new UploadCall(&async, cq.get());
      new FetchCall(&async, cq.get());
    }
    threads.emplace_back([q = cq.get()] {
      void* tag = nullptr;
      bool ok = false;
      while (q->Next(&tag, &ok)) static_cast<Call*>(tag)->Proceed(ok);
    });
  }
  if (write(port_fd, &port, sizeof(port)) != sizeof(port)) return 1;
  close(port_fd);
  while (!g_stop) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  for (auto& cq : cqs) cq->Shutdown();
  for (std::thread& t : threads) t.join();
  return 0;
}

// ------------------------------------------------------------ measurement --

struct ProcSample {
  double cpu_s = 0;
  long switches = 0;  // voluntary + involuntary, summed over the threads alive
  int threads = 0;
};

ProcSample Sample(pid_t pid) {
  ProcSample s;
  const std::string dir = "/proc/" + std::to_string(pid);
  std::ifstream stat(dir + "/stat");
  std::string line;
  std::getline(stat, line);
  // Fields after the ")" of the command: state is field 3; utime 14, stime 15.
  std::istringstream rest(line.substr(line.rfind(')') + 2));
  std::string field;
  unsigned long long utime = 0, stime = 0;
  for (int i = 3; i <= 15 && rest >> field; ++i) {
    if (i == 14) utime = std::stoull(field);
    if (i == 15) stime = std::stoull(field);
  }
  s.cpu_s = static_cast<double>(utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
  std::error_code ec;
  for (const auto& task : std::filesystem::directory_iterator(dir + "/task", ec)) {
    std::ifstream status(task.path() / "status");
    while (std::getline(status, line)) {
      if (line.rfind("voluntary_ctxt_switches:", 0) == 0 ||
          line.rfind("nonvoluntary_ctxt_switches:", 0) == 0) {
        s.switches += std::stol(line.substr(line.find(':') + 1));
      }
    }
    ++s.threads;
  }
  return s;
}

struct Load {
  int threads = 16;
  int channels = 4;
  size_t upload_bytes = 0;
  int iterations = 0;
  int unary = 2;    // unary calls per iteration
  int uploads = 1;  // SubmitUpdate streams per iteration
  int fetches = 1;  // FetchGlobal streams per iteration
};

// One iteration per loop: what an agent's round asks of the server. False
// when a call failed (printed).
bool Iterate(v1::Aggregator::Stub* stub, const std::string& upload, const Load& load, int n) {
  for (int i = 0; i < n; ++i) {
    for (int u = 0; u < load.unary; ++u) {
      grpc::ClientContext ctx;
      v1::MetricsReport report;
      report.set_round(1);
      report.set_phase("evaluate");
      (*report.mutable_values())["accuracy"] = 0.5;
      v1::MetricsAck ack;
      if (grpc::Status s = stub->ReportMetrics(&ctx, report, &ack); !s.ok()) {
        std::fprintf(stderr, "ReportMetrics: %s\n", s.error_message().c_str());
        return false;
      }
    }
    for (int u = 0; u < load.uploads; ++u) {
      grpc::ClientContext ctx;
      v1::SubmitUpdateResponse response;
      auto writer = stub->SubmitUpdate(&ctx, &response);
      v1::UpdateChunk header;
      header.mutable_header()->set_round(1);
      v1::UpdateChunk data;
      data.set_data(upload);
      writer->Write(header);
      writer->Write(data);
      writer->WritesDone();
      if (grpc::Status s = writer->Finish(); !s.ok() || !response.accepted()) {
        std::fprintf(stderr, "SubmitUpdate: %s\n", s.error_message().c_str());
        return false;
      }
    }
    for (int f = 0; f < load.fetches; ++f) {
      grpc::ClientContext ctx;
      v1::FetchGlobalRequest request;
      auto reader = stub->FetchGlobal(&ctx, request);
      v1::GlobalChunk chunk;
      size_t bytes = 0;
      while (reader->Read(&chunk)) bytes += chunk.data().size();
      if (grpc::Status s = reader->Finish(); !s.ok() || bytes == 0) {
        std::fprintf(stderr, "FetchGlobal: %s\n", s.error_message().c_str());
        return false;
      }
    }
  }
  return true;
}

struct RunResult {
  bool ok = false;
  double seconds = 0;
  double cpu_us = 0;       // server CPU per iteration
  double switches = 0;     // server context switches per iteration
  int server_threads = 0;  // threads of the server at the end
};

RunResult Run(const std::string& api, const std::string& self, const Load& load, int cq_threads,
              int calls_per_cq) {
  RunResult r;
  int fds[2];
  if (pipe(fds) != 0) return r;
  const pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    const std::string fd = std::to_string(fds[1]);
    const std::string threads = std::to_string(cq_threads);
    const std::string calls = std::to_string(calls_per_cq);
    execl(self.c_str(), self.c_str(), "--serve", api.c_str(), "--port-fd", fd.c_str(), "--cq-threads",
          threads.c_str(), "--calls-per-cq", calls.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  close(fds[1]);
  int port = 0;
  const bool got_port = read(fds[0], &port, sizeof(port)) == sizeof(port);
  close(fds[0]);
  if (!got_port) {
    std::fprintf(stderr, "the %s server did not start\n", api.c_str());
    waitpid(pid, nullptr, 0);
    return r;
  }
  std::vector<std::unique_ptr<v1::Aggregator::Stub>> stubs;
  for (int c = 0; c < load.channels; ++c) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // a connection per channel
    args.SetMaxReceiveMessageSize(8 << 20);
    stubs.push_back(v1::Aggregator::NewStub(grpc::CreateCustomChannel(
        "127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials(), args)));
  }
  const std::string upload(load.upload_bytes, '\x5a');
  std::atomic<bool> failed{false};
  auto drive = [&](int per_thread) {
    std::vector<std::thread> threads;
    for (int t = 0; t < load.threads; ++t) {
      threads.emplace_back([&, t] {
        if (!Iterate(stubs[t % stubs.size()].get(), upload, load, per_thread)) failed = true;
      });
    }
    for (std::thread& t : threads) t.join();
  };
  drive(std::max(1, load.iterations / load.threads / 10));  // warm-up: connections, pools
  const int per_thread = std::max(1, load.iterations / load.threads);
  const ProcSample before = Sample(pid);
  const auto start = std::chrono::steady_clock::now();
  drive(per_thread);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const ProcSample after = Sample(pid);
  kill(pid, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
  const double n = static_cast<double>(per_thread) * load.threads;
  r.ok = !failed;
  r.cpu_us = (after.cpu_s - before.cpu_s) * 1e6 / n;
  r.switches = static_cast<double>(after.switches - before.switches) / n;
  r.server_threads = after.threads;
  return r;
}

double LoadAverage() {
  std::ifstream in("/proc/loadavg");
  double one = 0;
  in >> one;
  return one;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "fedge_bench_grpc_api: server CPU per agent round under gRPC's callback API (fedge-aggregator's) "
      "against the async completion-queue API, same messages, no fedge logic"};
  app.set_version_flag(
      "--version", std::string("fedge_bench_grpc_api ") + fedge::Version() + " (" + fedge::GitRev() + ")");
  Load load;
  int pairs = 3;
  int cq_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  int calls_per_cq = 64;
  size_t global_bytes = 0;
  load.iterations = 20000;
  load.upload_bytes = 86'700;
  global_bytes = 301'500;
  std::string serve;
  int port_fd = -1;
  app.add_option("--iterations", load.iterations, "agent rounds per run (2 unary calls, an upload, a fetch)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--pairs", pairs, "runs of each API, alternating callback/async order")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--unary", load.unary, "unary calls per iteration (GetTask, ReportMetrics)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--uploads", load.uploads, "SubmitUpdate streams per iteration")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--fetches", load.fetches, "FetchGlobal streams per iteration")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--threads", load.threads, "load generator threads (sync stubs)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--channels", load.channels, "gRPC channels (TCP connections)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--upload-bytes", load.upload_bytes,
                 "bytes of the update's data chunk (int8 MiniLM: 86.7 KB)")
      ->capture_default_str();
  app.add_option("--global-bytes", global_bytes, "bytes of the global's chunk (fp32 MiniLM: 301.5 KB)")
      ->capture_default_str();
  app.add_option("--cq-threads", cq_threads, "async API: completion queues, one polling thread each")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--calls-per-cq", calls_per_cq, "async API: calls of each method requested ahead per queue")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--serve", serve, "internal: serve this API (callback | async) in this process")
      ->check(CLI::IsMember({"callback", "async"}))
      ->group("");
  app.add_option("--port-fd", port_fd, "internal: where --serve writes its port")->group("");
  CLI11_PARSE(app, argc, argv);

  {
    v1::GlobalChunk chunk;
    chunk.set_version(1);
    chunk.set_total_bytes(global_bytes);
    chunk.set_data(std::string(global_bytes, '\x3c'));
    g_global = new std::string(chunk.SerializeAsString());
  }
  if (!serve.empty()) return Serve(serve, port_fd, cq_threads, calls_per_cq);

  const std::string self = std::filesystem::canonical("/proc/self/exe").string();
  if (load.unary + load.uploads + load.fetches == 0) {
    std::fprintf(stderr, "an iteration needs at least one call (--unary, --uploads, --fetches)\n");
    return 2;
  }
  std::printf(
      "iteration: %d unary calls, %d uploads of %zu bytes, %d fetches of %zu bytes; %d iterations per "
      "run, %d load threads, %d connections; async API: %d completion queues/threads; %u cores, load "
      "average %.1f\n",
      load.unary, load.uploads, load.upload_bytes, load.fetches, global_bytes, load.iterations, load.threads,
      load.channels, cq_threads, std::thread::hardware_concurrency(), LoadAverage());
  double sum_cpu[2] = {0, 0}, sum_rate[2] = {0, 0};
  const char* apis[2] = {"callback", "async"};
  for (int p = 0; p < pairs; ++p) {
    RunResult results[2];
    for (int k = 0; k < 2; ++k) {
      const int a = (p % 2 == 0) ? k : 1 - k;  // alternate which API goes first
      results[a] = Run(apis[a], self, load, cq_threads, calls_per_cq);
      if (!results[a].ok) {
        std::fprintf(stderr, "the %s run failed\n", apis[a]);
        return 1;
      }
      const RunResult& r = results[a];
      const double rate = load.iterations / r.seconds;
      std::printf(
          "pair %d %-8s %6.0f iterations/s, server CPU %6.1f us per iteration, %5.2f context switches "
          "per iteration, %d server threads\n",
          p + 1, apis[a], rate, r.cpu_us, r.switches, r.server_threads);
      std::fflush(stdout);
      sum_cpu[a] += r.cpu_us;
      sum_rate[a] += rate;
    }
    std::printf("pair %d ratio async/callback: server CPU per iteration %.2fx, iterations/s %.2fx\n", p + 1,
                results[1].cpu_us / results[0].cpu_us,
                (1.0 / results[1].seconds) / (1.0 / results[0].seconds));
  }
  std::printf(
      "mean of %d pairs: callback %.1f us, async %.1f us of server CPU per iteration (%.2fx); "
      "iterations/s %.2fx; load average at the end %.1f\n",
      pairs, sum_cpu[0] / pairs, sum_cpu[1] / pairs, sum_cpu[1] / sum_cpu[0], sum_rate[1] / sum_rate[0],
      LoadAverage());
  return 0;
}
