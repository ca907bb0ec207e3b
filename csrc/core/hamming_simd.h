// Internal to the Hamming engine: the two inner loops that run at SIMD width, one variant per
// instruction set (AVX-512 VPOPCNTDQ, AVX2, portable), picked at run time. Both work on a tile
// of database codes stored word-major (tile[w * T + j] is word w of row j), so the same loop
// serves every code length and the tile, loaded once, is reused by a whole block of queries.
#pragma once

#include <cstdint>

#include "core/hamming.h"

namespace dchml {
namespace hamming {
namespace detail {

// out[j] = sum_w popcount(tile[w * T + j] ^ q[w]) for j < T; T is a multiple of 32.
using TileDistanceFn = void (*)(const uint64_t* tile, int64_t words, int64_t T, const uint64_t* q,
                                uint16_t* out);

// Appends key = (d[j] << 48) | (base + j) for every j < n with d[j] <= threshold, in order of j;
// returns how many were appended. d has room for n rounded up to 32 (the tail is read, ignored).
using SelectFn = int64_t (*)(const uint16_t* d, int64_t n, uint16_t threshold, int64_t base,
                             uint64_t* keys);

// Fused distances + select over the first `count` rows of a tile: appends the keys of rows with
// distance <= threshold, in row order, and returns how many. `scratch` holds T + 32 uint16.
using ScanFn = int64_t (*)(const uint64_t* tile, int64_t words, int64_t T, int64_t count,
                           const uint64_t* q, uint16_t threshold, int64_t base, uint64_t* keys,
                           uint16_t* scratch);

// The same scan for up to kScanGroup queries at once (register blocking: each database vector is
// loaded once and compared against every query of the group). Query g appends to
// keys[g] + nkeys[g] and advances nkeys[g]; keys[g] needs room for `count` more keys.
constexpr int kScanGroup = 8;
using ScanManyFn = void (*)(const uint64_t* tile, int64_t words, int64_t T, int64_t count, int nq,
                            const uint64_t* const* q, const uint16_t* thresholds, int64_t base,
                            uint64_t* const* keys, int64_t* nkeys, uint16_t* scratch);

struct Kernels {
  TileDistanceFn distances;
  SelectFn select;
  ScanFn scan;
  ScanManyFn scan_many;
};

// The variants for `isa`, with the fixed-width distance loop for 1, 2 or 4 words when it applies.
TileDistanceFn distances_for(Isa isa, int64_t words);
Kernels kernels_for(Isa isa, int64_t words);

constexpr int kKeyShift = 48;  // candidate keys: distance in the top 16 bits, index below
constexpr uint64_t kIndexMask = (uint64_t(1) << kKeyShift) - 1;

}  // namespace detail
}  // namespace hamming
}  // namespace dchml
