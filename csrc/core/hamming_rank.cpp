// Top-k by counting (API in hamming.h, internals in hamming_engine.h).
//
// Distances are integers 0..bits, so the k nearest rows of a query are fixed by its distance
// histogram: the cut distance D (first d where the running count reaches k) and m = how many
// rows at D are taken (the first m in index order). Two ways to get there:
//  * fast path (k small against the database): a threshold T estimated from a sample of the
//    database; one stream over the database keeps candidates with d <= T as 64-bit keys
//    (d << 48 | index), in index order. If at least k were kept, the top k lies among them and
//    a counting pass over the candidates alone places each at its rank.
//  * exact path (large k, small databases, or when the fast path kept too few or too many):
//    stream 1 builds the full histogram, stream 2 places each row with d < D, and the first m
//    with d == D, at rank prefix[d] + seen[d]++.
// Both are stable by index by construction and give identical results.
#include <algorithm>
#include <chrono>
#include <cstring>
#include <vector>

#include "core/hamming_engine.h"

namespace dchml {
namespace hamming {
namespace engine {
namespace {

using detail::kIndexMask;
using detail::kKeyShift;

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// ------------------------------------------------------------------------------- exact path

// Places rows at their rank, given the cut; rows must arrive in index order.
struct Emitter {
  std::vector<int64_t> next;  // next[d]: next free rank for distance d (prefix + seen)
  std::vector<int64_t> end;   // end[d]: one past the last rank of distance d inside the top k
  int32_t* dist = nullptr;
  int64_t* index = nullptr;
  int64_t D = 0;
  int64_t cut_total = 0;     // rows at distance D in the whole stream
  int64_t cut_relevant = 0;  // of which relevant (only counted when `count_relevant`)
  bool count_relevant = false;
  const uint8_t* q_label = nullptr;
  const uint8_t* db_labels = nullptr;
  int64_t label_bytes = 0;

  void start(const int64_t* hist, int64_t bits, int64_t k, int32_t* out_dist, int64_t* out_index) {
    const Cut cut = find_cut(hist, bits, k);
    D = cut.D;
    next.assign((size_t)D + 1, 0);
    end.assign((size_t)D + 1, 0);
    int64_t cum = 0;
    for (int64_t d = 0; d <= D; ++d) {
      next[d] = cum;
      cum += d < D ? hist[d] : cut.take_at_D;
      end[d] = cum;
    }
    dist = out_dist;
    index = out_index;
    cut_total = cut_relevant = 0;
  }

