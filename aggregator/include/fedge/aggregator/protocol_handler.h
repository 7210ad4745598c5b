// Protocol v1 semantics between the wire and the round engine: version, job,
// token and session checks, chunking of the global model, size limits,
// checksums and decoding of updates. No sockets: the gRPC service in
// server.cpp only moves messages between streams and these methods, so every
// rule here is unit-tested by calling the methods directly. Thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "fedge.pb.h"
#include "fedge/aggregator/metrics.h"
#include "fedge/aggregator/round_engine.h"
#include "fedge/aggregator/tokens.h"
#include "fedge/status.h"

namespace fedge::aggregator {

inline constexpr uint32_t kProtocolVersion = 1;
inline constexpr size_t kMaxChunkBytes = 4u << 20;

struct ProtocolOptions {
  // Largest encoded update accepted; larger declared sizes are rejected before
  // any data is buffered.
  uint64_t max_update_bytes = 256ull << 20;
  TokenMap tokens;  // empty: no token check
  size_t chunk_bytes = kMaxChunkBytes;
};

class ProtocolHandler {
 public:
  // `engine` (and `metrics`, which may be null) must outlive the handler.
  ProtocolHandler(RoundEngine* engine, AggregatorMetrics* metrics, ProtocolOptions options);

  // Errors: FAILED_PRECONDITION (protocol version), NOT_FOUND (job),
  // UNAUTHENTICATED (token), INVALID_ARGUMENT (no agent id).
  Status Join(const v1::JoinRequest& request, v1::JoinResponse* response);

  // Errors as CheckHeader.
  Status GetTask(const v1::TaskRequest& request, v1::Task* response);

  // Streams the requested global version in chunks of at most chunk_bytes,
  // each with version, total_bytes, checksum and offset. `write` returns false
  // when the peer went away (then CANCELLED). NOT_FOUND if there is no such
  // version.
  Status FetchGlobal(const v1::FetchGlobalRequest& request,
                     const std::function<bool(const v1::GlobalChunk&)>& write);

  // SubmitUpdate in two steps so that the service never buffers data it would
  // reject: BeginUpdate checks the header (protocol errors are returned as a
  // Status; an oversize declaration is a rejection in `*rejection` with
  // accepted=false). Then the caller appends chunks, keeping the total at or
  // under header.total_bytes (AppendChunk), and calls FinishUpdate.
  Status BeginUpdate(const v1::UpdateHeader& header, v1::SubmitUpdateResponse* rejection, bool* rejected);
  // Appends one chunk; false (with `*rejection` filled) if the data exceeds
  // the declared total or the chunk limit.
  bool AppendChunk(const v1::UpdateHeader& header, const std::string& chunk, std::string* buffer,
                   v1::SubmitUpdateResponse* rejection);
  v1::SubmitUpdateResponse FinishUpdate(const v1::UpdateHeader& header, const std::string& data);

  Status ReportMetrics(const v1::MetricsReport& request);

  // Version, job and session of a non-Join request.
  Status CheckHeader(const v1::RequestHeader& header) const;

  RoundEngine* engine() const { return engine_; }

 private:
  Status CheckVersionAndJob(const v1::RequestHeader& header) const;
  v1::SubmitUpdateResponse Reject(const v1::UpdateHeader& header, std::string_view label, std::string reason);

  RoundEngine* const engine_;
  AggregatorMetrics* const metrics_;
  const ProtocolOptions options_;
};

}  // namespace fedge::aggregator
