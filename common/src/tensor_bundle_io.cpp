// The bytes under the bundle format: the stored body read as a plain or zstd
// byte source, zstd compression, and the checksums (SHA-256 and XXH3-128:
// the trailer and the transport checksum, ChecksumBundle). Layout and values are tensor_bundle.cpp's and
// tensor_codecs.cpp's.
#include <openssl/evp.h>
#include <xxhash.h>
#include <zstd.h>

#include <array>
#include <cstring>
#include <memory>

#include "fedge/tensor_bundle.h"
#include "tensor_bundle_internal.h"

namespace fedge {
namespace internal {
namespace {

class PlainSource : public BodySource {
 public:
  explicit PlainSource(std::string_view data) : data_(data) {}
  Status Read(size_t n, char* out) override {
    if (n > data_.size() - pos_) {
      return Corrupt("truncated body: needs " + std::to_string(n) + " more bytes at offset " +
                     std::to_string(pos_) + " of " + std::to_string(data_.size()));
    }
    std::memcpy(out, data_.data() + pos_, n);
    pos_ += n;
    return OkStatus();
  }
  Status Finish() override {
    if (pos_ != data_.size()) {
      return Corrupt(std::to_string(data_.size() - pos_) + " trailing bytes after the last tensor");
    }
    return OkStatus();
  }

 private:
  std::string_view data_;
  size_t pos_ = 0;
};

class ZstdSource : public BodySource {
 public:
  ZstdSource(std::string_view frame, uint64_t body_size)
      : dctx_(ThreadDCtx()), input_{frame.data(), frame.size(), 0}, body_size_(body_size) {
    ZSTD_DCtx_reset(dctx_, ZSTD_reset_session_and_parameters);
    // The default window limit (128 MiB) already bounds decoder memory; set it
    // explicitly so a library default change cannot widen it.
    ZSTD_DCtx_setParameter(dctx_, ZSTD_d_windowLogMax, 27);
  }

  Status Read(size_t n, char* out) override {
    if (n > body_size_ - produced_) {
      return Corrupt("truncated body: needs " + std::to_string(n) + " more bytes at offset " +
                     std::to_string(produced_) + " of the declared " + std::to_string(body_size_));
    }
    ZSTD_outBuffer output{out, n, 0};
    while (output.pos < output.size) {
      if (frame_done_) {
        return Corrupt("decompressed size mismatch: zstd frame ended after " +
                       std::to_string(produced_ + output.pos) + " bytes, header declares " +
                       std::to_string(body_size_));
      }
      const size_t before_in = input_.pos, before_out = output.pos;
      const size_t ret = ZSTD_decompressStream(dctx_, &output, &input_);
      if (ZSTD_isError(ret)) return Corrupt(std::string("zstd frame error: ") + ZSTD_getErrorName(ret));
      if (ret == 0) {
        frame_done_ = true;
      } else if (input_.pos == before_in && output.pos == before_out) {
        return Corrupt("zstd frame truncated after " + std::to_string(produced_ + output.pos) +
                       " decompressed bytes");
      }
    }
    produced_ += n;
    return OkStatus();
  }

  Status Finish() override {
    if (produced_ != body_size_) {
      return Corrupt("decompressed size mismatch: tensors end at " + std::to_string(produced_) +
                     " bytes, header declares " + std::to_string(body_size_));
    }
    // The frame must end exactly here: no output left, no input after it.
    char extra;
    while (!frame_done_) {
      ZSTD_outBuffer output{&extra, 1, 0};
      const size_t before_in = input_.pos;
      const size_t ret = ZSTD_decompressStream(dctx_, &output, &input_);
      if (ZSTD_isError(ret)) return Corrupt(std::string("zstd frame error: ") + ZSTD_getErrorName(ret));
      if (output.pos != 0) {
        return Corrupt("decompressed size mismatch: zstd frame holds more than the declared " +
                       std::to_string(body_size_) + " bytes");
      }
      if (ret == 0) {
        frame_done_ = true;
      } else if (input_.pos == before_in) {
        return Corrupt("zstd frame truncated (no end of frame)");
      }
    }
    if (input_.pos != input_.size) {
      return Corrupt(std::to_string(input_.size - input_.pos) + " trailing bytes after the zstd frame");
    }
    return OkStatus();
  }

