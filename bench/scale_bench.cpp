// fedge_bench_scale: one real fedge-aggregator process driven by many
// simulated agents over loopback gRPC (issue 4, items 4 and 6).
//
// Each simulated agent follows protocol v1 the way fedge-agent does (Join,
// GetTask loop honouring retry_after_ms, FetchGlobal when its version is old,
// SubmitUpdate, ReportMetrics or the evaluation with the next update) but "trains" by sending one of a few
// pre-encoded int8+zstd deltas of the quickstart's size (83,353 values, about
// 85 KB on the wire). The agents are multiplexed over a small pool of worker
// threads by a due-time queue (no thread per agent) and a few channels.
//
// For every agent count (default 200 then 1000) a fresh aggregator runs
// `--rounds` synchronous rounds. Reported per run: rounds per minute (from the
// first TRAIN to the last DONE), aggregator CPU seconds per accepted update
// (utime + stime from /proc/<pid>/stat over the same span, so it includes the
// FetchGlobal and evaluation traffic of the round), and the aggregator's
// resident memory: VmRSS once the global exists (baseline, same run) and
// VmHWM at the end. Streaming FedAvg keeps the peak independent of the agent
// count; the last line compares the runs' peak growth with the model's size.
//
// Before that, the streaming-memory check (issue 4, item 4): in a forked child
// (a clean VmHWM), 200 agents' int8 updates of a larger model (default 4M
// values, 16 MB fp32) go through the ProtocolHandler exactly as the gRPC
// service feeds it (chunks -> decode -> validate -> FedAvg accumulator) and
// the round closes. Peak growth over the baseline (global + encoded global +
// the pre-encoded updates already resident) is reported in model sizes, next
// to the same run with 20 agents: streaming keeps it a small constant, where
// buffering every update would need 200 model sizes.
#include <grpcpp/grpcpp.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <absl/synchronization/mutex.h>
#include <CLI/CLI.hpp>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <optional>
#include <queue>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "fedge.grpc.pb.h"
#include "fedge/aggregator/protocol_handler.h"
#include "fedge/aggregator/round_engine.h"
#include "fedge/job_spec.h"
#include "fedge/log.h"
#include "fedge/quant_kernels.h"
#include "fedge/tensor_bundle.h"

namespace {

using namespace fedge;
using SteadyClock = std::chrono::steady_clock;
constexpr char kJob[] = "bench/scale";

TensorBundle Random(int64_t elements, uint32_t seed, float stddev) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, stddev);
  TensorBundle b;
  const int64_t kTensor = 8192;  // LoRA-factor-sized tensors
  for (int64_t done = 0, i = 0; done < elements; ++i) {
    const int64_t n = std::min(kTensor, elements - done);
    NamedTensor t{"t" + std::to_string(i), {n}, std::vector<float>(static_cast<size_t>(n))};
    for (float& v : t.values) v = normal(rng);
    b.tensors.push_back(std::move(t));
    done += n;
  }
  return b;
}

int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

// The 1-minute load average, so a run on a contended machine is recognisable.
double LoadAverage() {
  std::ifstream in("/proc/loadavg");
  double load = -1;
  in >> load;
  return load;
}

struct ProcStats {
  double cpu_seconds = 0;  // utime + stime
  long rss_kib = 0;        // VmRSS
  long hwm_kib = 0;        // VmHWM
};

ProcStats ReadProc(pid_t pid) {
  ProcStats s;
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
  size_t close_paren = text.rfind(')');
  if (close_paren != std::string::npos) {
    std::istringstream rest(text.substr(close_paren + 2));
    std::string field;
    std::vector<std::string> f;
    while (rest >> field) f.push_back(field);
    if (f.size() > 13) {
      s.cpu_seconds = static_cast<double>(std::stoull(f[11]) + std::stoull(f[12])) /
                      static_cast<double>(sysconf(_SC_CLK_TCK));
    }
  }
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) s.rss_kib = std::stol(line.substr(6));
    if (line.rfind("VmHWM:", 0) == 0) s.hwm_kib = std::stol(line.substr(6));
  }
  return s;
}

struct MemoryCheck {
  int agents = 0;
  long baseline_kib = 0;
  long peak_kib = 0;
  double seconds = 0;
  bool ok = false;
};

// Runs in the child: one synchronous round of `agents` updates through the
// handler. Writes "baseline peak seconds ok" to `fd`.
void MemoryCheckChild(int agents, int64_t values, int fd) {
  using namespace fedge::aggregator;
  JobSpec spec;
  spec.name = "memory";
  spec.namespace_ = "bench";
  spec.rounds.total = 1;
  spec.rounds.timeoutSeconds = 3600;
  EngineOptions eo = EngineOptionsFromSpec(spec, agents);
  AggregatorMetrics metrics;
  auto engine = RoundEngine::Create(eo, SystemClock::Get(), nullptr, &metrics);
  if (!engine.ok()) _exit(3);
  ProtocolHandler handler(engine->get(), &metrics, ProtocolOptions{});
  auto header_for = [&](const std::string& agent, const std::string& session) {
    v1::RequestHeader h;
    h.set_protocol_version(1);
    h.set_job("bench/memory");
    h.set_agent_id(agent);
    h.set_session(session);
    return h;
  };
  TensorBundle initial = Random(values, 1, 0.02f);
  TensorBundle layout;  // what each agent declares at Join: names and shapes
  for (const NamedTensor& t : initial.tensors) layout.tensors.push_back(NamedTensor{t.name, t.shape, {}});
  std::vector<std::string> sessions;
  for (int i = 0; i < agents; ++i)
    sessions.push_back((*engine)->Join("a" + std::to_string(i), AgentInfo{"", 100, 100, layout}));
  std::vector<std::string> deltas;
  {
    (void)(*engine)->GetTask("a0", 0);
    UpdateMeta meta;
    meta.agent_id = "a0";
    meta.is_delta = false;
    if (!(*engine)->SubmitUpdate(meta, initial).accepted) _exit(4);
    for (uint32_t i = 0; i < 4; ++i) {
      auto enc = EncodeBundle(Random(values, 100 + i, 0.001f), EncodeOptions{Codec::kInt8, 64, true, 3});
      if (!enc.ok()) _exit(5);
      deltas.push_back(*enc);
    }
    initial = TensorBundle();  // only the engine's copy stays, as before
  }
  const long baseline = ReadProc(getpid()).rss_kib;
  auto start = SteadyClock::now();
  bool ok = true;
  for (int i = 0; i < agents; ++i) {
    const std::string& data = deltas[static_cast<size_t>(i) % deltas.size()];
    v1::UpdateHeader h;
    *h.mutable_header() = header_for("a" + std::to_string(i), sessions[static_cast<size_t>(i)]);
    h.set_round(1);
    h.set_base_version(1);
    h.set_num_examples(100);
    h.set_total_bytes(data.size());
    h.set_checksum(Sha256Hex(data));
    h.set_is_delta(true);
    v1::SubmitUpdateResponse response;
    bool rejected = false;
    UploadStream stream;
    if (!handler.OpenUpload(h, &stream, &response, &rejected).ok() || rejected) {
      ok = false;
      break;
    }
    for (size_t off = 0; off < data.size(); off += kMaxChunkBytes) {
      handler.AppendUpload(&stream, data.substr(off, kMaxChunkBytes), &response);
    }
    if (!handler.CloseUpload(&stream).accepted()) ok = false;
  }
  ok = ok && (*engine)->GetStatus().global_version == 2;
  const double seconds = std::chrono::duration<double>(SteadyClock::now() - start).count();
  std::string line = std::to_string(baseline) + " " + std::to_string(ReadProc(getpid()).hwm_kib) + " " +
                     std::to_string(seconds) + " " + (ok ? "1" : "0") + "\n";
  if (write(fd, line.data(), line.size()) < 0) _exit(6);
  _exit(0);
}

