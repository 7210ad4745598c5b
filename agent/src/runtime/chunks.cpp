#include "fedge/agent/runtime/chunks.h"

#include <algorithm>

#include "fedge/tensor_bundle.h"

namespace fedge::agent {

std::vector<std::string_view> SplitChunks(std::string_view bytes, size_t max_chunk) {
  std::vector<std::string_view> chunks;
  if (max_chunk == 0) max_chunk = kSendChunkBytes;
  if (bytes.empty()) {
    chunks.push_back(bytes);
    return chunks;
  }
  for (size_t off = 0; off < bytes.size(); off += max_chunk) {
    chunks.push_back(bytes.substr(off, max_chunk));
  }
  return chunks;
}

ChunkAssembler::ChunkAssembler(int64_t expected_version, std::string expected_checksum, ChunkLimits limits)
    : expected_version_(expected_version),
      expected_checksum_(std::move(expected_checksum)),
      limits_(limits) {}

Status ChunkAssembler::Add(int64_t version, uint64_t total_bytes, std::string_view checksum, uint64_t offset,
                           std::string_view data) {
  if (!failed_.ok()) return failed_;
  auto fail = [this](std::string message) {
    failed_ = DataLossError("global model stream: " + message);
    return failed_;
  };
  if (!started_) {
    if (total_bytes == 0) return fail("first chunk does not announce total_bytes");
    if (total_bytes > limits_.max_total_bytes) {
      return fail("announced " + std::to_string(total_bytes) + " bytes, above the limit of " +
                  std::to_string(limits_.max_total_bytes));
    }
    if (checksum.empty()) return fail("first chunk carries no checksum");
    if (expected_version_ != 0 && version != expected_version_) {
      return fail("got version " + std::to_string(version) + ", asked for " +
                  std::to_string(expected_version_));
    }
    if (!expected_checksum_.empty() && checksum != expected_checksum_) {
      return fail("checksum " + std::string(checksum) + " differs from the task's " + expected_checksum_);
    }
    started_ = true;
    version_ = version;
    total_ = total_bytes;
    checksum_ = std::string(checksum);
    // Reserve what was announced, but not more than a sane first allocation:
    // a lying header must not make the agent allocate gigabytes up front.
    bytes_.reserve(std::min<uint64_t>(total_, 64u << 20));
  } else {
    if (version != 0 && version != version_) {
      return fail("chunk at offset " + std::to_string(offset) + " switches version " +
                  std::to_string(version_) + " -> " + std::to_string(version));
    }
    if (total_bytes != 0 && total_bytes != total_) {
      return fail("chunk at offset " + std::to_string(offset) + " changes total_bytes " +
                  std::to_string(total_) + " -> " + std::to_string(total_bytes));
    }
    if (!checksum.empty() && checksum != checksum_) {
      return fail("chunk at offset " + std::to_string(offset) + " changes the checksum");
    }
  }
  if (data.size() > limits_.max_chunk_bytes) {
    return fail("chunk of " + std::to_string(data.size()) + " bytes exceeds the " +
                std::to_string(limits_.max_chunk_bytes) + "-byte limit");
  }
  if (offset != bytes_.size()) {
    return fail(std::string(offset > bytes_.size() ? "gap" : "overlap") + ": chunk offset " +
                std::to_string(offset) + " but " + std::to_string(bytes_.size()) + " bytes received");
  }
  if (data.size() > total_ - bytes_.size()) {
    return fail("over-long: chunk at offset " + std::to_string(offset) + " of " +
                std::to_string(data.size()) + " bytes runs past total_bytes " + std::to_string(total_));
  }
  bytes_.append(data);
  return OkStatus();
}

StatusOr<std::string> ChunkAssembler::Finish() {
  if (!failed_.ok()) return failed_;
  if (!started_) return DataLossError("global model stream: no chunks received");
  if (bytes_.size() != total_) {
    return DataLossError("global model stream: truncated, " + std::to_string(bytes_.size()) + " of " +
                         std::to_string(total_) + " bytes received");
  }
  std::string actual = Sha256Hex(bytes_);
  if (actual != checksum_) {
    return DataLossError("global model stream: checksum mismatch, announced " + checksum_ + ", computed " +
                         actual);
  }
  return std::move(bytes_);
}

}  // namespace fedge::agent
