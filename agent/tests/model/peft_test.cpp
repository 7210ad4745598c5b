// PEFT adapter export/import, BERT token classification and LoRA gradients.
// The Python side is tests/golden/make_tiny_bert_goldens.py (a peft-saved
// TOKEN_CLS adapter on a tiny random BERT, its logits and gradients) and
// tests/golden/check_peft.py (peft loading fedge's MiniLM export).
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "bert/bert_token_classifier.h"
#include "fedge/agent/peft_adapter.h"
#include "fedge/agent/text_classifier.h"
#include "fedge/file_util.h"
#include "test_util.h"

namespace fedge::agent {
namespace {

// numpy.allclose-style: |got - want| <= kAtol + kRtol * |want|.
constexpr double kRtol = 1e-4;
constexpr double kAtol = 1e-5;

std::string Golden(const std::string& rel) { return std::string(FEDGE_GOLDEN_DIR) + "/" + rel; }

// The scratch directories FreshDir handed out, removed when the test binary exits
// (each run used to leave five under /tmp).
struct ScratchDirs {
  std::vector<std::string> dirs;
  ~ScratchDirs() {
    for (const std::string& dir : dirs) {
      std::error_code ec;
      std::filesystem::remove_all(dir, ec);
    }
  }
};

std::string FreshDir(const std::string& name) {
  static ScratchDirs scratch;
  std::string dir = ::testing::TempDir() + "/peft_" + name + "_" + std::to_string(::getpid());
  std::filesystem::remove_all(dir);
  scratch.dirs.push_back(dir);
  return dir;
}

void ExpectClose(const std::vector<float>& got, const std::vector<double>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  int bad = 0;
  for (size_t i = 0; i < got.size() && bad < 5; ++i) {
    if (std::abs(got[i] - want[i]) > kAtol + kRtol * std::abs(want[i])) {
      ADD_FAILURE() << what << "[" << i << "]: got " << got[i] << ", want " << want[i];
      ++bad;
    }
  }
}

std::vector<float> Flat(const torch::Tensor& t) {
  torch::Tensor c = t.detach().contiguous();
  return {c.data_ptr<float>(), c.data_ptr<float>() + c.numel()};
}

torch::Tensor LongTensor(const nlohmann::json& rows) {
  std::vector<std::vector<int64_t>> v = rows.get<std::vector<std::vector<int64_t>>>();
  torch::Tensor t =
      torch::empty({static_cast<int64_t>(v.size()), static_cast<int64_t>(v[0].size())}, torch::kLong);
  for (size_t i = 0; i < v.size(); ++i) {
    for (size_t j = 0; j < v[i].size(); ++j) t[static_cast<int64_t>(i)][static_cast<int64_t>(j)] = v[i][j];
  }
  return t;
}

PeftAdapter SyntheticAdapter() {
  PeftAdapter a;
  a.config.r = 2;
  a.config.lora_alpha = 6;
  a.config.lora_dropout = 0.1;
  a.config.target_modules = {"query", "value"};
  a.config.base_model_name_or_path = "some/model";
  a.config.task_type = "TOKEN_CLS";
  a.config.modules_to_save = {"classifier"};
  float x = 0.1f;
  auto next = [&] { return x = std::nextafter(x * 1.37f, 2.0f) - (x > 1 ? 1.0f : 0.0f); };
  for (const char* m :
       {"bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.0.attention.self.value"}) {
    NamedTensor a_t{std::string(m) + ".lora_A", {2, 3}, {}};
    NamedTensor b_t{std::string(m) + ".lora_B", {4, 2}, {}};
    for (int i = 0; i < 6; ++i) a_t.values.push_back(next());
    for (int i = 0; i < 8; ++i) b_t.values.push_back(-next());
    a.tensors.tensors.push_back(a_t);
    a.tensors.tensors.push_back(b_t);
  }
  a.tensors.tensors.push_back(NamedTensor{"classifier.weight", {2, 4}, {1, 2, 3, 4, 5, 6, 7, 8}});
  a.head.tensors.push_back(NamedTensor{"head.weight", {1, 2}, {0.5f, -0.25f}});
  a.labels = {"x", "y"};
  return a;
}

void ExpectSameBundle(const TensorBundle& got, const TensorBundle& want) {
  ASSERT_EQ(got.tensors.size(), want.tensors.size());
  for (const NamedTensor& w : want.tensors) {
    const NamedTensor* g = got.Find(w.name);
    ASSERT_NE(g, nullptr) << w.name;
    EXPECT_EQ(g->shape, w.shape) << w.name;
    EXPECT_EQ(g->values, w.values) << w.name;  // bit-exact: F32 in, F32 out
  }
}

TEST(PeftAdapterTest, WriteThenReadRoundTripsExactly) {
  const PeftAdapter a = SyntheticAdapter();
  const std::string dir = FreshDir("roundtrip");
  ASSERT_TRUE(WritePeftAdapter(dir, a).ok());
  auto b = ReadPeftAdapter(dir);
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_EQ(b->config.r, 2);
  EXPECT_EQ(b->config.lora_alpha, 6);
  EXPECT_DOUBLE_EQ(b->config.lora_dropout, 0.1);
  EXPECT_EQ(b->config.target_modules, a.config.target_modules);
  EXPECT_EQ(b->config.base_model_name_or_path, "some/model");
  EXPECT_EQ(b->config.task_type, "TOKEN_CLS");
  EXPECT_EQ(b->config.modules_to_save, a.config.modules_to_save);
  ExpectSameBundle(b->tensors, a.tensors);
  ExpectSameBundle(b->head, a.head);
  EXPECT_EQ(b->labels, a.labels);

  // peft's names on disk, not fedge's.
  auto file = SafetensorsFile::Read(dir + "/adapter_model.safetensors");
  ASSERT_TRUE(file.ok());
  EXPECT_NE(file->Find("base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight"), nullptr);
  EXPECT_NE(file->Find("base_model.model.classifier.weight"), nullptr);
  auto config = nlohmann::json::parse(*ReadFile(dir + "/adapter_config.json"));
  EXPECT_EQ(config["peft_type"], "LORA");

  // Re-exporting without a head removes the old head file.
  PeftAdapter no_head = a;
  no_head.head.tensors.clear();
  ASSERT_TRUE(WritePeftAdapter(dir, no_head).ok());
  EXPECT_TRUE(ReadPeftAdapter(dir)->head.tensors.empty());
}

TEST(PeftAdapterTest, RejectsWhatFedgeCannotReproduce) {
  PeftAdapter a = SyntheticAdapter();
  PeftAdapter lone_b = a;
  lone_b.tensors.tensors.erase(lone_b.tensors.tensors.begin());  // drop a lora_A
  EXPECT_EQ(WritePeftAdapter(FreshDir("lone"), lone_b).code(), StatusCode::kInvalidArgument);
  PeftAdapter wrong_rank = a;
  wrong_rank.config.r = 3;
  EXPECT_EQ(WritePeftAdapter(FreshDir("rank"), wrong_rank).code(), StatusCode::kInvalidArgument);
  PeftAdapter stray = a;
  stray.config.modules_to_save.clear();  // classifier.weight no longer belongs anywhere
  EXPECT_EQ(WritePeftAdapter(FreshDir("stray"), stray).code(), StatusCode::kInvalidArgument);

  EXPECT_EQ(ReadPeftAdapter(FreshDir("missing")).status().code(), StatusCode::kNotFound);
  const std::string dir = FreshDir("edited");
  ASSERT_TRUE(WritePeftAdapter(dir, a).ok());
  const std::string good = *ReadFile(dir + "/adapter_config.json");
  for (const char* edit :
       {R"({"use_dora": true})", R"({"use_rslora": true})", R"({"target_modules": ".*query"})",
        R"({"rank_pattern": {"query": 4}})", R"({"bias": "all"})", R"({"peft_type": "IA3"})",
        R"({"layers_to_transform": [0]})"}) {
    nlohmann::json j = nlohmann::json::parse(good);
    j.update(nlohmann::json::parse(edit));
    ASSERT_TRUE(WriteFileAtomic(dir + "/adapter_config.json", j.dump()).ok());
    auto r = ReadPeftAdapter(dir);
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << edit;
  }
  ASSERT_TRUE(WriteFileAtomic(dir + "/adapter_config.json", good).ok());
  EXPECT_TRUE(ReadPeftAdapter(dir).ok());
}

ClassifierOptions TinyClassifierOptions() {
  ClassifierOptions o;
  o.model_dir = Golden("tiny_bert/model");
  o.labels = {"a", "b", "c"};
  o.lora_rank = 4;
  o.lora_alpha = 8;
  o.lora_targets = {"query", "value"};
  o.max_seq_len = 16;
  return o;
}

TEST(PeftAdapterTest, TextClassifierExportImportRoundTripsExactly) {
  ClassifierOptions o = TinyClassifierOptions();
  auto src = TextClassifier::Load(o);
  ASSERT_TRUE(src.ok()) << src.status().ToString();
  TensorBundle trained = (*src)->ExportTrainable();
  for (auto& t : trained.tensors) {
    for (size_t i = 0; i < t.values.size(); ++i)
      t.values[i] = std::sin(0.7f * static_cast<float>(i + t.name.size()));
  }
  ASSERT_TRUE((*src)->ImportTrainable(trained).ok());
  const std::string dir = FreshDir("classifier");
  ASSERT_TRUE(ExportPeftAdapter(**src, o, dir).ok());

  // A fresh model configured from the adapter alone (different init seed, no labels).
  auto adapter = ReadPeftAdapter(dir);
  ASSERT_TRUE(adapter.ok()) << adapter.status().ToString();
  EXPECT_EQ(adapter->config.task_type, "FEATURE_EXTRACTION");
  EXPECT_NE(adapter->tensors.Find("encoder.layer.1.attention.self.value.lora_B"), nullptr);
  EXPECT_NE(adapter->head.Find("classifier.weight"), nullptr);
  ClassifierOptions o2;
  o2.model_dir = o.model_dir;
  o2.max_seq_len = 16;
  o2.init_seed = 7;
  ApplyPeftConfig(adapter->config, adapter->labels, &o2);
  EXPECT_EQ(o2.labels, o.labels);
  auto dst = TextClassifier::Load(o2);
  ASSERT_TRUE(dst.ok()) << dst.status().ToString();
  ASSERT_TRUE(ImportPeftAdapter(dir, o2, **dst).ok());
  ExpectSameBundle((*dst)->ExportTrainable(), trained);
  const std::vector<std::string> texts = {"the dog barks", "a green oak leaf"};
  auto p1 = (*src)->Classify(texts);
  auto p2 = (*dst)->Classify(texts);
  ASSERT_TRUE(p1.ok() && p2.ok());
  for (size_t i = 0; i < texts.size(); ++i) EXPECT_EQ(p1->at(i).probabilities, p2->at(i).probabilities);

  // A model built with another rank refuses the adapter and stays as it was.
  ClassifierOptions other = o2;
  other.lora_rank = 2;
  auto mismatched = TextClassifier::Load(other);
  ASSERT_TRUE(mismatched.ok());
  TensorBundle before = (*mismatched)->ExportTrainable();
  EXPECT_EQ(ImportPeftAdapter(dir, other, **mismatched).code(), StatusCode::kInvalidArgument);
  ExpectSameBundle((*mismatched)->ExportTrainable(), before);
  // A token-classification adapter from peft is a different model.
  EXPECT_EQ(ImportPeftAdapter(Golden("tiny_bert/peft_adapter"), o2, **dst).code(),
            StatusCode::kInvalidArgument);
}

TEST(PeftAdapterTest, FrozenAExportCarriesTheJobsAAndImportChecksIt) {
  ClassifierOptions o = TinyClassifierOptions();
  o.lora_frozen_a = true;
  o.lora_targets = {"query", "value", "output.dense"};  // hidden- and intermediate-sized inputs
  auto src = TextClassifier::Load(o);
  ASSERT_TRUE(src.ok()) << src.status().ToString();
  TensorBundle trained = (*src)->ExportTrainable();
  ASSERT_EQ(trained.Find("encoder.layer.0.attention.self.query.lora_A"), nullptr);  // B + head only
  for (auto& t : trained.tensors) {
    for (size_t i = 0; i < t.values.size(); ++i) t.values[i] = std::cos(0.3f * static_cast<float>(i));
  }
  ASSERT_TRUE((*src)->ImportTrainable(trained).ok());
  const std::string dir = FreshDir("frozen");
  ASSERT_TRUE(ExportPeftAdapter(**src, o, dir).ok());
  auto adapter = ReadPeftAdapter(dir);
  ASSERT_TRUE(adapter.ok()) << adapter.status().ToString();
  const NamedTensor* a = adapter->tensors.Find("encoder.layer.1.output.dense.lora_A");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->shape, (std::vector<int64_t>{4, 32}));  // intermediate_size inputs

