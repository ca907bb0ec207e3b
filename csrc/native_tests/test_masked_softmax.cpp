// Native tests of the masked row softmax (core/masked_softmax.h) against plain double loops:
// every block size 1-4, rows with all, some and no negatives, c from 1 to 3001.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "core/masked_softmax.h"
#include "core/sign_panel.h"
#include "native_tests/check.h"

using namespace dchml;

namespace {

bool excluded(const std::vector<int64_t>& ex, int64_t q) {
  for (int64_t e : ex)
    if (e == q) return true;
  return false;
}

double reference_lse(const float* s, int64_t c, const std::vector<int64_t>& ex, double scale, double extra) {
  double m = extra;
  for (int64_t q = 0; q < c; ++q)
    if (!excluded(ex, q)) m = std::max(m, scale * s[q]);
  if (m == -INFINITY) return m;
  double sum = extra == -INFINITY ? 0.0 : std::exp(extra - m);
  for (int64_t q = 0; q < c; ++q)
    if (!excluded(ex, q)) sum += std::exp(scale * s[q] - m);
  return m + std::log(sum);
}

}  // namespace

DCHML_TEST(masked_softmax_matches_direct_sums) {
  if (!SignPanel::supported()) {
    std::printf("     (skipped: no AVX-512F on this CPU)\n");
    return;
  }
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(-40, 40);
  for (int64_t c : {1, 2, 15, 16, 17, 21, 80, 255, 512, 1000, 3001}) {
    const int64_t stride = (c + 15) / 16 * 16;
    for (int nr = 1; nr <= kMaskedLseMaxRows; ++nr) {
      std::vector<float> s(nr * stride);
      for (float& v : s) v = u(rng);
      std::vector<std::vector<int64_t>> ex(nr);
      for (int r = 0; r < nr; ++r) {
        if (r == 1) {  // every proxy a positive: no negatives at all
          for (int64_t q = 0; q < c; ++q) ex[r].push_back(q);
        } else {
          for (int64_t q = r; q < c; q += 3 + r) ex[r].push_back(q);
        }
      }
      const int64_t* ptr[kMaskedLseMaxRows];
      int64_t count[kMaskedLseMaxRows];
      float extra[kMaskedLseMaxRows], out[kMaskedLseMaxRows];
      for (int r = 0; r < nr; ++r) {
        ptr[r] = ex[r].data();
        count[r] = static_cast<int64_t>(ex[r].size());
        extra[r] = r == 1 || r == 2 ? -INFINITY : u(rng);  // row 1: the empty set
      }
      masked_lse_rows(s.data(), stride, nr, c, ptr, count, 0.3f, extra, out);
      for (int r = 0; r < nr; ++r) {
        const double ref = reference_lse(s.data() + r * stride, c, ex[r], 0.3, extra[r]);
        if (ref == -INFINITY) {
          DCHML_CHECK(out[r] == -INFINITY);
        } else {
          DCHML_CHECK_NEAR(out[r], ref, 2e-6 * std::max(1.0, std::fabs(ref)));
        }
      }
      // weights of row 0 against exp(scale s - lse) directly
      std::vector<float> w(s.begin(), s.begin() + stride);
      const float lse0 = static_cast<float>(reference_lse(s.data(), c, ex[0], 0.3, -INFINITY));
      if (lse0 == -INFINITY) continue;
      masked_softmax(w.data(), c, ex[0].data(), count[0], 0.3f, lse0, 2.0f);
      for (int64_t q = 0; q < c; ++q) {
        const double ref = excluded(ex[0], q) ? 0.0 : 2.0 * std::exp(0.3 * s[q] - lse0);
        DCHML_CHECK_NEAR(w[q], ref, 1e-6 * std::max(1.0, std::fabs(ref)));
      }
    }
  }
}
