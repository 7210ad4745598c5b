// BERT encoder and LoRA layer tests. The golden comparisons run the real
// all-MiniLM-L6-v2 against transformers' outputs (tests/golden/make_goldens.py).
#include "bert/bert.h"

#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include "fedge/agent/wordpiece_tokenizer.h"
#include "peft/lora.h"
#include "test_util.h"

namespace fedge::agent {
namespace {

constexpr double kAbsTol = 1e-4;

BertOptions TinyOptions() {
  BertOptions o;
  o.vocab_size = 50;
  o.hidden_size = 16;
  o.num_hidden_layers = 2;
  o.num_attention_heads = 4;
  o.intermediate_size = 32;
  o.max_position_embeddings = 12;
  return o;
}

// Fills every base parameter with seeded noise so the tiny model is not trivial.
BertModel RandomTinyBert(uint64_t seed) {
  BertModel bert(TinyOptions());
  torch::Generator gen = at::detail::createCPUGenerator(seed);
  torch::NoGradGuard no_grad;
  for (auto& p : bert->parameters()) p.normal_(0.0, 0.5, gen);
  bert->eval();
  return bert;
}

TEST(BertOptionsTest, ParsesConfigAndRejectsUnsupportedModels) {
  auto o = BertOptions::FromConfigJson(
      R"({"model_type":"bert","hidden_act":"gelu","vocab_size":100,"hidden_size":32,
          "num_hidden_layers":2,"num_attention_heads":4,"intermediate_size":64,"layer_norm_eps":1e-5})");
  ASSERT_TRUE(o.ok()) << o.status().ToString();
  EXPECT_EQ(o->hidden_size, 32);
  EXPECT_DOUBLE_EQ(o->layer_norm_eps, 1e-5);
  EXPECT_EQ(BertOptions::FromConfigJson(R"({"model_type":"llama"})").status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(BertOptions::FromConfigJson(
                R"({"hidden_act":"relu","vocab_size":1,"hidden_size":4,"num_hidden_layers":1,
                    "num_attention_heads":1,"intermediate_size":4})")
                .status()
                .code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(BertOptions::FromConfigJson(
                R"({"vocab_size":1,"hidden_size":10,"num_hidden_layers":1,"num_attention_heads":3,
                    "intermediate_size":4})")
                .status()
                .code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(BertOptions::FromConfigJson("{not json").status().code(), StatusCode::kInvalidArgument);
}

TEST(BertModelTest, ParameterNamesFollowHuggingFace) {
  BertModel bert(TinyOptions());
  auto params = bert->named_parameters();
  for (const char* name :
       {"embeddings.word_embeddings.weight", "embeddings.LayerNorm.bias",
        "encoder.layer.1.attention.self.query.weight", "encoder.layer.0.attention.output.dense.bias",
        "encoder.layer.0.attention.output.LayerNorm.weight", "encoder.layer.0.intermediate.dense.weight",
        "encoder.layer.1.output.LayerNorm.bias"}) {
    EXPECT_NE(params.find(name), nullptr) << name;
  }
  for (const auto& p : params) EXPECT_FALSE(p.value().requires_grad()) << p.key();
}

TEST(BertModelTest, PaddingDoesNotChangeRealTokenStates) {
  BertModel bert = RandomTinyBert(1);
  torch::NoGradGuard no_grad;
  torch::Tensor ids = torch::tensor({{2, 7, 9, 3}}, torch::kLong);
  torch::Tensor padded = torch::tensor({{2, 7, 9, 3, 0, 0}}, torch::kLong);
  torch::Tensor h = bert(ids, torch::ones_like(ids));
  torch::Tensor hp = bert(padded, torch::tensor({{1, 1, 1, 1, 0, 0}}, torch::kLong));
  EXPECT_TRUE(torch::allclose(h, hp.slice(1, 0, 4), 1e-5, 1e-5));
}

TEST(LoraLinearTest, ZeroBGivesBaseOutputAndTrainedBChangesIt) {
  LoraLinear layer(8, 6);
  torch::Generator gen = at::detail::createCPUGenerator(7);
  {
    torch::NoGradGuard no_grad;
    layer->weight().normal_(0, 1, gen);
    layer->bias().normal_(0, 1, gen);
  }
  torch::Tensor x = torch::randn({3, 8}, gen);
  torch::Tensor base = layer(x).detach();
  layer->EnableLora({/*rank=*/4, /*alpha=*/8, /*dropout=*/0.0}, gen);
  EXPECT_TRUE(torch::equal(layer(x).detach(), base));
  EXPECT_TRUE(layer->lora_A().requires_grad());
  EXPECT_FALSE(layer->weight().requires_grad());
  // A ~ U(-1/sqrt(in), 1/sqrt(in)) as PEFT's kaiming_uniform(a=sqrt(5)).
  EXPECT_LE(layer->lora_A().abs().max().item<float>(), 1.0 / std::sqrt(8.0));
  EXPECT_GT(layer->lora_A().abs().max().item<float>(), 0.1);
  {
    torch::NoGradGuard no_grad;
    layer->lora_B().fill_(0.5);
  }
  torch::Tensor want = base + torch::linear(torch::linear(x, layer->lora_A()), layer->lora_B()) * 2.0;
  EXPECT_TRUE(torch::allclose(layer(x).detach(), want, 1e-5, 1e-6));
}

TEST(LoraLinearTest, MergeMatchesUnmergedOutputAndUnmergeRestoresWeight) {
  LoraLinear layer(8, 6);
  torch::Generator gen = at::detail::createCPUGenerator(3);
  layer->EnableLora({4, 16, 0.0}, gen);
  torch::Tensor original;
  {
    torch::NoGradGuard no_grad;
    layer->weight().normal_(0, 1, gen);
    layer->lora_B().normal_(0, 1, gen);
    original = layer->weight().clone();
  }
  torch::NoGradGuard no_grad;
  torch::Tensor x = torch::randn({5, 8}, gen);
  torch::Tensor unmerged = layer(x);
  layer->Merge();
  EXPECT_TRUE(layer->merged());
  EXPECT_FALSE(torch::equal(layer->weight(), original));
  EXPECT_TRUE(torch::allclose(layer(x), unmerged, 1e-4, 1e-5));
  layer->Unmerge();
  EXPECT_TRUE(torch::equal(layer->weight(), original));
  EXPECT_TRUE(torch::equal(layer(x), unmerged));
}

TEST(LoraLinearTest, DropoutIsSeededAndOnlyInTraining) {
  LoraLinear layer(8, 6);
  torch::Generator gen = at::detail::createCPUGenerator(5);
  layer->EnableLora({4, 8, 0.5}, gen);
  torch::NoGradGuard no_grad;
  layer->lora_B().normal_(0, 1, gen);
  torch::Tensor x = torch::randn({4, 8}, gen);
  layer->train();
  layer->SeedDropout(11);
  torch::Tensor a = layer(x);
  layer->SeedDropout(11);
  torch::Tensor b = layer(x);
  torch::Tensor c = layer(x);
  EXPECT_TRUE(torch::equal(a, b));
  EXPECT_FALSE(torch::equal(b, c));
  layer->eval();
  EXPECT_TRUE(torch::equal(layer(x), layer(x)));
}

TEST(BertModelTest, FindLinearsUsesPeftSuffixRule) {
  BertModel bert(TinyOptions());
  EXPECT_EQ(bert->FindLinears("query").size(), 2u);
  EXPECT_EQ(bert->FindLinears("dense").size(), 6u);  // attention.output, intermediate, output x 2
  EXPECT_EQ(bert->FindLinears("attention.output.dense").size(), 2u);
  EXPECT_EQ(bert->FindLinears("encoder.layer.1.attention.self.value").size(), 1u);
  EXPECT_TRUE(bert->FindLinears("ery").empty());
}

// The rule peft/lora_targets.h shares with the Llama family (lora_targets_test.cpp).
TEST(BertModelTest, SelectLoraTargetsUsesTheSharedPeftRule) {
  BertModel bert(TinyOptions());
  auto value = bert->SelectLoraTargets({"attention.self.value"});
  ASSERT_TRUE(value.ok()) << value.status().ToString();
  ASSERT_EQ(value->size(), 2u);
  EXPECT_EQ((*value)[0].first, "encoder.layer.0.attention.self.value");
  EXPECT_EQ((*value)[1].first, "encoder.layer.1.attention.self.value");
  // Target by target, each module once: "value" adds nothing after the long form.
  auto both = bert->SelectLoraTargets({"query", "attention.self.value", "value"});
  ASSERT_TRUE(both.ok());
  ASSERT_EQ(both->size(), 4u);
  EXPECT_EQ((*both)[0].first, "encoder.layer.0.attention.self.query");
  EXPECT_EQ((*both)[2].first, "encoder.layer.0.attention.self.value");
  auto dense = bert->SelectLoraTargets({"attention.output.dense"});
  ASSERT_TRUE(dense.ok());
  EXPECT_EQ(dense->size(), 2u);
  EXPECT_EQ(bert->SelectLoraTargets({"self_attn.q_proj"}).status().code(), StatusCode::kInvalidArgument);
}

struct RealBert {
  BertModel bert{nullptr};
  std::optional<WordPieceTokenizer> tokenizer;
};

RealBert LoadRealBert(const std::string& dir) {
  RealBert r;
  auto options = BertOptions::FromConfigFile(dir + "/config.json");
  EXPECT_TRUE(options.ok()) << options.status().ToString();
  auto file = SafetensorsFile::Read(dir + "/model.safetensors");
  EXPECT_TRUE(file.ok()) << file.status().ToString();
  r.bert = BertModel(*options);
  Status st = r.bert->LoadWeights(*file);
  EXPECT_TRUE(st.ok()) << st.ToString();
  r.bert->eval();
  auto tok = WordPieceTokenizer::FromVocabFile(dir + "/vocab.txt");
  EXPECT_TRUE(tok.ok());
  r.tokenizer = *std::move(tok);
  return r;
}

TEST(BertModelGoldenTest, LastHiddenStateMatchesTransformers) {
  FEDGE_REQUIRE_MODEL(dir);
  RealBert r = LoadRealBert(dir);
  torch::NoGradGuard no_grad;
  nlohmann::json golden = testing::ReadGolden("minilm_hidden_states.json");
  ASSERT_GE(golden["sentences"].size(), 10u);
  double worst = 0;
  for (const auto& s : golden["sentences"]) {
    std::vector<int64_t> ids = s["ids"].get<std::vector<int64_t>>();
    ASSERT_EQ(r.tokenizer->Encode(s["text"].get<std::string>(), 0), ids) << s["text"];
    torch::Tensor input = torch::tensor(ids, torch::kLong).unsqueeze(0);
    torch::Tensor hidden = r.bert(input, torch::ones_like(input))[0];
    const auto positions = s["positions"].get<std::vector<int64_t>>();
    for (size_t k = 0; k < positions.size(); ++k) {
      torch::Tensor want = torch::tensor(s["hidden"][k].get<std::vector<float>>());
      double diff = (hidden[positions[k]] - want).abs().max().item<double>();
      worst = std::max(worst, diff);
      EXPECT_LT(diff, kAbsTol) << s["text"] << " position " << positions[k];
    }
  }
  RecordProperty("worst_abs_diff", std::to_string(worst));
}

TEST(BertModelGoldenTest, PaddedBatchEmbeddingsMatchTransformers) {
  FEDGE_REQUIRE_MODEL(dir);
  RealBert r = LoadRealBert(dir);
  torch::NoGradGuard no_grad;
  nlohmann::json golden = testing::ReadGolden("minilm_hidden_states.json");
  std::vector<std::string> texts;
  for (const auto& s : golden["sentences"]) texts.push_back(s["text"]);
  // One padded batch: the mask must keep padding out of attention and pooling.
  EncodedBatch enc = r.tokenizer->EncodeBatch(texts, 512);
  torch::Tensor ids = torch::tensor(enc.input_ids, torch::kLong).view({enc.batch_size, enc.seq_len});
  torch::Tensor mask = torch::tensor(enc.attention_mask, torch::kLong).view({enc.batch_size, enc.seq_len});
  torch::Tensor emb = torch::nn::functional::normalize(MeanPool(r.bert(ids, mask), mask),
                                                       torch::nn::functional::NormalizeFuncOptions().dim(1));
  for (size_t i = 0; i < texts.size(); ++i) {
    torch::Tensor want = torch::tensor(golden["sentences"][i]["embedding"].get<std::vector<float>>());
    EXPECT_LT((emb[static_cast<int64_t>(i)] - want).abs().max().item<double>(), kAbsTol) << texts[i];
  }
}

TEST(BertModelGoldenTest, LoadRejectsMisShapedTensorsNamingThem) {
  FEDGE_REQUIRE_MODEL(dir);
  auto options = BertOptions::FromConfigFile(dir + "/config.json");
  ASSERT_TRUE(options.ok());
  options->intermediate_size = 1000;
  auto file = SafetensorsFile::Read(dir + "/model.safetensors");
  ASSERT_TRUE(file.ok());
  BertModel bert(*options);
  Status st = bert->LoadWeights(*file);
  EXPECT_EQ(st.code(), StatusCode::kDataLoss);
  EXPECT_NE(st.message().find("intermediate.dense.weight"), std::string::npos) << st.ToString();

  options = BertOptions::FromConfigFile(dir + "/config.json");
  options->num_hidden_layers = 7;  // the file has 6 layers
  BertModel deeper(*options);
  st = deeper->LoadWeights(*file);
  EXPECT_EQ(st.code(), StatusCode::kDataLoss);
  EXPECT_NE(st.message().find("encoder.layer.6."), std::string::npos) << st.ToString();
}

}  // namespace
}  // namespace fedge::agent

namespace fedge::agent {
namespace {

TEST(BertModelTest, LoadsCheckpointsWithBertPrefix) {
  BertModel source = RandomTinyBert(9);
  TensorBundle bundle;
  for (const auto& p : source->named_parameters()) {
    torch::Tensor t = p.value().contiguous();
    bundle.tensors.push_back({"bert." + p.key(), t.sizes().vec(),
                              std::vector<float>(t.data_ptr<float>(), t.data_ptr<float>() + t.numel())});
  }
  auto bytes = SerializeSafetensors(bundle);
  ASSERT_TRUE(bytes.ok()) << bytes.status().ToString();
  auto file = SafetensorsFile::Parse(*bytes);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  BertModel loaded(TinyOptions());
  Status st = loaded->LoadWeights(*file);
  ASSERT_TRUE(st.ok()) << st.ToString();
  for (const auto& p : source->named_parameters()) {
    EXPECT_TRUE(torch::equal(p.value(), loaded->named_parameters()[p.key()])) << p.key();
  }
}

}  // namespace
}  // namespace fedge::agent
