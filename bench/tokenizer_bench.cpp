// BPE encoding speed, byte-level and SentencePiece-style (llama2: Prepend + Replace,
// llama2_metaspace: Metaspace; both treat a whole span between added tokens as one
// word, so ordinary text merges through the heap path) (the agent tokenizes every /v1/completions and
// /v1/chat/completions prompt, on the thread that holds the model):
//   1. ordinary text: WordNet glosses (Debian's wordnet-base) through each golden
//      tokenizer, MB/s;
//   2. hostile text: a single long "word" (a repeated syllable, a run of one letter,
//      of digits, of spaces, of newlines, of an added token's first byte, decomposed
//      accents) at n and 4n bytes. The ratio t(4n) / t(n) is the figure: about 4 for
//      O(n log n), 16 for quadratic. The inference API caps a prompt at 16 KiB
//      (--max-kib 16); training lines are not capped (the default, 4096).
//
//   fedge_bench_tokenizer [--golden-dir tests/golden/llm] [--max-kib 4096]   (from the repo root)
//   fedge_bench_tokenizer --real .fedge/tokenizers [--max-kib 16]
//
// --real DIR runs the same tables over the tokenizers real models ship
// (scripts/fetch-tokenizers.sh: Gemma 3 with 6,415 added tokens, Llama 3.1, Qwen3,
// Llama 2) instead of the small golden ones.
//
// --load PATH times loading a tokenizer.json as large as a real model's (Gemma 3's
// 262,144 pieces: bench/tokenizer/make_large_vocab.py writes one), in a forked child
// so its peak RSS is its own: seconds, peak RSS over an empty child's, and the glosses'
// encoding MB/s through it; then exits. --instances N loads it N times in the child
// (an agent's trainer, serving and spare instances each load the model directory).
//
// --json-mask DIR times JSON mode's per-token mask (JsonConstraint::Mask: every token
// of the vocabulary checked against the JSON automaton) on the real tokenizers, in
// several states of a reply, against the passes sampling makes over the same logits
// anyway (argmax for greedy; exp and sum for a temperature draw), in this process;
// and structured outputs' mask (a schema's automaton) in the same states.
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "fedge/agent/llm/bpe_tokenizer.h"
#include "fedge/agent/llm/json_grammar.h"
#include "fedge/agent/llm/json_schema.h"

namespace {

using fedge::agent::llm::BpeTokenizer;
namespace llm = fedge::agent::llm;

double Seconds(const std::function<void()>& fn) {
  auto t0 = std::chrono::steady_clock::now();
  fn();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::string WordNetGlosses(size_t max_bytes) {
  std::string out;
  for (const char* part : {"noun", "verb", "adj", "adv"}) {
    std::ifstream in(std::string("/usr/share/wordnet/data.") + part);
    std::string line;
    while (std::getline(in, line) && out.size() < max_bytes) {
      auto bar = line.find(" | ");
      if (line.rfind("  ", 0) == 0 || bar == std::string::npos) continue;
      out += line.substr(bar + 3);
      out += '\n';
    }
  }
  return out;
}

std::string Repeat(const std::string& unit, size_t bytes) {
  std::string s;
  s.reserve(bytes + unit.size());
  while (s.size() < bytes) s += unit;
  return s;
}

}  // namespace

// Peak RSS (MiB) of this process so far.
double PeakRssMib() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_maxrss) / 1024.0;
}

// Resident set now (VmRSS), MiB: what a loaded tokenizer keeps once the JSON
// document it was parsed from is freed.
double RssMib() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::strtod(line.c_str() + 6, nullptr) / 1024.0;
  }
  return 0;
}

// --load: one child loads `path` (or nothing, the baseline) and reports through a pipe.
struct LoadRun {
  double seconds = 0, load_peak_mib = 0, loaded_mib = 0, peak_mib = 0, encode_mbs = 0;
  size_t vocab = 0, ids = 0;
  bool ok = false;
};

LoadRun LoadInChild(const std::string& path, const std::string& glosses, int instances) {
  LoadRun r;
  int fds[2];
  if (pipe(fds) != 0) return r;
  const pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    LoadRun c;
    if (path.empty()) {
      c.ok = true;
      c.loaded_mib = RssMib();
    } else {
      fedge::StatusOr<BpeTokenizer> tok = fedge::InternalError("not loaded");
      std::vector<BpeTokenizer> more;  // the agent's other instances (trainer, serving, spare)
      c.seconds = Seconds([&] {
        tok = BpeTokenizer::Load(path);
        for (int k = 1; k < instances && tok.ok(); ++k) more.push_back(*BpeTokenizer::Load(path));
      });
      c.load_peak_mib = PeakRssMib();
      c.loaded_mib = RssMib();
      if (tok.ok()) {
        c.ok = true;
        c.vocab = static_cast<size_t>(tok->vocab_size());
        const double s = Seconds([&] { c.ids = tok->Encode(glosses).size(); });
        c.encode_mbs = static_cast<double>(glosses.size()) / s / 1e6;
      } else {
        std::fprintf(stderr, "%s\n", tok.status().ToString().c_str());
      }
    }
    c.peak_mib = PeakRssMib();
    const bool wrote = write(fds[1], &c, sizeof c) == static_cast<ssize_t>(sizeof c);
    _exit(wrote ? 0 : 1);
  }
  close(fds[1]);
  if (read(fds[0], &r, sizeof r) != static_cast<ssize_t>(sizeof r)) r.ok = false;
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  return r;
}

