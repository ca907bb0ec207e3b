// CPU kernels of the loss operators (schemas in ops/mds_loss.cpp).
//
// Two paths, both fused (no (n x c) tensor) and both built on the row math of core/:
// - direct (c <= kDirectMaxClasses = 64): one pass per row over the proxies (core/mds_loss_engine.h),
//   rows spread over OpenMP threads, inner loops vectorised with the widest SIMD the CPU has,
//   picked at run time (target_clones), and no temporaries: the paper's scale (c <= 255) is
//   bound by call overhead, so nothing is allocated beyond the outputs.
// - tiled (large c): scores of a (<= 4096 rows) x (<= 2048 proxies) tile through at::mm (MKL /
//   oneDNN sgemm, near peak), then one vectorised pass per row of the tile that masks the
//   positives and merges the tile's log-sum-exp into the row's; backward recomputes the tile,
//   turns it into softmax weights in place (positives zeroed) and accumulates weights @ proxies.
//   Extra memory: one tile (32 MiB in float) plus a few (n, k) row buffers.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "core/mds_loss_engine.h"
#include "ops/mds_loss_checks.h"

namespace dchml {
namespace {

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define DCHML_SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define DCHML_SIMD_CLONES
#endif

// Above this many classes the GEMM-tiled path wins (measured on the 2-core test machine at
// n = 128, k = 64: direct faster at c = 21, tiled faster from c = 80).
constexpr int64_t kDirectMaxClasses = 64;
// Tile of at most 4096 x 2048 scores (32 MiB in float): large enough that the few parallel
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

std::tuple<at::Tensor, at::Tensor> labels_to_csr_cpu(const at::Tensor& labels_in) {
  TORCH_CHECK_VALUE(labels_in.dim() == 2, "labels must be 2-D (n, c), got ", labels_in.dim(), "-D");
  const at::Tensor labels = labels_in.contiguous();
  const int64_t n = labels.size(0), c = labels.size(1);
  at::Tensor offsets = at::empty({n + 1}, labels.options().dtype(at::kLong));
  int64_t* off = offsets.data_ptr<int64_t>();
  off[0] = 0;
  int64_t bad_value_at = -1, empty_rows = 0, first_empty = -1;
  AT_DISPATCH_ALL_TYPES_AND3(at::kBool, at::kHalf, at::kBFloat16, labels.scalar_type(), "labels_to_csr", [&] {
    const scalar_t* l = labels.const_data_ptr<scalar_t>();
    for (int64_t i = 0; i < n; ++i) {
      int64_t count = 0;
      for (int64_t q = 0; q < c; ++q) {
        const scalar_t v = l[i * c + q];
        if (v == scalar_t(0)) continue;
        if (!(v == scalar_t(1)) && bad_value_at < 0) bad_value_at = i * c + q;
        ++count;
      }
      if (count == 0 && empty_rows++ == 0) first_empty = i;
      off[i + 1] = off[i] + count;
    }
    if (bad_value_at >= 0) {
      TORCH_CHECK_VALUE(false, "labels must be 0/1, got ", static_cast<double>(l[bad_value_at]), " at row ",
                        bad_value_at / c, ", column ", bad_value_at % c);
    }
  });
  TORCH_CHECK_VALUE(empty_rows == 0, "labels: ", empty_rows, " row(s) have no positive label (first: row ",
                    first_empty, "); every sample needs at least one label (METHOD.md §3)");
  at::Tensor indices = at::empty({off[n]}, offsets.options());
  int64_t* idx = indices.data_ptr<int64_t>();
  AT_DISPATCH_ALL_TYPES_AND3(at::kBool, at::kHalf, at::kBFloat16, labels.scalar_type(), "labels_to_csr", [&] {
    const scalar_t* l = labels.const_data_ptr<scalar_t>();
    at::parallel_for(0, n, std::max<int64_t>(1, 65536 / std::max<int64_t>(1, c)), [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        int64_t out = off[i];
        for (int64_t q = 0; q < c; ++q)
          if (l[i * c + q] != scalar_t(0)) idx[out++] = q;
      }
    });
  });
  return {offsets, indices};
}

template <typename P>
void check_plus_minus_one(const at::Tensor& proxies) {
  const P* g = proxies.const_data_ptr<P>();
  const int64_t total = proxies.numel();
  int64_t bad = -1;
  for (int64_t j = 0; j < total; ++j) {
    if (g[j] != P(1) && g[j] != P(-1)) {
      bad = j;
      break;
    }
  }
  TORCH_CHECK_VALUE(bad < 0, "proxies must be +1/-1, got ", static_cast<double>(g[bad]), " at row ",
                    bad / proxies.size(1), ", column ", bad % proxies.size(1));
}

// ---- direct path (one pass per row) ----

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

// logsumexp over each row's negatives of (den_scaled . g_q): den_scaled already holds eta * den.
template <typename T>
at::Tensor tiled_negatives_lse(const at::Tensor& den_scaled, const at::Tensor& proxies, const int64_t* offsets,
                               const int64_t* indices) {
  const Tiling t{den_scaled.size(0), proxies.size(0)};
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
      at::mm_out(tile, block, proxies.narrow(0, q0, cols).t());
      T* tp = tile.data_ptr<T>();
      at::parallel_for(0, rows, tile_grain(cols), [&](int64_t b, int64_t e) {
        tile_rows_lse<T>(tp, r0, b, e, cols, q0, offsets, indices, cursor.data(), out);
      });
    }
  }
  return lse;
}

