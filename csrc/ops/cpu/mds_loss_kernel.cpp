// CPU kernels of the loss operators (schemas in ops/mds_loss.cpp).
//
// Two paths, both fused (no (n x c) tensor) and both built on the row math of core/:
// - row blocks (c <= 512; beyond that for float on AVX-512 while c * k <= 2^23): scores of a
//   block of 4 rows (1 for wide rows), the rows' log-sum-exp, and a backward that folds every
//   proxy's coefficient into one weight so a row's gradient is one weights x proxies product. The
//   products: float on an AVX-512 CPU through the ±1 lookup tables of core/sign_panel.h (softmax
//   steps in core/masked_softmax.h); otherwise proxies unpacked once per call and 4 rows x 16
//   proxies accumulated in SIMD registers (GCC vector types, width picked at run time with
//   target_clones). Dense one-byte labels are read row by row (no CSR). Calls above ~32K
//   multiply-adds split their rows over the threads.
// - tiled (the rest): scores of a (<= 4096 rows) x (<= 2048 proxies) tile through the lookup
//   tables (float on AVX-512) or at::mm (MKL / oneDNN sgemm), then one vectorised pass per row of
//   the tile that masks the positives and merges the tile's log-sum-exp into the row's; backward
//   recomputes the tile, turns it into softmax weights in place (positives zeroed) and
//   accumulates weights @ proxies.
//   Extra memory: one tile (32 MiB in float) plus a few (n, k) row buffers.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "core/mds_loss_engine.h"
#include "core/masked_softmax.h"
#include "core/sign_panel.h"
#include "ops/mds_loss_checks.h"

namespace dchml {
namespace {

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define DCHML_SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define DCHML_SIMD_CLONES
#endif

// Calls the row-block path does not take (use_rows, below) go through tiles for the negatives,
// and the row engine finishes each row. Tile of at most 4096 x 2048 scores (32 MiB in float): large enough that the few parallel
// regions per tile (one GEMM, one row pass) cost little even on a busy machine, where each
// OpenMP fork/join can wait for a descheduled thread.
constexpr int64_t kRowBlock = 4096;
constexpr int64_t kClassTile = 2048;

// Rows per OpenMP chunk: about 64K multiply-adds, so small batches run on the calling thread.
int64_t grain_rows(int64_t c, int64_t k) {
  return std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(1, c * k));
}

template <typename T, typename P>
struct Batch {
  const T* codes;
  const T* den;
  const P* proxies;
  const int64_t* offsets;
  const int64_t* indices;
  int64_t c;
  int64_t k;
  LossRow<T, P> row(int64_t i) const {
    return {codes + i * k, den + i * k, proxies, indices + offsets[i], offsets[i + 1] - offsets[i], c, k};
  }
};

// ---- labels ----

// Labels of one byte (bool, uint8, int8): 0/1 check and counting 8 entries per 64-bit word, and
// positives located by skipping zero words (a row of the paper's data sets has 1-5 positives out
// of 21-255 classes; the plain per-entry loops cost 34 us at n = 128, c = 255, measured).
int64_t count_byte_row(const uint8_t* row, int64_t c, bool& bad) {
  constexpr uint64_t kLow = 0x0101010101010101ull;
  uint64_t high = 0;
  int64_t count = 0, q = 0;
  for (; q + 8 <= c; q += 8) {
    uint64_t w;
    std::memcpy(&w, row + q, 8);
    high |= w & ~kLow;                                         // a byte other than 0 or 1
    count += static_cast<int64_t>(((w & kLow) * kLow) >> 56);  // sum of the 8 low bits
  }
  for (; q < c; ++q) {
    high |= row[q] & 0xFEu;
    count += row[q] & 1u;
  }
  bad |= high != 0;
  return count;
}

int64_t emit_byte_row(const uint8_t* row, int64_t c, int64_t* out) {
  int64_t* const first = out;
  int64_t q = 0;
  for (; q + 8 <= c; q += 8) {
    uint64_t w;
    std::memcpy(&w, row + q, 8);
    while (w) {  // little-endian: the lowest set byte is the next column
      const int byte = __builtin_ctzll(w) / 8;
      *out++ = q + byte;
      w &= ~(0xFFull << (8 * byte));
    }
  }
  for (; q < c; ++q)
    if (row[q]) *out++ = q;
  return out - first;
}

template <typename scalar_t>
int64_t count_row(const scalar_t* row, int64_t c, bool& bad) {
  int64_t count = 0;
  bool any_bad = false;
  for (int64_t q = 0; q < c; ++q) {  // branch-free (vectorises)
    count += row[q] != scalar_t(0);
    any_bad |= (row[q] != scalar_t(0)) & (row[q] != scalar_t(1));
  }
  bad |= any_bad;
  return count;
}

template <typename scalar_t>
void emit_row(const scalar_t* row, int64_t c, int64_t* out) {
  for (int64_t q = 0; q < c; ++q)
    if (row[q] != scalar_t(0)) *out++ = q;
}

bool one_byte_labels(const at::Tensor& labels) {
  return labels.element_size() == 1 && !at::isFloatingType(labels.scalar_type());
}

// Counts each row's positives of contiguous dense labels into off[1..n] as running totals (when
// off is not null); ValueError for a value other than 0/1 and for rows without a positive.
void count_positives(const at::Tensor& labels, int64_t* off) {
  const int64_t n = labels.size(0), c = labels.size(1);
  int64_t empty_rows = 0, first_empty = -1, total = 0;
  const bool bytes = one_byte_labels(labels);
  bool bad = false;
  AT_DISPATCH_ALL_TYPES_AND3(at::kBool, at::kHalf, at::kBFloat16, labels.scalar_type(), "labels", [&] {
    const scalar_t* l = labels.const_data_ptr<scalar_t>();
    for (int64_t i = 0; i < n; ++i) {
      const int64_t count = bytes ? count_byte_row(reinterpret_cast<const uint8_t*>(l + i * c), c, bad)
                                  : count_row(l + i * c, c, bad);
      if (count == 0 && empty_rows++ == 0) first_empty = i;
      total += count;
      if (off) off[i + 1] = total;
    }
    if (bad) {  // locate the offending value (int8 -1 is rejected too: labels are 0 or 1)
      for (int64_t j = 0; j < n * c; ++j)
        TORCH_CHECK_VALUE(l[j] == scalar_t(0) || l[j] == scalar_t(1), "labels must be 0/1, got ",
                          static_cast<double>(l[j]), " at row ", j / c, ", column ", j % c);
    }
  });
  TORCH_CHECK_VALUE(empty_rows == 0, "labels: ", empty_rows, " row(s) have no positive label (first: row ",
                    first_empty, "); every sample needs at least one label (METHOD.md §3)");
}

std::tuple<at::Tensor, at::Tensor> labels_to_csr_cpu(const at::Tensor& labels_in) {
  TORCH_CHECK_VALUE(labels_in.dim() == 2, "labels must be 2-D (n, c), got ", labels_in.dim(), "-D");
  const at::Tensor labels = labels_in.contiguous();
  const int64_t n = labels.size(0), c = labels.size(1);
  at::Tensor offsets = at::empty({n + 1}, labels.options().dtype(at::kLong));
  int64_t* off = offsets.data_ptr<int64_t>();
  off[0] = 0;
  count_positives(labels, off);
  at::Tensor indices = at::empty({off[n]}, offsets.options());
  int64_t* idx = indices.data_ptr<int64_t>();
  const bool bytes = one_byte_labels(labels);
  AT_DISPATCH_ALL_TYPES_AND3(at::kBool, at::kHalf, at::kBFloat16, labels.scalar_type(), "labels_to_csr", [&] {
    const scalar_t* l = labels.const_data_ptr<scalar_t>();
    at::parallel_for(0, n, std::max<int64_t>(1, (int64_t(1) << 20) / std::max<int64_t>(1, c)), [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        if (bytes)
          emit_byte_row(reinterpret_cast<const uint8_t*>(l + i * c), c, idx + off[i]);
        else
          emit_row(l + i * c, c, idx + off[i]);
      }
    });
  });
  return {offsets, indices};
}

