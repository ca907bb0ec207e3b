// The per-row finish of both losses once a row's negatives are reduced: the CPU tiled path and
// the CUDA kernels compute, per row, the negatives' log-sum-exp (forward) and softmax-weighted
// proxy sum (backward) over tiles of proxies, and these functions add the row's positives (one
// dot product per positive) and assemble the loss and gradient with core/mds_loss.h. Torch-free
// and DCHML_HD_ROW: the host and the device run the same code (native tests: test_loss_paths.cpp).
#pragma once

#include <cstdint>

#include "core/mds_loss.h"
#ifndef __CUDA_ARCH__
#include "core/vector_math.h"
#endif

namespace dchml {

// One row's inputs: its codes, the row whose scores form the denominator (codes itself, or
// `other` when `separate`), the ±1 proxies (c, k) row-major, and its positives (PositiveList or
// PositiveMask, core/mds_loss.h).
template <typename T, typename P, typename Positives = PositiveList>
struct LossRow {
  const T* codes;  // (k,)
  const T* den;    // (k,)
  bool separate;   // den is `other`: its gradient is a separate output
  const P* proxies;
  Positives positives;
  int64_t k;
};

// A CSR of the rows' positives (offsets (n + 1,), indices (nnz,)).
struct CsrPositives {
  const int64_t* offsets;
  const int64_t* indices;
  DCHML_HD_ROW PositiveList row(int64_t i) const { return {indices + offsets[i], offsets[i + 1] - offsets[i]}; }
};

// The rows of one call for the per-row finish: Labels::row(i) gives row i's positives
// (CsrPositives on the CPU; the CUDA kernels' own dense-or-CSR view).
template <typename T, typename P, typename Labels>
struct LossRows {
  using Scalar = T;
  const T* codes;  // (n, k)
  const T* den;    // (n, k): `other` when separate, else codes
  bool separate;
  const P* proxies;  // (c, k) as given: int8 or T
  Labels labels;
  int64_t k;
  DCHML_HD_ROW auto row(int64_t i) const {
    return LossRow<T, P, decltype(labels.row(i))>{codes + i * k, den + i * k, separate, proxies, labels.row(i), k};
  }
};

template <typename T, typename P>
DCHML_HD_ROW T row_dot(const T* b, const P* g, int64_t k) {
#ifdef __CUDA_ARCH__
  return dot<T>(b, g, k);
#else
  return simd_dot(b, g, k);
#endif
}

template <typename T, typename P>
DCHML_HD_ROW void row_axpy(T alpha, const P* g, T* out, int64_t k) {
  for (int64_t j = 0; j < k; ++j) out[j] += alpha * static_cast<T>(g[j]);
}

// b . gbar: the mean over the row's positives of b . g_e
template <typename T, typename P, typename Positives>
DCHML_HD_ROW T mean_positive_dot(const LossRow<T, P, Positives>& r, const T* b) {
  T acc = T(0);
  r.positives.each([&](int64_t q) DCHML_INLINE_LAMBDA { acc += row_dot(b, r.proxies + q * r.k, r.k); });
  return acc / T(r.positives.count());
}

// negatives_lse: logsumexp over the row's negatives q of eta (den . g_q).
template <typename T, typename P, typename Positives>
DCHML_HD_ROW MdsForward<T> mds_forward_row(const LossRow<T, P, Positives>& r, T eta, T mu, T negatives_lse) {
  const T num = mean_positive_dot(r, r.codes);
  const T den = r.separate ? mean_positive_dot(r, r.den) : num;
  return mds_forward_from_negatives(eta, mu, r.k, num, den, negatives_lse);
}

// Writes the row's gradient: grad_codes, and grad_den when separate. negative_sum = sum over
// negatives of p_q g_q (k,); it may be the very memory of the denominator's output (grad_den, or
// grad_codes without `other`): each entry is read before it is written.
template <typename T, typename P, typename Positives>
DCHML_HD_ROW void mds_backward_row(const LossRow<T, P, Positives>& r, T eta, T mu, T lse, T grad_row,
                                   const T* negative_sum, T* grad_codes, T* grad_den) {
  const MdsRowGradient<T> gr =
      mds_row_gradient(eta, mu, r.k, mean_positive_dot(r, r.den), lse, grad_row, r.positives.count());
  T* den_out = r.separate ? grad_den : grad_codes;
  for (int64_t j = 0; j < r.k; ++j) den_out[j] = gr.negative_scale * negative_sum[j];
  if (r.separate)
    for (int64_t j = 0; j < r.k; ++j) grad_codes[j] = T(0);
  const T own = r.separate ? gr.positive_den : gr.positive_den + gr.positive_codes;
  r.positives.each([&](int64_t q) DCHML_INLINE_LAMBDA {
    const P* g = r.proxies + q * r.k;
    if (r.separate) row_axpy(gr.positive_codes, g, grad_codes, r.k);
    row_axpy(own, g, den_out, r.k);
  });
}

// lse_neg: logsumexp over the row's negatives of gamma (codes . g_q), -inf without negatives.
template <typename T, typename P, typename Positives>
DCHML_HD_ROW T psl_forward_row(const LossRow<T, P, Positives>& r, T gamma, T sigma, T lse_neg) {
  return psl_row_loss(gamma, sigma, r.k, r.positives, lse_neg,
                      [&](int64_t q) DCHML_INLINE_LAMBDA { return row_dot(r.codes, r.proxies + q * r.k, r.k); });
}

// negative_sum = sum over negatives of pi_q g_q (k,), not the memory of grad_codes: the
// positives' terms are added before the negatives' coefficient is known.
template <typename T, typename P, typename Positives>
DCHML_HD_ROW void psl_backward_row(const LossRow<T, P, Positives>& r, T gamma, T sigma, T lse_neg, T grad_row,
                                   const T* negative_sum, T* grad_codes) {
  for (int64_t j = 0; j < r.k; ++j) grad_codes[j] = T(0);
  const T negative_scale = psl_row_gradient(
      gamma, sigma, r.k, r.positives, lse_neg, grad_row,
      [&](int64_t q) DCHML_INLINE_LAMBDA { return row_dot(r.codes, r.proxies + q * r.k, r.k); },
      [&](int64_t q, T coefficient) DCHML_INLINE_LAMBDA {
        row_axpy(coefficient, r.proxies + q * r.k, grad_codes, r.k);
      });
  if (negative_scale != T(0)) row_axpy(negative_scale, negative_sum, grad_codes, r.k);
}

}  // namespace dchml
