// Secure aggregation cost (issue 12): masked bytes per parameter against fp32 and
// Flower's SecAgg+, and the CPU time of each protocol phase on the agent and on the
// aggregator, for the quickstart's trainable state (LoRA r=8 on query/value of
// all-MiniLM-L6-v2's 6 layers + the 25-label head: 83,353 values).
//
//   build/bench/fedge_bench_secagg [--agents N] [--values N] [--neighbours K] [--drop D] [--rounds R]
//
// Everything runs in one process on one thread (the protocol classes of
// secagg/include/fedge/secagg/protocol.h, no gRPC): CPU seconds are
// CLOCK_PROCESS_CPUTIME_ID around each phase. Flower's bytes are computed from its
// protocol (SecAggPlusWorkflow: values quantized to [0, 2^22) and masked in Z_2^32,
// 4 bytes per value), not measured.
#include <time.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "fedge/secagg/protocol.h"

using namespace fedge::secagg;

namespace {

double Cpu() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

int Arg(int argc, char** argv, const char* name, int def) {
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], name) == 0) return std::atoi(argv[i + 1]);
  }
  return def;
}

void Check(const fedge::Status& s, const char* what) {
  if (!s.ok()) {
    std::fprintf(stderr, "%s: %s\n", what, s.ToString().c_str());
    std::exit(1);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const int agents = Arg(argc, argv, "--agents", 8);
  const int64_t values = Arg(argc, argv, "--values", 83'353);
  const int neighbours = Arg(argc, argv, "--neighbours", 0);
  const int drop = Arg(argc, argv, "--drop", 2);  // agents that drop after sharing, before masking
  const int rounds = Arg(argc, argv, "--rounds", 3);

  double agent_keys = 0, agent_share = 0, agent_mask = 0, agent_unmask = 0;
  double server_collect = 0, server_unmask = 0;
  uint64_t masked_bytes = 0, share_bytes = 0, key_bytes = 0, inputs = 0;
  double max_err = 0;
  for (int r = 1; r <= rounds; ++r) {
    SecAggServerOptions so;
    so.job = "bench/secagg";
    so.round = r;
    for (int i = 0; i < agents; ++i) so.invited.push_back("agent-" + std::to_string(i));
    so.neighbours = neighbours;
    so.clip_norm = 1.0;
    so.values = values;
    so.rotation_seed = static_cast<uint64_t>(r);
    so.advertise_deadline_ms = 1000;
    so.phase_timeout_ms = 1000;
    SecAggServer server(so);
    std::vector<SecAggClient> clients;
    double t = Cpu();
    for (int i = 0; i < agents; ++i) {
      auto c = SecAggClient::Create();
      Check(c.status(), "keys");
      clients.push_back(std::move(*c));
    }
    agent_keys += Cpu() - t;
    for (int i = 0; i < agents; ++i) {
      key_bytes += 64;
      t = Cpu();
      Check(server.Advertise(so.invited[i], clients[i].enc_public_key(), clients[i].mask_public_key(), 0),
            "advertise");
      server_collect += Cpu() - t;
    }
    for (int i = 0; i < agents; ++i) {
      auto roster = server.RosterFor(so.invited[i]);
      t = Cpu();
      auto shares = clients[i].ShareKeys(**roster);
      agent_share += Cpu() - t;
      Check(shares.status(), "share");
      for (const auto& s : *shares) share_bytes += s.ciphertext.size() + 8;
      t = Cpu();
      Check(server.ShareKeys(so.invited[i], *shares, 0), "share keys");
      server_collect += Cpu() - t;
    }
    std::mt19937_64 rng(static_cast<uint64_t>(r));
    std::normal_distribution<double> g(0.0, 0.2 / std::sqrt(static_cast<double>(values)));
    std::vector<double> expected(static_cast<size_t>(values), 0.0);
    for (int i = 0; i < agents; ++i) {
      auto inbox = server.InboxFor(so.invited[i]);
      t = Cpu();
      Check(clients[i].ReceiveShares(**inbox), "inbox");
      agent_share += Cpu() - t;
      if (i < drop) continue;
      std::vector<double> x(static_cast<size_t>(values));
      for (double& v : x) v = g(rng);
      for (size_t j = 0; j < x.size(); ++j) expected[j] += x[j];
      t = Cpu();
      auto masked = clients[i].MaskInput(x, 1.0);
      agent_mask += Cpu() - t;
      Check(masked.status(), "mask");
      masked_bytes += masked->size();
      ++inputs;
      uint64_t received = 0;
      t = Cpu();
      Check(server.SubmitMasked(so.invited[i], 0, *masked, 0, &received), "masked");
      server_collect += Cpu() - t;
    }
    server.Tick(drop > 0 ? 1000 : 0);
    for (int i = drop; i < agents; ++i) {
      auto ask = server.UnmaskAskFor(so.invited[i]);
      Check(ask.status(), "ask");
      t = Cpu();
      auto reveal = clients[i].Unmask(**ask);
      agent_unmask += Cpu() - t;
      Check(reveal.status(), "unmask");
      t = Cpu();
      Check(server.Unmask(so.invited[i], *reveal, 1000), "unmask");
      server_unmask += Cpu() - t;  // the last answer reconstructs and decodes the sum
    }
    if (server.phase() != SecAggPhase::kDone) {
      std::fprintf(stderr, "round %d did not finish: %s\n", r, server.failure().c_str());
      return 1;
    }
    for (size_t j = 0; j < expected.size(); ++j) {
      max_err = std::max(max_err, std::fabs(server.weighted_sum()[j] - expected[j]));
    }
  }
  const double n = static_cast<double>(values);
  const double per_input = static_cast<double>(masked_bytes) / static_cast<double>(inputs);
  // Keys and encrypted shares (sent once per agent per round) plus the masked input.
  const double protocol_per_agent =
      static_cast<double>(key_bytes + share_bytes) / (static_cast<double>(agents) * rounds) + per_input;
  std::printf(
      "secure aggregation, %d agents (%d drop after sharing), %lld values, neighbours %s, %d rounds\n",
      agents, drop, static_cast<long long>(values),
      neighbours > 0 ? std::to_string(neighbours).c_str() : "all", rounds);
  std::printf("\nbytes per parameter (upload)\n");
  std::printf("  fedge masked input (Z_2^16 + 1 weight value): %.5f  (%.0f bytes per agent per round)\n",
              per_input / n, per_input);
  std::printf("  fedge whole protocol (keys, shares, masked):  %.4f\n", protocol_per_agent / n);
  std::printf("  fp32 update:                                  4.0000  (%.0f bytes)\n", 4 * n);
  std::printf("  Flower SecAgg+ masked input (Z_2^32, computed): 4.0000  (%.0f bytes)\n", 4 * n);
  std::printf("  ratio fedge masked / fp32: %.3f\n", per_input / (4 * n));
  std::printf("\nCPU seconds per round (all %d agents together / per agent; aggregator)\n", agents);
  auto row = [&](const char* name, double total, int count) {
    std::printf("  %-38s %8.4f  %8.4f\n", name, total / rounds, total / rounds / std::max(count, 1));
  };
  row("agent: key generation", agent_keys, agents);
  row("agent: share keys + open inbox", agent_share, agents);
  row("agent: clip, rotate, quantize, mask", agent_mask, agents - drop);
  row("agent: unmask answer", agent_unmask, agents - drop);
  std::printf("  %-38s %8.4f\n", "aggregator: collect keys/shares/inputs", server_collect / rounds);
  std::printf("  %-38s %8.4f\n", "aggregator: unmask + decode the sum", server_unmask / rounds);
  std::printf("\nmax |unmasked sum - true sum| over values: %.3g (clip norm 1, %lld values)\n", max_err,
              static_cast<long long>(values));
  return 0;
}
