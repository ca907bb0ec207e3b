// Native tests of the CPU loss paths as they ship (run under ASan + UBSan): the row-block path
// (core/loss_row_block.h) and the tiled path (core/loss_tiled.h, with the per-row finish of
// core/loss_rows.h that the CUDA kernels also run), against the direct definitions of
// loss_reference.h, over float and double, int8 and float proxies, lookup tables on and off,
// `other` or not, and every label form; plus the shared row math of core/mds_loss.h.
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "core/loss_row_block.h"
#include "core/loss_tiled.h"
#include "native_tests/check.h"
#include "native_tests/loss_reference.h"

using namespace dchml;
using loss_reference::Problem;

namespace {

constexpr double kEta = 0.3, kMu = 0.3, kGamma = 0.2, kSigma = 0.2;

template <typename T>
double tolerance() {
  return sizeof(T) == 4 ? 3e-4 : 1e-10;
}

// |a - b| <= tol (1 + |b|) for every entry; counts one failure per vector.
template <typename T>
void check_close(const char* what, const std::vector<T>& got, const std::vector<double>& want, double tol) {
  for (size_t i = 0; i < want.size(); ++i) {
    if (!(std::fabs(static_cast<double>(got[i]) - want[i]) <= tol * (1 + std::fabs(want[i])))) {
      std::fprintf(stderr, "  %s[%zu] = %.9g, expected %.9g\n", what, i, static_cast<double>(got[i]), want[i]);
      DCHML_CHECK(false);
      return;
    }
  }
}

template <typename T, typename S>
std::vector<T> cast(const std::vector<S>& v) {
  return std::vector<T>(v.begin(), v.end());
}

std::vector<double> grad_weights(int64_t n) {
  std::vector<double> w(n);
  for (int64_t i = 0; i < n; ++i) w[i] = 0.5 + 0.25 * static_cast<double>(i % 5);
  return w;
}

// The reference gradient of sum_i w_i loss_i.
std::vector<double> weighted(const std::vector<double>& grad, const std::vector<double>& w, int64_t k) {
  std::vector<double> out(grad);
  for (size_t e = 0; e < out.size(); ++e) out[e] *= w[e / k];
  return out;
}

// Dense labels of element type E, or (E = void) the CSR.
template <typename E>
struct Labels {
  std::vector<E> dense;
  LabelRows rows(const Problem& P, LabelDtype dtype) {
    dense.assign(P.n * P.c, E(0));
    for (int64_t i = 0; i < P.n; ++i)
      for (int64_t p : P.positives[i]) dense[i * P.c + p] = E(1);
    return LabelRows::dense_rows(dense.data(), dtype, P.c);
  }
};

// ---------------------------------------------------------------- row-block path

template <typename T, typename P>
void check_row_block(const Problem& prob, bool separate, const LabelRows& labels) {
  const double tol = tolerance<T>();
  const std::vector<T> codes = cast<T>(prob.codes), other = cast<T>(prob.other);
  const std::vector<P> proxies = cast<P>(prob.proxies);
  ProxyPanel<T> panel;
  DCHML_CHECK(build_proxy_panel<T, P>(proxies.data(), prob.c, prob.k, PanelUse::kRowBlock, separate, panel) == -1);
  const RowBlockInputs<T> in{codes.data(), separate ? other.data() : codes.data(), separate, &panel, labels};
  const int64_t n = prob.n, k = prob.k, half = n / 2;
  const std::vector<double> w = grad_weights(n);
  const std::vector<T> grad_loss = cast<T>(w);

  const loss_reference::Rows want = loss_reference::mds(prob, separate, kEta, kMu);
  std::vector<T> loss(n), lse(n), gc(n * k), go(n * k);
  DCHML_CHECK(row_block_mds_forward<T>(in, T(kEta), T(kMu), loss.data(), lse.data(), 0, half));
  DCHML_CHECK(row_block_mds_forward<T>(in, T(kEta), T(kMu), loss.data(), lse.data(), half, n));
  check_close("row-block mds loss", loss, want.loss, tol);
  DCHML_CHECK(row_block_mds_backward<T>(in, T(kEta), T(kMu), lse.data(), grad_loss.data(), gc.data(),
                                        separate ? go.data() : nullptr, 0, n));
  check_close("row-block mds grad codes", gc, weighted(want.grad_codes, w, k), tol);
  if (separate) check_close("row-block mds grad other", go, weighted(want.grad_other, w, k), tol);

  // the forward with the gradient along, every row weighted alike
  const T grad_row = T(0.75);
  const std::vector<double> same(n, 0.75);
  std::vector<T> loss2(n), lse2(n), gc2(n * k), go2(n * k);
  DCHML_CHECK(row_block_mds_forward_backward<T>(in, T(kEta), T(kMu), grad_row, loss2.data(), lse2.data(), gc2.data(),
                                                separate ? go2.data() : nullptr, 0, half));
  DCHML_CHECK(row_block_mds_forward_backward<T>(in, T(kEta), T(kMu), grad_row, loss2.data(), lse2.data(), gc2.data(),
                                                separate ? go2.data() : nullptr, half, n));
  DCHML_CHECK(loss2 == loss && lse2 == lse);  // the forward's own values, bit for bit
  check_close("row-block mds forward-backward grad codes", gc2, weighted(want.grad_codes, same, k), tol);
  if (separate) check_close("row-block mds forward-backward grad other", go2, weighted(want.grad_other, same, k), tol);

  if (separate) return;  // the partial softmax has no `other`
  const loss_reference::Rows pwant = loss_reference::psl(prob, kGamma, kSigma);
  DCHML_CHECK(row_block_psl_forward<T>(in, T(kGamma), T(kSigma), loss.data(), lse.data(), 0, n));
  check_close("row-block psl loss", loss, pwant.loss, tol);
  DCHML_CHECK(row_block_psl_backward<T>(in, T(kGamma), T(kSigma), lse.data(), grad_loss.data(), gc.data(), half, n));
  DCHML_CHECK(row_block_psl_backward<T>(in, T(kGamma), T(kSigma), lse.data(), grad_loss.data(), gc.data(), 0, half));
  check_close("row-block psl grad", gc, weighted(pwant.grad_codes, w, k), tol);

  std::vector<T> ploss(n), plse(n);
  DCHML_CHECK(row_block_psl_forward_backward<T>(in, T(kGamma), T(kSigma), grad_row, ploss.data(), plse.data(),
                                                gc2.data(), 0, n));
  DCHML_CHECK(ploss == loss && plse == lse);
  check_close("row-block psl forward-backward grad", gc2, weighted(pwant.grad_codes, same, k), tol);
}

template <typename T, typename P>
void row_block_all_label_forms(const Problem& prob, bool separate) {
  check_row_block<T, P>(prob, separate, LabelRows::csr(prob.offsets.data(), prob.indices.data()));
  Labels<uint8_t> bytes;
  check_row_block<T, P>(prob, separate, bytes.rows(prob, LabelDtype::kByte));
  Labels<float> f32;
  check_row_block<T, P>(prob, separate, f32.rows(prob, LabelDtype::kFloat32));
  Labels<double> f64;
  check_row_block<T, P>(prob, separate, f64.rows(prob, LabelDtype::kFloat64));
  Labels<int32_t> i32;
  check_row_block<T, P>(prob, separate, i32.rows(prob, LabelDtype::kInt32));
  Labels<int64_t> i64;
  check_row_block<T, P>(prob, separate, i64.rows(prob, LabelDtype::kInt64));
}

// ---------------------------------------------------------------- tiled path

// Products by plain loops over the proxies as T: once per tile (the GEMM's calling pattern) or
// per row range (the lookup tables' pattern).
template <typename T>
class LoopProducts final : public TileProducts<T> {
 public:
  LoopProducts(const std::vector<T>& g, bool per_row) : g_(g), per_row_(per_row) {}
  bool per_row() const override { return per_row_; }
  void scores(const T* block, int64_t k, int64_t b, int64_t e, int64_t q0, int64_t cols, T* tile) const override {
    for (int64_t i = b; i < e; ++i)
      for (int64_t q = 0; q < cols; ++q) {
        T s = T(0);
        for (int64_t j = 0; j < k; ++j) s += block[i * k + j] * g_[(q0 + q) * k + j];
        tile[i * cols + q] = s;
      }
  }
  void combine(const T* tile, int64_t k, int64_t b, int64_t e, int64_t q0, int64_t cols, T* out) const override {
    for (int64_t i = b; i < e; ++i)
      for (int64_t q = 0; q < cols; ++q)
        for (int64_t j = 0; j < k; ++j) out[i * k + j] += tile[i * cols + q] * g_[(q0 + q) * k + j];
  }

