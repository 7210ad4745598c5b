// Writes the seed corpus of every fuzz target (bench/fuzz/corpus/<target>/): real
// encodings made by fedge's own writers (a bundle per codec and option, safetensors files
// of every dtype), shrunken copies of the golden tokenizers, the example manifests and a
// handful of valid and malformed HTTP requests. Run once after a format change and commit
// the result:
//   build/fuzz/fuzz_make_seeds bench/fuzz/corpus
// Seeds stay small (a few KB each) so libFuzzer's default -max_len stays small.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "fedge/job_spec.h"
#include "fedge/safetensors.h"
#include "fedge/tensor_bundle.h"

namespace fs = std::filesystem;

namespace {

fs::path g_out;
const std::string kRoot = FEDGE_SOURCE_DIR;

void Write(const std::string& target, const std::string& name, const std::string& bytes) {
  const fs::path dir = g_out / target;
  fs::create_directories(dir);
  std::ofstream(dir / name, std::ios::binary) << bytes;
  std::printf("%-20s %-40s %6zu bytes\n", target.c_str(), name.c_str(), bytes.size());
}

std::string ReadOrDie(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "cannot read %s\n", path.c_str());
    std::exit(1);
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

template <typename T>
T OrDie(fedge::StatusOr<T> v, const char* what) {
  if (!v.ok()) {
    std::fprintf(stderr, "%s: %s\n", what, v.status().ToString().c_str());
    std::exit(1);
  }
  return std::move(*v);
}

// A LoRA-shaped update: two factors, a bias, a scalar and an empty tensor.
fedge::TensorBundle SampleBundle() {
  fedge::TensorBundle b;
  auto add = [&](std::string name, std::vector<int64_t> shape) {
    fedge::NamedTensor t;
    t.name = std::move(name);
    t.shape = std::move(shape);
    const int64_t n = t.NumElements();
    for (int64_t i = 0; i < n; ++i)
      t.values.push_back(0.01f * std::sin(0.7f * static_cast<float>(i)) * (i % 7));
    b.tensors.push_back(std::move(t));
  };
  add("encoder.layer.0.attention.self.query.lora_A", {4, 24});
  add("encoder.layer.0.attention.self.query.lora_B", {24, 4});
  add("classifier.bias", {5});
  add("scale", {});
  add("empty", {0, 3});
  return b;
}

void BundleSeeds() {
  const fedge::TensorBundle bundle = SampleBundle();
  struct Variant {
    const char* name;
    fedge::Codec codec;
    bool zstd;
    double topk;
    bool stochastic;
    int block;
  };
  const Variant variants[] = {
      {"fp32", fedge::Codec::kFp32, false, 0, false, 64},
      {"fp32_zstd", fedge::Codec::kFp32, true, 0, false, 64},
      {"fp16", fedge::Codec::kFp16, false, 0, false, 64},
      {"bf16_zstd", fedge::Codec::kBf16, true, 0, false, 64},
      {"int8", fedge::Codec::kInt8, false, 0, false, 16},
      {"int8_zstd", fedge::Codec::kInt8, true, 0, false, 64},
      {"int4", fedge::Codec::kInt4, false, 0, false, 8},
      {"int4_stochastic_zstd", fedge::Codec::kInt4, true, 0, true, 32},
      {"int8_topk", fedge::Codec::kInt8, false, 0.1, false, 4},
      {"fp16_topk_zstd", fedge::Codec::kFp16, true, 0.25, false, 64},
      {"fp32_topk", fedge::Codec::kFp32, false, 0.05, false, 64},
  };
  for (const Variant& v : variants) {
    fedge::EncodeOptions o;
    o.codec = v.codec;
    o.zstd = v.zstd;
    o.topk_fraction = v.topk;
    o.stochastic_rounding = v.stochastic;
    o.block_size = v.block;
    o.seed = 7;
    Write("bundle_decode", std::string(v.name) + ".fbundle", OrDie(fedge::EncodeBundle(bundle, o), v.name));
  }
  fedge::TensorBundle one;
  one.tensors.push_back({"x", {2}, {1.5f, -2.0f}});
  fedge::EncodeOptions plain;
  plain.zstd = false;
  Write("bundle_decode", "tiny_fp32.fbundle", OrDie(fedge::EncodeBundle(one, plain), "tiny"));
  Write("bundle_decode", "empty_bundle.fbundle",
        OrDie(fedge::EncodeBundle(fedge::TensorBundle{}, plain), "empty"));
}

// A safetensors file with one tensor per dtype, written by hand (the fedge writer only
// writes F32). Offsets are contiguous and cover the data exactly.
std::string AllDtypesSafetensors() {
  struct T {
    const char* name;
    const char* dtype;
    std::vector<int64_t> shape;
    size_t width;
  };
  const T tensors[] = {{"a_f64", "F64", {2}, 8},   {"b_f32", "F32", {2, 2}, 4}, {"c_f16", "F16", {3}, 2},
                       {"d_bf16", "BF16", {3}, 2}, {"e_i64", "I64", {1, 2}, 8}, {"f_i32", "I32", {1}, 4},
                       {"g_i16", "I16", {2}, 2},   {"h_i8", "I8", {4}, 1},      {"i_u8", "U8", {}, 1},
                       {"j_bool", "BOOL", {2}, 1}, {"k_empty", "F32", {0}, 4}};
  nlohmann::json header = nlohmann::json::object();
  header["__metadata__"] = {{"format", "pt"}};
  std::string data;
  for (const T& t : tensors) {
    size_t n = 1;
    for (int64_t d : t.shape) n *= static_cast<size_t>(d);
    const size_t begin = data.size();
    for (size_t i = 0; i < n * t.width; ++i) data.push_back(static_cast<char>((i * 37 + 11) & 0x3F));
    header[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {begin, data.size()}}};
  }
  std::string h = header.dump();
  while (h.size() % 8 != 0) h += ' ';
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((static_cast<uint64_t>(h.size()) >> (8 * i)) & 0xFF);
  return out + h + data;
}

