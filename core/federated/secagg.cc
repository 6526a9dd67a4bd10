#include "core/federated/secagg.h"

#include <openssl/evp.h>
#include <openssl/rand.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>

#include "transport/error.h"

namespace fedra::secagg {
namespace {

struct PkeyFree {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
struct PkeyCtxFree {
  void operator()(EVP_PKEY_CTX* p) const { EVP_PKEY_CTX_free(p); }
};
struct CipherCtxFree {
  void operator()(EVP_CIPHER_CTX* p) const { EVP_CIPHER_CTX_free(p); }
};
using Pkey = std::unique_ptr<EVP_PKEY, PkeyFree>;
using PkeyCtx = std::unique_ptr<EVP_PKEY_CTX, PkeyCtxFree>;
using CipherCtx = std::unique_ptr<EVP_CIPHER_CTX, CipherCtxFree>;

void require_ok(int rc, const char* what) {
  FEDRA_REQUIRE(rc == 1, "secure aggregation: OpenSSL's {} failed", what);
}

Pkey private_key(const Key& secret) {
  Pkey k(EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, nullptr, secret.data(), secret.size()));
  FEDRA_REQUIRE(k != nullptr, "secure aggregation: not an X25519 private key");
  return k;
}

constexpr uint64_t kP = (uint64_t{1} << 61) - 1;  // the Mersenne prime 2^61 - 1

uint64_t mod_p(unsigned __int128 v) {
  // v mod (2^61 - 1) by folding: 2^61 = 1 (mod p).
  uint64_t lo = static_cast<uint64_t>(v & kP);
  uint64_t hi = static_cast<uint64_t>(v >> 61);
  uint64_t r = lo + (hi & kP) + (hi >> 61);
  while (r >= kP) r -= kP;
  return r;
}
uint64_t add_p(uint64_t a, uint64_t b) { return mod_p(static_cast<unsigned __int128>(a) + b); }
uint64_t sub_p(uint64_t a, uint64_t b) { return a >= b ? a - b : a + kP - b; }
uint64_t mul_p(uint64_t a, uint64_t b) { return mod_p(static_cast<unsigned __int128>(a) * b); }
uint64_t pow_p(uint64_t a, uint64_t e) {
  uint64_t r = 1;
  while (e > 0) {
    if (e & 1) r = mul_p(r, a);
    a = mul_p(a, a);
    e >>= 1;
  }
  return r;
}
uint64_t inv_p(uint64_t a) { return pow_p(a, kP - 2); }

uint64_t random_field_element() {
  uint64_t v = 0;
  require_ok(RAND_bytes(reinterpret_cast<unsigned char*>(&v), sizeof(v)), "RAND_bytes");
  return mod_p(v);
}

// y[i] += (or -=) the i-th little-endian word of `stream`, wrapping.
template <class Word>
void apply_stream(Word* y, const uint8_t* stream, size_t n, bool subtract) {
  Word s[16384 / sizeof(Word)];
  std::memcpy(s, stream, n * sizeof(Word));
  if (subtract) {
    for (size_t i = 0; i < n; ++i) y[i] -= s[i];
  } else {
    for (size_t i = 0; i < n; ++i) y[i] += s[i];
  }
}

}  // namespace

KeyPair KeyPair::generate() {
  KeyPair kp;
  kp.secret = random_key();
  kp.public_key = public_of(kp.secret);
  return kp;
}

Key public_of(const Key& secret) {
  Pkey k = private_key(secret);
  Key pub{};
  size_t len = pub.size();
  require_ok(EVP_PKEY_get_raw_public_key(k.get(), pub.data(), &len), "X25519 public key");
  return pub;
}

Key agree(const Key& my_secret, const Key& their_public, std::string_view label) {
  Pkey mine = private_key(my_secret);
  Pkey theirs(EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, nullptr, their_public.data(), their_public.size()));
  FEDRA_REQUIRE(theirs != nullptr, "secure aggregation: not an X25519 public key");
  PkeyCtx ctx(EVP_PKEY_CTX_new(mine.get(), nullptr));
  FEDRA_REQUIRE(ctx != nullptr, "secure aggregation: no key agreement context");
  require_ok(EVP_PKEY_derive_init(ctx.get()), "X25519 derive_init");
  require_ok(EVP_PKEY_derive_set_peer(ctx.get(), theirs.get()), "X25519 set_peer");
  Key shared{};
  size_t len = shared.size();
  // OpenSSL refuses a peer key of small order (an all-zero shared secret): derive fails.
  FEDRA_REQUIRE(EVP_PKEY_derive(ctx.get(), shared.data(), &len) == 1 && len == shared.size(),
                "secure aggregation: key agreement with a bad public key (small order or malformed)");
  return hash(label, shared.data(), shared.size());
}

