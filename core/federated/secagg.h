// Secure aggregation's building blocks (Bonawitz et al. 2017; Bell et al. 2020's SecAgg+), all
// cryptography from OpenSSL: X25519 key agreement, SHA-256 key derivation, AES-128-CTR as the
// mask generator, AES-256-GCM for the shares in transit. Shamir t-of-n sharing over the field
// GF(2^61 - 1) and the fixed-point ring encoding are here too. The protocol that uses them
// (who sends what when) is in strategies/fedavg/secagg_protocol.{h,cc}; docs/security.md has the
// threat model and parameters.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

namespace fedra::secagg {

using Key = std::array<uint8_t, 32>;

// An X25519 key pair, fresh from the operating system's generator.
struct KeyPair {
  Key secret{};
  Key public_key{};
  static KeyPair generate();
};

// The public key of an X25519 secret (to check a reconstructed secret against its owner's key).
Key public_of(const Key& secret);

// X25519(my_secret, their_public), hashed with `label` (SHA-256(label || shared)): the same on both
// sides. Throws Error for a public key that gives the all-zero secret (a small-order point).
Key agree(const Key& my_secret, const Key& their_public, std::string_view label);

// SHA-256(label || data).
Key hash(std::string_view label, const uint8_t* data, size_t size);

// 32 bytes from the operating system's generator.
Key random_key();

// The mask generator: adds (or subtracts) AES-128-CTR's keystream under `seed`, read as n
// little-endian words of the ring Z_{2^bits}, to `ring` (wrapping). bits is 32 or 64; `ring` holds
// n uint32_t or n uint64_t accordingly.
void add_mask(void* ring, size_t n, int bits, const Key& seed, bool subtract);

// Shamir's t-of-n sharing of a 32-byte secret over GF(p), p = 2^61 - 1: the secret is cut into
// five 7-byte pieces, each the constant term of its own random polynomial of degree t - 1.
struct Share {
  uint64_t x = 0;                // the evaluation point (> 0; the recipient's id)
  std::array<uint64_t, 5> y{};  // the five polynomials at x
};
inline constexpr size_t kShareBytes = 48;  // x and y as little-endian 64-bit words
std::vector<Share> split(const Key& secret, int threshold, const std::vector<uint64_t>& xs);
// The secret from at least `threshold` shares with distinct x (the first `threshold` are used).
// Throws Error if they are too few, repeat an x, or do not decode to a secret (a wrong share
// gives pieces outside 7 bytes with probability 1 - 2^-25).
Key combine(const std::vector<Share>& shares, int threshold);
// Whether `share` lies on the polynomials through the first `threshold` of `basis` (which must
// rebuild the secret): names a wrong share once the secret is known.
bool consistent(const std::vector<Share>& basis, int threshold, const Share& share);
void write_share(const Share& s, uint8_t* out);  // kShareBytes
Share read_share(const uint8_t* in);

// AES-256-GCM with a 12-byte nonce and associated data that must match on opening. seal returns
// ciphertext || 16-byte tag; open throws Error if the tag does not verify.
std::vector<uint8_t> seal(const Key& key, const std::array<uint8_t, 12>& nonce, const std::vector<uint8_t>& aad,
                          const uint8_t* plain, size_t size);
std::vector<uint8_t> open(const Key& key, const std::array<uint8_t, 12>& nonce, const std::vector<uint8_t>& aad,
                          const uint8_t* sealed, size_t size);

// Fixed point in Z_{2^bits}: a worker sends round(weight * clamp(v, -clip, clip) * 2^frac_bits)
// mod 2^bits per coordinate. frac_bits is chosen from the total weight W of the round's workers so
// that |sum| <= W * clip * 2^frac_bits < 2^(bits-1): the sum cannot overflow, and decodes exactly
// (to the rounding of each term, at most 2^-(frac_bits+1) each) to sum_i weight_i * v_i.
struct Encoding {
  int bits = 32;
  int frac_bits = 0;
  double clip = 4;
};
// Throws Error if no frac_bits >= 0 keeps the sum in range (clip * total_weight >= 2^(bits-1)).
Encoding choose_encoding(int bits, double clip, double total_weight);
// Encodes v (n floats) times `weight` into `ring` (n words of enc.bits); returns how many
// coordinates were clipped.
size_t encode(const float* v, size_t n, double weight, const Encoding& enc, void* ring);
// The ring's words as signed integers, divided by 2^frac_bits.
void decode(const void* ring, size_t n, const Encoding& enc, double* out);

// SecAgg+'s communication graph: a Harary graph over the clients in an order shuffled with `seed`
// (every client and the coordinator compute the same graph from the same seed and client list):
// client `index` (its position in the sorted client list) is joined to the k/2 clients before it
// and the k/2 after it on the shuffled ring, k rounded up to even. k >= n - 1 joins every pair
// (Bonawitz et al.'s protocol). Returns sorted positions, `index` not among them.
std::vector<size_t> neighbours(size_t index, size_t n, size_t k, uint64_t seed);

}  // namespace fedra::secagg
