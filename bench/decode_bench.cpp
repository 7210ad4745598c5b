// decode_bench: batch-1 decode speed of the Llama path against the memory-bandwidth
// bound measured in the same run.
//
// Each decoded token reads every weight once, so tokens/s can not exceed
//   bound = copy bandwidth / model bytes
// where the copy bandwidth is measured here with memcpy over buffers far larger than
// the last-level cache. The bench reports tokens/s for one and two intra-op threads,
// the fraction of the bound, and which thread count is faster. A model that fits in
// the L3 cache is served from cache, not DRAM, and can beat the bound: the output says
// so. Models: --model DIR (e.g. fedge-pretrain's output) and a random-initialised
// "edge-sized" Llama far larger than the cache.
//
// On a shared machine the wall-clock rate depends on what else runs; the bench also
// prints tokens per CPU-second of this process (for one thread: the rate it would have
// on an idle core) and the load average, so a contended figure is recognisable.
//
// --compare is the fedge side of bench/decode/compare_llama_cpp.sh: it times a
// --prompt-tokens prefill and then --tokens single-token decode steps fed
// pseudo-random ids (as llama-bench's pp/tg tests do), per decode kernel
// (--kernels torch,f32,int8), and prints one CSV row per measurement:
//   engine,weights,threads,prefill_tps,decode_tps
//
// --prefill-memory N prefills N random ids into a one-layer random model with Llama
// 3.2 1B's attention shape (hidden 2048, 32 query heads and 8 key/value heads of 64)
// twice, each in a forked process so each peak RSS is its own: the whole prompt at
// once (prefill chunk 0, as before session 38), then in chunks of
// LlamaForCausalLmImpl::kPrefillChunk. Printed: peak RSS above the loaded model,
// seconds, and the ratios; the last-position logits of the two must agree (1e-3).
//
// --sliding-cache N: the KV cache bytes of one session of Gemma 3 1B's shape with its
// sliding layers as rings of their window (KvCache::Allocate) and with a slot per
// position (before session 43), at 2k/8k/32k positions; then one session of N
// positions on six layers in Gemma 3's pattern (prefill, 64 fused decode steps) per
// layout, each in a forked process: cache MiB, peak RSS, prefill seconds, decode
// tokens/s, the ratios; the last logits of the two must agree (1e-3).
//
// --weight-dtypes saves one random bf16 checkpoint and loads it held as float32 (as
// fedge did before weight_dtype) and as bfloat16, 1 and 3 instances per process (3:
// the agent's trainer and two serving instances), one forked process per run:
// parameter bytes, peak RSS, decode and prefill tokens/s and a LoRA step's seconds,
// with ratios against float32 measured in the same invocation; and both ways of
// loading (read: each file read whole and copied, FEDGE_MMAP=0; map: mapped, the
// tensors in their stored dtype aliasing the mapping): the peak RSS at load, the
// anonymous RSS and the PSS at the end.
//
// --perplexity scores held-out WordNet lines (the 1% fedge-pretrain --seed S never
// trained on: same reader, same shuffle) token by token through the decode step of
// each kernel, and prints each kernel's perplexity and its difference to f32's.
#include <ATen/CPUGeneratorImpl.h>

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#include <CLI/CLI.hpp>
#include <array>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <map>
#include <random>
#include <set>
#include <vector>

#include "fedge/agent/llm/bpe_tokenizer.h"
#include "fedge/agent/llm/pretrain.h"
#include "fedge/version.h"
#include "llama/llama.h"
#include "llama/llama_decode.h"

