// The ±1 proxies of one loss call in the forms the CPU paths read. Torch-free.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "core/sign_panel.h"

namespace dchml {

// Proxies per score tile of the register-tiled products; padded class counts are multiples of it.
constexpr int kProxyTile = 16;

// Flat index of the first entry of g[0, total) that is not ±1, or -1. A branch-free scan first
// (it vectorises: a call-overhead-bound step must not pay a scalar loop); the offender is located
// on failure only.
template <typename P>
int64_t first_non_sign(const P* g, int64_t total) {
  bool any_bad = false;
  for (int64_t j = 0; j < total; ++j) any_bad |= (g[j] != P(1)) & (g[j] != P(-1));
  for (int64_t j = 0; any_bad && j < total; ++j)
    if (g[j] != P(1) && g[j] != P(-1)) return j;
  return -1;
}

// Whether the float32 products run through the AVX-512 lookup tables (SignPanel) on this CPU.
template <typename T>
bool uses_sign_tables() {
  if constexpr (std::is_same_v<T, float>)
    return SignPanel::supported();
  else
    return false;
}

template <typename T>
struct ProxyPanel {
  int64_t c = 0, k = 0;
  int64_t cp = 0;                  // c rounded up to kProxyTile
  const SignPanel* tables = nullptr;  // float on AVX-512: lookup tables for both products
  std::vector<T> rows;             // (c, k) row-major in T: the products without tables, `other`'s dots
  std::vector<T> transposed;       // (k, cp) zero padded: the register-tiled scores (row-block path)
};

enum class PanelUse { kRowBlock, kTiled };

// Builds `out` for a path from g (c x k, ±1 as int8 or T). The tables, when the CPU has them,
// belong to the calling thread and are rebuilt only when a call brings other proxies (a training
// step allocates nothing for them). need_rows: the row-major copy even with tables (the row-block
// path's `other` needs it). Returns -1, or the flat index of the first entry that is not ±1
// (`out` is then unusable).
template <typename T, typename P>
int64_t build_proxy_panel(const P* g, int64_t c, int64_t k, PanelUse use, bool need_rows, ProxyPanel<T>& out);

}  // namespace dchml