  inline void offer(int64_t d, int64_t row) {
    if (d > D) return;
    if (d == D) {
      ++cut_total;
      if (count_relevant && shares_label(q_label, db_labels + row * label_bytes, label_bytes))
        ++cut_relevant;
    }
    int64_t& pos = next[d];
    if (pos < end[d]) {
      dist[pos] = (int32_t)d;
      index[pos] = row;
      ++pos;
    }
  }
};

Emitter make_emitter(const Problem& P, int64_t i) {
  Emitter e;
  e.count_relevant = P.count_cut_relevant;
  if (P.labels.present()) {
    e.q_label = P.labels.q + i * P.labels.nbytes;
    e.db_labels = P.labels.db;
    e.label_bytes = P.labels.nbytes;
  }
  return e;
}

// The exact two-stream path for queries `qs`, results into per-query destinations.
void rank_exact(const Problem& P, const std::vector<int64_t>& qs, Sink& sink,
                std::vector<int32_t>& scratch_dist, std::vector<int64_t>& scratch_index) {
  const Geometry& g = P.g;
  const int64_t H = P.bits + 1, k = P.k;
  // Keep the scratch for the ranked lists near 64 MiB however large k is.
  const int64_t sub_block = std::max<int64_t>(1, std::min<int64_t>((int64_t)qs.size(), (64 << 20) / (12 * k)));
  for (size_t s0 = 0; s0 < qs.size(); s0 += (size_t)sub_block) {
    std::vector<int64_t> part(qs.begin() + s0, qs.begin() + std::min(qs.size(), s0 + (size_t)sub_block));
    const int64_t B = (int64_t)part.size();
    std::vector<uint64_t> qwords;
    load_queries(P, part, qwords);
    std::vector<int64_t> hist;
    stream_histograms(P, part, qwords, hist);
    scratch_dist.resize((size_t)B * k);
    scratch_index.resize((size_t)B * k);
    std::vector<Emitter> em;
    em.reserve((size_t)B);
    for (int64_t b = 0; b < B; ++b) {
      em.push_back(make_emitter(P, part[b]));
      int32_t* dd = sink.dist_out(part[b]);
      int64_t* ii = sink.index_out(part[b]);
      if (!dd) dd = &scratch_dist[(size_t)b * k];
      if (!ii) ii = &scratch_index[(size_t)b * k];
      em[b].start(&hist[(size_t)b * H], P.bits, k, dd, ii);
    }
    std::vector<uint64_t> tile((size_t)g.words * g.T);
    std::vector<uint16_t> dbuf((size_t)g.T + 32);
    for (int64_t j0 = 0; j0 < P.db.n; j0 += g.T) {
      const int64_t count = std::min(g.T, P.db.n - j0);
      fill_tile(P.db, g, j0, count, tile.data());
      for (int64_t b = 0; b < B; ++b) {
        g.kernels.distances(tile.data(), g.words, g.T, &qwords[(size_t)b * g.words], dbuf.data());
        Emitter& e = em[b];
        const int64_t D = e.D;
        for (int64_t jj = 0; jj < count; ++jj)
          if (dbuf[jj] <= D) e.offer(dbuf[jj], j0 + jj);
      }
    }
    for (int64_t b = 0; b < B; ++b)
      sink.done(part[b], em[b].dist, em[b].index, k, em[b].cut_total, em[b].cut_relevant);
  }
}

// -------------------------------------------------------------------------------- fast path

// Sample of the database (evenly spaced rows) used to pick each query's fast-path threshold.
struct Sample {
  std::vector<uint64_t> tiles;  // word-major tiles of g.T rows
  int64_t rows = 0;
  int64_t ntiles = 0;
};

Sample make_sample(const Problem& P) {
  Sample s;
  const Geometry& g = P.g;
  s.rows = std::min<int64_t>(P.db.n, 8192);
  s.ntiles = (s.rows + g.T - 1) / g.T;
  s.tiles.assign((size_t)s.ntiles * g.words * g.T, 0);
  std::vector<uint64_t> w((size_t)g.words);
  for (int64_t r = 0; r < s.rows; ++r) {
    const int64_t row = (int64_t)((double)r * (double)P.db.n / (double)s.rows);
    load_row(P.db.data + row * g.nbytes, g, w.data());
    uint64_t* tile = &s.tiles[(size_t)(r / g.T) * g.words * g.T];
    for (int64_t k = 0; k < g.words; ++k) tile[k * g.T + (r % g.T)] = w[k];
  }
  return s;
}

struct FastPlan {
  bool fast = false;
  uint16_t threshold = 0;
  int64_t expected = 0;  // estimated candidates (rows with d <= threshold)
  int64_t capacity = 0;  // most candidates held before giving up on the fast path
};

FastPlan plan_query(const Problem& P, const Sample& s, const uint64_t* qw, std::vector<uint16_t>& dbuf,
                    std::vector<int64_t>& shist) {
  const Geometry& g = P.g;
  const int64_t H = P.bits + 1;
  shist.assign((size_t)H, 0);
  for (int64_t t = 0; t < s.ntiles; ++t) {
    g.kernels.distances(&s.tiles[(size_t)t * g.words * g.T], g.words, g.T, qw, dbuf.data());
    const int64_t count = std::min(g.T, s.rows - t * g.T);
    for (int64_t jj = 0; jj < count; ++jj) ++shist[dbuf[jj]];
  }
  // Aim at 1.5 k (plus slack): the sample estimate of a count near k has a relative error of
  // about 1/sqrt(k * sample / db) (~13% for k = 5000 of 1M with 8192 samples), and too low a
  // threshold costs an exact re-run of the query; too high a one costs candidates.
  const double scale = (double)P.db.n / (double)s.rows;
  const double target = 1.5 * (double)P.k + 64.0;
  int64_t cum = 0;
  FastPlan plan;
  for (int64_t d = 0; d < H; ++d) {
    cum += shist[d];
    const double est = (double)cum * scale;
    if (est >= target || d == H - 1) {
      const double capacity = 2.0 * est + 4096.0;
      // Heavy ties (short codes) can make the candidate set many times k: the exact path is
      // then cheaper than holding the candidates.
      if (capacity > 16.0 * (double)P.k + 65536.0 || d >= 65535) return plan;
      plan.fast = true;
      plan.threshold = (uint16_t)d;
      plan.expected = (int64_t)est;
      plan.capacity = (int64_t)capacity;
      return plan;
    }
  }
  return plan;
}

// Phase 1, planning: the block's queries as words, each with its fast-path plan; the queries the
// plan sends to the exact path straight away.
struct BlockPlan {
  std::vector<int64_t> queries;  // i0 .. i1 - 1
  std::vector<uint64_t> qwords;  // their codes, g.words each
  std::vector<FastPlan> plans;   // per position in `queries`
  std::vector<int64_t> fast;     // positions in `queries` on the fast path
  std::vector<int64_t> exact;    // query indices for the exact path
};

BlockPlan plan_block(const Problem& P, const Sample& sample, int64_t i0, int64_t i1) {
  BlockPlan b;
  for (int64_t i = i0; i < i1; ++i) b.queries.push_back(i);
  load_queries(P, b.queries, b.qwords);
  std::vector<uint16_t> dbuf((size_t)P.g.T + 32);
  std::vector<int64_t> shist;
  b.plans.resize(b.queries.size());
  for (size_t q = 0; q < b.queries.size(); ++q) {
    b.plans[q] = plan_query(P, sample, &b.qwords[q * P.g.words], dbuf, shist);
    if (b.plans[q].fast)
      b.fast.push_back((int64_t)q);
    else
      b.exact.push_back(b.queries[q]);
  }
  return b;
}

// Phase 2, buffers: one fast query's candidate keys. They start at the plan's estimate and grow
// on demand up to its capacity, so memory follows the actual candidate count.
struct Candidates {
  std::vector<uint64_t> keys;
  int64_t count = 0;
  bool overflow = false;  // more than the plan's capacity: the query is ranked exactly instead

