// generate_batch_bench: aggregate generated tokens/s of concurrent generation
// clients, continuous batching vs exclusive turns, in the same run (issue 13
// item 2).
//
// Both modes go through the agent's real RequestScheduler and ServingModel over
// one LlmModel (a Llama with SmolLM2-135M's shape: --model-dir, e.g. the
// directory bench/decode/make_model.py writes, or random N(0, 0.02) weights
// written to a temporary directory; the tokenizer is SmolLM2's 1000-token
// subset from tests/golden, enough for random prompt ids):
//   exclusive:  RequestScheduler::RunExclusive + CausalLm::GenerateFromIds, the
//               serving path before continuous batching: one sequence at a time.
//   continuous: RequestScheduler::Generate, the decode loop: one batched decode
//               step for every active sequence (up to --max-decode-batch).
// For each client count (default 1, 4, 8) and round (--repeats), the two modes
// run interleaved: N client threads each send --requests requests of
// --prompt-tokens random ids and --new-tokens greedy tokens (EOS ignored).
// Printed per point: the median aggregate generated tokens/s of each mode and
// their ratio, and mean request latency. The machine may be shared: the load
// average is printed before and after.
//
// Exits 1 if a request failed or if a continuous-batching answer differed
// from the same prompt's answer in exclusive turns (greedy decoding over
// bit-identical logits must give the same tokens).
//
// Usage, from the repository root:
//   nice -n 10 build/bench/fedge_bench_generate_batch [--threads 1] [--clients 1,4,8]
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <map>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>
#include <vector>

#include "fedge/agent/llm/causal_lm.h"
#include "fedge/agent/runtime/llm_model.h"
#include "fedge/agent/runtime/scheduler.h"
#include "fedge/agent/runtime/serving_model.h"
#include "llama/llama.h"

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using fedge::Status;
using fedge::StatusOr;
using fedge::agent::GenerationJob;
using fedge::agent::GenerationStart;
using fedge::agent::RequestScheduler;
using fedge::agent::SchedulerOptions;
using fedge::agent::TrainableModel;
namespace llm = fedge::agent::llm;

std::string LoadAverage() {
  double l[3] = {0, 0, 0};
  if (getloadavg(l, 3) != 3) return "unknown";
  std::ostringstream out;
  out << std::fixed << std::setprecision(2) << l[0] << " " << l[1] << " " << l[2];
  return out.str();
}

// SmolLM2-135M's config.json, random weights as bench/decode/make_model.py draws
// them (N(0, 0.02), RMSNorm weights 1; not the same values).
Status WriteRandomModel(const std::string& dir) {
  llm::LlamaConfig c;
  c.vocab_size = 49152;
  c.hidden_size = 576;
  c.intermediate_size = 1536;
  c.num_hidden_layers = 30;
  c.num_attention_heads = 9;
  c.num_key_value_heads = 3;
  c.head_dim = 64;
  c.max_position_embeddings = 8192;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 100000;
  c.tie_word_embeddings = true;
  c.bos_token_id = 0;
  c.eos_token_ids = {0};
  torch::manual_seed(0);
  llm::LlamaForCausalLm model(c);
  {
    torch::NoGradGuard no_grad;
    for (auto& p : model->named_parameters()) {
      if (p.key().find("norm") != std::string::npos) {
        p.value().fill_(1.0);
      } else {
        p.value().normal_(0, 0.02);
      }
    }
  }
  return llm::SaveLlama(model, dir);
}

struct Answer {
  std::vector<int32_t> tokens;
};

struct Point {
  double tokens_per_second = 0;
  double mean_latency_s = 0;
};