// sum over each row's negatives of exp(den_scaled . g_q - lse) g_q, as an (n, k) tensor.
template <typename T>
at::Tensor tiled_negatives_softmax_sum(const at::Tensor& den_scaled, const at::Tensor& proxies,
                                       const int64_t* offsets, const int64_t* indices, const at::Tensor& lse_in) {
  const Tiling t{den_scaled.size(0), proxies.size(0)};
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
      const at::Tensor tile_proxies = proxies.narrow(0, q0, cols);
      at::Tensor tile = buffer.narrow(0, 0, rows * cols).view({rows, cols});
      at::mm_out(tile, block, tile_proxies.t());
      T* tp = tile.data_ptr<T>();
      at::parallel_for(0, rows, tile_grain(cols), [&](int64_t b, int64_t e) {
        tile_rows_weights<T>(tp, r0, b, e, cols, q0, offsets, indices, cursor.data(), lse.const_data_ptr<T>());
      });
      block_sum.addmm_(tile, tile_proxies);
    }
  }
  return sum;
}

bool use_tiles(int64_t c) { return c > kDirectMaxClasses; }

// Proxies in the codes' dtype, for at::mm (int8 proxies are converted once per call).
at::Tensor gemm_proxies(const at::Tensor& proxies, const at::Tensor& codes) {
  return proxies.to(codes.scalar_type()).contiguous();
}

template <typename F>
void dispatch_proxies(const at::Tensor& codes, const at::Tensor& proxies, F&& body) {
  AT_DISPATCH_FLOATING_TYPES(codes.scalar_type(), "dchml_loss", [&] {
    if (proxies.scalar_type() == at::kChar)
      body(scalar_t(), int8_t());
    else
      body(scalar_t(), scalar_t());
  });
}

// ---- operators ----