MemoryCheck RunMemoryCheck(int agents, int64_t values) {
  MemoryCheck m;
  m.agents = agents;
  int fds[2];
  if (pipe(fds) != 0) return m;
  pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    MemoryCheckChild(agents, values, fds[1]);
  }
  close(fds[1]);
  char buf[256] = {0};
  ssize_t n = read(fds[0], buf, sizeof(buf) - 1);
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (n <= 0) return m;
  int ok = 0;
  if (std::sscanf(buf, "%ld %ld %lf %d", &m.baseline_kib, &m.peak_kib, &m.seconds, &ok) == 4) m.ok = ok == 1;
  return m;
}

// ---- per-update CPU breakdown (issue 14, item 2) ----
//
// Every stage the aggregator runs on one update, timed in this process on the
// bench's own int8 update, in thread CPU time (a loaded machine preempts; CPU
// time is what the stage costs), best of 5 batches. The "before" rows are the
// loops this change replaced, kept here as the baseline measured in the same
// run: a second SHA-256 pass, the per-element-division dequantizer, scalar
// accumulation and the engine's repeated CheckFinite / L2Norm passes.

double ThreadCpuSeconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

// Seconds of thread CPU per call of `f`: the best of 5 batches of `iters`.
double TimePerCall(int iters, const std::function<void()>& f) {
  f();  // warm caches and lazily created contexts
  double best = 1e30;
  for (int batch = 0; batch < 5; ++batch) {
    const double t0 = ThreadCpuSeconds();
    for (int i = 0; i < iters; ++i) f();
    best = std::min(best, (ThreadCpuSeconds() - t0) / iters);
  }
  return best;
}

// Keeps results alive so the optimiser cannot drop the work.
volatile double g_sink = 0;

// The int8 dequantizer before this change (tensor_bundle.cpp): a division
// per element to find the block, the -128 and finiteness checks per element.
// Compiled here at the project's -O2, like the original.
bool OldDequantizeInt8(const int8_t* codes, const float* scales, size_t n, uint32_t block_size, float* out) {
  bool bad = false;
  for (size_t i = 0; i < n; ++i) {
    const int8_t q = codes[i];
    bad |= q == -128;
    out[i] = static_cast<float>(q) * scales[i / block_size];
    bad |= !std::isfinite(out[i]);
  }
  return bad;
}

// FedAvg's accumulation and the engine's checks before this change.
void OldAccumulate(const float* v, size_t n, double weight, double* sum) {
  for (size_t i = 0; i < n; ++i) sum[i] += weight * static_cast<double>(v[i]);
}
bool OldCheckFinite(const float* v, size_t n) {
  for (size_t i = 0; i < n; ++i)
    if (!std::isfinite(v[i])) return false;
  return true;
}
double OldSumSquares(const float* v, size_t n) {
  double sum = 0;
  for (size_t i = 0; i < n; ++i) sum += static_cast<double>(v[i]) * static_cast<double>(v[i]);
  return sum;
}

// memcpy bandwidth (bytes read + bytes written per second) for a buffer of
// `bytes`, in this process, now.
double MemcpyBandwidth(size_t bytes) {
  std::vector<char> a(bytes, 1), b(bytes, 2);
  const int iters = static_cast<int>(std::max<size_t>(1, (256u << 20) / bytes));
  const double t = TimePerCall(iters, [&] {
    std::memcpy(b.data(), a.data(), bytes);
    g_sink = g_sink + b[bytes / 2];
    a[bytes / 3] = static_cast<char>(a[bytes / 3] + 1);
  });
  return 2.0 * static_cast<double>(bytes) / t;
}

// The fused kernel over `n` values: bytes it moves per second (codes and
// scales read, the double sum read and written) and the update's bytes
// (codes + scales) per second.
struct KernelRate {
  double seconds = 0;
  double moved_per_s = 0;
  double update_per_s = 0;
};
KernelRate FusedKernelRate(size_t n, uint32_t block) {
  std::mt19937 rng(3);
  std::uniform_int_distribution<int> code(-127, 127);
  std::vector<int8_t> codes(n);
  for (int8_t& c : codes) c = static_cast<int8_t>(code(rng));
  std::vector<float> scales((n + block - 1) / block, 1e-4f);
  std::vector<double> sum(n, 0.0);
  const int iters = static_cast<int>(std::max<size_t>(1, (64u << 20) / n));
  KernelRate r;
  r.seconds = TimePerCall(iters, [&] {
    DequantizeInt8Accumulate(codes.data(), scales.data(), n, block, 0.5, sum.data());
    g_sink = g_sink + sum[n / 2];
  });
  const double update_bytes = static_cast<double>(n + 4 * scales.size());
  r.update_per_s = update_bytes / r.seconds;
  r.moved_per_s = (update_bytes + 16.0 * static_cast<double>(n)) / r.seconds;
  return r;
}

// One update through the ProtocolHandler in-process (checksum, decode,
// validation, FedAvg under the engine's lock): CPU per update with no gRPC.
double HandlerSecondsPerUpdate(const std::vector<std::string>& deltas, const TensorBundle& initial,
                               int agents) {
  using namespace fedge::aggregator;
  JobSpec spec;
  spec.name = "breakdown";
  spec.namespace_ = "bench";
  spec.rounds.total = 1;
  spec.rounds.timeoutSeconds = 3600;
  EngineOptions eo = EngineOptionsFromSpec(spec, agents);
  auto engine = RoundEngine::Create(eo, SystemClock::Get(), nullptr, nullptr);
  if (!engine.ok()) return -1;
  ProtocolHandler handler(engine->get(), nullptr, ProtocolOptions{});
  TensorBundle layout;
  for (const NamedTensor& t : initial.tensors) layout.tensors.push_back(NamedTensor{t.name, t.shape, {}});
  std::vector<std::string> sessions;
  for (int i = 0; i < agents; ++i)
    sessions.push_back((*engine)->Join("a" + std::to_string(i), AgentInfo{"", 100, 100, layout}));
  (void)(*engine)->GetTask("a0", 0);
  UpdateMeta meta;
  meta.agent_id = "a0";
  meta.is_delta = false;
  if (!(*engine)->SubmitUpdate(meta, initial).accepted) return -1;
  for (int i = 0; i < agents; ++i) (void)(*engine)->GetTask("a" + std::to_string(i), 1);  // all invited
  // The transport checksum in the algorithm of each bundle's trailer, as an
  // agent sends it (SHA-256: older agents; XXH3-128: agents of this aggregator).
  std::vector<std::string> checksums;
  std::vector<v1::ChecksumAlgorithm> algorithms;
  for (const std::string& d : deltas) {
    const auto bh = InspectBundle(d);
    const ChecksumAlgorithm a = bh.ok() ? bh->trailer : ChecksumAlgorithm::kSha256;
    checksums.push_back(ChecksumHex(a, d));
    algorithms.push_back(a == ChecksumAlgorithm::kXxh3_128 ? v1::CHECKSUM_XXH3_128 : v1::CHECKSUM_SHA256);
  }
  double cpu = 0;
  for (int i = 0; i < agents - 1; ++i) {  // the last update would close the round
    const size_t which = static_cast<size_t>(i) % deltas.size();
    v1::UpdateHeader h;
    h.mutable_header()->set_protocol_version(1);
    h.mutable_header()->set_job("bench/breakdown");
    h.mutable_header()->set_agent_id("a" + std::to_string(i));
    h.mutable_header()->set_session(sessions[static_cast<size_t>(i)]);
    h.set_round(1);
    h.set_base_version(1);
    h.set_num_examples(100);
    h.set_total_bytes(deltas[which].size());
    h.set_checksum(checksums[which]);
    h.set_checksum_algorithm(algorithms[which]);
    h.set_is_delta(true);
    v1::SubmitUpdateResponse response;
    bool rejected = false;
    UploadStream stream;
    const double t0 = ThreadCpuSeconds();
    if (!handler.OpenUpload(h, &stream, &response, &rejected).ok() || rejected) return -1;
    handler.AppendUpload(&stream, deltas[which], &response);
    const bool accepted = handler.CloseUpload(&stream).accepted();
    cpu += ThreadCpuSeconds() - t0;
    if (!accepted) return -1;
  }
  return cpu / (agents - 1);
}

