// The causal-LM path of the runtime: LlmModel over the tiny Llama golden
// (tests/golden/llm/tiny_llama, random weights) behind ServingModel and the
// OpenAI-shaped /v1/completions and /v1/chat/completions handlers.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "fake_classifier.h"
#include "fedge/agent/llm/json_grammar.h"
#include "fedge/agent/llm/json_schema.h"
#include "fedge/agent/runtime/inference_api.h"
#include "fedge/agent/runtime/llm_model.h"
#include "fedge/agent/runtime/metrics.h"
#include "fedge/agent/runtime/reasoning.h"
#include "fedge/agent/runtime/serving_model.h"
#include "serving_test_util.h"

namespace fedge::agent {
namespace {

using nlohmann::json;
using testing::Post;

LlmModelOptions TinyOptions() {
  LlmModelOptions o = testing::TinyLlmOptions();
  o.max_seq_len = 32;
  return o;
}

class LlmServingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    serving_ = testing::ServeLlm(TinyOptions(), /*version=*/-1, &global_);
    ASSERT_NE(serving_, nullptr);
    api_ = std::make_unique<InferenceApi>(serving_.get(), nullptr, &metrics_);
  }
  void MakeReady() { ASSERT_TRUE(serving_->Install(global_, 2).ok()); }

  TensorBundle global_;
  std::unique_ptr<ServingModel> serving_;
  AgentMetrics metrics_;
  std::unique_ptr<InferenceApi> api_;
};

TEST_F(LlmServingTest, CompletionHasOpenAiShapeAndHonoursMaxTokens) {
  EXPECT_EQ(api_->Completions(Post("/v1/completions", R"({"prompt": "hello"})")).status, 503);
  MakeReady();
  HttpResponse r = api_->Completions(
      Post("/v1/completions", R"({"prompt": "hello world", "max_tokens": 5, "temperature": 0})"));
  ASSERT_EQ(r.status, 200) << r.body;
  json b = json::parse(r.body);
  EXPECT_EQ(b["object"], "text_completion");
  EXPECT_EQ(b["model"], "ns/gen@v2");
  ASSERT_EQ(b["choices"].size(), 1u);
  const json& c = b["choices"][0];
  EXPECT_TRUE(c["text"].is_string());
  std::string reason = c["finish_reason"];
  EXPECT_TRUE(reason == "stop" || reason == "length") << reason;
  EXPECT_GT(b["usage"]["prompt_tokens"].get<int>(), 0);
  EXPECT_LE(b["usage"]["completion_tokens"].get<int>(), 5);
  EXPECT_EQ(b["usage"]["total_tokens"].get<int>(),
            b["usage"]["prompt_tokens"].get<int>() + b["usage"]["completion_tokens"].get<int>());
  if (reason == "length") {
    EXPECT_EQ(b["usage"]["completion_tokens"].get<int>(), 5);
  }

  // Greedy decoding is deterministic; a seeded sample is reproducible.
  HttpResponse again = api_->Completions(
      Post("/v1/completions", R"({"prompt": "hello world", "max_tokens": 5, "temperature": 0})"));
  EXPECT_EQ(json::parse(again.body)["choices"][0]["text"], c["text"]);
  // Every response has its own id, even for the same request in the same second.
  const std::string id = b["id"], id_again = json::parse(again.body)["id"];
  EXPECT_EQ(id.rfind("cmpl-", 0), 0u) << id;
  EXPECT_EQ(id.size(), 5u + 24u) << id;
  EXPECT_NE(id, id_again);
  const char* sampled =
      R"({"prompt": "hello", "max_tokens": 6, "temperature": 1.0, "top_p": 0.9, "seed": 9})";
  EXPECT_EQ(json::parse(api_->Completions(Post("/v1/completions", sampled)).body)["choices"][0]["text"],
            json::parse(api_->Completions(Post("/v1/completions", sampled)).body)["choices"][0]["text"]);
}

TEST_F(LlmServingTest, BadCompletionRequestsAreClear400s) {
  MakeReady();
  for (const char* body :
       {R"({})", R"({"prompt": 3})", R"({"prompt": ""})", R"({"prompt": "a", "max_tokens": 0})",
        R"({"prompt": "a", "temperature": -1})", R"({"prompt": "a", "top_p": 0})",
        R"({"prompt": "a", "stop": [1]})", R"({"prompt": "a", "stop": ""})", R"({"prompt": "a", "n": 3})",
        R"({"prompt": "a", "stream": "yes"})", R"([1])", "not json"}) {
    HttpResponse r = api_->Completions(Post("/v1/completions", body));
    EXPECT_EQ(r.status, 400) << body << " -> " << r.body;
    json b = json::parse(r.body, nullptr, false);
    ASSERT_TRUE(b.is_object() && b.contains("error")) << r.body;
    EXPECT_FALSE(b["error"]["message"].get<std::string>().empty());
  }
  for (const char* body : {R"({})", R"({"messages": []})", R"({"messages": [{"role": "user"}]})",
                           R"({"messages": [{"role": "", "content": "x"}]})"}) {
    EXPECT_EQ(api_->ChatCompletions(Post("/v1/chat/completions", body)).status, 400) << body;
  }
}

TEST_F(LlmServingTest, ClassifyAndEmbeddingsOnACausalLmJobAre400) {
  MakeReady();
  HttpResponse r = api_->Classify(Post("/v1/classify", R"({"input": "dog"})"));
  EXPECT_EQ(r.status, 400) << r.body;
  EXPECT_NE(r.body.find("causal-lm"), std::string::npos) << r.body;
  EXPECT_EQ(api_->Embeddings(Post("/v1/embeddings", R"({"input": "dog"})")).status, 400);
}

