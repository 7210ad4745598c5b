// Protocol v1 semantics between the wire and the round engine: version, job,
// token and session checks, chunking of the global model, size limits,
// checksums and decoding of updates. No sockets: the gRPC service in
// server.cpp only moves messages between streams and these methods, so every
// rule here is unit-tested by calling the methods directly. Thread-safe.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include "fedge.pb.h"
#include "fedge/aggregator/metrics.h"
#include "fedge/aggregator/revoked_pods.h"
#include "fedge/aggregator/round_engine.h"
#include "fedge/aggregator/service_account_token.h"
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
  // Set: Join checks tokens here instead (re-read when the file changes, for
  // agents of nodes that join after the aggregator started); `tokens` is unused.
  std::shared_ptr<TokenFile> token_file;
  // Set: Join verifies JoinRequest.token as a projected service-account token
  // (service_account_token.h) instead; `tokens` and `token_file` are unused.
  std::shared_ptr<ServiceAccountTokenVerifier> token_verifier;
  // With token_verifier: a session ends this long after the newest token its
  // agent presented (at Join or in RequestHeader.token) expired. The kubelet
  // renews a live pod's token well before expiry, so only a session whose
  // token stopped being renewed ends: a copied session id and token, a pod
  // that is gone, or a site whose control plane has been unreachable longer
  // than the token's lifetime plus this grace (raise it for such sites).
  int64_t session_grace_s = 3600;
  // With token_verifier: pods the operator saw deleted or ended (revoked_pods.h).
  // Their tokens are refused at Join and their sessions end at the next request,
  // PERMISSION_DENIED, instead of a token's lifetime plus the grace later.
  std::shared_ptr<RevokedPods> revoked_pods;
  size_t chunk_bytes = kMaxChunkBytes;
  // Resumable uploads held at once, counted by their declared total_bytes
  // (memory is reserved up front). Past it the least recently used idle one
  // is dropped; an upload that still does not fit is received unresumable.
  uint64_t max_partial_bytes = 256ull << 20;
  // Every byte of every incomplete upload held in memory (streams still
  // arriving and partial uploads kept for resumption), counted as it
  // arrives. A chunk that would pass it ends its stream with
  // RESOURCE_EXHAUSTED (the agent backs off and resumes). 0: no limit.
  uint64_t max_upload_buffer_bytes = 512ull << 20;
};

// The bytes of one upload received so far (named ones can be resumed, see
// UpdateHeader.upload_id).
struct PartialUpload {
  ~PartialUpload();  // gives its bytes back to the upload buffer budget

  std::string key;          // agent id + '\n' + upload id
  v1::UpdateHeader header;  // the header that started it
  std::string data;         // written only by the stream that holds it (in_use)
  std::atomic<uint64_t> received{0};
  bool in_use = false;     // guarded by ProtocolHandler::uploads_mu_
  uint64_t last_used = 0;  // guarded by uploads_mu_; LRU order
  // The handler's count of buffered upload bytes; data.size() of it is this
  // upload's.
  std::shared_ptr<std::atomic<uint64_t>> buffered;
};

// A FetchGlobal stream: the version being sent (kept alive while it is).
struct GlobalStream {
  std::shared_ptr<const GlobalModel> global;
  size_t chunk_bytes = kMaxChunkBytes;
  uint64_t sent = 0;
  bool started = false;  // a first chunk was made
};

// One SubmitUpdate stream between OpenUpload and CloseUpload/ReleaseUpload.
struct UploadStream {
  v1::UpdateHeader header;
  std::shared_ptr<PartialUpload> partial;  // always set after a successful OpenUpload
  bool resumable = false;                  // partial is registered under its key
};

class ProtocolHandler {
 public:
  // `engine` (and `metrics`, which may be null) must outlive the handler.
  ProtocolHandler(RoundEngine* engine, AggregatorMetrics* metrics, ProtocolOptions options);

