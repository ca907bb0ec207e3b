// Popcount distance on 32-bit words, shared by the CUDA kernels and the CPU tests (the CPU
// engine's SIMD loops compute the same quantity on 64-bit words; the native tests check both
// agree). Rows are packed codes padded to whole 32-bit words; `last_mask` clears the padding
// bits of the last word (bits past the code length).
#pragma once

#include <cstdint>

#include "core/macros.h"

namespace dchml {
namespace hamming {

DCHML_HD int popcount32(uint32_t x) {
#if defined(__CUDA_ARCH__)
  return __popc(x);
#else
  return __builtin_popcount(x);
#endif
}

DCHML_HD uint32_t last_word_mask(int64_t bits) {
  const int64_t r = bits % 32;
  return r == 0 ? 0xffffffffu : (uint32_t)((1u << r) - 1u);
}

DCHML_HD int distance_words32(const uint32_t* a, const uint32_t* b, int64_t words, uint32_t last_mask) {
  int d = 0;
  for (int64_t w = 0; w + 1 < words; ++w) d += popcount32(a[w] ^ b[w]);
  d += popcount32((a[words - 1] ^ b[words - 1]) & last_mask);
  return d;
}

DCHML_HD bool shares_label_bytes(const uint8_t* a, const uint8_t* b, int64_t nbytes) {
  for (int64_t i = 0; i < nbytes; ++i)
    if (a[i] & b[i]) return true;
  return false;
}

}  // namespace hamming
}  // namespace dchml
