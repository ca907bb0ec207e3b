// Direct (one pass per row, no temporaries) row engine of the margin-dynamic-softmax and
// partial-softmax losses: forward and backward of one row from its codes, the ±1 proxies and the
// row's sorted positive indices. Torch-free: the CPU kernel runs it over rows (OpenMP, SIMD
// chosen at run time), the native tests check it against the definitions. The arithmetic per
// score and per softmax weight is that of core/mds_loss.h, which the CUDA kernels also use.
#pragma once

#include <cstdint>
#include <cstring>

#include "core/mds_loss.h"

// The row functions are forced inline so that each SIMD clone of the CPU kernel's row loop
// (target_clones) compiles them for its own instruction set.
#if defined(__GNUC__) || defined(__clang__)
#define DCHML_ROW_INLINE inline __attribute__((always_inline))
#else
#define DCHML_ROW_INLINE inline
#endif

namespace dchml {

// b . g with 16 independent partial sums: the compiler maps the lanes onto SIMD registers
// without needing permission to reassociate a float reduction (no -ffast-math), and the result
// does not depend on the SIMD width the CPU has.
constexpr int kDotLanes = 16;

template <typename T, typename P>
DCHML_ROW_INLINE T simd_dot(const T* b, const P* g, int64_t k) {
  T lanes[kDotLanes] = {};
  int64_t j = 0;
  for (; j + kDotLanes <= k; j += kDotLanes)
    for (int l = 0; l < kDotLanes; ++l) lanes[l] += b[j + l] * static_cast<T>(g[j + l]);
  for (int l = 0; j + l < k; ++l) lanes[l] += b[j + l] * static_cast<T>(g[j + l]);
  // pairwise fold 16 -> 8 -> 4 -> 2 -> 1, spelled out so each step is one SIMD add
  for (int l = 0; l < 8; ++l) lanes[l] += lanes[l + 8];
  for (int l = 0; l < 4; ++l) lanes[l] += lanes[l + 4];
  for (int l = 0; l < 2; ++l) lanes[l] += lanes[l + 2];
  return lanes[0] + lanes[1];
}

template <typename T, typename P>
DCHML_ROW_INLINE void simd_axpy(T alpha, const P* g, T* out, int64_t k) {
  for (int64_t j = 0; j < k; ++j) out[j] += alpha * static_cast<T>(g[j]);
}

// exp for a whole buffer, written so the compiler vectorises it: x[i] = exp(x[i] - shift).
// float: Cephes' expf reduction and polynomial (about 1 ulp), with the argument clamped to
// [-87, 88] (so exp(-inf) gives 1.6e-38 rather than 0: harmless in a sum with a term >= 1, and
// callers zero the excluded entries themselves); double: the C library's exp, element by element.
DCHML_ROW_INLINE float exp_vectorisable(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  const float t = x * 1.44269504088896341f;
  const float n = (t + 12582912.0f) - 12582912.0f;  // round to nearest (1.5 * 2^23 trick)
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

DCHML_ROW_INLINE void exp_shifted_inplace(float* x, int64_t n, float shift) {
  for (int64_t i = 0; i < n; ++i) x[i] = exp_vectorisable(x[i] - shift);
}

DCHML_ROW_INLINE void exp_shifted_inplace(double* x, int64_t n, double shift) {
  for (int64_t i = 0; i < n; ++i) x[i] = exp_(x[i] - shift);
}

// One row's inputs. `den` is the row whose scores form the denominator (codes, or `other`).
template <typename T, typename P>
struct LossRow {
  const T* codes;         // (k,)
  const T* den;           // (k,)
  const P* proxies;       // (c, k) row-major, ±1
  const int64_t* pos;     // sorted distinct positive indices of the row
  int64_t npos;
  int64_t c;
  int64_t k;
};

// mean over positives of b . g_e
template <typename T, typename P>
DCHML_ROW_INLINE T mean_positive_dot(const LossRow<T, P>& r, const T* b) {
  T acc = T(0);
  for (int64_t e = 0; e < r.npos; ++e) acc += simd_dot(b, r.proxies + r.pos[e] * r.k, r.k);
  return acc / T(r.npos);
}

// State with the log-sum-exp over negatives q of scale * (den . g_q) pushed into it.
template <typename T, typename P>
DCHML_ROW_INLINE OnlineLse<T> push_negatives(const LossRow<T, P>& r, T scale, OnlineLse<T> s) {
  int64_t next = 0;  // cursor into the sorted positives
  for (int64_t q = 0; q < r.c; ++q) {
    if (next < r.npos && r.pos[next] == q) {
      ++next;
      continue;
    }
    lse_push(s, scale * simd_dot(r.den, r.proxies + q * r.k, r.k));
  }
  return s;
}

// out += coef * sum over negatives q of exp(scale * (den . g_q) - lse) g_q
template <typename T, typename P>
DCHML_ROW_INLINE void add_negative_softmax_combination(const LossRow<T, P>& r, T scale, T lse, T coef, T* out) {
  int64_t next = 0;
  for (int64_t q = 0; q < r.c; ++q) {
    if (next < r.npos && r.pos[next] == q) {
      ++next;
      continue;
    }
    const P* g = r.proxies + q * r.k;
    const T w = softmax_weight(scale * simd_dot(r.den, g, r.k), lse);
    simd_axpy(coef * w, g, out, r.k);
  }
}

// Buffered variants (scratch holds c values): all the row's scores first, then one vectorised
// exp pass, instead of a libm call per proxy inside the dot loop.
// scratch[q] = scale * (den . g_q) for negatives; returns the max over negatives (-inf if none).
template <typename T, typename P>
DCHML_ROW_INLINE T negative_scores(const LossRow<T, P>& r, T scale, T* scratch) {
  int64_t next = 0;
  T m = neg_infinity<T>();
  for (int64_t q = 0; q < r.c; ++q) {
    if (next < r.npos && r.pos[next] == q) {
      ++next;
      scratch[q] = neg_infinity<T>();
      continue;
    }
    scratch[q] = scale * simd_dot(r.den, r.proxies + q * r.k, r.k);
    m = scratch[q] > m ? scratch[q] : m;
  }
  return m;
}

// logsumexp of {extra} U {scale * s_q : q negative}; extra = -inf for none.
template <typename T, typename P>
DCHML_ROW_INLINE T buffered_lse(const LossRow<T, P>& r, T scale, T extra, T* scratch) {
  T m = negative_scores(r, scale, scratch);
  m = extra > m ? extra : m;
  if (m == neg_infinity<T>()) return m;
  exp_shifted_inplace(scratch, r.c, m);
  T sum = extra == neg_infinity<T>() ? T(0) : exp_(extra - m);
  int64_t next = 0;
  for (int64_t q = 0; q < r.c; ++q) {
    if (next < r.npos && r.pos[next] == q) {  // skip the positives' clamped exp(-inf)
      ++next;
      continue;
    }
    sum += scratch[q];
  }
  return m + log_(sum);
}

template <typename T, typename P>
DCHML_ROW_INLINE void buffered_negative_softmax_combination(const LossRow<T, P>& r, T scale, T lse, T coef, T* out,
                                                             T* scratch) {
  negative_scores(r, scale, scratch);
  exp_shifted_inplace(scratch, r.c, lse);
  int64_t next = 0;
  for (int64_t q = 0; q < r.c; ++q) {
    if (next < r.npos && r.pos[next] == q) {
      ++next;
      continue;
    }
    simd_axpy(coef * scratch[q], r.proxies + q * r.k, out, r.k);
  }
}

// ---- margin-dynamic-softmax ----
template <typename T>
struct MdsForward {
  T loss;
  T lse;  // logsumexp({eta u_den} U {eta s_q}), saved for backward
};

// negatives_lse: logsumexp over negatives of eta s_q when a caller computed it already (the tiled
// GEMM path), or null to compute it here.
template <typename T, typename P>
DCHML_ROW_INLINE MdsForward<T> mds_forward_row(const LossRow<T, P>& r, T eta, T mu, const T* negatives_lse = nullptr,
                                                      T* scratch = nullptr) {
  const T u_num = surrogate_score(mean_positive_dot(r, r.codes), mu, r.k);
  const T u_den = r.den == r.codes ? u_num : surrogate_score(mean_positive_dot(r, r.den), mu, r.k);
  T lse;
  if (negatives_lse != nullptr) {
    lse = log_add_exp(eta * u_den, *negatives_lse);
  } else if (scratch != nullptr) {
    lse = buffered_lse(r, eta, eta * u_den, scratch);
  } else {
    OnlineLse<T> s = lse_empty<T>();
    lse_push(s, eta * u_den);
    lse = lse_value(push_negatives(r, eta, s));
  }
  return {mds_row_loss(eta, u_num, lse), lse};
}

// Writes the row's gradient: grad_codes (numerator part, plus the denominator part when den is
// codes) and grad_den (denominator part, only when den is a separate tensor; may be null then).
// negative_sum: sum over negatives of p_q g_q when a caller computed it already (the tiled GEMM
// path), or null to compute it here.
template <typename T, typename P>
DCHML_ROW_INLINE void mds_backward_row(const LossRow<T, P>& r, T eta, T mu, T lse, T grad_row, T* grad_codes,
                             T* grad_den, const T* negative_sum = nullptr, T* scratch = nullptr) {
  const T u_den = surrogate_score(mean_positive_dot(r, r.den), mu, r.k);
  const T p0 = softmax_weight(eta * u_den, lse);
  const MdsGradCoefficients<T> co = mds_grad_coefficients(eta, grad_row, p0);
  T* den_out = r.den == r.codes ? grad_codes : grad_den;
  for (int64_t j = 0; j < r.k; ++j) grad_codes[j] = T(0);
  if (den_out != grad_codes)
    for (int64_t j = 0; j < r.k; ++j) den_out[j] = T(0);
  // gbar terms: (numerator + denominator coefficients) / |P| per positive proxy
  for (int64_t e = 0; e < r.npos; ++e) {
    const P* g = r.proxies + r.pos[e] * r.k;
    simd_axpy(co.numerator_gbar / T(r.npos), g, grad_codes, r.k);
    simd_axpy(co.denominator_gbar / T(r.npos), g, den_out, r.k);
  }
  if (negative_sum != nullptr)
    simd_axpy(co.denominator_scale, negative_sum, den_out, r.k);
  else if (scratch != nullptr)
    buffered_negative_softmax_combination(r, eta, lse, co.denominator_scale, den_out, scratch);
  else
    add_negative_softmax_combination(r, eta, lse, co.denominator_scale, den_out);
}

// ---- PSLDH partial softmax ----
template <typename T>
struct PslForward {
  T loss;
  T lse_neg;  // logsumexp over negatives of gamma s_q (-inf without negatives), saved for backward
};

template <typename T, typename P>
DCHML_ROW_INLINE PslForward<T> psl_forward_row(const LossRow<T, P>& r, T gamma, T sigma,
                                               const T* negatives_lse = nullptr, T* scratch = nullptr) {
  const T lse_neg = negatives_lse != nullptr ? *negatives_lse
                    : scratch != nullptr     ? buffered_lse(r, gamma, neg_infinity<T>(), scratch)
                                             : lse_value(push_negatives(r, gamma, lse_empty<T>()));
  T acc = T(0);
  for (int64_t e = 0; e < r.npos; ++e) {
    const T pos = psl_positive_logit(gamma, sigma, simd_dot(r.codes, r.proxies + r.pos[e] * r.k, r.k), r.k);
    acc += psl_positive_term(pos, lse_neg);
  }
  return {acc / T(r.npos), lse_neg};
}

template <typename T, typename P>
DCHML_ROW_INLINE void psl_backward_row(const LossRow<T, P>& r, T gamma, T sigma, T lse_neg, T grad_row, T* grad_codes,
                             const T* negative_sum = nullptr, T* scratch = nullptr) {
  for (int64_t j = 0; j < r.k; ++j) grad_codes[j] = T(0);
  const T scale = gamma * grad_row / T(r.npos);
  T negative_mass = T(0);  // sum_p (1 - sigma_p)
  for (int64_t e = 0; e < r.npos; ++e) {
    const P* g = r.proxies + r.pos[e] * r.k;
    const T pos = psl_positive_logit(gamma, sigma, simd_dot(r.codes, g, r.k), r.k);
    const T w = psl_positive_weight(pos, lse_neg);
    simd_axpy(scale * (w - T(1)), g, grad_codes, r.k);
    negative_mass += T(1) - w;
  }
  if (lse_neg == neg_infinity<T>()) return;  // no negatives
  if (negative_sum != nullptr)
    simd_axpy(scale * negative_mass, negative_sum, grad_codes, r.k);
  else if (scratch != nullptr)
    buffered_negative_softmax_combination(r, gamma, lse_neg, scale * negative_mass, grad_codes, scratch);
  else
    add_negative_softmax_combination(r, gamma, lse_neg, scale * negative_mass, grad_codes);
}

}  // namespace dchml
