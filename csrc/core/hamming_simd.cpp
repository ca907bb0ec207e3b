// The SIMD inner loops of the Hamming engine (see hamming_simd.h) and the run-time choice among
// them. Each variant is compiled with a GCC/Clang `target` attribute rather than build-wide
// -mavx512 flags, so one binary runs on any x86-64 CPU and uses AVX-512 only where it exists.
// Fixed-width variants (1, 2, 4 words = 64/128/256 bits; 16- and 32-bit codes use 1 word) keep
// the word loop unrolled; one generic variant serves every other length.
#include "core/hamming_simd.h"

// GCC 12 flags its own AVX-512 headers (_mm512_undefined) as maybe-uninitialised.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <algorithm>
#include <atomic>
#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#define DCHML_X86 1
#include <immintrin.h>
#endif

namespace dchml {
namespace hamming {
namespace detail {
namespace {

// ---------------------------------------------------------------------------------------------
// Portable: plain C++, the compiler's popcount.
template <int W>
void distances_portable(const uint64_t* tile, int64_t words, int64_t T, const uint64_t* q,
                        uint16_t* out) {
  const int64_t nw = W > 0 ? W : words;
  for (int64_t j = 0; j < T; ++j) {
    uint32_t acc = 0;
    for (int64_t w = 0; w < nw; ++w) acc += (uint32_t)__builtin_popcountll(tile[w * T + j] ^ q[w]);
    out[j] = (uint16_t)acc;
  }
}

int64_t select_portable(const uint16_t* d, int64_t n, uint16_t threshold, int64_t base,
                        uint64_t* keys) {
  int64_t count = 0;
  for (int64_t j = 0; j < n; ++j) {
    if (d[j] <= threshold) keys[count++] = ((uint64_t)d[j] << kKeyShift) | (uint64_t)(base + j);
  }
  return count;
}

#ifdef DCHML_X86
// ---------------------------------------------------------------------------------------------
// AVX2: per-byte popcount by nibble lookup (vpshufb), summed per 64-bit lane with vpsadbw.
#define DCHML_AVX2 __attribute__((target("avx2,popcnt")))

DCHML_AVX2 static inline __m256i popcount_bytes_avx2(__m256i x) {
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2,
                                       1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0f);
  const __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(x, low));
  const __m256i hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(x, 4), low));
  return _mm256_add_epi8(lo, hi);
}

template <int W>
DCHML_AVX2 void distances_avx2(const uint64_t* tile, int64_t words, int64_t T, const uint64_t* q,
                               uint16_t* out) {
  const int64_t nw = W > 0 ? W : words;
  const __m256i zero = _mm256_setzero_si256();
  for (int64_t j = 0; j < T; j += 4) {
    __m256i acc = zero;
    for (int64_t w = 0; w < nw; ++w) {
      const __m256i x = _mm256_xor_si256(
          _mm256_loadu_si256((const __m256i*)(tile + w * T + j)), _mm256_set1_epi64x((long long)q[w]));
      acc = _mm256_add_epi64(acc, _mm256_sad_epu8(popcount_bytes_avx2(x), zero));
    }
    alignas(32) uint64_t lanes[4];
    _mm256_store_si256((__m256i*)lanes, acc);
    for (int l = 0; l < 4; ++l) out[j + l] = (uint16_t)lanes[l];
  }
}

DCHML_AVX2 int64_t select_avx2(const uint16_t* d, int64_t n, uint16_t threshold, int64_t base,
                               uint64_t* keys) {
  int64_t count = 0;
  const __m256i thr = _mm256_set1_epi16((short)threshold);
  for (int64_t j = 0; j < n; j += 16) {
    const __m256i v = _mm256_loadu_si256((const __m256i*)(d + j));
    // unsigned v <= thr  <=>  min(v, thr) == v
    uint32_t mask = (uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi16(_mm256_min_epu16(v, thr), v));
    if (!mask) continue;
    mask &= 0x55555555u;  // one bit per 16-bit lane
    while (mask) {
      const int64_t jj = j + (__builtin_ctz(mask) >> 1);
      mask &= mask - 1;
      if (jj < n) keys[count++] = ((uint64_t)d[jj] << kKeyShift) | (uint64_t)(base + jj);
    }
  }
  return count;
}

// ---------------------------------------------------------------------------------------------
// AVX-512: VPOPCNTQ on 8 rows at once; compare of 32 distances at once into a mask register.
#define DCHML_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vpopcntdq,popcnt")))