  // Errors: FAILED_PRECONDITION (protocol version), NOT_FOUND (job),
  // UNAUTHENTICATED (token), INVALID_ARGUMENT (no agent id). With a
  // token_verifier also PERMISSION_DENIED (a valid token of another node's
  // pod) and UNAVAILABLE (a key the JWKS file does not hold yet: retry); with a
  // token_file UNAVAILABLE for an agent not listed yet. Refusals are logged
  // (never the token) and counted (AggregatorMetrics::JoinRefused).
  Status Join(const v1::JoinRequest& request, v1::JoinResponse* response);

  // Errors as CheckHeader.
  Status GetTask(const v1::TaskRequest& request, v1::Task* response);

  // Streams the requested global version in chunks of at most chunk_bytes,
  // each with version, total_bytes, checksum and offset. `write` returns false
  // when the peer went away (then CANCELLED). NOT_FOUND if there is no such
  // version.
  Status FetchGlobal(const v1::FetchGlobalRequest& request,
                     const std::function<bool(const v1::GlobalChunk&)>& write);

  // FetchGlobal in steps for a transport that writes asynchronously:
  // OpenFetch checks the request (errors as FetchGlobal); NextChunk gives the
  // chunk at stream->sent and advances it, false once everything was sent
  // (an empty bundle still gets one chunk); CloseFetch accounts the bytes.
  Status OpenFetch(const v1::FetchGlobalRequest& request, GlobalStream* stream);
  bool NextChunk(GlobalStream* stream, v1::GlobalChunk* chunk) const;
  // NextChunk for a zero-copy transport (issue 14, item 2: copying the
  // global into every chunk message and again into gRPC's buffers was ~20%
  // of the aggregator's CPU at 2,000 agents, and one copy per open fetch in
  // memory). `*prefix` gets the serialized GlobalChunk up to and including
  // the data field's tag and length; `*data` the chunk's bytes, a view into
  // stream->global->encoded (valid while that GlobalModel is alive). prefix
  // followed by data is the wire form of the chunk NextChunk would give (the
  // data field is the message's last). Advances stream->sent the same way.
  bool NextChunkWire(GlobalStream* stream, std::string* prefix, std::string_view* data) const;
  void CloseFetch(const GlobalStream& stream);

  // SubmitUpdate in two steps so that the service never buffers data it would
  // reject: BeginUpdate checks the header (protocol errors are returned as a
  // Status; an oversize declaration is a rejection in `*rejection` with
  // accepted=false). Then the caller appends chunks, keeping the total at or
  // under header.total_bytes (AppendChunk), and calls FinishUpdate.
  Status BeginUpdate(const v1::UpdateHeader& header, v1::SubmitUpdateResponse* rejection, bool* rejected);
  // Appends one chunk; false (with `*rejection` filled, `*buffer` unchanged)
  // if the data exceeds the declared total or the chunk limit, or the
  // bundle header it completes is not a bundle of the global's tensor count.
  bool AppendChunk(const v1::UpdateHeader& header, const std::string& chunk, std::string* buffer,
                   v1::SubmitUpdateResponse* rejection);
  v1::SubmitUpdateResponse FinishUpdate(const v1::UpdateHeader& header, const std::string& data);

  // The resumable form of BeginUpdate/AppendChunk/FinishUpdate the service
  // uses. OpenUpload: header checks as BeginUpdate (errors as Status,
  // content rejections in *rejection with *rejected = true). A header with an
  // upload_id registers the upload (offset 0) or resumes it (offset = bytes
  // held; otherwise rejected "bad_offset"/"unknown_upload", or "upload_busy"
  // while another stream still holds it). The caller then appends chunks
  // (AppendUpload; false + *rejection ends the call and drops the upload) and
  // ends with CloseUpload: a complete upload is decoded and submitted (the
  // partial is dropped whatever the verdict); an incomplete registered one is
  // kept and answered accepted=false with resume_offset; an incomplete
  // unregistered one is rejected (size_mismatch). ReleaseUpload gives a held
  // upload back without a verdict (stream errors).
  Status OpenUpload(const v1::UpdateHeader& header, UploadStream* stream, v1::SubmitUpdateResponse* rejection,
                    bool* rejected);
  // `error` (optional): set to RESOURCE_EXHAUSTED when the chunk does not
  // fit max_upload_buffer_bytes; then the stream should end with that status
  // rather than *rejection (a named upload keeps what it held).
  bool AppendUpload(UploadStream* stream, const std::string& chunk, v1::SubmitUpdateResponse* rejection,
                    Status* error = nullptr);
  v1::SubmitUpdateResponse CloseUpload(UploadStream* stream);
  void ReleaseUpload(UploadStream* stream);

