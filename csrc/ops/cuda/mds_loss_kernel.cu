// CUDA operators of the losses (schemas in ops/mds_loss.cpp), mirroring the CPU tiled path:
//   negatives_lse:          per row, logsumexp over the negatives q of scale * (den_i . g_q)
//   negatives_softmax_sum:  per row, sum over negatives of exp(scale * den_i . g_q - lse_i) g_q
// then one thread per row finishes it with the positives: core/loss_rows.h, the code the CPU
// tiled path runs (one dot product per positive, also in the PSLDH backward).
//
// Layout: a block holds 8 warps, one row each; the block stages a tile of proxies in shared memory
// (row stride k + 1 against bank conflicts) so each proxy load serves 8 rows. In the forward pass
// a lane owns a proxy (an in-register dot over k, an online log-sum-exp per lane, merged across the
// warp by shuffles); in the backward pass a lane first turns its proxies' scores into softmax
// weights (in shared memory), then owns output columns j and accumulates weights @ tile.
//
// No host synchronisation in a loss step: dense labels are read in place as a 0/1 byte mask
// (a CSR would need one for its size) and checked on the device (at::_assert_async); the ±1
// check of the proxies, which needs their values on the host, runs once per proxies tensor.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/intrusive_ptr.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>

#include "core/loss_rows.h"
#include "ops/loss_inputs.h"
#include "ops/loss_operators.h"

namespace dchml {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kMaxTile = 256;             // proxies per shared-memory tile
constexpr int64_t kTileBytes = 32 * 1024;  // + kWarps * kMaxTile weights: under the 48 KiB default
constexpr int kRowThreads = 128;

// A row's positives on the device: a CSR row, or a dense 0/1 byte row read in place. One type
// with a branch (the same for every thread of a call) instead of a template parameter, which
// would double every kernel's instantiations.
struct DevicePositives {
  PositiveList list;
  PositiveMask mask;
  bool dense;
  __device__ int64_t count() const { return dense ? mask.count() : list.count(); }
  template <typename F>
  __device__ void each(F&& f) const {
    if (dense)
      mask.each(f);
    else
      list.each(f);
  }
  __device__ bool contains(int64_t q) const { return dense ? mask.contains(q) : list.contains(q); }
};

struct DeviceLabels {
  const uint8_t* mask = nullptr;  // (n, c) when dense
  const int64_t* offsets = nullptr;
  const int64_t* indices = nullptr;
  int64_t c = 0;
  DCHML_HD DevicePositives row(int64_t i) const {
    if (mask != nullptr) return {{nullptr, 0}, {mask + i * c, c}, true};
    return {{indices + offsets[i], offsets[i + 1] - offsets[i]}, {nullptr, 0}, false};
  }
};

template <typename P>
int tile_proxies(int64_t k) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(kMaxTile, kTileBytes / ((k + 1) * sizeof(P)))));
}

template <typename P>
__device__ void stage_tile(P* tile, const P* proxies, int64_t q0, int64_t cols, int64_t k) {
  for (int64_t e = threadIdx.x; e < cols * k; e += blockDim.x) {
    const int64_t t = e / k, j = e - t * k;
    tile[t * (k + 1) + j] = proxies[(q0 + t) * k + j];
  }
}

template <typename T, typename P>
__global__ void negatives_lse_kernel(const T* __restrict__ den, const P* __restrict__ proxies, DeviceLabels labels,
                                     int64_t n, int64_t c, int64_t k, T scale, int tile_q, T* __restrict__ out) {
  extern __shared__ unsigned char smem[];
  P* tile = reinterpret_cast<P*>(smem);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  const bool active = row < n;
  const DevicePositives positives = labels.row(active ? row : 0);
  const T* b = den + (active ? row : 0) * k;
  OnlineLse<T> s = lse_empty<T>();
  for (int64_t q0 = 0; q0 < c; q0 += tile_q) {
    const int64_t cols = std::min<int64_t>(tile_q, c - q0);
    __syncthreads();  // the previous tile is no longer read
    stage_tile(tile, proxies, q0, cols, k);
    __syncthreads();
    if (active) {
      for (int64_t t = lane; t < cols; t += 32) {
        if (positives.contains(q0 + t)) continue;
        lse_push(s, scale * dot<T>(b, tile + t * (k + 1), k));
      }
    }
  }
  for (int offset = 16; offset > 0; offset /= 2) {
    const OnlineLse<T> other{__shfl_xor_sync(0xffffffffu, s.max, offset), __shfl_xor_sync(0xffffffffu, s.sum, offset)};
    s = lse_merge(s, other);
  }
  if (active && lane == 0) out[row] = lse_value(s);
}

