// safetensors reader/writer. Validation follows the reference implementation
// (huggingface/safetensors, Rust): header size cap, JSON object header, known
// dtypes, data_offsets sorted, contiguous and covering the data section exactly,
// byte length == product(shape) x dtype size. Duplicate keys, which serde would
// silently resolve, are rejected here because they make a file ambiguous.
#include "fedge/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <unordered_set>

#include "fedge/file_util.h"
#include "float16.h"

namespace fedge {
namespace {

using nlohmann::json;

constexpr uint64_t kMaxHeaderBytes = 100'000'000;

Status StError(std::string message) { return InvalidArgumentError("safetensors: " + std::move(message)); }

struct DTypeInfo {
  StDType dtype;
  std::string_view name;
  size_t size;
};
constexpr DTypeInfo kDTypes[] = {
    {StDType::kF64, "F64", 8},   {StDType::kF32, "F32", 4}, {StDType::kF16, "F16", 2},
    {StDType::kBF16, "BF16", 2}, {StDType::kI64, "I64", 8}, {StDType::kI32, "I32", 4},
    {StDType::kI16, "I16", 2},   {StDType::kI8, "I8", 1},   {StDType::kU8, "U8", 1},
    {StDType::kBool, "BOOL", 1},
};

bool ParseDType(std::string_view name, StDType* out) {
  for (const DTypeInfo& d : kDTypes) {
    if (d.name == name) {
      *out = d.dtype;
      return true;
    }
  }
  return false;
}

bool IsFloat(StDType d) {
  return d == StDType::kF32 || d == StDType::kF16 || d == StDType::kBF16 || d == StDType::kF64;
}

std::string Quote(std::string_view s) { return "\"" + std::string(s.substr(0, 200)) + "\""; }

struct Entry {
  StTensorView view;
  uint64_t begin = 0, end = 0;
};

// Reads a JSON array of non-negative integers; false if it is anything else.
bool UnsignedArray(const json& j, std::vector<uint64_t>* out) {
  if (!j.is_array()) return false;
  for (const json& v : j) {
    if (!v.is_number_unsigned()) {
      // nlohmann stores non-negative literals as unsigned; reject floats and negatives.
      return false;
    }
    out->push_back(v.get<uint64_t>());
  }
  return true;
}

}  // namespace

std::string_view StDTypeName(StDType dtype) {
  for (const DTypeInfo& d : kDTypes) {
    if (d.dtype == dtype) return d.name;
  }
  return "?";
}

size_t StDTypeSize(StDType dtype) {
  for (const DTypeInfo& d : kDTypes) {
    if (d.dtype == dtype) return d.size;
  }
  return 0;
}

StatusOr<SafetensorsFile> SafetensorsFile::Parse(std::string bytes) {
  auto holder = std::make_shared<const std::string>(std::move(bytes));
  return ParseBuffer(std::shared_ptr<const char>(holder, holder->data()), holder->size());
}

StatusOr<SafetensorsFile> SafetensorsFile::Map(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return Read(path);  // Read says why (NOT_FOUND, PERMISSION_DENIED, ...)
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size < 8) {
    ::close(fd);
    return Read(path);
  }
  const auto size = static_cast<size_t>(st.st_size);
  // Writable and private: a tensor that aliases the mapping may be written in place
  // (copy-on-write pages of this process), never the file.
  void* base = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (base == MAP_FAILED) return Read(path);
  std::shared_ptr<const char> buffer(static_cast<const char*>(base),
                                     [size](const char* p) { ::munmap(const_cast<char*>(p), size); });
  auto file = ParseBuffer(std::move(buffer), size);
  if (!file.ok()) return file.status().WithContext(path);
  file->mapped_ = true;
  return file;
}

void SafetensorsFile::Evict(const StTensorView& view) const {
  if (!mapped_ || view.data.empty()) return;
  const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const auto begin = reinterpret_cast<uintptr_t>(view.data.data());
  const uintptr_t first = (begin + page - 1) / page * page, last = (begin + view.data.size()) / page * page;
  if (last > first) ::madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
}