// `deltas_zstd`: the updates with a zstd body whatever it saves (the encoder
// before zstd_min_saving); `deltas_sent`: what the simulated agents send.
// `deltas_sent_sha256`: the same as SHA-256 bundles (what older agents send).
void PrintBreakdown(const TensorBundle& initial, const std::vector<std::string>& deltas_zstd,
                    const std::vector<std::string>& deltas_sent,
                    const std::vector<std::string>& deltas_sent_sha256, const std::string& delta_plain,
                    uint32_t block) {
  const std::string& upload = deltas_zstd[0];
  const size_t n = static_cast<size_t>(initial.NumElements());
  auto decoded = DecodeBundle(upload);
  if (!decoded.ok()) std::abort();
  // The update's codes and scales, tensor by tensor, as the decoder sees them.
  std::vector<std::vector<int8_t>> codes;
  std::vector<std::vector<float>> scales;
  for (const NamedTensor& t : decoded->tensors) {
    std::vector<float> s((t.values.size() + block - 1) / block);
    std::vector<int8_t> c(t.values.size());
    for (size_t b = 0; b < s.size(); ++b) {
      float amax = 0;
      for (size_t i = b * block; i < std::min(t.values.size(), (b + 1) * block); ++i)
        amax = std::max(amax, std::fabs(t.values[i]));
      s[b] = amax / 127.0f;
      for (size_t i = b * block; i < std::min(t.values.size(), (b + 1) * block); ++i)
        c[i] = static_cast<int8_t>(s[b] > 0 ? std::nearbyint(t.values[i] / s[b]) : 0);
    }
    codes.push_back(std::move(c));
    scales.push_back(std::move(s));
  }
  std::vector<std::vector<float>> out;
  std::vector<std::vector<double>> sums;
  for (const NamedTensor& t : decoded->tensors) {
    out.emplace_back(t.values.size());
    sums.emplace_back(t.values.size(), 0.0);
  }
  const int kIters = 200;
  auto us = [](double s) { return 1e6 * s; };
  struct Row {
    std::string name;
    double before_s, after_s;
  };
  std::vector<Row> rows;
  const std::string_view covered(upload.data(), upload.size() - 32);
  // Before: one SHA-256 pass (ChecksumBundle of a SHA-256 upload, what older
  // agents still send); after: one XXH3-128 pass over the same bundle with an
  // XXH3-128 trailer (what agents send to an aggregator that offers it).
  EncodeOptions fast_eo{Codec::kInt8, 64, /*zstd=*/true, 3};
  fast_eo.zstd_min_saving = 0;
  fast_eo.trailer = ChecksumAlgorithm::kXxh3_128;
  const auto upload_fast = EncodeBundle(*decoded, fast_eo);
  if (!upload_fast.ok() || !ChecksumBundle(*upload_fast, ChecksumAlgorithm::kXxh3_128).trailer_matches)
    std::abort();
  rows.push_back({"checksums (transport + bundle trailer, one pass)",
                  TimePerCall(kIters, [&] { g_sink = g_sink + ChecksumBundle(upload).trailer_matches; }),
                  TimePerCall(kIters, [&] {
                    g_sink =
                        g_sink + ChecksumBundle(*upload_fast, ChecksumAlgorithm::kXxh3_128).trailer_matches;
                  })});
  // zstd: a decode of the zstd encoding minus one of the same bundle without
  // zstd (same code otherwise).
  DecodeLimits trusted;
  const double decode_zstd = TimePerCall(kIters, [&] {
    auto b = DecodeBundle(upload);
    g_sink = g_sink + b->tensors.size();
  });
  const double decode_plain = TimePerCall(kIters, [&] {
    auto b = DecodeBundle(delta_plain);
    g_sink = g_sink + b->tensors.size();
  });
  const double sha_trailer = TimePerCall(kIters, [&] { g_sink = g_sink + Sha256Hex(covered)[0]; });
  const double sha_plain = TimePerCall(kIters, [&] {
    g_sink = g_sink + Sha256Hex(std::string_view(delta_plain).substr(0, delta_plain.size() - 32))[0];
  });
  rows.push_back({"zstd decompression (decode zstd - decode plain)", -1,
                  (decode_zstd - sha_trailer) - (decode_plain - sha_plain)});
  rows.push_back({"copies: chunk into the upload buffer (memcpy)", -1, TimePerCall(kIters, [&] {
                    std::string buffer;
                    buffer.reserve(upload.size());
                    buffer.append(upload);
                    g_sink = g_sink + buffer[buffer.size() / 2];
                  })});
  {
    v1::UpdateChunk chunk;
    chunk.set_data(upload);
    const std::string wire = chunk.SerializeAsString();
    rows.push_back({"protobuf: parse one 83 KB UpdateChunk", -1, TimePerCall(kIters, [&] {
                      v1::UpdateChunk c;
                      c.ParseFromString(wire);
                      g_sink = g_sink + c.data().size();
                    })});
  }
  rows.push_back({"int8 dequantize (kernel)",
                  TimePerCall(kIters,
                              [&] {
                                bool bad = false;
                                for (size_t t = 0; t < codes.size(); ++t)
                                  bad |= OldDequantizeInt8(codes[t].data(), scales[t].data(), codes[t].size(),
                                                           block, out[t].data());
                                g_sink = g_sink + bad + out[0][1];
                              }),
                  TimePerCall(kIters, [&] {
                    bool bad = false;
                    for (size_t t = 0; t < codes.size(); ++t) {
                      DequantizeInt8(codes[t].data(), scales[t].data(), codes[t].size(), block,
                                     out[t].data());
                      bad |= MinCode(codes[t].data(), codes[t].size()) == -128 ||
                             !AllFinite(out[t].data(), out[t].size());
                    }
                    g_sink = g_sink + bad + out[0][1];
                  })});
  rows.push_back({"engine checks: finiteness + L2 norm",
                  TimePerCall(kIters,
                              [&] {
                                // Before: CheckFinite twice, L2Norm three times (validate, clip, log).
                                double s = 0;
                                bool ok = true;
                                for (int rep = 0; rep < 2; ++rep)
                                  for (const auto& v : out) ok &= OldCheckFinite(v.data(), v.size());
                                for (int rep = 0; rep < 3; ++rep)
                                  for (const auto& v : out) s += OldSumSquares(v.data(), v.size());
                                g_sink = g_sink + s + ok;
                              }),
                  TimePerCall(kIters, [&] {
                    double s = 0;
                    bool ok = true;
                    for (const auto& v : out) {
                      ok &= AllFinite(v.data(), v.size());  // WeightedDeltaSum::Add
                      s += SumSquares(v.data(), v.size());  // ValidateLocked, once
                    }
                    g_sink = g_sink + s + ok;
                  })});
  rows.push_back({"FedAvg accumulate (kernel)",
                  TimePerCall(kIters,
                              [&] {
                                for (size_t t = 0; t < out.size(); ++t)
                                  OldAccumulate(out[t].data(), out[t].size(), 0.5, sums[t].data());
                                g_sink = g_sink + sums[0][1];
                              }),
                  TimePerCall(kIters, [&] {
                    for (size_t t = 0; t < out.size(); ++t)
                      AccumulateWeighted(out[t].data(), out[t].size(), 0.5, sums[t].data());
                    g_sink = g_sink + sums[0][1];
                  })});
  const double fused = TimePerCall(kIters, [&] {
    for (size_t t = 0; t < codes.size(); ++t)
      DequantizeInt8Accumulate(codes[t].data(), scales[t].data(), codes[t].size(), block, 0.5,
                               sums[t].data());
    g_sink = g_sink + sums[0][1];
  });
  const double handler = HandlerSecondsPerUpdate(deltas_zstd, initial, 400);
  const double handler_sent = HandlerSecondsPerUpdate(deltas_sent, initial, 400);
  const double handler_sent_sha = HandlerSecondsPerUpdate(deltas_sent_sha256, initial, 400);
  const auto sent_header = InspectBundle(deltas_sent[0]);
  (void)trusted;

  std::printf(
      "per-update CPU breakdown, in-process, %zu values (%.1f KB int8+zstd), thread CPU, best of 5:\n", n,
      static_cast<double>(upload.size()) / 1024.0);
  for (const Row& r : rows) {
    if (r.before_s >= 0) {
      std::printf("  %-50s %8.1f us  (before this change: %8.1f us, %.1fx)\n", r.name.c_str(), us(r.after_s),
                  us(r.before_s), r.before_s / r.after_s);
    } else {
      std::printf("  %-50s %8.1f us\n", r.name.c_str(), us(r.after_s));
    }
  }
  std::printf("  %-50s %8.1f us  (= dequantize + accumulate in one pass, no float array)\n",
              "fused dequantize+accumulate kernel", us(fused));
  std::printf("  %-50s %8.1f us  (checksum, decode, checks, FedAvg, locks; no gRPC)\n",
              "ProtocolHandler upload -> accepted, in-process", us(handler));
  std::printf("  %-50s %8.1f us  (the update the agents send: %.1f KB, body %s; %.2fx the zstd body's)\n",
              "  same, the update as sent", us(handler_sent),
              static_cast<double>(deltas_sent[0].size()) / 1024.0,
              sent_header.ok() && sent_header->zstd ? "zstd" : "plain (zstd saved < zstd_min_saving)",
              handler_sent / handler);
  std::printf("  %-50s %8.1f us  (SHA-256 transport checksum and trailer; %.2fx the XXH3-128 upload's)\n",
              "  same, as an older agent sends it", us(handler_sent_sha), handler_sent_sha / handler_sent);

  // Bandwidth: the fused kernel against memcpy in this process, at the
  // update's size (cache-resident sums) and at a 4M-value model (DRAM).
  std::printf("decode+accumulate kernel vs memcpy bandwidth (bytes read + written per second):\n");
  for (size_t values : {n, size_t{32'000'000}}) {
    const KernelRate k = FusedKernelRate(values, block);
    const size_t moved = values + 4 * ((values + block - 1) / block) + 16 * values;
    const double mc_same = MemcpyBandwidth(moved / 2);
    std::printf(
        "  %8zu values: kernel %.1f us, %.2f GB/s moved (%.2f GB/s of update bytes); memcpy of the same %.1f "
        "MiB: "
        "%.2f GB/s; kernel = %.0f%% of memcpy\n",
        values, us(k.seconds), k.moved_per_s / 1e9, k.update_per_s / 1e9,
        static_cast<double>(moved) / (1 << 20), mc_same / 1e9, 100.0 * k.moved_per_s / mc_same);
  }
  const double mc_dram = MemcpyBandwidth(256u << 20);
  std::printf("  memcpy 256 MiB (DRAM): %.2f GB/s\n", mc_dram / 1e9);
}