void SafetensorsSeeds() {
  fedge::TensorBundle b = SampleBundle();
  Write("safetensors_parse", "fedge_writer.safetensors",
        OrDie(fedge::SerializeSafetensors(b, {{"fedge.round", "3"}, {"format", "pt"}}), "serialize"));
  Write("safetensors_parse", "all_dtypes.safetensors", AllDtypesSafetensors());
  Write("safetensors_parse", "tiny_bert_peft_adapter.safetensors",
        ReadOrDie(kRoot + "/tests/golden/tiny_bert/peft_adapter/adapter_model.safetensors"));
  Write("safetensors_parse", "minilm_head.safetensors",
        ReadOrDie(kRoot + "/tests/golden/peft_minilm/adapter/fedge_head.safetensors"));
}

// A golden tokenizer.json cut down to the byte alphabet plus the tokens of its first
// `keep` merges (ids unchanged), so a seed is a few KB instead of 25-52 KB.
std::string ShrinkTokenizer(const std::string& path, size_t keep) {
  nlohmann::json j = nlohmann::json::parse(ReadOrDie(path));
  nlohmann::json& model = j["model"];
  std::set<std::string> used;
  nlohmann::json merges = nlohmann::json::array();
  for (size_t i = 0; i < keep && i < model["merges"].size(); ++i) {
    const nlohmann::json& m = model["merges"][i];
    std::string a, b;
    if (m.is_string()) {
      const std::string s = m.get<std::string>();
      a = s.substr(0, s.find(' '));
      b = s.substr(s.find(' ') + 1);
    } else {
      a = m[0].get<std::string>();
      b = m[1].get<std::string>();
    }
    used.insert({a, b, a + b});
    merges.push_back(m);
  }
  nlohmann::json vocab = nlohmann::json::object();
  for (auto it = model["vocab"].begin(); it != model["vocab"].end(); ++it) {
    // Single code point tokens are the byte alphabet.
    const std::string& tok = it.key();
    const size_t cps = std::count_if(tok.begin(), tok.end(), [](char c) { return (c & 0xC0) != 0x80; });
    // and "<...>" tokens the special and <0xXX> byte-fallback ones a tokenizer needs.
    if (cps == 1 || used.count(tok) || tok[0] == '<') vocab[tok] = it.value();
  }
  model["vocab"] = vocab;
  model["merges"] = merges;
  return j.dump();
}