// A SentencePiece-style chat model (tiny_mistral's weights and Llama 2 tokenizer with
// Llama 2 chat's template in tokenizer_config.json, as meta-llama/Llama-2-7b-chat-hf
// ships it): /v1/chat/completions renders [INST] turns, encodes them with one BOS, and
// replies without its first word's space; a base model without a template says why.
TEST(LlmServingSentencePieceTest, ChatUsesTheDirectorysTemplate) {
  namespace fs = std::filesystem;
  const fs::path dir = testing::CopyGoldenModel("tiny_mistral");
  LlmModelOptions o = testing::TinyLlmOptions();
  o.model_dir = dir.string();
  // Its context is max_position_embeddings (128; its sliding_window of 32 is sliding
  // attention, no longer a cap): a longer maxSeqLen is refused naming the field.
  o.max_seq_len = 129;
  auto too_long = LlmModel::Load(o);
  ASSERT_FALSE(too_long.ok());
  EXPECT_EQ(too_long.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(too_long.status().message().find("spec.model.maxSeqLen 129 exceeds the model's context of 128"),
            std::string::npos)
      << too_long.status().message();
  o.max_seq_len = 48;
  {
    auto base = testing::ServeLlm(o, 1);
    ASSERT_NE(base, nullptr);
    InferenceApi api(base.get(), nullptr, nullptr);
    HttpResponse r = api.ChatCompletions(
        Post("/v1/chat/completions", R"({"messages": [{"role": "user", "content": "hi"}]})"));
    EXPECT_EQ(r.status, 400) << r.body;
    EXPECT_EQ(json::parse(r.body)["error"]["code"], "unsupported_for_model") << r.body;
    EXPECT_NE(r.body.find("no chat template"), std::string::npos) << r.body;
  }
  std::ofstream(dir / "tokenizer_config.json")
      << R"({"bos_token": "<s>", "eos_token": "</s>", "chat_template": "{% if messages[0]['role'] == 'system' %})"
      << R"({{ bos_token + '[INST] <<SYS>>\n' }}{% endif %}"})";
  auto serving = testing::ServeLlm(o, 1);
  ASSERT_NE(serving, nullptr);
  InferenceApi api(serving.get(), nullptr, nullptr);
  // A second instance as the reference (its adapters start at B = 0, as the served one's).
  auto lm = LlmModel::Load(o);
  ASSERT_TRUE(lm.ok()) << lm.status().ToString();
  ASSERT_EQ((*lm)->lm().chat_format(), llm::ChatFormat::kLlama2);

  int leading_space = 0;
  // Short turns, no system: prompt and reply stay within 48 tokens (maxSeqLen).
  for (const char* user : {"Define dog.", "hi", "What is a bank?", "x", "tree", "cat"}) {
    const std::string body = std::string(R"({"messages": [{"role": "user", "content": ")") + user +
                             R"("}], "max_tokens": 4, "temperature": 0})";
    HttpResponse r = api.ChatCompletions(Post("/v1/chat/completions", body));
    ASSERT_EQ(r.status, 200) << r.body;
    json b = json::parse(r.body);
    // The same prompt as text: Generate adds the BOS the template also writes, once.
    const std::string prompt = std::string("<s>[INST] ") + user + " [/INST]";
    const std::vector<int32_t> ids = (*lm)->lm().tokenizer().Encode(prompt, {.add_special_tokens = true});
    ASSERT_EQ(ids[0], 1);
    ASSERT_NE(ids[1], 1);
    EXPECT_EQ(b["usage"]["prompt_tokens"].get<size_t>(), ids.size());
    llm::GenerationOptions greedy;
    greedy.max_new_tokens = 4;
    greedy.sampling.temperature = 0;
    auto want = (*lm)->lm().Generate(prompt, greedy);
    ASSERT_TRUE(want.ok());
    std::string text = want->text;
    if (!text.empty() && text[0] == ' ') {
      text.erase(0, 1);
      ++leading_space;
    }
    EXPECT_EQ(b["choices"][0]["message"]["content"], text) << user;
  }
  EXPECT_GE(leading_space, 1) << "no reply began with a word marker: the strip went untested";
  // Llama 2's template raises on roles out of turn: a 400 that names the message.
  HttpResponse r = api.ChatCompletions(
      Post("/v1/chat/completions",
           R"({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]})"));
  EXPECT_EQ(r.status, 400) << r.body;
  EXPECT_NE(r.body.find("alternate user/assistant"), std::string::npos) << r.body;
  EXPECT_NE(r.body.find("message 1 is"), std::string::npos) << r.body;
  fs::remove_all(dir);
}

// A copy of golden model `golden` whose tokenizer_config.json holds the chat template
// tests/golden/llm/templates/<jinja>, served (as job "ns/gen", version 1) and loaded a
// second time as the reference; the copy is removed at the end.
struct ChatModel {
  std::filesystem::path dir;
  std::unique_ptr<ServingModel> serving;
  StatusOr<std::unique_ptr<LlmModel>> lm = InternalError("not loaded");

  // `context` > 0: config.json's max_position_embeddings rewritten to it (a random
  // model's rotary covers any length).
  ChatModel(const std::string& golden, const std::string& jinja, int64_t max_seq_len, int64_t context = 0) {
    dir = testing::CopyGoldenModel(golden);
    if (context > 0) {
      std::ifstream in(dir / "config.json");
      json config = json::parse(in);
      config["max_position_embeddings"] = context;
      std::ofstream(dir / "config.json") << config.dump();
    }
    std::ifstream file(std::filesystem::path(testing::TinyLlamaDir()).parent_path() / "templates" / jinja);
    std::stringstream text;
    text << file.rdbuf();
    EXPECT_FALSE(text.str().empty()) << jinja;
    std::ofstream(dir / "tokenizer_config.json")
        << json{{"eos_token", "<|im_end|>"}, {"chat_template", text.str()}}.dump();
    LlmModelOptions o = testing::TinyLlmOptions();
    o.model_dir = dir.string();
    o.max_seq_len = max_seq_len;
    serving = testing::ServeLlm(o, 1);
    lm = LlmModel::Load(o);
    EXPECT_TRUE(lm.ok()) << lm.status().ToString();
  }
  ~ChatModel() { std::filesystem::remove_all(dir); }
};

// The reasoning_content and content deltas of a streamed chat reply to `body`, joined.
ReasoningSplitter::Parts StreamedReply(InferenceApi& api, const std::string& body) {
  HttpResponse streamed = api.ChatCompletions(Post("/v1/chat/completions", body));
  EXPECT_EQ(streamed.status, 200) << streamed.body;
  ReasoningSplitter::Parts out;
  if (!streamed.stream) {
    ADD_FAILURE() << "not a stream: " << streamed.body;
    return out;
  }
  testing::RecordingWriter writer;
  streamed.stream(writer);
  for (const std::string& event : writer.Events()) {
    if (event == "[DONE]") continue;
    const json delta = json::parse(event)["choices"][0]["delta"];
    if (delta.contains("content")) out.content += delta["content"].get<std::string>();
    if (delta.contains("reasoning_content")) out.reasoning += delta["reasoning_content"].get<std::string>();
  }
  return out;
}

