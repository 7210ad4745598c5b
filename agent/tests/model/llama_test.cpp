// Llama / Qwen2 decoder against transformers' LlamaForCausalLM / Qwen2ForCausalLM
// (random-initialised tiny configs from tests/golden/make_llm_goldens.py).
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "fedge/file_util.h"
#include "llama/llama.h"
#include "test_util.h"

namespace fedge::agent::llm {
namespace {

const std::string kGolden = FEDGE_GOLDEN_DIR;

torch::Tensor IdsTensor(const nlohmann::json& rows) {
  std::vector<std::vector<int64_t>> v = rows;
  torch::Tensor t =
      torch::empty({static_cast<int64_t>(v.size()), static_cast<int64_t>(v[0].size())}, torch::kLong);
  for (size_t i = 0; i < v.size(); ++i) {
    for (size_t j = 0; j < v[i].size(); ++j) t[i][j] = v[i][j];
  }
  return t;
}

// |got - want| <= 1e-4 * |want| + 1e-5 element-wise (fp32 "1e-4 relative" with a
// floor for values near zero).
void ExpectClose(const torch::Tensor& got, const std::vector<float>& want) {
  torch::Tensor g = got.contiguous().view(-1);
  ASSERT_EQ(g.numel(), static_cast<int64_t>(want.size()));
  torch::Tensor w = torch::from_blob(const_cast<float*>(want.data()), {g.numel()}, torch::kFloat);
  torch::Tensor err = (g - w).abs() - (1e-4 * w.abs() + 1e-5);
  int64_t worst = err.argmax().item<int64_t>();
  EXPECT_LE(err[worst].item<float>(), 0.0f) << "element " << worst << ": got " << g[worst].item<float>()
                                            << ", want " << want[static_cast<size_t>(worst)];
}

class LlamaGoldenTest : public ::testing::TestWithParam<std::string> {};

TEST_P(LlamaGoldenTest, LogitsAndMaskedLossMatchTransformers) {
  nlohmann::json golden = testing::LlmModelGolden(GetParam());
  auto model = LoadLlama(kGolden + "/" + golden["dir"].get<std::string>());
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  torch::InferenceMode guard;
  torch::Tensor ids = IdsTensor(golden["input_ids"]);
  torch::Tensor logits = (*model)->forward(ids);
  std::vector<int64_t> shape = golden["logits_shape"];
  EXPECT_EQ(std::vector<int64_t>(logits.sizes().begin(), logits.sizes().end()), shape);
  ExpectClose(logits, golden["logits"].get<std::vector<float>>());

  torch::Tensor labels = IdsTensor(golden["labels"]);
  double loss = CausalLmLoss(logits, labels).item<double>();
  double want = golden["loss"];
  EXPECT_NEAR(loss, want, 1e-4 * want);
  // The mask matters: the unmasked loss is a different number.
  EXPECT_GT(std::abs(CausalLmLoss(logits, ids).item<double>() - want), 1e-3);
}

TEST_P(LlamaGoldenTest, KvCacheDecodingMatchesFullForward) {
  nlohmann::json golden = testing::LlmModelGolden(GetParam());
  auto model = LoadLlama(kGolden + "/" + golden["dir"].get<std::string>());
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  torch::InferenceMode guard;
  torch::Tensor ids = IdsTensor(golden["input_ids"]);
  torch::Tensor full = (*model)->forward(ids);
  KvCache cache = KvCache::Allocate((*model)->config(), ids.size(0), ids.size(1));
  // A 4-token prefill, then one token at a time.
  torch::Tensor prefill = (*model)->forward(ids.narrow(1, 0, 4), &cache);
  EXPECT_TRUE(torch::allclose(prefill, full.narrow(1, 0, 4), 1e-5, 1e-5));
  for (int64_t t = 4; t < ids.size(1); ++t) {
    torch::Tensor step = (*model)->forward(ids.narrow(1, t, 1), &cache, /*last_only=*/true);
    EXPECT_TRUE(torch::allclose(step, full.narrow(1, t, 1), 1e-4, 1e-4))
        << "position " << t << ": max |difference| "
        << (step - full.narrow(1, t, 1)).abs().max().item<float>();
  }
  EXPECT_EQ(cache.length, ids.size(1));
}

// tiny_llama32 carries Llama 3.1/3.2's rope_type llama3 (its band edges inside the
// model's frequencies); its logits differ from the unscaled model's by up to 12.
INSTANTIATE_TEST_SUITE_P(Models, LlamaGoldenTest,
                         ::testing::Values("tiny_llama", "tiny_qwen2", "tiny_llama32", "tiny_qwen3",
                                           "tiny_mistral", "tiny_phi3", "tiny_phi3_longrope", "tiny_gemma3",
                                           "tiny_gemma2"));

TEST(LlamaTest, Llama3RopeScalingGivesTransformersInvFreq) {
  nlohmann::json golden = testing::LlmModelGolden("tiny_llama32");
  auto model = LoadLlama(kGolden + "/" + golden["dir"].get<std::string>());
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  EXPECT_EQ((*model)->config().rope_scaling.rope_type, "llama3");
  std::vector<float> want = golden["inv_freq"];
  torch::Tensor got = (*model)->model->rotary().inv_freq();
  ASSERT_EQ(got.numel(), static_cast<int64_t>(want.size()));
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_NEAR(got[static_cast<int64_t>(i)].item<float>(), want[i], 1e-6 * want[i]) << "frequency " << i;
  }
  // The band: the first frequency kept, the last divided by factor 8, one between.
  EXPECT_EQ(want.front(), 1.0f);
  EXPECT_NEAR(want.back(), std::pow(10000.0, -14.0 / 16) / 8, 1e-9);
}

// Phi-3.5-mini's longrope (tiny_phi3_longrope: original context 32, 256 positions):
// the short factors' frequencies and the attention factor as transformers computes
// them, the context capped at 32; the config as transformers 4 writes it (rope_scaling
// "type", the original context at the top) gives the same model; malformed factor
// lists are refused by name. Its logits, cached decoding and greedy ids are in the
// golden suites above (GenerateGoldenTest, LlamaDecodeTest).
TEST(LlamaTest, LongRopeGivesTransformersFrequenciesAndAttentionFactor) {
  nlohmann::json golden = testing::LlmModelGolden("tiny_phi3_longrope");
  const std::string dir = kGolden + "/" + golden["dir"].get<std::string>();
  auto model = LoadLlama(dir);
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  const RopeScaling& r = (*model)->config().rope_scaling;
  EXPECT_EQ(r.rope_type, "longrope");
  EXPECT_EQ(r.original_max_position_embeddings, 32);
  EXPECT_DOUBLE_EQ(r.attention_factor, golden["attention_factor"].get<double>());
  std::vector<float> want = golden["inv_freq"];
  torch::Tensor got = (*model)->model->rotary().inv_freq();
  ASSERT_EQ(got.numel(), static_cast<int64_t>(want.size()));
  for (size_t i = 0; i < want.size(); ++i)
    EXPECT_EQ(got[static_cast<int64_t>(i)].item<float>(), want[i]) << "frequency " << i;
  // cos and sin carry the attention factor; the context ends at the original one.
  auto [cos, sin] = (*model)->model->rotary().CosSin(31, 1);
  EXPECT_NEAR(cos[0][0].item<float>(), static_cast<float>(r.attention_factor) * std::cos(31.0f), 1e-5);
  EXPECT_NEAR(sin[0][3].item<float>(), static_cast<float>(r.attention_factor) * std::sin(31.0f * want[3]),
              1e-6);
  EXPECT_EQ((*model)->config().max_position_embeddings, 32);

  auto text = ReadFile(dir + "/config.json");
  ASSERT_TRUE(text.ok());
  nlohmann::json v5 = nlohmann::json::parse(*text);
  nlohmann::json v4 = v5;
  v4.erase("rope_parameters");
  v4["rope_theta"] = 10000.0;
  v4["rope_scaling"] = {{"type", "longrope"},
                        {"short_factor", v5["rope_parameters"]["short_factor"]},
                        {"long_factor", v5["rope_parameters"]["long_factor"]}};
  auto old = LlamaConfig::FromJson(v4.dump());
  ASSERT_TRUE(old.ok()) << old.status().ToString();
  EXPECT_EQ(old->rope_scaling.short_factor, r.short_factor);
  EXPECT_EQ(old->rope_scaling.long_factor, r.long_factor);
  EXPECT_EQ(old->rope_scaling.original_max_position_embeddings, 32);
  EXPECT_DOUBLE_EQ(old->rope_scaling.attention_factor, r.attention_factor);
  EXPECT_EQ(old->max_position_embeddings, 32);
  // Saved and read back: the same scaling.
  auto round_trip = LlamaConfig::FromJson(old->ToJson());
  ASSERT_TRUE(round_trip.ok()) << round_trip.status().ToString();
  EXPECT_EQ(round_trip->rope_scaling.long_factor, r.long_factor);
  EXPECT_DOUBLE_EQ(round_trip->rope_scaling.attention_factor, r.attention_factor);
  EXPECT_EQ(round_trip->rope_scaling.original_max_position_embeddings, 32);
  EXPECT_EQ(round_trip->max_position_embeddings, 32);
  for (const auto& [key, value, says] : std::vector<std::tuple<std::string, nlohmann::json, std::string>>{
           {"short_factor", {1.0, 2.0}, "short_factor: a list of head_dim / 2 = 4"},
           {"long_factor", nullptr, "long_factor: a list"},
           {"long_factor", {1.0, 2.0, -1.0, 3.0}, "every factor must be a positive number"},
           {"attention_factor", 0, "attention_factor must be a positive number"},
           {"original_max_position_embeddings", -5, "original_max_position_embeddings must be a positive"}}) {
    nlohmann::json bad = v5;
    bad["rope_parameters"][key] = value;
    auto refused = LlamaConfig::FromJson(bad.dump());
    ASSERT_FALSE(refused.ok()) << key;
    EXPECT_NE(refused.status().message().find(says), std::string::npos) << refused.status().message();
  }
}

// A prefill longer than the chunk runs chunk by chunk (48 tokens in chunks of 16, of
// 5 with a last chunk of 3): the same last-position logits as transformers' forward,
// and the cache holds every position.
TEST(LlamaTest, ChunkedPrefillGivesTheWholePromptsLogits) {
  nlohmann::json golden = testing::LlmModelGolden("tiny_llama32");
  auto model = LoadLlama(kGolden + "/" + golden["dir"].get<std::string>());
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  torch::InferenceMode guard;
  torch::Tensor ids = IdsTensor(golden["input_ids"]);
  const int64_t len = ids.size(1), vocab = (*model)->config().vocab_size;
  std::vector<float> want = golden["logits"];
  std::vector<float> last(want.end() - vocab, want.end());
  for (int64_t chunk : {16, 5, 0}) {
    (*model)->set_prefill_chunk(chunk);
    KvCache cache = KvCache::Allocate((*model)->config(), 1, len);
    torch::Tensor logits = (*model)->forward(ids, &cache, /*last_only=*/true);
    EXPECT_EQ(cache.length, len) << "chunk " << chunk;
    ExpectClose(logits, last);
  }
  (*model)->set_prefill_chunk(LlamaForCausalLmImpl::kPrefillChunk);
}

TEST(LlamaTest, RotaryPositionsPastTheTableAreComputedAsTheTableWould) {
  const int64_t table = LlamaRotaryImpl::kRotaryTablePositions;
  LlamaRotary rotary(16, 500000.0, RopeScaling{}, table + 1000);
  EXPECT_EQ(rotary->max_positions(), table + 1000);
  auto [cos_in, sin_in] = rotary->CosSin(table - 8, 8);           // from the table
  auto [cos_across, sin_across] = rotary->CosSin(table - 8, 16);  // computed
  EXPECT_TRUE(torch::allclose(cos_across.narrow(0, 0, 8), cos_in, 1e-6, 1e-6));
  EXPECT_TRUE(torch::allclose(sin_across.narrow(0, 0, 8), sin_in, 1e-6, 1e-6));
  auto [cos_last, sin_last] = rotary->CosSin(table + 999, 1);
  double angle = static_cast<double>(table + 999) * rotary->inv_freq()[1].item<float>();
  EXPECT_NEAR(cos_last[0][1].item<float>(), std::cos(angle), 1e-3);
  EXPECT_THROW(rotary->CosSin(table + 1000, 1), c10::Error);
}

TEST(LlamaTest, ConfigReadsBothRopeLayoutsAndTheScalingsItImplements) {
  auto old_style = LlamaConfig::FromJson(R"({"model_type":"llama","vocab_size":10,"hidden_size":8,
      "intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2,"rope_theta":500000.0,
      "eos_token_id":[3,4]})");
  ASSERT_TRUE(old_style.ok()) << old_style.status().ToString();
  EXPECT_EQ(old_style->rope_theta, 500000.0);
  EXPECT_EQ(old_style->rope_scaling.rope_type, "default");
  EXPECT_EQ(old_style->num_key_value_heads, 2);
  EXPECT_EQ(old_style->head_dim, 4);
  EXPECT_EQ(old_style->eos_token_ids, (std::vector<int64_t>{3, 4}));

