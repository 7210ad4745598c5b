// Test support shared by the runtime's serving tests: handler requests, the
// tiny Llama golden served behind ServingModel, a recording stream writer,
// per-test temporary directories and a deadline wait. Header-only (every
// runtime test links into one binary, so everything here is inline).
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "fedge/agent/runtime/inference_api.h"
#include "fedge/agent/runtime/llm_model.h"
#include "fedge/agent/runtime/serving_model.h"
#include "fedge/http_server.h"

namespace fedge::agent::testing {

constexpr auto kDeadline = std::chrono::seconds(10);

// Waits (without sleeping a fixed time) until `pred` holds or kDeadline passes;
// returns the last value of `pred`.
template <typename Pred>
bool Eventually(Pred pred) {
  const auto end = std::chrono::steady_clock::now() + kDeadline;
  while (std::chrono::steady_clock::now() < end) {
    if (pred()) return true;
    std::this_thread::yield();
  }
  return pred();
}

// Holds a call inside a fake model until the test lets it go, so that requests
// pile up behind it (no sleeps). A model calls Pass() where it should be held;
// thread-safe.
class CallGate {
 public:
  // The next Pass() blocks until Release().
  void HoldNextCall() {
    std::lock_guard<std::mutex> lock(mu_);
    hold_ = true;
  }
  // True once a call is held in Pass(); false after kDeadline without one.
  bool WaitHeld() {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, kDeadline, [&] { return held_; });
  }
  void Release() {
    std::lock_guard<std::mutex> lock(mu_);
    hold_ = false;
    cv_.notify_all();
  }

 protected:
  void Pass() {
    std::unique_lock<std::mutex> lock(mu_);
    if (!hold_) return;
    held_ = true;
    cv_.notify_all();
    cv_.wait(lock, [&] { return !hold_; });
    held_ = false;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool hold_ = false;  // guarded by mu_
  bool held_ = false;  // guarded by mu_
};

// A POST of `body` to `path`, as the HTTP server hands it to a handler.
inline HttpRequest Post(const std::string& path, const std::string& body) {
  HttpRequest r;
  r.method = "POST";
  r.path = path;
  r.body = body;
  return r;
}

// <temp>/fedge-<what>-<pid>-<test name>, emptied (removed; not created).
inline std::filesystem::path TestDir(const std::string& what) {
  std::filesystem::path dir = std::filesystem::temp_directory_path() /
                              ("fedge-" + what + "-" + std::to_string(::getpid()) + "-" +
                               ::testing::UnitTest::GetInstance()->current_test_info()->name());
  std::filesystem::remove_all(dir);
  return dir;
}

// tests/golden/llm/tiny_llama: a random-weight Llama small enough for unit tests.
inline std::string TinyLlamaDir() {
  return (std::filesystem::path(__FILE__).parent_path() / "../../../tests/golden/llm/tiny_llama").string();
}

// A writable copy of golden model `name` (tests/golden/llm/<name>) in TestDir(name),
// for a test that adds files (a tokenizer_config.json) to it.
inline std::filesystem::path CopyGoldenModel(const std::string& name) {
  const std::filesystem::path dir = TestDir(name);
  std::filesystem::copy(std::filesystem::path(TinyLlamaDir()).parent_path() / name, dir);
  return dir;
}

// The tiny Llama with a rank-2 LoRA on q_proj and v_proj (seed 3), one thread;
// max_seq_len left at its default.
inline LlmModelOptions TinyLlmOptions() {
  LlmModelOptions o;
  o.model_dir = TinyLlamaDir();
  o.lora.rank = 2;
  o.lora.targets = {"q_proj", "v_proj"};
  o.lora.seed = 3;
  o.num_threads = 1;
  return o;
}

// The model of `o` served as job "ns/gen". Its own trainable state is stored in
// `*global` (when given) and installed as `version` (when >= 0). nullptr, with a
// test failure recorded, when the model does not load or install.
inline std::unique_ptr<ServingModel> ServeLlm(const LlmModelOptions& o, int64_t version,
                                              TensorBundle* global = nullptr) {
  auto model = LlmModel::Load(o);
  if (!model.ok()) {
    ADD_FAILURE() << model.status().ToString();
    return nullptr;
  }
  TensorBundle trainable = (*model)->ExportTrainable();
  auto serving = std::make_unique<ServingModel>(std::move(*model), "ns/gen");
  if (version >= 0) {
    Status installed = serving->Install(trainable, version);
    if (!installed.ok()) {
      ADD_FAILURE() << installed.ToString();
      return nullptr;
    }
  }
  if (global != nullptr) *global = std::move(trainable);
  return serving;
}

// Starts `*server`, a new HttpServer on a free loopback port serving `api`'s
// routes; a server that does not start fails the test (fatally: wrap the call in
// ASSERT_NO_FATAL_FAILURE). `*server` is set either way, for TearDown's Stop().
inline void StartApiServer(InferenceApi& api, std::unique_ptr<HttpServer>* server) {
  *server = std::make_unique<HttpServer>("127.0.0.1:0");
  api.Register(**server);
  ASSERT_TRUE((*server)->Start().ok());
}

// Records the chunks of a streamed response. After `close_after` successful
// writes (never when negative) the client "leaves": Closed() turns true (as the
// server's writer does once it saw the socket go) and Write fails.
class RecordingWriter : public HttpStreamWriter {
 public:
  explicit RecordingWriter(int close_after = -1) : close_after_(close_after) {}
  bool Write(std::string_view data) override {
    if (gone()) {
      ++writes_after_close;
      return false;
    }
    chunks.emplace_back(data);
    return true;
  }
  bool Closed() const override {
    if (gone()) ++polls_after_close;
    return gone();
  }

  // The "data: ..." payloads in order; fails the test on a malformed event.
  std::vector<std::string> Events() const {
    std::vector<std::string> out;
    for (const auto& c : chunks) {
      EXPECT_EQ(c.rfind("data: ", 0), 0u) << c;
      EXPECT_GE(c.size(), 8u);
      EXPECT_EQ(c.substr(c.size() - 2), "\n\n") << c;
      out.push_back(c.substr(6, c.size() - 8));
    }
    return out;
  }

  std::vector<std::string> chunks;
  int writes_after_close = 0;
  mutable int polls_after_close = 0;

 private:
  bool gone() const { return close_after_ >= 0 && static_cast<int>(chunks.size()) >= close_after_; }
  int close_after_;
};

}  // namespace fedge::agent::testing
