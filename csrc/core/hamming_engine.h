// Internals shared by the Hamming engine's files (not an API): the geometry of packed codes in
// word-major tiles, one ranking problem, where ranked queries go, and the streaming passes.
//   hamming.cpp       geometry, tiles, the public functions of hamming.h
//   hamming_rank.cpp  top-k by counting: the exact and the fast path (rank_all)
//   hamming_ap.cpp    AP@K arithmetic, by index and tie-aware expected
#pragma once

#include <cstdint>
#include <vector>

#include "core/hamming.h"
#include "core/hamming_simd.h"

namespace dchml {
namespace hamming {
namespace engine {

struct Geometry {
  int64_t bits = 0;
  int64_t nbytes = 0;
  int64_t words = 0;  // 64-bit words per code
  int64_t T = 0;      // rows per tile, multiple of 32
  uint8_t last_mask = 0xff;
  detail::Kernels kernels{};
};

Geometry make_geometry(int64_t bits, int64_t nbytes);

// Row -> zero-padded words, padding bits of the last byte cleared.
void load_row(const uint8_t* row, const Geometry& g, uint64_t* w);

// Rows [j0, j0 + count) of `db` into a word-major tile of g.T rows (zero rows past count).
void fill_tile(const Rows& db, const Geometry& g, int64_t j0, int64_t count, uint64_t* tile);

// Queries per block: enough to reuse each tile many times, few enough to keep every thread busy.
int64_t block_size(int64_t nq, int64_t cap);

struct LabelView {
  const uint8_t* q = nullptr;
  const uint8_t* db = nullptr;
  int64_t nbytes = 0;
  bool present() const { return q != nullptr; }
};

struct Problem {
  Rows q, db;
  int64_t bits = 0, k = 0;
  Geometry g;
  LabelView labels;
  bool count_cut_relevant = false;
};

Problem make_problem(Rows q, Rows db, int64_t bits, int64_t k);

// The cut of a top k: distance D and how many rows at D are taken (the first, in index order).
struct Cut {
  int64_t D = 0;
  int64_t take_at_D = 0;
};

Cut find_cut(const int64_t* hist, int64_t bits, int64_t k);

// Called once per query with its ranked top k (rank order) and the size / relevant count of the
// whole database group at the cut distance.
struct Sink {
  virtual ~Sink() = default;
  // Where the top k of query i goes (k entries each), or nullptr to use scratch.
  virtual int32_t* dist_out(int64_t) { return nullptr; }
  virtual int64_t* index_out(int64_t) { return nullptr; }
  virtual void done(int64_t i, const int32_t* dist, const int64_t* index, int64_t k, int64_t cut_total,
                    int64_t cut_relevant) = 0;
};

// The codes of queries `qs` as words, g.words per query.
void load_queries(const Problem& P, const std::vector<int64_t>& qs, std::vector<uint64_t>& qwords);

// Per-query histograms over the whole database for queries `qs` (qwords from load_queries):
// hist[b * (bits + 1) + d].
void stream_histograms(const Problem& P, const std::vector<int64_t>& qs, const std::vector<uint64_t>& qwords,
                       std::vector<int64_t>& hist);

// Ranks every query of P into the sink; adds where the time went to `stats`.
void rank_all(const Problem& P, Sink& sink, RankStats& stats);

}  // namespace engine
}  // namespace hamming
}  // namespace dchml
