#include "fedge/safetensors.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <bit>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "fedge/file_util.h"

namespace fedge {
namespace {

// 8-byte little-endian header size, header, data.
std::string MakeFile(const std::string& header, const std::string& data, uint64_t declared = UINT64_MAX) {
  const uint64_t n = declared == UINT64_MAX ? header.size() : declared;
  std::string out;
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xFF));
  return out + header + data;
}

std::string F32Bytes(const std::vector<float>& v) {
  std::string s;
  for (float f : v) {
    const uint32_t b = std::bit_cast<uint32_t>(f);
    for (int i = 0; i < 4; ++i) s.push_back(static_cast<char>((b >> (8 * i)) & 0xFF));
  }
  return s;
}

void ExpectRejected(const std::string& file, const std::string& reason) {
  auto st = SafetensorsFile::Parse(file);
  ASSERT_FALSE(st.ok()) << "accepted a file that should fail with: " << reason;
  EXPECT_EQ(st.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.status().message().find(reason), std::string::npos)
      << "message \"" << st.status().message() << "\" lacks \"" << reason << "\"";
}

const std::string kTwoTensors =
    R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F16","shape":[1,2],"data_offsets":[8,12]}})";
const std::string kTwoTensorsData =
    F32Bytes({1.5f, -2.0f}) + std::string("\x00\x3c\x00\xc0", 4);  // f16 1.0, -2.0

