// The per-row softmax of the small-c loss path in float on AVX-512 (the companion of SignPanel):
// the log-sum-exp over a row's negatives and their softmax weights, with the row's positives
// left out through a bit mask held in mask registers.
//
// Why not the generic loops: those write -inf (or 0) over each positive with a scalar store and
// then read the row back with vector loads; the failed store-to-load forwarding stalled every row
// (measured: 11% of the forward kernel at n = 128, c = 21 on Zen 4). Here nothing is written
// before it is read, and exp is evaluated 16 lanes at a time.
//
// Call only when SignPanel::supported() (it implies AVX-512F). Rows hold c scores (read in
// tiles of 16, so c rounded up to 16 must be readable; the extra lanes are ignored); `excluded`
// lists the row's positives, sorted ascending and distinct, each < c. Any c: the masks are made
// tile by tile from the sorted positives.
#pragma once

#include <cstdint>

namespace dchml {

constexpr int kMaskedLseMaxRows = 4;

// For rows r < nr (at most kMaskedLseMaxRows) of scores s + r * stride:
//   out[r] = logsumexp({extra[r]} U {scale * s[r][q] : q < c, q not in excluded[r]}), -inf if empty.
// Several rows per call: each row is a chain of dependent reductions (max, then a sum, then a
// log); interleaving the rows' chains keeps the vector units busy (measured 1.3x per row at c = 21).
void masked_lse_rows(const float* s, int64_t stride, int nr, int64_t c, const int64_t* const* excluded,
                     const int64_t* n_excluded, float scale, const float* extra, float* out);

// w[q] = coef * exp(scale * w[q] - lse) for q < c not excluded, and 0 for the excluded q and for
// the padding up to the next multiple of 16.
void masked_softmax(float* w, int64_t c, const int64_t* excluded, int64_t n_excluded, float scale, float lse,
                    float coef);

}  // namespace dchml
