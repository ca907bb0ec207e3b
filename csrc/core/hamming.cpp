// The Hamming ranking engine (API in hamming.h): tiles, blocks of queries, counting selection.
//
// Top-k without sorting. Distances are integers 0..bits, so the k nearest rows of a query are
// fixed by its distance histogram: the cut distance D (first d where the running count reaches
// k) and m = how many rows at D are taken (the first m in index order). Two ways to get there:
//  * fast path (k small against the database): a threshold T estimated from a sample of the
//    database; one stream over the database keeps candidates with d <= T as 64-bit keys
//    (d << 48 | index), in index order. If at least k were kept, the top k lies among them and
//    a counting pass over the candidates alone places each at its rank.
//  * exact path (large k, small databases, or when the fast path kept too few or too many):
//    stream 1 builds the full histogram, stream 2 places each row with d < D, and the first m
//    with d == D, at rank prefix[d] + seen[d]++.
// Both are stable by index by construction and give identical results.
#include "core/hamming.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "core/hamming_simd.h"

namespace dchml {
namespace hamming {

using detail::kIndexMask;
using detail::kKeyShift;

namespace {

// ----------------------------------------------------------------------------------- geometry

struct Geometry {
  int64_t bits = 0;
  int64_t nbytes = 0;
  int64_t words = 0;  // 64-bit words per code
  int64_t T = 0;      // rows per tile, multiple of 32
  uint8_t last_mask = 0xff;
  detail::Kernels kernels{};
};

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

// Row -> zero-padded words, padding bits of the last byte cleared.
inline void load_row(const uint8_t* row, const Geometry& g, uint64_t* w) {
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

// Rows [j0, j0 + count) of `db` into a word-major tile of g.T rows (zero rows past count).
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

int num_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// Queries per block: enough to reuse each tile many times, few enough to keep every thread busy.
int64_t block_size(int64_t nq, int64_t cap) {
  const int64_t per_thread = (nq + num_threads() - 1) / num_threads();
  return std::max<int64_t>(1, std::min<int64_t>(cap, per_thread));
}

// ------------------------------------------------------------------------------ label helpers

struct LabelView {
  const uint8_t* q = nullptr;
  const uint8_t* db = nullptr;
  int64_t nbytes = 0;
  bool present() const { return q != nullptr; }
};

// ---------------------------------------------------------------------------- selection state

struct Cut {
  int64_t D = 0;        // cut distance
  int64_t take_at_D = 0;  // m: rows taken at distance D
};

Cut find_cut(const int64_t* hist, int64_t bits, int64_t k) {
  int64_t cum = 0;
  for (int64_t d = 0; d <= bits; ++d) {
    if (cum + hist[d] >= k) return {d, k - cum};
    cum += hist[d];
  }
  return {bits, hist[bits]};  // unreachable when k <= total
}

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

// ---------------------------------------------------------------------------------- the engine

// Where the time goes, printed to stderr after each ranking call when DCHML_HAMMING_STATS is
// set (thread-seconds summed over threads; used by benchmarks/bench_hamming.py).
struct Stats {
  std::atomic<int64_t> fast{0}, fallback{0}, exact{0}, candidates{0};
  std::atomic<int64_t> ns_plan{0}, ns_stream{0}, ns_finish{0}, ns_exact{0};
  void reset() {
    fast = fallback = exact = candidates = 0;
    ns_plan = ns_stream = ns_finish = ns_exact = 0;
  }
};
Stats g_stats;

inline int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

struct Problem {
  Rows q, db;
  int64_t bits = 0, k = 0;
  Geometry g;
  LabelView labels;
  bool count_cut_relevant = false;
};

// Called once per query with its ranked top k (rank order) and the size / relevant count of the
// whole database group at the cut distance.
struct Sink {
  virtual ~Sink() = default;
  // Where the top k of query i goes (k entries each), or nullptr to use scratch.
  virtual int32_t* dist_out(int64_t) { return nullptr; }
  virtual int64_t* index_out(int64_t) { return nullptr; }
  virtual void done(int64_t i, const int32_t* dist, const int64_t* index, int64_t k,
                    int64_t cut_total, int64_t cut_relevant) = 0;
};

// Per-query histograms over the whole database for queries `qs` (all of one block), with eight
// uint32 sub-histograms per query so that runs of equal distances do not serialise on one
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

void rank_block(const Problem& P, const Sample* sample, int64_t i0, int64_t i1, Sink& sink,
                std::vector<int32_t>& scratch_dist, std::vector<int64_t>& scratch_index) {
  const Geometry& g = P.g;
  const int64_t H = P.bits + 1, k = P.k;
  std::vector<int64_t> all;
  for (int64_t i = i0; i < i1; ++i) all.push_back(i);
  std::vector<int64_t> exact;
  if (!sample) {
    const int64_t t3 = now_ns();
    rank_exact(P, all, sink, scratch_dist, scratch_index);
    g_stats.exact += (int64_t)all.size();
    g_stats.ns_exact += now_ns() - t3;
    return;
  }
  int64_t t0 = now_ns();
  std::vector<uint64_t> qwords;
  load_queries(P, all, qwords);
  std::vector<uint16_t> dbuf((size_t)g.T + 32);
  std::vector<int64_t> shist;
  std::vector<int64_t> fast;  // positions in `all`
  std::vector<FastPlan> plans(all.size());
  for (size_t b = 0; b < all.size(); ++b) {
    plans[b] = plan_query(P, *sample, &qwords[b * g.words], dbuf, shist);
    if (plans[b].fast) fast.push_back((int64_t)b);
    else exact.push_back(all[b]);
  }
  g_stats.exact += (int64_t)exact.size();
  int64_t t1 = now_ns();
  g_stats.ns_plan += t1 - t0;
  if (!fast.empty()) {
    // Candidate buffers start at the estimate and grow on demand (up to the plan's capacity),
    // so memory follows the actual candidate count.
    std::vector<std::vector<uint64_t>> keys(fast.size());
    std::vector<int64_t> nkeys(fast.size(), 0);
    std::vector<char> overflow(fast.size(), 0);
    for (size_t f = 0; f < fast.size(); ++f)
      keys[f].resize((size_t)(std::min(plans[fast[f]].capacity, plans[fast[f]].expected + 1024) + g.T));
    std::vector<uint64_t> tile((size_t)g.words * g.T);
    std::vector<const uint64_t*> gq(fast.size());
    std::vector<uint16_t> gthr(fast.size());
    std::vector<uint64_t*> gkeys(fast.size());
    std::vector<int64_t> gn(fast.size());
    std::vector<size_t> gf(fast.size());
    for (int64_t j0 = 0; j0 < P.db.n; j0 += g.T) {
      const int64_t count = std::min(g.T, P.db.n - j0);
      fill_tile(P.db, g, j0, count, tile.data());
      // The queries still on the fast path, with room for a whole tile of candidates each.
      int na = 0;
      for (size_t f = 0; f < fast.size(); ++f) {
        if (overflow[f]) continue;
        const int64_t b = fast[f];
        if (nkeys[f] + g.T > (int64_t)keys[f].size()) {
          const int64_t room = (int64_t)keys[f].size() - g.T;
          if (room >= plans[b].capacity) {
            overflow[f] = 1;
            continue;
          }
          keys[f].resize((size_t)(std::min(plans[b].capacity, 2 * room) + g.T));
        }
        gq[na] = &qwords[(size_t)b * g.words];
        gthr[na] = plans[b].threshold;
        gkeys[na] = keys[f].data();
        gn[na] = nkeys[f];
        gf[na] = f;
        ++na;
      }
      for (int a0 = 0; a0 < na; a0 += detail::kScanGroup) {
        const int nq = std::min(na - a0, detail::kScanGroup);
        g.kernels.scan_many(tile.data(), g.words, g.T, count, nq, &gq[a0], &gthr[a0], j0, &gkeys[a0],
                            &gn[a0], dbuf.data());
      }
      for (int a = 0; a < na; ++a) nkeys[gf[a]] = gn[a];
    }
    int64_t t2 = now_ns();
    g_stats.ns_stream += t2 - t1;
    std::vector<int64_t> hist((size_t)H);
    thread_local std::vector<int64_t> place_next, place_end, place_index;
    thread_local std::vector<int32_t> place_dist;
    for (size_t f = 0; f < fast.size(); ++f) {
      const int64_t i = all[fast[f]];
      if (overflow[f] || nkeys[f] < k) {  // the estimate missed: redo this query exactly
        exact.push_back(i);
        ++g_stats.fallback;
        continue;
      }
      ++g_stats.fast;
      g_stats.candidates += nkeys[f];
      const uint64_t* kk = keys[f].data();
      std::fill(hist.begin(), hist.end(), 0);
      for (int64_t c = 0; c < nkeys[f]; ++c) ++hist[kk[c] >> kKeyShift];
      // Place the candidates (index order) at rank next[d]++ without a data-dependent branch:
      // the ranks of distance d end at end[d]; a row past it (the tail of the cut group, or a
      // distance beyond the cut) is written to the spare slot k and not counted. Every row with
      // d <= threshold is a candidate, so hist[D] is the whole database group at the cut.
      const Cut cut = find_cut(hist.data(), P.bits, k);
      const int64_t D = cut.D;
      place_next.assign((size_t)H, k);
      place_end.assign((size_t)H, k);
      int64_t cum = 0;
      for (int64_t d = 0; d <= D; ++d) {
        place_next[d] = cum;
        cum += d < D ? hist[d] : cut.take_at_D;
        place_end[d] = cum;
      }
      place_dist.resize((size_t)k + 1);
      place_index.resize((size_t)k + 1);
      int32_t* pd = place_dist.data();
      int64_t* pi = place_index.data();
      int64_t* nx = place_next.data();
      const int64_t* en = place_end.data();
      for (int64_t c = 0; c < nkeys[f]; ++c) {
        const int64_t d = (int64_t)(kk[c] >> kKeyShift);
        const int64_t pos = nx[d];
        pd[pos] = (int32_t)d;
        pi[pos] = (int64_t)(kk[c] & kIndexMask);
        nx[d] = pos + (pos < en[d]);
      }
      int64_t cut_relevant = 0;
      if (P.count_cut_relevant && P.labels.present()) {
        const uint8_t* ql = P.labels.q + i * P.labels.nbytes;
        for (int64_t c = 0; c < nkeys[f]; ++c)
          if ((int64_t)(kk[c] >> kKeyShift) == D)
            cut_relevant += shares_label(ql, P.labels.db + (int64_t)(kk[c] & kIndexMask) * P.labels.nbytes,
                                         P.labels.nbytes);
      }
      int32_t* dd = sink.dist_out(i);
      int64_t* ii = sink.index_out(i);
      if (dd) std::memcpy(dd, pd, (size_t)k * sizeof(int32_t));
      if (ii) std::memcpy(ii, pi, (size_t)k * sizeof(int64_t));
      sink.done(i, dd ? dd : pd, ii ? ii : pi, k, hist[D], cut_relevant);
      std::vector<uint64_t>().swap(keys[f]);
    }
    g_stats.ns_finish += now_ns() - t2;
  }
  if (!exact.empty()) {
    const int64_t t3 = now_ns();
    rank_exact(P, exact, sink, scratch_dist, scratch_index);
    g_stats.ns_exact += now_ns() - t3;
  }
}

void rank_all(const Problem& P, Sink& sink) {
  if (P.q.n == 0) return;
  // The fast path pays when k is a small part of the database.
  const bool use_fast = P.db.n >= 16384 && P.k * 8 <= P.db.n;
  const bool report = std::getenv("DCHML_HAMMING_STATS") != nullptr;
  const int64_t start = now_ns();
  g_stats.reset();
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
#pragma omp for schedule(dynamic, 1)
    for (int64_t blk = 0; blk < nblocks; ++blk) {
      const int64_t i0 = blk * B, i1 = std::min(P.q.n, i0 + B);
      rank_block(P, use_fast ? &sample : nullptr, i0, i1, sink, scratch_dist, scratch_index);
    }
  }
  if (report)
    std::fprintf(stderr,
                 "[dchml hamming] isa=%s bits=%lld k=%lld nq=%lld ndb=%lld wall=%.3fs | queries: "
                 "fast %lld, fallback %lld, exact %lld, mean candidates per fast query %.0f | thread-seconds: plan %.3f, stream %.3f, "
                 "select+rank %.3f (incl. AP), exact %.3f\n",
                 isa_name(active_isa()), (long long)P.bits, (long long)P.k, (long long)P.q.n,
                 (long long)P.db.n, (now_ns() - start) * 1e-9, (long long)g_stats.fast.load(),
                 (long long)g_stats.fallback.load(), (long long)g_stats.exact.load(),
                 g_stats.fast ? (double)g_stats.candidates / (double)g_stats.fast : 0.0, g_stats.ns_plan * 1e-9,
                 g_stats.ns_stream * 1e-9, g_stats.ns_finish * 1e-9, g_stats.ns_exact * 1e-9);
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

// Group AP term for a complete run of n tied items (r relevant) after s items (R relevant).
double group_sum(int64_t s, int64_t R, int64_t n, int64_t r) {
  if (r == 0 || n == 0) return 0.0;
  if (n == 1) return (double)(R + 1) / (double)(s + 1);
  double h1 = 0.0, h2 = 0.0;
  for (int64_t i = 1; i <= n; ++i) {
    h1 += 1.0 / (double)(s + i);
    h2 += (double)(i - 1) / (double)(s + i);
  }
  return ((double)r / (double)n) *
         ((double)(R + 1) * h1 + ((double)(r - 1) / (double)(n - 1)) * h2);
}

}  // namespace

// ------------------------------------------------------------------------------------- public

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

double expected_ap_groups(const std::vector<int64_t>& size, const std::vector<int64_t>& relevant,
                          int64_t last_included) {
  const size_t G = size.size();
  if (G == 0) return 0.0;
  int64_t s = 0, R = 0;
  double full = 0.0;
  for (size_t g = 0; g + 1 < G; ++g) {
    full += group_sum(s, R, size[g], relevant[g]);
    s += size[g];
    R += relevant[g];
  }
  const int64_t n = size[G - 1], r = relevant[G - 1], L = last_included;
  if (L >= n) {
    full += group_sum(s, R, n, r);
    R += r;
    return R > 0 ? full / (double)R : 0.0;
  }
  if (L <= 0) return R > 0 ? full / (double)R : 0.0;
  // The cut falls inside the last group: condition on m, the relevant items among its L
  // included slots (hypergeometric), which fixes N_K = R + m.
  double h1 = 0.0, h2 = 0.0;
  for (int64_t i = 1; i <= L; ++i) {
    h1 += 1.0 / (double)(s + i);
    h2 += (double)(i - 1) / (double)(s + i);
  }
  const int64_t m_lo = std::max<int64_t>(0, L - (n - r)), m_hi = std::min(L, r);
  // log pmf by the ratio recurrence, normalised at the end (exact to rounding, no overflow).
  std::vector<double> logw((size_t)(m_hi - m_lo + 1));
  logw[0] = 0.0;
  for (int64_t m = m_lo; m < m_hi; ++m) {
    const double ratio = ((double)(r - m) * (double)(L - m)) / ((double)(m + 1) * (double)(n - r - L + m + 1));
    logw[(size_t)(m + 1 - m_lo)] = logw[(size_t)(m - m_lo)] + std::log(ratio);
  }
  const double top = *std::max_element(logw.begin(), logw.end());
  double norm = 0.0, acc = 0.0;
  for (int64_t m = m_lo; m <= m_hi; ++m) {
    const double w = std::exp(logw[(size_t)(m - m_lo)] - top);
    norm += w;
    if (R + m == 0) continue;
    double part = 0.0;
    if (m > 0)
      part = L == 1 ? (double)(R + 1) / (double)(s + 1)
                    : ((double)m / (double)L) * ((double)(R + 1) * h1 + ((double)(m - 1) / (double)(L - 1)) * h2);
    acc += w * (full + part) / (double)(R + m);
  }
  return acc / norm;
}

double ap_from_ranking(const int32_t* dist, const uint8_t* rel, int64_t K, int64_t cut_total,
                       int64_t cut_relevant, bool expected) {
  if (K <= 0) return 0.0;
  if (!expected) {
    int64_t hits = 0;
    double sum = 0.0;
    for (int64_t i = 0; i < K; ++i)
      if (rel[i]) {
        ++hits;
        sum += (double)hits / (double)(i + 1);
      }
    return hits ? sum / (double)hits : 0.0;
  }
  std::vector<int64_t> size, relevant;
  int64_t i = 0;
  while (i < K) {
    int64_t j = i, r = 0;
    while (j < K && dist[j] == dist[i]) r += rel[j++];
    size.push_back(j - i);
    relevant.push_back(r);
    i = j;
  }
  const int64_t L = size.back();
  size.back() = std::max(cut_total, L);
  relevant.back() = std::max(cut_relevant, relevant.back());
  return expected_ap_groups(size, relevant, L);
}

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

void topk(Rows q, Rows db, int64_t bits, int64_t k, int32_t* out_dist, int64_t* out_index) {
  struct Direct : Sink {
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
  rank_all(P, sink);
}

void average_precision(Rows q, Rows db, int64_t bits, int64_t k, Rows q_labels, Rows db_labels,
                       bool expected, double* out_ap) {
  std::fill(out_ap, out_ap + q.n, 0.0);
  if (q.n == 0 || db.n == 0 || k <= 0) return;
  Problem P = make_problem(q, db, bits, std::min(k, db.n));
  P.labels.q = q_labels.data;
  P.labels.db = db_labels.data;
  P.labels.nbytes = q_labels.nbytes;
  P.count_cut_relevant = expected;
  struct ApSink : Sink {
    const Problem* P;
    double* ap;
    bool expected;
    void done(int64_t i, const int32_t* dist, const int64_t* index, int64_t k, int64_t cut_total,
              int64_t cut_relevant) override {
      thread_local std::vector<uint8_t> rel;
      rel.resize((size_t)k);
      const LabelView& L = P->labels;
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
  rank_all(P, sink);
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
