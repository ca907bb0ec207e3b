// Masked row softmax (AVX-512 float): see masked_softmax.h.
#include "core/masked_softmax.h"

#include <cmath>
#include <vector>

// GCC 12's AVX-512 headers start several intrinsics (masked max, roundscale, scalef, the
// reductions) from _mm512_undefined_ps(), a self-initialised variable, and then warn that it "may
// be used uninitialized": a false positive, silenced for this file only.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include "core/macros.h"

#ifdef DCHML_X86_TARGETS
#include <immintrin.h>
#endif

namespace dchml {

#ifdef DCHML_X86_TARGETS
namespace {

// keep[t]: the lanes of tile t (scores 16 t .. 16 t + 15) that are negatives: q < c and not
// excluded. Made once per row before the passes (computing them inside the passes cost ~10% of a
// c = 21 step, measured); rows of up to 512 scores keep them on the stack.
constexpr int64_t kStackTiles = 32;

void fill_keep(int64_t c, const int64_t* excluded, int64_t n_excluded, __mmask16* keep) {
  const int64_t tiles = (c + 15) / 16;
  for (int64_t t = 0; t < tiles; ++t) keep[t] = __mmask16(0xFFFF);
  if (c % 16) keep[tiles - 1] = __mmask16((1u << (c % 16)) - 1u);
  for (int64_t e = 0; e < n_excluded; ++e) {
    const int64_t q = excluded[e];
    keep[q / 16] = __mmask16(keep[q / 16] & ~(1u << (q % 16)));
  }
}

// Storage for the masks of up to kMaskedLseMaxRows rows: on the stack for short rows.
struct KeepStore {
  __mmask16 small[kMaskedLseMaxRows][kStackTiles];
  std::vector<__mmask16> large;
  __mmask16* row(int r, int64_t tiles) {
    if (tiles <= kStackTiles) return small[r];
    if (large.size() < static_cast<size_t>(kMaskedLseMaxRows * tiles)) large.resize(kMaskedLseMaxRows * tiles);
    return large.data() + r * tiles;
  }
};

// exp(x), 16 lanes: Cephes' expf reduction and polynomial (about 1 ulp), the same arithmetic as
// exp_vectorisable in vector_math.h; arguments clamped to [-87, 88].
DCHML_AVX512F inline __m512 exp16(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);  // p * 2^n
}

template <int NR>
DCHML_AVX512F void masked_lse_block(const float* s, int64_t stride, __mmask16* const* keep, int64_t tiles,
                                    float scale, const float* extra, float* out) {
  const __m512 vs = _mm512_set1_ps(scale);
  __m512 vmax[NR], sum[NR], shift[NR];
  float top[NR];
  for (int r = 0; r < NR; ++r) vmax[r] = _mm512_set1_ps(-INFINITY);
  for (int64_t t = 0; t < tiles; ++t)
    for (int r = 0; r < NR; ++r)
      vmax[r] = _mm512_mask_max_ps(vmax[r], keep[r][t], vmax[r],
                                   _mm512_mul_ps(_mm512_loadu_ps(s + r * stride + 16 * t), vs));
  for (int r = 0; r < NR; ++r) {
    top[r] = _mm512_reduce_max_ps(vmax[r]);
    top[r] = extra[r] > top[r] ? extra[r] : top[r];
    shift[r] = _mm512_set1_ps(top[r] == -INFINITY ? 0.0f : top[r]);  // an empty row: no NaN lanes
    sum[r] = _mm512_setzero_ps();
  }
  for (int64_t t = 0; t < tiles; ++t)
    for (int r = 0; r < NR; ++r) {
      const __m512 e = exp16(_mm512_fmsub_ps(_mm512_loadu_ps(s + r * stride + 16 * t), vs, shift[r]));
      sum[r] = _mm512_mask_add_ps(sum[r], keep[r][t], sum[r], e);
    }
  for (int r = 0; r < NR; ++r) {
    if (top[r] == -INFINITY) {
      out[r] = top[r];
      continue;
    }
    const float rest = extra[r] == -INFINITY ? 0.0f : std::exp(extra[r] - top[r]);
    out[r] = top[r] + std::log(_mm512_reduce_add_ps(sum[r]) + rest);
  }
}

DCHML_AVX512F void masked_softmax_avx512(float* w, const __mmask16* keep, int64_t tiles, float scale, float lse,
                                         float coef) {
  const __m512 vs = _mm512_set1_ps(scale), shift = _mm512_set1_ps(lse), vc = _mm512_set1_ps(coef);
  for (int64_t t = 0; t < tiles; ++t) {
    const __m512 e = exp16(_mm512_fmsub_ps(_mm512_loadu_ps(w + 16 * t), vs, shift));
    _mm512_storeu_ps(w + 16 * t, _mm512_maskz_mul_ps(keep[t], e, vc));
  }
}

}  // namespace

void masked_lse_rows(const float* s, int64_t stride, int nr, int64_t c, const int64_t* const* excluded,
                     const int64_t* n_excluded, float scale, const float* extra, float* out) {
  const int64_t tiles = (c + 15) / 16;
  KeepStore store;
  __mmask16* keep[kMaskedLseMaxRows];
  for (int r = 0; r < nr; ++r) {
    keep[r] = store.row(r, tiles);
    fill_keep(c, excluded[r], n_excluded[r], keep[r]);
  }
  switch (nr) {
    case 4: masked_lse_block<4>(s, stride, keep, tiles, scale, extra, out); break;
    case 3: masked_lse_block<3>(s, stride, keep, tiles, scale, extra, out); break;
    case 2: masked_lse_block<2>(s, stride, keep, tiles, scale, extra, out); break;
    default: masked_lse_block<1>(s, stride, keep, tiles, scale, extra, out); break;
  }
}

void masked_softmax(float* w, int64_t c, const int64_t* excluded, int64_t n_excluded, float scale, float lse,
                    float coef) {
  const int64_t tiles = (c + 15) / 16;
  KeepStore store;
  __mmask16* keep = store.row(0, tiles);
  fill_keep(c, excluded, n_excluded, keep);
  masked_softmax_avx512(w, keep, tiles, scale, lse, coef);
}

#else

// Not x86 with GCC/Clang: SignPanel::supported() is false there, so these are never called.
void masked_lse_rows(const float*, int64_t, int, int64_t, const int64_t* const*, const int64_t*, float, const float*,
                     float*) {}
void masked_softmax(float*, int64_t, const int64_t*, int64_t, float, float, float) {}

#endif

}  // namespace dchml
