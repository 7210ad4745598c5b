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
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <vector>

#include "fedge/version.h"
#include "llm_internal/llama.h"

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
  CLI11_PARSE(app, argc, argv);
  std::cout << std::fixed << std::setprecision(1);

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