namespace {

using Clock = std::chrono::steady_clock;
using fedge::agent::llm::KvCache;
using fedge::agent::llm::LlamaConfig;
using fedge::agent::llm::LlamaForCausalLm;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

double ProcessCpuSeconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

struct DecodeRate {
  double wall = 0;  // tokens per second
  double cpu = 0;   // tokens per CPU-second of this process
};

// Best of `reps` memcpy passes over `bytes`, in bytes copied per second.
double CopyBandwidth(size_t bytes, int reps) {
  std::vector<char> src(bytes, 1), dst(bytes, 0);
  double best = 0;
  for (int r = 0; r < reps; ++r) {
    auto t0 = Clock::now();
    std::memcpy(dst.data(), src.data(), bytes);
    auto t1 = Clock::now();
    best = std::max(best, static_cast<double>(bytes) / Seconds(t0, t1));
    src[static_cast<size_t>(r) % bytes] =
        dst[(static_cast<size_t>(r) * 7919) % bytes];  // keep the copies live
  }
  return best;
}

// Greedy decode of `tokens` tokens after an 8-token prefill.
DecodeRate DecodeTokensPerSecond(LlamaForCausalLm& model, int tokens) {
  torch::InferenceMode guard;
  const LlamaConfig& c = model->config();
  KvCache cache = KvCache::Allocate(c, 1, std::min<int64_t>(8 + tokens, c.max_position_embeddings));
  torch::Tensor prompt = torch::arange(1, 9, torch::kLong).view({1, 8}) % c.vocab_size;
  torch::Tensor logits = model->forward(prompt, &cache, /*last_only=*/true);
  int n = 0;
  auto t0 = Clock::now();
  const double cpu0 = ProcessCpuSeconds();
  while (n < tokens && cache.length < cache.capacity) {
    torch::Tensor next = logits.reshape({-1}).argmax().view({1, 1});
    logits = model->forward(next, &cache, /*last_only=*/true);
    ++n;
  }
  return {n / Seconds(t0, Clock::now()), n / (ProcessCpuSeconds() - cpu0)};
}

struct PrefillDecode {
  double prefill = 0;  // prompt tokens per second
  double decode = 0;   // generated tokens per second
};

// llama-bench's pp + tg@depth: a `prompt`-token prefill from an empty cache, then
// `tokens` decode steps on top of it, each fed a pseudo-random id (no sampling).
PrefillDecode TimePrefillDecode(LlamaForCausalLm& model, int prompt, int tokens, uint64_t seed) {
  torch::InferenceMode guard;
  const LlamaConfig& c = model->config();
  KvCache cache = KvCache::Allocate(c, 1, prompt + tokens);
  torch::Tensor ids = torch::randint(0, c.vocab_size, {1, prompt + tokens},
                                     at::detail::createCPUGenerator(seed), torch::kLong);
  auto t0 = Clock::now();
  torch::Tensor logits = model->forward(ids.narrow(1, 0, prompt), &cache, /*last_only=*/true);
  auto t1 = Clock::now();
  for (int i = 0; i < tokens; ++i) logits = model->forward(ids.narrow(1, prompt + i, 1), &cache, true);
  auto t2 = Clock::now();
  return {prompt / Seconds(t0, t1), tokens / Seconds(t1, t2)};
}

fedge::StatusOr<fedge::agent::llm::DecodeKernel> ParseKernel(const std::string& name) {
  for (auto k : {fedge::agent::llm::DecodeKernel::kTorch, fedge::agent::llm::DecodeKernel::kF32,
                 fedge::agent::llm::DecodeKernel::kInt8}) {
    if (fedge::agent::llm::DecodeKernelName(k) == name) return k;
  }
  return fedge::InvalidArgumentError("unknown kernel '" + name + "' (torch, f32, int8)");
}

// Switches `model`'s decode kernel to `name` (ParseKernel's names); false, with
// the reason on stderr, for an unknown name.
bool UseKernel(LlamaForCausalLm& model, const std::string& name) {
  auto kernel = ParseKernel(name);
  if (!kernel.ok()) {
    std::cerr << kernel.status().ToString() << "\n";
    return false;
  }
  model->set_decode_kernel(*kernel);
  return true;
}

int Compare(const std::string& dir, int prompt, int tokens, int threads,
            const std::vector<std::string>& kernels, int runs) {
  auto model = fedge::agent::llm::LoadLlama(dir);
  if (!model.ok()) {
    std::cerr << "loading " << dir << ": " << model.status().ToString() << "\n";
    return 1;
  }
  torch::set_num_threads(threads);
  std::cerr << "fedge: " << dir << ", " << threads << " thread(s), kernels isa "
            << fedge::agent::llm::decode::KernelIsa() << "\n";
  for (int run = 0; run < runs; ++run) {
    for (const std::string& name : kernels) {
      if (!UseKernel(*model, name)) return 2;
      TimePrefillDecode(*model, 16, 4, 1);  // warm-up (llama-bench runs one too); builds int8 copies
      PrefillDecode r = TimePrefillDecode(*model, prompt, tokens, 1000 + static_cast<uint64_t>(run));
      std::cout << "fedge," << name << "," << threads << "," << r.prefill << "," << r.decode << std::endl;
    }
  }
  return 0;
}

// exp(mean next-token NLL) over `lines`, each scored as <eos> line <eos> with
// one decode step per token.
double Perplexity(LlamaForCausalLm& model, const fedge::agent::llm::BpeTokenizer& tok, int32_t eos,
                  const std::vector<std::string>& lines, int64_t* tokens) {
  torch::InferenceMode guard;
  double nll = 0;
  int64_t n = 0;
  for (const std::string& line : lines) {
    std::vector<int64_t> ids = {eos};
    for (int32_t id : tok.Encode(line)) ids.push_back(id);
    ids.push_back(eos);
    const auto len =
        std::min<int64_t>(static_cast<int64_t>(ids.size()), model->config().max_position_embeddings);
    KvCache cache = KvCache::Allocate(model->config(), 1, len);
    for (int64_t t = 0; t + 1 < len; ++t) {
      torch::Tensor logits =
          model->forward(torch::full({1, 1}, ids[static_cast<size_t>(t)], torch::kLong), &cache,
                         /*last_only=*/true);
      torch::Tensor logp = torch::log_softmax(logits.view({-1}).to(torch::kDouble), 0);
      nll -= logp[ids[static_cast<size_t>(t + 1)]].item<double>();
      ++n;
    }
  }
  *tokens = n;
  return std::exp(nll / static_cast<double>(n));
}

int PerplexityReport(const std::string& dir, uint64_t seed, int max_lines,
                     const std::vector<std::string>& kernels) {
  auto model = fedge::agent::llm::LoadLlama(dir);
  auto tok = fedge::agent::llm::BpeTokenizer::Load(dir + "/tokenizer.json");
  auto lines = fedge::agent::llm::ReadWordNetGlosses("/usr/share/wordnet");
  if (!model.ok() || !tok.ok() || !lines.ok()) {
    std::cerr << "perplexity: "
              << (!model.ok() ? model.status()
                  : !tok.ok() ? tok.status()
                              : lines.status())
                     .ToString()
              << "\n";
    return 1;
  }
  auto eos = tok->TokenToId("<|endoftext|>");
  if (!eos) {
    std::cerr << "perplexity: tokenizer has no <|endoftext|>\n";
    return 1;
  }
  // fedge-pretrain's split: shuffle with mt19937_64(seed), the last 1% is held out.
  std::mt19937_64 rng(seed);
  std::shuffle(lines->begin(), lines->end(), rng);
  const size_t heldout_n = std::max<size_t>(1, lines->size() / 100);
  std::vector<std::string> heldout(lines->end() - static_cast<std::ptrdiff_t>(heldout_n), lines->end());
  if (max_lines > 0 && heldout.size() > static_cast<size_t>(max_lines))
    heldout.resize(static_cast<size_t>(max_lines));
  std::cout << std::setprecision(4);
  double base = 0;
  for (const std::string& name : kernels) {
    if (!UseKernel(*model, name)) return 2;
    int64_t n = 0;
    const double ppl = Perplexity(*model, *tok, *eos, heldout, &n);
    if (base == 0) base = ppl;
    std::cout << "perplexity " << name << ": " << ppl << " over " << n << " tokens of " << heldout.size()
              << " held-out lines; vs " << kernels[0] << ": " << 100.0 * (ppl / base - 1.0) << "%\n";
  }
  return 0;
}

void Report(const std::string& name, LlamaForCausalLm& model, double bandwidth, int tokens) {
  int64_t params = model->config().NumParameters();
  double bytes = 4.0 * static_cast<double>(params);
  double bound = bandwidth / bytes;
  std::cout << "\n"
            << name << ": " << params / 1e6 << " M params, " << bytes / (1 << 20) << " MiB fp32"
            << (bytes < 32.0 * (1 << 20) ? "  (fits in L3: decode reads weights from cache, not DRAM)" : "")
            << "\n";
  std::cout << "  bandwidth bound: " << bound << " tokens/s\n";
  double best = 0;
  int best_threads = 1;
  for (int threads : {1, 2}) {
    torch::set_num_threads(threads);
    DecodeTokensPerSecond(model, 8);  // warm-up: allocator, OpenBLAS threads
    DecodeRate r = DecodeTokensPerSecond(model, tokens);
    double tps = r.wall;
    std::cout << "  threads=" << threads << ": " << tps << " tokens/s = " << 100.0 * tps / bound
              << "% of bound;  " << r.cpu << " tokens/CPU-s = " << 100.0 * r.cpu / bound << "% of bound\n";
    if (tps > best) best = tps, best_threads = threads;
  }
  std::cout << "  faster: threads=" << best_threads << "\n";
}

}  // namespace