  Candidates(const FastPlan& plan, int64_t T)
      : keys((size_t)(std::min(plan.capacity, plan.expected + 1024) + T)) {}

  // Room for one more tile of T keys; false (and overflow) once the capacity is reached.
  bool make_room(const FastPlan& plan, int64_t T) {
    if (overflow) return false;
    if (count + T <= (int64_t)keys.size()) return true;
    const int64_t room = (int64_t)keys.size() - T;
    if (room >= plan.capacity) {
      overflow = true;
      return false;
    }
    keys.resize((size_t)(std::min(plan.capacity, 2 * room) + T));
    return true;
  }
};

// Phase 3, the stream: one pass over the database keeps, for each fast query, the rows at
// distance <= its threshold, scanning tiles for groups of queries at once.
void stream_candidates(const Problem& P, const BlockPlan& b, std::vector<Candidates>& cands) {
  const Geometry& g = P.g;
  const size_t nf = b.fast.size();
  std::vector<uint64_t> tile((size_t)g.words * g.T);
  std::vector<uint16_t> dbuf((size_t)g.T + 32);
  std::vector<const uint64_t*> gq(nf);
  std::vector<uint16_t> gthr(nf);
  std::vector<uint64_t*> gkeys(nf);
  std::vector<int64_t> gn(nf);
  std::vector<size_t> gf(nf);
  for (int64_t j0 = 0; j0 < P.db.n; j0 += g.T) {
    const int64_t count = std::min(g.T, P.db.n - j0);
    fill_tile(P.db, g, j0, count, tile.data());
    int na = 0;  // the queries still on the fast path, each with room for a whole tile
    for (size_t f = 0; f < nf; ++f) {
      const FastPlan& plan = b.plans[b.fast[f]];
      if (!cands[f].make_room(plan, g.T)) continue;
      gq[na] = &b.qwords[(size_t)b.fast[f] * g.words];
      gthr[na] = plan.threshold;
      gkeys[na] = cands[f].keys.data();
      gn[na] = cands[f].count;
      gf[na] = f;
      ++na;
    }
    for (int a0 = 0; a0 < na; a0 += detail::kScanGroup) {
      const int nq = std::min(na - a0, detail::kScanGroup);
      g.kernels.scan_many(tile.data(), g.words, g.T, count, nq, &gq[a0], &gthr[a0], j0, &gkeys[a0], &gn[a0],
                          dbuf.data());
    }
    for (int a = 0; a < na; ++a) cands[gf[a]].count = gn[a];
  }
}

// Phase 4, placement: the top k from a query's candidates (index order), each written at its rank
// without a data-dependent branch: the ranks of distance d end at end[d]; a row past it (the
// tail of the cut group, or a distance beyond the cut) goes to the spare slot k, not counted.
// Every row with d <= threshold is a candidate, so hist[D] is the whole database group at the
// cut. dist and index hold k + 1 entries.
Cut place_candidates(const Problem& P, const Candidates& c, std::vector<int64_t>& hist, int32_t* dist,
                     int64_t* index) {
  const int64_t H = P.bits + 1, k = P.k;
  const uint64_t* keys = c.keys.data();
  hist.assign((size_t)H, 0);
  for (int64_t e = 0; e < c.count; ++e) ++hist[keys[e] >> kKeyShift];
  const Cut cut = find_cut(hist.data(), P.bits, k);
  thread_local std::vector<int64_t> next, end;
  next.assign((size_t)H, k);
  end.assign((size_t)H, k);
  int64_t cum = 0;
  for (int64_t d = 0; d <= cut.D; ++d) {
    next[d] = cum;
    cum += d < cut.D ? hist[d] : cut.take_at_D;
    end[d] = cum;
  }
  for (int64_t e = 0; e < c.count; ++e) {
    const int64_t d = (int64_t)(keys[e] >> kKeyShift);
    const int64_t pos = next[d];
    dist[pos] = (int32_t)d;
    index[pos] = (int64_t)(keys[e] & kIndexMask);
    next[d] = pos + (pos < end[d]);
  }
  return cut;
}

// Phase 5, the cut: how many of the database rows at the cut distance share a label with query i.
int64_t relevant_at_cut(const Problem& P, int64_t i, const Candidates& c, int64_t D) {
  if (!P.count_cut_relevant || !P.labels.present()) return 0;
  const uint8_t* ql = P.labels.q + i * P.labels.nbytes;
  int64_t relevant = 0;
  for (int64_t e = 0; e < c.count; ++e)
    if ((int64_t)(c.keys[e] >> kKeyShift) == D)
      relevant += shares_label(ql, P.labels.db + (int64_t)(c.keys[e] & kIndexMask) * P.labels.nbytes,
                               P.labels.nbytes);
  return relevant;
}

// One block of queries: the fast path where its plan holds, the exact path for the rest.
void rank_block(const Problem& P, const Sample* sample, int64_t i0, int64_t i1, Sink& sink,
                std::vector<int32_t>& scratch_dist, std::vector<int64_t>& scratch_index, RankStats& stats) {
  std::vector<int64_t> exact;
  if (sample != nullptr) {
    const int64_t t0 = now_ns();
    const BlockPlan b = plan_block(P, *sample, i0, i1);
    exact = b.exact;
    stats.exact += (int64_t)exact.size();
    const int64_t t1 = now_ns();
    stats.ns_plan += t1 - t0;
    if (!b.fast.empty()) {
      std::vector<Candidates> cands;
      cands.reserve(b.fast.size());
      for (int64_t f : b.fast) cands.emplace_back(b.plans[f], P.g.T);
      stream_candidates(P, b, cands);
      const int64_t t2 = now_ns();
      stats.ns_stream += t2 - t1;
      std::vector<int64_t> hist;
      thread_local std::vector<int32_t> dist;
      thread_local std::vector<int64_t> index;
      dist.resize((size_t)P.k + 1);
      index.resize((size_t)P.k + 1);
      for (size_t f = 0; f < b.fast.size(); ++f) {
        const int64_t i = b.queries[b.fast[f]];
        if (cands[f].overflow || cands[f].count < P.k) {  // the estimate missed: redo this query exactly
          exact.push_back(i);
          ++stats.fallback;
          continue;
        }
        ++stats.fast;
        stats.candidates += cands[f].count;
        const Cut cut = place_candidates(P, cands[f], hist, dist.data(), index.data());
        const int64_t cut_relevant = relevant_at_cut(P, i, cands[f], cut.D);
        int32_t* dd = sink.dist_out(i);
        int64_t* ii = sink.index_out(i);
        if (dd) std::memcpy(dd, dist.data(), (size_t)P.k * sizeof(int32_t));
        if (ii) std::memcpy(ii, index.data(), (size_t)P.k * sizeof(int64_t));
        sink.done(i, dd ? dd : dist.data(), ii ? ii : index.data(), P.k, hist[cut.D], cut_relevant);
        std::vector<uint64_t>().swap(cands[f].keys);
      }
      stats.ns_finish += now_ns() - t2;
    }
  } else {
    for (int64_t i = i0; i < i1; ++i) exact.push_back(i);
    stats.exact += i1 - i0;
  }
  if (!exact.empty()) {
    const int64_t t3 = now_ns();
    rank_exact(P, exact, sink, scratch_dist, scratch_index);
    stats.ns_exact += now_ns() - t3;
  }
}

}  // namespace

void rank_all(const Problem& P, Sink& sink, RankStats& stats) {
  if (P.q.n == 0) return;
  // The fast path pays when k is a small part of the database.
  const bool use_fast = P.db.n >= 16384 && P.k * 8 <= P.db.n;
  Sample sample;
  if (use_fast) sample = make_sample(P);
  // Blocks of 32 queries: each database tile is reused 32 times, and the candidate buffers of a
  // block (~1.5 k keys per query) stay small next to the database.
  const int64_t B = block_size(P.q.n, 32);
  const int64_t nblocks = (P.q.n + B - 1) / B;
#pragma omp parallel
  {
    std::vector<int32_t> scratch_dist;
    std::vector<int64_t> scratch_index;
    RankStats mine;
#pragma omp for schedule(dynamic, 1)
    for (int64_t blk = 0; blk < nblocks; ++blk) {
      const int64_t i0 = blk * B, i1 = std::min(P.q.n, i0 + B);
      rank_block(P, use_fast ? &sample : nullptr, i0, i1, sink, scratch_dist, scratch_index, mine);
    }
#pragma omp critical(dchml_rank_stats)
    stats.add(mine);
  }
}

}  // namespace engine

void RankStats::add(const RankStats& o) {
  fast += o.fast;
  fallback += o.fallback;
  exact += o.exact;
  candidates += o.candidates;
  ns_plan += o.ns_plan;
  ns_stream += o.ns_stream;
  ns_finish += o.ns_finish;
  ns_exact += o.ns_exact;
}

}  // namespace hamming
}  // namespace dchml
