// Direct double-precision definitions of both losses (docs/spec.md §3, §6) for the native tests:
// every sum written out over the row's negatives, nothing shared with the kernels' code paths.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

namespace loss_reference {

inline double logsumexp(const std::vector<double>& v) {
  double m = -INFINITY;
  for (double x : v) m = std::max(m, x);
  if (m == -INFINITY) return m;
  double s = 0;
  for (double x : v) s += std::exp(x - m);
  return m + std::log(s);
}

// A random problem: codes and other (n, k) in [-1, 1), ±1 proxies (c, k), 1-3 positives per row
// (every class a positive in rows of c = 1).
struct Problem {
  int64_t n, c, k;
  std::vector<double> codes, other, proxies;
  std::vector<std::vector<int64_t>> positives;  // sorted
  std::vector<int64_t> offsets, indices;        // the same as a CSR

  Problem(int64_t n_, int64_t c_, int64_t k_, unsigned seed) : n(n_), c(c_), k(k_) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<double> u(-1, 1);
    codes.resize(n * k);
    other.resize(n * k);
    proxies.resize(c * k);
    for (auto& v : codes) v = u(rng);
    for (auto& v : other) v = u(rng);
    for (auto& v : proxies) v = (rng() & 1) ? 1.0 : -1.0;
    offsets.push_back(0);
    for (int64_t i = 0; i < n; ++i) {
      std::vector<char> is(c, 0);
      const int64_t want = 1 + static_cast<int64_t>(rng() % 3);
      for (int64_t t = 0; t < want; ++t) is[rng() % c] = 1;
      std::vector<int64_t> row;
      for (int64_t q = 0; q < c; ++q)
        if (is[q]) row.push_back(q);
      positives.push_back(row);
      indices.insert(indices.end(), row.begin(), row.end());
      offsets.push_back(static_cast<int64_t>(indices.size()));
    }
  }

  double dot(const std::vector<double>& x, int64_t i, int64_t q) const {
    double s = 0;
    for (int64_t j = 0; j < k; ++j) s += x[i * k + j] * proxies[q * k + j];
    return s;
  }
  bool positive(int64_t i, int64_t q) const {
    for (int64_t p : positives[i])
      if (p == q) return true;
    return false;
  }
};

struct Rows {
  std::vector<double> loss, grad_codes, grad_other;  // (n,), (n, k), (n, k) (zero when not separate)
};

// Eq. 13 (eq. 14 with `separate`: the denominator from other), and its gradient.
inline Rows mds(const Problem& P, bool separate, double eta, double mu) {
  Rows out{std::vector<double>(P.n), std::vector<double>(P.n * P.k, 0.0), std::vector<double>(P.n * P.k, 0.0)};
  const std::vector<double>& den = separate ? P.other : P.codes;
  for (int64_t i = 0; i < P.n; ++i) {
    const double npos = static_cast<double>(P.positives[i].size());
    std::vector<double> gbar(P.k, 0.0);
    for (int64_t p : P.positives[i])
      for (int64_t j = 0; j < P.k; ++j) gbar[j] += P.proxies[p * P.k + j] / npos;
    double u_num = -mu * P.k, u_den = -mu * P.k;
    for (int64_t j = 0; j < P.k; ++j) {
      u_num += P.codes[i * P.k + j] * gbar[j];
      u_den += den[i * P.k + j] * gbar[j];
    }
    std::vector<double> terms = {eta * u_den};
    std::vector<int64_t> negatives;
    for (int64_t q = 0; q < P.c; ++q)
      if (!P.positive(i, q)) {
        terms.push_back(eta * P.dot(den, i, q));
        negatives.push_back(q);
      }
    const double lse = logsumexp(terms);
    out.loss[i] = -eta * u_num + lse;
    std::vector<double>& den_grad = separate ? out.grad_other : out.grad_codes;
    for (int64_t j = 0; j < P.k; ++j) {
      out.grad_codes[i * P.k + j] += -eta * gbar[j];
      double d = std::exp(terms[0] - lse) * gbar[j];
      for (size_t t = 0; t < negatives.size(); ++t)
        d += std::exp(terms[t + 1] - lse) * P.proxies[negatives[t] * P.k + j];
      den_grad[i * P.k + j] += eta * d;
    }
  }
  return out;
}

// §6: mean over positives p of -l_p + log(exp(l_p) + sum_q exp(gamma s_q)), and its gradient.
inline Rows psl(const Problem& P, double gamma, double sigma) {
  Rows out{std::vector<double>(P.n), std::vector<double>(P.n * P.k, 0.0), std::vector<double>(P.n * P.k, 0.0)};
  for (int64_t i = 0; i < P.n; ++i) {
    const double npos = static_cast<double>(P.positives[i].size());
    std::vector<double> neg_terms;
    std::vector<int64_t> negatives;
    for (int64_t q = 0; q < P.c; ++q)
      if (!P.positive(i, q)) {
        neg_terms.push_back(gamma * P.dot(P.codes, i, q));
        negatives.push_back(q);
      }
    double loss = 0;
    for (int64_t p : P.positives[i]) {
      const double lp = gamma * (P.dot(P.codes, i, p) - sigma * P.k);
      std::vector<double> all = neg_terms;
      all.push_back(lp);
      const double lse = logsumexp(all);
      loss += (-lp + lse) / npos;
      // d/db of the term: gamma [(sigma_p - 1) g_p + sum_q pi_q g_q] with weights over this softmax
      for (int64_t j = 0; j < P.k; ++j) {
        double d = (std::exp(lp - lse) - 1.0) * P.proxies[p * P.k + j];
        for (size_t t = 0; t < negatives.size(); ++t)
          d += std::exp(neg_terms[t] - lse) * P.proxies[negatives[t] * P.k + j];
        out.grad_codes[i * P.k + j] += gamma * d / npos;
      }
    }
    out.loss[i] = loss;
  }
  return out;
}

}  // namespace loss_reference