// One prefill in this process: peak RSS growth (MiB), seconds and the last logits.
struct PrefillRun {
  double rss_mib = 0, seconds = 0;
  float logits[8] = {};
};

double MaxRssMib() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_maxrss) / 1024.0;
}

// The kB figure of the line starting with `key` in a /proc file (0 if absent).
double ProcKib(const char* path, const std::string& key) {
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key, 0) == 0) return std::strtod(line.c_str() + key.size(), nullptr);
  }
  return 0;
}

PrefillRun PrefillOnce(int64_t tokens, int64_t chunk) {
  LlamaConfig c;
  c.vocab_size = 1000;
  c.hidden_size = 2048;
  c.intermediate_size = 2048;
  c.num_hidden_layers = 1;
  c.num_attention_heads = 32;
  c.num_key_value_heads = 8;
  c.head_dim = 64;
  c.max_position_embeddings = tokens;
  c.tie_word_embeddings = true;
  torch::manual_seed(5);
  LlamaForCausalLm model(c);
  {
    torch::NoGradGuard g;
    for (auto& p : model->parameters()) p.normal_(0, 0.02);
  }
  model->eval();
  model->set_prefill_chunk(chunk);
  torch::InferenceMode mode;
  torch::Tensor ids = torch::randint(c.vocab_size, {1, tokens}, torch::kLong);
  KvCache cache = KvCache::Allocate(c, 1, tokens);
  const double before = MaxRssMib();
  auto t0 = Clock::now();
  torch::Tensor logits = model->forward(ids, &cache, /*last_only=*/true).reshape({-1});
  PrefillRun r;
  r.seconds = Seconds(t0, Clock::now());
  r.rss_mib = MaxRssMib() - before;
  for (int i = 0; i < 8; ++i) r.logits[i] = logits[i].item<float>();
  return r;
}