StatusOr<SafetensorsFile> SafetensorsFile::ParseBuffer(std::shared_ptr<const char> buffer, size_t size) {
  const std::string_view bytes(buffer.get(), size);
  if (bytes.size() < 8) {
    return StError("file of " + std::to_string(bytes.size()) +
                   " bytes is shorter than the 8-byte header size");
  }
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(static_cast<uint8_t>(bytes[i])) << (8 * i);
  if (n > kMaxHeaderBytes) {
    return StError("header size " + std::to_string(n) + " exceeds the 100 MB limit");
  }
  if (n > bytes.size() - 8) {
    return StError("header size " + std::to_string(n) + " runs past the end of the " +
                   std::to_string(bytes.size()) + "-byte file (truncated?)");
  }
  const std::string_view header(bytes.data() + 8, n);
  if (header.empty() || header[0] != '{')
    return StError("header does not start with '{' (not a JSON object)");

  // Track keys per open object to catch duplicates, which the parser would merge.
  std::vector<std::unordered_set<std::string>> open_objects;
  std::string duplicate;
  json::parser_callback_t cb = [&](int /*depth*/, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start:
        open_objects.emplace_back();
        break;
      case json::parse_event_t::object_end:
        if (!open_objects.empty()) open_objects.pop_back();
        break;
      case json::parse_event_t::key:
        if (!open_objects.empty() && !open_objects.back().insert(parsed.get<std::string>()).second &&
            duplicate.empty()) {
          duplicate = parsed.get<std::string>();
        }
        break;
      default:
        break;
    }
    return true;
  };
  json doc;
  try {
    // Trailing spaces (the writers' 8-byte padding) are JSON whitespace.
    doc = json::parse(header.begin(), header.end(), cb, /*allow_exceptions=*/true);
  } catch (const json::exception& e) {
    return StError(std::string("header is not valid JSON: ") + e.what());
  }
  if (!duplicate.empty()) return StError("duplicate key " + Quote(duplicate) + " in header");
  if (!doc.is_object()) return StError("header is not a JSON object");

  SafetensorsFile file;
  const uint64_t data_size = bytes.size() - 8 - n;
  std::vector<Entry> entries;
  for (auto it = doc.begin(); it != doc.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) return StError("__metadata__ must be an object of strings");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string())
          return StError("__metadata__ value for " + Quote(m.key()) + " is not a string");
        file.metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string where = "tensor " + Quote(name);
    if (!v.is_object()) return StError(where + " entry is not an object");
    for (const char* field : {"dtype", "shape", "data_offsets"}) {
      if (!v.contains(field)) return StError(where + " lacks \"" + field + "\"");
    }
    Entry e;
    e.view.name = name;
    if (!v["dtype"].is_string() || !ParseDType(v["dtype"].get<std::string>(), &e.view.dtype)) {
      return StError(where + " has unsupported dtype " + v["dtype"].dump() +
                     " (supported: F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL)");
    }
    std::vector<uint64_t> shape;
    if (!UnsignedArray(v["shape"], &shape)) {
      return StError(where + " shape must be an array of non-negative integers, got " + v["shape"].dump());
    }
    uint64_t elements = 1;
    for (uint64_t d : shape) {
      if (d > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
          __builtin_mul_overflow(elements, d, &elements)) {
        return StError(where + " shape " + v["shape"].dump() + " overflows the element count");
      }
      e.view.shape.push_back(static_cast<int64_t>(d));
    }
    std::vector<uint64_t> offsets;
    if (!UnsignedArray(v["data_offsets"], &offsets) || offsets.size() != 2) {
      return StError(where + " data_offsets must be [begin, end] with non-negative integers, got " +
                     v["data_offsets"].dump());
    }
    e.begin = offsets[0];
    e.end = offsets[1];
    if (e.begin > e.end)
      return StError(where + " data_offsets " + v["data_offsets"].dump() + " has begin > end");
    if (e.end > data_size) {
      return StError(where + " data_offsets " + v["data_offsets"].dump() +
                     " reach past the data section of " + std::to_string(data_size) + " bytes");
    }
    uint64_t nbytes;
    if (__builtin_mul_overflow(elements, StDTypeSize(e.view.dtype), &nbytes)) {
      return StError(where + " byte size overflows");
    }
    if (nbytes != e.end - e.begin) {
      return StError(where + " shape " + v["shape"].dump() + " x " + std::string(StDTypeName(e.view.dtype)) +
                     " needs " + std::to_string(nbytes) + " bytes but data_offsets span " +
                     std::to_string(e.end - e.begin));
    }
    entries.push_back(std::move(e));
  }
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return std::tie(a.begin, a.end, a.view.name) < std::tie(b.begin, b.end, b.view.name);
  });
  uint64_t cursor = 0;
  std::string previous = "the start of the data section";
  for (const Entry& e : entries) {
    if (e.begin < cursor) {
      return StError("tensor " + Quote(e.view.name) + " data_offsets [" + std::to_string(e.begin) + "," +
                     std::to_string(e.end) + "] overlap " + previous);
    }
    if (e.begin > cursor) {
      return StError("gap of " + std::to_string(e.begin - cursor) + " bytes before tensor " +
                     Quote(e.view.name) + " (offsets must be contiguous)");
    }
    cursor = e.end;
    previous = "tensor " + Quote(e.view.name);
  }
  if (cursor != data_size) {
    return StError("tensors cover " + std::to_string(cursor) + " bytes but the data section holds " +
                   std::to_string(data_size) + " (trailing bytes)");
  }

  file.buffer_ = std::move(buffer);
  const char* data = bytes.data() + 8 + n;
  for (Entry& e : entries) {
    e.view.data = std::string_view(data + e.begin, e.end - e.begin);
    file.tensors_.push_back(std::move(e.view));
  }
  return file;
}

