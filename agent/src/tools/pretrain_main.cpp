// fedge-pretrain: trains fedge's small WordNet Llama and its BPE tokenizer and saves
// them as a Hugging Face directory (see fedge/agent/llm/pretrain.h).
#include <CLI/CLI.hpp>
#include <atomic>
#include <csignal>
#include <iostream>

#include "fedge/agent/llm/pretrain.h"
#include "fedge/log.h"
#include "fedge/version.h"

namespace {
std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop.store(true); }
}  // namespace

int main(int argc, char** argv) {
  using fedge::agent::llm::PretrainOptions;
  PretrainOptions o;
  CLI::App app{
      "fedge-pretrain: train a small Llama-architecture model and byte-level BPE tokenizer on "
      "WordNet glosses; writes a Hugging Face directory"};
  app.set_version_flag("--version",
                       std::string("fedge-pretrain ") + fedge::Version() + " (" + fedge::GitRev() + ")");
  app.add_option("--out", o.out_dir, "output directory (HF layout)")->required();
  app.add_option("--wordnet-dir", o.wordnet_dir, "WordNet data directory")->capture_default_str();
  app.add_option("--vocab-size", o.vocab_size, "BPE vocabulary size")->capture_default_str();
  app.add_option("--hidden", o.hidden_size, "hidden size")->capture_default_str();
  app.add_option("--layers", o.num_layers, "decoder layers")->capture_default_str();
  app.add_option("--heads", o.num_heads, "attention heads")->capture_default_str();
  app.add_option("--kv-heads", o.num_kv_heads, "key/value heads (GQA)")->capture_default_str();
  app.add_option("--intermediate", o.intermediate_size, "SwiGLU width")->capture_default_str();
  app.add_option("--seq-len", o.seq_len, "training window in tokens")->capture_default_str();
  app.add_option("--batch", o.batch_size, "sequences per step")->capture_default_str();
  app.add_option("--lr", o.learning_rate, "peak learning rate")->capture_default_str();
  app.add_option("--steps", o.max_steps, "schedule length in steps")->capture_default_str();
  app.add_option("--max-seconds", o.max_seconds, "wall-clock budget (0: none)")->capture_default_str();
  app.add_option("--max-lines", o.max_lines, "use only this many corpus lines (0: all)")
      ->capture_default_str();
  app.add_option("--seed", o.seed, "seed for data order, init and samples")->capture_default_str();
  app.add_option("--threads", o.num_threads, "torch intra-op threads")->capture_default_str();
  app.add_option("--sample", o.sample_lemmas, "lemmas to prompt after training")->capture_default_str();
  std::string log_level = "info";
  app.add_option("--log-level", log_level, "debug|info|warn|error")->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  fedge::log::Level level;
  if (!fedge::log::ParseLevel(log_level, &level)) {
    std::cerr << "--log-level: expected debug, info, warn or error\n";
    return 2;
  }
  fedge::log::Init("pretrain", level);
  std::signal(SIGTERM, OnSignal);
  std::signal(SIGINT, OnSignal);
  o.should_stop = [] { return g_stop.load(); };

  auto report = fedge::agent::llm::Pretrain(o, [](int step, double loss) {
    fedge::log::Info("pretrain step", {{"step", step}, {"loss", loss}});
  });
  if (!report.ok()) {
    fedge::log::Error("pretrain failed", {{"error", report.status().ToString()}});
    return 1;
  }
  fedge::log::Info("pretrain done", {{"out", o.out_dir},
                                     {"parameters", report->parameters},
                                     {"corpus_tokens", report->corpus_tokens},
                                     {"steps", report->steps},
                                     {"seconds", report->seconds},
                                     {"tokens_per_second", report->tokens_per_second},
                                     {"first_loss", report->first_loss},
                                     {"final_loss", report->final_loss},
                                     {"heldout_loss", report->heldout_loss},
                                     {"stopped_by_signal", g_stop.load()}});
  for (const auto& [prompt, text] : report->samples) std::cout << prompt << text << "\n";
  return 0;
}
