// Torch-free CPU engine of the bit-packed Hamming ranker: distances, per-query distance
// histograms, exact top-k by counting (stable by database index) and fused AP@K (ties broken by
// index, or the exact expectation over random orders inside tie groups).
//
// Codes are rows of `nbytes = ceil(bits/8)` bytes, bit j in byte j/8 at position j%8 (numpy
// packbits(bitorder="little"), faiss binary codes). Bits past `bits` in the last byte are
// ignored (masked), so any byte array is a valid input. Labels are packed the same way (one bit
// per category); two rows are relevant to each other when they share a set bit.
// All functions run OpenMP-parallel over blocks of queries and never allocate a
// (queries x database) matrix, except hamming_distance_matrix whose output is that matrix.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace dchml {
namespace hamming {

// Contiguous packed rows.
struct Rows {
  const uint8_t* data = nullptr;
  int64_t n = 0;
  int64_t nbytes = 0;  // bytes per row (row stride)
};

// Longest supported code: distances are kept as uint16 inside the engine.
constexpr int64_t kMaxBits = 65535;

// SIMD level of the XOR + popcount loops, chosen once at run time from the CPU's features.
enum class Isa { portable = 0, avx2 = 1, avx512 = 2 };
Isa best_isa();                 // what this CPU supports
Isa active_isa();               // what the engine uses now (best_isa() unless forced)
void force_isa(Isa isa);        // for tests and benchmarks; clamps to best_isa()
const char* isa_name(Isa isa);  // "portable", "avx2", "avx512"
bool parse_isa(const std::string& name, Isa* out);

// out[i * db.n + j] = popcount(q_i XOR db_j) over the first `bits` bits.
void distance_matrix(Rows q, Rows db, int64_t bits, int32_t* out);

// out[i * (bits + 1) + d] = number of database rows at distance d from query i.
void histogram(Rows q, Rows db, int64_t bits, int64_t* out);

// As histogram, plus out_rel[i * (bits + 1) + d] = how many of them share a label with query i.
void histogram_relevant(Rows q, Rows db, int64_t bits, Rows q_labels, Rows db_labels,
                        int64_t* out_all, int64_t* out_rel);

// Where one ranking call spent its time (thread-seconds summed over threads) and how its queries
// were ranked: on the fast path, on it and then again exactly (fallback), or exactly. Per call,
// so that concurrent calls do not mix their numbers.
struct RankStats {
  int64_t fast = 0, fallback = 0, exact = 0;
  int64_t candidates = 0;  // kept by the fast path, summed over its queries
  int64_t ns_plan = 0, ns_stream = 0, ns_finish = 0, ns_exact = 0;
  void add(const RankStats& o);
};

// The k nearest rows per query, ascending by (distance, index); 1 <= k <= db.n.
void topk(Rows q, Rows db, int64_t bits, int64_t k, int32_t* out_dist, int64_t* out_index,
          RankStats* stats = nullptr);

// Per-query AP@k (docs/spec.md §7) over the top k = min(k, db.n) of the (distance, index) ranking;
// with `expected`, the exact expectation of AP@k over uniformly random orders inside each
// group of tied distances (McSherry & Najork 2008).
void average_precision(Rows q, Rows db, int64_t bits, int64_t k, Rows q_labels, Rows db_labels,
                       bool expected, double* out_ap, RankStats* stats = nullptr);

// The AP arithmetic alone, for one query whose top-k list is already known (used by the fused
// path above, by the CUDA path through the torch adapter, and by the native tests).
//   dist[i], rel[i] for the K listed items in rank order (ascending distance);
//   cut_total / cut_relevant: size and relevant count of the WHOLE database group at the
//   distance of the last listed item (only read when expected is true).
double ap_from_ranking(const int32_t* dist, const uint8_t* rel, int64_t K, int64_t cut_total,
                       int64_t cut_relevant, bool expected);

// Expected AP of a ranking given as tie groups (size, relevant) in rank order, where only the
// first `last_included` items of the last group are inside the top k.
double expected_ap_groups(const std::vector<int64_t>& size, const std::vector<int64_t>& relevant,
                          int64_t last_included);

// True when the two packed label rows share a set bit.
bool shares_label(const uint8_t* a, const uint8_t* b, int64_t nbytes);

// Packing helpers for the torch-free tests and tools: values > 0 become 1 bits.
void pack_rows(const float* values, int64_t n, int64_t bits, uint8_t* out);
void unpack_rows(const uint8_t* packed, int64_t n, int64_t bits, float* out);  // ±1

}  // namespace hamming
}  // namespace dchml
