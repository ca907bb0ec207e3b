// SignPanel: see sign_panel.h. The AVX-512 loops are compiled with a `target` attribute (the
// rest of the build stays baseline x86-64) and only called after a run-time CPU check.
#include "core/sign_panel.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <type_traits>

#include "core/macros.h"

#ifdef DCHML_X86_TARGETS
#include <immintrin.h>
#endif

namespace dchml {
namespace {

std::atomic<bool> g_enabled{true};

// Tables are built in groups of 4 (nibble counts are padded to a multiple of 4 with all-zero
// tables) and looked up in chunks of up to 16 held in registers.
constexpr int64_t kChunk = 16;

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

template <typename P>
bool is_plus(P v) {
  return v > P(0);
}

#ifdef DCHML_X86_TARGETS

// sign[i] lane m = +1 if bit i of m is set, else -1
struct Signs {
  __m512 s[4];
};

DCHML_AVX512F Signs make_signs() {
  Signs out;
  for (int i = 0; i < 4; ++i) {
    alignas(64) float lanes[16];
    for (int m = 0; m < 16; ++m) lanes[m] = (m >> i) & 1 ? 1.0f : -1.0f;
    out.s[i] = _mm512_load_ps(lanes);
  }
  return out;
}

// The 16 signed sums of x[j0 .. j0 + 3] (entries at or beyond n count as 0).
DCHML_AVX512F inline __m512 nibble_table(const float* x, int64_t n, int64_t j0, const Signs& sg) {
  __m512 t = _mm512_setzero_ps();
  for (int i = 0; i < 4; ++i)
    if (j0 + i < n) t = _mm512_fmadd_ps(_mm512_set1_ps(x[j0 + i]), sg.s[i], t);
  return t;
}

// acc + sum_{p < NP} table[p][index[p]] for 16 lanes; index rows are 16 int32 apart.
// 16 lookups: table[index[l]]. (The all-lanes masked form: GCC 12's plain _mm512_permutexvar_ps
// starts from _mm512_undefined_ps and warns "may be used uninitialized".)
DCHML_AVX512F inline __m512 lookup(const int32_t* index, __m512 table) {
  return _mm512_maskz_permutexvar_ps(__mmask16(0xFFFF), _mm512_loadu_si512(index), table);
}

template <int NP>
DCHML_AVX512F inline __m512 lookup_sum(const __m512* table, const int32_t* index, __m512 acc) {
  __m512 other = _mm512_setzero_ps();  // two chains: the adds' latency stays hidden
#pragma GCC unroll 16
  for (int p = 0; p < NP; p += 2) {
    acc = _mm512_add_ps(acc, lookup(index + p * 16, table[p]));
    other = _mm512_add_ps(other, lookup(index + p * 16 + 16, table[p + 1]));
  }
  return _mm512_add_ps(acc, other);
}

// One chunk of NP tables (registers) applied to `tiles` output registers:
// out[16 u ..] (+)= sum_p table[p][index[(u * stride + p) * 16 ..]]
template <int NP>
DCHML_AVX512F void apply_chunk(const float* x, int64_t n, int64_t j0, const Signs& sg, const int32_t* index,
                               int64_t stride, int64_t tiles, int64_t valid, bool accumulate, float* out) {
  __m512 table[NP];
#pragma GCC unroll 16
  for (int p = 0; p < NP; ++p) table[p] = nibble_table(x, n, j0 + 4 * p, sg);
  for (int64_t u = 0; u < tiles; ++u) {
    const int64_t left = valid - 16 * u;
    const __mmask16 mask = left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1u);
    __m512 acc = accumulate ? _mm512_maskz_loadu_ps(mask, out + 16 * u) : _mm512_setzero_ps();
    acc = lookup_sum<NP>(table, index + u * stride * 16, acc);
    _mm512_mask_storeu_ps(out + 16 * u, mask, acc);
  }
}

// out[0, valid) (+)= sum over `nibbles` (a multiple of 4) tables built from x[0, n), looked up at
// index[(u * stride + p) * 16 + lane] for output lane 16 u + lane; `accumulate` adds to out.
DCHML_AVX512F void table_product(const float* x, int64_t n, int64_t nibbles, const int32_t* index, int64_t stride,
                                 int64_t valid, bool accumulate, float* out) {
  const Signs sg = make_signs();
  const int64_t tiles = (valid + 15) / 16;
  for (int64_t p0 = 0; p0 < nibbles; p0 += kChunk) {
    const int64_t np = std::min(kChunk, nibbles - p0);
    const int32_t* ix = index + p0 * 16;
    const bool acc = accumulate || p0 > 0;
    switch (np) {
      case 16: apply_chunk<16>(x, n, 4 * p0, sg, ix, stride, tiles, valid, acc, out); break;
      case 12: apply_chunk<12>(x, n, 4 * p0, sg, ix, stride, tiles, valid, acc, out); break;
      case 8: apply_chunk<8>(x, n, 4 * p0, sg, ix, stride, tiles, valid, acc, out); break;
      default: apply_chunk<4>(x, n, 4 * p0, sg, ix, stride, tiles, valid, acc, out); break;
    }
  }
}

bool cpu_has_avx512f() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f");
}

