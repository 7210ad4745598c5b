// Fuzz target: the safetensors reader (fedge::SafetensorsFile::Parse), which reads
// model weights, checkpoints and adapters; a model directory can come from anyone.
//
// Per input: parse; on success convert every floating-point tensor (ToFloat32), copy and
// move the file (views must follow the bytes: ASan catches a view left dangling), and
// check the write/read property: when SerializeSafetensors accepts the float tensors, the
// bytes it writes parse back to the same names, shapes and bits.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "fedge/safetensors.h"
#include "fuzz_util.h"

namespace {

using fedge::fuzz::Fail;

// Reads every byte of every view (ASan reports a view into freed or foreign memory).
uint64_t Touch(const fedge::SafetensorsFile& file) {
  uint64_t sum = 0;
  for (const auto& t : file.tensors()) {
    for (char c : t.data) sum += static_cast<unsigned char>(c);
  }
  return sum;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto parsed = fedge::SafetensorsFile::Parse(std::string(reinterpret_cast<const char*>(data), size));
  if (!parsed.ok()) return 0;

  const uint64_t sum = Touch(*parsed);
  for (const auto& t : parsed->tensors()) {
    uint64_t bytes = fedge::StDTypeSize(t.dtype);
    for (int64_t d : t.shape) {
      if (d < 0 || __builtin_mul_overflow(bytes, static_cast<uint64_t>(d), &bytes)) {
        Fail("accepted shape is negative or overflows", t.name);
      }
    }
    if (bytes != t.data.size()) Fail("tensor byte size does not match shape x dtype", t.name);
    auto values = fedge::SafetensorsFile::ToFloat32(t);
    if (values.ok() && values->size() * fedge::StDTypeSize(t.dtype) != t.data.size()) {
      Fail("ToFloat32 returned the wrong element count", t.name);
    }
  }

  // Copies and moves re-point the views; the source is destroyed before the copy is read.
  fedge::SafetensorsFile copy = [&] {
    fedge::SafetensorsFile tmp(*parsed);
    return tmp;
  }();
  fedge::SafetensorsFile moved(std::move(*parsed));
  if (Touch(copy) != sum || Touch(moved) != sum) Fail("a copied or moved file reads different bytes", "");

  auto bundle = fedge::SafetensorsToBundle(moved, /*skip_non_float=*/true);
  if (!bundle.ok()) return 0;
  auto written = fedge::SerializeSafetensors(*bundle, moved.metadata());
  if (!written.ok()) return 0;  // e.g. a name the writer refuses ("", "__metadata__")
  auto reread = fedge::SafetensorsFile::Parse(*written);
  if (!reread.ok()) Fail("SerializeSafetensors output does not parse", reread.status().ToString());
  auto rebundle = fedge::SafetensorsToBundle(*reread);
  if (!rebundle.ok()) Fail("re-read bundle does not convert", rebundle.status().ToString());
  if (rebundle->tensors.size() != bundle->tensors.size()) Fail("tensor count changed in a round trip", "");
  if (reread->metadata() != moved.metadata()) Fail("metadata changed in a round trip", "");
  for (const auto& t : bundle->tensors) {
    const auto* r = rebundle->Find(t.name);
    if (r == nullptr) Fail("tensor lost in a round trip", t.name);
    if (r->shape != t.shape || r->values.size() != t.values.size() ||
        (!t.values.empty() &&
         std::memcmp(r->values.data(), t.values.data(), t.values.size() * sizeof(float)) != 0)) {
      Fail("tensor changed in a round trip", t.name);
    }
  }
  return 0;
}