  // The same outputs from a frozen-A model of the same seed and from an ordinary one.
  const std::vector<std::string> texts = {"the dog barks", "a green oak leaf"};
  auto want = (*src)->Classify(texts);
  ASSERT_TRUE(want.ok());
  ClassifierOptions plain = o;
  plain.lora_frozen_a = false;
  plain.init_seed = 99;
  for (const ClassifierOptions& dst_options : {o, plain}) {
    auto dst = TextClassifier::Load(dst_options);
    ASSERT_TRUE(dst.ok());
    ASSERT_TRUE(ImportPeftAdapter(dir, dst_options, **dst).ok()) << dst_options.lora_frozen_a;
    auto got = (*dst)->Classify(texts);
    ASSERT_TRUE(got.ok());
    for (size_t i = 0; i < texts.size(); ++i) {
      EXPECT_EQ(got->at(i).probabilities, want->at(i).probabilities) << dst_options.lora_frozen_a;
    }
  }
  // Another job's seed means another A: refused, model unchanged.
  ClassifierOptions other_seed = o;
  other_seed.init_seed = 43;
  auto other = TextClassifier::Load(other_seed);
  ASSERT_TRUE(other.ok());
  TensorBundle before = (*other)->ExportTrainable();
  EXPECT_EQ(ImportPeftAdapter(dir, other_seed, **other).code(), StatusCode::kInvalidArgument);
  ExpectSameBundle((*other)->ExportTrainable(), before);
}

class TinyBertGoldenTest : public ::testing::Test {
 protected:
  void SetUp() override {
    golden_ = testing::ReadGolden("tiny_bert/goldens.json");
    ids_ = LongTensor(golden_["input_ids"]);
    mask_ = LongTensor(golden_["attention_mask"]);
    auto model = BertTokenClassifierImpl::Load(Golden("tiny_bert/model"));
    ASSERT_TRUE(model.ok()) << model.status().ToString();
    model_ = BertTokenClassifier(*model);
  }