template <int W>
DCHML_AVX512 void distances_avx512(const uint64_t* tile, int64_t words, int64_t T,
                                   const uint64_t* q, uint16_t* out) {
  const int64_t nw = W > 0 ? W : words;
  if (W == 1) {
    const __m512i qv = _mm512_set1_epi64((long long)q[0]);
    for (int64_t j = 0; j < T; j += 32) {  // 4 independent vectors per step for ILP
      const __m512i a = _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(tile + j), qv));
      const __m512i b = _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(tile + j + 8), qv));
      const __m512i c = _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(tile + j + 16), qv));
      const __m512i e = _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(tile + j + 24), qv));
      _mm_storeu_si128((__m128i*)(out + j), _mm512_cvtepi64_epi16(a));
      _mm_storeu_si128((__m128i*)(out + j + 8), _mm512_cvtepi64_epi16(b));
      _mm_storeu_si128((__m128i*)(out + j + 16), _mm512_cvtepi64_epi16(c));
      _mm_storeu_si128((__m128i*)(out + j + 24), _mm512_cvtepi64_epi16(e));
    }
    return;
  }
  for (int64_t j = 0; j < T; j += 8) {
    __m512i acc = _mm512_setzero_si512();
    for (int64_t w = 0; w < nw; ++w) {
      const __m512i x = _mm512_xor_si512(_mm512_loadu_si512(tile + w * T + j),
                                         _mm512_set1_epi64((long long)q[w]));
      acc = _mm512_add_epi64(acc, _mm512_popcnt_epi64(x));
    }
    _mm_storeu_si128((__m128i*)(out + j), _mm512_cvtepi64_epi16(acc));
  }
}

DCHML_AVX512 int64_t select_avx512(const uint16_t* d, int64_t n, uint16_t threshold, int64_t base,
                                   uint64_t* keys) {
  int64_t count = 0;
  const __m512i thr = _mm512_set1_epi16((short)threshold);
  for (int64_t j = 0; j < n; j += 32) {
    uint32_t mask = (uint32_t)_mm512_cmple_epu16_mask(_mm512_loadu_si512(d + j), thr);
    if (!mask) continue;
    if (n - j < 32) mask &= (uint32_t)((uint64_t(1) << (n - j)) - 1);
    while (mask) {
      const int64_t jj = j + __builtin_ctz(mask);
      mask &= mask - 1;
      keys[count++] = ((uint64_t)d[jj] << kKeyShift) | (uint64_t)(base + jj);
    }
  }
  return count;
}

// Fused: 32 rows per step, one branch per 32 rows (candidates are ~1% of rows), no store of
// distances unless some row of the step is a candidate.
template <int W>
DCHML_AVX512 int64_t scan_avx512(const uint64_t* tile, int64_t words, int64_t T, int64_t count,
                                 const uint64_t* q, uint16_t threshold, int64_t base, uint64_t* keys,
                                 uint16_t*) {
  const int64_t nw = W > 0 ? W : words;
  const __m512i thr = _mm512_set1_epi64((long long)threshold);
  int64_t n = 0;
  for (int64_t j = 0; j < count; j += 32) {
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t w = 0; w < nw; ++w) {
      const __m512i qv = _mm512_set1_epi64((long long)q[w]);
      const uint64_t* row = tile + w * T + j;
      a0 = _mm512_add_epi64(a0, _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(row), qv)));
      a1 = _mm512_add_epi64(a1, _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(row + 8), qv)));
      a2 = _mm512_add_epi64(a2, _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(row + 16), qv)));
      a3 = _mm512_add_epi64(a3, _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(row + 24), qv)));
    }
    uint32_t mask = (uint32_t)_mm512_cmple_epu64_mask(a0, thr) |
                    ((uint32_t)_mm512_cmple_epu64_mask(a1, thr) << 8) |
                    ((uint32_t)_mm512_cmple_epu64_mask(a2, thr) << 16) |
                    ((uint32_t)_mm512_cmple_epu64_mask(a3, thr) << 24);
    if (!mask) continue;
    if (count - j < 32) mask &= (uint32_t)((uint64_t(1) << (count - j)) - 1);  // zero padding rows
    alignas(64) uint64_t d[32];
    _mm512_store_si512(d, a0);
    _mm512_store_si512(d + 8, a1);
    _mm512_store_si512(d + 16, a2);
    _mm512_store_si512(d + 24, a3);
    while (mask) {
      const int b = __builtin_ctz(mask);
      mask &= mask - 1;
      keys[n++] = (d[b] << kKeyShift) | (uint64_t)(base + j + b);
    }
  }
  return n;
}