// Qwen3 with its shipped template (tiny_qwen3's weights and byte-level tokenizer):
// the format is recognised from the template, and chat_template_kwargs.enable_thinking
// false (vLLM's request field) ends the prompt with Qwen3's empty think block, as its
// template renders it; other template variables are refused by name.
TEST(LlmServingQwen3Test, EnableThinkingFalseWritesTheEmptyThinkBlock) {
  ChatModel m("tiny_qwen3", "qwen3.jinja", 64);
  ASSERT_NE(m.serving, nullptr);
  InferenceApi api(m.serving.get(), nullptr, nullptr);
  auto& lm = m.lm;
  ASSERT_TRUE(lm.ok());
  ASSERT_EQ((*lm)->lm().chat_format(), llm::ChatFormat::kQwen3);
  const std::string turn = "<|im_start|>user\nDefine dog.<|im_end|>\n<|im_start|>assistant\n";
  for (const auto& [kwargs, prompt] : std::vector<std::pair<std::string, std::string>>{
           {"", turn},
           {R"(, "chat_template_kwargs": {"enable_thinking": true})", turn},
           {R"(, "chat_template_kwargs": {"enable_thinking": false})", turn + "<think>\n\n</think>\n\n"}}) {
    HttpResponse r = api.ChatCompletions(Post(
        "/v1/chat/completions",
        R"({"messages": [{"role": "user", "content": "Define dog."}], "max_tokens": 2, "temperature": 0)" +
            kwargs + "}"));
    ASSERT_EQ(r.status, 200) << r.body;
    const size_t want = (*lm)->lm().tokenizer().Encode(prompt, {.add_special_tokens = true}).size();
    EXPECT_EQ(json::parse(r.body)["usage"]["prompt_tokens"].get<size_t>(), want) << kwargs;
  }
  // A thinking format's reply carries reasoning_content (null when the reply did not
  // open <think>), and content + reasoning are the generated text split at the tags.
  {
    HttpResponse r = api.ChatCompletions(Post(
        "/v1/chat/completions",
        R"({"messages": [{"role": "user", "content": "Define dog."}], "max_tokens": 6, "temperature": 0})"));
    ASSERT_EQ(r.status, 200) << r.body;
    const json message = json::parse(r.body)["choices"][0]["message"];
    ASSERT_TRUE(message.contains("reasoning_content")) << r.body;
    llm::GenerationOptions greedy;
    greedy.max_new_tokens = 6;
    greedy.sampling.temperature = 0;
    greedy.stop = {"<|im_end|>"};
    auto want = (*lm)->lm().Generate(turn, greedy);
    ASSERT_TRUE(want.ok());
    const ReasoningSplitter::Parts parts = ReasoningSplitter::Split(want->text);
    EXPECT_EQ(message["content"], parts.content);
    EXPECT_EQ(message["reasoning_content"], parts.reasoning.empty() ? json(nullptr) : json(parts.reasoning));
    // Streamed: the deltas add up to the same reasoning and content.
    const ReasoningSplitter::Parts streamed = StreamedReply(
        api, R"({"messages": [{"role": "user", "content": "Define dog."}], "max_tokens": 6, "temperature": 0,
            "stream": true})");
    EXPECT_EQ(streamed.content, parts.content);
    EXPECT_EQ(streamed.reasoning, parts.reasoning);
  }
  for (const char* bad :
       {R"("chat_template_kwargs": {"tools": []})", R"("chat_template_kwargs": {"enable_thinking": 0})",
        R"("chat_template_kwargs": "no")"}) {
    HttpResponse r = api.ChatCompletions(
        Post("/v1/chat/completions",
             std::string(R"({"messages": [{"role": "user", "content": "x"}], )") + bad + "}"));
    EXPECT_EQ(r.status, 400) << bad << " " << r.body;
    EXPECT_EQ(json::parse(r.body)["error"]["param"], "chat_template_kwargs") << r.body;
  }
}

// DeepSeek-R1-Distill's template (tiny_qwen2 with it, as R1-Distill-Qwen is Qwen2.5
// with DeepSeek's template): the prompt is DeepSeek's and opens <think>, so the whole
// reply is reasoning up to its </think>; non-streamed and streamed split alike.
TEST(LlmServingQwen3Test, DeepSeekR1RepliesAreReasoningUntilTheyCloseIt) {
  ChatModel m("tiny_qwen2", "deepseek_r1_distill.jinja", 96);
  ASSERT_NE(m.serving, nullptr);
  InferenceApi api(m.serving.get(), nullptr, nullptr);
  auto& lm = m.lm;
  ASSERT_TRUE(lm.ok());
  ASSERT_EQ((*lm)->lm().chat_format(), llm::ChatFormat::kDeepSeekR1);
  const std::string body =
      R"({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Define dog."},
                       {"role": "assistant", "content": "<think>hm</think>A canine."},
                       {"role": "user", "content": "And cat?"}], "max_tokens": 6, "temperature": 0)";
  const std::string prompt =
      "<｜begin▁of▁sentence｜>Be brief.<｜User｜>Define dog.<｜Assistant｜>A canine.<｜end▁of▁sentence｜>"
      "<｜User｜>And cat?<｜Assistant｜><think>\n";
  HttpResponse r = api.ChatCompletions(Post("/v1/chat/completions", body + "}"));
  ASSERT_EQ(r.status, 200) << r.body;
  const json reply = json::parse(r.body);
  EXPECT_EQ(reply["usage"]["prompt_tokens"].get<size_t>(),
            (*lm)->lm().tokenizer().Encode(prompt, {.add_special_tokens = true}).size());
  llm::GenerationOptions greedy;
  greedy.max_new_tokens = 6;
  greedy.sampling.temperature = 0;
  greedy.stop = {"<｜end▁of▁sentence｜>"};
  auto want = (*lm)->lm().Generate(prompt, greedy);
  ASSERT_TRUE(want.ok());
  ASSERT_FALSE(want->text.empty());
  const auto parts = ReasoningSplitter::Split(want->text, llm::ChatReasoning::kStartsInside);
  // The tiny model never writes </think>: all it says is reasoning.
  if (want->text.find("</think>") == std::string::npos) EXPECT_EQ(parts.reasoning, want->text);
  const json message = reply["choices"][0]["message"];
  EXPECT_EQ(message["reasoning_content"], json(parts.reasoning)) << r.body;
  EXPECT_EQ(message["content"], parts.content) << r.body;

  const ReasoningSplitter::Parts streamed = StreamedReply(api, body + R"(, "stream": true})");
  EXPECT_EQ(streamed.reasoning, parts.reasoning);
  EXPECT_EQ(streamed.content, parts.content);
}

