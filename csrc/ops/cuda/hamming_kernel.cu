// CUDA backend of the Hamming ranker ops: distance matrix, per-query histograms (with and
// without relevance), and exact top-k by counting, stable by database index - the same results
// as the CPU engine, bit for bit. One warp per query: a histogram pass over the database with
// shared-memory counters, a cut from the histogram, then a second pass in index order where
// each warp places its 32 rows at rank prefix[d] + (rows seen at d) + (lower lanes with the
// same d, from __match_any_sync). Average precision on CUDA is composed in dchml/ops/ from
// these ops. Codes travel as 32-bit words (rows padded to a multiple of 4 bytes on the host).
#include <ATen/core/Tensor.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <tuple>

#include "core/hamming_math.h"
#include "ops/hamming_inputs.h"

namespace {

using dchml::check_packed_codes;
using dchml::check_packed_labels;
using dchml::check_topk_k;

using dchml::hamming::distance_words32;
using dchml::hamming::last_word_mask;
using dchml::hamming::shares_label_bytes;

constexpr int kWarpsPerBlock = 4;  // one query per warp
constexpr int kThreads = kWarpsPerBlock * 32;
constexpr int64_t kMaxCudaBits = 1024;  // shared-memory histograms: 4 x 1025 x 8 bytes

struct Words {
  const uint32_t* data;
  int64_t n;
  int64_t words;
};

// ------------------------------------------------------------------------------------ kernels

__global__ void distance_kernel(Words q, Words db, uint32_t last_mask, int32_t* out) {
  const int64_t total = q.n * db.n;
  for (int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; t < total; t += (int64_t)gridDim.x * blockDim.x) {
    const int64_t i = t / db.n, j = t % db.n;
    out[t] = distance_words32(q.data + i * q.words, db.data + j * db.words, q.words, last_mask);
  }
}

// hist[i, d] (and rel[i, d] when labels are given) over the whole database.
__global__ void histogram_kernel(Words q, Words db, int64_t bits, uint32_t last_mask, const uint8_t* q_labels,
                                 const uint8_t* db_labels, int64_t label_bytes, int64_t* hist_out,
                                 int64_t* rel_out) {
  extern __shared__ unsigned long long shared[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t H = bits + 1;
  unsigned long long* h = shared + (int64_t)warp * 2 * H;
  unsigned long long* r = h + H;
  for (int64_t d = lane; d < 2 * H; d += 32) h[d] = 0;
  __syncwarp();
  const int64_t i = (int64_t)blockIdx.x * kWarpsPerBlock + warp;
  if (i < q.n) {
    const uint32_t* qi = q.data + i * q.words;
    for (int64_t j = lane; j < db.n; j += 32) {
      const int d = distance_words32(qi, db.data + j * db.words, q.words, last_mask);
      atomicAdd(&h[d], 1ull);
      if (rel_out && shares_label_bytes(q_labels + i * label_bytes, db_labels + j * label_bytes, label_bytes))
        atomicAdd(&r[d], 1ull);
    }
  }
  __syncwarp();
  if (i < q.n) {
    for (int64_t d = lane; d < H; d += 32) {
      hist_out[i * H + d] = (int64_t)h[d];
      if (rel_out) rel_out[i * H + d] = (int64_t)r[d];
    }
  }
}

// Stable top-k from the histogram: next[i, d] (global scratch) = first free rank at distance d.
__global__ void topk_kernel(Words q, Words db, int64_t bits, uint32_t last_mask, int64_t k,
                            const int64_t* hist, int64_t* next, int32_t* out_dist, int64_t* out_index) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t i = (int64_t)blockIdx.x * kWarpsPerBlock + warp;
  if (i >= q.n) return;  // whole warp leaves together
  const int64_t H = bits + 1;
  const int64_t* hi = hist + i * H;
  int64_t* nx = next + i * H;
  int64_t D = bits;
  if (lane == 0) {
    int64_t cum = 0;
    D = -1;
    for (int64_t d = 0; d < H; ++d) {
      nx[d] = cum;
      if (D < 0 && cum + hi[d] >= k) D = d;
      cum += hi[d];
    }
  }
  D = __shfl_sync(0xffffffffu, D, 0);
  __syncwarp();
  const uint32_t* qi = q.data + i * q.words;
  const unsigned lower = (1u << lane) - 1u;
  for (int64_t base = 0; base < db.n; base += 32) {
    const int64_t j = base + lane;
    const bool valid = j < db.n;
    const int d = valid ? distance_words32(qi, db.data + j * db.words, q.words, last_mask) : -1;
    const bool want = valid && d <= D;
    const unsigned key = want ? (unsigned)d : 0xffffffffu;
    const unsigned peers = __match_any_sync(0xffffffffu, key);
    int64_t pos = -1;
    if (want) pos = nx[d] + __popc(peers & lower);
    __syncwarp();
    // The lowest lane of each group of equal distances advances that distance's counter.
    if (want && (peers & lower) == 0) nx[d] += __popc(peers);
    __syncwarp();
    if (want && pos < k) {  // rows at the cut distance past the k-th are dropped, in index order
      out_dist[i * k + pos] = d;
      out_index[i * k + pos] = j;
    }
  }
}

// -------------------------------------------------------------------------------- host side

at::Tensor as_words(const at::Tensor& packed) {
  // Pad rows to whole 32-bit words and reinterpret; padding bits are masked in the kernels.
  auto t = packed.contiguous();
  const int64_t pad = (4 - t.size(1) % 4) % 4;
  if (pad) t = at::constant_pad_nd(t, {0, pad}, 0);
  return t.view(at::kInt);
}

Words words_of(const at::Tensor& w) {
  return Words{reinterpret_cast<const uint32_t*>(w.data_ptr<int32_t>()), w.size(0), w.size(1)};
}

void check_codes(const at::Tensor& t, const char* name, int64_t bits) {
  TORCH_CHECK_VALUE(t.is_cuda(), name, " must be a CUDA tensor, got one on ", t.device());
  check_packed_codes(t, name, bits, kMaxCudaBits);
}

int64_t blocks_for(int64_t nq) { return (nq + kWarpsPerBlock - 1) / kWarpsPerBlock; }

size_t histogram_smem(int64_t bits) { return (size_t)kWarpsPerBlock * 2 * (bits + 1) * sizeof(unsigned long long); }

at::Tensor distance_cuda(const at::Tensor& query, const at::Tensor& db, int64_t bits) {
  check_codes(query, "query", bits);
  check_codes(db, "db", bits);
  c10::cuda::CUDAGuard guard(query.device());
  auto out = at::empty({query.size(0), db.size(0)}, query.options().dtype(at::kInt));
  if (out.numel() == 0) return out;
  auto qw = as_words(query), dw = as_words(db);
  const int64_t blocks = std::min<int64_t>((out.numel() + 255) / 256, 65535);
  distance_kernel<<<(unsigned)blocks, 256, 0, c10::cuda::getCurrentCUDAStream()>>>(
      words_of(qw), words_of(dw), last_word_mask(bits), out.data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

void launch_histogram(const at::Tensor& qw, const at::Tensor& dw, int64_t bits, const at::Tensor* ql,
                      const at::Tensor* dl, at::Tensor& hist, at::Tensor* rel) {
  const int64_t nq = qw.size(0);
  if (nq == 0) return;
  // Over 48 KiB of dynamic shared memory (long codes) must be opted into per kernel.
  C10_CUDA_CHECK(cudaFuncSetAttribute(histogram_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      (int)histogram_smem(bits)));
  histogram_kernel<<<(unsigned)blocks_for(nq), kThreads, histogram_smem(bits), c10::cuda::getCurrentCUDAStream()>>>(
      words_of(qw), words_of(dw), bits, last_word_mask(bits), ql ? ql->data_ptr<uint8_t>() : nullptr,
      dl ? dl->data_ptr<uint8_t>() : nullptr, ql ? ql->size(1) : 0, hist.data_ptr<int64_t>(),
      rel ? rel->data_ptr<int64_t>() : nullptr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor histogram_cuda(const at::Tensor& query, const at::Tensor& db, int64_t bits) {
  check_codes(query, "query", bits);
  check_codes(db, "db", bits);
  c10::cuda::CUDAGuard guard(query.device());
  auto hist = at::zeros({query.size(0), bits + 1}, query.options().dtype(at::kLong));
  if (db.size(0) == 0) return hist;
  auto qw = as_words(query), dw = as_words(db);
  launch_histogram(qw, dw, bits, nullptr, nullptr, hist, nullptr);
  return hist;
}

std::tuple<at::Tensor, at::Tensor> histogram_relevant_cuda(const at::Tensor& query, const at::Tensor& db,
                                                           int64_t bits, const at::Tensor& query_labels,
                                                           const at::Tensor& db_labels) {
  check_codes(query, "query", bits);
  check_codes(db, "db", bits);
  TORCH_CHECK_VALUE(query_labels.is_cuda() && db_labels.is_cuda(), "labels must be CUDA tensors");
  check_packed_labels(query_labels, db_labels, query.size(0), db.size(0));
  c10::cuda::CUDAGuard guard(query.device());
  auto hist = at::zeros({query.size(0), bits + 1}, query.options().dtype(at::kLong));
  auto rel = at::zeros({query.size(0), bits + 1}, query.options().dtype(at::kLong));
  if (db.size(0) == 0) return {hist, rel};
  auto qw = as_words(query), dw = as_words(db);
  auto ql = query_labels.contiguous(), dl = db_labels.contiguous();
  launch_histogram(qw, dw, bits, &ql, &dl, hist, &rel);
  return {hist, rel};
}

std::tuple<at::Tensor, at::Tensor> topk_cuda(const at::Tensor& query, const at::Tensor& db, int64_t bits,
                                             int64_t k) {
  check_codes(query, "query", bits);
  check_codes(db, "db", bits);
  check_topk_k(k, db.size(0));
  c10::cuda::CUDAGuard guard(query.device());
  const int64_t nq = query.size(0);
  auto dist = at::empty({nq, k}, query.options().dtype(at::kInt));
  auto index = at::empty({nq, k}, query.options().dtype(at::kLong));
  if (nq == 0) return {dist, index};
  auto qw = as_words(query), dw = as_words(db);
  auto hist = at::zeros({nq, bits + 1}, query.options().dtype(at::kLong));
  launch_histogram(qw, dw, bits, nullptr, nullptr, hist, nullptr);
  auto next = at::empty({nq, bits + 1}, query.options().dtype(at::kLong));
  topk_kernel<<<(unsigned)blocks_for(nq), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      words_of(qw), words_of(dw), bits, last_word_mask(bits), k, hist.data_ptr<int64_t>(),
      next.data_ptr<int64_t>(), dist.data_ptr<int32_t>(), index.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {dist, index};
}

}  // namespace

TORCH_LIBRARY_IMPL(dchml, CUDA, m) {
  m.impl("hamming_distance", &distance_cuda);
  m.impl("hamming_histogram", &histogram_cuda);
  m.impl("hamming_histogram_relevant", &histogram_relevant_cuda);
  m.impl("hamming_topk", &topk_cuda);
}
