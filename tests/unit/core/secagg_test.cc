#include "tests/testing.h"

#include <cmath>
#include <cstring>
#include <random>

#include "core/federated/secagg.h"
#include "transport/error.h"

using namespace fedra;
using namespace fedra::secagg;

TEST_CASE("secagg: X25519 agreement is symmetric and label-separated") {
  const KeyPair a = KeyPair::generate(), b = KeyPair::generate();
  CHECK(a.public_key != b.public_key);
  CHECK(public_of(a.secret) == a.public_key);
  const Key ab = agree(a.secret, b.public_key, "mask");
  CHECK(ab == agree(b.secret, a.public_key, "mask"));
  CHECK(ab != agree(a.secret, b.public_key, "encrypt"));
  const KeyPair c = KeyPair::generate();
  CHECK(ab != agree(a.secret, c.public_key, "mask"));
  Key zero{};  // a small-order point: OpenSSL refuses it
  CHECK_THROWS_AS(agree(a.secret, zero, "mask"), Error);
}

TEST_CASE("secagg: masks cancel pairwise and leave nothing of the input visible") {
  const size_t n = 100003;  // not a multiple of the keystream chunk
  const Key s1 = random_key(), s2 = random_key();
  for (int bits : {32, 64}) {
    std::vector<uint64_t> buf(n, 0);  // room for both widths
    void* ring = buf.data();
    add_mask(ring, n, bits, s1, false);
    add_mask(ring, n, bits, s2, false);
    add_mask(ring, n, bits, s1, true);
    add_mask(ring, n, bits, s2, true);
    bool zero = true;
    for (size_t i = 0; i < n * static_cast<size_t>(bits) / 64; ++i) zero = zero && buf[i] == 0;
    CHECK(zero);
  }
  // A masked encoding of a smooth signal is uncorrelated with it; the unmasked one is the signal.
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<float>(std::sin(static_cast<double>(i) * 0.001));
  const Encoding enc = choose_encoding(32, 4, 10);
  std::vector<uint32_t> y(n);
  encode(v.data(), n, 1.0, enc, y.data());
  add_mask(y.data(), n, 32, s1, false);
  std::vector<double> d(n);
  decode(y.data(), n, enc, d.data());
  double sxy = 0, sxx = 0, syy = 0, mx = 0, my = 0;
  for (size_t i = 0; i < n; ++i) {
    mx += v[i];
    my += d[i];
  }
  mx /= static_cast<double>(n);
  my /= static_cast<double>(n);
  for (size_t i = 0; i < n; ++i) {
    sxy += (v[i] - mx) * (d[i] - my);
    sxx += (v[i] - mx) * (v[i] - mx);
    syy += (d[i] - my) * (d[i] - my);
  }
  CHECK(std::abs(sxy / std::sqrt(sxx * syy)) < 0.02);
}

TEST_CASE("secagg: Shamir t-of-n recovers the secret from any t shares, not from t-1, and flags a wrong share") {
  const Key secret = random_key();
  const std::vector<uint64_t> xs = {3, 7, 11, 19, 23};
  const auto shares = split(secret, 3, xs);
  REQUIRE(shares.size() == 5);
  CHECK(combine({shares[0], shares[1], shares[2]}, 3) == secret);
  CHECK(combine({shares[4], shares[2], shares[0]}, 3) == secret);
  CHECK(combine({shares[1], shares[3], shares[4]}, 3) == secret);
  CHECK_THROWS_WITH_AS(combine({shares[0], shares[1]}, 3), "secure aggregation: 2 share(s), 3 needed", Error);
  CHECK_THROWS_AS(combine({shares[0], shares[0], shares[1]}, 3), Error);
  Share bad = shares[1];
  bad.y[2] ^= 0x1234;
  CHECK_THROWS_WITH_AS(combine({shares[0], bad, shares[2]}, 3),
                       "secure aggregation: the shares do not decode to a secret (one of them is wrong)", Error);
  // Two shares of a 3-of-5 split say nothing: with two points, every secret is as likely, so a
  // second split's two shares at the same points differ from the first's.
  const auto again = split(secret, 3, xs);
  CHECK(again[0].y != shares[0].y);
  uint8_t wire[kShareBytes];
  write_share(shares[3], wire);
  const Share back = read_share(wire);
  CHECK(back.x == shares[3].x);
  CHECK(back.y == shares[3].y);
}