  nlohmann::json golden_;
  torch::Tensor ids_, mask_;
  BertTokenClassifier model_{nullptr};
};

TEST_F(TinyBertGoldenTest, TokenClassificationLogitsMatchTransformers) {
  torch::NoGradGuard no_grad;
  torch::Tensor logits = model_(ids_, mask_);
  EXPECT_EQ(logits.sizes().vec(), golden_["logits_shape"].get<std::vector<int64_t>>());
  ExpectClose(Flat(logits), golden_["base_logits"].get<std::vector<double>>(), "base_logits");
}

TEST_F(TinyBertGoldenTest, PeftSavedAdapterGivesPeftLogits) {
  auto adapter = ReadPeftAdapter(Golden("tiny_bert/peft_adapter"));
  ASSERT_TRUE(adapter.ok()) << adapter.status().ToString();
  EXPECT_EQ(adapter->config.task_type, "TOKEN_CLS");
  ASSERT_TRUE(model_->ApplyPeftAdapter(*adapter).ok());
  torch::NoGradGuard no_grad;
  std::vector<float> got = Flat(model_(ids_, mask_));
  ExpectClose(got, golden_["adapter_logits"].get<std::vector<double>>(), "adapter_logits");
  // The adapter must matter, or the comparison above proves nothing.
  std::vector<double> base = golden_["base_logits"].get<std::vector<double>>();
  double diff = 0;
  for (size_t i = 0; i < got.size(); ++i) diff = std::max(diff, std::abs(got[i] - base[i]));
  EXPECT_GT(diff, 0.1);

  // Export -> read -> apply to a fresh model reproduces it bit for bit.
  const std::string dir = FreshDir("tokcls");
  PeftAdapter out;
  out.config = adapter->config;
  out.tensors = model_->ExportTrainable();
  ASSERT_TRUE(WritePeftAdapter(dir, out).ok());
  auto again = BertTokenClassifierImpl::Load(Golden("tiny_bert/model"));
  ASSERT_TRUE(again.ok());
  auto back = ReadPeftAdapter(dir);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  ASSERT_TRUE((*again)->ApplyPeftAdapter(*back).ok());
  EXPECT_EQ(Flat((*again)->forward(ids_, mask_)), got);
}

TEST_F(TinyBertGoldenTest, LoraGradientsMatchPeft) {
  auto adapter = ReadPeftAdapter(Golden("tiny_bert/peft_adapter"));
  ASSERT_TRUE(adapter.ok());
  ASSERT_TRUE(model_->ApplyPeftAdapter(*adapter).ok());
  torch::Tensor labels = LongTensor(golden_["labels"]);
  torch::Tensor logits = model_(ids_, mask_);
  torch::Tensor loss = torch::nn::functional::cross_entropy(
      logits.reshape({-1, model_->num_labels()}), labels.reshape({-1}),
      torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-100));
  EXPECT_NEAR(loss.item<double>(), golden_["loss"].get<double>(),
              kAtol + kRtol * golden_["loss"].get<double>());
  loss.backward();
  const auto& grads = golden_["grads"];
  ASSERT_EQ(grads.size(), model_->trainable().size());
  for (const auto& [name, tensor] : model_->trainable()) {
    ASSERT_TRUE(grads.contains(name)) << name;
    ASSERT_TRUE(tensor.grad().defined()) << name;
    ExpectClose(Flat(tensor.grad()), grads[name].get<std::vector<double>>(), "grad of " + name);
  }
  // Only the adapter and the head learn.
  for (const auto& p : model_->bert()->named_parameters()) {
    if (p.key().find("lora_") == std::string::npos) {
      EXPECT_FALSE(p.value().grad().defined()) << p.key();
    }
  }
}