// Register-blocked scan in two phases per chunk of up to 1024 rows.
//  A: Q queries (broadcast words and thresholds held in registers) against one vector of 8
//     database rows at a time: XOR, VPOPCNTQ, compare into a mask, and the 8-bit mask stored
//     in a per-query hit bitmap. No branch: with ~0.5-1% of rows being candidates, a branch per
//     vector (or per group of queries) mispredicts often enough to dominate the loop.
//  B: per query, walk the bitmap 64 rows at a time and emit the keys of the set bits in row
//     order, recomputing each hit's distance with a scalar POPCNT.
template <int W, int Q>
DCHML_AVX512 void scan_group_avx512(const uint64_t* tile, int64_t T, int64_t count,
                                    const uint64_t* const* q, const uint16_t* thresholds,
                                    int64_t base, uint64_t* const* keys, int64_t* nkeys) {
  constexpr int64_t kChunk = 1024;
  alignas(64) uint64_t bitmap[Q][kChunk / 64];
  __m512i qv[Q][W];
  __m512i thr[Q];
  for (int g = 0; g < Q; ++g) {
    for (int w = 0; w < W; ++w) qv[g][w] = _mm512_set1_epi64((long long)q[g][w]);
    thr[g] = _mm512_set1_epi64((long long)thresholds[g]);
  }
  for (int64_t c0 = 0; c0 < count; c0 += kChunk) {
    const int64_t n = std::min(kChunk, count - c0);
    const int64_t nwords = (n + 63) / 64;
    for (int g = 0; g < Q; ++g) bitmap[g][nwords - 1] = 0;  // the tail vectors may not fill it
    for (int64_t j = 0; j < n; j += 8) {
      __m512i row[W];
      for (int w = 0; w < W; ++w) row[w] = _mm512_loadu_si512(tile + w * T + c0 + j);
      for (int g = 0; g < Q; ++g) {
        __m512i d = _mm512_popcnt_epi64(_mm512_xor_si512(row[0], qv[g][0]));
        for (int w = 1; w < W; ++w)
          d = _mm512_add_epi64(d, _mm512_popcnt_epi64(_mm512_xor_si512(row[w], qv[g][w])));
        reinterpret_cast<uint8_t*>(bitmap[g])[j >> 3] = (uint8_t)_mm512_cmple_epu64_mask(d, thr[g]);
      }
    }
    const uint64_t tail = (n % 64) ? ((uint64_t(1) << (n % 64)) - 1) : ~uint64_t(0);  // padding rows
    for (int g = 0; g < Q; ++g) {
      uint64_t* out = keys[g] + nkeys[g];
      int64_t m = 0;
      for (int64_t wi = 0; wi < nwords; ++wi) {
        uint64_t bits = bitmap[g][wi];
        if (wi == nwords - 1) bits &= tail;
        while (bits) {
          const int64_t j = c0 + wi * 64 + __builtin_ctzll(bits);
          bits &= bits - 1;
          uint64_t d = 0;
          for (int w = 0; w < W; ++w) d += (uint64_t)__builtin_popcountll(tile[w * T + j] ^ q[g][w]);
          out[m++] = (d << kKeyShift) | (uint64_t)(base + j);
        }
      }
      nkeys[g] += m;
    }
  }
}

template <int W>
DCHML_AVX512 void scan_many_avx512(const uint64_t* tile, int64_t, int64_t T, int64_t count, int nq,
                                   const uint64_t* const* q, const uint16_t* thresholds, int64_t base,
                                   uint64_t* const* keys, int64_t* nkeys, uint16_t*) {
  // Widest group first; W = 4 uses groups of at most 4 so the broadcasts stay in registers.
  constexpr int kMax = W >= 4 ? 4 : 8;
  int g = 0;
  for (; nq - g >= kMax; g += kMax)
    scan_group_avx512<W, kMax>(tile, T, count, q + g, thresholds + g, base, keys + g, nkeys + g);
  if (nq - g >= 4 && kMax > 4) {
    scan_group_avx512<W, 4>(tile, T, count, q + g, thresholds + g, base, keys + g, nkeys + g);
    g += 4;
  }
  if (nq - g >= 2) {
    scan_group_avx512<W, 2>(tile, T, count, q + g, thresholds + g, base, keys + g, nkeys + g);
    g += 2;
  }
  if (nq - g >= 1) scan_group_avx512<W, 1>(tile, T, count, q + g, thresholds + g, base, keys + g, nkeys + g);
}
#endif  // DCHML_X86

// Unfused scan for the other instruction sets: distances into scratch, then select.
template <int W>
int64_t scan_composed(TileDistanceFn distances, SelectFn select, const uint64_t* tile, int64_t words,
                      int64_t T, int64_t count, const uint64_t* q, uint16_t threshold, int64_t base,
                      uint64_t* keys, uint16_t* scratch) {
  distances(tile, words, T, q, scratch);
  return select(scratch, count, threshold, base, keys);
}