// Tools served on Qwen2.5's template: the prompt carries them (and the conversation's
// calls and tool responses) as the template renders them, "tool_choice": "none" leaves
// them out, and a model whose template has no tool format refuses them.
TEST(LlmServingQwen3Test, ToolsReachThePromptAsQwen25RendersThem) {
  ChatModel m("tiny_qwen2", "qwen2_5.jinja", 1024, /*context=*/1024);
  ASSERT_NE(m.serving, nullptr);
  InferenceApi api(m.serving.get(), nullptr, nullptr);
  auto& lm = m.lm;
  ASSERT_TRUE(lm.ok());
  ASSERT_EQ((*lm)->lm().chat_tool_format(), llm::ChatToolFormat::kHermes);
  const std::string tools = R"([{"type": "function", "function": {"name": "get_time", "description": "Now",
                                 "parameters": {"type": "object", "properties": {}}}}])";
  const std::string messages = R"([{"role": "user", "content": "Time?"},
      {"role": "assistant", "content": null, "tool_calls": [{"id": "c", "type": "function",
       "function": {"name": "get_time", "arguments": "{\"tz\":\"UTC\"}"}}]},
      {"role": "tool", "tool_call_id": "c", "content": "12:00"}])";
  const std::vector<llm::ChatMessage> conversation = {
      {"user", "Time?"}, {"assistant", "", {{"get_time", R"({"tz": "UTC"})"}}}, {"tool", "12:00"}};
  for (const char* choice : {"auto", "none"}) {
    HttpResponse r = api.ChatCompletions(
        Post("/v1/chat/completions", R"({"max_tokens": 3, "temperature": 0, "tool_choice": ")" +
                                         std::string(choice) + R"(", "tools": )" + tools +
                                         R"(, "messages": )" + messages + "}"));
    ASSERT_EQ(r.status, 200) << r.body;
    llm::ChatTemplateOptions options;
    options.default_system = (*lm)->lm().chat_default_system();
    if (std::string(choice) == "auto") {
      options.tools = {R"({"type": "function", "function": {"name": "get_time", "description": "Now", )"
                       R"("parameters": {"type": "object", "properties": {}}}})"};
    }
    auto prompt = llm::ApplyChatTemplate(llm::ChatFormat::kChatMl, conversation, options);
    ASSERT_TRUE(prompt.ok());
    EXPECT_NE(prompt->find("<tool_response>\n12:00\n</tool_response>"), std::string::npos);
    EXPECT_EQ(prompt->find("# Tools") != std::string::npos, std::string(choice) == "auto");
    const json reply = json::parse(r.body);
    EXPECT_EQ(reply["usage"]["prompt_tokens"].get<size_t>(),
              (*lm)->lm().tokenizer().Encode(*prompt, {.add_special_tokens = true}).size())
        << choice;
    // The tiny model writes no call: its reply is content.
    EXPECT_FALSE(reply["choices"][0]["message"].contains("tool_calls")) << r.body;
    EXPECT_NE(reply["choices"][0]["finish_reason"], "tool_calls");
  }
  ChatModel plain("tiny_qwen2", "qwen2.jinja", 96);
  ASSERT_NE(plain.serving, nullptr);
  InferenceApi plain_api(plain.serving.get(), nullptr, nullptr);
  for (const std::string& body :
       {R"({"tools": )" + tools + R"(, "messages": [{"role": "user", "content": "x"}]})",
        R"({"messages": )" + messages + "}"}) {
    HttpResponse r = plain_api.ChatCompletions(Post("/v1/chat/completions", body));
    EXPECT_EQ(r.status, 400) << r.body;
    EXPECT_EQ(json::parse(r.body)["error"]["code"], "unsupported_for_model") << r.body;
  }
}

// Tools served on Meta's Llama 3.2 template (tiny_llama32's weights): the prompt lists
// them in the first user turn and carries the conversation's call and tool result as
// the template renders them ("tool_choice": "none" leaves the tools out); the reply,
// streamed or not, is read for a JSON call; what the template raises on (two calls in
// one assistant message, tools with no message to carry them) is a 400 that says so.
TEST(LlmServingQwen3Test, ToolsReachThePromptAsLlama32RendersThem) {
  ChatModel m("tiny_llama32", "llama3_2.jinja", 2048, /*context=*/2048);
  ASSERT_NE(m.serving, nullptr);
  InferenceApi api(m.serving.get(), nullptr, nullptr);
  auto& lm = m.lm;
  ASSERT_TRUE(lm.ok());
  ASSERT_EQ((*lm)->lm().chat_format(), llm::ChatFormat::kLlama32);
  ASSERT_EQ((*lm)->lm().chat_tool_format(), llm::ChatToolFormat::kLlama3Json);
  const std::string tools = R"([{"type": "function", "function": {"name": "get_time", "description": "Now",
                                 "parameters": {"type": "object", "properties": {}}}}])";
  const std::string messages =
      R"([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Time?"},
      {"role": "assistant", "content": null, "tool_calls": [{"id": "c", "type": "function",
       "function": {"name": "get_time", "arguments": "{\"tz\":\"UTC\"}"}}]},
      {"role": "tool", "tool_call_id": "c", "content": "12:00"}])";
  const std::vector<llm::ChatMessage> conversation = {{"system", "Be brief."},
                                                      {"user", "Time?"},
                                                      {"assistant", "", {{"get_time", R"({"tz": "UTC"})"}}},
                                                      {"tool", "12:00"}};
  for (const char* choice : {"auto", "none"}) {
    const std::string body = R"({"max_tokens": 4, "temperature": 0, "tool_choice": ")" + std::string(choice) +
                             R"(", "tools": )" + tools + R"(, "messages": )" + messages;
    HttpResponse r = api.ChatCompletions(Post("/v1/chat/completions", body + "}"));
    ASSERT_EQ(r.status, 200) << r.body;
    llm::ChatTemplateOptions options;
    if (std::string(choice) == "auto") {
      options.tools = {R"({"type": "function", "function": {"name": "get_time", "description": "Now", )"
                       R"("parameters": {"type": "object", "properties": {}}}})"};
    }
    auto prompt = llm::ApplyChatTemplate(llm::ChatFormat::kLlama32, conversation, options);
    ASSERT_TRUE(prompt.ok());
    EXPECT_NE(prompt->find("{\"name\": \"get_time\", \"parameters\": {\"tz\": \"UTC\"}}<|eot_id|>"
                           "<|start_header_id|>ipython<|end_header_id|>\n\n\"12:00\"<|eot_id|>"),
              std::string::npos)
        << *prompt;
    EXPECT_EQ(prompt->find("Environment: ipython\n") != std::string::npos, std::string(choice) == "auto");
    EXPECT_EQ(prompt->find("        \"name\": \"get_time\",\n") != std::string::npos,
              std::string(choice) == "auto");
    const json reply = json::parse(r.body);
    EXPECT_EQ(reply["usage"]["prompt_tokens"].get<size_t>(),
              (*lm)->lm().tokenizer().Encode(*prompt, {.add_special_tokens = true}).size())
        << choice;
    // The tiny model writes no call: its reply is content, streamed the same.
    const json message = reply["choices"][0]["message"];
    EXPECT_FALSE(message.contains("tool_calls")) << r.body;
    const ChatReplyParts read = ReadChatReply(message["content"].get<std::string>(),
                                              llm::ChatReasoning::kNone, llm::ChatToolFormat::kLlama3Json);
    EXPECT_TRUE(read.calls.empty());
    EXPECT_EQ(StreamedReply(api, body + R"(, "stream": true})").content, message["content"]);
  }
  for (const auto& [body, says] : std::vector<std::pair<std::string, std::string>>{
           {R"({"tools": )" + tools + R"(, "messages": [{"role": "user", "content": "Time?"},
              {"role": "assistant", "content": null, "tool_calls": [
                {"id": "a", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
                {"id": "b", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
              {"role": "tool", "content": "1"}, {"role": "tool", "content": "2"}]})",
            "makes 2 tool calls"},
           {R"({"tools": )" + tools + R"(, "messages": [{"role": "system", "content": "S"}]})",
            "first message after the system message"}}) {
    HttpResponse r = api.ChatCompletions(Post("/v1/chat/completions", body));
    EXPECT_EQ(r.status, 400) << r.body;
    EXPECT_NE(json::parse(r.body)["error"]["message"].get<std::string>().find(says), std::string::npos)
        << r.body;
  }
}