TEST_CASE("secagg: AES-GCM sealing refuses altered bytes and other associated data") {
  const Key key = random_key();
  const std::array<uint8_t, 12> nonce{1, 2, 3};
  const std::vector<uint8_t> aad = {9, 9, 9};
  const std::vector<uint8_t> plain = {10, 20, 30, 40};
  auto sealed = seal(key, nonce, aad, plain.data(), plain.size());
  CHECK(sealed.size() == plain.size() + 16);
  CHECK(open(key, nonce, aad, sealed.data(), sealed.size()) == plain);
  CHECK_THROWS_AS(open(key, nonce, {9, 9, 8}, sealed.data(), sealed.size()), Error);
  sealed[1] ^= 1;
  CHECK_THROWS_AS(open(key, nonce, aad, sealed.data(), sealed.size()), Error);
}

TEST_CASE("secagg: the fixed-point ring sums weighted updates exactly to its rounding, and cannot overflow") {
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0, 1);
  const size_t n = 1000, workers = 7;
  std::vector<double> weights = {100, 2500, 60000, 1, 777, 3000, 12};
  double total = 0;
  for (double w : weights) total += w;
  for (int bits : {32, 64}) {
    const Encoding enc = choose_encoding(bits, 4, total);
    CHECK(total * enc.clip * std::ldexp(1.0, enc.frac_bits) < std::ldexp(1.0, bits - 1));
    std::vector<uint64_t> sum(n, 0), one(n, 0);
    std::vector<double> expect(n, 0);
    size_t clipped = 0;
    for (size_t w = 0; w < workers; ++w) {
      std::vector<float> v(n);
      for (auto& x : v) x = normal(rng) * 1.5f;
      v[0] = 4;  // at the bound, every worker: the worst case for overflow
      clipped += encode(v.data(), n, weights[w], enc, one.data());
      for (size_t i = 0; i < n; ++i) {
        expect[i] += weights[w] * std::max(-4.0, std::min(4.0, static_cast<double>(v[i])));
        if (bits == 32) {
          reinterpret_cast<uint32_t*>(sum.data())[i] += reinterpret_cast<uint32_t*>(one.data())[i];
        } else {
          sum[i] += one[i];
        }
      }
    }
    CHECK(clipped > 0);  // |1.5 N(0,1)| > 4 happens in 7,000 draws
    std::vector<double> got(n);
    decode(sum.data(), n, enc, got.data());
    double worst = 0;
    for (size_t i = 0; i < n; ++i) worst = std::max(worst, std::abs(got[i] - expect[i]));
    // Each worker's term is rounded by at most 2^-(f+1).
    CHECK(worst <= static_cast<double>(workers) * std::ldexp(0.5, -enc.frac_bits) + 1e-12);
    CHECK(got[0] == doctest::Approx(4 * total).epsilon(1e-9));
  }
  CHECK_THROWS_AS(choose_encoding(32, 1e6, 1e4), Error);
  CHECK_THROWS_AS(choose_encoding(48, 4, 10), Error);
}

TEST_CASE("secagg: the SecAgg+ graph is symmetric, k-regular, and every pair when k >= n - 1") {
  const size_t n = 50, k = 8;
  std::vector<std::vector<size_t>> g(n);
  for (size_t i = 0; i < n; ++i) g[i] = neighbours(i, n, k, 42);
  for (size_t i = 0; i < n; ++i) {
    CHECK(g[i].size() == k);
    for (size_t j : g[i]) {
      CHECK(j != i);
      CHECK(std::find(g[j].begin(), g[j].end(), i) != g[j].end());
    }
  }
  CHECK(neighbours(3, n, k, 43) != g[3]);  // another seed, another graph
  CHECK(neighbours(0, 5, 4, 1) == std::vector<size_t>{1, 2, 3, 4});
  CHECK(neighbours(2, 5, 100, 1) == std::vector<size_t>{0, 1, 3, 4});
  CHECK(neighbours(1, 6, 3, 9).size() == 4);  // odd k rounds up
}
