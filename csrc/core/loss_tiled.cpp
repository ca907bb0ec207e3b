// The tiled path of the CPU losses: see loss_tiled.h.
#include "core/loss_tiled.h"

#include <algorithm>
#include <memory>
#include <vector>

#include "core/macros.h"
#include "core/vector_math.h"

namespace dchml {
namespace {

// One pass over rows [b, e) of a tile (SIMD chosen at run time): row i's positives in the tile
// masked, the tile's log-sum-exp merged into out[r0 + i]. cursor[i]: row i's next positive.
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

// One pass over rows [b, e) of a tile: scores -> softmax weights exp(s - lse_i), positives -> 0.
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

int64_t tile_grain(int64_t cols) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, cols)); }

// Visits every tile: for each block of rows, each class tile in order, with the tile's scores
// computed; row_pass(r0, b, e, q0, cols, tile, cursor) runs over the tile's rows on the caller's
// threads, then after_tile(r0, rows, q0, cols, tile) once.
template <typename T, typename RowPass, typename AfterTile>
void for_each_tile(const T* den_scaled, int64_t n, int64_t k, int64_t c, const int64_t* offsets,
                   const TileProducts<T>& products, const RowRunner& run, TileShape shape, RowPass&& row_pass,
                   AfterTile&& after_tile) {
  const int64_t block_rows = std::min(n, shape.rows), tile_cols = std::min(c, shape.classes);
  std::unique_ptr<T[]> tile(new T[static_cast<size_t>(block_rows * tile_cols)]);
  std::vector<int64_t> cursor(static_cast<size_t>(block_rows));
  const bool per_row = products.per_row();
  for (int64_t r0 = 0; r0 < n; r0 += shape.rows) {
    const int64_t rows = std::min(shape.rows, n - r0);
    const T* block = den_scaled + r0 * k;
    for (int64_t i = 0; i < rows; ++i) cursor[i] = offsets[r0 + i];
    for (int64_t q0 = 0; q0 < c; q0 += shape.classes) {
      const int64_t cols = std::min(shape.classes, c - q0);
      if (!per_row) products.scores(block, k, 0, rows, q0, cols, tile.get());
      run(rows, tile_grain(cols), [&](int64_t b, int64_t e) {
        if (per_row) products.scores(block, k, b, e, q0, cols, tile.get());
        row_pass(r0, b, e, q0, cols, tile.get(), cursor.data());
      });
      after_tile(r0, rows, q0, cols, tile.get());
    }
  }
}

}  // namespace

void SignTileProducts::scores(const float* block, int64_t k, int64_t b, int64_t e, int64_t q0, int64_t cols,
                              float* tile) const {
  for (int64_t i = b; i < e; ++i) tables_.scores_range(block + i * k, tile + i * cols, q0, q0 + cols);
}

void SignTileProducts::combine(const float* tile, int64_t k, int64_t b, int64_t e, int64_t q0, int64_t cols,
                               float* out) const {
  for (int64_t i = b; i < e; ++i) tables_.combine_range(tile + i * cols, out + i * k, q0, q0 + cols, true);
}

template <typename T>
void tiled_negatives_lse(const T* den_scaled, int64_t n, int64_t k, int64_t c, const int64_t* offsets,
                         const int64_t* indices, const TileProducts<T>& products, const RowRunner& run,
                         TileShape shape, T* out) {
  std::fill(out, out + n, neg_infinity<T>());
  for_each_tile(
      den_scaled, n, k, c, offsets, products, run, shape,
      [&](int64_t r0, int64_t b, int64_t e, int64_t q0, int64_t cols, T* tile, int64_t* cursor) {
        tile_rows_lse(tile, r0, b, e, cols, q0, offsets, indices, cursor, out);
      },
      [](int64_t, int64_t, int64_t, int64_t, T*) {});
}

template <typename T>
void tiled_negatives_softmax_sum(const T* den_scaled, int64_t n, int64_t k, int64_t c, const int64_t* offsets,
                                 const int64_t* indices, const T* lse, const TileProducts<T>& products,
                                 const RowRunner& run, TileShape shape, T* out) {
  std::fill(out, out + n * k, T(0));
  const bool per_row = products.per_row();
  for_each_tile(
      den_scaled, n, k, c, offsets, products, run, shape,
      [&](int64_t r0, int64_t b, int64_t e, int64_t q0, int64_t cols, T* tile, int64_t* cursor) {
        tile_rows_weights(tile, r0, b, e, cols, q0, offsets, indices, cursor, lse);
        if (per_row) products.combine(tile, k, b, e, q0, cols, out + r0 * k);
      },
      [&](int64_t r0, int64_t rows, int64_t q0, int64_t cols, T* tile) {
        if (!per_row) products.combine(tile, k, 0, rows, q0, cols, out + r0 * k);
      });
}

