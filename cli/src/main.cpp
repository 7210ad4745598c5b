// `fedge`: the command-line entry point. Only flag parsing and wiring here; the
// commands live in fedge_cli (wordnet_data, runner).
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdlib>
#include <filesystem>
#include <iostream>

#include "fedge/cli/runner.h"
#include "fedge/cli/validate.h"
#include "fedge/cli/wordnet_data.h"
#include "fedge/version.h"

namespace {

std::string SelfExe(const char* argv0) {
  std::error_code ec;
  auto p = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) return p.string();
  return std::filesystem::absolute(argv0, ec).string();
}

int DataWordnet(const fedge::cli::WordnetOptions& options) {
  auto info = fedge::cli::BuildWordnetDataset(options);
  if (!info.ok()) {
    std::cerr << "error: " << info.status().message() << "\n";
    return info.status().code() == fedge::StatusCode::kInvalidArgument ? 2 : 1;
  }
  std::cout << fedge::cli::FormatWordnetSummary(*info, options);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "fedge: federated fine-tuning and local inference of language models on edge clusters.\n"
      "The same FederatedTrainingJob manifest runs on Kubernetes (fedge-operator) or on this machine\n"
      "(fedge run).",
      "fedge"};
  app.set_version_flag("--version", std::string("fedge ") + fedge::Version() + " (" + fedge::GitRev() + ")");
  app.require_subcommand(1);
  app.footer(
      "Quickstart:\n"
      "  scripts/fetch-model.sh\n"
      "  fedge data wordnet --agents 4 --alpha 0.5 --seed 7 --out .fedge/data/quickstart\n"
      "  fedge run -f deploy/examples/quickstart.yaml");

  // ---- fedge data ----
  CLI::App* data = app.add_subcommand("data", "Prepare datasets for fedge jobs");
  data->require_subcommand(1);
  fedge::cli::WordnetOptions wn;
  CLI::App* wordnet = data->add_subcommand(
      "wordnet",
      "Build the WordNet noun-supersense classification set (text \"lemma: definition\" -> one of 25\n"
      "noun.* labels) from Debian's wordnet-base, split off a test set and partition the training set\n"
      "non-IID over N agents with a Dirichlet(alpha) prior per class. Same arguments, same bytes.\n"
      "Writes OUT/agent-<i>/{train,test}.jsonl, OUT/all/{train,test}.jsonl, OUT/test.jsonl,\n"
      "OUT/labels.json and OUT/meta.json (sizes, histograms, majority baseline, chance).");
  wordnet->add_option("--agents", wn.agents, "number of agent shards")
      ->required()
      ->check(CLI::Range(1, 4096));
  wordnet
      ->add_option("--alpha", wn.alpha,
                   "Dirichlet concentration: small = skewed labels per agent, large = IID")
      ->required()
      ->check(CLI::PositiveNumber);
  wordnet->add_option("--seed", wn.seed, "seed of the split and the partition")->required();
  wordnet->add_option("--out", wn.out_dir, "output directory (created)")->required();
  wordnet->add_option("--wordnet-dir", wn.wordnet_dir, "directory with data.noun")->capture_default_str();
  wordnet->add_option("--test-size", wn.test_size, "held-out test examples")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  wordnet
      ->add_option(
          "--task", wn.task,
          "classification: {\"text\",\"label\"} lines; gloss: {\"prompt\": \"lemma:\", "
          "\"completion\": \" definition\"} lines for causal-LM jobs (deploy/examples/generative.yaml)")
      ->capture_default_str()
      ->check(CLI::IsMember({"classification", "gloss"}));
  wordnet->add_option("--max-train", wn.max_train, "cap on training examples (0: all)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);

  // ---- fedge run ----
  fedge::cli::RunOptions run;
  CLI::App* run_cmd = app.add_subcommand(
      "run",
      "Run a FederatedTrainingJob on this machine: starts fedge-aggregator and N fedge-agent processes\n"
      "on 127.0.0.1, prints each round's loss, accuracy and traffic, and the final accuracy against the\n"
      "data's majority baseline and chance. gRPC between them is mutual TLS with a CA made for the run\n"
      "(certificates in WORK/pki) unless the manifest sets spec.privacy.tls: false (plaintext).");
  run_cmd->add_option("-f,--file", run.manifest, "FederatedTrainingJob manifest (YAML or JSON)")->required();
  run_cmd->add_option("--summary", run.summary_path, "write a JSON summary of the run here");
  run_cmd->add_flag("--centralized", run.centralized,
                    "baseline: one agent trains on the union of the shards (DATA/all) with localSteps x N");
  run_cmd->add_option("--data-dir", run.data_dir,
                      "data root with agent-<i>/ and all/ (default: spec.data.path)");
  run_cmd->add_option("--model-dir", run.model_dir,
                      "Hugging Face model directory (default: spec.model.path)");
  run_cmd->add_option("--bin-dir", run.bin_dir,
                      "directory with fedge-aggregator and fedge-agent (default: next to fedge, the build "
                      "tree, then PATH)");
  run_cmd->add_option(
      "--work-dir", run.work_dir,
      "checkpoints, agent state and logs (default: .fedge/runs/<job name>); a new run clears the "
      "state a previous run left there");
  run_cmd->add_option("--agents", run.agents, "number of agents (default: spec.agents.replicas or minAgents)")
      ->check(CLI::PositiveNumber);
  run_cmd->add_option("--rounds", run.rounds, "number of rounds (default: spec.rounds.total)")
      ->check(CLI::PositiveNumber);
  run_cmd->add_flag("--quiet", run.quiet, "print rounds and the result only, no live status");
  run_cmd->add_flag("--serve", run.serve,
                    "after the job succeeds, keep the agents serving inference with the final global\n"
                    "(and the aggregator's status) until Ctrl-C; exit 0 when stopped");
  run_cmd->add_flag(
      "--allow-agent-failures", run.allow_agent_failures,
      "an agent that dies while the job runs is reported (log tail, summary's failed_agents)\n"
      "and the job goes on without it, as in a cluster once its pod used up backoffLimit: the\n"
      "aggregator decides whether it can (quorum, round deadlines, secure aggregation's\n"
      "threshold; it waits for a dead agent until its round deadline and forgets it after\n"
      "timeoutSeconds + 60 s). Dead agents are not restarted; the run fails when none is left.\n"
      "Not with --serve. Default: any unexpected exit fails the run");
  run_cmd->add_option("--prometheus-targets", run.prometheus_targets_path,
                      "also write the Prometheus file_sd target list here (e.g. into the targets/ directory\n"
                      "of deploy/prometheus/prometheus.yml); emptied when the run ends");
  run_cmd->footer(
      "Relative paths in the manifest are resolved against the current directory; the children get a\n"
      "resolved copy in WORK/job.yaml. Logs: WORK/logs/<name>.log. Prometheus file_sd targets (job\n"
      "fedge-local, labels component, fedge_job, agent): WORK/prometheus/targets.json.\n"
      "Exit codes:\n"
      "  0    the job succeeded (with --serve: and serving was stopped by SIGINT/SIGTERM)\n"
      "  1    the job failed (a process exited unexpectedly, or the aggregator reported Failed),\n"
      "       or with --serve a process exited while serving\n"
      "  2    usage error, invalid manifest, or missing model/data/binaries (nothing was started)\n"
      "  130  interrupted (SIGINT/SIGTERM) before the job ended: every child was stopped");

  // ---- fedge validate ----
  std::string validate_file;
  CLI::App* validate_cmd = app.add_subcommand(
      "validate",
      "Check a FederatedTrainingJob manifest with the rules fedge run and the cluster apply (the CRD\n"
      "accepts the same manifests). Exit codes: 0 valid, 1 invalid (every problem on stderr), 2 the\n"
      "file cannot be read or usage error.");
  validate_cmd->add_option("-f,--file", validate_file, "manifest (YAML or JSON; - reads standard input)")
      ->required();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : fedge::cli::kExitUsage;
  }

  if (wordnet->parsed()) return DataWordnet(wn);
  if (validate_cmd->parsed())
    return fedge::cli::ValidateManifest(validate_file, std::cin, std::cout, std::cerr);
  if (run_cmd->parsed()) {
    run.self_exe = SelfExe(argv[0]);
    const char* path = std::getenv("PATH");
    run.path_env = path ? path : "";
    return fedge::cli::RunJob(run);
  }
  return fedge::cli::kExitUsage;
}