int LoadReport(const std::vector<std::string>& paths, int instances) {
  const std::string glosses = WordNetGlosses(4u << 20);
  const LoadRun empty = LoadInChild("", glosses, instances);
  std::printf("%-44s %8s %9s %14s %11s %14s %10s\n", "tokenizer.json", "pieces", "load_s", "load_peak_MiB",
              "loaded_MiB", "peak_rss_MiB", "MB/s");
  for (const std::string& path : paths) {
    const LoadRun r = LoadInChild(path, glosses, instances);
    if (!r.ok) return 1;
    std::printf("%-44s %8zu %9.3f %14.1f %11.1f %14.1f %10.1f\n", path.c_str(), r.vocab, r.seconds,
                r.load_peak_mib - empty.peak_mib, r.loaded_mib - empty.loaded_mib,
                r.peak_mib - empty.peak_mib, r.encode_mbs);
  }
  std::printf(
      "(load_peak / peak_rss: peak after loading / after encoding too; loaded: resident after loading, the "
      "JSON freed; all over a child that loads nothing, "
      "%.1f MiB; MB/s: %.1f MiB of WordNet glosses encoded at once)\n",
      empty.peak_mib, glosses.size() / 1048576.0);
  return 0;
}

// JSON mode's mask on each real tokenizer (--json-mask).
int JsonMaskReport(const std::string& dir) {
  struct State {
    const char* what;
    std::string text;  // the reply so far
  };
  const State states[] = {{"start", ""},
                          {"after '{'", "{"},
                          {"in a string", R"({"description": "a small dog with long)"},
                          {"after ':'", R"({"name": "rex", "age":)"},
                          {"in a number", R"({"weight": 12)"},
                          {"in an enum", R"({"sky": "cl)"},
                          {"closed", R"({"a": [1, 2]})"}};
  // Structured outputs: every state above is a prefix of what this schema accepts.
  auto schema = llm::CompileJsonSchema(R"({"type": "object", "properties": {"name": {"type": "string"},
      "description": {"type": "string", "maxLength": 200}, "age": {"type": "integer"}, "weight": {"type": "number"},
      "sky": {"enum": ["clear", "cloudy", "rain"]}, "a": {"type": "array", "items": {"type": "integer"}}},
      "additionalProperties": false})");
  if (!schema.ok()) {
    std::fprintf(stderr, "%s\n", schema.status().ToString().c_str());
    return 1;
  }
  std::printf("JSON mode and structured outputs: JsonConstraint::Mask per sampled token, mean of 30 calls\n");
  std::printf("%-10s %8s %-13s %9s %9s %9s %9s %9s %9s %7s %7s\n", "tokenizer", "vocab", "state", "allowed",
              "mask ms", "argmax ms", "softmax ms", "sch allow", "schema ms", "mask/sm", "sch/mask");
  for (const char* name : {"llama3_1", "qwen3", "gemma3", "llama2"}) {
    auto tok = BpeTokenizer::Load(dir + "/" + name + "/tokenizer.json");
    if (!tok.ok()) {
      std::fprintf(stderr, "%s\n", tok.status().ToString().c_str());
      return 1;
    }
    const std::vector<std::string>* table = nullptr;
    const double build = Seconds([&] { table = &tok->TextBytesTable(); });
    const auto vocab = static_cast<int64_t>(table->size());
    std::printf("%-10s %8lld table of token bytes built in %.1f ms\n", name, static_cast<long long>(vocab),
                build * 1e3);
    std::vector<float> logits(static_cast<size_t>(vocab));
    for (size_t i = 0; i < logits.size(); ++i)
      logits[i] = static_cast<float>((i * 2654435761u) % 1000) / 100.0f;
    for (const State& s : states) {
      // The state: fed as one token of its whole text (the automaton sees bytes).
      std::vector<std::string> one = *table;
      one.push_back(s.text);
      llm::JsonConstraint fed(&one, {});
      fed.Accept(static_cast<int32_t>(vocab));
      llm::JsonConstraint schema_fed(&one, {}, *schema);
      schema_fed.Accept(static_cast<int32_t>(vocab));
      int64_t allowed = 0;
      std::vector<float> row;
      const int reps = 30;
      const double mask = Seconds([&] {
                            for (int r = 0; r < reps; ++r) {
                              row = logits;
                              allowed = fed.Mask(row.data(), vocab);
                            }
                          }) /
                          reps;
      int64_t schema_allowed = 0;
      const double schema_mask = Seconds([&] {
                                   for (int r = 0; r < reps; ++r) {
                                     row = logits;
                                     schema_allowed = schema_fed.Mask(row.data(), vocab);
                                   }
                                 }) /
                                 reps;
      if (schema_allowed == 0 && std::string(s.what) != "closed") {
        std::fprintf(stderr, "the schema allows no token after %s\n", s.text.c_str());
        return 1;
      }
      volatile float sink = 0;
      const double argmax =
          Seconds([&] {
            for (int r = 0; r < reps; ++r) {
              row = logits;
              sink = static_cast<float>(std::max_element(row.begin(), row.end()) - row.begin());
            }
          }) /
          reps;
      const double softmax = Seconds([&] {
                               for (int r = 0; r < reps; ++r) {
                                 row = logits;
                                 float sum = 0;
                                 for (float& v : row) sum += (v = std::exp(v - 10.0f));
                                 sink = sum;
                               }
                             }) /
                             reps;
      (void)sink;
      std::printf("%-10s %8lld %-13s %9lld %9.2f %9.3f %9.3f %9lld %9.2f %7.1f %7.2f\n", name,
                  static_cast<long long>(vocab), s.what, static_cast<long long>(allowed), mask * 1e3,
                  argmax * 1e3, softmax * 1e3, static_cast<long long>(schema_allowed), schema_mask * 1e3,
                  mask / softmax, schema_mask / mask);
    }
  }
  return 0;
}