 private:
  const std::vector<T>& g_;
  bool per_row_;
};

// Rows in chunks of 2, so that every tile pass sees several ranges.
const RowRunner kChunksOfTwo = [](int64_t n, int64_t, const RowRange& f) {
  for (int64_t b = 0; b < n; b += 2) f(b, std::min(n, b + 2));
};

template <typename T, typename P>
void check_tiled(const Problem& prob, bool separate, const TileProducts<T>& products) {
  const double tol = tolerance<T>();
  const TileShape shape{3, 16};  // several row blocks and class tiles
  const std::vector<T> codes = cast<T>(prob.codes), other = cast<T>(prob.other);
  const std::vector<P> proxies = cast<P>(prob.proxies);
  const int64_t n = prob.n, k = prob.k, c = prob.c;
  const std::vector<T>& den = separate ? other : codes;
  const TiledRows<T, P> in{codes.data(), den.data(), separate, proxies.data(),
                           {prob.offsets.data(), prob.indices.data()}, k};
  const std::vector<double> w = grad_weights(n);
  const std::vector<T> grad_loss = cast<T>(w);
  auto scaled = [&](const std::vector<T>& x, double s) {
    std::vector<T> out(x);
    for (auto& v : out) v *= T(s);
    return out;
  };

  const loss_reference::Rows want = loss_reference::mds(prob, separate, kEta, kMu);
  const std::vector<T> den_eta = scaled(den, kEta);
  std::vector<T> neg(n), loss(n), lse(n), sum(n * k), gc(n * k), go(n * k);
  tiled_negatives_lse<T>(den_eta.data(), n, k, c, prob.offsets.data(), prob.indices.data(), products, kChunksOfTwo,
                         shape, neg.data());
  tiled_mds_forward_rows<T, P>(in, T(kEta), T(kMu), neg.data(), loss.data(), lse.data(), 0, n);
  check_close("tiled mds loss", loss, want.loss, tol);
  // the operator's layout: the negatives' sum written into the denominator's output, in place
  T* den_out = separate ? go.data() : gc.data();
  tiled_negatives_softmax_sum<T>(den_eta.data(), n, k, c, prob.offsets.data(), prob.indices.data(), lse.data(),
                                 products, kChunksOfTwo, shape, den_out);
  tiled_mds_backward_rows<T, P>(in, T(kEta), T(kMu), lse.data(), grad_loss.data(), den_out, gc.data(), go.data(), 0,
                                n);
  check_close("tiled mds grad codes", gc, weighted(want.grad_codes, w, k), tol);
  if (separate) check_close("tiled mds grad other", go, weighted(want.grad_other, w, k), tol);

  if (separate) return;
  const loss_reference::Rows pwant = loss_reference::psl(prob, kGamma, kSigma);
  const std::vector<T> codes_gamma = scaled(codes, kGamma);
  tiled_negatives_lse<T>(codes_gamma.data(), n, k, c, prob.offsets.data(), prob.indices.data(), products,
                         kChunksOfTwo, shape, neg.data());
  tiled_psl_forward_rows<T, P>(in, T(kGamma), T(kSigma), neg.data(), loss.data(), 0, n);
  check_close("tiled psl loss", loss, pwant.loss, tol);
  tiled_negatives_softmax_sum<T>(codes_gamma.data(), n, k, c, prob.offsets.data(), prob.indices.data(), neg.data(),
                                 products, kChunksOfTwo, shape, sum.data());
  tiled_psl_backward_rows<T, P>(in, T(kGamma), T(kSigma), neg.data(), grad_loss.data(), sum.data(), gc.data(), 0, n);
  check_close("tiled psl grad", gc, weighted(pwant.grad_codes, w, k), tol);
}

template <typename T, typename P>
void tiled_all_products(const Problem& prob, bool separate) {
  const std::vector<T> g = cast<T>(prob.proxies);
  check_tiled<T, P>(prob, separate, LoopProducts<T>(g, false));
  check_tiled<T, P>(prob, separate, LoopProducts<T>(g, true));
  if constexpr (std::is_same_v<T, float>) {
    if (SignPanel::supported()) {
      SignPanel tables;
      DCHML_CHECK(tables.build(g.data(), prob.c, prob.k) == -1);
      check_tiled<T, P>(prob, separate, SignTileProducts(tables));
    }
  }
}

const int64_t kShapes[][3] = {{7, 1, 5}, {9, 2, 1}, {13, 21, 7}, {10, 40, 64}, {6, 80, 65}, {5, 130, 17}};

}  // namespace