template <typename T, typename P>
DCHML_SIMD_CLONES void tiled_mds_forward_rows(const TiledRows<T, P>& in, T eta, T mu, const T* negatives_lse, T* loss,
                                              T* lse, int64_t r0, int64_t r1) {
  for (int64_t i = r0; i < r1; ++i) {
    const MdsForward<T> f = mds_forward_row(in.row(i), eta, mu, negatives_lse[i]);
    loss[i] = f.loss;
    lse[i] = f.lse;
  }
}

template <typename T, typename P>
DCHML_SIMD_CLONES void tiled_mds_backward_rows(const TiledRows<T, P>& in, T eta, T mu, const T* lse,
                                               const T* grad_loss, const T* negative_sum, T* grad_codes,
                                               T* grad_den, int64_t r0, int64_t r1) {
  for (int64_t i = r0; i < r1; ++i)
    mds_backward_row(in.row(i), eta, mu, lse[i], grad_loss[i], negative_sum + i * in.k, grad_codes + i * in.k,
                     in.separate ? grad_den + i * in.k : nullptr);
}

template <typename T, typename P>
DCHML_SIMD_CLONES void tiled_psl_forward_rows(const TiledRows<T, P>& in, T gamma, T sigma, const T* lse_neg, T* loss,
                                              int64_t r0, int64_t r1) {
  for (int64_t i = r0; i < r1; ++i) loss[i] = psl_forward_row(in.row(i), gamma, sigma, lse_neg[i]);
}

template <typename T, typename P>
DCHML_SIMD_CLONES void tiled_psl_backward_rows(const TiledRows<T, P>& in, T gamma, T sigma, const T* lse_neg,
                                               const T* grad_loss, const T* negative_sum, T* grad_codes, int64_t r0,
                                               int64_t r1) {
  for (int64_t i = r0; i < r1; ++i)
    psl_backward_row(in.row(i), gamma, sigma, lse_neg[i], grad_loss[i], negative_sum + i * in.k,
                     grad_codes + i * in.k);
}

int64_t tiled_finish_grain(int64_t k) { return std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(1, k)); }

#define DCHML_TILED_INSTANCES(T)                                                                              \
  template void tiled_negatives_lse<T>(const T*, int64_t, int64_t, int64_t, const int64_t*, const int64_t*,   \
                                       const TileProducts<T>&, const RowRunner&, TileShape, T*);              \
  template void tiled_negatives_softmax_sum<T>(const T*, int64_t, int64_t, int64_t, const int64_t*,           \
                                               const int64_t*, const T*, const TileProducts<T>&,              \
                                               const RowRunner&, TileShape, T*);
#define DCHML_TILED_ROW_INSTANCES(T, P)                                                                          \
  template void tiled_mds_forward_rows<T, P>(const TiledRows<T, P>&, T, T, const T*, T*, T*, int64_t, int64_t); \
  template void tiled_mds_backward_rows<T, P>(const TiledRows<T, P>&, T, T, const T*, const T*, const T*, T*,   \
                                              T*, int64_t, int64_t);                                             \
  template void tiled_psl_forward_rows<T, P>(const TiledRows<T, P>&, T, T, const T*, T*, int64_t, int64_t);     \
  template void tiled_psl_backward_rows<T, P>(const TiledRows<T, P>&, T, T, const T*, const T*, const T*, T*,   \
                                              int64_t, int64_t);
DCHML_TILED_INSTANCES(float)
DCHML_TILED_INSTANCES(double)
DCHML_TILED_ROW_INSTANCES(float, int8_t)
DCHML_TILED_ROW_INSTANCES(float, float)
DCHML_TILED_ROW_INSTANCES(double, int8_t)
DCHML_TILED_ROW_INSTANCES(double, double)
#undef DCHML_TILED_INSTANCES
#undef DCHML_TILED_ROW_INSTANCES

}  // namespace dchml