Key hash(std::string_view label, const uint8_t* data, size_t size) {
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> md(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
  require_ok(EVP_DigestInit_ex(md.get(), EVP_sha256(), nullptr), "SHA-256 init");
  require_ok(EVP_DigestUpdate(md.get(), label.data(), label.size()), "SHA-256");
  require_ok(EVP_DigestUpdate(md.get(), data, size), "SHA-256");
  Key out{};
  unsigned int len = 0;
  require_ok(EVP_DigestFinal_ex(md.get(), out.data(), &len), "SHA-256 final");
  return out;
}

Key random_key() {
  Key k{};
  require_ok(RAND_bytes(k.data(), static_cast<int>(k.size())), "RAND_bytes");
  return k;
}

void add_mask(void* ring, size_t n, int bits, const Key& seed, bool subtract) {
  FEDRA_REQUIRE(bits == 32 || bits == 64, "secure aggregation: ring of {} bits (32 or 64)", bits);
  CipherCtx ctx(EVP_CIPHER_CTX_new());
  static const std::array<uint8_t, 16> iv{};  // a fresh key per use: the counter can start at 0
  require_ok(EVP_EncryptInit_ex(ctx.get(), EVP_aes_128_ctr(), nullptr, seed.data(), iv.data()), "AES-CTR init");
  const size_t word = static_cast<size_t>(bits / 8);
  constexpr size_t kChunk = 16384;  // bytes of keystream per call: stays in L1
  alignas(64) static thread_local uint8_t zeros[kChunk] = {};
  alignas(64) uint8_t stream[kChunk];
  auto* bytes = static_cast<uint8_t*>(ring);
  for (size_t done = 0; done < n * word;) {
    const size_t len = std::min(kChunk, n * word - done);
    int out = 0;
    require_ok(EVP_EncryptUpdate(ctx.get(), stream, &out, zeros, static_cast<int>(len)), "AES-CTR");
    if (bits == 32) {
      apply_stream(reinterpret_cast<uint32_t*>(bytes + done), stream, len / 4, subtract);
    } else {
      apply_stream(reinterpret_cast<uint64_t*>(bytes + done), stream, len / 8, subtract);
    }
    done += len;
  }
}

std::vector<Share> split(const Key& secret, int threshold, const std::vector<uint64_t>& xs) {
  FEDRA_REQUIRE(threshold >= 1 && static_cast<size_t>(threshold) <= xs.size(),
                "secure aggregation: a threshold of {} with {} shares", threshold, xs.size());
  std::array<uint64_t, 5> pieces{};
  for (size_t j = 0; j < 5; ++j) {
    for (size_t b = 0; b < 7; ++b) {
      const size_t at = j * 7 + b;
      if (at < secret.size()) pieces[j] |= static_cast<uint64_t>(secret[at]) << (8 * b);
    }
  }
  // coefficients[j][0] is the piece; the others random.
  std::vector<std::array<uint64_t, 5>> coef(static_cast<size_t>(threshold));
  coef[0] = pieces;
  for (size_t d = 1; d < coef.size(); ++d) {
    for (auto& c : coef[d]) c = random_field_element();
  }
  std::vector<Share> out;
  for (uint64_t x : xs) {
    FEDRA_REQUIRE(x > 0 && x < kP, "secure aggregation: share point {} is not in 1..2^61-2", x);
    Share s;
    s.x = x;
    for (size_t j = 0; j < 5; ++j) {
      uint64_t acc = 0;  // Horner
      for (size_t d = coef.size(); d-- > 0;) acc = add_p(mul_p(acc, x), coef[d][j]);
      s.y[j] = acc;
    }
    out.push_back(s);
  }
  return out;
}

namespace {

// The polynomials through the first t shares, evaluated at x (Lagrange).
std::array<uint64_t, 5> interpolate(const std::vector<Share>& shares, size_t t, uint64_t x) {
  for (size_t i = 0; i < t; ++i) {
    FEDRA_REQUIRE(shares[i].x > 0 && shares[i].x < kP, "secure aggregation: share point {} is out of range", shares[i].x);
    for (size_t j = 0; j < i; ++j) {
      FEDRA_REQUIRE(shares[i].x != shares[j].x, "secure aggregation: two shares at the same point {}", shares[i].x);
    }
  }
  std::array<uint64_t, 5> out{};
  for (size_t i = 0; i < t; ++i) {
    // Basis polynomial i at x: prod_{j != i} (x - x_j) / (x_i - x_j).
    uint64_t num = 1, den = 1;
    for (size_t j = 0; j < t; ++j) {
      if (j == i) continue;
      num = mul_p(num, sub_p(mod_p(x), shares[j].x));
      den = mul_p(den, sub_p(shares[i].x, shares[j].x));
    }
    const uint64_t basis = mul_p(num, inv_p(den));
    for (size_t k = 0; k < 5; ++k) out[k] = add_p(out[k], mul_p(shares[i].y[k], basis));
  }
  return out;
}

}  // namespace

bool consistent(const std::vector<Share>& basis, int threshold, const Share& share) {
  FEDRA_REQUIRE(threshold >= 1 && basis.size() >= static_cast<size_t>(threshold),
                "secure aggregation: {} share(s), {} needed", basis.size(), threshold);
  return interpolate(basis, static_cast<size_t>(threshold), share.x) == share.y;
}

Key combine(const std::vector<Share>& shares, int threshold) {
  FEDRA_REQUIRE(threshold >= 1 && shares.size() >= static_cast<size_t>(threshold),
                "secure aggregation: {} share(s), {} needed", shares.size(), threshold);
  const std::array<uint64_t, 5> pieces = interpolate(shares, static_cast<size_t>(threshold), 0);
  Key secret{};
  for (size_t j = 0; j < 5; ++j) {
    FEDRA_REQUIRE(pieces[j] < (uint64_t{1} << 56), "secure aggregation: the shares do not decode to a secret "
                  "(one of them is wrong)");
    for (size_t b = 0; b < 7; ++b) {
      const size_t at = j * 7 + b;
      const auto byte = static_cast<uint8_t>(pieces[j] >> (8 * b));
      if (at < secret.size()) {
        secret[at] = byte;
      } else {
        FEDRA_REQUIRE(byte == 0, "secure aggregation: the shares do not decode to a secret (one of them is wrong)");
      }
    }
  }
  return secret;
}

void write_share(const Share& s, uint8_t* out) {
  std::memcpy(out, &s.x, 8);
  std::memcpy(out + 8, s.y.data(), 40);
}

Share read_share(const uint8_t* in) {
  Share s;
  std::memcpy(&s.x, in, 8);
  std::memcpy(s.y.data(), in + 8, 40);
  return s;
}

std::vector<uint8_t> seal(const Key& key, const std::array<uint8_t, 12>& nonce, const std::vector<uint8_t>& aad,
                          const uint8_t* plain, size_t size) {
  CipherCtx ctx(EVP_CIPHER_CTX_new());
  require_ok(EVP_EncryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, key.data(), nonce.data()), "AES-GCM init");
  int len = 0;
  if (!aad.empty()) require_ok(EVP_EncryptUpdate(ctx.get(), nullptr, &len, aad.data(), static_cast<int>(aad.size())), "AES-GCM aad");
  std::vector<uint8_t> out(size + 16);
  require_ok(EVP_EncryptUpdate(ctx.get(), out.data(), &len, plain, static_cast<int>(size)), "AES-GCM");
  int fin = 0;
  require_ok(EVP_EncryptFinal_ex(ctx.get(), out.data() + len, &fin), "AES-GCM final");
  require_ok(EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, 16, out.data() + size), "AES-GCM tag");
  return out;
}

