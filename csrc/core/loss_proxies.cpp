// Proxy panels of the CPU loss paths: see loss_proxies.h.
#include "core/loss_proxies.h"

namespace dchml {
namespace {

SignPanel& calling_thread_tables() {
  static thread_local SignPanel panel;
  return panel;
}

}  // namespace

template <typename T, typename P>
int64_t build_proxy_panel(const P* g, int64_t c, int64_t k, PanelUse use, bool need_rows, ProxyPanel<T>& out) {
  out.c = c;
  out.k = k;
  out.cp = (c + kProxyTile - 1) / kProxyTile * kProxyTile;
  out.tables = nullptr;
  out.rows.clear();
  out.transposed.clear();
  if (uses_sign_tables<T>()) {
    SignPanel& tables = calling_thread_tables();
    const int64_t bad = tables.build(g, c, k);  // checks ±1 as it builds
    if (bad >= 0) return bad;
    out.tables = &tables;
  } else {
    const int64_t bad = first_non_sign(g, c * k);
    if (bad >= 0) return bad;
  }
  if (out.tables == nullptr || need_rows) {
    out.rows.resize(static_cast<size_t>(c * k));
    for (int64_t j = 0; j < c * k; ++j) out.rows[j] = static_cast<T>(g[j]);
  }
  if (out.tables == nullptr && use == PanelUse::kRowBlock) {
    out.transposed.assign(static_cast<size_t>(k * out.cp), T(0));
    for (int64_t j = 0; j < k; ++j)  // written in order (the reads hit L1/L2)
      for (int64_t q = 0; q < c; ++q) out.transposed[j * out.cp + q] = out.rows[q * k + j];
  }
  return -1;
}

#define DCHML_PANEL_INSTANCE(T, P) \
  template int64_t build_proxy_panel<T, P>(const P*, int64_t, int64_t, PanelUse, bool, ProxyPanel<T>&);
DCHML_PANEL_INSTANCE(float, int8_t)
DCHML_PANEL_INSTANCE(float, float)
DCHML_PANEL_INSTANCE(double, int8_t)
DCHML_PANEL_INSTANCE(double, double)
#undef DCHML_PANEL_INSTANCE

}  // namespace dchml