 private:
  // One decompression context per thread, reset for every bundle: creating
  // one per decode (and zeroing its workspace) cost more than decompressing
  // an 83 KB update (issue 14, item 2). A thread decodes one bundle at a time.
  // A context that grew a large window (a large bundle) is freed after its
  // decode rather than kept for the thread's lifetime.
  static constexpr size_t kKeepDCtxBytes = 4u << 20;
  using DCtxPtr = std::unique_ptr<ZSTD_DCtx, size_t (*)(ZSTD_DCtx*)>;
  static DCtxPtr& ThreadSlot() {
    thread_local DCtxPtr ctx(nullptr, &ZSTD_freeDCtx);
    return ctx;
  }
  static ZSTD_DCtx* ThreadDCtx() {
    DCtxPtr& ctx = ThreadSlot();
    if (ctx == nullptr) ctx.reset(ZSTD_createDCtx());
    if (ctx == nullptr) DieBecause("ZSTD_createDCtx failed", InternalError("out of memory"));
    return ctx.get();
  }

 public:
  ~ZstdSource() override {
    if (ZSTD_sizeof_DCtx(dctx_) > kKeepDCtxBytes) ThreadSlot().reset();
  }

 private:
  ZSTD_DCtx* const dctx_;
  ZSTD_inBuffer input_;
  uint64_t body_size_;
  uint64_t produced_ = 0;
  bool frame_done_ = false;
};

// SHA-256 through one EVP context per thread and a digest fetched once
// (EVP_Digest with EVP_sha256() allocates a context and looks the
// implementation up on every call).
class Sha256Context {
 public:
  static Sha256Context& ForThread() {
    thread_local Sha256Context ctx;
    return ctx;
  }
  void Init() { Check(EVP_DigestInit_ex(ctx_.get(), Md(), nullptr), "EVP_DigestInit_ex"); }
  void Update(std::string_view bytes) {
    Check(EVP_DigestUpdate(ctx_.get(), bytes.data(), bytes.size()), "EVP_DigestUpdate");
  }
  // The digest of what was hashed so far; the context may go on hashing.
  std::array<unsigned char, 32> Peek() {
    Check(EVP_MD_CTX_copy_ex(fork_.get(), ctx_.get()), "EVP_MD_CTX_copy_ex");
    return Final(fork_.get());
  }
  std::array<unsigned char, 32> Final() { return Final(ctx_.get()); }

 private:
  Sha256Context() : ctx_(EVP_MD_CTX_new(), &EVP_MD_CTX_free), fork_(EVP_MD_CTX_new(), &EVP_MD_CTX_free) {
    if (!ctx_ || !fork_) DieBecause("EVP_MD_CTX_new failed", InternalError("OpenSSL"));
  }
  static const EVP_MD* Md() {
    static const EVP_MD* md = [] {
      const EVP_MD* fetched = EVP_MD_fetch(nullptr, "SHA256", nullptr);
      return fetched != nullptr ? fetched : EVP_sha256();
    }();
    return md;
  }
  static void Check(int ok, const char* what) {
    if (ok != 1) DieBecause(what, InternalError("OpenSSL SHA-256"));
  }
  static std::array<unsigned char, 32> Final(EVP_MD_CTX* ctx) {
    std::array<unsigned char, 32> digest{};
    unsigned int len = 0;
    Check(EVP_DigestFinal_ex(ctx, digest.data(), &len), "EVP_DigestFinal_ex");
    if (len != digest.size()) DieBecause("SHA-256 digest length", InternalError("OpenSSL"));
    return digest;
  }

  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx_, fork_;
};

// XXH3-128 streaming state, one per thread (its 576-byte state is allocated
// once). Peek does not end the stream: XXH3_128bits_digest leaves it as is.
class Xxh3Context {
 public:
  static Xxh3Context& ForThread() {
    thread_local Xxh3Context ctx;
    return ctx;
  }
  void Init() {
    if (XXH3_128bits_reset(state_.get()) != XXH_OK) DieBecause("XXH3_128bits_reset", InternalError("xxhash"));
  }
  void Update(std::string_view bytes) {
    if (XXH3_128bits_update(state_.get(), bytes.data(), bytes.size()) != XXH_OK) {
      DieBecause("XXH3_128bits_update", InternalError("xxhash"));
    }
  }
  std::array<unsigned char, 16> Peek() const { return Canonical(XXH3_128bits_digest(state_.get())); }
  std::array<unsigned char, 16> Final() const { return Peek(); }

