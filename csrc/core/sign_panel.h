// Products of float rows with a ±1 matrix G (c x k) through 4-bit lookup tables (AVX-512).
//
// A loss row needs two products with the proxies:
//   scores   s_q = b . g_q            (q < c)   for a code row b (k,)
//   combine  o_j = sum_q w_q g_qj     (j < k)   for per-proxy weights w (c,)
// Both are sums of ±(row entries) with signs from G. Four consecutive entries x0..x3 of the
// row have only 16 signed sums ±x0 ±x1 ±x2 ±x3: one AVX-512 register holds that table, and one
// permute (vpermps) looks up 16 of them at once, indexed by 4 bits of G. A 16-proxy tile of
// scores is then k/4 permutes + adds instead of k fused multiply-adds (measured 3x faster at
// n = 128, c = 255, k = 64 on Zen 4). Only the summation order differs from a dot product.
//
// float only; available when the CPU has AVX-512F at run time (SignPanel::supported()); the
// loss kernels keep their register-tiled multiply-add path for float64 and other CPUs.
#pragma once

#include <cstdint>
#include <vector>

namespace dchml {

class SignPanel {
 public:
  // AVX-512F at run time and not switched off by set_enabled(false) (tests cover both paths).
  static bool supported();
  static void set_enabled(bool enabled);
  static bool enabled();

  // Prepares the table indices of G (c x k, row-major, ±1 as int8, float or double). Returns -1,
  // or the flat index of the first entry that is not ±1 (the panel is then unusable). A build
  // from the same contents as the last successful one is a comparison only (the proxies stay
  // fixed for many training steps; comparing bytes, not pointers, cannot go stale).
  template <typename P>
  int64_t build(const P* g, int64_t c, int64_t k);

  int64_t classes() const { return c_; }
  int64_t padded_classes() const { return cp_; }  // c rounded up to 16
  int64_t code_length() const { return k_; }

  // s[q] = b . g_q for q < c; s[c, padded_classes()) is written but unspecified. b has k entries.
  void scores(const float* b, float* s) const;
  // out[0, k) = sum_{q < c} w[q] g_q; w has c entries.
  void combine(const float* w, float* out) const;

  // The same over the proxies [q_begin, q_end) only, for class tiles (q_begin a multiple of 16):
  // s[q - q_begin] = b . g_q (exactly q_end - q_begin values written), and
  // out[0, k) (+)= sum_{q_begin <= q < q_end} w[q - q_begin] g_q, added to out when `accumulate`.
  void scores_range(const float* b, float* s, int64_t q_begin, int64_t q_end) const;
  void combine_range(const float* w, float* out, int64_t q_begin, int64_t q_end, bool accumulate) const;

 private:
  int64_t c_ = 0, k_ = 0, cp_ = 0;
  int64_t code_nibbles_ = 0;   // ceil(k / 4): tables per code row
  int64_t class_nibbles_ = 0;  // ceil(c / 4): tables per weight row
  int64_t code_tiles_ = 0;     // ceil(k / 16): output registers of combine
  // score_index_[(t * code_nibbles_ + p) * 16 + l]: bits i of entries g[16 t + l][4 p + i] > 0
  std::vector<int32_t> score_index_;
  // combine_index_[(u * class_nibbles_ + s) * 16 + l]: bits i of g[4 s + i][16 u + l] > 0
  std::vector<int32_t> combine_index_;
  // the G of the last successful build, as bytes, and its element type (sizeof, is integral)
  std::vector<unsigned char> source_;
  int source_type_ = 0;
};

}  // namespace dchml
