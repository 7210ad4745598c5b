#include "fedge/secagg/crypto.h"

#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/rand.h>

#include <memory>

namespace fedge::secagg {

namespace {

struct PkeyDeleter {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
struct PkeyCtxDeleter {
  void operator()(EVP_PKEY_CTX* p) const { EVP_PKEY_CTX_free(p); }
};
struct CipherCtxDeleter {
  void operator()(EVP_CIPHER_CTX* p) const { EVP_CIPHER_CTX_free(p); }
};
using Pkey = std::unique_ptr<EVP_PKEY, PkeyDeleter>;
using PkeyCtx = std::unique_ptr<EVP_PKEY_CTX, PkeyCtxDeleter>;
using CipherCtx = std::unique_ptr<EVP_CIPHER_CTX, CipherCtxDeleter>;

const unsigned char* U(std::string_view s) { return reinterpret_cast<const unsigned char*>(s.data()); }
unsigned char* U(Bytes& s) { return reinterpret_cast<unsigned char*>(s.data()); }

constexpr size_t kNonceBytes = 12;
constexpr size_t kTagBytes = 16;

}  // namespace

StatusOr<Bytes> RandomBytes(size_t n) {
  Bytes out(n, '\0');
  if (n > 0 && RAND_bytes(U(out), static_cast<int>(n)) != 1) return InternalError("RAND_bytes failed");
  return out;
}

StatusOr<Bytes> PublicKeyOf(const Bytes& private_key) {
  if (private_key.size() != kKeyBytes) return InvalidArgumentError("X25519 private key must be 32 bytes");
  Pkey key(EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, nullptr, U(private_key), kKeyBytes));
  if (!key) return InternalError("EVP_PKEY_new_raw_private_key failed");
  Bytes pub(kKeyBytes, '\0');
  size_t len = pub.size();
  if (EVP_PKEY_get_raw_public_key(key.get(), U(pub), &len) != 1 || len != kKeyBytes) {
    return InternalError("EVP_PKEY_get_raw_public_key failed");
  }
  return pub;
}

StatusOr<KeyPair> GenerateKeyPair() {
  KeyPair kp;
  FEDGE_ASSIGN_OR_RETURN(kp.private_key, RandomBytes(kKeyBytes));
  FEDGE_ASSIGN_OR_RETURN(kp.public_key, PublicKeyOf(kp.private_key));
  return kp;
}

StatusOr<Bytes> Hkdf(std::string_view ikm, std::string_view salt, std::string_view info, size_t length) {
  PkeyCtx ctx(EVP_PKEY_CTX_new_id(EVP_PKEY_HKDF, nullptr));
  if (!ctx || EVP_PKEY_derive_init(ctx.get()) != 1 ||
      EVP_PKEY_CTX_set_hkdf_md(ctx.get(), EVP_sha256()) != 1 ||
      EVP_PKEY_CTX_set1_hkdf_salt(ctx.get(), U(salt), static_cast<int>(salt.size())) != 1 ||
      EVP_PKEY_CTX_set1_hkdf_key(ctx.get(), U(ikm), static_cast<int>(ikm.size())) != 1 ||
      EVP_PKEY_CTX_add1_hkdf_info(ctx.get(), U(info), static_cast<int>(info.size())) != 1) {
    return InternalError("HKDF setup failed");
  }
  Bytes out(length, '\0');
  size_t len = length;
  if (EVP_PKEY_derive(ctx.get(), U(out), &len) != 1 || len != length) return InternalError("HKDF failed");
  return out;
}

StatusOr<Bytes> AgreeKey(const Bytes& private_key, const Bytes& peer_public_key, std::string_view context) {
  if (private_key.size() != kKeyBytes || peer_public_key.size() != kKeyBytes) {
    return InvalidArgumentError("X25519 keys must be 32 bytes");
  }
  Pkey mine(EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, nullptr, U(private_key), kKeyBytes));
  Pkey peer(EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, nullptr, U(peer_public_key), kKeyBytes));
  if (!mine || !peer) return InvalidArgumentError("not an X25519 key");
  PkeyCtx ctx(EVP_PKEY_CTX_new(mine.get(), nullptr));
  Bytes shared(kKeyBytes, '\0');
  size_t len = shared.size();
  // OpenSSL refuses a low-order peer key (all-zero result) in derive.
  if (!ctx || EVP_PKEY_derive_init(ctx.get()) != 1 || EVP_PKEY_derive_set_peer(ctx.get(), peer.get()) != 1 ||
      EVP_PKEY_derive(ctx.get(), U(shared), &len) != 1 || len != kKeyBytes) {
    return InvalidArgumentError("X25519 key agreement failed (invalid or low-order peer key)");
  }
  return Hkdf(shared, "fedge-secagg-v1", context, kKeyBytes);
}

