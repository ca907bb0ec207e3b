// The tiled path of the CPU losses (torch-free; the operators in ops/cpu supply the GEMM and the
// threads): the calls the row-block path does not take (loss_row_block.h).
//
// Per tile of (<= 4096 rows) x (<= 2048 proxies): the tile's scores (one GEMM, or the lookup
// tables row by row), then one vectorised pass per row that masks the row's positives and merges
// the tile's log-sum-exp into the row's; the backward recomputes the tile, turns it into softmax
// weights in place (positives zeroed) and accumulates weights @ proxies. The per-row finish is
// core/loss_rows.h, the code the CUDA kernels run. Extra memory: one tile (32 MiB in float).
#pragma once

#include <cstdint>
#include <functional>

#include "core/loss_rows.h"
#include "core/sign_panel.h"

namespace dchml {

struct TileShape {
  // Large enough that the few parallel regions per tile (one GEMM, one row pass) cost little even
  // on a busy machine, where each fork/join can wait for a descheduled thread.
  int64_t rows = 4096;
  int64_t classes = 2048;  // a multiple of 16 (the lookup tables' class tiles)
};

// A tile's two products with the proxies [q0, q0 + cols), for rows [b, e) of a block whose first
// row is `block` (k values per row); tile rows are relative to the block.
//   scores:  tile[r * cols + q] = block[r] . g_{q0 + q}
//   combine: out[r * k + j] += sum_q tile[r * cols + q] g_{q0 + q, j}
// per_row(): called inside the parallel row pass on each thread's rows (lookup tables), or else
// once per tile for all of its rows (a GEMM, threaded by the BLAS itself).
template <typename T>
class TileProducts {
 public:
  virtual ~TileProducts() = default;
  virtual bool per_row() const = 0;
  virtual void scores(const T* block, int64_t k, int64_t b, int64_t e, int64_t q0, int64_t cols, T* tile) const = 0;
  virtual void combine(const T* tile, int64_t k, int64_t b, int64_t e, int64_t q0, int64_t cols, T* out) const = 0;
};

// The float products through the lookup tables (built for all c proxies).
class SignTileProducts final : public TileProducts<float> {
 public:
  explicit SignTileProducts(const SignPanel& tables) : tables_(tables) {}
  bool per_row() const override { return true; }
  void scores(const float* block, int64_t k, int64_t b, int64_t e, int64_t q0, int64_t cols,
              float* tile) const override;
  void combine(const float* tile, int64_t k, int64_t b, int64_t e, int64_t q0, int64_t cols,
               float* out) const override;

 private:
  const SignPanel& tables_;
};

// Runs f over [0, n) in chunks of at least `grain` rows (the caller's threads).
using RowRange = std::function<void(int64_t, int64_t)>;
using RowRunner = std::function<void(int64_t n, int64_t grain, const RowRange& f)>;

// out[i] = logsumexp over row i's negatives q of den_scaled[i] . g_q (-inf without negatives).
// den_scaled (n, k) already holds scale * den. Labels: the CSR of the positives.
template <typename T>
void tiled_negatives_lse(const T* den_scaled, int64_t n, int64_t k, int64_t c, const int64_t* offsets,
                         const int64_t* indices, const TileProducts<T>& products, const RowRunner& run,
                         TileShape shape, T* out);

// out (n, k) = sum over row i's negatives of exp(den_scaled[i] . g_q - lse[i]) g_q.
template <typename T>
void tiled_negatives_softmax_sum(const T* den_scaled, int64_t n, int64_t k, int64_t c, const int64_t* offsets,
                                 const int64_t* indices, const T* lse, const TileProducts<T>& products,
                                 const RowRunner& run, TileShape shape, T* out);

// The rows of a tiled call, for the per-row finish (proxies as given: int8 or T).
template <typename T, typename P>
using TiledRows = LossRows<T, P, CsrPositives>;

// The per-row finish over rows [r0, r1), from the tiles' results (negatives_lse from
// tiled_negatives_lse with scale eta or gamma, negative_sum from tiled_negatives_softmax_sum).
template <typename T, typename P>
void tiled_mds_forward_rows(const TiledRows<T, P>& in, T eta, T mu, const T* negatives_lse, T* loss, T* lse,
                            int64_t r0, int64_t r1);
// negative_sum may be the memory of the denominator's output (see mds_backward_row).
template <typename T, typename P>
void tiled_mds_backward_rows(const TiledRows<T, P>& in, T eta, T mu, const T* lse, const T* grad_loss,
                             const T* negative_sum, T* grad_codes, T* grad_den, int64_t r0, int64_t r1);
template <typename T, typename P>
void tiled_psl_forward_rows(const TiledRows<T, P>& in, T gamma, T sigma, const T* lse_neg, T* loss, int64_t r0,
                            int64_t r1);
template <typename T, typename P>
void tiled_psl_backward_rows(const TiledRows<T, P>& in, T gamma, T sigma, const T* lse_neg, const T* grad_loss,
                             const T* negative_sum, T* grad_codes, int64_t r0, int64_t r1);

// Rows per thread chunk of the per-row finish: about 64K multiply-adds.
int64_t tiled_finish_grain(int64_t k);

}  // namespace dchml