// ---- MiniLM: fedge's export as peft sees it (tests/golden/check_peft.py) ----------

constexpr const char* kMiniLmFixture = "peft_minilm";

ClassifierOptions MiniLmOptions(const std::string& dir) {
  ClassifierOptions o;
  o.model_dir = dir;
  o.labels = {"noun.animal", "noun.plant", "noun.artifact"};
  o.lora_rank = 2;
  o.lora_alpha = 4;
  o.lora_targets = {"query", "value"};
  return o;
}

// The fedge outputs check_peft.py compares peft against; this test keeps them
// true of the committed adapter.
TEST(PeftMiniLmTest, CommittedExportReproducesFedgeOutputs) {
  FEDGE_REQUIRE_MODEL(model_dir);
  const std::string adapter_dir = Golden(std::string(kMiniLmFixture) + "/adapter");
  auto adapter = ReadPeftAdapter(adapter_dir);
  ASSERT_TRUE(adapter.ok()) << adapter.status().ToString();
  ClassifierOptions o = MiniLmOptions(model_dir);
  ApplyPeftConfig(adapter->config, adapter->labels, &o);
  auto c = TextClassifier::Load(o);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  ASSERT_TRUE(ImportPeftAdapter(adapter_dir, o, **c).ok());
  nlohmann::json want = testing::ReadGolden(std::string(kMiniLmFixture) + "/fedge_outputs.json");
  std::vector<std::string> texts = want["texts"].get<std::vector<std::string>>();
  auto probs = (*c)->Classify(texts);
  auto emb = (*c)->Embed(texts);
  ASSERT_TRUE(probs.ok() && emb.ok());
  for (size_t i = 0; i < texts.size(); ++i) {
    ExpectClose(probs->at(i).probabilities, want["probabilities"][i].get<std::vector<double>>(),
                "probabilities");
    ExpectClose(emb->at(i), want["embeddings"][i].get<std::vector<double>>(), "embeddings");
  }
}

