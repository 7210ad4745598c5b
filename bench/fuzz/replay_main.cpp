// Replays fuzz inputs through a fuzz target without libFuzzer: the seeds and the committed
// reproducers of past findings (bench/fuzz/crashes/) run through the target's
// LLVMFuzzerTestOneInput in the ordinary (gcc) build, so the test command catches a
// finding that comes back (a violated property aborts) without clang or a fuzzing run.
// Sanitizer findings need the sanitized build: bench/fuzz/run.sh 0 (or FEDGE_SANITIZE).
//
//   fedge_fuzz_replay_<target> DIR_OR_FILE...
//
// Every regular file of each directory (sorted, not recursive) is one input. Exits 0 when
// every input ran, 2 when an argument names nothing to replay (an empty or missing
// directory would make the test pass without running anything).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <system_error>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
extern "C" __attribute__((weak)) int LLVMFuzzerInitialize(int* argc, char*** argv);

int main(int argc, char** argv) {
  namespace fs = std::filesystem;
  if (argc < 2 || std::string(argv[1]) == "--help") {
    std::fprintf(stderr, "usage: %s DIR_OR_FILE...  (replays each file through the fuzz target once)\n",
                 argv[0]);
    return argc < 2 ? 2 : 0;
  }
  if (LLVMFuzzerInitialize != nullptr) LLVMFuzzerInitialize(&argc, &argv);
  size_t total = 0;
  for (int i = 1; i < argc; ++i) {
    std::vector<fs::path> inputs;
    std::error_code ec;
    if (fs::is_directory(argv[i], ec)) {
      for (const auto& e : fs::directory_iterator(argv[i], ec))
        if (e.is_regular_file()) inputs.push_back(e.path());
      std::sort(inputs.begin(), inputs.end());
    } else if (fs::is_regular_file(argv[i], ec)) {
      inputs.emplace_back(argv[i]);
    }
    if (inputs.empty()) {
      std::fprintf(stderr, "%s: no input files (missing or empty): nothing to replay\n", argv[i]);
      return 2;
    }
    for (const auto& p : inputs) {
      std::ifstream in(p, std::ios::binary);
      std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      if (!in.good() && !in.eof()) {
        std::fprintf(stderr, "%s: cannot read\n", p.c_str());
        return 2;
      }
      std::fprintf(stderr, "replay %s (%zu bytes)\n", p.c_str(), bytes.size());
      LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
    }
    std::printf("%s: %zu input(s) replayed\n", argv[i], inputs.size());
    total += inputs.size();
  }
  std::printf("%zu input(s) replayed, no property violated\n", total);
  return 0;
}