// One pre-encoded update the simulated agents send.
struct Payload {
  std::string bytes;  // SHA-256 trailer and checksum (older agents, older aggregators)
  std::string checksum;
  uint64_t raw_bytes = 0;
  // The same values with an XXH3-128 trailer and checksum: what an agent
  // sends when JoinResponse.upload_checksum asks for it.
  std::string fast_bytes;
  std::string fast_checksum;
};

struct SimAgent {
  std::string id;
  std::string session;
  int64_t held_version = 0;
  int channel = 0;
  bool done = false;
  bool xxh3 = false;             // JoinResponse.upload_checksum
  std::optional<v1::Task> task;  // answered by AskTask, not yet acted on
};

struct RunResult {
  int agents = 0;
  int rounds = 0;
  double seconds = 0;  // first TRAIN handed out -> last DONE
  double cpu_seconds = 0;
  double generator_cpu_seconds = 0;  // this process (the simulated agents) over the same window
  long baseline_rss_kib = 0;
  long peak_kib = 0;
  uint64_t updates = 0;
  uint64_t rejected = 0;
  uint64_t rpc_errors = 0;
  uint64_t get_tasks = 0;     // GetTask calls of the whole run (join to done)
  int channels = 0;           // gRPC channels (TCP connections) the agents used
  std::string global_codec;   // spec.compression.globalCodec of the run
  uint64_t global_bytes = 0;  // the encoded global of the last FetchGlobal (bytes on the wire)
  // GetTask answers by kind: TRAIN, EVALUATE, WAIT, other (INITIALIZE, DONE).
  uint64_t task_train = 0, task_evaluate = 0, task_wait = 0, task_other = 0;
  bool ok = false;
  std::string error;
};

class Bench {
 public:
  Bench(std::string aggregator, int rounds, int threads, int channels, int64_t values, int wait_ms,
        double zstd_min_saving)
      : aggregator_(std::move(aggregator)),
        rounds_(rounds),
        threads_(threads),
        channels_(channels),
        wait_ms_(wait_ms) {
    initial_ = Random(values, 1, 0.02f);
    auto init = EncodeBundle(initial_, EncodeOptions{Codec::kFp32, 64, /*zstd=*/true, 3});
    if (!init.ok()) std::abort();
    initial_payload_.bytes = *init;
    initial_payload_.checksum = Sha256Hex(*init);
    initial_payload_.raw_bytes = initial_.Fp32Bytes();
    EncodeOptions init_fast{Codec::kFp32, 64, /*zstd=*/true, 3};
    init_fast.trailer = ChecksumAlgorithm::kXxh3_128;
    auto init_x = EncodeBundle(initial_, init_fast);
    if (!init_x.ok()) std::abort();
    initial_payload_.fast_bytes = *init_x;
    initial_payload_.fast_checksum = Xxh3_128Hex(*init_x);
    // Blockwise int8 + zstd, the quickstart's codec (zstd kept only when it
    // saves zstd_min_saving, as the agent's encoder does).
    for (uint32_t i = 0; i < 8; ++i) {
      TensorBundle delta = Random(values, 100 + i, 0.001f);
      EncodeOptions eo{Codec::kInt8, 64, /*zstd=*/true, 3};
      eo.zstd_min_saving = zstd_min_saving;
      auto enc = EncodeBundle(delta, eo);
      if (!enc.ok()) std::abort();
      eo.trailer = ChecksumAlgorithm::kXxh3_128;
      auto fast = EncodeBundle(delta, eo);
      if (!fast.ok()) std::abort();
      deltas_.push_back(Payload{*enc, Sha256Hex(*enc), delta.Fp32Bytes(), *fast, Xxh3_128Hex(*fast)});
    }
  }

  size_t update_bytes() const { return deltas_[0].bytes.size(); }
  const TensorBundle& initial() const { return initial_; }
  std::vector<std::string> delta_bytes_sha256() const {
    std::vector<std::string> out;
    for (const Payload& p : deltas_) out.push_back(p.bytes);
    return out;
  }
  // What agents of this aggregator send (XXH3-128).
  std::vector<std::string> delta_bytes() const {
    std::vector<std::string> out;
    for (const Payload& p : deltas_) out.push_back(p.fast_bytes);
    return out;
  }
  uint64_t model_bytes() const { return initial_.Fp32Bytes(); }