std::tuple<at::Tensor, at::Tensor> mds_loss_cpu(const at::Tensor& codes_in, const std::optional<at::Tensor>& other_in,
                                                const at::Tensor& proxies_in, const at::Tensor& offsets_in,
                                                const at::Tensor& indices_in, double eta, double mu) {
  check_loss_inputs(codes_in, other_in, proxies_in, offsets_in, indices_in);
  const at::Tensor codes = codes_in.contiguous(), proxies = proxies_in.contiguous();
  const at::Tensor offsets = offsets_in.contiguous(), indices = indices_in.contiguous();
  const at::Tensor den = other_in.has_value() ? other_in->contiguous() : codes;
  const int64_t n = codes.size(0), c = proxies.size(0), k = codes.size(1);
  at::Tensor loss = at::empty({n}, codes.options()), lse = at::empty({n}, codes.options());
  if (n == 0) return {loss, lse};
  dispatch_proxies(codes, proxies, [&](auto t_tag, auto p_tag) {
    using T = decltype(t_tag);
    using P = decltype(p_tag);
    check_plus_minus_one<P>(proxies);
    const Batch<T, P> b{codes.const_data_ptr<T>(), den.const_data_ptr<T>(), proxies.const_data_ptr<P>(),
                        offsets.const_data_ptr<int64_t>(), indices.const_data_ptr<int64_t>(), c, k};
    at::Tensor neg_lse;
    if (use_tiles(c))
      neg_lse = tiled_negatives_lse<T>(den * eta, gemm_proxies(proxies, codes), b.offsets, b.indices);
    const T* nl = neg_lse.defined() ? neg_lse.const_data_ptr<T>() : nullptr;
    T* lo = loss.data_ptr<T>();
    T* ls = lse.data_ptr<T>();
    at::parallel_for(0, n, grain_rows(use_tiles(c) ? 1 : c, k), [&](int64_t r0, int64_t r1) {
      mds_forward_range<T, P>(b, T(eta), T(mu), nl, lo, ls, r0, r1);
    });
  });
  return {loss, lse};
}

std::tuple<at::Tensor, at::Tensor> mds_loss_backward_cpu(const at::Tensor& grad_loss_in, const at::Tensor& codes_in,
                                                         const std::optional<at::Tensor>& other_in,
                                                         const at::Tensor& proxies_in, const at::Tensor& offsets_in,
                                                         const at::Tensor& indices_in, const at::Tensor& lse_in,
                                                         double eta, double mu) {
  check_loss_inputs(codes_in, other_in, proxies_in, offsets_in, indices_in);
  check_row_vector("grad_loss", grad_loss_in, codes_in);
  check_row_vector("lse", lse_in, codes_in);
  const at::Tensor codes = codes_in.contiguous(), proxies = proxies_in.contiguous();
  const at::Tensor offsets = offsets_in.contiguous(), indices = indices_in.contiguous();
  const at::Tensor grad_loss = grad_loss_in.contiguous(), lse = lse_in.contiguous();
  const bool separate = other_in.has_value();
  const at::Tensor den = separate ? other_in->contiguous() : codes;
  const int64_t n = codes.size(0), c = proxies.size(0), k = codes.size(1);
  at::Tensor grad_codes = at::empty({n, k}, codes.options());
  at::Tensor grad_other = at::empty({separate ? n : 0, k}, codes.options());
  if (n == 0) return {grad_codes, grad_other};
  dispatch_proxies(codes, proxies, [&](auto t_tag, auto p_tag) {
    using T = decltype(t_tag);
    using P = decltype(p_tag);
    const Batch<T, P> b{codes.const_data_ptr<T>(), den.const_data_ptr<T>(), proxies.const_data_ptr<P>(),
                        offsets.const_data_ptr<int64_t>(), indices.const_data_ptr<int64_t>(), c, k};
    at::Tensor neg_sum;
    if (use_tiles(c))
      neg_sum = tiled_negatives_softmax_sum<T>(den * eta, gemm_proxies(proxies, codes), b.offsets, b.indices, lse);
    const T* ns = neg_sum.defined() ? neg_sum.const_data_ptr<T>() : nullptr;
    T* gc = grad_codes.data_ptr<T>();
    T* go = separate ? grad_other.data_ptr<T>() : nullptr;
    at::parallel_for(0, n, grain_rows(use_tiles(c) ? 1 : c, k), [&](int64_t r0, int64_t r1) {
      mds_backward_range<T, P>(b, T(eta), T(mu), lse.const_data_ptr<T>(), grad_loss.const_data_ptr<T>(), ns, gc, go,
                               r0, r1);
    });
  });
  return {grad_codes, grad_other};
}