template <typename T, typename P>
__global__ void negatives_softmax_sum_kernel(const T* __restrict__ den, const P* __restrict__ proxies,
                                             DeviceLabels labels, int64_t n, int64_t c, int64_t k, T scale,
                                             const T* __restrict__ lse, int tile_q, T* __restrict__ out) {
  extern __shared__ unsigned char smem[];
  P* tile = reinterpret_cast<P*>(smem);
  // weights after the tile, aligned for T
  const size_t tile_bytes = (static_cast<size_t>(tile_q) * (k + 1) * sizeof(P) + sizeof(T) - 1) / sizeof(T) * sizeof(T);
  T* weights = reinterpret_cast<T*>(smem + tile_bytes);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  const bool active = row < n;
  const DevicePositives positives = labels.row(active ? row : 0);
  const T* b = den + (active ? row : 0) * k;
  const T row_lse = active ? lse[row] : T(0);
  T* w = weights + warp * tile_q;
  for (int64_t q0 = 0; q0 < c; q0 += tile_q) {
    const int64_t cols = std::min<int64_t>(tile_q, c - q0);
    __syncthreads();
    stage_tile(tile, proxies, q0, cols, k);
    __syncthreads();
    if (active) {
      for (int64_t t = lane; t < cols; t += 32)
        w[t] = positives.contains(q0 + t) ? T(0) : softmax_weight(scale * dot<T>(b, tile + t * (k + 1), k), row_lse);
      __syncwarp();
      for (int64_t j = lane; j < k; j += 32) {
        T acc = T(0);
        for (int64_t t = 0; t < cols; ++t) acc += w[t] * static_cast<T>(tile[t * (k + 1) + j]);
        out[row * k + j] += acc;
      }
      __syncwarp();
    }
  }
}

// ---- the per-row finish (core/loss_rows.h), one thread per row ----

template <typename T, typename P>
using DeviceRows = LossRows<T, P, DeviceLabels>;

__device__ int64_t this_row() { return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; }

template <typename T, typename P>
__global__ void mds_forward_rows_kernel(DeviceRows<T, P> rows, int64_t n, T eta, T mu, const T* negatives_lse, T* loss,
                                        T* lse) {
  const int64_t i = this_row();
  if (i >= n) return;
  const MdsForward<T> f = mds_forward_row(rows.row(i), eta, mu, negatives_lse[i]);
  loss[i] = f.loss;
  lse[i] = f.lse;
}

// negative_sum is the denominator's output (grad_den, or grad_codes without `other`), finished in place.
template <typename T, typename P>
__global__ void mds_backward_rows_kernel(DeviceRows<T, P> rows, int64_t n, T eta, T mu, const T* lse,
                                         const T* grad_loss, const T* negative_sum, T* grad_codes, T* grad_den) {
  const int64_t i = this_row();
  if (i >= n) return;
  mds_backward_row(rows.row(i), eta, mu, lse[i], grad_loss[i], negative_sum + i * rows.k, grad_codes + i * rows.k,
                   rows.separate ? grad_den + i * rows.k : nullptr);
}

template <typename T, typename P>
__global__ void psl_forward_rows_kernel(DeviceRows<T, P> rows, int64_t n, T gamma, T sigma, const T* lse_neg, T* loss) {
  const int64_t i = this_row();
  if (i >= n) return;
  loss[i] = psl_forward_row(rows.row(i), gamma, sigma, lse_neg[i]);
}

template <typename T, typename P>
__global__ void psl_backward_rows_kernel(DeviceRows<T, P> rows, int64_t n, T gamma, T sigma, const T* lse_neg,
                                         const T* grad_loss, const T* negative_sum, T* grad_codes) {
  const int64_t i = this_row();
  if (i >= n) return;
  psl_backward_row(rows.row(i), gamma, sigma, lse_neg[i], grad_loss[i], negative_sum + i * rows.k,
                   grad_codes + i * rows.k);
}

// ---- labels on the device ----