StatusOr<Bytes> Seal(const Bytes& key, std::string_view aad, std::string_view plaintext) {
  if (key.size() != kKeyBytes) return InvalidArgumentError("AES-256-GCM key must be 32 bytes");
  FEDGE_ASSIGN_OR_RETURN(Bytes out, RandomBytes(kNonceBytes));
  out.resize(kNonceBytes + plaintext.size() + kTagBytes);
  CipherCtx ctx(EVP_CIPHER_CTX_new());
  int len = 0;
  if (!ctx || EVP_EncryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, nullptr, nullptr) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_IVLEN, kNonceBytes, nullptr) != 1 ||
      EVP_EncryptInit_ex(ctx.get(), nullptr, nullptr, U(key), U(out)) != 1 ||
      EVP_EncryptUpdate(ctx.get(), nullptr, &len, U(aad), static_cast<int>(aad.size())) != 1 ||
      EVP_EncryptUpdate(ctx.get(), U(out) + kNonceBytes, &len, U(plaintext),
                        static_cast<int>(plaintext.size())) != 1 ||
      EVP_EncryptFinal_ex(ctx.get(), U(out) + kNonceBytes + len, &len) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, kTagBytes,
                          U(out) + kNonceBytes + plaintext.size()) != 1) {
    return InternalError("AES-256-GCM encryption failed");
  }
  return out;
}

StatusOr<Bytes> Open(const Bytes& key, std::string_view aad, std::string_view sealed) {
  if (key.size() != kKeyBytes) return InvalidArgumentError("AES-256-GCM key must be 32 bytes");
  if (sealed.size() < kNonceBytes + kTagBytes) return InvalidArgumentError("sealed message too short");
  const size_t n = sealed.size() - kNonceBytes - kTagBytes;
  Bytes out(n, '\0');
  Bytes tag(sealed.substr(kNonceBytes + n));
  CipherCtx ctx(EVP_CIPHER_CTX_new());
  int len = 0;
  if (!ctx || EVP_DecryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, nullptr, nullptr) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_IVLEN, kNonceBytes, nullptr) != 1 ||
      EVP_DecryptInit_ex(ctx.get(), nullptr, nullptr, U(key), U(sealed)) != 1 ||
      EVP_DecryptUpdate(ctx.get(), nullptr, &len, U(aad), static_cast<int>(aad.size())) != 1 ||
      EVP_DecryptUpdate(ctx.get(), U(out), &len, U(sealed) + kNonceBytes, static_cast<int>(n)) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, kTagBytes, U(tag)) != 1) {
    return InternalError("AES-256-GCM decryption setup failed");
  }
  if (EVP_DecryptFinal_ex(ctx.get(), U(out) + len, &len) != 1) {
    return PermissionDeniedError("sealed message does not authenticate (wrong key, context or tampered)");
  }
  return out;
}

Status AddPrgMask(const Bytes& seed, int bits, int sign, std::vector<uint32_t>* ring) {
  if (seed.size() != kKeyBytes) return InvalidArgumentError("PRG seed must be 32 bytes");
  if (bits != 16 && bits != 32) return InvalidArgumentError("ring bits must be 16 or 32");
  if (sign != 1 && sign != -1) return InvalidArgumentError("mask sign must be +1 or -1");
  const size_t width = static_cast<size_t>(bits / 8);
  const uint32_t mask = bits == 32 ? 0xFFFFFFFFu : 0xFFFFu;
  CipherCtx ctx(EVP_CIPHER_CTX_new());
  const unsigned char iv[16] = {0};
  if (!ctx || EVP_EncryptInit_ex(ctx.get(), EVP_aes_256_ctr(), nullptr, U(seed), iv) != 1) {
    return InternalError("AES-256-CTR setup failed");
  }
  // The keystream is AES-CTR over zeros; produced in blocks so memory stays small.
  constexpr size_t kBlockElems = 8192;
  std::vector<unsigned char> zeros(kBlockElems * 4, 0), stream(kBlockElems * 4 + 16);
  std::vector<uint32_t>& r = *ring;
  for (size_t start = 0; start < r.size(); start += kBlockElems) {
    const size_t count = std::min(kBlockElems, r.size() - start);
    int len = 0;
    if (EVP_EncryptUpdate(ctx.get(), stream.data(), &len, zeros.data(), static_cast<int>(count * width)) !=
        1) {
      return InternalError("AES-256-CTR failed");
    }
    for (size_t i = 0; i < count; ++i) {
      const unsigned char* p = stream.data() + i * width;
      uint32_t w = width == 2 ? static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8)
                              : static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
                                    (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
      r[start + i] = (sign > 0 ? r[start + i] + w : r[start + i] - w) & mask;
    }
  }
  return OkStatus();
}

}  // namespace fedge::secagg