int main(int argc, char** argv) {
  std::string golden = "tests/golden/llm";
  size_t max_kib = 4096;
  std::vector<std::string> load;
  std::string real;
  int instances = 1;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--instances") == 0) instances = std::max(1, std::atoi(argv[i + 1]));
    if (std::strcmp(argv[i], "--real") == 0) real = argv[i + 1];
    if (std::strcmp(argv[i], "--golden-dir") == 0) golden = argv[i + 1];
    if (std::strcmp(argv[i], "--max-kib") == 0) max_kib = std::strtoul(argv[i + 1], nullptr, 10);
    if (std::strcmp(argv[i], "--load") == 0) load.emplace_back(argv[i + 1]);
    if (std::strcmp(argv[i], "--json-mask") == 0) return JsonMaskReport(argv[i + 1]);
  }
  if (!load.empty()) return LoadReport(load, instances);
  std::vector<std::string> names = {"gpt2",      "llama3", "qwen2",           "smollm2",
                                    "qwen2_nfc", "llama2", "llama2_metaspace"};
  if (!real.empty()) names = {"gemma3", "llama3_1", "qwen3", "llama2"};
  std::vector<BpeTokenizer> toks;
  for (const std::string& name : names) {
    auto tok = BpeTokenizer::Load(real.empty() ? golden + "/tok_" + name + "/tokenizer.json"
                                               : real + "/" + name + "/tokenizer.json");
    if (!tok.ok()) {
      std::fprintf(stderr, "%s\n", tok.status().ToString().c_str());
      return 1;
    }
    toks.push_back(std::move(*tok));
  }

  const std::string glosses = WordNetGlosses(4u << 20);
  if (glosses.empty()) {
    std::fprintf(stderr, "no WordNet glosses under /usr/share/wordnet (apt install wordnet-base)\n");
    return 1;
  }
  std::printf("ordinary text: %.1f MiB of WordNet glosses\n", glosses.size() / 1048576.0);
  std::printf("%-10s %10s %10s\n", "tokenizer", "ids", "MB/s");
  for (size_t t = 0; t < toks.size(); ++t) {
    size_t ids = 0;
    double s = Seconds([&] { ids = toks[t].Encode(glosses).size(); });
    std::printf("%-10s %10zu %10.1f\n", names[t].c_str(), ids, glosses.size() / s / 1e6);
  }

  struct Hostile {
    const char* what;
    std::string unit;
  };
  const Hostile hostile[] = {
      {"syllable", "ation"},
      {"one letter", "e"},
      {"digits", "1234567890"},
      {"spaces", " "},
      {"newlines", "\n"},
      {"'<' bytes", "<"},
      {"accents", "e\xcc\x81"},
      {"punctuation", "!?"},
      // Prefixes of many added tokens (Gemma 3's <unused0>..<unused6241>, Llama's <|...|>).
      {"'<unused'", "<unused"},
      {"'<|'", "<|"},
  };
  const size_t big = max_kib * 1024, small = big / 4;
  std::printf("\nhostile text: one word of n bytes vs 4n (n = %zu KiB); ratio ~4 is n log n, 16 quadratic\n",
              small / 1024);
  std::printf("%-10s %-12s %10s %10s %8s\n", "tokenizer", "input", "t(n) ms", "t(4n) ms", "ratio");
  double worst = 0;
  for (size_t t = 0; t < toks.size(); ++t) {
    for (const Hostile& h : hostile) {
      const std::string a = Repeat(h.unit, small), b = Repeat(h.unit, big);
      double ta = Seconds([&] { toks[t].Encode(a); });
      double tb = Seconds([&] { toks[t].Encode(b); });
      worst = std::max(worst, tb);
      std::printf("%-10s %-12s %10.1f %10.1f %8.1f\n", names[t].c_str(), h.what, ta * 1e3, tb * 1e3, tb / ta);
    }
  }
  std::printf("\nslowest hostile %zu KiB request: %.2f s\n", max_kib, worst);
  return 0;
}