DCHML_TEST(reference_gradients_match_finite_differences) {
  Problem p(3, 6, 4, 7);
  for (bool separate : {false, true}) {
    const auto r = loss_reference::mds(p, separate, kEta, kMu);
    const auto s = loss_reference::psl(p, kGamma, kSigma);
    for (int64_t e = 0; e < p.n * p.k; ++e) {
      Problem hi = p, lo = p;
      hi.codes[e] += 1e-6;
      lo.codes[e] -= 1e-6;
      const int64_t i = e / p.k;
      const double fd = (loss_reference::mds(hi, separate, kEta, kMu).loss[i] -
                         loss_reference::mds(lo, separate, kEta, kMu).loss[i]) / 2e-6;
      DCHML_CHECK_NEAR(r.grad_codes[e], fd, 1e-7);
      const double pfd =
          (loss_reference::psl(hi, kGamma, kSigma).loss[i] - loss_reference::psl(lo, kGamma, kSigma).loss[i]) / 2e-6;
      DCHML_CHECK_NEAR(s.grad_codes[e], pfd, 1e-7);
      if (separate) {
        Problem ho = p, lo2 = p;
        ho.other[e] += 1e-6;
        lo2.other[e] -= 1e-6;
        const double ofd = (loss_reference::mds(ho, true, kEta, kMu).loss[i] -
                            loss_reference::mds(lo2, true, kEta, kMu).loss[i]) / 2e-6;
        DCHML_CHECK_NEAR(r.grad_other[e], ofd, 1e-7);
      }
    }
  }
}

