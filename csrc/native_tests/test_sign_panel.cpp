// Native tests of SignPanel (core/sign_panel.h): table-lookup products with a ±1 matrix against
// plain double dot products, over sizes that exercise every padding case (c and k not multiples
// of 4 or 16, one table chunk and several), int8 and float storage, and the ±1 check.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "core/sign_panel.h"
#include "native_tests/check.h"

using namespace dchml;

namespace {

template <typename P>
void check_products(int64_t c, int64_t k, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1, 1);
  std::vector<P> g(c * k);
  for (auto& v : g) v = (rng() & 1) ? P(1) : P(-1);
  SignPanel panel;
  DCHML_CHECK(panel.build(g.data(), c, k) == -1);
  DCHML_CHECK(panel.padded_classes() % 16 == 0 && panel.padded_classes() >= c);
  std::vector<float> b(k), w(c), s(panel.padded_classes()), out(k + 1, 12345.0f);
  for (auto& v : b) v = u(rng);
  for (auto& v : w) v = u(rng);
  panel.scores(b.data(), s.data());
  panel.combine(w.data(), out.data());
  for (int64_t q = 0; q < c; ++q) {
    double ref = 0;
    for (int64_t j = 0; j < k; ++j) ref += double(b[j]) * double(g[q * k + j]);
    DCHML_CHECK_NEAR(s[q], ref, 1e-5 * (1 + std::sqrt(double(k))));
  }
  for (int64_t j = 0; j < k; ++j) {
    double ref = 0;
    for (int64_t q = 0; q < c; ++q) ref += double(w[q]) * double(g[q * k + j]);
    DCHML_CHECK_NEAR(out[j], ref, 1e-5 * (1 + std::sqrt(double(c))));
  }
  DCHML_CHECK(out[k] == 12345.0f);  // nothing written past k
}

}  // namespace

DCHML_TEST(sign_panel_products_match_dot_products) {
  if (!SignPanel::supported()) {
    std::printf("     (skipped: no AVX-512F on this CPU)\n");
    return;
  }
  const int64_t sizes_c[] = {1, 2, 5, 16, 21, 64, 80, 255, 513};
  const int64_t sizes_k[] = {1, 3, 4, 7, 16, 17, 64, 65, 128, 260};
  unsigned seed = 1;
  for (int64_t c : sizes_c)
    for (int64_t k : sizes_k) {
      check_products<int8_t>(c, k, seed++);
      check_products<float>(c, k, seed++);
    }
  check_products<double>(21, 64, seed++);
}

DCHML_TEST(sign_panel_reports_first_non_sign_entry) {
  std::vector<int8_t> g(3 * 5, 1);
  g[7] = 0;
  g[9] = 2;
  SignPanel panel;
  DCHML_CHECK(panel.build(g.data(), 3, 5) == 7);
  std::vector<float> f(2 * 4, -1.0f);
  f[5] = 0.5f;
  DCHML_CHECK(panel.build(f.data(), 2, 4) == 5);
}

DCHML_TEST(sign_panel_rebuilds_when_contents_change) {
  if (!SignPanel::supported()) return;
  const int64_t c = 5, k = 8;
  std::vector<int8_t> g(c * k, 1);
  std::vector<float> b(k, 1.0f), s(16);
  SignPanel panel;
  DCHML_CHECK(panel.build(g.data(), c, k) == -1);
  panel.scores(b.data(), s.data());
  DCHML_CHECK_NEAR(s[3], 8.0, 1e-6);
  g[3 * k + 2] = -1;  // same buffer, same shape, new contents
  DCHML_CHECK(panel.build(g.data(), c, k) == -1);
  panel.scores(b.data(), s.data());
  DCHML_CHECK_NEAR(s[3], 6.0, 1e-6);
  std::vector<float> gf(c * k, 1.0f);  // same shape and values, another element type
  DCHML_CHECK(panel.build(gf.data(), c, k) == -1);
  panel.scores(b.data(), s.data());
  DCHML_CHECK_NEAR(s[3], 8.0, 1e-6);
  g[0] = 3;  // a failed build must not leave the old panel marked current
  DCHML_CHECK(panel.build(g.data(), c, k) == 0);
  g[0] = 1;
  DCHML_CHECK(panel.build(g.data(), c, k) == -1);
  panel.scores(b.data(), s.data());
  DCHML_CHECK_NEAR(s[3], 6.0, 1e-6);
}

DCHML_TEST(sign_panel_ranges_match_dot_products) {
  if (!SignPanel::supported()) return;
  const int64_t c = 101, k = 37;
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> u(-1, 1);
  std::vector<int8_t> g(c * k);
  for (auto& v : g) v = (rng() & 1) ? 1 : -1;
  SignPanel panel;
  DCHML_CHECK(panel.build(g.data(), c, k) == -1);
  std::vector<float> b(k), w(c);
  for (auto& v : b) v = u(rng);
  for (auto& v : w) v = u(rng);
  for (int64_t q0 : {0, 16, 32, 96})
    for (int64_t q1 : {q0 + 1, q0 + 5, c}) {
      if (q1 > c) continue;
      std::vector<float> s(q1 - q0 + 1, 777.0f), out(k + 1, 0.5f);
      panel.scores_range(b.data(), s.data(), q0, q1);
      panel.combine_range(w.data() + q0, out.data(), q0, q1, true);
      for (int64_t q = q0; q < q1; ++q) {
        double ref = 0;
        for (int64_t j = 0; j < k; ++j) ref += double(b[j]) * g[q * k + j];
        DCHML_CHECK_NEAR(s[q - q0], ref, 1e-5 * 7);
      }
      DCHML_CHECK(s[q1 - q0] == 777.0f);  // nothing written past the range
      for (int64_t j = 0; j < k; ++j) {
        double ref = 0.5;
        for (int64_t q = q0; q < q1; ++q) ref += double(w[q]) * g[q * k + j];
        DCHML_CHECK_NEAR(out[j], ref, 1e-5 * 11);
      }
      DCHML_CHECK(out[k] == 0.5f);
    }
}