#else

bool cpu_has_avx512f() { return false; }

#endif

}  // namespace

bool SignPanel::supported() {
  static const bool has = cpu_has_avx512f();
  return has && g_enabled.load(std::memory_order_relaxed);
}

void SignPanel::set_enabled(bool enabled) { g_enabled.store(enabled, std::memory_order_relaxed); }

bool SignPanel::enabled() { return g_enabled.load(std::memory_order_relaxed); }

template <typename P>
int64_t SignPanel::build(const P* g, int64_t c, int64_t k) {
  const int type = static_cast<int>(sizeof(P)) * 2 + (std::is_integral_v<P> ? 1 : 0);
  const size_t bytes = static_cast<size_t>(c * k) * sizeof(P);
  if (type == source_type_ && c == c_ && k == k_ && source_.size() == bytes &&
      (bytes == 0 || std::memcmp(source_.data(), g, bytes) == 0))
    return -1;
  source_type_ = 0;  // invalid until this build succeeds
  // one branch-free pass for the ±1 check (vectorises); the offender is located on failure only
  bool bad = false;
  for (int64_t j = 0; j < c * k; ++j) bad |= (g[j] != P(1)) & (g[j] != P(-1));
  if (bad) {
    for (int64_t j = 0; j < c * k; ++j)
      if (g[j] != P(1) && g[j] != P(-1)) return j;
  }
  c_ = c;
  k_ = k;
  cp_ = round_up(c, 16);
  code_nibbles_ = round_up((k + 3) / 4, 4);
  class_nibbles_ = round_up((c + 3) / 4, 4);
  code_tiles_ = (k + 15) / 16;
  // each index entry written once: 4 sign bits gathered in registers
  score_index_.assign(static_cast<size_t>(cp_ / 16 * code_nibbles_ * 16), 0);
  for (int64_t q = 0; q < c; ++q) {
    int32_t* tile = score_index_.data() + (q / 16) * code_nibbles_ * 16 + q % 16;
    const P* row = g + q * k;
    for (int64_t p = 0; p * 4 < k; ++p) {
      int32_t v = 0;
      for (int64_t i = 0; i < 4 && 4 * p + i < k; ++i) v |= int32_t(is_plus(row[4 * p + i])) << i;
      tile[p * 16] = v;
    }
  }
  combine_index_.assign(static_cast<size_t>(code_tiles_ * class_nibbles_ * 16), 0);
  for (int64_t s = 0; s * 4 < c; ++s) {
    for (int64_t j = 0; j < k; ++j) {
      int32_t v = 0;
      for (int64_t i = 0; i < 4 && 4 * s + i < c; ++i) v |= int32_t(is_plus(g[(4 * s + i) * k + j])) << i;
      combine_index_[((j / 16) * class_nibbles_ + s) * 16 + j % 16] = v;
    }
  }
  source_.resize(bytes);
  if (bytes) std::memcpy(source_.data(), g, bytes);
  source_type_ = type;
  return -1;
}

template int64_t SignPanel::build<int8_t>(const int8_t*, int64_t, int64_t);
template int64_t SignPanel::build<float>(const float*, int64_t, int64_t);
template int64_t SignPanel::build<double>(const double*, int64_t, int64_t);

void SignPanel::scores(const float* b, float* s) const { scores_range(b, s, 0, cp_); }

void SignPanel::combine(const float* w, float* out) const { combine_range(w, out, 0, c_, false); }

void SignPanel::scores_range(const float* b, float* s, int64_t q_begin, int64_t q_end) const {
#ifdef DCHML_X86_TARGETS
  table_product(b, k_, code_nibbles_, score_index_.data() + (q_begin / 16) * code_nibbles_ * 16, code_nibbles_,
                q_end - q_begin, false, s);
#else
  (void)b, (void)s, (void)q_begin, (void)q_end;
#endif
}

void SignPanel::combine_range(const float* w, float* out, int64_t q_begin, int64_t q_end, bool accumulate) const {
#ifdef DCHML_X86_TARGETS
  // q_begin is a multiple of 16, so the range starts on a group of 4 tables; rounding its table
  // count up to 4 stays inside the padded index, and the extra tables are built from zeros
  const int64_t n = q_end - q_begin;
  const int64_t nibbles = ((n + 3) / 4 + 3) / 4 * 4;
  table_product(w, n, nibbles, combine_index_.data() + (q_begin / 4) * 16, class_nibbles_, k_, accumulate, out);
#else
  (void)w, (void)out, (void)q_begin, (void)q_end, (void)accumulate;
#endif
}

}  // namespace dchml