// Each row's positives for the small path: from the CSR, or extracted on the fly from dense
// one-byte labels into a per-thread buffer (no CSR built: at the paper's scale the separate
// conversion op cost more than the loss arithmetic, measured).
struct RowSource {
  const int64_t* offsets = nullptr;
  const int64_t* indices = nullptr;
  const uint8_t* dense = nullptr;  // (n, c) 0/1 bytes, already validated
  int64_t c = 0;
};

// The labels of one loss op call, in the form its path reads. labels: dense (n, c) 0/1, or (with
// indices) the CSR offsets. The small path reads one-byte dense labels directly; everything else
// is converted to CSR here.
struct CpuLabels {
  at::Tensor offsets, indices, dense;
  const int64_t* offsets_or_null() const { return offsets.defined() ? offsets.const_data_ptr<int64_t>() : nullptr; }
  const int64_t* indices_or_null() const { return indices.defined() ? indices.const_data_ptr<int64_t>() : nullptr; }
  RowSource source(int64_t c) const {
    RowSource r;
    r.c = c;
    if (dense.defined()) {
      r.dense = static_cast<const uint8_t*>(dense.const_data_ptr());
    } else {
      r.offsets = offsets.const_data_ptr<int64_t>();
      r.indices = indices.const_data_ptr<int64_t>();
    }
    return r;
  }
};

CpuLabels cpu_labels(const at::Tensor& labels, const std::optional<at::Tensor>& indices, bool direct_dense) {
  if (indices.has_value()) return {labels.contiguous(), indices->contiguous(), {}};
  if (direct_dense && one_byte_labels(labels)) {
    at::Tensor dense = labels.contiguous();
    count_positives(dense, nullptr);
    return {{}, {}, dense};
  }
  auto [offsets, csr] = labels_to_csr_cpu(labels);
  return {offsets, csr, {}};
}

// Flat index of the first entry that is not ±1, or -1. A branch-free scan first (vectorises: a
// call-overhead-bound step must not pay a scalar loop); the offender is located on failure only.
template <typename P>
int64_t first_non_sign(const P* g, int64_t total) {
  bool any_bad = false;
  for (int64_t j = 0; j < total; ++j) any_bad |= (g[j] != P(1)) & (g[j] != P(-1));
  for (int64_t j = 0; any_bad && j < total; ++j)
    if (g[j] != P(1) && g[j] != P(-1)) return j;
  return -1;
}

// ValueError naming the entry when bad (a flat index from first_non_sign / SignPanel::build) >= 0.
template <typename P>
void raise_if_not_sign(const P* g, int64_t bad, int64_t k) {
  TORCH_CHECK_VALUE(bad < 0, "proxies must be +1/-1, got ", bad < 0 ? 0.0 : static_cast<double>(g[bad]), " at row ",
                    bad / std::max<int64_t>(k, 1), ", column ", bad % std::max<int64_t>(k, 1));
}

template <typename P>
void check_plus_minus_one(const at::Tensor& proxies) {
  const P* g = proxies.const_data_ptr<P>();
  raise_if_not_sign(g, first_non_sign(g, proxies.numel()), proxies.size(1));
}

// ---- per-row finish of the tiled path (the negatives' log-sum-exp comes from the tiles) ----

template <typename T, typename P>
DCHML_SIMD_CLONES void mds_forward_range(const Batch<T, P>& b, T eta, T mu, const T* neg_lse, T* loss, T* lse,
                                         int64_t r0, int64_t r1) {
  std::vector<T> scratch(neg_lse ? 0 : b.c);
  for (int64_t i = r0; i < r1; ++i) {
    const MdsForward<T> f = mds_forward_row(b.row(i), eta, mu, neg_lse ? neg_lse + i : nullptr, scratch.data());
    loss[i] = f.loss;
    lse[i] = f.lse;
  }
}

template <typename T, typename P>
DCHML_SIMD_CLONES void mds_backward_range(const Batch<T, P>& b, T eta, T mu, const T* lse, const T* grad_loss,
                                          const T* neg_sum, T* grad_codes, T* grad_den, int64_t r0, int64_t r1) {
  std::vector<T> scratch(neg_sum ? 0 : b.c);
  for (int64_t i = r0; i < r1; ++i)
    mds_backward_row(b.row(i), eta, mu, lse[i], grad_loss[i], grad_codes + i * b.k,
                     grad_den ? grad_den + i * b.k : nullptr, neg_sum ? neg_sum + i * b.k : nullptr, scratch.data());
}

template <typename T, typename P>
DCHML_SIMD_CLONES void psl_forward_range(const Batch<T, P>& b, T gamma, T sigma, const T* neg_lse, T* loss,
                                         T* lse_neg, int64_t r0, int64_t r1) {
  std::vector<T> scratch(neg_lse ? 0 : b.c);
  for (int64_t i = r0; i < r1; ++i) {
    const PslForward<T> f = psl_forward_row(b.row(i), gamma, sigma, neg_lse ? neg_lse + i : nullptr, scratch.data());
    loss[i] = f.loss;
    lse_neg[i] = f.lse_neg;
  }
}

template <typename T, typename P>
DCHML_SIMD_CLONES void psl_backward_range(const Batch<T, P>& b, T gamma, T sigma, const T* lse_neg,
                                          const T* grad_loss, const T* neg_sum, T* grad_codes, int64_t r0,
                                          int64_t r1) {
  std::vector<T> scratch(neg_sum ? 0 : b.c);
  for (int64_t i = r0; i < r1; ++i)
    psl_backward_row(b.row(i), gamma, sigma, lse_neg[i], grad_loss[i], grad_codes + i * b.k,
                     neg_sum ? neg_sum + i * b.k : nullptr, scratch.data());
}