TEST(SafetensorsTest, ParsesValidFile) {
  auto st = SafetensorsFile::Parse(MakeFile(kTwoTensors, kTwoTensorsData));
  ASSERT_TRUE(st.ok()) << st.status().ToString();
  ASSERT_EQ(st->tensors().size(), 2u);
  const StTensorView* b = st->Find("b");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->dtype, StDType::kF16);
  EXPECT_EQ(b->shape, (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(*SafetensorsFile::ToFloat32(*b), (std::vector<float>{1.0f, -2.0f}));
  EXPECT_EQ(*SafetensorsFile::ToFloat32(*st->Find("a")), (std::vector<float>{1.5f, -2.0f}));
  EXPECT_EQ(st->Find("c"), nullptr);
  EXPECT_TRUE(st->metadata().empty());
}

TEST(SafetensorsTest, AcceptsPaddingMetadataEmptyTensorsAndUnknownFields) {
  const std::string header =
      R"({"__metadata__":{"format":"pt"},"e":{"dtype":"I8","shape":[0,3],"data_offsets":[0,0]},)"
      R"("s":{"dtype":"BF16","shape":[],"data_offsets":[0,2],"extra":1}}     )";
  auto st = SafetensorsFile::Parse(MakeFile(header, std::string("\x80\x3f", 2)));
  ASSERT_TRUE(st.ok()) << st.status().ToString();
  EXPECT_EQ(st->metadata().at("format"), "pt");
  EXPECT_EQ(*SafetensorsFile::ToFloat32(*st->Find("s")), std::vector<float>{1.0f});
  EXPECT_EQ(st->Find("e")->data.size(), 0u);
  EXPECT_TRUE(SafetensorsFile::Parse(MakeFile("{}", "")).ok());
}

TEST(SafetensorsTest, KnowsEveryDtypeSize) {
  const std::vector<std::pair<std::string, size_t>> want = {{"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2},
                                                            {"I64", 8}, {"I32", 4}, {"I16", 2}, {"I8", 1},
                                                            {"U8", 1},  {"BOOL", 1}};
  for (const auto& [name, size] : want) {
    const std::string header = R"({"t":{"dtype":")" + name + R"(","shape":[3],"data_offsets":[0,)" +
                               std::to_string(3 * size) + "]}}";
    auto st = SafetensorsFile::Parse(MakeFile(header, std::string(3 * size, '\0')));
    ASSERT_TRUE(st.ok()) << name << ": " << st.status().ToString();
    EXPECT_EQ(StDTypeName(st->tensors()[0].dtype), name);
    EXPECT_EQ(StDTypeSize(st->tensors()[0].dtype), size);
  }
}

TEST(SafetensorsTest, RejectsEachSpecViolation) {
  const std::string t = R"("t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  const std::string d8(8, '\0');
  ExpectRejected("abc", "shorter than the 8-byte header size");
  ExpectRejected(MakeFile("{}", "", 100'000'001), "exceeds the 100 MB limit");
  ExpectRejected(MakeFile("{}", "", 50), "runs past the end");
  ExpectRejected(MakeFile(" {}", ""), "does not start with '{'");
  ExpectRejected(MakeFile("[1,2]", ""), "does not start with '{'");
  ExpectRejected(MakeFile("{\"t\":", ""), "not valid JSON");
  ExpectRejected(MakeFile("{} x", ""), "not valid JSON");
  ExpectRejected(MakeFile(std::string("{\"\xff\":1}"), ""), "not valid JSON");  // not UTF-8
  ExpectRejected(MakeFile("{" + t + "," + t + "}", d8), "duplicate key \"t\"");
  ExpectRejected(MakeFile(R"({"__metadata__":[1]})", ""), "__metadata__ must be an object");
  ExpectRejected(MakeFile(R"({"__metadata__":{"k":1}})", ""), "__metadata__ value for \"k\" is not a string");
  ExpectRejected(MakeFile(R"({"t":[1]})", ""), "entry is not an object");
  ExpectRejected(MakeFile(R"({"t":{"shape":[2],"data_offsets":[0,8]}})", d8), "lacks \"dtype\"");
  ExpectRejected(MakeFile(R"({"t":{"dtype":"F32","data_offsets":[0,8]}})", d8), "lacks \"shape\"");
  ExpectRejected(MakeFile(R"({"t":{"dtype":"F32","shape":[2]}})", d8), "lacks \"data_offsets\"");
  ExpectRejected(MakeFile(R"({"t":{"dtype":"F8_E4M3","shape":[8],"data_offsets":[0,8]}})", d8),
                 "unsupported dtype \"F8_E4M3\"");
  ExpectRejected(MakeFile(R"({"t":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", d8),
                 "shape must be an array of non-negative integers");
  ExpectRejected(MakeFile(R"({"t":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", d8),
                 "shape must be an array of non-negative integers");
  ExpectRejected(MakeFile(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", d8),
                 "data_offsets must be");
  ExpectRejected(MakeFile(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", d8), "begin > end");
  ExpectRejected(MakeFile(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", "1234"),
                 "reach past the data section");
  ExpectRejected(MakeFile(R"({"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", d8),
                 "needs 12 bytes but data_offsets span 8");
  ExpectRejected(
      MakeFile(R"({"t":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", d8),
      "overflows the element count");
  ExpectRejected(MakeFile(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                          R"("u":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                          std::string(12, '\0')),
                 "overlap tensor \"t\"");
  ExpectRejected(
      MakeFile(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", std::string(12, '\0')),
      "gap of 4 bytes before tensor \"t\"");
  ExpectRejected(MakeFile("{" + t + "}", d8 + "xx"), "trailing bytes");
}

TEST(SafetensorsTest, ConvertsFloatDtypesAndRefusesOthers) {
  std::string f64;
  for (double v : {0.25, -3.0}) {
    const uint64_t b = std::bit_cast<uint64_t>(v);
    for (int i = 0; i < 8; ++i) f64.push_back(static_cast<char>((b >> (8 * i)) & 0xFF));
  }
  auto st = SafetensorsFile::Parse(MakeFile(
      R"({"d":{"dtype":"F64","shape":[2],"data_offsets":[0,16]},"i":{"dtype":"I32","shape":[1],"data_offsets":[16,20]}})",
      f64 + std::string(4, '\1')));
  ASSERT_TRUE(st.ok()) << st.status().ToString();
  EXPECT_EQ(*SafetensorsFile::ToFloat32(*st->Find("d")), (std::vector<float>{0.25f, -3.0f}));
  auto i = SafetensorsFile::ToFloat32(*st->Find("i"));
  ASSERT_FALSE(i.ok());
  EXPECT_NE(i.status().message().find("dtype I32"), std::string::npos);
  auto strict = SafetensorsToBundle(*st);
  ASSERT_FALSE(strict.ok());
  EXPECT_NE(strict.status().message().find("\"i\""), std::string::npos) << strict.status().message();
  auto lenient = SafetensorsToBundle(*st, /*skip_non_float=*/true);
  ASSERT_TRUE(lenient.ok());
  ASSERT_EQ(lenient->tensors.size(), 1u);
  EXPECT_EQ(lenient->tensors[0].name, "d");

  std::string big;
  const uint64_t b = std::bit_cast<uint64_t>(1e300);
  for (int k = 0; k < 8; ++k) big.push_back(static_cast<char>((b >> (8 * k)) & 0xFF));
  auto huge =
      SafetensorsFile::Parse(MakeFile(R"({"d":{"dtype":"F64","shape":[],"data_offsets":[0,8]}})", big));
  ASSERT_TRUE(huge.ok());
  EXPECT_NE(SafetensorsFile::ToFloat32(huge->tensors()[0]).status().message().find("outside float32"),
            std::string::npos);
}

// Regression (bench/fuzz, fuzz_safetensors_parse): ToFloat32 of an empty F32 tensor
// called memcpy(out.data(), p, 0) with out.data() == nullptr, which is undefined
// behaviour; a FEDGE_SANITIZE=undefined build stopped here. Replay:
// bench/fuzz/crashes/safetensors_parse/.
TEST(SafetensorsTest, ConvertsEmptyF32TensorWithoutNullMemcpy) {
  auto st = SafetensorsFile::Parse(MakeFile(
      R"({"e":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]},"s":{"dtype":"F32","shape":[],"data_offsets":[0,4]}})",
      F32Bytes({2.5f})));
  ASSERT_TRUE(st.ok()) << st.status().ToString();
  auto empty = SafetensorsFile::ToFloat32(*st->Find("e"));
  ASSERT_TRUE(empty.ok()) << empty.status().ToString();
  EXPECT_TRUE(empty->empty());
  auto bundle = SafetensorsToBundle(*st);
  ASSERT_TRUE(bundle.ok()) << bundle.status().ToString();
  ASSERT_NE(bundle->Find("e"), nullptr);
  EXPECT_EQ(bundle->Find("e")->shape, (std::vector<int64_t>{0, 3}));
  EXPECT_TRUE(bundle->Find("e")->values.empty());
  EXPECT_EQ(bundle->Find("s")->values, std::vector<float>{2.5f});
}

TEST(SafetensorsTest, WriterMatchesPythonLayoutAndRoundTrips) {
  TensorBundle b;
  b.tensors.push_back({"z.weight", {2, 2}, {1, 2, 3, 4}});
  b.tensors.push_back({"a.bias", {3}, {-1, 0.5f, 7}});
  auto bytes = SerializeSafetensors(b, {{"format", "pt"}});
  ASSERT_TRUE(bytes.ok()) << bytes.status().ToString();
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(static_cast<uint8_t>((*bytes)[i])) << (8 * i);
  EXPECT_EQ(n % 8, 0u);
  const std::string header = bytes->substr(8, n);
  // Sorted by name, __metadata__ first, data_offsets relative to the data section, space padding.
  const std::string want =
      R"({"__metadata__":{"format":"pt"},"a.bias":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},)"
      R"("z.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[12,28]}})";
  EXPECT_EQ(header.substr(0, want.size()), want);
  EXPECT_EQ(header.find_first_not_of(' ', want.size()), std::string::npos);
  EXPECT_LT(header.size() - want.size(), 8u);
  EXPECT_EQ(bytes->size(), 8 + n + 28);

  auto st = SafetensorsFile::Parse(*bytes);
  ASSERT_TRUE(st.ok()) << st.status().ToString();
  auto back = SafetensorsToBundle(*st);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->tensors[0].name, "a.bias");
  EXPECT_EQ(back->Find("z.weight")->values, b.tensors[0].values);
  EXPECT_EQ(back->Find("z.weight")->shape, b.tensors[0].shape);
  EXPECT_EQ(st->metadata().at("format"), "pt");
}

TEST(SafetensorsTest, WriterRejectsBadBundles) {
  auto fails = [](const TensorBundle& b, const std::string& reason) {
    auto s = SerializeSafetensors(b);
    ASSERT_FALSE(s.ok()) << reason;
    EXPECT_NE(s.status().message().find(reason), std::string::npos) << s.status().message();
  };
  fails({{{"a", {2}, {1}}}}, "does not match its shape");
  fails({{{"a", {1}, {1}}, {"a", {1}, {2}}}}, "duplicate tensor name");
  fails({{{"", {1}, {1}}}}, "empty tensor name");
  fails({{{"__metadata__", {1}, {1}}}}, "reserved");
  fails({{{"\xff", {1}, {1}}}}, "UTF-8");
}

TEST(SafetensorsTest, CopiesAndMovesKeepViewsValid) {
  std::vector<SafetensorsFile> files;
  {
    auto st = SafetensorsFile::Parse(MakeFile(kTwoTensors, kTwoTensorsData));
    ASSERT_TRUE(st.ok());
    SafetensorsFile copy = *st;        // copy
    files.push_back(std::move(copy));  // move
    files.push_back(*st);
    SafetensorsFile assigned = files[0];
    assigned = files[1];  // copy-assign
    files.push_back(std::move(assigned));
  }                                                        // the originals are gone
  for (int i = 0; i < 50; ++i) files.push_back(files[0]);  // force vector reallocation (moves)
  for (const SafetensorsFile& f : files) {
    EXPECT_EQ(*SafetensorsFile::ToFloat32(*f.Find("a")), (std::vector<float>{1.5f, -2.0f}));
    EXPECT_EQ(*SafetensorsFile::ToFloat32(*f.Find("b")), (std::vector<float>{1.0f, -2.0f}));
  }
}

TEST(SafetensorsTest, WritesAndReadsFiles) {
  std::string dir = ::testing::TempDir() + "fedge_st_XXXXXX";
  ASSERT_NE(::mkdtemp(dir.data()), nullptr);
  TensorBundle b;
  b.tensors.push_back({"w", {2}, {3.0f, 4.0f}});
  ASSERT_TRUE(WriteSafetensorsFile(dir + "/a.safetensors", b, {{"k", "v"}}).ok());
  std::map<std::string, std::string> meta;
  auto back = ReadSafetensorsBundle(dir + "/a.safetensors", &meta);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->tensors[0].values, b.tensors[0].values);
  EXPECT_EQ(meta.at("k"), "v");
  auto missing = ReadSafetensorsBundle(dir + "/none.safetensors");
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  ASSERT_TRUE(WriteFileAtomic(dir + "/bad.safetensors", "garbage!!").ok());
  auto bad = SafetensorsFile::Read(dir + "/bad.safetensors");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find(dir + "/bad.safetensors"), std::string::npos);
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);  // every run left one in /tmp
  EXPECT_FALSE(ec) << ec.message();
}

// Map gives Read's tensors and errors; the mapping outlives the file object through
// buffer(), and writing through it (copy-on-write) leaves the file as it was.
TEST(SafetensorsTest, MapsWhatReadReads) {
  std::string dir = ::testing::TempDir() + "fedge_st_map_XXXXXX";
  ASSERT_NE(::mkdtemp(dir.data()), nullptr);
  TensorBundle b;
  b.tensors.push_back({"w", {2, 3}, {1, 2, 3, 4, 5, 6}});
  b.tensors.push_back({"b", {3}, {-1, 0.5f, 7}});
  const std::string path = dir + "/m.safetensors";
  ASSERT_TRUE(WriteSafetensorsFile(path, b, {{"k", "v"}}).ok());
  auto read = SafetensorsFile::Read(path);
  auto mapped = SafetensorsFile::Map(path);
  ASSERT_TRUE(read.ok() && mapped.ok()) << mapped.status().ToString();
  EXPECT_TRUE(mapped->mapped());
  EXPECT_FALSE(read->mapped());
  EXPECT_EQ(mapped->metadata(), read->metadata());
  for (const char* name : {"w", "b"}) {
    EXPECT_EQ(*SafetensorsFile::ToFloat32(*mapped->Find(name)),
              *SafetensorsFile::ToFloat32(*read->Find(name)));
  }
  std::shared_ptr<const char> keep = mapped->buffer();
  auto* w = const_cast<char*>(mapped->Find("w")->data.data());
  mapped = SafetensorsFile::Parse("");  // the file object is gone, the mapping is not
  std::memset(w, 0, 4);                 // copy-on-write: this process's page only
  float first = 1;
  std::memcpy(&first, w, 4);
  EXPECT_EQ(first, 0.0f);
  keep.reset();
  EXPECT_EQ(*SafetensorsFile::ToFloat32(*SafetensorsFile::Map(path)->Find("w")),
            (std::vector<float>{1, 2, 3, 4, 5, 6}));
  // Evict drops the pages wholly inside a view: written pages read the file again.
  TensorBundle big;
  big.tensors.push_back({"x", {4096}, std::vector<float>(4096, 2.5f)});
  ASSERT_TRUE(WriteSafetensorsFile(dir + "/big.safetensors", big, {}).ok());
  auto x = SafetensorsFile::Map(dir + "/big.safetensors");
  ASSERT_TRUE(x.ok());
  auto* xs = reinterpret_cast<float*>(const_cast<char*>(x->Find("x")->data.data()));
  std::fill(xs, xs + 4096, -1.0f);
  x->Evict(*x->Find("x"));
  EXPECT_EQ(xs[2048], 2.5f);  // the middle page: wholly inside, read from the file again
  EXPECT_EQ(xs[0], -1.0f);    // the first page is shared with the header: kept
  // The errors are Read's, with the path.
  EXPECT_EQ(SafetensorsFile::Map(dir + "/none.safetensors").status().code(), StatusCode::kNotFound);
  ASSERT_TRUE(WriteFileAtomic(dir + "/bad.safetensors", "garbage!!").ok());
  auto bad = SafetensorsFile::Map(dir + "/bad.safetensors");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find(dir + "/bad.safetensors"), std::string::npos);
  ASSERT_TRUE(WriteFileAtomic(dir + "/empty.safetensors", "").ok());
  EXPECT_EQ(SafetensorsFile::Map(dir + "/empty.safetensors").status().code(), StatusCode::kInvalidArgument);
  std::string truncated = *ReadFile(path);
  truncated.resize(truncated.size() - 4);
  ASSERT_TRUE(WriteFileAtomic(dir + "/short.safetensors", truncated).ok());
  EXPECT_EQ(SafetensorsFile::Map(dir + "/short.safetensors").status().code(), StatusCode::kInvalidArgument);
  std::filesystem::remove_all(dir);
}

TEST(SafetensorsTest, SurvivesRandomMutations) {
  TensorBundle b;
  b.tensors.push_back({"layer.0.w", {3, 4}, std::vector<float>(12, 0.5f)});
  b.tensors.push_back({"layer.0.b", {4}, {1, 2, 3, 4}});
  const std::string good = *SerializeSafetensors(b, {{"format", "pt"}});
  std::mt19937 rng(7);
  int accepted = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    std::string m = good;
    const int flips = 1 + static_cast<int>(rng() % 3);
    for (int k = 0; k < flips; ++k) {
      // Half the time a JSON-significant character, to get past the parser.
      const char c = rng() % 2 ? static_cast<char>(rng()) : "{}[],:\" 0123456789"[rng() % 16];
      m[rng() % m.size()] = c;
    }
    if (iter % 5 == 0) m.resize(rng() % m.size());
    auto st = SafetensorsFile::Parse(m);
    if (!st.ok()) {
      EXPECT_EQ(st.status().code(), StatusCode::kInvalidArgument);
      continue;
    }
    ++accepted;
    // Whatever parses must describe bytes inside the file, sized as declared.
    for (const StTensorView& t : st->tensors()) {
      int64_t n = 1;
      for (int64_t d : t.shape) n *= d;
      EXPECT_EQ(t.data.size(), static_cast<size_t>(n) * StDTypeSize(t.dtype));
      if (t.dtype == StDType::kF32) {
        EXPECT_TRUE(SafetensorsFile::ToFloat32(t).ok());
      }
    }
  }
  EXPECT_GT(accepted, 0);  // value-byte flips must still parse
}