  // One run of `agents` against the aggregator binary `aggregator` (empty:
  // the one given at construction), the global sent in `global_codec`
  // (spec.compression.globalCodec; empty: the spec's default).
  RunResult Run(int agents, const std::string& aggregator = "", const std::string& global_codec = "") {
    const std::string& binary = aggregator.empty() ? aggregator_ : aggregator;
    RunResult result;
    result.agents = agents;
    result.rounds = rounds_;
    const std::string dir = (std::filesystem::temp_directory_path() /
                             ("fedge-scale-" + std::to_string(getpid()) + "-" + std::to_string(agents)))
                                .string();
    std::filesystem::create_directories(dir);
    JobSpec spec;
    spec.apiVersion = "fedge.io/v1alpha1";
    spec.kind = "FederatedTrainingJob";
    spec.name = "scale";
    spec.namespace_ = "bench";
    spec.model.path = "/models/bench";
    spec.model.labels = {"negative", "positive"};
    spec.data.path = "/data";
    spec.data.trainFile = "train.jsonl";
    spec.agents.minAgents = agents;
    spec.rounds.total = rounds_;
    spec.rounds.timeoutSeconds = 600;
    spec.strategy.maxBufferedUpdates = std::max(agents, 1000);
    if (!global_codec.empty()) spec.compression.globalCodec = global_codec;
    result.global_codec = spec.compression.globalCodec;
    if (auto parsed = ParseJobSpec(JobSpecToYaml(spec)); !parsed.ok()) {
      result.error = "bench job spec is invalid: " + parsed.status().ToString();
      return result;
    }
    std::ofstream(dir + "/job.yaml") << JobSpecToYaml(spec);
    const int port = FreePort(), http = FreePort();
    pid_t pid = fork();
    if (pid == 0) {
      std::string listen = "127.0.0.1:" + std::to_string(port),
                  http_addr = "127.0.0.1:" + std::to_string(http);
      std::string n = std::to_string(agents), config = dir + "/job.yaml";
      execl(binary.c_str(), binary.c_str(), "--config", config.c_str(), "--listen", listen.c_str(), "--http",
            http_addr.c_str(), "--expected-agents", n.c_str(), "--log-level", "warn",
            static_cast<char*>(nullptr));
      _exit(127);
    }

    // A long-polled GetTask holds an HTTP/2 stream, and the aggregator allows
    // 16 per connection (ServerOptions::max_streams_per_connection): a real
    // agent has its own connection, here at most kAgentsPerChannel share one.
    constexpr int kAgentsPerChannel = 12;
    const int channel_count =
        wait_ms_ > 0 ? std::max(channels_, (agents + kAgentsPerChannel - 1) / kAgentsPerChannel) : channels_;
    result.channels = channel_count;
    std::vector<std::shared_ptr<grpc::Channel>> channels;
    std::vector<std::unique_ptr<v1::Aggregator::Stub>> stubs;
    for (int c = 0; c < channel_count; ++c) {
      grpc::ChannelArguments args;
      args.SetInt("fedge.bench.channel", c);  // distinct args: a TCP connection each
      args.SetMaxReceiveMessageSize(8 << 20);
      auto ch = grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(port),
                                          grpc::InsecureChannelCredentials(), args);
      if (!ch->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(20))) {
        result.error = "aggregator did not listen on port " + std::to_string(port);
        kill(pid, SIGTERM);
        waitpid(pid, nullptr, 0);
        return result;
      }
      stubs.push_back(v1::Aggregator::NewStub(ch));
      channels.push_back(ch);
    }

    agents_.assign(static_cast<size_t>(agents), SimAgent{});
    for (int i = 0; i < agents; ++i) {
      agents_[static_cast<size_t>(i)].id = "agent-" + std::to_string(i);
      agents_[static_cast<size_t>(i)].channel = i % channel_count;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_ = {};
      auto now = SteadyClock::now();
      for (int i = 0; i < agents; ++i) queue_.push({now, i});
      remaining_ = agents;
      first_train_.reset();
      failed_ = false;
    }
    updates_ = rejected_ = rpc_errors_ = get_tasks_ = global_bytes_ = 0;
    task_train_ = task_evaluate_ = task_wait_ = task_other_ = 0;
    baseline_ = ProcStats{};
    pid_ = pid;

    std::vector<std::thread> workers;
    for (int t = 0; t < threads_; ++t) workers.emplace_back([&] { Work(stubs); });
    for (auto& w : workers) w.join();
    const auto end = SteadyClock::now();
    ProcStats final_stats = ReadProc(pid);
    const ProcStats generator_final = ReadProc(getpid());
    kill(pid, SIGTERM);
    int status = 0;
    waitpid(pid, &status, 0);
    std::filesystem::remove_all(dir);

    result.updates = updates_;
    result.rejected = rejected_;
    result.rpc_errors = rpc_errors_;
    result.global_bytes = global_bytes_;
    result.task_train = task_train_;
    result.task_evaluate = task_evaluate_;
    result.task_wait = task_wait_;
    result.task_other = task_other_;
    result.get_tasks = get_tasks_;
    result.baseline_rss_kib = baseline_.rss_kib;
    result.peak_kib = final_stats.hwm_kib;
    result.cpu_seconds = final_stats.cpu_seconds - baseline_.cpu_seconds;
    result.generator_cpu_seconds = generator_final.cpu_seconds - generator_baseline_.cpu_seconds;
    if (first_train_) result.seconds = std::chrono::duration<double>(end - *first_train_).count();
    result.ok = !failed_ && remaining_ == 0;
    if (!result.ok && result.error.empty()) result.error = error_;
    return result;
  }

 private:
  using Due = std::pair<SteadyClock::time_point, int>;
  struct Later {
    bool operator()(const Due& a, const Due& b) const { return a.first > b.first; }
  };

  void Fail(const std::string& message) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!failed_) error_ = message;
    failed_ = true;
    cv_.notify_all();
  }

  void Work(std::vector<std::unique_ptr<v1::Aggregator::Stub>>& stubs) {
    const auto give_up = SteadyClock::now() + std::chrono::minutes(15);
    while (true) {
      int index = -1;
      {
        std::unique_lock<std::mutex> lock(mu_);
        while (true) {
          if (failed_ || remaining_ == 0) return;
          if (SteadyClock::now() > give_up) {
            error_ = "gave up after 15 minutes";
            failed_ = true;
            cv_.notify_all();
            return;
          }
          if (!queue_.empty() && queue_.top().first <= SteadyClock::now()) {
            index = queue_.top().second;
            queue_.pop();
            break;
          }
          if (queue_.empty()) {
            cv_.wait_for(lock, std::chrono::milliseconds(100));
          } else {
            cv_.wait_until(lock, queue_.top().first);
          }
        }
      }
      SimAgent& agent = agents_[static_cast<size_t>(index)];
      int delay_ms = Step(agent, index, *stubs[static_cast<size_t>(agent.channel)]);
      std::lock_guard<std::mutex> lock(mu_);
      if (agent.done) {
        --remaining_;
        cv_.notify_all();
      } else if (delay_ms >= 0) {
        queue_.push({SteadyClock::now() + std::chrono::milliseconds(delay_ms), index});
        cv_.notify_one();
      }
    }
  }

  // Counts a failed call; the first few are printed with their status.
  void RpcError(const char* method, const SimAgent& agent, const grpc::Status& s) {
    if (++rpc_errors_ <= 5) {
      std::fprintf(stderr, "%s of %s failed: %d %s\n", method, agent.id.c_str(),
                   static_cast<int>(s.error_code()), s.error_message().c_str());
    }
  }

  v1::RequestHeader Header(const SimAgent& agent) const {
    v1::RequestHeader h;
    h.set_protocol_version(1);
    h.set_job(kJob);
    h.set_agent_id(agent.id);
    h.set_session(agent.session);
    return h;
  }

  bool Submit(SimAgent& agent, v1::Aggregator::Stub& stub, const Payload& p, int64_t round, int64_t base,
              bool is_delta, bool with_evaluation = false) {
    grpc::ClientContext ctx;
    v1::SubmitUpdateResponse response;
    auto writer = stub.SubmitUpdate(&ctx, &response);
    v1::UpdateChunk chunk;
    v1::UpdateHeader* h = chunk.mutable_header();
    *h->mutable_header() = Header(agent);
    h->set_round(round);
    h->set_base_version(base);
    h->set_num_examples(100);
    const std::string& bytes = agent.xxh3 ? p.fast_bytes : p.bytes;
    h->set_total_bytes(bytes.size());
    h->set_checksum(agent.xxh3 ? p.fast_checksum : p.checksum);
    h->set_checksum_algorithm(agent.xxh3 ? v1::CHECKSUM_XXH3_128 : v1::CHECKSUM_SHA256);
    h->set_train_loss(1.0);
    h->set_steps(20);
    h->set_is_delta(is_delta);
    h->set_raw_bytes(p.raw_bytes);
    if (with_evaluation) {  // what the EVALUATE task's ReportMetrics would have said
      v1::Evaluation* e = h->mutable_evaluation();
      e->set_global_version(base);
      e->set_num_examples(20);
      (*e->mutable_values())["accuracy"] = 0.5;
      (*e->mutable_values())["loss"] = 1.0;
    }
    writer->Write(chunk);
    constexpr size_t kChunk = 4u << 20;
    for (size_t off = 0; off < bytes.size(); off += kChunk) {
      v1::UpdateChunk data;
      data.set_data(bytes.substr(off, kChunk));
      if (!writer->Write(data)) break;
    }
    writer->WritesDone();
    grpc::Status s = writer->Finish();
    if (!s.ok()) {
      RpcError("SubmitUpdate", agent, s);
      return false;
    }
    if (!response.accepted()) {
      ++rejected_;
      return false;
    }
    if (is_delta) ++updates_;
    return true;
  }

  bool Fetch(SimAgent& agent, v1::Aggregator::Stub& stub, int64_t version) {
    grpc::ClientContext ctx;
    v1::FetchGlobalRequest req;
    *req.mutable_header() = Header(agent);
    req.set_version(version);
    auto reader = stub.FetchGlobal(&ctx, req);
    v1::GlobalChunk chunk;
    uint64_t got = 0, total = 0;
    while (reader->Read(&chunk)) {
      got += chunk.data().size();
      total = chunk.total_bytes();
    }
    grpc::Status s = reader->Finish();
    if (!s.ok() || got != total) {
      RpcError("FetchGlobal", agent,
               s.ok() ? grpc::Status(grpc::StatusCode::DATA_LOSS,
                                     std::to_string(got) + " of " + std::to_string(total) + " bytes")
                      : s);
      return false;
    }
    agent.held_version = version;
    global_bytes_ = total;
    return true;
  }

  // One protocol step; returns the delay before the agent's next step, or
  // -1 when it is done / failed, or -2 when an asynchronous GetTask will
  // requeue it. GetTask is asynchronous so that a long-polled call holds no
  // worker thread: 10,000 agents can each have one parked at the aggregator.
  int Step(SimAgent& agent, int index, v1::Aggregator::Stub& stub) {
    if (agent.session.empty()) {
      grpc::ClientContext ctx;
      v1::JoinRequest req;
      *req.mutable_header() = Header(agent);
      req.set_node_name("sim-node-" + std::to_string(index));
      req.mutable_capabilities()->set_num_train_examples(100);
      req.mutable_capabilities()->set_num_eval_examples(100);
      req.mutable_capabilities()->set_evaluates_before_training(evaluate_before_training_);
      for (const NamedTensor& t : initial_.tensors) {
        v1::TensorShape* shape = req.mutable_capabilities()->add_trainable_layout();
        shape->set_name(t.name);
        for (int64_t d : t.shape) shape->add_dims(d);
      }
      v1::JoinResponse resp;
      grpc::Status s = stub.Join(&ctx, req, &resp);
      if (!s.ok()) {
        RpcError("Join", agent, s);
        return 500;
      }
      agent.session = resp.session();
      agent.xxh3 = resp.upload_checksum() == v1::CHECKSUM_XXH3_128;
      return 0;
    }
    if (!agent.task) {
      AskTask(agent, index, stub);
      return -2;
    }
    const v1::Task task = *agent.task;
    agent.task.reset();
    switch (task.kind()) {
      case v1::TASK_KIND_WAIT:
        return 0;  // AskTask requeues WAIT answers itself
      case v1::TASK_KIND_INITIALIZE:
        Submit(agent, stub, initial_payload_, 0, 0, /*is_delta=*/false);
        baseline_ = ReadProc(pid_);  // the global exists; nothing round-related has happened yet
        return 0;
      case v1::TASK_KIND_TRAIN: {
        {
          std::lock_guard<std::mutex> lock(mu_);
          if (!first_train_) {
            first_train_ = SteadyClock::now();
            baseline_ = ReadProc(pid_);
            generator_baseline_ = ReadProc(getpid());
          }
        }
        if (skip_fetch_) agent.held_version = task.global_version();
        if (agent.held_version != task.global_version() && !Fetch(agent, stub, task.global_version()))
          return 200;
        Submit(agent, stub, deltas_[static_cast<size_t>(index) % deltas_.size()], task.round(),
               task.global_version(), true, task.evaluate_global());
        return 0;
      }
      case v1::TASK_KIND_EVALUATE: {
        if (skip_fetch_) agent.held_version = task.global_version();
        if (agent.held_version != task.global_version() && !Fetch(agent, stub, task.global_version()))
          return 200;
        grpc::ClientContext mctx;
        v1::MetricsReport report;
        *report.mutable_header() = Header(agent);
        report.set_round(task.round());
        report.set_global_version(task.global_version());
        report.set_phase("evaluate");
        report.set_num_examples(20);
        (*report.mutable_values())["accuracy"] = 0.5;
        (*report.mutable_values())["loss"] = 1.0;
        v1::MetricsAck ack;
        if (grpc::Status s = stub.ReportMetrics(&mctx, report, &ack); !s.ok())
          RpcError("ReportMetrics", agent, s);
        return 0;
      }
      case v1::TASK_KIND_DONE:
        agent.done = true;
        return -1;
      default:
        Fail("unexpected task kind " + std::to_string(task.kind()));
        return -1;
    }
  }

  struct TaskCall {
    grpc::ClientContext ctx;
    v1::TaskRequest request;
    v1::Task task;
  };

  // GetTask without blocking a worker: the answer requeues the agent (a
  // WAIT answer after retry_after_ms, or at once with long-polls).
  void AskTask(SimAgent& agent, int index, v1::Aggregator::Stub& stub) {
    auto* call = new TaskCall;
    *call->request.mutable_header() = Header(agent);
    call->request.set_held_version(agent.held_version);
    if (wait_ms_ > 0) {
      call->request.set_wait_ms(static_cast<uint32_t>(wait_ms_));
      call->ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(wait_ms_ + 30'000));
    }
    ++get_tasks_;
    stub.async()->GetTask(&call->ctx, &call->request, &call->task, [this, call, index](grpc::Status s) {
      SimAgent& a = agents_[static_cast<size_t>(index)];
      int delay_ms = 0;
      if (!s.ok()) {
        RpcError("GetTask", a, s);
        if (s.error_code() == grpc::StatusCode::UNAUTHENTICATED) a.session.clear();
        delay_ms = 500;
      } else if (call->task.kind() == v1::TASK_KIND_WAIT) {
        ++task_wait_;
        delay_ms = wait_ms_ > 0 ? 0 : std::max(call->task.retry_after_ms(), 50);
      } else {
        const v1::TaskKind kind = call->task.kind();
        ++(kind == v1::TASK_KIND_TRAIN      ? task_train_
           : kind == v1::TASK_KIND_EVALUATE ? task_evaluate_
                                            : task_other_);
        a.task = call->task;
      }
      delete call;
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push({SteadyClock::now() + std::chrono::milliseconds(delay_ms), index});
      cv_.notify_one();
    });
  }

  const std::string aggregator_;
  const int rounds_, threads_, channels_;
  const int wait_ms_;  // GetTask long-poll; 0: poll after retry_after_ms

 public:
  // Diagnostic: the agents never call FetchGlobal (they act as if they held
  // every version), to measure what the global download costs the aggregator.
  bool skip_fetch_ = false;
  // Agents declare Capabilities.evaluates_before_training (false: the
  // aggregator evaluates every round in a phase of its own).
  bool evaluate_before_training_ = true;

 private:
  TensorBundle initial_;
  Payload initial_payload_;
  std::vector<Payload> deltas_;

  std::vector<SimAgent> agents_;
  pid_t pid_ = 0;
  std::mutex mu_;
  std::condition_variable cv_;
  std::priority_queue<Due, std::vector<Due>, Later> queue_;  // guarded by mu_
  int remaining_ = 0;                                        // guarded by mu_
  std::optional<SteadyClock::time_point> first_train_;       // guarded by mu_
  bool failed_ = false;                                      // guarded by mu_
  std::string error_;                                        // guarded by mu_
  ProcStats baseline_;
  ProcStats generator_baseline_;  // this process at the first TRAIN
  std::atomic<uint64_t> updates_{0}, rejected_{0}, rpc_errors_{0}, get_tasks_{0}, global_bytes_{0};
  std::atomic<uint64_t> task_train_{0}, task_evaluate_{0}, task_wait_{0}, task_other_{0};
};

}  // namespace