std::tuple<at::Tensor, at::Tensor> partial_softmax_loss_cpu(const at::Tensor& codes_in, const at::Tensor& proxies_in,
                                                            const at::Tensor& offsets_in, const at::Tensor& indices_in,
                                                            double gamma, double sigma) {
  check_loss_inputs(codes_in, std::nullopt, proxies_in, offsets_in, indices_in);
  const at::Tensor codes = codes_in.contiguous(), proxies = proxies_in.contiguous();
  const at::Tensor offsets = offsets_in.contiguous(), indices = indices_in.contiguous();
  const int64_t n = codes.size(0), c = proxies.size(0), k = codes.size(1);
  at::Tensor loss = at::empty({n}, codes.options()), lse_neg = at::empty({n}, codes.options());
  if (n == 0) return {loss, lse_neg};
  dispatch_proxies(codes, proxies, [&](auto t_tag, auto p_tag) {
    using T = decltype(t_tag);
    using P = decltype(p_tag);
    check_plus_minus_one<P>(proxies);
    const Batch<T, P> b{codes.const_data_ptr<T>(), codes.const_data_ptr<T>(), proxies.const_data_ptr<P>(),
                        offsets.const_data_ptr<int64_t>(), indices.const_data_ptr<int64_t>(), c, k};
    at::Tensor neg_lse;
    if (use_tiles(c))
      neg_lse = tiled_negatives_lse<T>(codes * gamma, gemm_proxies(proxies, codes), b.offsets, b.indices);
    const T* nl = neg_lse.defined() ? neg_lse.const_data_ptr<T>() : nullptr;
    T* lo = loss.data_ptr<T>();
    T* ln = lse_neg.data_ptr<T>();
    at::parallel_for(0, n, grain_rows(use_tiles(c) ? 1 : c, k), [&](int64_t r0, int64_t r1) {
      psl_forward_range<T, P>(b, T(gamma), T(sigma), nl, lo, ln, r0, r1);
    });
  });
  return {loss, lse_neg};
}

at::Tensor partial_softmax_loss_backward_cpu(const at::Tensor& grad_loss_in, const at::Tensor& codes_in,
                                             const at::Tensor& proxies_in, const at::Tensor& offsets_in,
                                             const at::Tensor& indices_in, const at::Tensor& lse_neg_in, double gamma,
                                             double sigma) {
  check_loss_inputs(codes_in, std::nullopt, proxies_in, offsets_in, indices_in);
  check_row_vector("grad_loss", grad_loss_in, codes_in);
  check_row_vector("lse_neg", lse_neg_in, codes_in);
  const at::Tensor codes = codes_in.contiguous(), proxies = proxies_in.contiguous();
  const at::Tensor offsets = offsets_in.contiguous(), indices = indices_in.contiguous();
  const at::Tensor grad_loss = grad_loss_in.contiguous(), lse_neg = lse_neg_in.contiguous();
  const int64_t n = codes.size(0), c = proxies.size(0), k = codes.size(1);
  at::Tensor grad_codes = at::empty({n, k}, codes.options());
  if (n == 0) return grad_codes;
  dispatch_proxies(codes, proxies, [&](auto t_tag, auto p_tag) {
    using T = decltype(t_tag);
    using P = decltype(p_tag);
    const Batch<T, P> b{codes.const_data_ptr<T>(), codes.const_data_ptr<T>(), proxies.const_data_ptr<P>(),
                        offsets.const_data_ptr<int64_t>(), indices.const_data_ptr<int64_t>(), c, k};
    at::Tensor neg_sum;
    if (use_tiles(c))
      neg_sum = tiled_negatives_softmax_sum<T>(codes * gamma, gemm_proxies(proxies, codes), b.offsets, b.indices,
                                               lse_neg);
    const T* ns = neg_sum.defined() ? neg_sum.const_data_ptr<T>() : nullptr;
    T* gc = grad_codes.data_ptr<T>();
    at::parallel_for(0, n, grain_rows(use_tiles(c) ? 1 : c, k), [&](int64_t r0, int64_t r1) {
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
