// Native tests of the torch-free loss row math (core/mds_loss.h, core/mds_loss_engine.h), run
// under ASan + UBSan: the online log-sum-exp against a direct sum, stability at large logits,
// and the row engine against the definitions of METHOD.md §3 and §6 on hand-sized inputs.
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "core/mds_loss_engine.h"
#include "native_tests/check.h"

using namespace dchml;

namespace {

double direct_logsumexp(const std::vector<double>& v) {
  double m = -INFINITY;
  for (double x : v) m = std::max(m, x);
  double s = 0;
  for (double x : v) s += std::exp(x - m);
  return m + std::log(s);
}

}  // namespace

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
  DCHML_CHECK_NEAR(lse_value(all), direct_logsumexp(v), 1e-12);
  DCHML_CHECK_NEAR(lse_value(lse_merge(a, b)), direct_logsumexp(v), 1e-12);
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

// Row 0: positives {0, 2}, negatives {1, 3}; checked against eq. 13 and §6 written out.
DCHML_TEST(row_engine_matches_definitions) {
  const int64_t c = 4, k = 3;
  const double G[c * k] = {1, 1, 1, 1, -1, 1, -1, 1, 1, -1, -1, -1};
  const double b[k] = {0.5, -0.25, 0.75};
  const double o[k] = {-0.1, 0.9, 0.3};
  const int64_t pos[2] = {0, 2};
  auto dot = [&](const double* x, int64_t q) { return x[0] * G[q * k] + x[1] * G[q * k + 1] + x[2] * G[q * k + 2]; };
  const double eta = 0.3, mu = 0.3, gamma = 0.2, sigma = 0.2;
  // eq. 13
  const double u = (dot(b, 0) + dot(b, 2)) / 2 - mu * k;
  const double expected = -eta * u + direct_logsumexp({eta * u, eta * dot(b, 1), eta * dot(b, 3)});
  const LossRow<double, double> row{b, b, G, pos, 2, c, k};
  const MdsForward<double> f = mds_forward_row(row, eta, mu);
  DCHML_CHECK_NEAR(f.loss, expected, 1e-12);
  // eq. 14 (inter-modal): numerator from b, denominator from o
  const double uo = (dot(o, 0) + dot(o, 2)) / 2 - mu * k;
  const double expected_inter = -eta * u + direct_logsumexp({eta * uo, eta * dot(o, 1), eta * dot(o, 3)});
  const LossRow<double, double> inter{b, o, G, pos, 2, c, k};
  DCHML_CHECK_NEAR(mds_forward_row(inter, eta, mu).loss, expected_inter, 1e-12);
  // gradient by central differences of the forward
  double grad[k], none[k];
  mds_backward_row(row, eta, mu, f.lse, 1.0, grad, none);
  for (int64_t j = 0; j < k; ++j) {
    double bp[k] = {b[0], b[1], b[2]}, bm[k] = {b[0], b[1], b[2]};
    bp[j] += 1e-6;
    bm[j] -= 1e-6;
    const double fd = (mds_forward_row(LossRow<double, double>{bp, bp, G, pos, 2, c, k}, eta, mu).loss -
                       mds_forward_row(LossRow<double, double>{bm, bm, G, pos, 2, c, k}, eta, mu).loss) / 2e-6;
    DCHML_CHECK_NEAR(grad[j], fd, 1e-7);
  }
  // §6
  double psl = 0;
  for (int64_t p : {0, 2}) {
    const double lp = gamma * (dot(b, p) - sigma * k);
    psl += -lp + direct_logsumexp({lp, gamma * dot(b, 1), gamma * dot(b, 3)});
  }
  const PslForward<double> pf = psl_forward_row(row, gamma, sigma);
  DCHML_CHECK_NEAR(pf.loss, psl / 2, 1e-12);
  double pgrad[k];
  psl_backward_row(row, gamma, sigma, pf.lse_neg, 1.0, pgrad);
  for (int64_t j = 0; j < k; ++j) {
    double bp[k] = {b[0], b[1], b[2]}, bm[k] = {b[0], b[1], b[2]};
    bp[j] += 1e-6;
    bm[j] -= 1e-6;
    const double fd = (psl_forward_row(LossRow<double, double>{bp, bp, G, pos, 2, c, k}, gamma, sigma).loss -
                       psl_forward_row(LossRow<double, double>{bm, bm, G, pos, 2, c, k}, gamma, sigma).loss) / 2e-6;
    DCHML_CHECK_NEAR(pgrad[j], fd, 1e-7);
  }
}

DCHML_TEST(row_without_negatives_has_zero_loss_and_gradient) {
  const double G[2 * 2] = {1, -1, -1, 1};
  const double b[2] = {0.3, 0.6};
  const int64_t pos[2] = {0, 1};
  const LossRow<double, double> row{b, b, G, pos, 2, 2, 2};
  const MdsForward<double> f = mds_forward_row(row, 0.3, 0.3);
  DCHML_CHECK_NEAR(f.loss, 0.0, 1e-15);
  double grad[2], none[2];
  mds_backward_row(row, 0.3, 0.3, f.lse, 1.0, grad, none);
  DCHML_CHECK_NEAR(grad[0], 0.0, 1e-15);
  DCHML_CHECK_NEAR(grad[1], 0.0, 1e-15);
  const PslForward<double> pf = psl_forward_row(row, 0.2, 0.2);
  DCHML_CHECK(pf.loss == 0.0 && pf.lse_neg == -INFINITY);
}