int main(int argc, char** argv) {
  // The load generator's gRPC locks, like the aggregator's, without absl's
  // lock-order graph (on in Debian's build): GraphCycles was ~3% of this
  // process's perf samples at 5,000 agents. Before any thread starts.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  CLI::App app{"fedge_bench_scale: simulated agents against one fedge-aggregator process"};
  std::string aggregator;
  std::vector<int> agent_counts = {200, 1000};
  int rounds = 3, threads = 16, channels = 4;
  int64_t values = 83'353;  // the quickstart update: LoRA r8 on query/value of MiniLM-L6 + head
  app.add_option("--aggregator", aggregator, "path to fedge-aggregator (default: next to this build)");
  app.add_option("--agents", agent_counts, "agent counts, one aggregator run each (e.g. 200,1000)")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--rounds", rounds, "rounds per run")->capture_default_str();
  app.add_option("--threads", threads, "worker threads multiplexing the agents")->capture_default_str();
  app.add_option("--channels", channels, "gRPC channels (TCP connections) shared by the agents")
      ->capture_default_str();
  app.add_option("--values", values, "trainable values per update")->capture_default_str();
  int memory_agents = 200;
  int64_t memory_values = 4'000'000;
  app.add_option("--memory-agents", memory_agents,
                 "agents of the in-process streaming-memory check (0: skip)")
      ->capture_default_str();
  app.add_option("--memory-values", memory_values, "model values of the streaming-memory check")
      ->capture_default_str();
  bool breakdown = true;
  bool skip_fetch = false;
  app.add_flag(
      "--skip-fetch", skip_fetch,
      "diagnostic: agents never call FetchGlobal, to measure what the download costs (not a protocol "
      "run: every agent trains on a global it never fetched)");
  double zstd_min_saving = EncodeOptions{}.zstd_min_saving;
  app.add_option("--zstd-min-saving", zstd_min_saving,
                 "the agents' EncodeOptions::zstd_min_saving (0: a zstd body always, the encoder before "
                 "issue 14 item 2)")
      ->capture_default_str();
  int wait_ms = 10'000;
  std::string compare;
  app.add_option(
      "--compare", compare,
      "another fedge-aggregator binary (e.g. a build of the previous commit): every agent count runs "
      "against both, alternating, and the ratios are printed");
  std::string global_codec, compare_global_codec;
  app.add_option(
      "--global-codec", global_codec,
      "spec.compression.globalCodec of the runs (fp32 | fp16 | bf16; default: the spec's default)");
  app.add_option("--compare-global-codec", compare_global_codec,
                 "also run every agent count with this spec.compression.globalCodec (same binaries), "
                 "alternating, and print the ratios");
  bool evaluation_phase = false, compare_evaluation = false;
  app.add_flag("--evaluation-phase", evaluation_phase,
               "the agents do not declare Capabilities.evaluates_before_training, so the aggregator "
               "evaluates every round in a phase of its own (EVALUATE tasks and ReportMetrics)");
  app.add_flag("--compare-evaluation", compare_evaluation,
               "also run every agent count with the other evaluation (phase vs with the next round's "
               "updates; same binary), alternating, and print the ratios");
  app.add_option("--wait-ms", wait_ms,
                 "GetTask long-poll the agents ask for (TaskRequest.wait_ms); 0: poll after retry_after_ms")
      ->capture_default_str();
  app.add_option("--breakdown", breakdown,
                 "print the in-process per-update CPU breakdown and kernel bandwidth")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  log::Init("scale-bench", log::Level::kWarn);

  // First, while this process has no gRPC threads (it forks).
  if (memory_agents > 0) {
    const double model_kib = static_cast<double>(memory_values) * 4 / 1024.0;
    std::printf(
        "streaming-memory check: %lld values = %.1f MiB fp32 model, int8 updates, in-process handler\n",
        static_cast<long long>(memory_values), model_kib / 1024.0);
    std::vector<MemoryCheck> checks;
    for (int n : {std::max(1, memory_agents / 10), memory_agents}) {
      MemoryCheck m = RunMemoryCheck(n, memory_values);
      if (!m.ok) {
        std::fprintf(stderr, "streaming-memory check with %d agents failed\n", n);
        return 1;
      }
      std::printf(
          "  %4d agents: %.1f s; RSS before the round %.1f MiB, peak %.1f MiB, growth %.1f MiB = %.2f model "
          "sizes (buffering every update: %d)\n",
          n, m.seconds, m.baseline_kib / 1024.0, m.peak_kib / 1024.0, (m.peak_kib - m.baseline_kib) / 1024.0,
          static_cast<double>(m.peak_kib - m.baseline_kib) / model_kib, n);
      checks.push_back(m);
    }
    const double growth =
        static_cast<double>(checks.back().peak_kib - checks.back().baseline_kib) / model_kib;
    constexpr double kBoundModels = 3.0;
    std::printf("  bound: peak growth <= %.0f model sizes whatever the agent count: %s\n", kBoundModels,
                growth <= kBoundModels ? "holds" : "VIOLATED");
    if (growth > kBoundModels) return 1;
  }

  if (aggregator.empty()) {
    std::filesystem::path self = std::filesystem::canonical("/proc/self/exe");
    aggregator = (self.parent_path().parent_path() / "aggregator" / "fedge-aggregator").string();
  }
  if (!std::filesystem::exists(aggregator)) {
    std::fprintf(stderr, "no aggregator binary at %s (build fedge-aggregator or pass --aggregator)\n",
                 aggregator.c_str());
    return 2;
  }

  Bench bench(aggregator, rounds, threads, channels, values, wait_ms, zstd_min_saving);
  bench.skip_fetch_ = skip_fetch;
  if (skip_fetch) std::printf("diagnostic --skip-fetch: the agents never download the global\n");
  std::printf("model: %lld values, %.1f KB fp32; update: int8, zstd %s%.0f%%, %.1f KB on the wire\n",
              static_cast<long long>(values), static_cast<double>(bench.model_bytes()) / 1024.0,
              zstd_min_saving > 0 ? "if it saves >= " : "always, --zstd-min-saving ", 100.0 * zstd_min_saving,
              static_cast<double>(bench.update_bytes()) / 1024.0);
  if (breakdown) {
    auto plain =
        EncodeBundle(Random(values, 100, 0.001f), EncodeOptions{Codec::kInt8, 64, /*zstd=*/false, 3});
    if (!plain.ok()) std::abort();
    std::vector<std::string> always_zstd;  // the same deltas with a zstd body
    for (uint32_t i = 0; i < 8; ++i) {
      EncodeOptions eo{Codec::kInt8, 64, /*zstd=*/true, 3};
      eo.zstd_min_saving = 0;
      auto enc = EncodeBundle(Random(values, 100 + i, 0.001f), eo);
      if (!enc.ok()) std::abort();
      always_zstd.push_back(*enc);
    }
    PrintBreakdown(bench.initial(), always_zstd, bench.delta_bytes(), bench.delta_bytes_sha256(), *plain, 64);
  }
  std::printf(
      "load generator: %d worker threads, %d channels, GetTask %s, %u cores on this machine, load average "
      "%.1f\n",
      threads, channels, wait_ms > 0 ? ("long-poll " + std::to_string(wait_ms) + " ms").c_str() : "polling",
      std::thread::hardware_concurrency(), LoadAverage());
  auto evaluation_name = [](bool phase) {
    return phase ? "a phase of its own (EVALUATE + ReportMetrics)" : "with the next round's updates";
  };
  std::printf("evaluation of each round's global: %s%s%s\n", evaluation_name(evaluation_phase),
              compare_evaluation ? "; compared: " : "",
              compare_evaluation ? evaluation_name(!evaluation_phase) : "");
  if (!compare.empty() && !std::filesystem::exists(compare)) {
    std::fprintf(stderr, "no aggregator binary at %s (--compare)\n", compare.c_str());
    return 2;
  }
  auto print = [&](const char* label, const RunResult& r) {
    const int n = r.agents;
    const double rpm = r.seconds > 0 ? 60.0 * r.rounds / r.seconds : 0;
    std::printf(
        "%sagents %5d: %d rounds in %.1f s = %.2f rounds/min; %llu updates accepted, %llu rejected, %llu rpc "
        "errors; global %s %.1f KB; %d connections, %.1f GetTask calls per agent per round; aggregator CPU "
        "%.2f s = %.3f ms per "
        "update; RSS "
        "after "
        "init %.1f MiB, peak (VmHWM) %.1f MiB, growth %.1f MiB = %.1fx the fp32 model = %.0f KB per "
        "connection\n",
        label, n, r.rounds, r.seconds, rpm, static_cast<unsigned long long>(r.updates),
        static_cast<unsigned long long>(r.rejected), static_cast<unsigned long long>(r.rpc_errors),
        r.global_codec.c_str(), static_cast<double>(r.global_bytes) / 1024.0, r.channels,
        static_cast<double>(r.get_tasks) / n / r.rounds, r.cpu_seconds,
        r.updates ? 1000.0 * r.cpu_seconds / static_cast<double>(r.updates) : 0.0,
        r.baseline_rss_kib / 1024.0, r.peak_kib / 1024.0, (r.peak_kib - r.baseline_rss_kib) / 1024.0,
        (r.peak_kib - r.baseline_rss_kib) * 1024.0 / static_cast<double>(bench.model_bytes()),
        r.channels > 0 ? static_cast<double>(r.peak_kib - r.baseline_rss_kib) / r.channels : 0.0);
    const double per = static_cast<double>(n) * r.rounds;
    std::printf(
        "  GetTask answers per agent per round: TRAIN %.2f, EVALUATE %.2f, WAIT %.2f, INITIALIZE/DONE %.2f "
        "(the "
        "job's start and end, spread over %d rounds)\n",
        static_cast<double>(r.task_train) / per, static_cast<double>(r.task_evaluate) / per,
        static_cast<double>(r.task_wait) / per, static_cast<double>(r.task_other) / per, r.rounds);
    // rounds/min is the two processes sharing the machine: what the simulated
    // agents cost here is CPU a real fleet spends on its own nodes.
    const double cores = std::max(1U, std::thread::hardware_concurrency());
    std::printf(
        "  CPU over the rounds: aggregator %.2f s, load generator %.2f s (%.3f ms per update); together "
        "%.0f%% "
        "of %.0f cores x %.1f s\n",
        r.cpu_seconds, r.generator_cpu_seconds,
        r.updates ? 1000.0 * r.generator_cpu_seconds / static_cast<double>(r.updates) : 0.0,
        r.seconds > 0 ? 100.0 * (r.cpu_seconds + r.generator_cpu_seconds) / (cores * r.seconds) : 0.0, cores,
        r.seconds);
  };
  auto cpu_per_update = [](const RunResult& r) {
    return r.updates ? r.cpu_seconds / static_cast<double>(r.updates) : 0.0;
  };
  std::vector<RunResult> results;
  for (size_t i = 0; i < agent_counts.size(); ++i) {
    const int n = agent_counts[i];
    // With --compare the two binaries alternate which goes first, so that a
    // change in the machine's load does not always favour the same one.
    // --compare-global-codec likewise, with this binary (or --compare's).
    const bool comparing = !compare.empty() || !compare_global_codec.empty() || compare_evaluation;
    const std::string other_codec = compare_global_codec.empty() ? global_codec : compare_global_codec;
    RunResult r, other;
    const bool other_first = comparing && i % 2 == 1;
    auto run_other = [&] {
      bench.evaluate_before_training_ = compare_evaluation ? evaluation_phase : !evaluation_phase;
      other = bench.Run(n, compare, other_codec);
    };
    if (other_first) run_other();
    bench.evaluate_before_training_ = !evaluation_phase;
    r = bench.Run(n, "", global_codec);
    if (comparing && !other_first) run_other();
    for (const RunResult* x : {&r, &other}) {
      if (x == &other && !comparing) continue;
      if (!x->ok) {
        std::fprintf(stderr, "run with %d agents (%s) failed: %s\n", n,
                     x == &r || compare.empty() ? aggregator.c_str() : compare.c_str(), x->error.c_str());
        return 1;
      }
    }
    if (!comparing) {
      print("", r);
    } else {
      print("this     ", r);
      print("compared ", other);
      const double rpm = r.seconds > 0 ? r.rounds / r.seconds : 0;
      const double other_rpm = other.seconds > 0 ? other.rounds / other.seconds : 0;
      std::printf(
          "  ratio this/compared at %d agents: rounds/min %.2fx, aggregator CPU per update %.2fx, peak RSS "
          "%.2fx (load average %.1f)\n",
          n, other_rpm > 0 ? rpm / other_rpm : 0.0,
          cpu_per_update(other) > 0 ? cpu_per_update(r) / cpu_per_update(other) : 0.0,
          other.peak_kib > 0 ? static_cast<double>(r.peak_kib) / static_cast<double>(other.peak_kib) : 0.0,
          LoadAverage());
    }
    results.push_back(r);
  }
  std::printf("load average at the end: %.1f (aggregator and load generator share the machine)\n",
              LoadAverage());
  if (results.size() >= 2) {
    const RunResult& a = results.front();
    const RunResult& b = results.back();
    std::printf("peak RSS %d -> %d agents (%.1fx the agents): %.1f -> %.1f MiB (ratio %.2f); model %.1f KB\n",
                a.agents, b.agents, static_cast<double>(b.agents) / a.agents, a.peak_kib / 1024.0,
                b.peak_kib / 1024.0, static_cast<double>(b.peak_kib) / static_cast<double>(a.peak_kib),
                static_cast<double>(bench.model_bytes()) / 1024.0);
  }
  return 0;
}
