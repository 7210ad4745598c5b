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
#include <memory>
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
  // Reads the file whole, then Parse.
  static StatusOr<SafetensorsFile> Read(const std::string& path);
  // Maps the file (private, copy-on-write: nothing written through the mapping
  // reaches the file) instead of reading it: pages are read from the page cache as
  // tensors are touched, and processes mapping one file share them. For files
  // nobody truncates while they are mapped, such as a model directory: a page past
  // a truncated end raises SIGBUS when touched. Validation is Parse's. A file that
  // cannot be mapped (empty, not a regular file) is read instead.
  static StatusOr<SafetensorsFile> Map(const std::string& path);

  // Copies share the (immutable) bytes; views stay valid in every copy.
  SafetensorsFile(const SafetensorsFile& other) = default;
  SafetensorsFile(SafetensorsFile&& other) noexcept = default;
  SafetensorsFile& operator=(const SafetensorsFile& other) = default;
  SafetensorsFile& operator=(SafetensorsFile&& other) noexcept = default;
  ~SafetensorsFile() = default;

  const std::vector<StTensorView>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const StTensorView* Find(std::string_view name) const;
  // Whether the bytes are a mapping of the file (Map) rather than held in memory.
  bool mapped() const { return mapped_; }
  // Keeps the bytes every view points into alive: a tensor that aliases a view
  // (no copy) holds one.
  std::shared_ptr<const char> buffer() const { return buffer_; }
  // A mapped file only: drops this process's pages that lie wholly inside `view`
  // (madvise MADV_DONTNEED), for a tensor that was converted and will not be read
  // again while another tensor keeps the mapping alive. Reading them again reads
  // the file again (and loses anything written through them). Nothing otherwise.
  void Evict(const StTensorView& view) const;

  // Converts a F32/F16/BF16/F64 tensor to float32 values. INVALID_ARGUMENT for
  // other dtypes and for F64 values outside float32's range.
  static StatusOr<std::vector<float>> ToFloat32(const StTensorView& tensor);

 private:
  SafetensorsFile() = default;
  // Validates `size` bytes at `buffer` and points the views into them.
  static StatusOr<SafetensorsFile> ParseBuffer(std::shared_ptr<const char> buffer, size_t size);

  std::shared_ptr<const char> buffer_;
  bool mapped_ = false;
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