// Runs `fn` in a forked child and reads the trivially copyable result it returns
// through a pipe (a peak RSS of its own).
template <typename Run, typename Fn>
bool RunInChild(Fn fn, Run* out) {
  int fds[2];
  if (pipe(fds) != 0) return false;
  pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    Run r = fn();
    bool ok = write(fds[1], &r, sizeof r) == static_cast<ssize_t>(sizeof r);
    _exit(ok ? 0 : 1);
  }
  close(fds[1]);
  bool ok = read(fds[0], out, sizeof *out) == static_cast<ssize_t>(sizeof *out);
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  return ok && WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

bool PrefillInChild(int64_t tokens, int64_t chunk, PrefillRun* out) {
  return RunInChild([&] { return PrefillOnce(tokens, chunk); }, out);
}

int PrefillMemoryReport(int64_t tokens) {
  const int64_t chunk = fedge::agent::llm::LlamaForCausalLmImpl::kPrefillChunk;
  std::cout << "prefill of " << tokens << " tokens, one layer with Llama 3.2 1B's attention (32 x 64 query, "
            << "8 x 64 key/value heads), each in its own process\n";
  PrefillRun whole, chunked;
  if (!PrefillInChild(tokens, 0, &whole) || !PrefillInChild(tokens, chunk, &chunked)) {
    std::cerr << "a prefill child failed\n";
    return 1;
  }
  std::cout << std::fixed << std::setprecision(2) << "  at once:          peak RSS +" << whole.rss_mib
            << " MiB, " << whole.seconds << " s\n";
  std::cout << "  chunks of " << chunk << ":  peak RSS +" << chunked.rss_mib << " MiB, " << chunked.seconds
            << " s\n";
  std::cout << "  chunked / at once: memory " << chunked.rss_mib / whole.rss_mib << "x, time "
            << chunked.seconds / whole.seconds << "x\n";
  for (int i = 0; i < 8; ++i) {
    if (std::abs(whole.logits[i] - chunked.logits[i]) > 1e-3f) {
      std::cerr << "last-position logit " << i << " differs: " << whole.logits[i] << " vs "
                << chunked.logits[i] << "\n";
      return 1;
    }
  }
  std::cout << "  last-position logits agree within 1e-3\n";
  return 0;
}

// --- --sliding-cache: a sliding layer's ring against a slot per position ------------

// Gemma 3 1B's attention (4 x 256 query heads, 1 x 256 key/value head, window 512,
// five sliding layers in six) on `layers` layers, with a narrow MLP (the cache is
// what is measured).
LlamaConfig Gemma3AttentionConfig(int64_t layers, int64_t positions) {
  LlamaConfig c;
  c.vocab_size = 1000;
  c.hidden_size = 1152;
  c.intermediate_size = 256;
  c.num_hidden_layers = layers;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 1;
  c.head_dim = 256;
  c.max_position_embeddings = positions;
  c.tie_word_embeddings = true;
  c.sliding_window = 512;
  c.sliding_layers.assign(static_cast<size_t>(layers), false);
  for (int64_t l = 0; l < layers; ++l) c.sliding_layers[static_cast<size_t>(l)] = (l + 1) % 6 != 0;
  return c;
}

// The layout before session 43: every layer a slot per position (the window only
// masked), which the attention still computes with when nothing wraps.
KvCache SlotPerPosition(const LlamaConfig& c, int64_t capacity) {
  KvCache cache;
  cache.capacity = capacity;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    cache.keys.push_back(torch::zeros({1, c.num_key_value_heads, capacity, c.head_dim}));
    cache.values.push_back(torch::zeros({1, c.num_key_value_heads, capacity, c.head_dim}));
  }
  return cache;
}

struct SlidingRun {
  double cache_mib = 0, rss_mib = 0, prefill_s = 0, decode_tps = 0;
  float logits[8] = {};
};

// One session of `positions` positions (all but 64 prefilled, 64 decoded by the
// fused fp32 step) with the ring (KvCache::Allocate) or a slot per position.
SlidingRun SlidingOnce(int64_t layers, int64_t positions, bool ring) {
  LlamaConfig c = Gemma3AttentionConfig(layers, positions);
  torch::manual_seed(7);
  LlamaForCausalLm model(c);
  {
    torch::NoGradGuard g;
    for (auto& p : model->parameters()) p.normal_(0, 0.02);
  }
  model->eval();
  torch::InferenceMode mode;
  const int64_t decode = 64, prompt = positions - decode;
  torch::Tensor ids = torch::randint(c.vocab_size, {1, positions}, torch::kLong);
  const double before = MaxRssMib();
  KvCache cache = ring ? KvCache::Allocate(c, 1, positions) : SlotPerPosition(c, positions);
  SlidingRun r;
  r.cache_mib = static_cast<double>(cache.bytes()) / (1 << 20);
  auto t0 = Clock::now();
  torch::Tensor logits = model->forward(ids.narrow(1, 0, prompt), &cache, /*last_only=*/true);
  auto t1 = Clock::now();
  for (int64_t t = prompt; t < positions; ++t) logits = model->forward(ids.narrow(1, t, 1), &cache, true);
  auto t2 = Clock::now();
  r.prefill_s = Seconds(t0, t1);
  r.decode_tps = static_cast<double>(decode) / Seconds(t1, t2);
  r.rss_mib = MaxRssMib() - before;
  logits = logits.reshape({-1});
  for (int i = 0; i < 8; ++i) r.logits[i] = logits[i].item<float>();
  return r;
}

