// CUDA kernels of the loss operators (schemas in ops/mds_loss.cpp), mirroring the CPU tiled path:
//   negatives_lse:          per row, logsumexp over the negatives q of scale * (den_i . g_q)
//   negatives_softmax_sum:  per row, sum over negatives of exp(scale * den_i . g_q - lse_i) g_q
// and small per-row kernels that combine them with the positives (surrogate, PSLDH terms) using
// the shared row math of core/mds_loss.h.
//
// Layout: a block holds 8 warps, one row each; the block stages a tile of proxies in shared memory
// (row stride k + 1 against bank conflicts) so each proxy load serves 8 rows. In the forward pass
// a lane owns a proxy (an in-register dot over k, an online log-sum-exp per lane, merged across the
// warp by shuffles); in the backward pass a lane first turns its proxies' scores into softmax
// weights (in shared memory), then owns output columns j and accumulates weights @ tile. Positives
// are skipped by a binary search in the row's sorted positive list. No (n x c) tensor exists.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "core/mds_loss.h"
#include "ops/mds_loss_checks.h"

namespace dchml {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kMaxTile = 256;             // proxies per shared-memory tile
constexpr int64_t kTileBytes = 32 * 1024;  // + kWarps * kMaxTile weights: under the 48 KiB default

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
__device__ T tile_dot(const T* b, const P* g, int64_t k) {
  T acc = T(0);
  for (int64_t j = 0; j < k; ++j) acc += b[j] * static_cast<T>(g[j]);
  return acc;
}

template <typename T, typename P>
__global__ void negatives_lse_kernel(const T* __restrict__ den, const P* __restrict__ proxies,
                                     const int64_t* __restrict__ offsets, const int64_t* __restrict__ indices, int64_t n,
                                     int64_t c, int64_t k, T scale, int tile_q, T* __restrict__ out) {
  extern __shared__ unsigned char smem[];
  P* tile = reinterpret_cast<P*>(smem);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  const bool active = row < n;
  const int64_t* pos = active ? indices + offsets[row] : nullptr;
  const int64_t npos = active ? offsets[row + 1] - offsets[row] : 0;
  const T* b = den + (active ? row : 0) * k;
  OnlineLse<T> s = lse_empty<T>();
  for (int64_t q0 = 0; q0 < c; q0 += tile_q) {
    const int64_t cols = std::min<int64_t>(tile_q, c - q0);
    __syncthreads();  // the previous tile is no longer read
    stage_tile(tile, proxies, q0, cols, k);
    __syncthreads();
    if (active) {
      for (int64_t t = lane; t < cols; t += 32) {
        if (sorted_contains(pos, npos, q0 + t)) continue;
        lse_push(s, scale * tile_dot(b, tile + t * (k + 1), k));
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
                                             const int64_t* __restrict__ offsets, const int64_t* __restrict__ indices,
                                             int64_t n, int64_t c, int64_t k, T scale, const T* __restrict__ lse,
                                             int tile_q, T* __restrict__ out) {
  extern __shared__ unsigned char smem[];
  P* tile = reinterpret_cast<P*>(smem);
  // weights after the tile, aligned for T
  const size_t tile_bytes = (static_cast<size_t>(tile_q) * (k + 1) * sizeof(P) + sizeof(T) - 1) / sizeof(T) * sizeof(T);
  T* weights = reinterpret_cast<T*>(smem + tile_bytes);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  const bool active = row < n;
  const int64_t* pos = active ? indices + offsets[row] : nullptr;
  const int64_t npos = active ? offsets[row + 1] - offsets[row] : 0;
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
        w[t] = sorted_contains(pos, npos, q0 + t) ? T(0)
                                                   : softmax_weight(scale * tile_dot(b, tile + t * (k + 1), k), row_lse);
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

// mean over the row's positives of b . g_e (one thread per row; |P| k is small).
template <typename T, typename P>
__device__ T mean_positive_dot(const T* b, const P* proxies, const int64_t* pos, int64_t npos, int64_t k) {
  T acc = T(0);
  for (int64_t e = 0; e < npos; ++e) acc += tile_dot(b, proxies + pos[e] * k, k);
  return acc / T(npos);
}

template <typename T, typename P>
__global__ void mds_forward_rows_kernel(const T* codes, const T* den, const P* proxies, const int64_t* offsets,
                                        const int64_t* indices, int64_t n, int64_t k, T eta, T mu,
                                        const T* neg_lse, T* loss, T* lse) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int64_t* pos = indices + offsets[i];
  const int64_t npos = offsets[i + 1] - offsets[i];
  const T u_num = surrogate_score(mean_positive_dot(codes + i * k, proxies, pos, npos, k), mu, k);
  const T u_den = den == codes ? u_num : surrogate_score(mean_positive_dot(den + i * k, proxies, pos, npos, k), mu, k);
  const T l = log_add_exp(eta * u_den, neg_lse[i]);
  lse[i] = l;
  loss[i] = mds_row_loss(eta, u_num, l);
}

// grad_den holds sum_q p_q g_q on entry (negatives_softmax_sum); on exit the row gradients.
template <typename T, typename P>
__global__ void mds_backward_rows_kernel(const T* den, const P* proxies, const int64_t* offsets, const int64_t* indices,
                                         int64_t n, int64_t k, T eta, T mu, const T* lse, const T* grad_loss,
                                         T* grad_codes, T* grad_den, bool separate) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int64_t* pos = indices + offsets[i];
  const int64_t npos = offsets[i + 1] - offsets[i];
  const T u_den = surrogate_score(mean_positive_dot(den + i * k, proxies, pos, npos, k), mu, k);
  const MdsGradCoefficients<T> co = mds_grad_coefficients(eta, grad_loss[i], softmax_weight(eta * u_den, lse[i]));
  for (int64_t j = 0; j < k; ++j) {
    T gbar = T(0);
    for (int64_t e = 0; e < npos; ++e) gbar += static_cast<T>(proxies[pos[e] * k + j]);
    gbar /= T(npos);
    const T den_part = co.denominator_gbar * gbar + co.denominator_scale * grad_den[i * k + j];
    if (separate) {
      grad_den[i * k + j] = den_part;
      grad_codes[i * k + j] = co.numerator_gbar * gbar;
    } else {
      grad_codes[i * k + j] = co.numerator_gbar * gbar + den_part;
    }
  }
}

template <typename T, typename P>
__global__ void psl_forward_rows_kernel(const T* codes, const P* proxies, const int64_t* offsets, const int64_t* indices,
                                        int64_t n, int64_t k, T gamma, T sigma, const T* lse_neg, T* loss) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int64_t* pos = indices + offsets[i];
  const int64_t npos = offsets[i + 1] - offsets[i];
  T acc = T(0);
  for (int64_t e = 0; e < npos; ++e)
    acc += psl_positive_term(psl_positive_logit(gamma, sigma, tile_dot(codes + i * k, proxies + pos[e] * k, k), k),
                             lse_neg[i]);
  loss[i] = acc / T(npos);
}

// grad holds sum_q pi_q g_q on entry; on exit the row gradient (see core/mds_loss.h, PSLDH).
template <typename T, typename P>
__global__ void psl_backward_rows_kernel(const T* codes, const P* proxies, const int64_t* offsets,
                                         const int64_t* indices, int64_t n, int64_t k, T gamma, T sigma,
                                         const T* lse_neg, const T* grad_loss, T* grad) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int64_t* pos = indices + offsets[i];
  const int64_t npos = offsets[i + 1] - offsets[i];
  const T scale = gamma * grad_loss[i] / T(npos);
  const bool has_negatives = lse_neg[i] != neg_infinity<T>();
  T negative_mass = T(0);
  for (int64_t e = 0; e < npos; ++e)
    negative_mass += T(1) - psl_positive_weight(
                                psl_positive_logit(gamma, sigma, tile_dot(codes + i * k, proxies + pos[e] * k, k), k),
                                lse_neg[i]);
  for (int64_t j = 0; j < k; ++j) {
    T acc = has_negatives ? scale * negative_mass * grad[i * k + j] : T(0);
    for (int64_t e = 0; e < npos; ++e) {
      const P* g = proxies + pos[e] * k;
      const T w = psl_positive_weight(psl_positive_logit(gamma, sigma, tile_dot(codes + i * k, g, k), k), lse_neg[i]);
      acc += scale * (w - T(1)) * static_cast<T>(g[j]);
    }
    grad[i * k + j] = acc;
  }
}

// ---- launchers ----

unsigned int row_blocks(int64_t n, int64_t per_block) { return static_cast<unsigned int>((n + per_block - 1) / per_block); }

template <typename T, typename P>
at::Tensor launch_negatives_lse(const at::Tensor& den, const at::Tensor& proxies, const at::Tensor& offsets,
                                const at::Tensor& indices, T scale) {
  const int64_t n = den.size(0), k = den.size(1), c = proxies.size(0);
  at::Tensor out = at::empty({n}, den.options());
  const int tile_q = tile_proxies<P>(k);
  const size_t smem = static_cast<size_t>(tile_q) * (k + 1) * sizeof(P);
  auto stream = c10::cuda::getCurrentCUDAStream();
  negatives_lse_kernel<T, P><<<row_blocks(n, kWarps), kThreads, smem, stream>>>(
      den.const_data_ptr<T>(), proxies.const_data_ptr<P>(), offsets.const_data_ptr<int64_t>(),
      indices.const_data_ptr<int64_t>(), n, c, k, scale, tile_q, out.mutable_data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

template <typename T, typename P>
at::Tensor launch_negatives_softmax_sum(const at::Tensor& den, const at::Tensor& proxies, const at::Tensor& offsets,
                                        const at::Tensor& indices, T scale, const at::Tensor& lse) {
  const int64_t n = den.size(0), k = den.size(1), c = proxies.size(0);
  at::Tensor out = at::zeros({n, k}, den.options());
  const int tile_q = tile_proxies<P>(k);
  const size_t tile_bytes = (static_cast<size_t>(tile_q) * (k + 1) * sizeof(P) + sizeof(T) - 1) / sizeof(T) * sizeof(T);
  const size_t smem = tile_bytes + static_cast<size_t>(kWarps) * tile_q * sizeof(T);
  auto stream = c10::cuda::getCurrentCUDAStream();
  negatives_softmax_sum_kernel<T, P><<<row_blocks(n, kWarps), kThreads, smem, stream>>>(
      den.const_data_ptr<T>(), proxies.const_data_ptr<P>(), offsets.const_data_ptr<int64_t>(),
      indices.const_data_ptr<int64_t>(), n, c, k, scale, lse.const_data_ptr<T>(), tile_q, out.mutable_data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

void check_plus_minus_one(const at::Tensor& proxies) {
  const at::Tensor bad = at::logical_and(proxies.ne(1), proxies.ne(-1));
  if (bad.any().item<bool>()) {
    const int64_t flat = bad.flatten().nonzero().select(1, 0)[0].item<int64_t>();
    TORCH_CHECK_VALUE(false, "proxies must be +1/-1, got ", proxies.flatten()[flat].item<double>(), " at row ",
                      flat / proxies.size(1), ", column ", flat % proxies.size(1));
  }
}

constexpr int kRowThreads = 128;

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
  TORCH_CHECK_VALUE(empty_rows.size(0) == 0, "labels: ", empty_rows.size(0),
                    " row(s) have no positive label (first: row ", empty_rows.size(0) ? empty_rows[0][0].item<int64_t>() : -1,
                    "); every sample needs at least one label (METHOD.md §3)");
  at::Tensor offsets = at::zeros({labels.size(0) + 1}, labels.options().dtype(at::kLong));
  offsets.narrow(0, 1, labels.size(0)).copy_(counts.cumsum(0));
  // nonzero lists (row, column) pairs in row-major order: each row's columns come out sorted
  at::Tensor indices = positive.nonzero().select(1, 1).contiguous();
  return {offsets, indices};
}

std::tuple<at::Tensor, at::Tensor> mds_loss_cuda(const at::Tensor& codes_in, const std::optional<at::Tensor>& other_in,
                                                 const at::Tensor& proxies_in, const at::Tensor& labels_in,
                                                 const std::optional<at::Tensor>& indices_in, double eta, double mu) {
  check_loss_inputs(codes_in, other_in, proxies_in, labels_in, indices_in);
  c10::cuda::CUDAGuard guard(codes_in.device());
  const at::Tensor codes = codes_in.contiguous(), proxies = proxies_in.contiguous();
  at::Tensor offsets, indices;  // (not a structured binding: lambdas below capture them, C++17)
  std::tie(offsets, indices) = csr_labels(labels_in, indices_in, labels_to_csr_cuda);
  const at::Tensor den = other_in.has_value() ? other_in->contiguous() : codes;
  const int64_t n = codes.size(0), k = codes.size(1);
  at::Tensor loss = at::empty({n}, codes.options()), lse = at::empty({n}, codes.options());
  if (n == 0) return {loss, lse};
  check_plus_minus_one(proxies);
  dispatch_proxies(codes, proxies, [&](auto t_tag, auto p_tag) {
    using T = decltype(t_tag);
    using P = decltype(p_tag);
    const at::Tensor neg_lse = launch_negatives_lse<T, P>(den, proxies, offsets, indices, T(eta));
    mds_forward_rows_kernel<T, P><<<row_blocks(n, kRowThreads), kRowThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        codes.const_data_ptr<T>(), den.const_data_ptr<T>(), proxies.const_data_ptr<P>(),
        offsets.const_data_ptr<int64_t>(), indices.const_data_ptr<int64_t>(), n, k, T(eta), T(mu),
        neg_lse.const_data_ptr<T>(), loss.mutable_data_ptr<T>(), lse.mutable_data_ptr<T>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {loss, lse};
}

std::tuple<at::Tensor, at::Tensor> mds_loss_backward_cuda(const at::Tensor& grad_loss_in, const at::Tensor& codes_in,
                                                          const std::optional<at::Tensor>& other_in,
                                                          const at::Tensor& proxies_in, const at::Tensor& labels_in,
                                                          const std::optional<at::Tensor>& indices_in, const at::Tensor& lse_in,
                                                          double eta, double mu) {
  check_loss_inputs(codes_in, other_in, proxies_in, labels_in, indices_in);
  check_row_vector("grad_loss", grad_loss_in, codes_in);
  check_row_vector("lse", lse_in, codes_in);
  c10::cuda::CUDAGuard guard(codes_in.device());
  const at::Tensor codes = codes_in.contiguous(), proxies = proxies_in.contiguous();
  at::Tensor offsets, indices;  // (not a structured binding: lambdas below capture them, C++17)
  std::tie(offsets, indices) = csr_labels(labels_in, indices_in, labels_to_csr_cuda);
  const at::Tensor grad_loss = grad_loss_in.contiguous(), lse = lse_in.contiguous();
  const bool separate = other_in.has_value();
  const at::Tensor den = separate ? other_in->contiguous() : codes;
  const int64_t n = codes.size(0), k = codes.size(1);
  at::Tensor grad_codes = at::empty({n, k}, codes.options());
  at::Tensor grad_other;
  if (n == 0) return {grad_codes, at::empty({separate ? n : 0, k}, codes.options())};
  dispatch_proxies(codes, proxies, [&](auto t_tag, auto p_tag) {
    using T = decltype(t_tag);
    using P = decltype(p_tag);
    at::Tensor grad_den = launch_negatives_softmax_sum<T, P>(den, proxies, offsets, indices, T(eta), lse);
    mds_backward_rows_kernel<T, P><<<row_blocks(n, kRowThreads), kRowThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        den.const_data_ptr<T>(), proxies.const_data_ptr<P>(), offsets.const_data_ptr<int64_t>(),
        indices.const_data_ptr<int64_t>(), n, k, T(eta), T(mu), lse.const_data_ptr<T>(), grad_loss.const_data_ptr<T>(),
        grad_codes.mutable_data_ptr<T>(), grad_den.mutable_data_ptr<T>(), separate);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    grad_other = separate ? grad_den : at::empty({0, k}, codes.options());
  });
  return {grad_codes, grad_other};
}

std::tuple<at::Tensor, at::Tensor> partial_softmax_loss_cuda(const at::Tensor& codes_in, const at::Tensor& proxies_in,
                                                             const at::Tensor& labels_in, const std::optional<at::Tensor>& indices_in,
                                                             double gamma, double sigma) {
  check_loss_inputs(codes_in, std::nullopt, proxies_in, labels_in, indices_in);
  c10::cuda::CUDAGuard guard(codes_in.device());
  const at::Tensor codes = codes_in.contiguous(), proxies = proxies_in.contiguous();
  at::Tensor offsets, indices;  // (not a structured binding: lambdas below capture them, C++17)
  std::tie(offsets, indices) = csr_labels(labels_in, indices_in, labels_to_csr_cuda);
  const int64_t n = codes.size(0), k = codes.size(1);
  at::Tensor loss = at::empty({n}, codes.options());
  at::Tensor lse_neg = at::empty({n}, codes.options());
  if (n == 0) return {loss, lse_neg};
  check_plus_minus_one(proxies);
  dispatch_proxies(codes, proxies, [&](auto t_tag, auto p_tag) {
    using T = decltype(t_tag);
    using P = decltype(p_tag);
    lse_neg = launch_negatives_lse<T, P>(codes, proxies, offsets, indices, T(gamma));
    psl_forward_rows_kernel<T, P><<<row_blocks(n, kRowThreads), kRowThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        codes.const_data_ptr<T>(), proxies.const_data_ptr<P>(), offsets.const_data_ptr<int64_t>(),
        indices.const_data_ptr<int64_t>(), n, k, T(gamma), T(sigma), lse_neg.const_data_ptr<T>(),
        loss.mutable_data_ptr<T>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {loss, lse_neg};
}

at::Tensor partial_softmax_loss_backward_cuda(const at::Tensor& grad_loss_in, const at::Tensor& codes_in,
                                              const at::Tensor& proxies_in, const at::Tensor& labels_in,
                                              const std::optional<at::Tensor>& indices_in, const at::Tensor& lse_neg_in, double gamma,
                                              double sigma) {
  check_loss_inputs(codes_in, std::nullopt, proxies_in, labels_in, indices_in);
  check_row_vector("grad_loss", grad_loss_in, codes_in);
  check_row_vector("lse_neg", lse_neg_in, codes_in);
  c10::cuda::CUDAGuard guard(codes_in.device());
  const at::Tensor codes = codes_in.contiguous(), proxies = proxies_in.contiguous();
  at::Tensor offsets, indices;  // (not a structured binding: lambdas below capture them, C++17)
  std::tie(offsets, indices) = csr_labels(labels_in, indices_in, labels_to_csr_cuda);
  const at::Tensor grad_loss = grad_loss_in.contiguous(), lse_neg = lse_neg_in.contiguous();
  const int64_t n = codes.size(0), k = codes.size(1);
  if (n == 0) return at::empty({n, k}, codes.options());
  at::Tensor grad;
  dispatch_proxies(codes, proxies, [&](auto t_tag, auto p_tag) {
    using T = decltype(t_tag);
    using P = decltype(p_tag);
    grad = launch_negatives_softmax_sum<T, P>(codes, proxies, offsets, indices, T(gamma), lse_neg);
    psl_backward_rows_kernel<T, P><<<row_blocks(n, kRowThreads), kRowThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        codes.const_data_ptr<T>(), proxies.const_data_ptr<P>(), offsets.const_data_ptr<int64_t>(),
        indices.const_data_ptr<int64_t>(), n, k, T(gamma), T(sigma), lse_neg.const_data_ptr<T>(),
        grad_loss.const_data_ptr<T>(), grad.mutable_data_ptr<T>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(dchml, CUDA, m) {
  m.impl("labels_to_csr", &labels_to_csr_cuda);
  m.impl("mds_loss", &mds_loss_cuda);
  m.impl("mds_loss_backward", &mds_loss_backward_cuda);
  m.impl("partial_softmax_loss", &partial_softmax_loss_cuda);
  m.impl("partial_softmax_loss_backward", &partial_softmax_loss_backward_cuda);
}

}  // namespace dchml
