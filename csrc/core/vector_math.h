// Host loops written so that the compiler vectorises them without reassociation flags (no
// -ffast-math): the CPU loss paths' dot products and exponentials. Results do not depend on the
// SIMD width the CPU has.
#pragma once

#include <cstdint>
#include <cstring>

#include "core/macros.h"
#include "core/mds_loss.h"

namespace dchml {

// b . g with 16 independent partial sums, folded pairwise: the lanes map onto SIMD registers.
constexpr int kDotLanes = 16;

template <typename T, typename P>
DCHML_ROW_INLINE T simd_dot(const T* b, const P* g, int64_t k) {
  T lanes[kDotLanes] = {};
  int64_t j = 0;
  for (; j + kDotLanes <= k; j += kDotLanes)
    for (int l = 0; l < kDotLanes; ++l) lanes[l] += b[j + l] * static_cast<T>(g[j + l]);
  for (int l = 0; j + l < k; ++l) lanes[l] += b[j + l] * static_cast<T>(g[j + l]);
  for (int l = 0; l < 8; ++l) lanes[l] += lanes[l + 8];  // 16 -> 8 -> 4 -> 2 -> 1, one SIMD add each
  for (int l = 0; l < 4; ++l) lanes[l] += lanes[l + 4];
  for (int l = 0; l < 2; ++l) lanes[l] += lanes[l + 2];
  return lanes[0] + lanes[1];
}

// exp for a whole buffer: x[i] = exp(x[i] - shift).
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

}  // namespace dchml