bool SlidingInChild(int64_t layers, int64_t positions, bool ring, SlidingRun* out) {
  return RunInChild([&] { return SlidingOnce(layers, positions, ring); }, out);
}

int SlidingCacheReport(int64_t positions) {
  std::cout << std::fixed << std::setprecision(1);
  std::cout << "KV cache of one session, Gemma 3 1B's 26 layers (22 sliding of 512, 4 full; 1 x 256 "
               "key/value head, fp32), allocated:\n";
  for (int64_t n : {int64_t{2048}, int64_t{8192}, int64_t{32768}}) {
    const LlamaConfig c = Gemma3AttentionConfig(26, n);
    const double ring = static_cast<double>(KvCache::Allocate(c, 1, n).bytes()) / (1 << 20);
    const double full = static_cast<double>(SlotPerPosition(c, n).bytes()) / (1 << 20);
    std::cout << "  " << n << " positions: slot per position " << full << " MiB, ring " << ring << " MiB ("
              << std::setprecision(3) << ring / full << "x)" << std::setprecision(1) << "\n";
  }
  const int64_t layers = 6;
  std::cout << "one session of " << positions << " positions (" << positions - 64
            << " prefilled in chunks of 256, 64 decoded), " << layers
            << " layers in Gemma 3's pattern, each layout in its own process:\n";
  SlidingRun full, ring;
  if (!SlidingInChild(layers, positions, false, &full) || !SlidingInChild(layers, positions, true, &ring)) {
    std::cerr << "a child failed\n";
    return 1;
  }
  for (const auto& [name, r] :
       {std::pair<const char*, SlidingRun&>{"slot per position", full}, {"ring", ring}}) {
    std::cout << "  " << name << ": cache " << r.cache_mib << " MiB, peak RSS +" << r.rss_mib
              << " MiB, prefill " << std::setprecision(2) << r.prefill_s << " s, decode " << r.decode_tps
              << " tokens/s\n"
              << std::setprecision(1);
  }
  std::cout << std::setprecision(3) << "  ring / slot per position: cache " << ring.cache_mib / full.cache_mib
            << "x, peak RSS " << ring.rss_mib / full.rss_mib << "x, prefill "
            << ring.prefill_s / full.prefill_s << "x, decode tokens/s " << ring.decode_tps / full.decode_tps
            << "x\n";
  for (int i = 0; i < 8; ++i) {
    if (std::abs(full.logits[i] - ring.logits[i]) > 1e-3f) {
      std::cerr << "last-position logit " << i << " differs: " << full.logits[i] << " vs " << ring.logits[i]
                << "\n";
      return 1;
    }
  }
  std::cout << "  last-position logits agree within 1e-3\n";
  return 0;
}

// --- --weight-dtypes: the same checkpoint held in float32 and in bfloat16 -----------
struct DtypeRun {
  double rss_mib = 0;        // peak RSS of the whole child
  double load_rss_mib = 0;   // peak RSS when every instance has loaded (the load's peak)
  double anon_mib = 0;       // RssAnon at the end: memory that is the process's alone
  double pss_mib = 0;        // Pss at the end: mapped file pages split among their mappers
  double load_seconds = 0;   // every instance loaded
  double decode_tps = 0;     // instance 0, batch-1 greedy decode
  double prefill_tps = 0;    // instance 0, a 128-token prompt
  double train_seconds = 0;  // instance 0, one LoRA step (forward + backward), median of 3
  int64_t weight_bytes = 0;  // parameter bytes of one instance (shared ones counted once)
};