DCHML_TEST(row_block_path_matches_definitions) {
  unsigned seed = 1;
  for (const auto& s : kShapes) {
    const Problem prob(s[0], s[1], s[2], seed++);
    for (bool tables : {true, false}) {
      SignPanel::set_enabled(tables);
      for (bool separate : {false, true}) {
        row_block_all_label_forms<float, int8_t>(prob, separate);
        row_block_all_label_forms<float, float>(prob, separate);
        row_block_all_label_forms<double, int8_t>(prob, separate);
        row_block_all_label_forms<double, double>(prob, separate);
      }
    }
    SignPanel::set_enabled(true);
  }
}

DCHML_TEST(tiled_path_matches_definitions) {
  unsigned seed = 100;
  for (const auto& s : kShapes) {
    const Problem prob(s[0], s[1], s[2], seed++);
    for (bool separate : {false, true}) {
      tiled_all_products<float, int8_t>(prob, separate);
      tiled_all_products<float, float>(prob, separate);
      tiled_all_products<double, int8_t>(prob, separate);
      tiled_all_products<double, double>(prob, separate);
    }
  }
}

DCHML_TEST(row_block_reports_bad_dense_labels) {
  const Problem prob(6, 21, 8, 5);
  ProxyPanel<double> panel;
  DCHML_CHECK(build_proxy_panel<double, double>(prob.proxies.data(), prob.c, prob.k, PanelUse::kRowBlock, false,
                                                panel) == -1);
  std::vector<double> loss(prob.n), lse(prob.n);
  for (float bad : {2.0f, 0.5f, -1.0f}) {
    Labels<float> f32;
    LabelRows rows = f32.rows(prob, LabelDtype::kFloat32);
    f32.dense[3 * prob.c + 17] = bad;
    const RowBlockInputs<double> in{prob.codes.data(), prob.codes.data(), false, &panel, rows};
    DCHML_CHECK(!row_block_mds_forward<double>(in, kEta, kMu, loss.data(), lse.data(), 0, prob.n));
    DCHML_CHECK(row_block_mds_forward<double>(in, kEta, kMu, loss.data(), lse.data(), 0, 3));  // rows before it
  }
  Labels<uint8_t> bytes;
  LabelRows rows = bytes.rows(prob, LabelDtype::kByte);
  for (int64_t q = 0; q < prob.c; ++q) bytes.dense[4 * prob.c + q] = 0;  // row 4 without a positive
  const RowBlockInputs<double> in{prob.codes.data(), prob.codes.data(), false, &panel, rows};
  DCHML_CHECK(!row_block_psl_forward<double>(in, kGamma, kSigma, loss.data(), lse.data(), 0, prob.n));
}