// ---- tiled path (GEMM tiles) ----

// One pass over a tile's rows (vectorised, SIMD chosen at run time): row i's negatives'
// log-sum-exp merged into out[i].
template <typename T>
DCHML_SIMD_CLONES void tile_rows_lse(T* tile, int64_t r0, int64_t b, int64_t e, int64_t cols, int64_t q0,
                                     const int64_t* offsets, const int64_t* indices, int64_t* cursor, T* out) {
  for (int64_t i = b; i < e; ++i) {
    T* row = tile + i * cols;
    int64_t& cur = cursor[i];
    while (cur < offsets[r0 + i + 1] && indices[cur] < q0 + cols) row[indices[cur++] - q0] = neg_infinity<T>();
    T m = neg_infinity<T>();
    for (int64_t q = 0; q < cols; ++q) m = row[q] > m ? row[q] : m;
    if (m == neg_infinity<T>()) continue;  // only positives in this tile
    exp_shifted_inplace(row, cols, m);  // a masked entry gives 0 (double) or 1.6e-38 (float): negligible
    T sum = T(0);
    for (int64_t q = 0; q < cols; ++q) sum += row[q];
    out[r0 + i] = log_add_exp(out[r0 + i], m + log_(sum));
  }
}

// One pass over a tile's rows: scores -> softmax weights exp(s - lse_i), positives -> 0.
template <typename T>
DCHML_SIMD_CLONES void tile_rows_weights(T* tile, int64_t r0, int64_t b, int64_t e, int64_t cols, int64_t q0,
                                         const int64_t* offsets, const int64_t* indices, int64_t* cursor,
                                         const T* lse) {
  for (int64_t i = b; i < e; ++i) {
    T* row = tile + i * cols;
    exp_shifted_inplace(row, cols, lse[r0 + i]);
    int64_t& cur = cursor[i];
    while (cur < offsets[r0 + i + 1] && indices[cur] < q0 + cols) row[indices[cur++] - q0] = T(0);
  }
}

struct Tiling {
  int64_t n, c;
  int64_t row_block() const { return std::min(n, kRowBlock); }
  int64_t class_tile() const { return std::min(c, kClassTile); }
};

int64_t tile_grain(int64_t cols) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, cols)); }

// A tile's scores, rows [b, e) of the block: through the lookup tables when `sign` is given
// (float on AVX-512; the tile's two index slices, 2 x 256 KiB at k = 128, stay in the core's
// cache across its rows), else for the whole tile through one at::mm (MKL / oneDNN sgemm).
template <typename T>
void tile_scores_rows(const SignPanel* sign, const T* block, int64_t k, int64_t q0, int64_t cols, T* tile,
                      int64_t b, int64_t e) {
  if constexpr (std::is_same_v<T, float>) {
    for (int64_t i = b; i < e; ++i) sign->scores_range(block + i * k, tile + i * cols, q0, q0 + cols);
  }
}

// logsumexp over each row's negatives of (den_scaled . g_q): den_scaled already holds eta * den.
template <typename T>
at::Tensor tiled_negatives_lse(const at::Tensor& den_scaled, const at::Tensor& proxies, const SignPanel* sign,
                               const int64_t* offsets, const int64_t* indices) {
  const Tiling t{den_scaled.size(0), proxies.size(0)};
  const int64_t k = den_scaled.size(1);
  at::Tensor lse = at::full({t.n}, -std::numeric_limits<T>::infinity(), den_scaled.options());
  at::Tensor buffer = at::empty({t.row_block() * t.class_tile()}, den_scaled.options());
  T* out = lse.data_ptr<T>();
  std::vector<int64_t> cursor(t.row_block());
  for (int64_t r0 = 0; r0 < t.n; r0 += kRowBlock) {
    const int64_t rows = std::min(kRowBlock, t.n - r0);
    for (int64_t i = 0; i < rows; ++i) cursor[i] = offsets[r0 + i];
    const at::Tensor block = den_scaled.narrow(0, r0, rows);
    for (int64_t q0 = 0; q0 < t.c; q0 += kClassTile) {
      const int64_t cols = std::min(kClassTile, t.c - q0);
      at::Tensor tile = buffer.narrow(0, 0, rows * cols).view({rows, cols});
      if (!sign) at::mm_out(tile, block, proxies.narrow(0, q0, cols).t());
      T* tp = tile.data_ptr<T>();
      at::parallel_for(0, rows, tile_grain(cols), [&](int64_t b, int64_t e) {
        if (sign) tile_scores_rows<T>(sign, block.const_data_ptr<T>(), k, q0, cols, tp, b, e);
        tile_rows_lse<T>(tp, r0, b, e, cols, q0, offsets, indices, cursor.data(), out);
      });
    }
  }
  return lse;
}

// sum over each row's negatives of exp(den_scaled . g_q - lse) g_q, as an (n, k) tensor.
template <typename T>
at::Tensor tiled_negatives_softmax_sum(const at::Tensor& den_scaled, const at::Tensor& proxies,
                                       const SignPanel* sign, const int64_t* offsets, const int64_t* indices,
                                       const at::Tensor& lse_in) {
  const Tiling t{den_scaled.size(0), proxies.size(0)};
  const int64_t k = den_scaled.size(1);
  const at::Tensor lse = lse_in.contiguous();
  at::Tensor sum = at::zeros_like(den_scaled);
  at::Tensor buffer = at::empty({t.row_block() * t.class_tile()}, den_scaled.options());
  std::vector<int64_t> cursor(t.row_block());
  for (int64_t r0 = 0; r0 < t.n; r0 += kRowBlock) {
    const int64_t rows = std::min(kRowBlock, t.n - r0);
    for (int64_t i = 0; i < rows; ++i) cursor[i] = offsets[r0 + i];
    const at::Tensor block = den_scaled.narrow(0, r0, rows);
    at::Tensor block_sum = sum.narrow(0, r0, rows);
    for (int64_t q0 = 0; q0 < t.c; q0 += kClassTile) {
      const int64_t cols = std::min(kClassTile, t.c - q0);
      at::Tensor tile = buffer.narrow(0, 0, rows * cols).view({rows, cols});
      if (!sign) at::mm_out(tile, block, proxies.narrow(0, q0, cols).t());
      T* tp = tile.data_ptr<T>();
      at::parallel_for(0, rows, tile_grain(cols), [&](int64_t b, int64_t e) {
        if (sign) tile_scores_rows<T>(sign, block.const_data_ptr<T>(), k, q0, cols, tp, b, e);
        tile_rows_weights<T>(tp, r0, b, e, cols, q0, offsets, indices, cursor.data(), lse.const_data_ptr<T>());
        if constexpr (std::is_same_v<T, float>) {
          if (sign)
            for (int64_t i = b; i < e; ++i)
              sign->combine_range(tp + i * cols, block_sum.data_ptr<T>() + i * k, q0, q0 + cols, true);
        }
      });
      if (!sign) block_sum.addmm_(tile, proxies.narrow(0, q0, cols));
    }
  }
  return sum;
}