std::vector<uint8_t> open(const Key& key, const std::array<uint8_t, 12>& nonce, const std::vector<uint8_t>& aad,
                          const uint8_t* sealed, size_t size) {
  FEDRA_REQUIRE(size >= 16, "secure aggregation: a sealed message of {} bytes (shorter than its tag)", size);
  CipherCtx ctx(EVP_CIPHER_CTX_new());
  require_ok(EVP_DecryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, key.data(), nonce.data()), "AES-GCM init");
  int len = 0;
  if (!aad.empty()) require_ok(EVP_DecryptUpdate(ctx.get(), nullptr, &len, aad.data(), static_cast<int>(aad.size())), "AES-GCM aad");
  std::vector<uint8_t> out(size - 16);
  require_ok(EVP_DecryptUpdate(ctx.get(), out.data(), &len, sealed, static_cast<int>(size - 16)), "AES-GCM");
  std::array<uint8_t, 16> tag{};
  std::memcpy(tag.data(), sealed + size - 16, 16);
  require_ok(EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, 16, tag.data()), "AES-GCM tag");
  int fin = 0;
  FEDRA_REQUIRE(EVP_DecryptFinal_ex(ctx.get(), out.data() + len, &fin) == 1,
                "secure aggregation: a sealed share does not authenticate (altered, misrouted or replayed)");
  return out;
}