// Regenerates the fixture (not run by default):
//   FEDGE_PEFT_FIXTURE_DIR=tests/golden/peft_minilm
//     build/agent/fedge_agent_model_test --gtest_also_run_disabled_tests
//     --gtest_filter=PeftMiniLmTest.DISABLED_WriteFixture
TEST(PeftMiniLmTest, DISABLED_WriteFixture) {
  FEDGE_REQUIRE_MODEL(model_dir);
  const char* out = std::getenv("FEDGE_PEFT_FIXTURE_DIR");
  ASSERT_NE(out, nullptr) << "set FEDGE_PEFT_FIXTURE_DIR";
  ClassifierOptions o = MiniLmOptions(model_dir);
  auto c = TextClassifier::Load(o);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  // A fresh adapter has B = 0 and would not exercise LoRA; give B and the head
  // seeded values of a trained adapter's magnitude.
  TensorBundle b = (*c)->ExportTrainable();
  torch::Generator gen = at::detail::createCPUGenerator(2024);
  for (auto& t : b.tensors) {
    if (t.name.ends_with(".lora_A")) continue;
    torch::Tensor r = torch::randn({static_cast<int64_t>(t.values.size())}, gen) *
                      (t.name.ends_with(".lora_B") ? 0.05 : 0.5);
    t.values = Flat(r);
  }
  ASSERT_TRUE((*c)->ImportTrainable(b).ok());
  PeftAdapter adapter;
  adapter.config = {o.lora_rank,
                    o.lora_alpha,
                    o.lora_dropout,
                    o.lora_targets,
                    "sentence-transformers/all-MiniLM-L6-v2",
                    "FEATURE_EXTRACTION",
                    {}};
  adapter.labels = o.labels;
  for (const auto& t : b.tensors) {
    (t.name.starts_with("classifier.") ? adapter.head : adapter.tensors).tensors.push_back(t);
  }
  ASSERT_TRUE(WritePeftAdapter(std::string(out) + "/adapter", adapter).ok());
  std::vector<std::string> texts = {"dog: a member of the genus Canis that has been domesticated by man",
                                    "oak: a deciduous tree of the genus Quercus",
                                    "hammer: a hand tool with a heavy rigid head and a handle",
                                    "Federated learning trains models without moving the data."};
  auto probs = (*c)->Classify(texts);
  auto emb = (*c)->Embed(texts);
  ASSERT_TRUE(probs.ok() && emb.ok());
  nlohmann::json j;
  j["generator"] =
      "fedge TextClassifier (agent/tests/model/peft_test.cpp, PeftMiniLmTest.DISABLED_WriteFixture)";
  j["texts"] = texts;
  for (size_t i = 0; i < texts.size(); ++i) {
    j["probabilities"].push_back(probs->at(i).probabilities);
    j["embeddings"].push_back(emb->at(i));
  }
  ASSERT_TRUE(WriteFileAtomic(std::string(out) + "/fedge_outputs.json", j.dump() + "\n").ok());
}

}  // namespace
}  // namespace fedge::agent