void TokenizerSeeds() {
  for (const char* name : {"tok_gpt2", "tok_llama3", "tok_qwen2", "tok_smollm2", "tok_llama2",
                           "tok_llama2_metaspace", "tok_metaspace_split", "tok_gemma"}) {
    Write("bpe_json", std::string(name) + "_shrunk.json",
          ShrinkTokenizer(kRoot + "/tests/golden/llm/" + name + "/tokenizer.json", 40));
  }
  // Merges as [a, b] pairs, ignore_merges, an added token with lstrip/rstrip.
  Write("bpe_json", "pairs_ignore_merges.json",
        R"({"model":{"type":"BPE","ignore_merges":true,"vocab":{"a":0,"b":1,"ab":2,"Ġ":3},)"
        R"("merges":[["a","b"]]},"added_tokens":[{"id":4,"content":"<s>","special":true,"lstrip":true,)"
        R"("rstrip":true}],"pre_tokenizer":{"type":"ByteLevel","add_prefix_space":true,"use_regex":false},)"
        R"("decoder":{"type":"ByteLevel"}})");

  const char* texts[] = {
      "\x00Hello world! It's 2024, isn't it?",
      "\x01<|im_start|>user\nWhat's the capital of France?<|im_end|>\n<|im_start|>assistant\n",
      "\x02 12345 67890 numbers and   spaces\t\ttabs\r\n\r\nlines",
      "\x03na\xc3\xafve caf\xc3\xa9 \xe6\x9d\xb1\xe4\xba\xac \xf0\x9f\x99\x82 <|endoftext|>",
      "\x00\xff\xfe invalid \xc3 utf-8 \xed\xa0\x80 surrogate",
      "\x01 'S 'LL 'd I'M shouting'VE",
  };
  int i = 0;
  for (const char* t : texts) {
    std::string s(t, std::strlen(t + 1) + 1);
    Write("bpe_encode", "text_" + std::to_string(i++), s);
  }

  // NFC: decomposed accents, Hangul jamo, marks out of order, exclusions, singletons,
  // a mark after a stray byte, a leading mark, an added token.
  const char* nfc_texts[] = {
      "cafe\xcc\x81 re\xcc\x81sume\xcc\x81 A\xcc\x8a \xe2\x84\xab",
      "\xe1\x84\x80\xe1\x85\xa1\xe1\x86\xa8 \xed\x95\x9c\xea\xb5\xad\xec\x96\xb4",
      "a\xcc\xa3\xcc\x82 a\xcc\x82\xcc\xa3 \xe1\xb8\x8b\xcc\xa3",
      "\xe0\xa5\x98 \xe0\xa4\x95\xe0\xa4\xbc \xcd\x84 \xe2\x84\xa6",
      "e\xff\xcc\x81 \xcc\x81leading \xed\xa0\x80 \xc3",
      "e\xcc\x81<|im_end|>\xcc\x81 plain ascii",
  };
  i = 0;
  for (const char* t : nfc_texts) Write("bpe_nfc", "text_" + std::to_string(i++), t);

  // SentencePiece-style: the first byte picks the layout (0..3). Spaces in runs and at
  // the ends, characters the vocabulary lacks (byte fallback), stray bytes, a marker
  // spelled in the text, added tokens.
  const char* spm_texts[] = {
      "\x00Hello world  two  spaces ",
      "\x01 leading space and \xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\x99\x82",
      "\x02split\xe2\x96\x81\xe2\x96\x81on markers",
      "\x03"
      "caf\xc3\xa9 \xff\xfe stray \xc3",
      "\x01<|im_start|>user\nhi<|im_end|>\n<s> after",
      "\x00</s>x<unk>y",
  };
  i = 0;
  for (const char* t : spm_texts) {
    std::string s(t, std::strlen(t + 1) + 1);
    Write("bpe_spm", "text_" + std::to_string(i++), s);
  }
}

void WordPieceSeeds() {
  const std::string vocab = ReadOrDie(kRoot + "/tests/golden/tiny_bert/model/vocab.txt");
  Write("wordpiece_vocab", "tiny_bert_vocab.txt", vocab);
  std::string crlf;
  for (char c : vocab) {
    if (c == '\n') crlf += '\r';
    crlf += c;
  }
  Write("wordpiece_vocab", "tiny_bert_vocab_crlf.txt", crlf);
  Write("wordpiece_vocab", "minimal_vocab.txt",
        "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nun\n##aff\n##able\n##s\nthe\n\xe6\x9d\xb1\n,\n.\n##\n");

  const char* texts[] = {
      "The quick brown fox jumps over the lazy dog.",
      "dog: a member of the genus Canis (probably descended from the common wolf)",
      "Na\xc3\xafve Caf\xc3\xa9 \xc3\x85NGSTR\xc3\x96M \xe1\xba\x9e stra\xc3\x9f"
      "e",
      "\xe6\x9d\xb1\xe4\xba\xac\xe9\x83\xbd\xe3\x81\xab\xe4\xbd\x8f\xe3\x82\x93\xe3\x81\xa7\xe3\x81\x84\xe3"
      "\x81\xbe\xe3\x81\x99",
      "\xed\x95\x9c\xea\xb5\xad\xec\x96\xb4 \xd0\x9f\xd1\x80\xd0\xb8\xd0\xb2\xd0\xb5\xd1\x82 "
      "\xd8\xa7\xd9\x84\xd8\xb9\xd8\xb1\xd8\xa8\xd9\x8a\xd8\xa9",
      "ctrl\x01\x02\x7f chars\t\r\nand \xef\xbf\xbd replacement \xe2\x80\x8b zero-width",
      "supercalifragilisticexpialidocioussupercalifragilisticexpialidocioussupercalifragilisticexpialidocious"
      "x",
      "\xff\xfe\xc3 broken \xed\xa0\x80 utf-8 \xf4\x90\x80\x80",
      "[CLS] [SEP] [UNK] ##s don't!!! e.g. U.S.A. 3.14159",
  };
  int i = 0;
  for (const char* t : texts) Write("wordpiece_encode", "text_" + std::to_string(i++), t);
}