// One child: `instances` loads of `dir` held as `dtype`, like an agent's trainer
// (instance 0: LoRA on every projection, timed steps) and serving instances (LoRA
// enabled and merged, as CausalLm does before generating: fp32 keeps a copy of each
// merged weight to unmerge exactly; 16-bit never merges).
DtypeRun DtypeOnce(const std::string& dir, const std::string& dtype, bool map, int instances, int tokens,
                   int threads) {
  using fedge::agent::llm::CausalLmLoss;
  DtypeRun r;
  setenv("FEDGE_MMAP", map ? "1" : "0", 1);
  torch::set_num_threads(threads);
  auto t0 = Clock::now();
  std::vector<LlamaForCausalLm> models;
  for (int i = 0; i < instances; ++i) {
    auto m = fedge::agent::llm::LoadLlama(dir, dtype);
    if (!m.ok()) {
      std::cerr << m.status().ToString() << "\n";
      _exit(2);
    }
    models.push_back(*m);
  }
  r.load_seconds = Seconds(t0, Clock::now());
  r.load_rss_mib = MaxRssMib();
  std::set<const void*> seen;
  for (const auto& p : models[0]->parameters()) {
    if (seen.insert(p.data_ptr()).second) r.weight_bytes += static_cast<int64_t>(p.nbytes());
  }
  const std::vector<std::string> all = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                        "gate_proj", "up_proj", "down_proj"};
  for (int i = 1; i < instances; ++i) {
    models[static_cast<size_t>(i)]->EnableLora(all, {.rank = 8, .alpha = 16}, 1);
    for (auto& [name, proj] : models[static_cast<size_t>(i)]->Projections()) proj->Merge();
    (void)DecodeTokensPerSecond(models[static_cast<size_t>(i)], 4);
  }
  LlamaForCausalLm& trainer = models[0];
  r.decode_tps = DecodeTokensPerSecond(trainer, tokens).wall;
  r.prefill_tps = TimePrefillDecode(trainer, 128, 1, 7).prefill;
  trainer->EnableLora(all, {.rank = 8, .alpha = 16}, 1);
  trainer->train();
  const LlamaConfig& c = trainer->config();
  torch::Tensor ids =
      torch::randint(0, c.vocab_size, {4, 64}, at::detail::createCPUGenerator(3), torch::kLong);
  std::vector<double> steps;
  for (int step = 0; step < 3; ++step) {
    auto s0 = Clock::now();
    CausalLmLoss(trainer->forward(ids), ids).backward();
    steps.push_back(Seconds(s0, Clock::now()));
  }
  std::sort(steps.begin(), steps.end());
  r.train_seconds = steps[1];
  r.rss_mib = MaxRssMib();
  r.anon_mib = ProcKib("/proc/self/status", "RssAnon:") / 1024.0;
  r.pss_mib = ProcKib("/proc/self/smaps_rollup", "Pss:") / 1024.0;
  return r;
}

bool DtypeInChild(const std::string& dir, const std::string& dtype, bool map, int instances, int tokens,
                  int threads, DtypeRun* out) {
  int fds[2];
  if (pipe(fds) != 0) return false;
  pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    DtypeRun r = DtypeOnce(dir, dtype, map, instances, tokens, threads);
    bool ok = write(fds[1], &r, sizeof r) == static_cast<ssize_t>(sizeof r);
    _exit(ok ? 0 : 1);
  }
  close(fds[1]);
  bool ok = read(fds[0], out, sizeof *out) == static_cast<ssize_t>(sizeof *out);
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  return ok && WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