// mask[i, q] = labels[i, q] != 0, one block per row; ok[0] = 0 when a value is not 0/1 or a row has
// no positive (read by at::_assert_async, not by the host).
template <typename L>
__global__ void dense_labels_mask_kernel(const L* __restrict__ labels, int64_t c, uint8_t* __restrict__ mask,
                                         int* __restrict__ ok) {
  const int64_t i = blockIdx.x;
  int any = 0, odd = 0;
  for (int64_t q = threadIdx.x; q < c; q += blockDim.x) {
    const L v = labels[i * c + q];
    const bool positive = v != L(0);
    mask[i * c + q] = positive;
    any |= positive;
    odd |= positive && v != L(1);
  }
  any = __syncthreads_or(any);
  odd = __syncthreads_or(odd);
  if (threadIdx.x == 0 && (!any || odd)) *ok = 0;
}

// ok[0] = 0 unless every row of the CSR is non-empty with increasing indices in [0, c).
__global__ void csr_labels_check_kernel(const int64_t* __restrict__ offsets, const int64_t* __restrict__ indices,
                                        int64_t n, int64_t c, int64_t nnz, int* __restrict__ ok) {
  const int64_t i = this_row();
  if (i > n) return;
  if (i == 0 && offsets[0] != 0) *ok = 0;
  if (i == n) {
    if (offsets[n] != nnz) *ok = 0;
    return;
  }
  const int64_t b = offsets[i], e = offsets[i + 1];
  if (e <= b || b < 0 || e > nnz) {
    *ok = 0;
    return;
  }
  for (int64_t p = b; p < e; ++p)
    if (indices[p] < 0 || indices[p] >= c || (p > b && indices[p] <= indices[p - 1])) *ok = 0;
}

unsigned int blocks_for(int64_t n, int64_t per_block) {
  return static_cast<unsigned int>(std::max<int64_t>(1, (n + per_block - 1) / per_block));
}

// ±1 check of the proxies: their values are needed on the host to raise a clear error, which is a
// synchronisation; the proxies stay the same tensor for many steps, so each thread remembers the
// last tensor it checked, by identity and version counter (an in-place change is checked again;
// inference tensors, which have no version counter, are checked every time).
void check_plus_minus_one(const at::Tensor& proxies) {
  const at::Tensor bad = at::logical_and(proxies.ne(1), proxies.ne(-1));
  if (bad.any().item<bool>()) {
    const int64_t flat = bad.flatten().nonzero().select(1, 0)[0].item<int64_t>();
    TORCH_CHECK_VALUE(false, "proxies must be +1/-1, got ", proxies.flatten()[flat].item<double>(), " at row ",
                      flat / proxies.size(1), ", column ", flat % proxies.size(1));
  }
}

void check_proxies_once(const at::Tensor& proxies) {
  using WeakImpl = c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>;
  struct Checked {
    WeakImpl impl;
    int64_t version;
  };
  static thread_local std::optional<Checked> last;
  const bool tracked = !proxies.is_inference();
  if (tracked && last && !last->impl.expired() && last->impl._unsafe_get_target() == proxies.unsafeGetTensorImpl() &&
      last->version == static_cast<int64_t>(proxies._version()))
    return;
  check_plus_minus_one(proxies);
  if (tracked) last = Checked{WeakImpl(proxies.getIntrusivePtr()), static_cast<int64_t>(proxies._version())};
}

// ---- one prepared call ----