// Training options that fit a tiny model's LoRA to one example (60 steps).
TrainOptions FitOneExample() {
  TrainOptions train;
  train.steps = 60;
  train.batch_size = 1;
  train.learning_rate = 2e-2;
  train.weight_decay = 0;
  return train;
}

// A model that writes a call: a tiny model with a LoRA adapter trained (as an agent
// trains one) to answer the tools prompt with a call in its template's format,
// installed as the global adapter. Served, the reply is a tool call, streamed or not:
// the reply path from the model's own text, not a pure function's input. Llama 3.2's
// JSON on tiny_llama32, Qwen2.5's Hermes block on tiny_qwen2.
void ExpectTrainedModelCallsTheTool(const std::string& golden, const std::string& jinja,
                                    const std::string& call) {
  SCOPED_TRACE(jinja);
  ChatModel m(golden, jinja, 96, /*context=*/2048);
  LlmModelOptions o = testing::TinyLlmOptions();
  o.model_dir = m.dir.string();
  o.max_seq_len = 1024;
  o.lora.rank = 8;
  o.lora.targets = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  auto trainer = LlmModel::Load(o);
  ASSERT_TRUE(trainer.ok()) << trainer.status().ToString();
  const llm::CausalLm& lm = (*trainer)->lm();
  ASSERT_TRUE(lm.chat_format().has_value());
  ASSERT_NE(lm.chat_tool_format(), llm::ChatToolFormat::kNone);
  const std::string tool =
      R"({"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}})";
  llm::ChatTemplateOptions options;
  options.tools = {tool};
  options.default_system = lm.chat_default_system();
  auto prompt = llm::ApplyChatTemplate(*lm.chat_format(), {{"user", "Time?"}}, options);
  ASSERT_TRUE(prompt.ok());
  const TrainOptions train = FitOneExample();
  auto trained = (*trainer)->Train({{*prompt, -1, call}}, train);
  ASSERT_TRUE(trained.ok()) << trained.status().ToString();
  std::unique_ptr<ServingModel> serving = testing::ServeLlm(o, -1);
  ASSERT_NE(serving, nullptr);
  ASSERT_TRUE(serving->Install((*trainer)->ExportTrainable(), 2).ok());
  InferenceApi api(serving.get(), nullptr, nullptr);
  const std::string body = R"({"max_tokens": 100, "temperature": 0, "tools": [)" + tool +
                           R"(], "messages": [{"role": "user", "content": "Time?"}])";
  HttpResponse r = api.ChatCompletions(Post("/v1/chat/completions", body + "}"));
  ASSERT_EQ(r.status, 200) << r.body;
  const json choice = json::parse(r.body)["choices"][0];
  ASSERT_TRUE(choice["message"].contains("tool_calls")) << "loss " << trained->mean_loss << ": " << r.body;
  EXPECT_EQ(choice["finish_reason"], "tool_calls");
  EXPECT_TRUE(choice["message"]["content"].is_null());
  ASSERT_EQ(choice["message"]["tool_calls"].size(), 1u);
  const json& called = choice["message"]["tool_calls"][0];
  EXPECT_EQ(called["type"], "function");
  EXPECT_EQ(called["id"].get<std::string>().rfind("call_", 0), 0u);
  EXPECT_EQ(called["function"]["name"], "get_time");
  EXPECT_EQ(json::parse(called["function"]["arguments"].get<std::string>()), json({{"tz", "UTC"}}));
  // Streamed: no content, one tool_calls chunk with its index, then "tool_calls".
  HttpResponse streamed = api.ChatCompletions(Post("/v1/chat/completions", body + R"(, "stream": true})"));
  ASSERT_EQ(streamed.status, 200) << streamed.body;
  ASSERT_TRUE(streamed.stream);
  testing::RecordingWriter writer;
  streamed.stream(writer);
  std::string content, finish;
  json calls = json::array();
  for (const std::string& event : writer.Events()) {
    if (event == "[DONE]") continue;
    const json c = json::parse(event)["choices"][0];
    if (c["delta"].contains("content")) content += c["delta"]["content"].get<std::string>();
    if (c["delta"].contains("tool_calls"))
      calls.insert(calls.end(), c["delta"]["tool_calls"].begin(), c["delta"]["tool_calls"].end());
    if (!c["finish_reason"].is_null()) finish = c["finish_reason"].get<std::string>();
  }
  EXPECT_EQ(content, "");
  EXPECT_EQ(finish, "tool_calls");
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0]["index"], 0);
  EXPECT_EQ(calls[0]["function"]["name"], "get_time");
  EXPECT_EQ(calls[0]["function"]["arguments"], called["function"]["arguments"]);
  // "tool_choice": "none" leaves the tools out of the prompt: no call is read.
  r = api.ChatCompletions(
      Post("/v1/chat/completions", R"({"max_tokens": 100, "temperature": 0, "tool_choice": "none",
      "tools": [)" + tool + R"(], "messages": [{"role": "user", "content": "Time?"}]})"));
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_FALSE(json::parse(r.body)["choices"][0]["message"].contains("tool_calls")) << r.body;
}

