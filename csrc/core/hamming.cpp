// The Hamming engine's geometry, tiles and public functions (API in hamming.h; the ranking itself
// is hamming_rank.cpp, the AP arithmetic hamming_ap.cpp, shared internals hamming_engine.h).
#include <algorithm>
#include <cstring>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "core/hamming_engine.h"

namespace dchml {
namespace hamming {
namespace engine {

// ----------------------------------------------------------------------------------- geometry

Geometry make_geometry(int64_t bits, int64_t nbytes) {
  Geometry g;
  g.bits = bits;
  g.nbytes = nbytes;
  g.words = std::max<int64_t>(1, (nbytes + 7) / 8);
  // A tile of up to 32 KiB stays in L1/L2 while a block of queries reuses it.
  g.T = g.words <= 4 ? 1024 : std::max<int64_t>(64, (4096 / g.words) / 32 * 32);
  g.last_mask = (bits % 8) ? (uint8_t)((1u << (bits % 8)) - 1) : (uint8_t)0xff;
  g.kernels = detail::kernels_for(active_isa(), g.words);
  return g;
}

void load_row(const uint8_t* row, const Geometry& g, uint64_t* w) {
  if (g.nbytes == 8) {
    std::memcpy(w, row, 8);
  } else {
    std::memset(w, 0, (size_t)g.words * 8);
    std::memcpy(w, row, (size_t)g.nbytes);
  }
  if (g.last_mask != 0xff) {
    uint8_t* bytes = reinterpret_cast<uint8_t*>(w);
    bytes[g.nbytes - 1] &= g.last_mask;
  }
}

void fill_tile(const Rows& db, const Geometry& g, int64_t j0, int64_t count, uint64_t* tile) {
  uint64_t tmp[1024];
  std::vector<uint64_t> big;
  uint64_t* w = tmp;
  if (g.words > 1024) {
    big.resize((size_t)g.words);
    w = big.data();
  }
  if (g.words == 1 && g.nbytes == 8 && g.last_mask == 0xff) {
    std::memcpy(tile, db.data + j0 * 8, (size_t)count * 8);
  } else {
    for (int64_t jj = 0; jj < count; ++jj) {
      load_row(db.data + (j0 + jj) * g.nbytes, g, w);
      for (int64_t k = 0; k < g.words; ++k) tile[k * g.T + jj] = w[k];
    }
  }
  for (int64_t k = 0; k < g.words; ++k)
    for (int64_t jj = count; jj < g.T; ++jj) tile[k * g.T + jj] = 0;
}

static int num_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

int64_t block_size(int64_t nq, int64_t cap) {
  const int64_t per_thread = (nq + num_threads() - 1) / num_threads();
  return std::max<int64_t>(1, std::min<int64_t>(cap, per_thread));
}

Problem make_problem(Rows q, Rows db, int64_t bits, int64_t k) {
  Problem P;
  P.q = q;
  P.db = db;
  P.bits = bits;
  P.k = k;
  P.g = make_geometry(bits, q.nbytes);
  return P;
}

Cut find_cut(const int64_t* hist, int64_t bits, int64_t k) {
  int64_t cum = 0;
  for (int64_t d = 0; d <= bits; ++d) {
    if (cum + hist[d] >= k) return {d, k - cum};
    cum += hist[d];
  }
  return {bits, hist[bits]};  // unreachable when k <= total
}

// With eight uint32 sub-histograms per query so that runs of equal distances do not serialise on one
// counter (a load-add-store chain through store forwarding); folded into int64 before any
// sub-histogram could reach 2^32.
void stream_histograms(const Problem& P, const std::vector<int64_t>& qs,
                       const std::vector<uint64_t>& qwords, std::vector<int64_t>& hist) {
  constexpr int S = 8;
  const Geometry& g = P.g;
  const int64_t B = (int64_t)qs.size(), H = P.bits + 1;
  hist.assign((size_t)B * H, 0);
  std::vector<uint32_t> sub((size_t)B * S * H, 0);
  std::vector<uint64_t> tile((size_t)g.words * g.T);
  std::vector<uint16_t> dbuf((size_t)g.T + 32);
  auto fold = [&]() {
    for (int64_t b = 0; b < B; ++b)
      for (int s = 0; s < S; ++s)
        for (int64_t d = 0; d < H; ++d) {
          uint32_t& c = sub[((size_t)b * S + s) * H + d];
          hist[b * H + d] += c;
          c = 0;
        }
  };
  int64_t since_fold = 0;
  for (int64_t j0 = 0; j0 < P.db.n; j0 += g.T) {
    const int64_t count = std::min(g.T, P.db.n - j0);
    fill_tile(P.db, g, j0, count, tile.data());
    for (int64_t b = 0; b < B; ++b) {
      g.kernels.distances(tile.data(), g.words, g.T, &qwords[(size_t)b * g.words], dbuf.data());
      uint32_t* h = &sub[(size_t)b * S * H];
      const uint16_t* d = dbuf.data();
      int64_t jj = 0;
      for (; jj + S <= count; jj += S)
        for (int s = 0; s < S; ++s) ++h[s * H + d[jj + s]];
      for (; jj < count; ++jj) ++h[d[jj]];
    }
    since_fold += count;
    if (since_fold >= ((int64_t)1 << 31)) {
      fold();
      since_fold = 0;
    }
  }
  fold();
}

void load_queries(const Problem& P, const std::vector<int64_t>& qs, std::vector<uint64_t>& qwords) {
  qwords.assign(qs.size() * (size_t)P.g.words, 0);
  for (size_t b = 0; b < qs.size(); ++b) load_row(P.q.data + qs[b] * P.q.nbytes, P.g, &qwords[b * P.g.words]);
}

}  // namespace engine

// ------------------------------------------------------------------------------------- public

using engine::block_size;
using engine::fill_tile;
using engine::Geometry;
using engine::load_queries;
using engine::make_problem;
using engine::Problem;
using engine::stream_histograms;

bool shares_label(const uint8_t* a, const uint8_t* b, int64_t nbytes) {
  int64_t i = 0;
  for (; i + 8 <= nbytes; i += 8) {
    uint64_t x, y;
    std::memcpy(&x, a + i, 8);
    std::memcpy(&y, b + i, 8);
    if (x & y) return true;
  }
  for (; i < nbytes; ++i)
    if (a[i] & b[i]) return true;
  return false;
}

namespace {

// OpenMP over blocks of up to 64 queries; `body(qs)` gets one block's query indices.
template <class Body>
void for_each_query_block(int64_t nq, Body&& body) {
  const int64_t B = block_size(nq, 64);
  const int64_t nblocks = (nq + B - 1) / B;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t blk = 0; blk < nblocks; ++blk) {
    std::vector<int64_t> qs;
    for (int64_t i = blk * B; i < std::min(nq, (blk + 1) * B); ++i) qs.push_back(i);
    body(qs);
  }
}

// The plain pass behind the distance matrix and the relevance histogram (ranking has fused passes
// of its own): streams the database tile by tile once per block of queries and hands each query's
// distances to the tile to `visit(query, j0, count, dists)`.
template <class Visit>
void stream_tile_distances(const Problem& P, const std::vector<int64_t>& qs, Visit&& visit) {
  const Geometry& g = P.g;
  std::vector<uint64_t> qwords, tile((size_t)g.words * g.T);
  std::vector<uint16_t> dbuf((size_t)g.T + 32);
  load_queries(P, qs, qwords);
  for (int64_t j0 = 0; j0 < P.db.n; j0 += g.T) {
    const int64_t count = std::min(g.T, P.db.n - j0);
    fill_tile(P.db, g, j0, count, tile.data());
    for (size_t b = 0; b < qs.size(); ++b) {
      g.kernels.distances(tile.data(), g.words, g.T, &qwords[b * g.words], dbuf.data());
      visit(qs[b], j0, count, dbuf.data());
    }
  }
}

}  // namespace

void distance_matrix(Rows q, Rows db, int64_t bits, int32_t* out) {
  if (q.n == 0 || db.n == 0) return;
  const Problem P = make_problem(q, db, bits, 1);
  for_each_query_block(q.n, [&](const std::vector<int64_t>& qs) {
    stream_tile_distances(P, qs, [&](int64_t i, int64_t j0, int64_t count, const uint16_t* d) {
      int32_t* row = out + i * db.n + j0;
      for (int64_t jj = 0; jj < count; ++jj) row[jj] = d[jj];
    });
  });
}

void histogram(Rows q, Rows db, int64_t bits, int64_t* out) {
  const int64_t H = bits + 1;
  std::fill(out, out + q.n * H, 0);
  if (q.n == 0 || db.n == 0) return;
  const Problem P = make_problem(q, db, bits, 1);
  for_each_query_block(q.n, [&](const std::vector<int64_t>& qs) {
    std::vector<uint64_t> qwords;
    std::vector<int64_t> hist;
    load_queries(P, qs, qwords);
    stream_histograms(P, qs, qwords, hist);
    std::copy(hist.begin(), hist.end(), out + qs.front() * H);
  });
}

void histogram_relevant(Rows q, Rows db, int64_t bits, Rows q_labels, Rows db_labels,
                        int64_t* out_all, int64_t* out_rel) {
  const int64_t H = bits + 1;
  std::fill(out_all, out_all + q.n * H, 0);
  std::fill(out_rel, out_rel + q.n * H, 0);
  if (q.n == 0 || db.n == 0) return;
  const Problem P = make_problem(q, db, bits, 1);
  const int64_t lb = q_labels.nbytes;
  for_each_query_block(q.n, [&](const std::vector<int64_t>& qs) {
    stream_tile_distances(P, qs, [&](int64_t i, int64_t j0, int64_t count, const uint16_t* d) {
      int64_t* ha = out_all + i * H;
      int64_t* hr = out_rel + i * H;
      const uint8_t* ql = q_labels.data + i * lb;
      for (int64_t jj = 0; jj < count; ++jj) {
        ++ha[d[jj]];
        hr[d[jj]] += shares_label(ql, db_labels.data + (j0 + jj) * lb, lb);
      }
    });
  });
}

void topk(Rows q, Rows db, int64_t bits, int64_t k, int32_t* out_dist, int64_t* out_index, RankStats* stats) {
  struct Direct : engine::Sink {
    int32_t* d;
    int64_t* x;
    int64_t k;
    int32_t* dist_out(int64_t i) override { return d + i * k; }
    int64_t* index_out(int64_t i) override { return x + i * k; }
    void done(int64_t, const int32_t*, const int64_t*, int64_t, int64_t, int64_t) override {}
  } sink;
  sink.d = out_dist;
  sink.x = out_index;
  sink.k = k;
  if (k <= 0 || db.n == 0) return;
  Problem P = make_problem(q, db, bits, std::min(k, db.n));
  RankStats call;
  engine::rank_all(P, sink, stats ? *stats : call);
}

void average_precision(Rows q, Rows db, int64_t bits, int64_t k, Rows q_labels, Rows db_labels,
                       bool expected, double* out_ap, RankStats* stats) {
  std::fill(out_ap, out_ap + q.n, 0.0);
  if (q.n == 0 || db.n == 0 || k <= 0) return;
  Problem P = make_problem(q, db, bits, std::min(k, db.n));
  P.labels.q = q_labels.data;
  P.labels.db = db_labels.data;
  P.labels.nbytes = q_labels.nbytes;
  P.count_cut_relevant = expected;
  struct ApSink : engine::Sink {
    const Problem* P;
    double* ap;
    bool expected;
    void done(int64_t i, const int32_t* dist, const int64_t* index, int64_t k, int64_t cut_total,
              int64_t cut_relevant) override {
      thread_local std::vector<uint8_t> rel;
      rel.resize((size_t)k);
      const engine::LabelView& L = P->labels;
      const uint8_t* ql = L.q + i * L.nbytes;
      // The label rows of the top k are scattered over the database: prefetch a few ranks ahead.
      constexpr int64_t ahead = 16;
      for (int64_t r = 0; r < std::min(k, ahead); ++r) __builtin_prefetch(L.db + index[r] * L.nbytes);
      for (int64_t r = 0; r < k; ++r) {
        if (r + ahead < k) __builtin_prefetch(L.db + index[r + ahead] * L.nbytes);
        rel[r] = shares_label(ql, L.db + index[r] * L.nbytes, L.nbytes);
      }
      ap[i] = ap_from_ranking(dist, rel.data(), k, cut_total, cut_relevant, expected);
    }
  } sink;
  sink.P = &P;
  sink.ap = out_ap;
  sink.expected = expected;
  RankStats call;
  engine::rank_all(P, sink, stats ? *stats : call);
}

void pack_rows(const float* values, int64_t n, int64_t bits, uint8_t* out) {
  const int64_t nb = (bits + 7) / 8;
  std::memset(out, 0, (size_t)(n * nb));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < bits; ++j)
      if (values[i * bits + j] > 0) out[i * nb + j / 8] |= (uint8_t)(1u << (j % 8));
}

void unpack_rows(const uint8_t* packed, int64_t n, int64_t bits, float* out) {
  const int64_t nb = (bits + 7) / 8;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < bits; ++j)
      out[i * bits + j] = (packed[i * nb + j / 8] >> (j % 8)) & 1 ? 1.0f : -1.0f;
}

}  // namespace hamming
}  // namespace dchml