  // How much of `upload_id` is held. Errors as CheckHeader.
  Status GetUploadStatus(const v1::UploadStatusRequest& request, v1::UploadStatus* response);

  // Drops idle partial uploads whose round no longer accepts updates
  // (RoundEngine::AcceptsUpdatesFor). The server calls it on every tick.
  void DropClosedUploads();
  // Partial uploads held and the bytes reserved for them.
  size_t partial_uploads() const;
  uint64_t partial_bytes() const;
  // Bytes actually received into the partial uploads held (partial_bytes() is
  // what they reserve: their declared totals).
  uint64_t partial_received_bytes() const;
  // Bytes of incomplete uploads in memory, open streams included (bounded by
  // max_upload_buffer_bytes).
  uint64_t upload_buffer_bytes() const { return buffered_->load(); }

  Status ReportMetrics(const v1::MetricsReport& request);

  // Secure aggregation (RoundEngine::SecAgg*; definitions in secagg_handler.cpp).
  // Errors as CheckHeader, then the engine's.
  Status SecAggAdvertise(const v1::SecAggAdvertiseRequest& request, v1::SecAggRoster* response);
  Status SecAggShareKeys(const v1::SecAggShareKeysRequest& request, v1::SecAggInbox* response);
  Status SecAggSubmitMasked(const v1::SecAggMaskedInput& request, v1::SecAggMaskedAck* response);
  Status SecAggUnmask(const v1::SecAggUnmaskRequest& request, v1::SecAggUnmaskResponse* response);

  // Version, job and session of a non-Join request; with a token_verifier
  // also the session's credential: a RequestHeader.token other than the last
  // one seen is verified (UNAUTHENTICATED / PERMISSION_DENIED as at Join, and
  // PERMISSION_DENIED for another pod's token), and a session whose newest
  // token expired more than session_grace_s ago is UNAUTHENTICATED (the agent
  // rejoins with the token its file holds now). The session of a revoked pod
  // ends, PERMISSION_DENIED.
  Status CheckHeader(const v1::RequestHeader& header);

  RoundEngine* engine() const { return engine_; }

 private:
  Status CheckVersionAndJob(const v1::RequestHeader& header) const;
  Status CheckSessionToken(const v1::RequestHeader& header);
  v1::SubmitUpdateResponse Reject(const v1::UpdateHeader& header, std::string_view label, std::string reason);
  // A "layout" rejection; for an INITIALIZE upload the engine also asks another agent.
  v1::SubmitUpdateResponse RejectLayout(const v1::UpdateHeader& header, const std::string& what);
  void EraseUploadLocked(const std::string& key);
  void DropClosedUploadsLocked();

  RoundEngine* const engine_;
  AggregatorMetrics* const metrics_;
  const ProtocolOptions options_;

  // Shared with every PartialUpload, which may outlive a stream.
  const std::shared_ptr<std::atomic<uint64_t>> buffered_ = std::make_shared<std::atomic<uint64_t>>(0);

  // What a token_verifier established for each agent's current session.
  struct SessionCredential {
    std::string session;
    std::string token;  // the newest token presented (compared, never logged)
    std::string pod_uid;
    int64_t expires_unix_s = 0;
    int64_t issued_unix_s = 0;  // the iat of the token the session began with (RevokedPods)
  };
  std::mutex credentials_mu_;
  std::map<std::string, SessionCredential> credentials_;  // by agent id; guarded by credentials_mu_

  mutable std::mutex uploads_mu_;
  std::map<std::string, std::shared_ptr<PartialUpload>> uploads_;  // guarded by uploads_mu_
  uint64_t upload_bytes_ = 0;                                      // guarded by uploads_mu_
  uint64_t upload_clock_ = 0;                                      // guarded by uploads_mu_
};

}  // namespace fedge::aggregator