TEST(LlmServingQwen3Test, AModelTrainedToCallAToolAnswersWithToolCalls) {
  ExpectTrainedModelCallsTheTool("tiny_llama32", "llama3_2.jinja",
                                 R"({"name": "get_time", "parameters": {"tz": "UTC"}})");
  ExpectTrainedModelCallsTheTool(
      "tiny_qwen2", "qwen2_5.jinja",
      "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"tz\": \"UTC\"}}\n</tool_call>");
}

// tool_choice "required" and a named function, served in both tool formats: every
// sampled reply of a random tiny model is one call to one of the tools (the named
// one), with arguments that fit its parameters; left to "auto" the same model
// mostly writes text.
TEST(LlmServingQwen3Test, RequiredToolChoiceAlwaysCallsATool) {
  for (const auto& [golden, jinja] : std::vector<std::pair<std::string, std::string>>{
           {"tiny_llama32", "llama3_2.jinja"}, {"tiny_qwen2", "qwen2_5.jinja"}}) {
    SCOPED_TRACE(jinja);
    ChatModel m(golden, jinja, 96, /*context=*/2048);
    ASSERT_NE(m.serving, nullptr);
    InferenceApi api(m.serving.get(), nullptr, nullptr);
    const std::string tools =
        R"([{"type": "function", "function": {"name": "get_time", "strict": true, "parameters": {"type": "object",
            "properties": {"tz": {"enum": ["UTC", "CET"]}}, "required": ["tz"], "additionalProperties": false}}},
            {"type": "function", "function": {"name": "light", "parameters": {"type": "object",
            "properties": {"on": {"type": "boolean"}}, "required": ["on"]}}}])";
    auto body = [&](int seed, const std::string& choice) {
      return R"({"max_tokens": 200, "temperature": 1.0, "seed": )" + std::to_string(seed) +
             R"(, "tool_choice": )" + choice + R"(, "tools": )" + tools +
             R"(, "messages": [{"role": "user", "content": "Time?"}]})";
    };
    std::set<std::string> names;
    int auto_text = 0;
    for (int seed = 1; seed <= 6; ++seed) {
      for (const std::string choice :
           {std::string(R"("required")"),
            std::string(R"({"type": "function", "function": {"name": "light"}})")}) {
        HttpResponse r = api.ChatCompletions(Post("/v1/chat/completions", body(seed, choice)));
        ASSERT_EQ(r.status, 200) << r.body;
        const json c = json::parse(r.body)["choices"][0];
        ASSERT_EQ(c["finish_reason"], "tool_calls") << r.body;
        ASSERT_EQ(c["message"]["tool_calls"].size(), 1u) << r.body;
        EXPECT_TRUE(c["message"]["content"].is_null()) << r.body;
        const json& f = c["message"]["tool_calls"][0]["function"];
        const json args = json::parse(f["arguments"].get<std::string>());
        if (f["name"] == "get_time") {
          EXPECT_TRUE(args == json({{"tz", "UTC"}}) || args == json({{"tz", "CET"}})) << args.dump();
        } else {
          ASSERT_EQ(f["name"], "light") << r.body;
          EXPECT_TRUE(args.size() == 1 && args["on"].is_boolean()) << args.dump();
        }
        if (choice[0] == '{') EXPECT_EQ(f["name"], "light");
        names.insert(f["name"].get<std::string>());
      }
      HttpResponse r = api.ChatCompletions(Post("/v1/chat/completions", body(seed, R"("auto")")));
      ASSERT_EQ(r.status, 200) << r.body;
      if (!json::parse(r.body)["choices"][0]["message"].contains("tool_calls")) ++auto_text;
    }
    EXPECT_EQ(names.size(), 2u);  // "required" chose either tool
    EXPECT_GT(auto_text, 0);      // the constraint is what makes them calls
    // A named tool that is not offered, a strict tool fedge cannot hold, and
    // "required" on a model whose reply starts inside its reasoning are 400s.
    HttpResponse bad = api.ChatCompletions(
        Post("/v1/chat/completions", body(1, R"({"type": "function", "function": {"name": "nope"}})")));
    EXPECT_EQ(bad.status, 400) << bad.body;
    EXPECT_EQ(json::parse(bad.body)["error"]["param"], "tool_choice");
  }
  ChatModel r1("tiny_qwen2", "deepseek_r1_distill.jinja", 96);
  ASSERT_NE(r1.serving, nullptr);
  InferenceApi r1_api(r1.serving.get(), nullptr, nullptr);
  HttpResponse r = r1_api.ChatCompletions(Post("/v1/chat/completions",
                                               R"({"tool_choice": "required", "tools": [{"type": "function",
      "function": {"name": "f"}}], "messages": [{"role": "user", "content": "x"}]})"));
  EXPECT_EQ(r.status, 400) << r.body;
}

