// fedge_bench_train_step: how fast the agent fine-tunes and runs MiniLM on CPU.
//
// For 1 and 2 intra-op threads it measures, in one run:
//   - the machine's GEMM rate (1024x1024 float32 torch::mm), the baseline;
//   - forward-only time (InferenceMode) and a LoRA training step (forward,
//     backward, grad clipping, AdamW) at batch 16x32 and 32x64 tokens;
// and prints the training step's achieved GFLOP/s as a fraction of the GEMM rate.
//
// FLOP model: a forward pass costs 2 * (linear params) * tokens + attention
// 4 * B * T^2 * H per layer. With the base frozen, backward computes input
// gradients only (plus the tiny LoRA weight gradients), about one forward more,
// so a training step is counted as 2 x forward FLOPs.
//
// Usage: fedge_bench_train_step [--model-dir DIR] [--iters N]
#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "bench_cli.h"
#include "bert/bert.h"
#include "fedge/safetensors.h"
#include "fedge/version.h"

namespace {

using Clock = std::chrono::steady_clock;
using fedge::agent::BertModel;
using fedge::agent::BertOptions;

template <typename Fn>
double MedianSeconds(int iters, Fn&& fn) {
  fn();  // warm-up: allocator, OpenMP pool, BLAS buffers
  std::vector<double> t;
  for (int i = 0; i < iters; ++i) {
    auto start = Clock::now();
    fn();
    t.push_back(std::chrono::duration<double>(Clock::now() - start).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

double GemmGflops(int iters) {
  torch::Tensor a = torch::randn({1024, 1024});
  torch::Tensor b = torch::randn({1024, 1024});
  torch::Tensor c;
  double s = MedianSeconds(iters, [&] { c = torch::mm(a, b); });
  return 2.0 * 1024 * 1024 * 1024 / s / 1e9;
}

double ForwardFlops(const BertOptions& o, int64_t batch, int64_t seq) {
  const double h = static_cast<double>(o.hidden_size), inter = static_cast<double>(o.intermediate_size);
  const double linear_params = 4 * h * h + 2 * h * inter;
  const double tokens = static_cast<double>(batch * seq);
  return o.num_hidden_layers * (2 * linear_params * tokens + 4.0 * batch * seq * seq * h);
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_dir;
  int iters = 10;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (fedge::bench::PrintedHelpOrVersion(
            arg, argv[0], "fedge_bench_train_step",
            "[--model-dir DIR] [--iters N]\n"
            "LoRA training-step and forward time of MiniLM vs this machine's GEMM rate.\n"
            "DIR defaults to $FEDGE_MODEL_DIR or .fedge/models/all-MiniLM-L6-v2; without it\n"
            "the MiniLM shape is benchmarked with random weights (same cost).\n")) {
      return 0;
    }
    if (arg == "--model-dir" && i + 1 < argc) {
      model_dir = argv[++i];
    } else if (arg == "--iters" && i + 1 < argc) {
      iters = fedge::bench::CountFlag(argv[++i]);
    } else {
      return fedge::bench::UnknownArgument(arg);
    }
  }
  model_dir = fedge::bench::MiniLmDir(model_dir);

  BertOptions options;  // defaults are MiniLM-L6-H384's
  const bool have_model = std::filesystem::exists(model_dir + "/model.safetensors");
  if (have_model) {
    auto parsed = BertOptions::FromConfigFile(model_dir + "/config.json");
    if (!parsed.ok()) {
      std::fprintf(stderr, "%s\n", parsed.status().ToString().c_str());
      return 1;
    }
    options = *parsed;
  }
  BertModel bert(options);
  if (have_model) {
    auto file = fedge::SafetensorsFile::Read(model_dir + "/model.safetensors");
    fedge::Status st = file.ok() ? bert->LoadWeights(*file) : file.status();
    if (!st.ok()) {
      std::fprintf(stderr, "%s\n", st.ToString().c_str());
      return 1;
    }
  }
  torch::Generator gen = at::detail::createCPUGenerator(42);
  std::vector<torch::Tensor> params;
  for (const char* target : {"query", "value"}) {
    for (auto& [name, linear] : bert->FindLinears(target)) {
      linear->EnableLora({/*rank=*/8, /*alpha=*/16, /*dropout=*/0.0}, gen);
      params.push_back(linear->lora_A());
      params.push_back(linear->lora_B());
    }
  }
  const int64_t num_labels = 25;
  torch::Tensor head_w =
      (torch::randn({num_labels, options.hidden_size}, gen) * 0.02).set_requires_grad(true);
  torch::Tensor head_b = torch::zeros({num_labels}).set_requires_grad(true);
  params.push_back(head_w);
  params.push_back(head_b);
  torch::optim::AdamW optimizer(params, torch::optim::AdamWOptions(1e-3).weight_decay(0.01));

  std::printf(
      "fedge_bench_train_step: %s, L=%lld H=%lld, LoRA r=8 on query+value, %d timed iterations (median)\n",
      have_model ? model_dir.c_str() : "random weights (model not found)",
      static_cast<long long>(options.num_hidden_layers), static_cast<long long>(options.hidden_size), iters);
  std::printf("%-7s %-7s %10s %12s %10s %12s %12s %10s\n", "threads", "batch", "gemm_GF/s", "forward_ms",
              "fwd_GF/s", "train_ms", "train_GF/s", "train/gemm");
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{16, 32}, {32, 64}};
  for (int threads : {1, 2}) {
    torch::set_num_threads(threads);
    const double gemm = GemmGflops(std::max(iters, 5));
    for (auto [batch, seq] : shapes) {
      torch::Tensor ids = torch::randint(1000, options.vocab_size, {batch, seq}, gen, torch::kLong);
      torch::Tensor mask = torch::ones({batch, seq}, torch::kLong);
      torch::Tensor labels = torch::randint(0, num_labels, {batch}, gen, torch::kLong);
      const double fwd_s = MedianSeconds(iters, [&] {
        torch::InferenceMode guard;
        torch::Tensor h = bert(ids, mask);
        (void)fedge::agent::MeanPool(h, mask).sum().item<float>();
      });
      bert->train();
      const double train_s = MedianSeconds(iters, [&] {
        torch::Tensor logits = torch::linear(fedge::agent::MeanPool(bert(ids, mask), mask), head_w, head_b);
        torch::Tensor loss = torch::nn::functional::cross_entropy(logits, labels);
        optimizer.zero_grad();
        loss.backward();
        torch::nn::utils::clip_grad_norm_(params, 1.0);
        optimizer.step();
      });
      bert->eval();
      const double fwd_flops = ForwardFlops(options, batch, seq);
      const double train_gflops = 2 * fwd_flops / train_s / 1e9;
      char shape[32];
      std::snprintf(shape, sizeof(shape), "%lldx%lld", static_cast<long long>(batch),
                    static_cast<long long>(seq));
      std::printf("%-7d %-7s %10.1f %12.1f %10.1f %12.1f %12.1f %10.2f\n", threads, shape, gemm, fwd_s * 1e3,
                  fwd_flops / fwd_s / 1e9, train_s * 1e3, train_gflops, train_gflops / gemm);
    }
    if (gemm < 20) {
      std::printf("warning: %.1f GFLOP/s GEMM looks like reference BLAS; install libopenblas0-openmp\n",
                  gemm);
    }
  }
  return 0;
}
