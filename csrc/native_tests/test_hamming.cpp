// Native (torch-free) tests of the Hamming engine, run under ASan + UBSan in CI: every SIMD path
// against a brute-force ranking built on the shared 32-bit popcount of hamming_math.h, on odd
// code lengths, small and fast-path database sizes, and the AP arithmetic on hand-worked cases.
#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>
#include <thread>
#include <vector>

#include "core/hamming.h"
#include "core/hamming_math.h"
#include "native_tests/check.h"

namespace h = dchml::hamming;

namespace {

struct Codes {
  int64_t n, bits, nbytes;
  std::vector<uint8_t> bytes;
  h::Rows rows() const { return h::Rows{bytes.data(), n, nbytes}; }
};

Codes random_codes(std::mt19937_64& rng, int64_t n, int64_t bits, int64_t centres) {
  // Codes near a few centres, so that distances repeat (ties) as in trained codes.
  Codes c{n, bits, (bits + 7) / 8, {}};
  c.bytes.assign((size_t)(n * c.nbytes), 0);
  std::vector<std::vector<float>> centre((size_t)centres, std::vector<float>((size_t)bits));
  for (auto& v : centre)
    for (auto& x : v) x = (rng() & 1) ? 1.f : -1.f;
  std::vector<float> row((size_t)bits);
  for (int64_t i = 0; i < n; ++i) {
    const auto& base = centre[rng() % centres];
    for (int64_t j = 0; j < bits; ++j) row[j] = (rng() % 5 == 0) ? -base[j] : base[j];
    h::pack_rows(row.data(), 1, bits, &c.bytes[(size_t)(i * c.nbytes)]);
    // Garbage in the padding bits must be ignored by every path.
    if (bits % 8) c.bytes[(size_t)(i * c.nbytes + c.nbytes - 1)] |= (uint8_t)(0xff << (bits % 8));
  }
  return c;
}

int brute_distance(const Codes& a, int64_t i, const Codes& b, int64_t j) {
  const int64_t words = (a.nbytes + 3) / 4;
  std::vector<uint32_t> x((size_t)words, 0), y((size_t)words, 0);
  std::memcpy(x.data(), &a.bytes[(size_t)(i * a.nbytes)], (size_t)a.nbytes);
  std::memcpy(y.data(), &b.bytes[(size_t)(j * b.nbytes)], (size_t)b.nbytes);
  return h::distance_words32(x.data(), y.data(), words, h::last_word_mask(a.bits));
}

void check_topk(const Codes& q, const Codes& db, int64_t k) {
  std::vector<int32_t> dist((size_t)(q.n * k));
  std::vector<int64_t> index((size_t)(q.n * k));
  h::topk(q.rows(), db.rows(), q.bits, k, dist.data(), index.data());
  std::vector<int64_t> order((size_t)db.n);
  std::vector<int> d((size_t)db.n);
  for (int64_t i = 0; i < q.n; ++i) {
    for (int64_t j = 0; j < db.n; ++j) d[j] = brute_distance(q, i, db, j);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return d[a] < d[b]; });
    bool same = true;
    for (int64_t r = 0; r < k; ++r)
      same = same && index[i * k + r] == order[r] && dist[i * k + r] == d[order[r]];
    DCHML_CHECK(same);
  }
  std::vector<int64_t> hist((size_t)(q.n * (q.bits + 1)));
  h::histogram(q.rows(), db.rows(), q.bits, hist.data());
  for (int64_t i = 0; i < q.n; ++i) {
    std::vector<int64_t> want((size_t)(q.bits + 1), 0);
    for (int64_t j = 0; j < db.n; ++j) ++want[brute_distance(q, i, db, j)];
    DCHML_CHECK(std::equal(want.begin(), want.end(), hist.begin() + i * (q.bits + 1)));
  }
}

}  // namespace

DCHML_TEST(hamming_topk_every_isa_and_length) {
  std::mt19937_64 rng(1);
  for (int isa = 0; isa <= (int)h::best_isa(); ++isa) {
    h::force_isa((h::Isa)isa);
    for (int64_t bits : {1, 7, 16, 32, 64, 65, 128, 256, 300}) {
      Codes db = random_codes(rng, 1500, bits, 4), q = random_codes(rng, 9, bits, 4);
      for (int64_t k : {1, 17, 1500}) check_topk(q, db, k);
    }
  }
  h::force_isa(h::best_isa());
}