class CudaLossCall {
 public:
  explicit CudaLossCall(LossInputs inputs) : in_(std::move(inputs)), guard_(in_.codes.device()) {
    if (in_.n == 0) return;
    check_proxies_once(in_.proxies);
    at::Tensor ok = at::ones({}, in_.codes.options().dtype(at::kInt));
    auto stream = c10::cuda::getCurrentCUDAStream();
    if (in_.indices.has_value()) {
      offsets_ = in_.labels.contiguous();
      indices_ = in_.indices->contiguous();
      csr_labels_check_kernel<<<blocks_for(in_.n + 1, kRowThreads), kRowThreads, 0, stream>>>(
          offsets_.const_data_ptr<int64_t>(), indices_.const_data_ptr<int64_t>(), in_.n, in_.c, indices_.numel(),
          ok.mutable_data_ptr<int>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      at::_assert_async(ok, "dchml: label offsets/indices must list, for every row, at least one positive, "
                            "increasing and in [0, c)");
      return;
    }
    const at::Tensor labels = in_.labels.contiguous();
    mask_ = at::empty(labels.sizes(), labels.options().dtype(at::kByte));
    AT_DISPATCH_ALL_TYPES_AND3(at::kBool, at::kHalf, at::kBFloat16, labels.scalar_type(), "dchml_labels", [&] {
      dense_labels_mask_kernel<scalar_t><<<static_cast<unsigned int>(in_.n), kRowThreads, 0, stream>>>(
          labels.const_data_ptr<scalar_t>(), in_.c, mask_.mutable_data_ptr<uint8_t>(), ok.mutable_data_ptr<int>());
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    at::_assert_async(ok, "dchml: labels must be 0/1 with at least one positive per row");
  }

  std::tuple<at::Tensor, at::Tensor> mds_forward(double eta, double mu) const {
    at::Tensor loss = in_.row_output(), lse = in_.row_output();
    if (in_.n == 0) return {loss, lse};
    dispatch_proxies(in_.codes, in_.proxies, [&](auto t_tag, auto p_tag) {
      using T = decltype(t_tag);
      using P = decltype(p_tag);
      const at::Tensor negatives = negatives_lse<T, P>(in_.den, T(eta));
      mds_forward_rows_kernel<T, P><<<row_blocks(), kRowThreads, 0, stream()>>>(
          rows<T, P>(), in_.n, T(eta), T(mu), negatives.const_data_ptr<T>(), loss.mutable_data_ptr<T>(),
          lse.mutable_data_ptr<T>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    return {loss, lse};
  }

  std::tuple<at::Tensor, at::Tensor> mds_backward(double eta, double mu) const {
    if (in_.n == 0) return {in_.code_output(), in_.code_output(in_.separate)};
    at::Tensor grad_codes, grad_other;
    dispatch_proxies(in_.codes, in_.proxies, [&](auto t_tag, auto p_tag) {
      using T = decltype(t_tag);
      using P = decltype(p_tag);
      // the negatives' softmax sum is the denominator's gradient, finished in place
      const at::Tensor den_grad = negatives_softmax_sum<T, P>(in_.den, T(eta));
      grad_codes = in_.separate ? in_.code_output() : den_grad;
      grad_other = in_.separate ? den_grad : in_.code_output(false);
      mds_backward_rows_kernel<T, P><<<row_blocks(), kRowThreads, 0, stream()>>>(
          rows<T, P>(), in_.n, T(eta), T(mu), in_.saved.const_data_ptr<T>(), in_.grad_loss.const_data_ptr<T>(),
          den_grad.const_data_ptr<T>(), grad_codes.mutable_data_ptr<T>(),
          in_.separate ? den_grad.mutable_data_ptr<T>() : nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    return {grad_codes, grad_other};
  }

  std::tuple<at::Tensor, at::Tensor> psl_forward(double gamma, double sigma) const {
    at::Tensor loss = in_.row_output(), lse_neg;
    if (in_.n == 0) return {loss, in_.row_output()};
    dispatch_proxies(in_.codes, in_.proxies, [&](auto t_tag, auto p_tag) {
      using T = decltype(t_tag);
      using P = decltype(p_tag);
      lse_neg = negatives_lse<T, P>(in_.codes, T(gamma));
      psl_forward_rows_kernel<T, P><<<row_blocks(), kRowThreads, 0, stream()>>>(
          rows<T, P>(), in_.n, T(gamma), T(sigma), lse_neg.const_data_ptr<T>(), loss.mutable_data_ptr<T>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    return {loss, lse_neg};
  }

  at::Tensor psl_backward(double gamma, double sigma) const {
    at::Tensor grad_codes = in_.code_output();
    if (in_.n == 0) return grad_codes;
    dispatch_proxies(in_.codes, in_.proxies, [&](auto t_tag, auto p_tag) {
      using T = decltype(t_tag);
      using P = decltype(p_tag);
      const at::Tensor negatives = negatives_softmax_sum<T, P>(in_.codes, T(gamma));
      psl_backward_rows_kernel<T, P><<<row_blocks(), kRowThreads, 0, stream()>>>(
          rows<T, P>(), in_.n, T(gamma), T(sigma), in_.saved.const_data_ptr<T>(), in_.grad_loss.const_data_ptr<T>(),
          negatives.const_data_ptr<T>(), grad_codes.mutable_data_ptr<T>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    return grad_codes;
  }

 private:
  static cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream(); }
  unsigned int row_blocks() const { return blocks_for(in_.n, kRowThreads); }

  DeviceLabels labels() const {
    DeviceLabels l;
    l.c = in_.c;
    if (mask_.defined()) {
      l.mask = mask_.const_data_ptr<uint8_t>();
    } else {
      l.offsets = offsets_.const_data_ptr<int64_t>();
      l.indices = indices_.const_data_ptr<int64_t>();
    }
    return l;
  }

  template <typename T, typename P>
  DeviceRows<T, P> rows() const {
    return {in_.codes.const_data_ptr<T>(), in_.den.const_data_ptr<T>(), in_.separate, in_.proxies.const_data_ptr<P>(),
            labels(), in_.k};
  }

  template <typename T, typename P>
  at::Tensor negatives_lse(const at::Tensor& den, T scale) const {
    at::Tensor out = in_.row_output();
    const int tile_q = tile_proxies<P>(in_.k);
    const size_t smem = static_cast<size_t>(tile_q) * (in_.k + 1) * sizeof(P);
    negatives_lse_kernel<T, P><<<blocks_for(in_.n, kWarps), kThreads, smem, stream()>>>(
        den.const_data_ptr<T>(), in_.proxies.const_data_ptr<P>(), labels(), in_.n, in_.c, in_.k, scale, tile_q,
        out.mutable_data_ptr<T>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return out;
  }

  // (n, k): sum over each row's negatives of exp(scale den . g_q - saved lse) g_q
  template <typename T, typename P>
  at::Tensor negatives_softmax_sum(const at::Tensor& den, T scale) const {
    at::Tensor out = at::zeros({in_.n, in_.k}, den.options());
    const int tile_q = tile_proxies<P>(in_.k);
    const size_t tile_bytes =
        (static_cast<size_t>(tile_q) * (in_.k + 1) * sizeof(P) + sizeof(T) - 1) / sizeof(T) * sizeof(T);
    const size_t smem = tile_bytes + static_cast<size_t>(kWarps) * tile_q * sizeof(T);
    negatives_softmax_sum_kernel<T, P><<<blocks_for(in_.n, kWarps), kThreads, smem, stream()>>>(
        den.const_data_ptr<T>(), in_.proxies.const_data_ptr<P>(), labels(), in_.n, in_.c, in_.k, scale,
        in_.saved.const_data_ptr<T>(), tile_q, out.mutable_data_ptr<T>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return out;
  }

  LossInputs in_;
  c10::cuda::CUDAGuard guard_;
  at::Tensor mask_;              // dense labels as 0/1 bytes
  at::Tensor offsets_, indices_;  // or the caller's CSR
};

// Dense (n, c) 0/1 labels -> CSR (the labels_to_csr operator; not on the loss path: its output
// size depends on the values, so it synchronises).
std::tuple<at::Tensor, at::Tensor> labels_to_csr_cuda(const at::Tensor& labels) {
  TORCH_CHECK_VALUE(labels.dim() == 2, "labels must be 2-D (n, c), got ", labels.dim(), "-D");
  c10::cuda::CUDAGuard guard(labels.device());
  const at::Tensor positive = labels.ne(0);
  const at::Tensor bad = at::logical_and(positive, labels.ne(1));
  if (bad.any().item<bool>()) {
    const at::Tensor at_ = bad.nonzero()[0];
    const int64_t i = at_[0].item<int64_t>(), q = at_[1].item<int64_t>();
    TORCH_CHECK_VALUE(false, "labels must be 0/1, got ", labels[i][q].item<double>(), " at row ", i, ", column ", q);
  }
  const at::Tensor counts = positive.sum(1);
  const at::Tensor empty_rows = counts.eq(0).nonzero();
  const int64_t first_empty = empty_rows.size(0) ? empty_rows[0][0].item<int64_t>() : -1;
  TORCH_CHECK_VALUE(empty_rows.size(0) == 0, "labels: ", empty_rows.size(0),
                    " row(s) have no positive label (first: row ", first_empty,
                    "); every sample needs at least one label (docs/spec.md §3)");
  at::Tensor offsets = at::zeros({labels.size(0) + 1}, labels.options().dtype(at::kLong));
  offsets.narrow(0, 1, labels.size(0)).copy_(counts.cumsum(0));
  // nonzero lists (row, column) pairs in row-major order: each row's columns come out sorted
  at::Tensor indices = positive.nonzero().select(1, 1).contiguous();
  return {offsets, indices};
}

}  // namespace

TORCH_LIBRARY_IMPL(dchml, CUDA, m) {
  m.impl("labels_to_csr", &labels_to_csr_cuda);
  LossOperators<CudaLossCall>::register_kernels(m);
}

}  // namespace dchml