// ctest sets FEDGE_SOURCE_DIR; when run by hand from a build dir, look upwards.
std::string MiniLmPath() {
  const std::string rel = "/.fedge/models/all-MiniLM-L6-v2/model.safetensors";
  if (const char* src = std::getenv("FEDGE_SOURCE_DIR")) return src + rel;
  std::string dir = ".";
  for (int up = 0; up < 4; ++up, dir += "/..") {
    if (::access((dir + rel).c_str(), R_OK) == 0) return dir + rel;
  }
  return "." + rel;
}

TEST(SafetensorsTest, LoadsRealMiniLm) {
  const std::string path = MiniLmPath();
  if (::access(path.c_str(), R_OK) != 0) {
    GTEST_SKIP() << path << " not present; run scripts/fetch-model.sh to enable this test";
  }
  auto st = SafetensorsFile::Read(path);
  ASSERT_TRUE(st.ok()) << st.status().ToString();
  EXPECT_EQ(st->tensors().size(), 104u);
  EXPECT_EQ(st->metadata().at("format"), "pt");
  const StTensorView* emb = st->Find("embeddings.word_embeddings.weight");
  ASSERT_NE(emb, nullptr);
  EXPECT_EQ(emb->dtype, StDType::kF32);
  EXPECT_EQ(emb->shape, (std::vector<int64_t>{30522, 384}));
  const StTensorView* pos = st->Find("embeddings.position_ids");
  ASSERT_NE(pos, nullptr);
  EXPECT_EQ(pos->dtype, StDType::kI64);
  int64_t first[3];
  std::memcpy(first, pos->data.data(), sizeof(first));
  EXPECT_EQ(first[2], 2);
  // Values checked against Python's struct.unpack of the same file.
  auto ln = SafetensorsFile::ToFloat32(*st->Find("embeddings.LayerNorm.weight"));
  ASSERT_TRUE(ln.ok());
  EXPECT_FLOAT_EQ((*ln)[0], 0.5989283323287964f);
  EXPECT_FLOAT_EQ((*ln)[2], 0.6335410475730896f);

  auto strict = ReadSafetensorsBundle(path);
  ASSERT_FALSE(strict.ok());
  EXPECT_NE(strict.status().message().find("embeddings.position_ids"), std::string::npos);
  auto bundle = SafetensorsToBundle(*st, /*skip_non_float=*/true);
  ASSERT_TRUE(bundle.ok()) << bundle.status().ToString();
  EXPECT_EQ(bundle->tensors.size(), 103u);
  EXPECT_EQ(bundle->NumElements(), 22713216);  // all-MiniLM-L6-v2's 22.7M parameters
}

}  // namespace
}  // namespace fedge