StatusOr<SafetensorsFile> SafetensorsFile::Read(const std::string& path) {
  FEDGE_ASSIGN_OR_RETURN(std::string bytes, ReadFile(path));
  auto file = Parse(std::move(bytes));
  if (!file.ok()) return file.status().WithContext(path);
  return file;
}

const StTensorView* SafetensorsFile::Find(std::string_view name) const {
  for (const StTensorView& t : tensors_) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

StatusOr<std::vector<float>> SafetensorsFile::ToFloat32(const StTensorView& tensor) {
  const size_t width = StDTypeSize(tensor.dtype);
  if (!IsFloat(tensor.dtype) || width == 0 || tensor.data.size() % width != 0) {
    return StError("tensor " + Quote(tensor.name) + " has dtype " + std::string(StDTypeName(tensor.dtype)) +
                   ", not a floating-point type");
  }
  const size_t n = tensor.data.size() / width;
  std::vector<float> out(n);
  const auto* p = reinterpret_cast<const unsigned char*>(tensor.data.data());
  auto le = [p, width](size_t i) {
    uint64_t v = 0;
    for (size_t b = 0; b < width; ++b) v |= static_cast<uint64_t>(p[i * width + b]) << (8 * b);
    return v;
  };
  switch (tensor.dtype) {
    case StDType::kF32:
      if constexpr (std::endian::native == std::endian::little) {
        // An empty tensor's out.data() may be null: memcpy(nullptr, p, 0) is undefined.
        if (n > 0) std::memcpy(out.data(), p, n * 4);
      } else {
        for (size_t i = 0; i < n; ++i) out[i] = std::bit_cast<float>(static_cast<uint32_t>(le(i)));
      }
      break;
    case StDType::kF16:
      for (size_t i = 0; i < n; ++i) out[i] = internal::HalfToFloat(static_cast<uint16_t>(le(i)));
      break;
    case StDType::kBF16:
      for (size_t i = 0; i < n; ++i) out[i] = internal::Bf16ToFloat(static_cast<uint16_t>(le(i)));
      break;
    case StDType::kF64:
      for (size_t i = 0; i < n; ++i) {
        const double d = std::bit_cast<double>(le(i));
        if (std::isfinite(d) && std::fabs(d) > std::numeric_limits<float>::max()) {
          return StError("tensor " + Quote(tensor.name) + " element " + std::to_string(i) +
                         " is outside float32's range");
        }
        out[i] = static_cast<float>(d);
      }
      break;
    default:
      break;
  }
  return out;
}

StatusOr<std::string> SerializeSafetensors(const std::vector<RawTensor>& tensors,
                                           const std::map<std::string, std::string>& metadata) {
  std::vector<const RawTensor*> sorted;
  for (const RawTensor& t : tensors) sorted.push_back(&t);
  std::sort(sorted.begin(), sorted.end(),
            [](const RawTensor* a, const RawTensor* b) { return a->name < b->name; });
  std::string header = "{";
  uint64_t offset = 0;
  try {
    if (!metadata.empty()) {
      header += "\"__metadata__\":" + json(metadata).dump();
    }
    for (size_t i = 0; i < sorted.size(); ++i) {
      const RawTensor& t = *sorted[i];
      if (t.name.empty()) return StError("empty tensor name");
      if (t.name == "__metadata__") return StError("tensor name \"__metadata__\" is reserved");
      if (i > 0 && sorted[i - 1]->name == t.name) return StError("duplicate tensor name " + Quote(t.name));
      int64_t n = 1;
      for (int64_t d : t.shape) n = d < 0 ? -1 : n * d;
      if (n < 0 || static_cast<uint64_t>(n) * StDTypeSize(t.dtype) != t.bytes.size()) {
        return StError("tensor " + Quote(t.name) + " has " + std::to_string(t.bytes.size()) + " bytes of " +
                       std::string(StDTypeName(t.dtype)) + ", which does not match its shape");
      }
      if (header.size() > 1) header += ",";
      json shape = json::array();
      for (int64_t d : t.shape) shape.push_back(d);
      const uint64_t end = offset + t.bytes.size();
      header += json(t.name).dump() + ":{\"dtype\":\"" + std::string(StDTypeName(t.dtype)) +
                "\",\"shape\":" + shape.dump() + ",\"data_offsets\":[" + std::to_string(offset) + "," +
                std::to_string(end) + "]}";
      offset = end;
    }
  } catch (const json::exception& e) {
    return StError(std::string("cannot encode header (names and metadata must be UTF-8): ") + e.what());
  }
  header += "}";
  // Pad with spaces so the data section starts 8-byte aligned, as the Python library does.
  header.append((8 - header.size() % 8) % 8, ' ');
  std::string out;
  out.reserve(8 + header.size() + offset);
  for (int i = 0; i < 8; ++i)
    out.push_back(static_cast<char>((static_cast<uint64_t>(header.size()) >> (8 * i)) & 0xFF));
  out += header;
  for (const RawTensor* t : sorted) out.append(t->bytes);
  return out;
}

StatusOr<std::string> SerializeSafetensors(const TensorBundle& bundle,
                                           const std::map<std::string, std::string>& metadata) {
  static_assert(std::endian::native == std::endian::little, "safetensors bytes are little-endian");
  std::vector<RawTensor> raw;
  raw.reserve(bundle.tensors.size());
  for (const NamedTensor& t : bundle.tensors) {
    const int64_t n = t.NumElements();
    if (n < 0 || static_cast<uint64_t>(n) != t.values.size()) {
      return StError("tensor " + Quote(t.name) + " has " + std::to_string(t.values.size()) +
                     " values, which does not match its shape");
    }
    raw.push_back({t.name, StDType::kF32, t.shape,
                   std::string_view(reinterpret_cast<const char*>(t.values.data()), 4 * t.values.size())});
  }
  return SerializeSafetensors(raw, metadata);
}

Status WriteSafetensorsFile(const std::string& path, const TensorBundle& bundle,
                            const std::map<std::string, std::string>& metadata) {
  FEDGE_ASSIGN_OR_RETURN(std::string bytes, SerializeSafetensors(bundle, metadata));
  return WriteFileAtomic(path, bytes);
}

StatusOr<TensorBundle> SafetensorsToBundle(const SafetensorsFile& file, bool skip_non_float) {
  TensorBundle bundle;
  for (const StTensorView& t : file.tensors()) {
    if (!IsFloat(t.dtype)) {
      if (skip_non_float) continue;
      return StError("tensor " + Quote(t.name) + " has dtype " + std::string(StDTypeName(t.dtype)) +
                     "; only floating-point tensors convert to a bundle");
    }
    FEDGE_ASSIGN_OR_RETURN(std::vector<float> values, SafetensorsFile::ToFloat32(t));
    bundle.tensors.push_back({t.name, t.shape, std::move(values)});
  }
  return bundle;
}

StatusOr<TensorBundle> ReadSafetensorsBundle(const std::string& path,
                                             std::map<std::string, std::string>* metadata) {
  FEDGE_ASSIGN_OR_RETURN(SafetensorsFile file, SafetensorsFile::Read(path));
  auto bundle = SafetensorsToBundle(file);
  if (!bundle.ok()) return bundle.status().WithContext(path);
  if (metadata != nullptr) *metadata = file.metadata();
  return bundle;
}

}  // namespace fedge