void JobSpecSeeds() {
  for (const char* name : {"quickstart.yaml", "generative.yaml"}) {
    const std::string yaml = ReadOrDie(kRoot + "/deploy/examples/" + name);
    Write("job_spec", name, yaml);
    // Every field explicit: the resolved manifest the local runner writes.
    Write("job_spec", std::string("resolved_") + name,
          fedge::JobSpecToYaml(OrDie(fedge::ParseJobSpec(yaml), name)));
  }
  Write("job_spec", "minimal.json",
        R"({"apiVersion":"fedge.io/v1alpha1","kind":"FederatedTrainingJob","metadata":{"name":"j"},)"
        R"("spec":{"model":{"path":"/m","labels":["a","b"]},"data":{"path":"/d"},)"
        R"("agents":{"nodeSelector":{"fedge.io/edge":"true"},"minAgents":3},)"
        R"("strategy":{"name":"krum","byzantineClients":0}}})");
  Write("job_spec", "anchors_tags.yaml",
        "apiVersion: fedge.io/v1alpha1\nkind: FederatedTrainingJob\nmetadata: {name: &n x1, namespace: ns}\n"
        "spec:\n  model: {path: !!str 123, labels: [*n, 'b', \"c\\u00e9\"], maxSeqLen: 40}\n"
        "  data: {path: \"/data\\tx\"}\n  rounds: {learningRate: .5e-3, seed: 18446744073709551615, mode: "
        "async,"
        " asyncBufferSize: 1}\n  compression: {codec: int4, stochasticRounding: true, topKFraction: 1e-4}\n");
}

void HttpSeeds() {
  const char* requests[][2] = {
      {"get_healthz", "GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"},
      {"post_classify",
       "POST /v1/classify HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
       "X-Request-Id: 42\r\nContent-Length: 17\r\n\r\n{\"text\":\"a dog\"}\n"},
      {"post_chunked",
       "POST /v1/classify HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
       "5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\n"},
      {"expect_continue",
       "POST /v1/classify HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
       "Content-Length: 4\r\n\r\nabcd"},
      {"get_search_query", "GET /v1/search?q=caf%C3%A9&n=10&flag&=x&a=%2B%26 HTTP/1.1\r\nHost: a\r\n\r\n"},
      {"pipelined",
       "GET /healthz HTTP/1.1\r\nHost: a\r\n\r\nPOST /v1/classify HTTP/1.1\r\nHost: a\r\n"
       "Content-Length: 2\r\n\r\nhiGET /v1/search?x=1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"},
      {"http10", "GET /healthz HTTP/1.0\r\n\r\n"},
      {"stream", "GET /v1/stream HTTP/1.1\r\nHost: a\r\nAccept: text/event-stream\r\n\r\n"},
      {"bad_escape_path", "GET /v1/%zz HTTP/1.1\r\nHost: a\r\n\r\n"},
      {"bad_escape_query", "GET /v1/search?q=%4 HTTP/1.1\r\nHost: a\r\n\r\n"},
      {"method_not_allowed", "DELETE /v1/classify HTTP/1.1\r\nHost: a\r\n\r\n"},
      {"not_found", "GET /nope HTTP/1.1\r\nHost: a\r\n\r\n"},
      {"too_large_declared", "POST /v1/classify HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999\r\n\r\nx"},
      {"cl_and_te",
       "POST /v1/classify HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
       "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"},
      {"bad_chunk_size",
       "POST /v1/classify HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
       "ffffffffffffffffff\r\nx\r\n"},
      {"obs_fold_header", "GET /healthz HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n"},
      {"bare_lf", "GET /healthz HTTP/1.1\nHost: a\n\n"},
      {"truncated_body", "POST /v1/classify HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc"},
      {"garbage", "\x16\x03\x01\x02\x01\xfc\x03\x03 TLS hello"},
      {"absolute_target", "GET http://a/healthz?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"},
  };
  for (const auto& r : requests) Write("http_request", r[0], r[1]);

  const char* queries[] = {"q=caf%C3%A9&n=10", "a=1&a=2&&b", "%zz=1", "x=%4", "=&=&%00=%FF", "a+b=c%20d"};
  int i = 0;
  for (const char* q : queries) Write("http_query", "query_" + std::to_string(i++), q);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUT_DIR   (writes OUT_DIR/<target>/<seed>)\n", argv[0]);
    return 2;
  }
  g_out = argv[1];
  BundleSeeds();
  SafetensorsSeeds();
  TokenizerSeeds();
  WordPieceSeeds();
  JobSpecSeeds();
  HttpSeeds();
  return 0;
}