std::vector<int32_t> Prompt(int client, int request, int length) {
  std::mt19937_64 rng(static_cast<uint64_t>(client) * 1000003u + static_cast<uint64_t>(request));
  std::vector<int32_t> ids(static_cast<size_t>(length));
  for (auto& id : ids) id = static_cast<int32_t>(rng() % 1000);  // the tokenizer's ids
  return ids;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"continuous batching vs exclusive turns: aggregate generated tokens/s"};
  std::string model_dir, tokenizer = "tests/golden/llm/tok_smollm2/tokenizer.json", weights = "f32";
  std::vector<int> clients = {1, 4, 8};
  int requests = 2, prompt_tokens = 32, new_tokens = 64, threads = 1, repeats = 1, max_decode_batch = 8;
  app.add_option(
      "--model-dir", model_dir,
      "config.json + model.safetensors of a Llama (default: random weights, SmolLM2-135M's shape)");
  app.add_option("--tokenizer", tokenizer, "a tokenizer.json whose ids are < the model's vocabulary");
  app.add_option("--weights", weights, "decode weights: f32 | int8");
  app.add_option("--clients", clients, "concurrent client counts")->delimiter(',');
  app.add_option("--requests", requests, "requests per client and point");
  app.add_option("--prompt-tokens", prompt_tokens, "prompt length (random ids)");
  app.add_option("--new-tokens", new_tokens, "generated tokens per request (EOS ignored)");
  app.add_option("--threads", threads, "torch intra-op threads");
  app.add_option("--repeats", repeats, "interleaved rounds per point (the median is printed)");
  app.add_option("--max-decode-batch", max_decode_batch, "sequences per decode step (continuous)");
  CLI11_PARSE(app, argc, argv);

  const fs::path dir = fs::temp_directory_path() / ("fedge-generate-batch-" + std::to_string(getpid()));
  fs::create_directories(dir);
  struct Cleanup {
    fs::path p;
    ~Cleanup() {
      std::error_code ec;
      fs::remove_all(p, ec);
    }
  } cleanup{dir};
  if (model_dir.empty()) {
    std::cerr << "writing a random SmolLM2-135M-shaped model to " << dir << "\n";
    Status st = WriteRandomModel(dir.string());
    if (!st.ok()) {
      std::cerr << st.ToString() << "\n";
      return 1;
    }
  } else {
    fs::create_symlink(fs::absolute(fs::path(model_dir) / "config.json"), dir / "config.json");
    fs::create_symlink(fs::absolute(fs::path(model_dir) / "model.safetensors"), dir / "model.safetensors");
  }
  std::error_code ec;
  fs::copy_file(tokenizer, dir / "tokenizer.json", ec);
  if (ec) {
    std::cerr << "cannot copy " << tokenizer << ": " << ec.message() << " (run from the repository root)\n";
    return 1;
  }
  setenv("FEDGE_DECODE_WEIGHTS", weights.c_str(), 1);
  fedge::agent::LlmModelOptions lo;
  lo.model_dir = dir.string();
  lo.num_threads = threads;
  lo.decode_weights = weights;
  auto loaded = fedge::agent::LlmModel::Load(lo);
  if (!loaded.ok()) {
    std::cerr << loaded.status().ToString() << "\n";
    return 1;
  }
  fedge::TensorBundle global = (*loaded)->ExportTrainable();
  fedge::agent::ServingModel serving(std::move(loaded).value(), "bench/generate");
  if (Status st = serving.Install(global, 1); !st.ok()) {
    std::cerr << st.ToString() << "\n";
    return 1;
  }
  SchedulerOptions so;
  so.max_decode_batch = max_decode_batch;
  so.max_queued_requests = 256;
  RequestScheduler scheduler(&serving, so);

  llm::GenerationOptions gen;
  gen.max_new_tokens = new_tokens;
  gen.sampling.temperature = 0;
  gen.stop_at_eos = false;

  std::mutex mu;
  bool failed = false;
  std::map<std::pair<int, int>, std::vector<int32_t>> reference;  // exclusive answers by (client, request)
  auto run = [&](bool continuous, int n) -> Point {
    std::vector<double> latency;
    int64_t generated = 0;
    const auto start = Clock::now();
    std::vector<std::thread> pool;
    for (int client = 0; client < n; ++client) {
      pool.emplace_back([&, client] {
        for (int r = 0; r < requests; ++r) {
          const std::vector<int32_t> ids = Prompt(client, r, prompt_tokens);
          const auto t0 = Clock::now();
          StatusOr<llm::GenerationResult> result = fedge::InternalError("not run");
          if (continuous) {
            GenerationJob job;
            job.start = [&](TrainableModel& model, int64_t, const llm::TextCallback& on_text,
                            const std::function<bool()>& cancelled) -> StatusOr<GenerationStart> {
              llm::CausalLm* lm = &model.AsGenerator()->lm();
              llm::GenerationOptions o = gen;
              o.cancelled = cancelled;
              GenerationStart s;
              FEDGE_ASSIGN_OR_RETURN(s.session, lm->StartGeneration(ids, o, on_text));
              s.step = [lm](const std::vector<llm::GenerationSession*>& ss) {
                return lm->StepGenerations(ss);
              };
              return s;
            };
            result = scheduler.Generate(job);
          } else {
            Status st = scheduler.RunExclusive([&](TrainableModel& model, int64_t) -> Status {
              result = model.AsGenerator()->lm().GenerateFromIds(ids, gen);
              return result.status();
            });
            if (!st.ok()) result = st;
          }
          const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
          std::lock_guard<std::mutex> lock(mu);
          if (!result.ok()) {
            std::cerr << (continuous ? "continuous" : "exclusive")
                      << " request failed: " << result.status().ToString() << "\n";
            failed = true;
            continue;
          }
          generated += static_cast<int64_t>(result->token_ids.size());
          latency.push_back(seconds);
          auto key = std::make_pair(client, r);
          auto it = reference.find(key);
          if (it == reference.end()) {
            reference[key] = result->token_ids;
          } else if (it->second != result->token_ids) {
            std::cerr << "client " << client << " request " << r
                      << ": continuous and exclusive answers differ\n";
            failed = true;
          }
        }
      });
    }
    for (auto& t : pool) t.join();
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    Point p;
    p.tokens_per_second = static_cast<double>(generated) / seconds;
    double total = 0;
    for (double l : latency) total += l;
    p.mean_latency_s = latency.empty() ? 0 : total / static_cast<double>(latency.size());
    return p;
  };

  std::cout << "generate_batch_bench: "
            << (model_dir.empty() ? "random SmolLM2-135M-shaped model" : model_dir) << ", weights " << weights
            << ", " << threads << " thread(s), prompt " << prompt_tokens << " tokens, " << new_tokens
            << " generated per request, " << requests << " request(s) per client, max decode batch "
            << max_decode_batch << ", " << repeats << " round(s)\n";
  std::cout << "load average before: " << LoadAverage() << "\n";
  // Warm-up: int8 copies, caches, first-touch of the weights.
  run(false, 1);
  reference.clear();
  std::cout << std::left << std::setw(8) << "clients" << std::setw(18) << "exclusive tok/s" << std::setw(19)
            << "continuous tok/s" << std::setw(8) << "ratio" << std::setw(22) << "mean latency excl s"
            << "mean latency cont s\n";
  for (int n : clients) {
    std::vector<Point> excl, cont;
    for (int round = 0; round < repeats; ++round) {
      excl.push_back(run(false, n));  // exclusive first: its answers are the reference
      cont.push_back(run(true, n));
    }
    auto median = [](std::vector<Point> v, double Point::*field) {
      std::sort(v.begin(), v.end(), [&](const Point& a, const Point& b) { return a.*field < b.*field; });
      return v[v.size() / 2].*field;
    };
    const double e = median(excl, &Point::tokens_per_second), c = median(cont, &Point::tokens_per_second);
    std::cout << std::left << std::fixed << std::setprecision(1) << std::setw(8) << n << std::setw(18) << e
              << std::setw(19) << c << std::setprecision(2) << std::setw(8) << (e > 0 ? c / e : 0)
              << std::setprecision(2) << std::setw(22) << median(excl, &Point::mean_latency_s)
              << median(cont, &Point::mean_latency_s) << "\n";
  }
  std::cout << "load average after: " << LoadAverage() << "\n";
  scheduler.Stop();
  if (failed) {
    std::cerr << "FAILED: see above\n";
    return 1;
  }
  return 0;
}