// Any instruction set / length: one query at a time through the single-query scan.
template <ScanFn F>
void scan_many_each(const uint64_t* tile, int64_t words, int64_t T, int64_t count, int nq,
                    const uint64_t* const* q, const uint16_t* thresholds, int64_t base,
                    uint64_t* const* keys, int64_t* nkeys, uint16_t* scratch) {
  for (int g = 0; g < nq; ++g)
    nkeys[g] += F(tile, words, T, count, q[g], thresholds[g], base, keys[g] + nkeys[g], scratch);
}

TileDistanceFn pick_portable(int64_t words) {
  switch (words) {
    case 1: return distances_portable<1>;
    case 2: return distances_portable<2>;
    case 4: return distances_portable<4>;
    default: return distances_portable<0>;
  }
}

Isa detect() {
#ifdef DCHML_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vpopcntdq"))
    return Isa::avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt")) return Isa::avx2;
#endif
  return Isa::portable;
}

std::atomic<int> g_forced{-1};

}  // namespace

TileDistanceFn distances_for(Isa isa, int64_t words) {
  switch (isa) {
#ifdef DCHML_X86
    case Isa::avx512:
      switch (words) {
        case 1: return distances_avx512<1>;
        case 2: return distances_avx512<2>;
        case 4: return distances_avx512<4>;
        default: return distances_avx512<0>;
      }
    case Isa::avx2:
      switch (words) {
        case 1: return distances_avx2<1>;
        case 2: return distances_avx2<2>;
        case 4: return distances_avx2<4>;
        default: return distances_avx2<0>;
      }
#endif
    default: return pick_portable(words);
  }
}

namespace {
#ifdef DCHML_X86
int64_t scan_avx2_any(const uint64_t* tile, int64_t words, int64_t T, int64_t count, const uint64_t* q,
                      uint16_t threshold, int64_t base, uint64_t* keys, uint16_t* scratch) {
  return scan_composed<0>(distances_for(Isa::avx2, words), select_avx2, tile, words, T, count, q,
                          threshold, base, keys, scratch);
}
#endif
int64_t scan_portable_any(const uint64_t* tile, int64_t words, int64_t T, int64_t count,
                          const uint64_t* q, uint16_t threshold, int64_t base, uint64_t* keys,
                          uint16_t* scratch) {
  return scan_composed<0>(distances_for(Isa::portable, words), select_portable, tile, words, T, count,
                          q, threshold, base, keys, scratch);
}
#ifdef DCHML_X86
constexpr ScanManyFn scan_many_avx2 = scan_many_each<scan_avx2_any>;
constexpr ScanManyFn scan_many_generic_avx512 = scan_many_each<scan_avx512<0>>;
#endif
constexpr ScanManyFn scan_many_portable = scan_many_each<scan_portable_any>;
}  // namespace

Kernels kernels_for(Isa isa, int64_t words) {
  switch (isa) {
#ifdef DCHML_X86
    case Isa::avx512: {
      switch (words) {
        case 1: return {distances_for(isa, words), select_avx512, scan_avx512<1>, scan_many_avx512<1>};
        case 2: return {distances_for(isa, words), select_avx512, scan_avx512<2>, scan_many_avx512<2>};
        case 4: return {distances_for(isa, words), select_avx512, scan_avx512<4>, scan_many_avx512<4>};
        default: return {distances_for(isa, words), select_avx512, scan_avx512<0>, scan_many_generic_avx512};
      }
    }
    case Isa::avx2: return {distances_for(isa, words), select_avx2, scan_avx2_any, scan_many_avx2};
#endif
    default: return {distances_for(isa, words), select_portable, scan_portable_any, scan_many_portable};
  }
}

}  // namespace detail

Isa best_isa() {
  static const Isa isa = detail::detect();
  return isa;
}

Isa active_isa() {
  const int forced = detail::g_forced.load();
  return forced < 0 ? best_isa() : (Isa)forced;
}

void force_isa(Isa isa) {
  detail::g_forced.store((int)isa <= (int)best_isa() ? (int)isa : (int)best_isa());
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "portable";
  }
}

bool parse_isa(const std::string& name, Isa* out) {
  if (name == "avx512") *out = Isa::avx512;
  else if (name == "avx2") *out = Isa::avx2;
  else if (name == "portable") *out = Isa::portable;
  else return false;
  return true;
}

}  // namespace hamming
}  // namespace dchml