// The lookup tables of the calling thread, shared by both paths: rebuilt only when a call brings
// other proxies (SignPanel::build compares bytes), so a training step allocates nothing for them.
SignPanel& calling_thread_panel() {
  static thread_local SignPanel panel;
  return panel;
}

template <typename P>
const SignPanel& built_panel(const at::Tensor& proxies) {
  SignPanel& panel = calling_thread_panel();
  const P* g = proxies.const_data_ptr<P>();
  raise_if_not_sign(g, panel.build(g, proxies.size(0), proxies.size(1)), proxies.size(1));
  return panel;
}

// The tiled path's products: the lookup tables (float on AVX-512), or at::mm on the proxies
// converted once per call to the codes' dtype.
struct TileProducts {
  at::Tensor proxies;  // as given (tables) or converted (GEMM)
  const SignPanel* sign = nullptr;
};

template <typename T, typename P>
TileProducts tile_products(const at::Tensor& proxies, const at::Tensor& codes) {
  if constexpr (std::is_same_v<T, float>) {
    if (SignPanel::supported()) return {proxies, &built_panel<P>(proxies)};
  }
  return {proxies.to(codes.scalar_type()).contiguous(), nullptr};
}

// ---- row-block path (c <= kSmallMaxClasses, or the lookup tables; see use_rows) ----
// float on an AVX-512 CPU: both products through the SignPanel (see core/sign_panel.h). Otherwise:
// the paper's scale (n = 128, c <= 255, k = 64) is a few million multiply-adds: the row-by-row
// dot products of the direct engine spent their time in horizontal sums. Here the proxies are
// unpacked once per call into the codes' dtype, twice: transposed (k x cp, cp = c rounded up to
// a 16-proxy tile, zero padded) for the scores, and row-major (c x k) for the gradient. Scores of
// 4 rows x 16 proxies accumulate in registers (one broadcast-FMA per code entry, no horizontal
// sum); the backward folds every proxy's coefficient (softmax weight on a negative, gbar share on
// a positive) into one weight per proxy, so a row's gradient is ONE weights x proxies product,
// again accumulated in registers. Per-thread scratch: 4 rows of scores plus one row (c values).
constexpr int64_t kSmallMaxClasses = 512;
constexpr int kTile = 16;  // proxies per score tile / code entries per gradient tile
constexpr int kBlockRows = 4;
static_assert(kBlockRows <= kMaskedLseMaxRows, "a block's rows share one masked_lse_rows call");

template <typename T>
struct Panel {
  std::vector<T> g;   // (c, k) row-major: the gradient tiles, and `other`'s numerator dots
  std::vector<T> gt;  // (k, cp) zero padded: the score tiles (register-tiled path only)
  int64_t c, k, cp;
  const SignPanel* sign = nullptr;  // float on AVX-512: table lookups replace both tile loops
};

// Proxies of one call in the form the small path reads; raises ValueError for a non-±1 entry.
// float on an AVX-512 CPU: a SignPanel (reused per thread, so a step allocates nothing), plus the
// row-major copy only when `other` needs it (need_rows).
template <typename T, typename P>
Panel<T> make_panel(const at::Tensor& proxies_tensor, bool need_rows) {
  const P* proxies = proxies_tensor.const_data_ptr<P>();
  const int64_t c = proxies_tensor.size(0), k = proxies_tensor.size(1);
  Panel<T> p{{}, {}, c, k, (c + kTile - 1) / kTile * kTile};
  bool use_sign = false;
  if constexpr (std::is_same_v<T, float>) use_sign = SignPanel::supported();
  if (use_sign)
    p.sign = &built_panel<P>(proxies_tensor);
  else
    check_plus_minus_one<P>(proxies_tensor);
  if (!use_sign || need_rows) {
    p.g.resize(c * k);
    for (int64_t j = 0; j < c * k; ++j) p.g[j] = static_cast<T>(proxies[j]);
  }
  if (!use_sign) {
    p.gt.assign(k * p.cp, T(0));
    for (int64_t j = 0; j < k; ++j)  // write the transpose sequentially (reads hit L1/L2)
      for (int64_t q = 0; q < c; ++q) p.gt[j * p.cp + q] = p.g[q * k + j];
  }
  return p;
}

// One tile of 16 values as a GCC vector (unaligned loads allowed): each SIMD clone lowers it to
// its own registers (1 zmm for float on AVX-512, 2 ymm on AVX2, ...). Written explicitly because
// the plain-array form of these loops was not kept in registers by GCC (measured 10x slower).
template <typename T>
struct TileVec;
template <>
struct TileVec<float> {
  typedef float type __attribute__((vector_size(kTile * sizeof(float)), aligned(alignof(float))));
};
template <>
struct TileVec<double> {
  typedef double type __attribute__((vector_size(kTile * sizeof(double)), aligned(alignof(double))));
};

// s[r * cp + q] = rows[r] . g_q for r < NR, q < cp (padding proxies give 0).
template <int NR, typename T>
DCHML_ROW_INLINE void block_scores_n(const T* rows, const Panel<T>& p, T* s) {
  using V = typename TileVec<T>::type;
  const int64_t k = p.k, cp = p.cp;
  const T* gt = p.gt.data();
  for (int64_t q0 = 0; q0 < cp; q0 += kTile) {
    V acc[NR] = {};
    for (int64_t j = 0; j < k; ++j) {
      const V col = *reinterpret_cast<const V*>(gt + j * cp + q0);
      for (int r = 0; r < NR; ++r) acc[r] += rows[r * k + j] * col;
    }
    for (int r = 0; r < NR; ++r) *reinterpret_cast<V*>(s + r * cp + q0) = acc[r];
  }
}