int WeightDtypeReport(const LlamaConfig& c, int tokens, int threads, int runs, bool fp32_checkpoint) {
  using fedge::agent::llm::WeightDtype;
  const std::string dir = "/tmp/fedge-bench-dtype-" + std::to_string(getpid());
  // The checkpoint is made in a child too: a parent that ran torch's intra-op
  // threads would leave every later forked child hanging on them.
  const pid_t maker = fork();
  if (maker == 0) {
    torch::set_num_threads(1);
    torch::manual_seed(11);
    LlamaForCausalLm model(c);
    torch::NoGradGuard g;
    for (auto& p : model->parameters()) p.normal_(0, 0.02);
    for (auto& p : model->named_parameters()) {
      if (p.key().find("norm") != std::string::npos) p.value().fill_(1.0);
    }
    fedge::Status st = fedge::agent::llm::SaveLlama(
        model, dir, fp32_checkpoint ? WeightDtype::kFloat32 : WeightDtype::kBFloat16);
    if (!st.ok()) std::cerr << st.ToString() << "\n";
    _exit(st.ok() ? 0 : 1);
  }
  int made = 0;
  waitpid(maker, &made, 0);
  if (!WIFEXITED(made) || WEXITSTATUS(made) != 0) {
    std::cerr << "writing the checkpoint failed\n";
    return 1;
  }
  std::cout << "one " << (fp32_checkpoint ? "float32" : "bfloat16") << " checkpoint ("
            << c.NumParameters() / 1e6 << "M parameters: hidden " << c.hidden_size << ", "
            << c.num_hidden_layers << " layers, SwiGLU " << c.intermediate_size << ", vocab " << c.vocab_size
            << ", tied) held as float32 and as bfloat16; " << threads << " thread(s), " << runs
            << " run(s) each, interleaved, one process per run\n";
  std::cout << "instances: 1 = a serving process; 3 = the agent (trainer + published + spare serving "
               "instance, adapters merged as CausalLm serves)\n\n";
  const std::vector<std::string> dtypes = {"float32", "bfloat16"};
  // read: each shard read whole and every tensor copied (FEDGE_MMAP=0, before
  // session 41); map: shards mapped, tensors in their stored dtype aliasing the mapping.
  const std::vector<std::string> loads = {"read", "map"};
  std::map<std::tuple<std::string, std::string, int>, std::vector<DtypeRun>> results;
  for (int run = 0; run < runs; ++run) {
    for (int instances : {1, 3}) {
      for (const std::string& load : loads) {
        for (const std::string& dtype : dtypes) {
          DtypeRun r;
          if (!DtypeInChild(dir, dtype, load == "map", instances, tokens, threads, &r)) {
            std::cerr << "child " << dtype << " " << load << " x" << instances << " failed\n";
            return 1;
          }
          results[{dtype, load, instances}].push_back(r);
        }
      }
    }
  }
  std::filesystem::remove_all(dir);
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  std::cout << std::setw(9) << "dtype" << std::setw(6) << "load" << std::setw(10) << "instances"
            << std::setw(12) << "weights_MiB" << std::setw(14) << "load_peak_MiB" << std::setw(8) << "ratio"
            << std::setw(14) << "peak_rss_MiB" << std::setw(8) << "ratio" << std::setw(10) << "anon_MiB"
            << std::setw(8) << "ratio" << std::setw(9) << "pss_MiB" << std::setw(11) << "decode_tps"
            << std::setw(8) << "ratio" << std::setw(12) << "prefill_tps" << std::setw(8) << "ratio"
            << std::setw(13) << "train_step_s" << std::setw(8) << "ratio" << std::setw(8) << "load_s"
            << "\n";
  for (int instances : {1, 3}) {
    std::map<std::pair<std::string, std::string>, std::array<double, 10>> m;
    for (const std::string& load : loads) {
      for (const std::string& dtype : dtypes) {
        const auto& rs = results[{dtype, load, instances}];
        auto field = [&](auto get) {
          std::vector<double> v;
          for (const DtypeRun& r : rs) v.push_back(get(r));
          return median(v);
        };
        m[{dtype, load}] = {
            field([](const DtypeRun& r) { return static_cast<double>(r.weight_bytes) / 1048576.0; }),
            field([](const DtypeRun& r) { return r.load_rss_mib; }),
            field([](const DtypeRun& r) { return r.rss_mib; }),
            field([](const DtypeRun& r) { return r.anon_mib; }),
            field([](const DtypeRun& r) { return r.pss_mib; }),
            field([](const DtypeRun& r) { return r.decode_tps; }),
            field([](const DtypeRun& r) { return r.prefill_tps; }),
            field([](const DtypeRun& r) { return r.train_seconds; }),
            field([](const DtypeRun& r) { return r.load_seconds; }),
            0.0};
      }
    }
    const auto& base = m[{"float32", "read"}];
    for (const std::string& load : loads) {
      for (const std::string& dtype : dtypes) {
        const auto& v = m[{dtype, load}];
        auto ratio = [&](int i) {
          return base[static_cast<size_t>(i)] > 0 ? v[static_cast<size_t>(i)] / base[static_cast<size_t>(i)]
                                                  : 0.0;
        };
        std::cout << std::fixed << std::setw(9) << dtype << std::setw(6) << load << std::setw(10) << instances
                  << std::setprecision(1) << std::setw(12) << v[0] << std::setw(14) << v[1]
                  << std::setprecision(2) << std::setw(8) << ratio(1) << std::setprecision(1) << std::setw(14)
                  << v[2] << std::setprecision(2) << std::setw(8) << ratio(2) << std::setprecision(1)
                  << std::setw(10) << v[3] << std::setprecision(2) << std::setw(8) << ratio(3)
                  << std::setprecision(1) << std::setw(9) << v[4] << std::setw(11) << v[5]
                  << std::setprecision(2) << std::setw(8) << ratio(5) << std::setprecision(1) << std::setw(12)
                  << v[6] << std::setprecision(2) << std::setw(8) << ratio(6) << std::setprecision(3)
                  << std::setw(13) << v[7] << std::setprecision(2) << std::setw(8) << ratio(7) << std::setw(8)
                  << v[8] << "\n";
        std::cout.unsetf(std::ios::fixed);
      }
    }
  }
  std::cout << "(ratio: against float32 read whole with the same instances, medians of the runs; "
               "weights_MiB: one instance's parameters, shared storage once; load_peak: peak RSS once "
               "every instance has loaded; anon: RssAnon at the end, the pages no other process or "
               "file can back; pss: proportional set size at the end)\n";
  return 0;
}