DCHML_TEST(proxy_panel_reports_the_first_entry_not_plus_minus_one) {
  for (bool tables : {true, false}) {
    SignPanel::set_enabled(tables);
    std::vector<float> g(3 * 5, 1.0f);
    g[7] = 0.5f;
    g[11] = 0.0f;
    ProxyPanel<float> panel;
    DCHML_CHECK(build_proxy_panel<float, float>(g.data(), 3, 5, PanelUse::kRowBlock, false, panel) == 7);
    ProxyPanel<double> tiled;
    std::vector<int8_t> gi(3 * 5, -1);
    gi[4] = 0;
    DCHML_CHECK(build_proxy_panel<double, int8_t>(gi.data(), 3, 5, PanelUse::kTiled, false, tiled) == 4);
  }
  SignPanel::set_enabled(true);
}

// ---------------------------------------------------------------- shared row math

DCHML_TEST(online_lse_matches_direct_and_merges) {
  std::mt19937 rng(1);
  std::uniform_real_distribution<double> u(-30, 30);
  std::vector<double> v(100);
  for (double& x : v) x = u(rng);
  OnlineLse<double> all = lse_empty<double>(), a = lse_empty<double>(), b = lse_empty<double>();
  for (size_t i = 0; i < v.size(); ++i) {
    lse_push(all, v[i]);
    lse_push(i % 3 ? a : b, v[i]);
  }
  DCHML_CHECK_NEAR(lse_value(all), loss_reference::logsumexp(v), 1e-12);
  DCHML_CHECK_NEAR(lse_value(lse_merge(a, b)), loss_reference::logsumexp(v), 1e-12);
  DCHML_CHECK(lse_value(lse_empty<double>()) == -(double)INFINITY);
  DCHML_CHECK(lse_value(lse_merge(lse_empty<double>(), a)) == lse_value(a));
}

DCHML_TEST(online_lse_is_stable_for_huge_logits) {
  OnlineLse<float> s = lse_empty<float>();
  lse_push(s, 4096.0f);
  lse_push(s, 4000.0f);
  lse_push(s, 4096.0f);
  DCHML_CHECK(std::isfinite(lse_value(s)));
  DCHML_CHECK_NEAR(lse_value(s), 4096.0 + std::log(2.0), 1e-3);
  DCHML_CHECK_NEAR(log_add_exp(1000.0, 1000.0), 1000.0 + std::log(2.0), 1e-12);
  DCHML_CHECK(log_add_exp(-(double)INFINITY, 3.0) == 3.0);
}

DCHML_TEST(sorted_contains_finds_exactly_the_members) {
  const int64_t a[] = {1, 4, 9, 10};
  for (int64_t x = -1; x < 12; ++x) DCHML_CHECK(sorted_contains(a, 4, x) == (x == 1 || x == 4 || x == 9 || x == 10));
  DCHML_CHECK(!sorted_contains(a, 0, 1));
}

DCHML_TEST(simd_dot_matches_naive_for_odd_lengths) {
  for (int64_t k : {1, 7, 15, 16, 17, 64, 65, 1000}) {
    std::vector<double> b(k);
    std::vector<int8_t> g(k);
    double naive = 0;
    for (int64_t j = 0; j < k; ++j) {
      b[j] = std::sin(0.37 * j);
      g[j] = (j * 7 % 3) ? 1 : -1;
      naive += b[j] * g[j];
    }
    DCHML_CHECK_NEAR(simd_dot(b.data(), g.data(), k), naive, 1e-12);
  }
}

// A row whose every class is a positive has no negatives: loss 0 and gradient 0 in both losses.
DCHML_TEST(row_without_negatives_has_zero_loss_and_gradient) {
  const double G[2 * 2] = {1, -1, -1, 1};
  const double b[2] = {0.3, 0.6};
  const int64_t pos[2] = {0, 1};
  const LossRow<double, double> row{b, b, false, G, {pos, 2}, 2};
  const double none = -INFINITY, zero_sum[2] = {0, 0};
  const MdsForward<double> f = mds_forward_row(row, 0.3, 0.3, none);
  DCHML_CHECK_NEAR(f.loss, 0.0, 1e-15);
  double grad[2];
  mds_backward_row(row, 0.3, 0.3, f.lse, 1.0, zero_sum, grad, static_cast<double*>(nullptr));
  DCHML_CHECK_NEAR(grad[0], 0.0, 1e-15);
  DCHML_CHECK_NEAR(grad[1], 0.0, 1e-15);
  DCHML_CHECK(psl_forward_row(row, 0.2, 0.2, none) == 0.0);
  psl_backward_row(row, 0.2, 0.2, none, 1.0, zero_sum, grad);
  DCHML_CHECK(grad[0] == 0.0 && grad[1] == 0.0);
}
