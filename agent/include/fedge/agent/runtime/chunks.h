// Chunked transfer of encoded bundles (proto/fedge.proto): FetchGlobal streams
// GlobalChunks and SubmitUpdate streams data chunks, each at most 4 MiB. The
// assembler is the agent's guard against a broken or hostile stream: it accepts
// only contiguous chunks that add up to the announced size and checksum.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "fedge/status.h"

namespace fedge::agent {

// The protocol's ceiling for one chunk's data.
inline constexpr size_t kMaxChunkBytes = 4u << 20;
// What the agent sends per chunk: below the ceiling by enough that a chunk plus
// its protobuf framing stays under gRPC's default 4 MiB message limit.
inline constexpr size_t kSendChunkBytes = kMaxChunkBytes - 4096;

// Splits `bytes` into consecutive views of at most `max_chunk` bytes (at least
// one view, empty if `bytes` is empty). The views point into `bytes`.
std::vector<std::string_view> SplitChunks(std::string_view bytes, size_t max_chunk);

struct ChunkLimits {
  uint64_t max_total_bytes = 1ull << 31;  // refuse to buffer more than 2 GiB
  size_t max_chunk_bytes = kMaxChunkBytes;
};

// Reassembles one FetchGlobal stream. The first chunk must carry the metadata
// (version, total_bytes, checksum); later chunks may repeat it (then it must
// match) or leave it empty/zero. Every chunk's offset must equal the bytes
// received so far. Not thread-safe; one assembler per stream.
class ChunkAssembler {
 public:
  // `expected_version` (0: any) and `expected_checksum` (empty: any) come from
  // the task that asked for the fetch.
  explicit ChunkAssembler(int64_t expected_version = 0, std::string expected_checksum = {},
                          ChunkLimits limits = {});

  // DATA_LOSS on a gap, overlap, over-long stream, oversized chunk or metadata
  // that contradicts the first chunk or the expectation. After an error the
  // assembler stays failed.
  Status Add(int64_t version, uint64_t total_bytes, std::string_view checksum, uint64_t offset,
             std::string_view data);

  // The whole payload; DATA_LOSS if the stream was empty or short, or its
  // SHA-256 differs from the announced checksum. Call once.
  StatusOr<std::string> Finish();

  int64_t version() const { return version_; }
  const std::string& checksum() const { return checksum_; }
  uint64_t received_bytes() const { return bytes_.size(); }

 private:
  int64_t expected_version_;
  std::string expected_checksum_;
  ChunkLimits limits_;
  bool started_ = false;
  Status failed_;
  int64_t version_ = 0;
  uint64_t total_ = 0;
  std::string checksum_;
  std::string bytes_;
};

}  // namespace fedge::agent