int main(int argc, char** argv) {
  CLI::App app{"decode_bench: batch-1 decode tokens/s vs the memory-bandwidth bound"};
  app.set_version_flag("--version", std::string("decode_bench ") + fedge::Version());
  std::string model_dir = ".fedge/models/fedge-wordnet-llama";
  int tokens = 128;
  int64_t hidden = 512, layers = 8, intermediate = 1408, vocab = 8192;
  app.add_option("--model", model_dir, "HF Llama directory (skipped if missing)")->capture_default_str();
  app.add_option("--tokens", tokens, "tokens to decode per measurement")->capture_default_str();
  app.add_option("--hidden", hidden, "random model: hidden size")->capture_default_str();
  app.add_option("--layers", layers, "random model: layers")->capture_default_str();
  app.add_option("--intermediate", intermediate, "random model: SwiGLU width")->capture_default_str();
  app.add_option("--vocab", vocab, "random model: vocabulary")->capture_default_str();
  bool compare = false, perplexity = false;
  uint64_t split_seed = 3;
  int max_lines = 0;
  app.add_flag("--perplexity", perplexity,
               "held-out WordNet perplexity of --model per kernel (first = baseline)");
  app.add_option("--split-seed", split_seed, "--perplexity: fedge-pretrain's --seed (its held-out split)")
      ->capture_default_str();
  app.add_option("--max-lines", max_lines, "--perplexity: score at most this many held-out lines (0: all)")
      ->capture_default_str();
  int prompt_tokens = 128, threads = 1, runs = 1;
  std::vector<std::string> kernels = {"f32", "int8"};
  app.add_flag("--compare", compare,
               "time prefill + decode of --model per kernel; CSV rows (see top of file)");
  app.add_option("--prompt-tokens", prompt_tokens, "--compare: prefill length")->capture_default_str();
  app.add_option("--threads", threads, "--compare: torch intra-op threads")->capture_default_str();
  app.add_option("--kernels", kernels, "--compare: decode kernels (torch, f32, int8)")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--runs", runs, "--compare: measurements per kernel, interleaved")->capture_default_str();
  bool weight_dtypes = false;
  app.add_flag(
      "--weight-dtypes", weight_dtypes,
      "a random bf16 checkpoint of the --hidden/--layers/--intermediate/--vocab shape held as float32 "
      "and as bfloat16 (1 and 3 instances, one process per run): peak RSS, decode, prefill, LoRA step");
  std::string checkpoint_dtype = "bfloat16";
  app.add_option("--checkpoint-dtype", checkpoint_dtype, "--weight-dtypes: the checkpoint's dtype")
      ->check(CLI::IsMember({"bfloat16", "float32"}))
      ->capture_default_str();
  int64_t prefill_memory = 0;
  app.add_option("--prefill-memory", prefill_memory,
                 "prefill this many tokens at once and in chunks (one process each): peak RSS and time");
  int64_t sliding_cache = 0;
  app.add_option("--sliding-cache", sliding_cache,
                 "one session of this many positions on Gemma 3's attention, sliding layers as a ring "
                 "and as a slot per position (one process each): cache bytes, peak RSS, time");
  CLI11_PARSE(app, argc, argv);
  if (prefill_memory > 0) return PrefillMemoryReport(prefill_memory);
  if (sliding_cache > 0) return SlidingCacheReport(sliding_cache);
  if (weight_dtypes) {
    LlamaConfig c;
    c.vocab_size = vocab;
    c.hidden_size = hidden;
    c.intermediate_size = intermediate;
    c.num_hidden_layers = layers;
    c.num_attention_heads = hidden / 64;
    c.num_key_value_heads = std::max<int64_t>(1, hidden / 192);
    c.head_dim = 64;
    c.max_position_embeddings = 1024;
    c.tie_word_embeddings = true;
    std::cout << std::fixed << std::setprecision(1);
    return WeightDtypeReport(c, tokens, threads, runs, checkpoint_dtype == "float32");
  }
  std::cout << std::fixed << std::setprecision(1);
  if (perplexity) return PerplexityReport(model_dir, split_seed, max_lines, kernels);
  if (compare) return Compare(model_dir, prompt_tokens, tokens, threads, kernels, runs);

  const size_t copy_bytes = size_t{256} << 20;
  double bandwidth = CopyBandwidth(copy_bytes, 6);
  std::cout << "memcpy bandwidth (256 MiB buffers, best of 6): " << bandwidth / 1e9 << " GB/s\n";
  double load[3] = {0, 0, 0};
  if (getloadavg(load, 3) > 0) std::cout << "load average (1 min): " << load[0] << "\n";

  if (std::filesystem::exists(model_dir + "/config.json")) {
    auto model = fedge::agent::llm::LoadLlama(model_dir);
    if (!model.ok()) {
      std::cerr << "loading " << model_dir << ": " << model.status().ToString() << "\n";
      return 1;
    }
    Report(model_dir, *model, bandwidth, tokens);
  } else {
    std::cout << "\n(no model at " << model_dir << "; run fedge-pretrain --out " << model_dir << ")\n";
  }

  LlamaConfig c;
  c.vocab_size = vocab;
  c.hidden_size = hidden;
  c.intermediate_size = intermediate;
  c.num_hidden_layers = layers;
  c.num_attention_heads = hidden / 64;
  c.num_key_value_heads = std::max<int64_t>(1, hidden / 128);
  c.head_dim = 64;
  c.max_position_embeddings = 1024;
  c.tie_word_embeddings = true;
  LlamaForCausalLm random_model(c);
  {
    torch::NoGradGuard g;
    for (auto& p : random_model->parameters()) p.normal_(0, 0.02);
  }
  Report("random edge-sized Llama", random_model, bandwidth, tokens);
  return 0;
}