  static std::array<unsigned char, 16> Canonical(XXH128_hash_t h) {
    XXH128_canonical_t c;
    XXH128_canonicalFromHash(&c, h);
    std::array<unsigned char, 16> out{};
    std::memcpy(out.data(), c.digest, out.size());
    return out;
  }

 private:
  Xxh3Context() : state_(XXH3_createState(), &XXH3_freeState) {
    if (!state_) DieBecause("XXH3_createState failed", InternalError("out of memory"));
  }
  std::unique_ptr<XXH3_state_t, XXH_errorcode (*)(XXH3_state_t*)> state_;
};

}  // namespace

StatusOr<std::unique_ptr<BodySource>> OpenBody(std::string_view stored, bool zstd, uint64_t body_size) {
  if (zstd) {
    const unsigned long long frame_size = ZSTD_getFrameContentSize(stored.data(), stored.size());
    if (frame_size == ZSTD_CONTENTSIZE_ERROR) return Corrupt("zstd frame error: payload is not a zstd frame");
    if (frame_size != ZSTD_CONTENTSIZE_UNKNOWN && frame_size != body_size) {
      return Corrupt("decompressed size mismatch: zstd frame declares " + std::to_string(frame_size) +
                     " bytes, header declares " + std::to_string(body_size));
    }
    return std::unique_ptr<BodySource>(std::make_unique<ZstdSource>(stored, body_size));
  }
  if (body_size != stored.size()) {
    return Corrupt("body size " + std::to_string(body_size) + " != stored size " +
                   std::to_string(stored.size()) + " in an uncompressed bundle");
  }
  return std::unique_ptr<BodySource>(std::make_unique<PlainSource>(stored));
}

StatusOr<std::string> CompressBody(std::string_view body, int level) {
  if (level < ZSTD_minCLevel() || level > ZSTD_maxCLevel()) {
    return Invalid("zstd_level " + std::to_string(level) + " is outside " + std::to_string(ZSTD_minCLevel()) +
                   ".." + std::to_string(ZSTD_maxCLevel()));
  }
  std::string stored(ZSTD_compressBound(body.size()), '\0');
  // ZSTD_compress records the content size in the frame header, which the
  // decoder cross-checks against the bundle header.
  const size_t n = ZSTD_compress(stored.data(), stored.size(), body.data(), body.size(), level);
  if (ZSTD_isError(n)) return InternalError(std::string("zstd compression failed: ") + ZSTD_getErrorName(n));
  stored.resize(n);
  return stored;
}

std::array<unsigned char, 32> Sha256(std::string_view bytes) {
  Sha256Context& ctx = Sha256Context::ForThread();
  ctx.Init();
  ctx.Update(bytes);
  return ctx.Final();
}

std::array<unsigned char, 16> Xxh3_128(std::string_view bytes) {
  return Xxh3Context::Canonical(XXH3_128bits(bytes.data(), bytes.size()));
}

std::string Trailer(ChecksumAlgorithm algorithm, std::string_view covered) {
  if (algorithm == ChecksumAlgorithm::kXxh3_128) {
    const auto d = Xxh3_128(covered);
    return std::string(reinterpret_cast<const char*>(d.data()), d.size());
  }
  const auto d = Sha256(covered);
  return std::string(reinterpret_cast<const char*>(d.data()), d.size());
}

namespace {
std::string Hex(const unsigned char* p, size_t n) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(2 * n);
  for (size_t i = 0; i < n; ++i) {
    out.push_back(kHex[p[i] >> 4]);
    out.push_back(kHex[p[i] & 15]);
  }
  return out;
}
}  // namespace

std::string HexDigest(const std::array<unsigned char, 32>& digest) {
  return Hex(digest.data(), digest.size());
}
std::string HexDigest(const std::array<unsigned char, 16>& digest) {
  return Hex(digest.data(), digest.size());
}

}  // namespace internal

