// fedge_bench_memory: peak resident memory (VmHWM) of the agent's model work
// with MiniLM, each phase in a fresh child process so peaks do not mix:
//   idle    libtorch initialised, no model            (the runtime's floor)
//   serve   one TextClassifier, Classify batches of 32 texts x 64 tokens
//           (what /v1/classify does)
//   train   one TextClassifier, LoRA Train steps at batch 32 x 64 tokens
//   agent   two TextClassifiers as the agent runtime keeps them: one trains
//           while the other serves (a second thread), as during a round
// Baselines from the same run: the idle process, and the model's weight bytes
// (model.safetensors), so "over idle / weights" says how many copies of the
// weights plus activations a phase holds.
//
// Usage: fedge_bench_memory [--model-dir DIR] [--steps N] [--threads N]
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <torch/torch.h>

#include "bench_cli.h"
#include "fedge/agent/text_classifier.h"
#include "fedge/version.h"

namespace {

using fedge::agent::ClassifierOptions;
using fedge::agent::Example;
using fedge::agent::TextClassifier;

constexpr int kBatch = 32;
constexpr int kSeqLen = 64;
constexpr int kLabels = 25;

// "VmHWM" / "VmRSS" from /proc/self/status, in KiB (-1 if absent).
long StatusKb(const char* key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  const std::string prefix = std::string(key) + ":";
  while (std::getline(in, line)) {
    if (line.rfind(prefix, 0) == 0) return std::strtol(line.c_str() + prefix.size(), nullptr, 10);
  }
  return -1;
}

// Texts of >= kSeqLen WordPiece tokens: consecutive WordNet noun glosses joined
// (real English, as the quickstart trains on), truncated by the model to 64.
std::vector<std::string> Texts(size_t n) {
  std::vector<std::string> glosses;
  std::ifstream in("/usr/share/wordnet/data.noun");
  std::string line;
  while (std::getline(in, line) && glosses.size() < 4 * n + 8) {
    if (line.empty() || line[0] == ' ') continue;  // license header
    const size_t bar = line.find("| ");
    if (bar != std::string::npos) glosses.push_back(line.substr(bar + 2));
  }
  if (glosses.empty())
    glosses.push_back(
        "a member of the genus Canis that has been domesticated by man since prehistoric times");
  std::vector<std::string> texts;
  size_t g = 0;
  while (texts.size() < n) {
    std::string t;
    while (std::count(t.begin(), t.end(), ' ') < 60) t += glosses[g++ % glosses.size()] + " ";
    texts.push_back(t);
  }
  return texts;
}

ClassifierOptions Options(const std::string& model_dir, int threads) {
  ClassifierOptions o;
  o.model_dir = model_dir;
  for (int i = 0; i < kLabels; ++i) o.labels.push_back("label" + std::to_string(i));
  o.lora_rank = 8;
  o.lora_alpha = 16;
  o.max_seq_len = kSeqLen;
  o.num_threads = threads;
  return o;
}

int Fail(const fedge::Status& st) {
  std::fprintf(stderr, "%s\n", st.ToString().c_str());
  return 1;
}

// Runs one phase in this (child) process and prints "vmhwm_kb vmrss_kb seconds".
int RunPhase(const std::string& phase, const std::string& model_dir, int steps, int threads) {
  torch::set_num_threads(threads);
  (void)torch::ones({2, 2}).sum().item<float>();  // initialise the runtime in every phase alike
  const auto start = std::chrono::steady_clock::now();
  if (phase != "idle") {
    const std::vector<std::string> texts = Texts(static_cast<size_t>(kBatch) * 4);
    std::vector<Example> data;
    std::mt19937 rng(7);
    for (const auto& t : texts) data.push_back({t, static_cast<int>(rng() % kLabels), ""});
    auto first = TextClassifier::Load(Options(model_dir, threads));
    if (!first.ok()) return Fail(first.status());
    std::unique_ptr<TextClassifier> second;
    if (phase == "agent") {
      auto s = TextClassifier::Load(Options(model_dir, threads));
      if (!s.ok()) return Fail(s.status());
      second = std::move(*s);
    }
    auto serve = [&](TextClassifier& server) -> fedge::Status {
      for (int i = 0; i < steps; ++i) {
        auto p = server.Classify(
            std::vector<std::string>(texts.begin() + (i % 4) * kBatch, texts.begin() + (i % 4 + 1) * kBatch));
        if (!p.ok()) return p.status();
      }
      return fedge::OkStatus();
    };
    fedge::Status served = fedge::OkStatus();
    // The agent serves from its second model while the first trains.
    std::thread server;
    if (phase == "agent") server = std::thread([&] { served = serve(*second); });
    if (phase == "train" || phase == "agent") {
      fedge::agent::TrainOptions to;
      to.steps = steps;
      to.batch_size = kBatch;
      auto r = (*first)->Train(data, to);
      if (server.joinable()) server.join();
      if (!r.ok()) return Fail(r.status());
    }
    if (phase == "serve") served = serve(**first);
    if (!served.ok()) return Fail(served);
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("%ld %ld %.3f\n", StatusKb("VmHWM"), StatusKb("VmRSS"), s);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_dir, phase;
  int steps = 5, threads = 1;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (fedge::bench::PrintedHelpOrVersion(
            arg, argv[0], "fedge_bench_memory",
            "[--model-dir DIR] [--steps N] [--threads N]\n"
            "Peak RSS (VmHWM) of serving and LoRA training with MiniLM, each phase in its own\n"
            "process, against the idle libtorch process and the model's weight bytes.\n"
            "DIR defaults to $FEDGE_MODEL_DIR or .fedge/models/all-MiniLM-L6-v2.\n")) {
      return 0;
    }
    if (arg == "--model-dir" && i + 1 < argc) {
      model_dir = argv[++i];
    } else if (arg == "--steps" && i + 1 < argc) {
      steps = fedge::bench::CountFlag(argv[++i]);
    } else if (arg == "--threads" && i + 1 < argc) {
      threads = fedge::bench::CountFlag(argv[++i]);
    } else if (arg == "--phase" && i + 1 < argc) {  // internal: run one phase
      phase = argv[++i];
    } else {
      return fedge::bench::UnknownArgument(arg);
    }
  }
  model_dir = fedge::bench::MiniLmDir(model_dir);
  if (!phase.empty()) return RunPhase(phase, model_dir, steps, threads);

  const std::string weights = model_dir + "/model.safetensors";
  if (!std::filesystem::exists(weights)) {
    std::fprintf(stderr, "%s not found (scripts/fetch-model.sh or --model-dir)\n", weights.c_str());
    return 1;
  }
  const double weight_mib = static_cast<double>(std::filesystem::file_size(weights)) / (1 << 20);
  const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  std::printf(
      "fedge_bench_memory: %s (weights %.1f MiB), LoRA r=8 query+value, %d labels, batch %dx%d, "
      "%d steps/batches per phase, %d thread(s)\n",
      model_dir.c_str(), weight_mib, kLabels, kBatch, kSeqLen, steps, threads);
  std::printf("%-6s %14s %14s %12s %14s %9s\n", "phase", "peak_rss_MiB", "final_rss_MiB", "over_idle",
              "over/weights", "seconds");
  double idle_mib = 0;
  for (const char* phase_name : {"idle", "serve", "train", "agent"}) {
    std::ostringstream cmd;
    cmd << "'" << self << "' --phase " << phase_name << " --model-dir '" << model_dir << "' --steps " << steps
        << " --threads " << threads << " 2>/dev/null";
    FILE* pipe = ::popen(cmd.str().c_str(), "r");
    long hwm = -1, rss = -1;
    double secs = 0;
    const int n = pipe ? std::fscanf(pipe, "%ld %ld %lf", &hwm, &rss, &secs) : 0;
    const int rc = pipe ? ::pclose(pipe) : -1;
    if (n != 3 || rc != 0) {
      std::fprintf(stderr, "phase %s failed (exit %d); rerun with --phase %s to see why\n", phase_name, rc,
                   phase_name);
      return 1;
    }
    const double peak = static_cast<double>(hwm) / 1024;
    if (std::string(phase_name) == "idle") idle_mib = peak;
    std::printf("%-6s %14.1f %14.1f %12.1f %14.2f %9.1f\n", phase_name, peak, static_cast<double>(rss) / 1024,
                peak - idle_mib, (peak - idle_mib) / weight_mib, secs);
  }
  return 0;
}