// out[r * k + j] = sum_{q < c} w[r * cp + q] g_q[j] for r < NR (written, not added).
template <int NR, typename T>
DCHML_ROW_INLINE void block_combine_n(const T* w, const Panel<T>& p, T* out) {
  using V = typename TileVec<T>::type;
  const int64_t k = p.k, c = p.c, cp = p.cp;
  const T* g = p.g.data();
  int64_t j0 = 0;
  for (; j0 + kTile <= k; j0 += kTile) {
    V acc[NR] = {};
    for (int64_t q = 0; q < c; ++q) {
      const V gq = *reinterpret_cast<const V*>(g + q * k + j0);
      for (int r = 0; r < NR; ++r) acc[r] += w[r * cp + q] * gq;
    }
    for (int r = 0; r < NR; ++r) *reinterpret_cast<V*>(out + r * k + j0) = acc[r];
  }
  if (j0 < k) {
    const int width = static_cast<int>(k - j0);
    T acc[NR][kTile] = {};
    for (int64_t q = 0; q < c; ++q) {
      const T* gq = g + q * k + j0;
      for (int r = 0; r < NR; ++r) {
        const T wq = w[r * cp + q];
        for (int l = 0; l < width; ++l) acc[r][l] += wq * gq[l];
      }
    }
    for (int r = 0; r < NR; ++r)
      for (int l = 0; l < width; ++l) out[r * k + j0 + l] = acc[r][l];
  }
}

template <typename T>
DCHML_ROW_INLINE void block_scores(const T* rows, int nr, const Panel<T>& p, T* s) {
  if constexpr (std::is_same_v<T, float>) {
    if (p.sign) {
      for (int r = 0; r < nr; ++r) p.sign->scores(rows + r * p.k, s + r * p.cp);
      return;
    }
  }
  switch (nr) {
    case 4: block_scores_n<4>(rows, p, s); break;
    case 3: block_scores_n<3>(rows, p, s); break;
    case 2: block_scores_n<2>(rows, p, s); break;
    default: block_scores_n<1>(rows, p, s); break;
  }
}

template <typename T>
DCHML_ROW_INLINE void block_combine(const T* w, int nr, const Panel<T>& p, T* out) {
  if constexpr (std::is_same_v<T, float>) {
    if (p.sign) {
      for (int r = 0; r < nr; ++r) p.sign->combine(w + r * p.cp, out + r * p.k);
      return;
    }
  }
  switch (nr) {
    case 4: block_combine_n<4>(w, p, out); break;
    case 3: block_combine_n<3>(w, p, out); break;
    case 2: block_combine_n<2>(w, p, out); break;
    default: block_combine_n<1>(w, p, out); break;
  }
}

struct RowLabels {
  const int64_t* pos;
  int64_t npos;
};

inline RowLabels row_labels(const RowSource& src, int64_t i, int64_t* buffer) {
  if (src.dense) return {buffer, emit_byte_row(src.dense + i * src.c, src.c, buffer)};
  return {src.indices + src.offsets[i], src.offsets[i + 1] - src.offsets[i]};
}

template <typename T>
DCHML_ROW_INLINE T mean_at(const T* s, RowLabels l) {
  T acc = T(0);
  for (int64_t e = 0; e < l.npos; ++e) acc += s[l.pos[e]];
  return acc / T(l.npos);
}

// mean over positives of b . g_e, from the row-major panel
template <typename T>
DCHML_ROW_INLINE T mean_positive_dot_panel(const T* b, const Panel<T>& p, RowLabels l) {
  T acc = T(0);
  for (int64_t e = 0; e < l.npos; ++e) {
    const T* g = p.g.data() + l.pos[e] * p.k;
    T d = T(0);
    for (int64_t j = 0; j < p.k; ++j) d += b[j] * g[j];
    acc += d;
  }
  return acc / T(l.npos);
}

// max and sum of x[0, cp) with 16 independent lanes (vectorised without reassociation flags);
// x[c, cp) must hold the neutral element.
template <typename T>
DCHML_ROW_INLINE T tile_max(const T* x, int64_t cp) {
  using V = typename TileVec<T>::type;
  V m = *reinterpret_cast<const V*>(x);
  for (int64_t q0 = kTile; q0 < cp; q0 += kTile) {
    const V v = *reinterpret_cast<const V*>(x + q0);
    m = v > m ? v : m;
  }
  T r = m[0];
  for (int l = 1; l < kTile; ++l) r = m[l] > r ? m[l] : r;
  return r;
}

template <typename T>
DCHML_ROW_INLINE T tile_sum(const T* x, int64_t cp) {
  using V = typename TileVec<T>::type;
  V a = *reinterpret_cast<const V*>(x);
  for (int64_t q0 = kTile; q0 < cp; q0 += kTile) a += *reinterpret_cast<const V*>(x + q0);
  T r = T(0);
  for (int l = 0; l < kTile; ++l) r += a[l];
  return r;
}

// logsumexp of {extra} U {scale * s[q] : q negative}; tmp holds cp values (overwritten).
template <typename T>
DCHML_ROW_INLINE T negatives_lse(const T* s, int64_t c, int64_t cp, RowLabels l, T scale, T extra, T* tmp) {
  for (int64_t q = 0; q < c; ++q) tmp[q] = scale * s[q];
  for (int64_t q = c; q < cp; ++q) tmp[q] = neg_infinity<T>();
  for (int64_t e = 0; e < l.npos; ++e) tmp[l.pos[e]] = neg_infinity<T>();
  T m = tile_max(tmp, cp);
  m = extra > m ? extra : m;
  if (m == neg_infinity<T>()) return m;
  exp_shifted_inplace(tmp, cp, m);
  for (int64_t e = 0; e < l.npos; ++e) tmp[l.pos[e]] = T(0);  // float exp clamps exp(-inf) to 1.6e-38
  for (int64_t q = c; q < cp; ++q) tmp[q] = T(0);
  T sum = extra == neg_infinity<T>() ? T(0) : exp_(extra - m);
  return m + log_(sum + tile_sum(tmp, cp));
}

// The two softmax steps on the small path: the masked AVX-512 routines alongside a SignPanel
// (float), the generic loops above otherwise.
// out[r] = logsumexp({extra[r]} U {scale * s_r[q] : q negative}) for the nr rows of a block.
template <typename T>
DCHML_ROW_INLINE void block_negatives_lse(const Panel<T>& p, const T* s, int nr, const RowLabels* ls, T scale,
                                          const T* extra, T* out, T* tmp) {
  if constexpr (std::is_same_v<T, float>) {
    if (p.sign) {
      const int64_t* pos[kBlockRows];
      int64_t npos[kBlockRows];
      for (int r = 0; r < nr; ++r) {
        pos[r] = ls[r].pos;
        npos[r] = ls[r].npos;
      }
      masked_lse_rows(s, p.cp, nr, p.c, pos, npos, scale, extra, out);
      return;
    }
  }
  for (int r = 0; r < nr; ++r) out[r] = negatives_lse(s + r * p.cp, p.c, p.cp, ls[r], scale, extra[r], tmp);
}