// JSON mode (response_format json_object) served: a random tiny model's replies,
// sampled, are prefixes of a JSON object (without it they are not), and one that ends
// by itself is a whole object; a model trained to answer with an object answers with
// it and ends there, streamed the same; DeepSeek-R1's reply (reasoning first) refuses it.
TEST(LlmServingQwen3Test, JsonModeRepliesAreJsonObjects) {
  ChatModel m("tiny_qwen2", "qwen2_5.jinja", 96, /*context=*/1024);
  LlmModelOptions o = testing::TinyLlmOptions();
  o.model_dir = m.dir.string();
  o.max_seq_len = 512;
  o.lora.rank = 8;
  o.lora.targets = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  std::unique_ptr<ServingModel> random = testing::ServeLlm(o, 1);
  ASSERT_NE(random, nullptr);
  InferenceApi random_api(random.get(), nullptr, nullptr);
  auto body = [](int seed, bool json_mode) {
    return R"({"max_tokens": 48, "temperature": 1.0, "seed": )" + std::to_string(seed) +
           (json_mode ? R"(, "response_format": {"type": "json_object"})" : "") +
           R"(, "messages": [{"role": "user", "content": "Answer in JSON."}]})";
  };
  int plain_not_json = 0;
  for (int seed = 1; seed <= 8; ++seed) {
    HttpResponse r = random_api.ChatCompletions(Post("/v1/chat/completions", body(seed, true)));
    ASSERT_EQ(r.status, 200) << r.body;
    const json choice = json::parse(r.body)["choices"][0];
    const std::string text = choice["message"]["content"].get<std::string>();
    llm::JsonPrefix prefix;
    EXPECT_TRUE(prefix.FeedAll(text)) << seed << ": " << text;
    EXPECT_EQ(
        text.substr(
            text.find_first_not_of(" \t\r\n") == std::string::npos ? 0 : text.find_first_not_of(" \t\r\n"),
            1),
        "{")
        << text;
    if (choice["finish_reason"] == "stop") EXPECT_TRUE(json::parse(text).is_object()) << text;
    HttpResponse plain = random_api.ChatCompletions(Post("/v1/chat/completions", body(seed, false)));
    ASSERT_EQ(plain.status, 200) << plain.body;
    llm::JsonPrefix plain_prefix;
    if (!plain_prefix.FeedAll(json::parse(plain.body)["choices"][0]["message"]["content"].get<std::string>()))
      ++plain_not_json;
  }
  EXPECT_GT(plain_not_json, 0);  // the constraint is what makes the replies JSON

  auto trainer = LlmModel::Load(o);
  ASSERT_TRUE(trainer.ok()) << trainer.status().ToString();
  llm::ChatTemplateOptions options;
  options.default_system = (*trainer)->lm().chat_default_system();
  auto prompt = llm::ApplyChatTemplate(llm::ChatFormat::kChatMl, {{"user", "Answer in JSON."}}, options);
  ASSERT_TRUE(prompt.ok());
  const TrainOptions train = FitOneExample();
  const std::string answer = R"({"answer": 42, "unit": "m"})";
  ASSERT_TRUE((*trainer)->Train({{*prompt, -1, answer}}, train).ok());
  std::unique_ptr<ServingModel> serving = testing::ServeLlm(o, -1);
  ASSERT_NE(serving, nullptr);
  ASSERT_TRUE(serving->Install((*trainer)->ExportTrainable(), 2).ok());
  InferenceApi api(serving.get(), nullptr, nullptr);
  const std::string trained_body =
      R"({"max_tokens": 64, "temperature": 0, "response_format": {"type": "json_object"},
          "messages": [{"role": "user", "content": "Answer in JSON."}])";
  HttpResponse r = api.ChatCompletions(Post("/v1/chat/completions", trained_body + "}"));
  ASSERT_EQ(r.status, 200) << r.body;
  const json choice = json::parse(r.body)["choices"][0];
  EXPECT_EQ(choice["finish_reason"], "stop") << r.body;
  EXPECT_EQ(json::parse(choice["message"]["content"].get<std::string>()), json::parse(answer)) << r.body;
  EXPECT_EQ(StreamedReply(api, trained_body + R"(, "stream": true})").content, choice["message"]["content"]);
  // The same model held to a schema that its answer does not fit ("unit" must be
  // "km" or "mi", and come first): the reply fits the schema, not the training.
  const std::string schema_body =
      R"({"max_tokens": 64, "temperature": 0, "messages": [{"role": "user", "content": "Answer in JSON."}],
          "response_format": {"type": "json_schema", "json_schema": {"name": "Answer", "strict": true, "schema":
          {"type": "object", "properties": {"unit": {"enum": ["km", "mi"]}, "answer": {"type": "integer"}},
           "required": ["unit", "answer"], "additionalProperties": false}}}})";
  r = api.ChatCompletions(Post("/v1/chat/completions", schema_body));
  ASSERT_EQ(r.status, 200) << r.body;
  const json fitted = json::parse(r.body)["choices"][0];
  const std::string fitted_text = fitted["message"]["content"].get<std::string>();
  if (fitted["finish_reason"] == "stop") {
    const nlohmann::ordered_json v = nlohmann::ordered_json::parse(fitted_text);
    ASSERT_EQ(v.size(), 2u) << fitted_text;
    EXPECT_EQ(v.begin().key(), "unit") << fitted_text;
    EXPECT_TRUE(v["unit"] == "km" || v["unit"] == "mi") << fitted_text;
    EXPECT_TRUE(v["answer"].is_number_integer()) << fitted_text;
  } else {
    ADD_FAILURE() << "the schema's reply did not end in 64 tokens: " << fitted_text;
  }
  std::cout << "trained answer " << choice["message"]["content"] << "; held to the schema: " << fitted_text
            << "\n";

  ChatModel r1("tiny_qwen2", "deepseek_r1_distill.jinja", 96);
  ASSERT_NE(r1.serving, nullptr);
  InferenceApi r1_api(r1.serving.get(), nullptr, nullptr);
  r = r1_api.ChatCompletions(Post("/v1/chat/completions", body(1, true)));
  EXPECT_EQ(r.status, 400) << r.body;
  EXPECT_EQ(json::parse(r.body)["error"]["code"], "unsupported_for_model") << r.body;
}

// Structured outputs served: a random tiny model's sampled replies under a schema
// are prefixes of what the schema accepts (by the automaton, and those that end parse
// and fit: the enum's values, a boolean, a bounded string), while JSON mode's replies
// are not held to it; a bad schema is a 400.
TEST(LlmServingQwen3Test, JsonSchemaRepliesFitTheSchema) {
  ChatModel m("tiny_qwen2", "qwen2_5.jinja", 96, /*context=*/1024);
  ASSERT_NE(m.serving, nullptr);
  InferenceApi api(m.serving.get(), nullptr, nullptr);
  const std::string schema =
      R"({"type": "object", "properties": {"s": {"enum": ["sun", "rain"]}, "w": {"type": "boolean"},
          "n": {"type": "string", "maxLength": 3}}, "required": ["s", "w", "n"], "additionalProperties": false})";
  auto compiled = llm::CompileJsonSchema(schema);
  ASSERT_TRUE(compiled.ok());
  int ended = 0, json_mode_outside = 0;
  for (int seed = 1; seed <= 8; ++seed) {
    auto body = [&](const std::string& format) {
      return R"({"max_tokens": 120, "temperature": 1.0, "seed": )" + std::to_string(seed) +
             R"(, "response_format": )" + format +
             R"(, "messages": [{"role": "user", "content": "Weather?"}]})";
    };
    HttpResponse r = api.ChatCompletions(
        Post("/v1/chat/completions",
             body(R"({"type": "json_schema", "json_schema": {"name": "W", "schema": )" + schema + "}}")));
    ASSERT_EQ(r.status, 200) << r.body;
    const json choice = json::parse(r.body)["choices"][0];
    const std::string text = choice["message"]["content"].get<std::string>();
    llm::JsonSchemaPrefix prefix(*compiled);
    EXPECT_TRUE(prefix.FeedAll(text)) << seed << ": " << text;
    if (choice["finish_reason"] == "stop") {
      ++ended;
      const json v = json::parse(text);
      EXPECT_TRUE(v["s"] == "sun" || v["s"] == "rain") << text;
      EXPECT_TRUE(v["w"].is_boolean()) << text;
      EXPECT_LE(v["n"].get<std::string>().size(), 12u) << text;
    }
    HttpResponse plain =
        api.ChatCompletions(Post("/v1/chat/completions", body(R"({"type": "json_object"})")));
    ASSERT_EQ(plain.status, 200) << plain.body;
    llm::JsonSchemaPrefix plain_prefix(*compiled);
    if (!plain_prefix.FeedAll(json::parse(plain.body)["choices"][0]["message"]["content"].get<std::string>()))
      ++json_mode_outside;
  }
  std::cout << ended << " of 8 schema-held replies ended within 120 tokens\n";
  EXPECT_GT(ended, 0);              // whole replies were checked, not only prefixes
  EXPECT_GT(json_mode_outside, 0);  // the schema is what holds them to it
  HttpResponse bad = api.ChatCompletions(
      Post("/v1/chat/completions", R"({"messages": [{"role": "user", "content": "x"}], "response_format":
      {"type": "json_schema", "json_schema": {"name": "W", "schema": {"type": "object", "properties":
      {"n": {"type": "number", "minimum": 0}}}}}})"));
  EXPECT_EQ(bad.status, 400) << bad.body;
  EXPECT_EQ(json::parse(bad.body)["error"]["param"], "response_format.json_schema.schema") << bad.body;
}

