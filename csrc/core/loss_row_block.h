// The row-block path of the CPU losses (torch-free; the operators in ops/cpu run it over threads).
//
// A block of 4 rows (1 for wide rows) at a time: the rows' scores against every proxy, their
// log-sum-exp over the negatives, and a backward that folds every proxy's coefficient (softmax
// weight on a negative, gbar share on a positive) into one weight per proxy, so that a row's
// gradient is ONE weights x proxies product. The products: float on an AVX-512 CPU through the
// ±1 lookup tables (core/sign_panel.h, softmax steps in core/masked_softmax.h); otherwise with the
// proxies unpacked once per call and 4 rows x 16 proxies accumulated in SIMD registers. Labels
// are read row by row (core/loss_labels.h). Per-thread scratch: 4 rows of scores plus one row.
//
// Each function handles rows [r0, r1) and returns false when a row's dense labels were not 0/1
// or had no positive (its outputs are then unspecified; the caller reports the problem).
#pragma once

#include <cstdint>

#include "core/loss_labels.h"
#include "core/loss_proxies.h"

namespace dchml {

template <typename T>
struct RowBlockInputs {
  using Scalar = T;
  const T* codes;      // (n, k)
  const T* den;        // (n, k): `other` when separate, else codes
  bool separate;
  const ProxyPanel<T>* proxies;  // built for PanelUse::kRowBlock (rows kept when separate)
  LabelRows labels;
};

template <typename T>
bool row_block_mds_forward(const RowBlockInputs<T>& in, T eta, T mu, T* loss, T* lse, int64_t r0, int64_t r1);

// grad_den: written when separate (may be null otherwise).
template <typename T>
bool row_block_mds_backward(const RowBlockInputs<T>& in, T eta, T mu, const T* lse, const T* grad_loss,
                            T* grad_codes, T* grad_den, int64_t r0, int64_t r1);

template <typename T>
bool row_block_psl_forward(const RowBlockInputs<T>& in, T gamma, T sigma, T* loss, T* lse_neg, int64_t r0,
                           int64_t r1);

template <typename T>
bool row_block_psl_backward(const RowBlockInputs<T>& in, T gamma, T sigma, const T* lse_neg, const T* grad_loss,
                            T* grad_codes, int64_t r0, int64_t r1);

// The forward and, from the same scores, the gradient of grad_row * sum_i loss_i (the same values
// as the backward above with grad_loss filled with grad_row): for a caller that knows the
// gradient will be needed, one score pass and one label read instead of two.
template <typename T>
bool row_block_mds_forward_backward(const RowBlockInputs<T>& in, T eta, T mu, T grad_row, T* loss, T* lse,
                                    T* grad_codes, T* grad_den, int64_t r0, int64_t r1);

template <typename T>
bool row_block_psl_forward_backward(const RowBlockInputs<T>& in, T gamma, T sigma, T grad_row, T* loss, T* lse_neg,
                                    T* grad_codes, int64_t r0, int64_t r1);

// Which calls take this path: always up to 512 proxies; beyond that with the lookup tables (float
// on an AVX-512 CPU) while their two index arrays (c * k bytes each) stay cache-resident: every
// row streams them once per product. Measured here (n = 1024-4096, k = 128, forward + backward):
// tables 2.7x faster than the tiled path at c = 1000, 1.6x at c = 65,536 (c * k = 2^23), 0.93x at
// c = 100,000, where the tiles take over.
bool takes_row_block_path(int64_t c, int64_t k, bool sign_tables);

// Rows per thread chunk: above ~32K multiply-adds a call splits its rows evenly over the threads
// (at n = 128, c = 21, k = 64 on 2 cores that took a step from 67 to 61 us; measured,
// benchmarks/results/loss.md); smaller calls stay on the calling thread (returns n).
int64_t row_block_grain(int64_t n, int64_t c, int64_t k);

}  // namespace dchml