// w[q] = coef * exp(scale * w[q] - lse) over the negatives; the positives' entries are left for
// the caller to overwrite.
template <typename T>
DCHML_ROW_INLINE void row_negative_weights(const Panel<T>& p, T* w, RowLabels l, T scale, T lse, T coef) {
  if constexpr (std::is_same_v<T, float>) {
    if (p.sign) {
      masked_softmax(w, p.c, l.pos, l.npos, scale, lse, coef);
      return;
    }
  }
  for (int64_t q = 0; q < p.c; ++q) w[q] *= scale;
  exp_shifted_inplace(w, p.c, lse);
  for (int64_t q = 0; q < p.c; ++q) w[q] *= coef;
}

// Rows per block: 4 (their log-sum-exp chains interleave), but 1 for wide rows, so that a
// block's scores stay in the core's cache (4 x 100,000 floats would not).
template <typename T>
int block_rows(const Panel<T>& p) {
  return p.cp > 4096 ? 1 : kBlockRows;
}

template <typename T>
struct SmallScratch {
  std::vector<T> s, tmp;
  std::vector<int64_t> pos;  // a block's positives (cp per row), when read from dense labels
  SmallScratch(int64_t cp, int block) : s(block * cp), tmp(cp), pos(block * cp) {}
};

template <typename T>
DCHML_SIMD_CLONES void small_mds_forward(const T* codes, const T* den, const Panel<T>& p, const RowSource& rows,
                                         T eta, T mu, T* loss, T* lse, int64_t r0,
                                         int64_t r1) {
  const int block = block_rows(p);
  SmallScratch<T> sc(p.cp, block);
  for (int64_t i0 = r0; i0 < r1; i0 += block) {
    const int nr = static_cast<int>(std::min<int64_t>(block, r1 - i0));
    block_scores(den + i0 * p.k, nr, p, sc.s.data());
    RowLabels ls[kBlockRows];
    T extra[kBlockRows], u_num[kBlockRows];
    for (int r = 0; r < nr; ++r) {
      const int64_t i = i0 + r;
      const T* s = sc.s.data() + r * p.cp;
      ls[r] = row_labels(rows, i, sc.pos.data() + r * p.cp);
      const T u_den = surrogate_score(mean_at(s, ls[r]), mu, p.k);
      extra[r] = eta * u_den;
      u_num[r] = den == codes ? u_den : surrogate_score(mean_positive_dot_panel(codes + i * p.k, p, ls[r]), mu, p.k);
    }
    block_negatives_lse(p, sc.s.data(), nr, ls, eta, extra, lse + i0, sc.tmp.data());
    for (int r = 0; r < nr; ++r) loss[i0 + r] = mds_row_loss(eta, u_num[r], lse[i0 + r]);
  }
}

template <typename T>
DCHML_SIMD_CLONES void small_mds_backward(const T* codes, const T* den, const Panel<T>& p, const RowSource& rows,
                                          T eta, T mu, const T* lse, const T* grad_loss,
                                          T* grad_codes, T* grad_den, int64_t r0, int64_t r1) {
  const int block = block_rows(p);
  SmallScratch<T> sc(p.cp, block);
  const bool separate = den != codes;
  for (int64_t i0 = r0; i0 < r1; i0 += block) {
    const int nr = static_cast<int>(std::min<int64_t>(block, r1 - i0));
    block_scores(den + i0 * p.k, nr, p, sc.s.data());
    for (int r = 0; r < nr; ++r) {
      const int64_t i = i0 + r;
      T* w = sc.s.data() + r * p.cp;
      const RowLabels l = row_labels(rows, i, sc.pos.data());
      const T u_den = surrogate_score(mean_at(w, l), mu, p.k);
      const MdsGradCoefficients<T> co =
          mds_grad_coefficients(eta, grad_loss[i], softmax_weight(eta * u_den, lse[i]));
      // negatives: denominator_scale * exp(eta s_q - lse); positives: their gbar share
      row_negative_weights(p, w, l, eta, lse[i], co.denominator_scale);
      const T positive = (co.denominator_gbar + (separate ? T(0) : co.numerator_gbar)) / T(l.npos);
      for (int64_t e = 0; e < l.npos; ++e) w[l.pos[e]] = positive;
      if (separate) {  // numerator part on codes: numerator_gbar * gbar
        T* out = grad_codes + i * p.k;
        for (int64_t j = 0; j < p.k; ++j) out[j] = T(0);
        const T a = co.numerator_gbar / T(l.npos);
        for (int64_t e = 0; e < l.npos; ++e) {
          const T* g = p.g.data() + l.pos[e] * p.k;
          for (int64_t j = 0; j < p.k; ++j) out[j] += a * g[j];
        }
      }
    }
    block_combine(sc.s.data(), nr, p, (separate ? grad_den : grad_codes) + i0 * p.k);
  }
}

template <typename T>
DCHML_SIMD_CLONES void small_psl_forward(const T* codes, const Panel<T>& p, const RowSource& rows,
                                         T gamma, T sigma, T* loss, T* lse_neg, int64_t r0,
                                         int64_t r1) {
  const int block = block_rows(p);
  SmallScratch<T> sc(p.cp, block);
  for (int64_t i0 = r0; i0 < r1; i0 += block) {
    const int nr = static_cast<int>(std::min<int64_t>(block, r1 - i0));
    block_scores(codes + i0 * p.k, nr, p, sc.s.data());
    RowLabels ls[kBlockRows];
    T none[kBlockRows];
    for (int r = 0; r < nr; ++r) {
      ls[r] = row_labels(rows, i0 + r, sc.pos.data() + r * p.cp);
      none[r] = neg_infinity<T>();
    }
    block_negatives_lse(p, sc.s.data(), nr, ls, gamma, none, lse_neg + i0, sc.tmp.data());
    for (int r = 0; r < nr; ++r) {
      const T* s = sc.s.data() + r * p.cp;
      const T ln = lse_neg[i0 + r];
      T acc = T(0);
      for (int64_t e = 0; e < ls[r].npos; ++e)
        acc += psl_positive_term(psl_positive_logit(gamma, sigma, s[ls[r].pos[e]], p.k), ln);
      loss[i0 + r] = acc / T(ls[r].npos);
    }
  }
}

template <typename T>
DCHML_SIMD_CLONES void small_psl_backward(const T* codes, const Panel<T>& p, const RowSource& rows,
                                          T gamma, T sigma, const T* lse_neg,
                                          const T* grad_loss, T* grad_codes, int64_t r0, int64_t r1) {
  const int block = block_rows(p);
  SmallScratch<T> sc(p.cp, block);
  for (int64_t i0 = r0; i0 < r1; i0 += block) {
    const int nr = static_cast<int>(std::min<int64_t>(block, r1 - i0));
    block_scores(codes + i0 * p.k, nr, p, sc.s.data());
    for (int r = 0; r < nr; ++r) {
      const int64_t i = i0 + r;
      T* w = sc.s.data() + r * p.cp;
      const RowLabels l = row_labels(rows, i, sc.pos.data());
      const T ln = lse_neg[i];
      const T scale = gamma * grad_loss[i] / T(l.npos);
      T negative_mass = T(0);  // sum_p (1 - sigma_p)
      for (int64_t e = 0; e < l.npos; ++e) {
        const T sig = psl_positive_weight(psl_positive_logit(gamma, sigma, w[l.pos[e]], p.k), ln);
        sc.tmp[e] = scale * (sig - T(1));
        negative_mass += T(1) - sig;
      }
      if (ln == neg_infinity<T>()) {  // no negatives
        for (int64_t q = 0; q < p.c; ++q) w[q] = T(0);
      } else {
        row_negative_weights(p, w, l, gamma, ln, scale * negative_mass);
      }
      for (int64_t e = 0; e < l.npos; ++e) w[l.pos[e]] = sc.tmp[e];
    }
    block_combine(sc.s.data(), nr, p, grad_codes + i0 * p.k);
  }
}