// Qwen2.5's template writes "You are Qwen, created by Alibaba Cloud. ..." when the
// conversation has no system message: served, the prompt has it (and a given system
// message replaces it), as transformers renders it.
TEST(LlmServingQwen3Test, Qwen25WritesItsDefaultSystemMessage) {
  ChatModel m("tiny_qwen2", "qwen2_5.jinja", 96);
  ASSERT_NE(m.serving, nullptr);
  InferenceApi api(m.serving.get(), nullptr, nullptr);
  auto& lm = m.lm;
  ASSERT_TRUE(lm.ok());
  ASSERT_EQ((*lm)->lm().chat_format(), llm::ChatFormat::kChatMl);
  EXPECT_EQ((*lm)->lm().chat_default_system(),
            "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.");
  const std::string turn = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n";
  for (const auto& [messages, prompt] : std::vector<std::pair<std::string, std::string>>{
           {R"([{"role": "user", "content": "hi"}])",
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
            "assistant.<|im_end|>\n" +
                turn},
           {R"([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}])",
            "<|im_start|>system\nBe brief.<|im_end|>\n" + turn}}) {
    HttpResponse r = api.ChatCompletions(
        Post("/v1/chat/completions", R"({"max_tokens": 2, "temperature": 0, "messages": )" + messages + "}"));
    ASSERT_EQ(r.status, 200) << r.body;
    const size_t want = (*lm)->lm().tokenizer().Encode(prompt, {.add_special_tokens = true}).size();
    EXPECT_EQ(json::parse(r.body)["usage"]["prompt_tokens"].get<size_t>(), want) << messages;
  }
}

TEST(LlmServingBertTest, CompletionsOnAClassificationJobAre400) {
  auto serving = std::make_unique<ServingModel>(
      std::make_unique<testing::FakeClassifier>(testing::TestLabels()), "ns/cls");
  testing::FakeClassifier probe(testing::TestLabels());
  ASSERT_TRUE(serving->Install(probe.ExportTrainable(), 1).ok());
  InferenceApi api(serving.get(), nullptr, nullptr);
  HttpResponse r = api.Completions(Post("/v1/completions", R"({"prompt": "dog:"})"));
  EXPECT_EQ(r.status, 400) << r.body;
  EXPECT_NE(r.body.find("/v1/classify"), std::string::npos) << r.body;
  EXPECT_EQ(api.ChatCompletions(
                   Post("/v1/chat/completions", R"({"messages": [{"role": "user", "content": "hi"}]})"))
                .status,
            400);
}

TEST(LlmModelTest, TrainingLowersHeldOutLossAndRoundTripsTheAdapter) {
  auto model = LlmModel::Load(TinyOptions());
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  std::vector<Example> data;
  for (int i = 0; i < 8; ++i) {
    Example e;
    e.text = "word" + std::to_string(i) + ":";
    e.completion = " the same gloss every time";
    data.push_back(e);
  }
  auto before = (*model)->Evaluate(data, 8);
  ASSERT_TRUE(before.ok()) << before.status().ToString();
  EXPECT_EQ(before->num_examples, 8);
  TensorBundle fresh = (*model)->ExportTrainable();
  TrainOptions to;
  to.steps = 15;
  to.batch_size = 4;
  to.learning_rate = 2e-2;
  auto trained = (*model)->Train(data, to);
  ASSERT_TRUE(trained.ok()) << trained.status().ToString();
  EXPECT_EQ(trained->steps, 15);
  auto after = (*model)->Evaluate(data, 8);
  ASSERT_TRUE(after.ok());
  EXPECT_LT(after->mean_loss, before->mean_loss);
  // Importing the fresh adapter restores the starting loss exactly.
  ASSERT_TRUE((*model)->ImportTrainable(fresh).ok());
  EXPECT_DOUBLE_EQ((*(*model)->Evaluate(data, 8)).mean_loss, before->mean_loss);
}

TEST(LlmModelTest, LoadPromptCompletionsNamesTheBadLine) {
  auto path = std::filesystem::temp_directory_path() / ("fedge-llm-jsonl-" + std::to_string(::getpid()));
  {
    std::ofstream f(path);
    f << R"({"prompt": "dog:", "completion": " a canine"})"
      << "\n\n"
      << R"({"prompt": "cat:"})"
      << "\n";
  }
  auto loaded = LoadPromptCompletions(path.string());
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(loaded.status().message().find(":3"), std::string::npos) << loaded.status().ToString();
  {
    std::ofstream f(path);
    f << R"({"prompt": "dog:", "completion": " a canine"})"
      << "\n";
  }
  loaded = LoadPromptCompletions(path.string());
  ASSERT_TRUE(loaded.ok());
  ASSERT_EQ(loaded->size(), 1u);
  EXPECT_EQ((*loaded)[0].text, "dog:");
  EXPECT_EQ((*loaded)[0].completion, " a canine");
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace fedge::agent