using internal::HexDigest;
using internal::kHeaderBytes;
using internal::Sha256;
using internal::Sha256Context;

std::string_view ChecksumAlgorithmName(ChecksumAlgorithm algorithm) {
  return algorithm == ChecksumAlgorithm::kXxh3_128 ? "xxh3-128" : "sha256";
}

std::string Sha256Hex(std::string_view bytes) { return HexDigest(Sha256(bytes)); }
std::string Xxh3_128Hex(std::string_view bytes) { return HexDigest(internal::Xxh3_128(bytes)); }
std::string ChecksumHex(ChecksumAlgorithm algorithm, std::string_view bytes) {
  return algorithm == ChecksumAlgorithm::kXxh3_128 ? Xxh3_128Hex(bytes) : Sha256Hex(bytes);
}

namespace {
// The trailer algorithm `bytes` declare (header byte 11), if it has a header.
// Only a hint: DecodeBundle validates the header before it trusts the verdict.
ChecksumAlgorithm DeclaredTrailer(std::string_view bytes) {
  if (bytes.size() < kHeaderBytes) return ChecksumAlgorithm::kSha256;
  return (static_cast<uint8_t>(bytes[internal::kFlagsOffset]) & internal::kFlagXxh3Trailer) != 0
             ? ChecksumAlgorithm::kXxh3_128
             : ChecksumAlgorithm::kSha256;
}

// One pass of `Ctx` over `bytes`: the digest of all of them into out->hex, and
// out->trailer_matches from the digest of all but the last `trailer` bytes.
template <typename Ctx>
void OnePass(Ctx& ctx, std::string_view bytes, size_t trailer, BundleChecksums* out) {
  ctx.Init();
  if (bytes.size() < kHeaderBytes + trailer) {
    ctx.Update(bytes);
    out->hex = HexDigest(ctx.Final());
    return;
  }
  const size_t covered = bytes.size() - trailer;
  ctx.Update(bytes.substr(0, covered));
  const auto digest = ctx.Peek();
  out->trailer_matches = std::memcmp(digest.data(), bytes.data() + covered, trailer) == 0;
  ctx.Update(bytes.substr(covered));
  out->hex = HexDigest(ctx.Final());
}
}  // namespace

BundleChecksums ChecksumBundle(std::string_view bytes, ChecksumAlgorithm transport) {
  BundleChecksums out;
  out.algorithm = transport;
  out.size = bytes.size();
  out.data = bytes.data();
  const ChecksumAlgorithm trailer = DeclaredTrailer(bytes);
  const size_t trailer_bytes = internal::TrailerBytes(trailer);
  if (trailer != transport) {  // an unusual pairing: two passes
    out.hex = ChecksumHex(transport, bytes);
    if (bytes.size() >= kHeaderBytes + trailer_bytes) {
      const size_t covered = bytes.size() - trailer_bytes;
      out.trailer_matches = internal::Trailer(trailer, bytes.substr(0, covered)) == bytes.substr(covered);
    }
    return out;
  }
  if (transport == ChecksumAlgorithm::kXxh3_128) {
    OnePass(internal::Xxh3Context::ForThread(), bytes, trailer_bytes, &out);
  } else {
    OnePass(Sha256Context::ForThread(), bytes, trailer_bytes, &out);
  }
  return out;
}

}  // namespace fedge