  // Llama 3.2's config.json as transformers 4 writes it.
  const std::string base = R"({"model_type":"llama","vocab_size":10,"hidden_size":8,
      "intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2,"max_position_embeddings":131072,)";
  auto llama32 = LlamaConfig::FromJson(base + R"("rope_theta":500000.0,"rope_scaling":{"factor":32.0,
      "high_freq_factor":4.0,"low_freq_factor":1.0,"original_max_position_embeddings":8192,"rope_type":"llama3"}})");
  ASSERT_TRUE(llama32.ok()) << llama32.status().ToString();
  EXPECT_EQ(llama32->rope_scaling.rope_type, "llama3");
  EXPECT_EQ(llama32->rope_scaling.factor, 32.0);
  EXPECT_EQ(llama32->rope_scaling.original_max_position_embeddings, 8192);
  // ToJson writes it back in a form FromJson (and transformers) read.
  auto again = LlamaConfig::FromJson(llama32->ToJson());
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(again->rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(again->rope_scaling.original_max_position_embeddings, 8192);

  auto linear = LlamaConfig::FromJson(base + R"("rope_scaling":{"type":"linear","factor":2.0}})");
  ASSERT_TRUE(linear.ok()) << linear.status().ToString();
  EXPECT_EQ(linear->rope_scaling.rope_type, "linear");
  LlamaRotary plain(4, 10000.0, RopeScaling{}, 16), halved(4, 10000.0, linear->rope_scaling, 16);
  EXPECT_TRUE(torch::allclose(halved->inv_freq(), plain->inv_freq() / 2));

  for (const char* bad :
       {R"("rope_scaling":{"rope_type":"yarn","factor":4.0}})",
        R"("rope_parameters":{"rope_type":"dynamic","factor":2.0,"rope_theta":10000.0}})",
        R"("rope_scaling":{"rope_type":"llama3","factor":8.0}})",
        R"("rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":4,"high_freq_factor":1}})",
        R"("rope_scaling":{"rope_type":"linear","factor":0.0}})",
        R"("rope_parameters":{"rope_type":"default","partial_rotary_factor":0.5}})",
        R"("rope_theta":0.5})"}) {
    auto c = LlamaConfig::FromJson(base + bad);
    EXPECT_EQ(c.status().code(), StatusCode::kInvalidArgument) << bad;
  }
  auto yarn = LlamaConfig::FromJson(base + R"("rope_scaling":{"rope_type":"yarn","factor":4.0}})");
  EXPECT_NE(yarn.status().message().find("rope_type \"yarn\""), std::string::npos) << yarn.status().message();
  EXPECT_EQ(LlamaConfig::FromJson(R"({"model_type":"bert"})").status().code(), StatusCode::kInvalidArgument);
}