DCHML_TEST(hamming_topk_fast_path_sizes) {
  // >= 16384 rows with k <= rows / 8: the sampled-threshold path, with its exact fallback.
  std::mt19937_64 rng(2);
  for (int isa = 0; isa <= (int)h::best_isa(); ++isa) {
    h::force_isa((h::Isa)isa);
    for (int64_t bits : {16, 64, 128}) {
      Codes db = random_codes(rng, 20000, bits, 6), q = random_codes(rng, 5, bits, 6);
      check_topk(q, db, 300);
      check_topk(q, db, 2500);
    }
  }
  h::force_isa(h::best_isa());
}

DCHML_TEST(hamming_topk_fast_path_query_groups) {
  // The AVX-512 fast path scans groups of 8/4/2/1 queries at once (4/2/1 for 256 bits) and
  // walks a hit bitmap: 19 queries give mixed group sizes, 20003 rows a last tile that ends
  // inside a 64-row bitmap word and inside an 8-row vector.
  std::mt19937_64 rng(3);
  for (int isa = 0; isa <= (int)h::best_isa(); ++isa) {
    h::force_isa((h::Isa)isa);
    for (int64_t bits : {64, 256}) {
      Codes db = random_codes(rng, 20003, bits, 6), q = random_codes(rng, 19, bits, 6);
      check_topk(q, db, 2000);
    }
  }
  h::force_isa(h::best_isa());
}

// Each call reports its own queries: two calls running at once (a fast-path one and an exact one)
// must not see each other's counts.
DCHML_TEST(hamming_rank_stats_are_per_call) {
  std::mt19937_64 rng(7);
  const Codes db = random_codes(rng, 20000, 64, 6), q_fast = random_codes(rng, 37, 64, 6);
  const Codes small_db = random_codes(rng, 3000, 64, 6), q_exact = random_codes(rng, 23, 64, 6);
  for (int round = 0; round < 3; ++round) {
    h::RankStats fast_stats, exact_stats;
    std::vector<int32_t> d1(37 * 50), d2(23 * 50);
    std::vector<int64_t> i1(37 * 50), i2(23 * 50);
    std::thread a([&] { h::topk(q_fast.rows(), db.rows(), 64, 50, d1.data(), i1.data(), &fast_stats); });
    std::thread b([&] { h::topk(q_exact.rows(), small_db.rows(), 64, 50, d2.data(), i2.data(), &exact_stats); });
    a.join();
    b.join();
    DCHML_CHECK(fast_stats.fast + fast_stats.fallback + fast_stats.exact == 37);
    DCHML_CHECK(fast_stats.fast > 0 && fast_stats.candidates >= 50 * fast_stats.fast);
    DCHML_CHECK(exact_stats.exact == 23 && exact_stats.fast == 0 && exact_stats.fallback == 0);
  }
}

DCHML_TEST(hamming_ap_hand_worked) {
  const int32_t dist[4] = {0, 1, 1, 2};
  const uint8_t rel[4] = {1, 0, 1, 0};
  // ties by index: (1/1 + 2/3) / 2
  DCHML_CHECK_NEAR(h::ap_from_ranking(dist, rel, 4, 0, 0, false), (1.0 + 2.0 / 3.0) / 2.0, 1e-15);
  // expected: the group at distance 1 is {rel, not rel} in random order: the relevant item sits
  // at rank 2 or 3 with probability 1/2: (1 + (2/2 + 2/3)/2) / 2
  DCHML_CHECK_NEAR(h::ap_from_ranking(dist, rel, 4, 1, 0, true), (1.0 + (1.0 + 2.0 / 3.0) / 2.0) / 2.0, 1e-15);
  // cut inside a group: top 2 of [A(rel, d=0)] + group {rel, not, not} at d=1 taking 1 slot:
  // m = 1 with probability 1/3 -> AP (1 + 2/2)/2 = 1; m = 0 -> AP 1. Expected 1.
  const std::vector<int64_t> size{1, 3}, relevant{1, 1};
  DCHML_CHECK_NEAR(h::expected_ap_groups(size, relevant, 1), 1.0, 1e-15);
  // no relevant item at all
  const uint8_t none[4] = {0, 0, 0, 0};
  DCHML_CHECK_NEAR(h::ap_from_ranking(dist, none, 4, 1, 0, true), 0.0, 0.0);
}

DCHML_TEST(hamming_pack_round_trip) {
  const float values[10] = {1, -1, 0.5f, 0, -3, 2, 1, 1, -1, 7};
  uint8_t packed[2];
  h::pack_rows(values, 1, 10, packed);
  DCHML_CHECK(packed[0] == 0xE5 && packed[1] == 0x02);
  float back[10];
  h::unpack_rows(packed, 1, 10, back);
  for (int j = 0; j < 10; ++j) DCHML_CHECK(back[j] == (values[j] > 0 ? 1.f : -1.f));
}