Encoding choose_encoding(int bits, double clip, double total_weight) {
  FEDRA_REQUIRE(bits == 32 || bits == 64, "secagg bits must be 32 or 64, got {}", bits);
  FEDRA_REQUIRE(clip > 0 && std::isfinite(clip), "secagg clip must be > 0, got {}", clip);
  FEDRA_REQUIRE(total_weight >= 1, "secure aggregation: a total weight of {}", total_weight);
  // Largest f with total_weight * clip * 2^f + (workers' rounding, < total_weight) < 2^(bits-1).
  const double limit = std::ldexp(1.0, bits - 1) * (1 - 1e-9) - total_weight;
  const double room = limit / (total_weight * clip);
  FEDRA_REQUIRE(room >= 1, "secure aggregation: {} examples x clip {} do not fit a {}-bit ring; use secagg.bits 64 "
                "or a smaller clip", total_weight, clip, bits);
  Encoding e;
  e.bits = bits;
  e.clip = clip;
  e.frac_bits = std::min(static_cast<int>(std::floor(std::log2(room))), bits == 32 ? 30 : 62);
  return e;
}

size_t encode(const float* v, size_t n, double weight, const Encoding& enc, void* ring) {
  const double scale = std::ldexp(weight, enc.frac_bits);
  size_t clipped = 0;
  for (size_t i = 0; i < n; ++i) {
    double x = static_cast<double>(v[i]);
    if (!(x <= enc.clip)) {  // NaN too: refused earlier, clipped here for safety
      x = std::isnan(x) ? 0.0 : enc.clip;
      ++clipped;
    } else if (x < -enc.clip) {
      x = -enc.clip;
      ++clipped;
    }
    const auto q = static_cast<int64_t>(std::llround(x * scale));
    if (enc.bits == 32) {
      static_cast<uint32_t*>(ring)[i] = static_cast<uint32_t>(static_cast<int32_t>(q));
    } else {
      static_cast<uint64_t*>(ring)[i] = static_cast<uint64_t>(q);
    }
  }
  return clipped;
}

void decode(const void* ring, size_t n, const Encoding& enc, double* out) {
  const double inv = std::ldexp(1.0, -enc.frac_bits);
  for (size_t i = 0; i < n; ++i) {
    const double q = enc.bits == 32 ? static_cast<double>(static_cast<int32_t>(static_cast<const uint32_t*>(ring)[i]))
                                    : static_cast<double>(static_cast<int64_t>(static_cast<const uint64_t*>(ring)[i]));
    out[i] = q * inv;
  }
}

std::vector<size_t> neighbours(size_t index, size_t n, size_t k, uint64_t seed) {
  FEDRA_REQUIRE(index < n, "secure aggregation: client {} of {}", index, n);
  std::vector<size_t> out;
  if (k + 1 >= n) {
    for (size_t i = 0; i < n; ++i) {
      if (i != index) out.push_back(i);
    }
    return out;
  }
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 rng(seed);
  for (size_t i = n - 1; i > 0; --i) {  // Fisher-Yates with the same draws everywhere
    const size_t j = static_cast<size_t>(rng() % (i + 1));
    std::swap(order[i], order[j]);
  }
  std::vector<size_t> position(n);
  for (size_t i = 0; i < n; ++i) position[order[i]] = i;
  const size_t half = (k + 1) / 2;
  const size_t p = position[index];
  for (size_t d = 1; d <= half; ++d) {
    out.push_back(order[(p + d) % n]);
    out.push_back(order[(p + n - d) % n]);
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

}  // namespace fedra::secagg