// The row-block path: always up to 512 proxies; beyond that with the lookup tables (float on an
// AVX-512 CPU) while their two index arrays (c * k bytes each) stay cache-resident: every row
// streams them once per product. Measured here (n = 1024-4096, k = 128, forward + backward):
// tables 2.7x faster than the GEMM tiles at c = 1000, 1.6x at c = 65,536 (c * k = 2^23), 0.93x
// at c = 100,000, where the tiles take over.
constexpr int64_t kTableRowsMaxEntries = int64_t(1) << 23;

bool use_rows(int64_t c, const at::Tensor& codes) {
  return c <= kSmallMaxClasses || (codes.scalar_type() == at::kFloat && SignPanel::supported() &&
                                   c * codes.size(1) <= kTableRowsMaxEntries);
}

// Rows per OpenMP chunk on the small path: above ~32K multiply-adds a call splits its rows evenly
// over the threads (at n = 128, c = 21, k = 64 on 2 cores that took a step from 67 to 61 us, once
// the per-call overheads were gone; measured, benchmarks/results/loss.md). Smaller calls stay on
// the calling thread.
int64_t small_grain_rows(int64_t n, int64_t c, int64_t k) {
  constexpr int64_t kSerialWork = int64_t(1) << 15;
  if (n * c * k <= kSerialWork) return n;
  return kBlockRows;  // at::parallel_for hands each thread an equal share
}

// ---- operators ----

std::tuple<at::Tensor, at::Tensor> mds_loss_cpu(const at::Tensor& codes_in, const std::optional<at::Tensor>& other_in,
                                                const at::Tensor& proxies_in, const at::Tensor& labels_in,
                                                const std::optional<at::Tensor>& indices_in, double eta, double mu) {
  check_loss_inputs(codes_in, other_in, proxies_in, labels_in, indices_in);
  const at::Tensor codes = codes_in.contiguous(), proxies = proxies_in.contiguous();
  const at::Tensor den = other_in.has_value() ? other_in->contiguous() : codes;
  const int64_t n = codes.size(0), c = proxies.size(0), k = codes.size(1);
  const bool rows_path = use_rows(c, codes);
  const CpuLabels labels = cpu_labels(labels_in, indices_in, rows_path);
  at::Tensor loss = at::empty({n}, codes.options()), lse = at::empty({n}, codes.options());
  if (n == 0) return {loss, lse};
  dispatch_proxies(codes, proxies, [&](auto t_tag, auto p_tag) {
    using T = decltype(t_tag);
    using P = decltype(p_tag);
    const Batch<T, P> b{codes.const_data_ptr<T>(), den.const_data_ptr<T>(), proxies.const_data_ptr<P>(),
                        labels.offsets_or_null(), labels.indices_or_null(), c, k};
    if (rows_path) {
      const Panel<T> panel = make_panel<T, P>(proxies, other_in.has_value());
      T* lo = loss.data_ptr<T>();
      T* ls = lse.data_ptr<T>();
      at::parallel_for(0, n, small_grain_rows(n, c, k), [&](int64_t r0, int64_t r1) {
        small_mds_forward<T>(b.codes, b.den, panel, labels.source(c), T(eta), T(mu), lo, ls, r0, r1);
      });
      return;
    }
    const TileProducts tp = tile_products<T, P>(proxies, codes);
    if (!tp.sign) check_plus_minus_one<P>(proxies);  // (the tables check while they build)
    const at::Tensor neg_lse = tiled_negatives_lse<T>(den * eta, tp.proxies, tp.sign, b.offsets, b.indices);
    const T* nl = neg_lse.const_data_ptr<T>();
    T* lo = loss.data_ptr<T>();
    T* ls = lse.data_ptr<T>();
    at::parallel_for(0, n, grain_rows(1, k), [&](int64_t r0, int64_t r1) {
      mds_forward_range<T, P>(b, T(eta), T(mu), nl, lo, ls, r0, r1);
    });
  });
  return {loss, lse};
}

std::tuple<at::Tensor, at::Tensor> mds_loss_backward_cpu(const at::Tensor& grad_loss_in, const at::Tensor& codes_in,
                                                         const std::optional<at::Tensor>& other_in,
                                                         const at::Tensor& proxies_in, const at::Tensor& labels_in,
                                                         const std::optional<at::Tensor>& indices_in, const at::Tensor& lse_in,
                                                         double eta, double mu) {
  check_loss_inputs(codes_in, other_in, proxies_in, labels_in, indices_in);
  check_row_vector("grad_loss", grad_loss_in, codes_in);
  check_row_vector("lse", lse_in, codes_in);
  const at::Tensor codes = codes_in.contiguous(), proxies = proxies_in.contiguous();
  const at::Tensor grad_loss = grad_loss_in.contiguous(), lse = lse_in.contiguous();
  const bool separate = other_in.has_value();
  const at::Tensor den = separate ? other_in->contiguous() : codes;
  const int64_t n = codes.size(0), c = proxies.size(0), k = codes.size(1);
  const bool rows_path = use_rows(c, codes);
  const CpuLabels labels = cpu_labels(labels_in, indices_in, rows_path);
  at::Tensor grad_codes = at::empty({n, k}, codes.options());
  at::Tensor grad_other = at::empty({separate ? n : 0, k}, codes.options());
  if (n == 0) return {grad_codes, grad_other};
  dispatch_proxies(codes, proxies, [&](auto t_tag, auto p_tag) {
    using T = decltype(t_tag);
    using P = decltype(p_tag);
    const Batch<T, P> b{codes.const_data_ptr<T>(), den.const_data_ptr<T>(), proxies.const_data_ptr<P>(),
                        labels.offsets_or_null(), labels.indices_or_null(), c, k};
    if (rows_path) {
      const Panel<T> panel = make_panel<T, P>(proxies, separate);
      T* gc = grad_codes.data_ptr<T>();
      T* go = separate ? grad_other.data_ptr<T>() : nullptr;
      at::parallel_for(0, n, small_grain_rows(n, c, k), [&](int64_t r0, int64_t r1) {
        small_mds_backward<T>(b.codes, b.den, panel, labels.source(c), T(eta), T(mu), lse.const_data_ptr<T>(),
                              grad_loss.const_data_ptr<T>(), gc, go, r0, r1);
      });
      return;
    }
    const TileProducts tp = tile_products<T, P>(proxies, codes);
    const at::Tensor neg_sum = tiled_negatives_softmax_sum<T>(den * eta, tp.proxies, tp.sign, b.offsets, b.indices, lse);
    const T* ns = neg_sum.const_data_ptr<T>();
    T* gc = grad_codes.data_ptr<T>();
    T* go = separate ? grad_other.data_ptr<T>() : nullptr;
    at::parallel_for(0, n, grain_rows(1, k), [&](int64_t r0, int64_t r1) {
      mds_backward_range<T, P>(b, T(eta), T(mu), lse.const_data_ptr<T>(), grad_loss.const_data_ptr<T>(), ns, gc, go,
                               r0, r1);
    });
  });
  return {grad_codes, grad_other};
}

