// Row math of the margin-dynamic-softmax loss (docs/spec.md §3, §4) and the PSLDH partial-softmax
// loss (§6), shared by every CPU path, the CUDA kernels and the native tests. Torch-free,
// DCHML_HD so that host and device run the same arithmetic.
//
// A row's positives are a sorted list of distinct proxy indices; its negatives are "every proxy
// except those", so positives never enter a denominator and no (n x c) mask exists.
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

// ---- a row's positives, visited in increasing order ----
// A sorted list (a CSR row, or a dense row read into a buffer on the CPU), ...
struct PositiveList {
  const int64_t* pos;
  int64_t npos;
  DCHML_HD_ROW int64_t count() const { return npos; }
  template <typename F>
  DCHML_HD_ROW void each(F&& f) const {
    for (int64_t e = 0; e < npos; ++e) f(pos[e]);
  }
  DCHML_HD_ROW bool contains(int64_t q) const { return sorted_contains(pos, npos, q); }
};

// ... or the nonzero entries of a dense 0/1 byte row, read in place (the CUDA kernels: building a
// list on the device would need a host synchronisation for its size).
struct PositiveMask {
  const uint8_t* row;  // (c,)
  int64_t c;
  DCHML_HD_ROW int64_t count() const {
    int64_t n = 0;
    for (int64_t q = 0; q < c; ++q) n += row[q] != 0;
    return n;
  }
  template <typename F>
  DCHML_HD_ROW void each(F&& f) const {
    for (int64_t q = 0; q < c; ++q)
      if (row[q] != 0) f(q);
  }
  DCHML_HD_ROW bool contains(int64_t q) const { return row[q] != 0; }
};

// ---- row assembly, shared by every path of both backends ----
// A path supplies what it computed its own way (scores of a block, a GEMM tile, dot products on
// the device); these turn them into the row's loss and gradient coefficients.

template <typename T>
struct MdsForward {
  T loss;
  T lse;  // logsumexp({eta u_den} U {eta s_q : q negative}), saved for backward
};

// eta u_den: the denominator's own term. mean_dot_den = den . gbar.
template <typename T>
DCHML_HD T mds_denominator_logit(T eta, T mu, int64_t k, T mean_dot_den) {
  return eta * surrogate_score(mean_dot_den, mu, k);
}

// The row from its mean positive dots (codes: numerator, den: denominator) and the log-sum-exp
// of eta s_q over its negatives (-inf for none).
template <typename T>
DCHML_HD MdsForward<T> mds_forward_from_negatives(T eta, T mu, int64_t k, T mean_dot_num, T mean_dot_den,
                                                   T negatives_lse) {
  const T lse = log_add_exp(mds_denominator_logit(eta, mu, k, mean_dot_den), negatives_lse);
  return {mds_row_loss(eta, surrogate_score(mean_dot_num, mu, k), lse), lse};
}

// Gradient of one row (times the upstream grad_row) as coefficients of the proxies (§3):
//   d/d codes = positive_codes * sum_e g_e                       (numerator, -eta gbar)
//   d/d den   = positive_den * sum_e g_e                         (denominator, eta p0 gbar)
//             + negative_scale * sum_q p_q g_q                    (p_q = exp(eta s_q - lse))
// and without `other` (den is codes) both land on codes.
template <typename T>
struct MdsRowGradient {
  T positive_codes;
  T positive_den;
  T negative_scale;
};

template <typename T>
DCHML_HD MdsRowGradient<T> mds_row_gradient(T eta, T mu, int64_t k, T mean_dot_den, T lse, T grad_row,
                                            int64_t npos) {
  const T p0 = softmax_weight(mds_denominator_logit(eta, mu, k, mean_dot_den), lse);
  const T per_positive = T(1) / T(npos);
  return {-eta * grad_row * per_positive, eta * grad_row * p0 * per_positive, eta * grad_row};
}

// PSLDH row loss: mean over the positives q of term_q; score(q) = b . g_q.
template <typename T, typename Positives, typename Score>
DCHML_HD_ROW T psl_row_loss(T gamma, T sigma, int64_t k, const Positives& positives, T lse_neg, Score&& score) {
  T acc = T(0);
  positives.each([&](int64_t q) DCHML_INLINE_LAMBDA {
    acc += psl_positive_term(psl_positive_logit(gamma, sigma, score(q), k), lse_neg);
  });
  return acc / T(positives.count());
}

// PSLDH row gradient (times grad_row):
//   d loss_i / d b = (gamma / |P|) [ sum_p (sigma_p - 1) g_p + (sum_p (1 - sigma_p)) sum_q pi_q g_q ]
// with pi_q = exp(gamma s_q - lse_neg), the negatives' own softmax. emit(p, coefficient) receives
// each positive's coefficient in order (one score per positive, so a caller computing scores as
// dot products computes each once); returns the coefficient of sum_q pi_q g_q (0 without
// negatives).
template <typename T, typename Positives, typename Score, typename Emit>
DCHML_HD_ROW T psl_row_gradient(T gamma, T sigma, int64_t k, const Positives& positives, T lse_neg, T grad_row,
                            Score&& score, Emit&& emit) {
  const T scale = gamma * grad_row / T(positives.count());
  T negative_mass = T(0);  // sum_p (1 - sigma_p)
  positives.each([&](int64_t p) DCHML_INLINE_LAMBDA {
    const T w = psl_positive_weight(psl_positive_logit(gamma, sigma, score(p), k), lse_neg);
    emit(p, scale * (w - T(1)));
    negative_mass += T(1) - w;
  });
  return lse_neg == neg_infinity<T>() ? T(0) : scale * negative_mass;
}

}  // namespace dchml