// Phi-3 ships q/k/v stacked in self_attn.qkv_proj and gate/up in mlp.gate_up_proj;
// they load split (tiny_phi3's logits above), and a fused tensor of the wrong shape is
// DATA_LOSS naming it.
TEST(LlamaTest, Phi3FusedProjectionsLoadSplitOrSayWhatIsWrong) {
  namespace fs = std::filesystem;
  auto model = LoadLlama(kGolden + "/llm/tiny_phi3");
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  EXPECT_TRUE((*model)->config().fused_projections);
  EXPECT_EQ((*model)->config().max_position_embeddings, 128);
  EXPECT_EQ((*model)->config().sliding_window, 96);
  EXPECT_EQ(SaveLlama(*model, "/nonexistent").code(), StatusCode::kUnimplemented);
  const fs::path dir = fs::temp_directory_path() / ("fedge-phi3-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::copy(kGolden + "/llm/tiny_phi3", dir);
  auto text = ReadFile((dir / "config.json").string());
  ASSERT_TRUE(text.ok());
  nlohmann::json config = nlohmann::json::parse(*text);
  config["num_key_value_heads"] = 4;  // qkv_proj would need 96 rows; it has 64
  std::ofstream(dir / "config.json") << config.dump();
  auto bad = LoadLlama(dir.string());
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(bad.status().message().find(
                "self_attn.qkv_proj.weight' has shape [64, 32], config.json implies [96, 32]"),
            std::string::npos)
      << bad.status().message();
  fs::remove_all(dir);
}

// Mistral v0.1 (sliding_window 4096, 32768 positions): every layer attends through
// the window and the context stays 32768 (until session 41 it was capped at the
// window); null means none.
TEST(LlamaTest, MistralSlidingWindowIsSlidingAttention) {
  const std::string base =
      R"({"model_type":"mistral","vocab_size":10,"hidden_size":8,"intermediate_size":16,)"
      R"("num_hidden_layers":2,"num_attention_heads":2,"max_position_embeddings":32768,)";
  auto v01 = LlamaConfig::FromJson(base + R"("sliding_window":4096})");
  ASSERT_TRUE(v01.ok()) << v01.status().ToString();
  EXPECT_EQ(v01->max_position_embeddings, 32768);
  EXPECT_EQ(v01->sliding_window, 4096);
  EXPECT_TRUE(v01->IsSlidingLayer(0) && v01->IsSlidingLayer(1));
  auto v03 = LlamaConfig::FromJson(base + R"("sliding_window":null})");
  ASSERT_TRUE(v03.ok());
  EXPECT_EQ(v03->max_position_embeddings, 32768);
  EXPECT_FALSE(v03->IsSlidingLayer(0));
  for (const char* bad : {R"("sliding_window":0})", R"("sliding_window":-5})", R"("sliding_window":"4k"})"}) {
    auto c = LlamaConfig::FromJson(base + bad);
    EXPECT_EQ(c.status().code(), StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(c.status().message().find("sliding_window"), std::string::npos);
  }
  auto round_trip = LlamaConfig::FromJson(v01->ToJson());
  ASSERT_TRUE(round_trip.ok());
  EXPECT_EQ(round_trip->max_position_embeddings, 32768);
  EXPECT_EQ(round_trip->sliding_window, 4096);
  EXPECT_EQ(round_trip->sliding_layers, v01->sliding_layers);
}

TEST(LlamaTest, NumParametersCountsTheModel) {
  for (const char* name : {"tiny_llama", "tiny_qwen2", "tiny_llama32", "tiny_qwen3", "tiny_mistral",
                           "tiny_phi3", "tiny_gemma3", "tiny_gemma2"}) {
    auto model = LoadLlama(kGolden + "/llm/" + name);
    ASSERT_TRUE(model.ok());
    int64_t n = 0;
    for (const std::string& tensor : (*model)->CheckpointNames()) {
      n += (*model)->named_parameters()[tensor].numel();
    }
    EXPECT_EQ((*model)->config().NumParameters(), n) << name;
  }
}

// Llama 3.2 3B and Qwen3 1.7B ship as model-0000N-of-0000M.safetensors with
// model.safetensors.index.json (tiny_qwen3_sharded: transformers' save_pretrained with
// max_shard_size 100KB, two shards).
TEST(LlamaTest, ShardedCheckpointLoadsLikeTheSingleFile) {
  nlohmann::json golden = testing::LlmModelGolden("tiny_qwen3");
  const std::string sharded = kGolden + "/" + golden["sharded_dir"].get<std::string>();
  ASSERT_FALSE(std::filesystem::exists(sharded + "/model.safetensors"));
  auto model = LoadLlama(sharded);
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  torch::InferenceMode guard;
  ExpectClose((*model)->forward(IdsTensor(golden["input_ids"])), golden["logits"].get<std::vector<float>>());
}

TEST(LlamaTest, BrokenShardIndexSaysWhatIsWrong) {
  const std::string src = kGolden + "/llm/tiny_qwen3_sharded";
  const std::string dir = ::testing::TempDir() + "/llama_shards";
  auto fresh_copy = [&] {
    std::filesystem::remove_all(dir);
    std::filesystem::copy(src, dir);
  };
  auto index = [&] {
    auto text = ReadFile(dir + "/model.safetensors.index.json");
    EXPECT_TRUE(text.ok());
    return nlohmann::json::parse(*text);
  };
  auto write_index = [&](const nlohmann::json& j) {
    ASSERT_TRUE(WriteFileAtomic(dir + "/model.safetensors.index.json", j.dump()).ok());
  };

  fresh_copy();  // a shard gone
  std::filesystem::remove(dir + "/model-00002-of-00002.safetensors");
  auto missing = LoadLlama(dir);
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound) << missing.status().ToString();
  EXPECT_NE(missing.status().message().find("model-00002-of-00002.safetensors"), std::string::npos);

  fresh_copy();  // a shard outside the directory
  nlohmann::json j = index();
  j["weight_map"]["model.norm.weight"] = "../../etc/passwd";
  write_index(j);
  auto outside = LoadLlama(dir);
  EXPECT_EQ(outside.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(outside.status().message().find("not a file name in the model directory"), std::string::npos);

  fresh_copy();  // the index names only the first shard: the second's tensors are missing
  j = index();
  for (auto& [tensor, file] : j["weight_map"].items()) file = "model-00001-of-00002.safetensors";
  write_index(j);
  auto lacking = LoadLlama(dir);
  EXPECT_EQ(lacking.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(lacking.status().message().find("none of the 1 shards"), std::string::npos)
      << lacking.status().message();

  fresh_copy();  // not JSON
  ASSERT_TRUE(WriteFileAtomic(dir + "/model.safetensors.index.json", "{\"weight_map\": [").ok());
  EXPECT_EQ(LoadLlama(dir).status().code(), StatusCode::kDataLoss);
  std::filesystem::remove_all(dir);
}

TEST(LlamaTest, SaveThenLoadRoundTripsExactly) {
  auto model = LoadLlama(kGolden + "/llm/tiny_qwen2");
  ASSERT_TRUE(model.ok());
  std::string dir = ::testing::TempDir() + "/llama_roundtrip";
  ASSERT_TRUE(SaveLlama(*model, dir).ok());
  auto again = LoadLlama(dir);
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  torch::Tensor ids = torch::tensor({{5, 9, 200, 17}}, torch::kLong);
  torch::InferenceMode guard;
  EXPECT_TRUE(torch::equal((*model)->forward(ids), (*again)->forward(ids)));
  std::filesystem::remove_all(dir);
}

// Whether `p` lies in a mapping of `file` (/proc/self/maps).
bool InMappingOf(const void* p, const std::string& file) {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  const auto addr = reinterpret_cast<uintptr_t>(p);
  while (std::getline(maps, line)) {
    if (line.size() < file.size() || line.compare(line.size() - file.size(), file.size(), file) != 0)
      continue;
    uintptr_t lo = 0, hi = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx", &lo, &hi) == 2 && addr >= lo && addr < hi) return true;
  }
  return false;
}

// LoadLlama maps model.safetensors and the fp32 parameters alias the mapping (no
// copy); writing one in place (a LoRA merge) copies the page for that model only:
// another load of the file and the file itself keep the weights.
TEST(LlamaTest, LoadedWeightsAliasTheMappedFileCopyOnWrite) {
  const std::string dir = ::testing::TempDir() + "/llama_mapped";
  std::filesystem::remove_all(dir);
  std::filesystem::copy(kGolden + "/llm/tiny_llama", dir);
  const std::string file = std::filesystem::canonical(dir + "/model.safetensors").string();
  auto a = LoadLlama(dir);
  auto b = LoadLlama(dir);
  ASSERT_TRUE(a.ok() && b.ok());
  fedge::agent::LoraLinearImpl& q = *(*a)->Projections()[0].second;
  EXPECT_TRUE(InMappingOf(q.weight().data_ptr(), file));
  EXPECT_TRUE(InMappingOf((*a)->model->embed_tokens->weight.data_ptr(), file));
  torch::Tensor ids = torch::tensor({{5, 9, 200, 17}}, torch::kLong);
  torch::InferenceMode guard;
  torch::Tensor before = (*b)->forward(ids);
  q.weight().add_(1.0f);
  EXPECT_FALSE(torch::equal((*a)->forward(ids), before));
  EXPECT_TRUE(torch::equal((*b)->forward(ids), before));
  auto c = LoadLlama(dir);
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE(torch::equal((*c)->forward(ids), before));
  std::filesystem::remove_all(dir);
}

TEST(LlamaTest, MissingTensorIsDataLossNamingIt) {
  auto model = LoadLlama(kGolden + "/llm/tiny_llama");
  ASSERT_TRUE(model.ok());
  TensorBundle weights = (*model)->ExportWeights();
  weights.tensors.erase(weights.tensors.begin() + 3);
  std::string missing = (*model)->CheckpointNames()[3];
  auto bytes = SerializeSafetensors(weights);
  ASSERT_TRUE(bytes.ok());
  auto file = SafetensorsFile::Parse(*bytes);
  ASSERT_TRUE(file.ok());
  Status st = (*model)->LoadWeights(*file);
  EXPECT_EQ(st.code(), StatusCode::kDataLoss);
  EXPECT_NE(st.message().find(missing), std::string::npos) << st.ToString();
}

TEST(LlamaTest, LoraOnAllProjectionsStartsAsIdentityAndTrainsOnlyAdapters) {
  auto model = LoadLlama(kGolden + "/llm/tiny_llama");
  ASSERT_TRUE(model.ok());
  torch::Tensor ids = torch::tensor({{5, 9, 200, 17, 3}}, torch::kLong);
  torch::Tensor before;
  {
    torch::NoGradGuard g;
    before = (*model)->forward(ids);
  }
  (*model)->EnableLora({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
                       {.rank = 4, .alpha = 8, .dropout = 0}, /*seed=*/7);
  int64_t trainable = 0;
  for (const auto& p : (*model)->named_parameters()) {
    if (p.value().requires_grad()) {
      ++trainable;
      EXPECT_NE(p.key().find("lora_"), std::string::npos) << p.key();
    }
  }
  EXPECT_EQ(trainable, 2 * 7 * 2);  // A and B, 7 projections, 2 layers
  torch::Tensor after = (*model)->forward(ids);
  EXPECT_TRUE(torch::allclose(before, after));  // B = 0
  torch::Tensor labels = ids.clone();
  labels.narrow(1, 0, 2).fill_(kIgnoreIndex);
  CausalLmLoss(after, labels).backward();
  auto params = (*model)->named_parameters();
  EXPECT_GT(params["model.layers.1.mlp.down_proj.lora_B"].grad().abs().sum().item<float>(), 0.0f);
  EXPECT_FALSE(params["model.layers.1.mlp.down_proj.weight"].grad().defined());
}

}  // namespace
}  // namespace fedge::agent::llm