std::tuple<at::Tensor, at::Tensor> partial_softmax_loss_cpu(const at::Tensor& codes_in, const at::Tensor& proxies_in,
                                                            const at::Tensor& labels_in, const std::optional<at::Tensor>& indices_in,
                                                            double gamma, double sigma) {
  check_loss_inputs(codes_in, std::nullopt, proxies_in, labels_in, indices_in);
  const at::Tensor codes = codes_in.contiguous(), proxies = proxies_in.contiguous();
  const int64_t n = codes.size(0), c = proxies.size(0), k = codes.size(1);
  const bool rows_path = use_rows(c, codes);
  const CpuLabels labels = cpu_labels(labels_in, indices_in, rows_path);
  at::Tensor loss = at::empty({n}, codes.options()), lse_neg = at::empty({n}, codes.options());
  if (n == 0) return {loss, lse_neg};
  dispatch_proxies(codes, proxies, [&](auto t_tag, auto p_tag) {
    using T = decltype(t_tag);
    using P = decltype(p_tag);
    const Batch<T, P> b{codes.const_data_ptr<T>(), codes.const_data_ptr<T>(), proxies.const_data_ptr<P>(),
                        labels.offsets_or_null(), labels.indices_or_null(), c, k};
    if (rows_path) {
      const Panel<T> panel = make_panel<T, P>(proxies, false);
      T* lo = loss.data_ptr<T>();
      T* ln = lse_neg.data_ptr<T>();
      at::parallel_for(0, n, small_grain_rows(n, c, k), [&](int64_t r0, int64_t r1) {
        small_psl_forward<T>(b.codes, panel, labels.source(c), T(gamma), T(sigma), lo, ln, r0, r1);
      });
      return;
    }
    const TileProducts tp = tile_products<T, P>(proxies, codes);
    if (!tp.sign) check_plus_minus_one<P>(proxies);  // (the tables check while they build)
    const at::Tensor neg_lse = tiled_negatives_lse<T>(codes * gamma, tp.proxies, tp.sign, b.offsets, b.indices);
    const T* nl = neg_lse.const_data_ptr<T>();
    T* lo = loss.data_ptr<T>();
    T* ln = lse_neg.data_ptr<T>();
    at::parallel_for(0, n, grain_rows(1, k), [&](int64_t r0, int64_t r1) {
      psl_forward_range<T, P>(b, T(gamma), T(sigma), nl, lo, ln, r0, r1);
    });
  });
  return {loss, lse_neg};
}

at::Tensor partial_softmax_loss_backward_cpu(const at::Tensor& grad_loss_in, const at::Tensor& codes_in,
                                             const at::Tensor& proxies_in, const at::Tensor& labels_in,
                                             const std::optional<at::Tensor>& indices_in, const at::Tensor& lse_neg_in, double gamma,
                                             double sigma) {
  check_loss_inputs(codes_in, std::nullopt, proxies_in, labels_in, indices_in);
  check_row_vector("grad_loss", grad_loss_in, codes_in);
  check_row_vector("lse_neg", lse_neg_in, codes_in);
  const at::Tensor codes = codes_in.contiguous(), proxies = proxies_in.contiguous();
  const at::Tensor grad_loss = grad_loss_in.contiguous(), lse_neg = lse_neg_in.contiguous();
  const int64_t n = codes.size(0), c = proxies.size(0), k = codes.size(1);
  const bool rows_path = use_rows(c, codes);
  const CpuLabels labels = cpu_labels(labels_in, indices_in, rows_path);
  at::Tensor grad_codes = at::empty({n, k}, codes.options());
  if (n == 0) return grad_codes;
  dispatch_proxies(codes, proxies, [&](auto t_tag, auto p_tag) {
    using T = decltype(t_tag);
    using P = decltype(p_tag);
    const Batch<T, P> b{codes.const_data_ptr<T>(), codes.const_data_ptr<T>(), proxies.const_data_ptr<P>(),
                        labels.offsets_or_null(), labels.indices_or_null(), c, k};
    if (rows_path) {
      const Panel<T> panel = make_panel<T, P>(proxies, false);
      T* gc = grad_codes.data_ptr<T>();
      at::parallel_for(0, n, small_grain_rows(n, c, k), [&](int64_t r0, int64_t r1) {
        small_psl_backward<T>(b.codes, panel, labels.source(c), T(gamma), T(sigma), lse_neg.const_data_ptr<T>(),
                              grad_loss.const_data_ptr<T>(), gc, r0, r1);
      });
      return;
    }
    const TileProducts tp = tile_products<T, P>(proxies, codes);
    const at::Tensor neg_sum = tiled_negatives_softmax_sum<T>(codes * gamma, tp.proxies, tp.sign, b.offsets, b.indices,
                                               lse_neg);
    const T* ns = neg_sum.const_data_ptr<T>();
    T* gc = grad_codes.data_ptr<T>();
    at::parallel_for(0, n, grain_rows(1, k), [&](int64_t r0, int64_t r1) {
      psl_backward_range<T, P>(b, T(gamma), T(sigma), lse_neg.const_data_ptr<T>(), grad_loss.const_data_ptr<T>(),
                               ns, gc, r0, r1);
    });
  });
  return grad_codes;
}

}  // namespace

TORCH_LIBRARY_IMPL(dchml, CPU, m) {
  m.impl("labels_to_csr", &labels_to_csr_cpu);
  m.impl("mds_loss", &mds_loss_cpu);
  m.impl("mds_loss_backward", &mds_loss_backward_cpu);
  m.impl("partial_softmax_loss", &partial_softmax_loss_cpu);
  m.impl("partial_softmax_loss_backward", &partial_softmax_loss_backward_cpu);
}

}  // namespace dchml
