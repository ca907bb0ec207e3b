// AP@K arithmetic of the Hamming ranker (API in hamming.h): by index, and the exact expectation
// over random orders inside groups of tied distances (McSherry & Najork 2008).
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/hamming.h"

namespace dchml {
namespace hamming {
namespace {

// Group AP term for a complete run of n tied items (r relevant) after s items (R relevant).
double group_sum(int64_t s, int64_t R, int64_t n, int64_t r) {
  if (r == 0 || n == 0) return 0.0;
  if (n == 1) return (double)(R + 1) / (double)(s + 1);
  double h1 = 0.0, h2 = 0.0;
  for (int64_t i = 1; i <= n; ++i) {
    h1 += 1.0 / (double)(s + i);
    h2 += (double)(i - 1) / (double)(s + i);
  }
  return ((double)r / (double)n) *
         ((double)(R + 1) * h1 + ((double)(r - 1) / (double)(n - 1)) * h2);
}

}  // namespace

double expected_ap_groups(const std::vector<int64_t>& size, const std::vector<int64_t>& relevant,
                          int64_t last_included) {
  const size_t G = size.size();
  if (G == 0) return 0.0;
  int64_t s = 0, R = 0;
  double full = 0.0;
  for (size_t g = 0; g + 1 < G; ++g) {
    full += group_sum(s, R, size[g], relevant[g]);
    s += size[g];
    R += relevant[g];
  }
  const int64_t n = size[G - 1], r = relevant[G - 1], L = last_included;
  if (L >= n) {
    full += group_sum(s, R, n, r);
    R += r;
    return R > 0 ? full / (double)R : 0.0;
  }
  if (L <= 0) return R > 0 ? full / (double)R : 0.0;
  // The cut falls inside the last group: condition on m, the relevant items among its L
  // included slots (hypergeometric), which fixes N_K = R + m.
  double h1 = 0.0, h2 = 0.0;
  for (int64_t i = 1; i <= L; ++i) {
    h1 += 1.0 / (double)(s + i);
    h2 += (double)(i - 1) / (double)(s + i);
  }
  const int64_t m_lo = std::max<int64_t>(0, L - (n - r)), m_hi = std::min(L, r);
  // log pmf by the ratio recurrence, normalised at the end (exact to rounding, no overflow).
  std::vector<double> logw((size_t)(m_hi - m_lo + 1));
  logw[0] = 0.0;
  for (int64_t m = m_lo; m < m_hi; ++m) {
    const double ratio = ((double)(r - m) * (double)(L - m)) / ((double)(m + 1) * (double)(n - r - L + m + 1));
    logw[(size_t)(m + 1 - m_lo)] = logw[(size_t)(m - m_lo)] + std::log(ratio);
  }
  const double top = *std::max_element(logw.begin(), logw.end());
  double norm = 0.0, acc = 0.0;
  for (int64_t m = m_lo; m <= m_hi; ++m) {
    const double w = std::exp(logw[(size_t)(m - m_lo)] - top);
    norm += w;
    if (R + m == 0) continue;
    double part = 0.0;
    if (m > 0)
      part = L == 1 ? (double)(R + 1) / (double)(s + 1)
                    : ((double)m / (double)L) * ((double)(R + 1) * h1 + ((double)(m - 1) / (double)(L - 1)) * h2);
    acc += w * (full + part) / (double)(R + m);
  }
  return acc / norm;
}

double ap_from_ranking(const int32_t* dist, const uint8_t* rel, int64_t K, int64_t cut_total,
                       int64_t cut_relevant, bool expected) {
  if (K <= 0) return 0.0;
  if (!expected) {
    int64_t hits = 0;
    double sum = 0.0;
    for (int64_t i = 0; i < K; ++i)
      if (rel[i]) {
        ++hits;
        sum += (double)hits / (double)(i + 1);
      }
    return hits ? sum / (double)hits : 0.0;
  }
  std::vector<int64_t> size, relevant;
  int64_t i = 0;
  while (i < K) {
    int64_t j = i, r = 0;
    while (j < K && dist[j] == dist[i]) r += rel[j++];
    size.push_back(j - i);
    relevant.push_back(r);
    i = j;
  }
  const int64_t L = size.back();
  size.back() = std::max(cut_total, L);
  relevant.back() = std::max(cut_relevant, relevant.back());
  return expected_ap_groups(size, relevant, L);
}

}  // namespace hamming
}  // namespace dchml
