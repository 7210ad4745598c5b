// Reader and writer for the safetensors format (Hugging Face):
//   8 bytes little-endian u64 N | N bytes JSON header | tensor data
// The header maps names to {"dtype", "shape", "data_offsets": [begin, end]}
// (offsets relative to the data section) plus an optional "__metadata__"
// string->string map. The reader validates the header against the format:
// N <= 100 MB, JSON object, known dtype, shape product x dtype size ==
// end - begin, ranges contiguous, non-overlapping, covering the data section
// exactly and inside the file. Header padding with trailing spaces is accepted;
// unknown fields inside a tensor entry are ignored (as the reference library
// does); duplicate keys are rejected. Wire layout: docs/formats.md.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "fedge/status.h"
#include "fedge/tensor_bundle.h"

namespace fedge {

enum class StDType { kF64, kF32, kF16, kBF16, kI64, kI32, kI16, kI8, kU8, kBool };

std::string_view StDTypeName(StDType dtype);  // "F32", ...
size_t StDTypeSize(StDType dtype);

struct StTensorView {
  std::string name;
  StDType dtype;
  std::vector<int64_t> shape;
  std::string_view data;  // points into the owning SafetensorsFile's buffer
};

class SafetensorsFile {
 public:
  // Parses and validates a whole file held in memory; the file keeps the bytes.
  static StatusOr<SafetensorsFile> Parse(std::string bytes);
  static StatusOr<SafetensorsFile> Read(const std::string& path);

  // Copies and moves re-point every tensor view at the new owner's bytes.
  SafetensorsFile(const SafetensorsFile& other);
  SafetensorsFile(SafetensorsFile&& other) noexcept;
  SafetensorsFile& operator=(const SafetensorsFile& other);
  SafetensorsFile& operator=(SafetensorsFile&& other) noexcept;
  ~SafetensorsFile() = default;

  const std::vector<StTensorView>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const StTensorView* Find(std::string_view name) const;

  // Converts a F32/F16/BF16/F64 tensor to float32 values. INVALID_ARGUMENT for
  // other dtypes and for F64 values outside float32's range.
  static StatusOr<std::vector<float>> ToFloat32(const StTensorView& tensor);

 private:
  SafetensorsFile() = default;
  void AdoptViewsFrom(const SafetensorsFile& other);

  std::string bytes_;
  std::vector<StTensorView> tensors_;
  std::map<std::string, std::string> metadata_;
};

// One tensor's little-endian bytes in `dtype`, for SerializeSafetensors.
struct RawTensor {
  std::string name;
  StDType dtype = StDType::kF32;
  std::vector<int64_t> shape;
  std::string_view bytes;
};

// Serializes tensors of any dtype (sorted by name; header padded as below).
// INVALID_ARGUMENT for empty, duplicate or "__metadata__" names and a byte count that
// does not match the shape and dtype.
StatusOr<std::string> SerializeSafetensors(const std::vector<RawTensor>& tensors,
                                           const std::map<std::string, std::string>& metadata = {});

// Serializes `bundle` as F32 tensors (sorted by name, as the Python library does;
// header padded with spaces to a multiple of 8 bytes). INVALID_ARGUMENT for
// empty, duplicate, "__metadata__" or non-UTF-8 names and value/shape mismatches.
StatusOr<std::string> SerializeSafetensors(const TensorBundle& bundle,
                                           const std::map<std::string, std::string>& metadata = {});

// SerializeSafetensors + WriteFileAtomic.
Status WriteSafetensorsFile(const std::string& path, const TensorBundle& bundle,
                            const std::map<std::string, std::string>& metadata = {});

// Converts the tensors of `file` (in file order) to float32. Non-floating-point
// tensors (e.g. BERT's I64 position_ids) are skipped if `skip_non_float`, an
// INVALID_ARGUMENT error naming the tensor otherwise.
StatusOr<TensorBundle> SafetensorsToBundle(const SafetensorsFile& file, bool skip_non_float = false);

// Reads a safetensors file whose tensors are all floating point into a bundle.
StatusOr<TensorBundle> ReadSafetensorsBundle(const std::string& path,
                                             std::map<std::string, std::string>* metadata = nullptr);

}  // namespace fedge
