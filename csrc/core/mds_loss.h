// Row math of the margin-dynamic-softmax loss (METHOD.md §3, §4) and the PSLDH partial-softmax
// loss (§6), shared by the CPU kernels, the CUDA kernels and the native tests. Torch-free,
// DCHML_HD so that host and device run the same arithmetic.
//
// Labels arrive as a CSR list of sorted, distinct positive indices per row; a row's negatives are
// "every proxy except those", so positives never enter a denominator and no (n x c) mask exists.
#pragma once

#include <cmath>
#include <cstdint>

#include "core/macros.h"

namespace dchml {

template <typename T>
DCHML_HD T neg_infinity() {
  return -INFINITY;
}

// Exact-type elementary functions: an unqualified exp(float) on the host would resolve to the C
// double version (a conversion each way and a slower call).
DCHML_HD float exp_(float x) { return expf(x); }
DCHML_HD double exp_(double x) { return exp(x); }
DCHML_HD float log_(float x) { return logf(x); }
DCHML_HD double log_(double x) { return log(x); }
DCHML_HD float log1p_(float x) { return log1pf(x); }
DCHML_HD double log1p_(double x) { return log1p(x); }

// Max-shifted running log-sum-exp: exp(max) * sum is the running total. A state with max = -inf
// is the empty set (log 0); every update keeps sum in [1, count], so nothing overflows for any
// k or eta.
template <typename T>
struct OnlineLse {
  T max;
  T sum;
};

template <typename T>
DCHML_HD OnlineLse<T> lse_empty() {
  return {neg_infinity<T>(), T(0)};
}

template <typename T>
DCHML_HD void lse_push(OnlineLse<T>& s, T x) {
  if (x <= s.max) {
    s.sum += exp_(x - s.max);
  } else {
    // x > max also covers an empty state: exp(-inf) = 0 drops the old (empty) sum.
    s.sum = s.sum * exp_(s.max - x) + T(1);
    s.max = x;
  }
}

template <typename T>
DCHML_HD OnlineLse<T> lse_merge(OnlineLse<T> a, OnlineLse<T> b) {
  if (b.max == neg_infinity<T>()) return a;
  if (a.max == neg_infinity<T>()) return b;
  if (a.max >= b.max) return {a.max, a.sum + b.sum * exp_(b.max - a.max)};
  return {b.max, b.sum + a.sum * exp_(a.max - b.max)};
}

template <typename T>
DCHML_HD T lse_value(OnlineLse<T> s) {
  return s.max == neg_infinity<T>() ? s.max : s.max + log_(s.sum);
}

// log(exp(a) + exp(b)), stable, with -inf as the empty term.
template <typename T>
DCHML_HD T log_add_exp(T a, T b) {
  if (a == neg_infinity<T>()) return b;
  if (b == neg_infinity<T>()) return a;
  const T hi = a > b ? a : b;
  const T lo = a > b ? b : a;
  return hi + log1p_(exp_(lo - hi));
}

// b . g for one ±1 proxy row g (float or int8 storage), accumulated in Acc.
template <typename Acc, typename T, typename P>
DCHML_HD Acc dot(const T* b, const P* g, int64_t k) {
  Acc acc = Acc(0);
  for (int64_t j = 0; j < k; ++j) acc += Acc(b[j]) * Acc(g[j]);
  return acc;
}

// ---- margin-dynamic-softmax (eq. 13 / 14) ----
// u = b . gbar - mu k: the surrogate score; mean_dot = b . gbar = mean over positives of b . g_e.
template <typename T>
DCHML_HD T surrogate_score(T mean_dot, T mu, int64_t k) {
  return mean_dot - mu * T(k);
}

// loss_i = -eta u_num + logsumexp({eta u_den} U {eta s_q : q in N_i}); lse is that log-sum-exp.
template <typename T>
DCHML_HD T mds_row_loss(T eta, T u_num, T lse) {
  return -eta * u_num + lse;
}

// Softmax weight of a denominator term whose logit is x (= eta u_den or eta s_q).
template <typename T>
DCHML_HD T softmax_weight(T x, T lse) {
  return exp_(x - lse);
}

// Gradient (times the upstream grad g_row) of the row loss: with `other`,
//   d/d codes = -eta g_row gbar                         (numerator)
//   d/d other =  eta g_row (p0 gbar + sum_q p_q g_q)    (denominator)
// and without it both land on codes, i.e. -eta (1 - p0) gbar + eta sum_q p_q g_q (METHOD.md §3).
template <typename T>
struct MdsGradCoefficients {
  T numerator_gbar;    // coefficient of gbar in d/d codes (numerator part)
  T denominator_gbar;  // coefficient of gbar in the denominator part
  T denominator_scale; // multiplies sum_q p_q g_q in the denominator part
};

template <typename T>
DCHML_HD MdsGradCoefficients<T> mds_grad_coefficients(T eta, T grad_row, T p0) {
  return {-eta * grad_row, eta * grad_row * p0, eta * grad_row};
}

// ---- PSLDH partial softmax (§6) ----
// pos_p = gamma (s_p - sigma k); the negatives' log-sum-exp lse_neg (of gamma s_q) is shared by all
// positives: term_p = -pos_p + logaddexp(pos_p, lse_neg), loss_i = mean_p term_p.
template <typename T>
DCHML_HD T psl_positive_logit(T gamma, T sigma, T score, int64_t k) {
  return gamma * (score - sigma * T(k));
}

template <typename T>
DCHML_HD T psl_positive_term(T pos, T lse_neg) {
  // -pos + log(exp(pos) + exp(lse_neg)) = log1p(exp(lse_neg - pos)), exact 0 without negatives.
  if (lse_neg == neg_infinity<T>()) return T(0);
  const T d = lse_neg - pos;
  return d > T(0) ? d + log1p_(exp_(-d)) : log1p_(exp_(d));
}

// sigma_p = exp(pos - logaddexp(pos, lse_neg)): the positive's own softmax weight.
template <typename T>
DCHML_HD T psl_positive_weight(T pos, T lse_neg) {
  if (lse_neg == neg_infinity<T>()) return T(1);
  const T d = lse_neg - pos;  // sigma = 1 / (1 + exp(d))
  return d > T(0) ? exp_(-d) / (T(1) + exp_(-d)) : T(1) / (T(1) + exp_(d));
}

// d loss_i / d b = (gamma g_row / |P|) [ sum_p (sigma_p - 1) g_p + (sum_p (1 - sigma_p)) sum_q pi_q g_q ]
// with pi_q = exp(gamma s_q - lse_neg) the negatives' own softmax.

}  // namespace dchml

namespace dchml {

// Is x among the n sorted values of a? (a row's positives; binary search, so a kernel that visits
// proxies in any order can skip them without a mask.)
DCHML_HD bool sorted_contains(const int64_t* a, int64_t n, int64_t x) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (a[mid] < x)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo < n && a[lo] == x;
}

}  // namespace dchml
