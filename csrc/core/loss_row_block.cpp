// The row-block path of the CPU losses: see loss_row_block.h.
#include "core/loss_row_block.h"

#include <algorithm>
#include <type_traits>
#include <vector>

#include "core/macros.h"
#include "core/masked_softmax.h"
#include "core/mds_loss.h"
#include "core/vector_math.h"

namespace dchml {
namespace {

constexpr int64_t kRowBlockMaxClasses = 512;
constexpr int kBlockRows = 4;
static_assert(kBlockRows <= kMaskedLseMaxRows, "a block's rows share one masked_lse_rows call");

// One tile of 16 values as a GCC vector (unaligned loads allowed): each SIMD clone lowers it to
// its own registers (1 zmm for float on AVX-512, 2 ymm on AVX2, ...). Written explicitly because
// the plain-array form of these loops was not kept in registers by GCC (measured 10x slower).
template <typename T>
struct TileVec;
template <>
struct TileVec<float> {
  typedef float type __attribute__((vector_size(kProxyTile * sizeof(float)), aligned(alignof(float))));
};
template <>
struct TileVec<double> {
  typedef double type __attribute__((vector_size(kProxyTile * sizeof(double)), aligned(alignof(double))));
};

// s[r * cp + q] = rows[r] . g_q for r < NR, q < cp (padding proxies give 0).
template <int NR, typename T>
DCHML_ROW_INLINE void block_scores_n(const T* rows, const ProxyPanel<T>& p, T* s) {
  using V = typename TileVec<T>::type;
  const int64_t k = p.k, cp = p.cp;
  const T* gt = p.transposed.data();
  for (int64_t q0 = 0; q0 < cp; q0 += kProxyTile) {
    V acc[NR] = {};
    for (int64_t j = 0; j < k; ++j) {
      const V col = *reinterpret_cast<const V*>(gt + j * cp + q0);
      for (int r = 0; r < NR; ++r) acc[r] += rows[r * k + j] * col;
    }
    for (int r = 0; r < NR; ++r) *reinterpret_cast<V*>(s + r * cp + q0) = acc[r];
  }
}

// out[r * k + j] = sum_{q < c} w[r * cp + q] g_q[j] for r < NR (written, not added).
template <int NR, typename T>
DCHML_ROW_INLINE void block_combine_n(const T* w, const ProxyPanel<T>& p, T* out) {
  using V = typename TileVec<T>::type;
  const int64_t k = p.k, c = p.c, cp = p.cp;
  const T* g = p.rows.data();
  int64_t j0 = 0;
  for (; j0 + kProxyTile <= k; j0 += kProxyTile) {
    V acc[NR] = {};
    for (int64_t q = 0; q < c; ++q) {
      const V gq = *reinterpret_cast<const V*>(g + q * k + j0);
      for (int r = 0; r < NR; ++r) acc[r] += w[r * cp + q] * gq;
    }
    for (int r = 0; r < NR; ++r) *reinterpret_cast<V*>(out + r * k + j0) = acc[r];
  }
  if (j0 < k) {
    const int width = static_cast<int>(k - j0);
    T acc[NR][kProxyTile] = {};
    for (int64_t q = 0; q < c; ++q) {
      const T* gq = g + q * k + j0;
      for (int r = 0; r < NR; ++r) {
        const T wq = w[r * cp + q];
        for (int l = 0; l < width; ++l) acc[r][l] += wq * gq[l];
      }
    }
    for (int r = 0; r < NR; ++r)
      for (int l = 0; l < width; ++l) out[r * k + j0 + l] = acc[r][l];
  }
}

// f(std::integral_constant<int, nr>()) for a block of nr rows: the register-tiled loops need the
// row count at compile time.
template <typename F>
DCHML_ROW_INLINE void with_block_rows(int nr, F&& f) {
  switch (nr) {
    case 4: f(std::integral_constant<int, 4>()); break;
    case 3: f(std::integral_constant<int, 3>()); break;
    case 2: f(std::integral_constant<int, 2>()); break;
    default: f(std::integral_constant<int, 1>()); break;
  }
}

// A block's product with the proxies: scores (rows of codes -> rows of cp scores) or combine (rows
// of cp weights -> rows of k), through the lookup tables or the register-tiled loops.
enum class Product { kScores, kCombine };

template <Product kProduct, typename T>
DCHML_ROW_INLINE void block_product(const T* in, int nr, const ProxyPanel<T>& p, T* out) {
  constexpr bool scores = kProduct == Product::kScores;
  if constexpr (std::is_same_v<T, float>) {
    if (p.tables) {
      for (int r = 0; r < nr; ++r) {
        if constexpr (scores)
          p.tables->scores(in + r * p.k, out + r * p.cp);
        else
          p.tables->combine(in + r * p.cp, out + r * p.k);
      }
      return;
    }
  }
  with_block_rows(nr, [&](auto rows_c) DCHML_INLINE_LAMBDA {
    if constexpr (scores)
      block_scores_n<decltype(rows_c)::value>(in, p, out);
    else
      block_combine_n<decltype(rows_c)::value>(in, p, out);
  });
}

template <typename T>
DCHML_ROW_INLINE T mean_at(const T* s, PositiveList l) {
  T acc = T(0);
  for (int64_t e = 0; e < l.npos; ++e) acc += s[l.pos[e]];
  return acc / T(l.npos);
}

// b . gbar from the row-major proxies (the numerator of `other`'s loss: its scores are not the
// block's).
template <typename T>
DCHML_ROW_INLINE T mean_positive_dot(const T* b, const ProxyPanel<T>& p, PositiveList l) {
  T acc = T(0);
  for (int64_t e = 0; e < l.npos; ++e) acc += simd_dot(b, p.rows.data() + l.pos[e] * p.k, p.k);
  return acc / T(l.npos);
}

// max and sum of x[0, cp) with 16 independent lanes (vectorised without reassociation flags);
// x[c, cp) must hold the neutral element.
template <typename T>
DCHML_ROW_INLINE T tile_max(const T* x, int64_t cp) {
  using V = typename TileVec<T>::type;
  V m = *reinterpret_cast<const V*>(x);
  for (int64_t q0 = kProxyTile; q0 < cp; q0 += kProxyTile) {
    const V v = *reinterpret_cast<const V*>(x + q0);
    m = v > m ? v : m;
  }
  T r = m[0];
  for (int l = 1; l < kProxyTile; ++l) r = m[l] > r ? m[l] : r;
  return r;
}

template <typename T>
DCHML_ROW_INLINE T tile_sum(const T* x, int64_t cp) {
  using V = typename TileVec<T>::type;
  V a = *reinterpret_cast<const V*>(x);
  for (int64_t q0 = kProxyTile; q0 < cp; q0 += kProxyTile) a += *reinterpret_cast<const V*>(x + q0);
  T r = T(0);
  for (int l = 0; l < kProxyTile; ++l) r += a[l];
  return r;
}

// logsumexp of {extra} U {scale * s[q] : q negative}; tmp holds cp values (overwritten).
template <typename T>
DCHML_ROW_INLINE T negatives_lse(const T* s, int64_t c, int64_t cp, PositiveList l, T scale, T extra, T* tmp) {
  for (int64_t q = 0; q < c; ++q) tmp[q] = scale * s[q];
  for (int64_t q = c; q < cp; ++q) tmp[q] = neg_infinity<T>();
  for (int64_t e = 0; e < l.npos; ++e) tmp[l.pos[e]] = neg_infinity<T>();
  T m = tile_max(tmp, cp);
  m = extra > m ? extra : m;
  if (m == neg_infinity<T>()) return m;
  exp_shifted_inplace(tmp, cp, m);
  for (int64_t e = 0; e < l.npos; ++e) tmp[l.pos[e]] = T(0);  // float exp clamps exp(-inf) to 1.6e-38
  for (int64_t q = c; q < cp; ++q) tmp[q] = T(0);
  T sum = extra == neg_infinity<T>() ? T(0) : exp_(extra - m);
  return m + log_(sum + tile_sum(tmp, cp));
}

// out[r] = logsumexp({extra[r]} U {scale * s_r[q] : q negative}) for the nr rows of a block: the
// masked AVX-512 routine alongside the tables (float), the generic loops otherwise.
template <typename T>
DCHML_ROW_INLINE void block_negatives_lse(const ProxyPanel<T>& p, const T* s, int nr, const PositiveList* ls, T scale,
                                          const T* extra, T* out, T* tmp) {
  if constexpr (std::is_same_v<T, float>) {
    if (p.tables) {
      const int64_t* pos[kBlockRows];
      int64_t npos[kBlockRows];
      for (int r = 0; r < nr; ++r) {
        pos[r] = ls[r].pos;
        npos[r] = ls[r].npos;
      }
      masked_lse_rows(s, p.cp, nr, p.c, pos, npos, scale, extra, out);
      return;
    }
  }
  for (int r = 0; r < nr; ++r) out[r] = negatives_lse(s + r * p.cp, p.c, p.cp, ls[r], scale, extra[r], tmp);
}

// w[q] = coef * exp(scale * w[q] - lse) over the negatives; the positives' entries are left for
// the caller to overwrite.
template <typename T>
DCHML_ROW_INLINE void row_negative_weights(const ProxyPanel<T>& p, T* w, PositiveList l, T scale, T lse, T coef) {
  if constexpr (std::is_same_v<T, float>) {
    if (p.tables) {
      masked_softmax(w, p.c, l.pos, l.npos, scale, lse, coef);
      return;
    }
  }
  for (int64_t q = 0; q < p.c; ++q) w[q] *= scale;
  exp_shifted_inplace(w, p.c, lse);
  for (int64_t q = 0; q < p.c; ++q) w[q] *= coef;
}

// Rows per block: 4 (their log-sum-exp chains interleave), but 1 for wide rows, so that a
// block's scores stay in the core's cache (4 x 100,000 floats would not).
template <typename T>
int block_rows(const ProxyPanel<T>& p) {
  return p.cp > 4096 ? 1 : kBlockRows;
}

template <typename T>
struct Scratch {
  std::vector<T> s, tmp;
  std::vector<int64_t> pos;  // a block's positives (cp per row), when read from dense labels
  Scratch(int64_t cp, int block) : s(block * cp), tmp(cp), pos(block * cp) {}
};

// body(i0, nr, scratch, positives) for each block of the rows [r0, r1), with the scores of the
// block's `scored` rows (den or codes) in scratch.s and its rows' positives; false when a row's
// labels were not valid.
template <typename T, typename Body>
DCHML_ROW_INLINE bool for_each_block(const RowBlockInputs<T>& in, const T* scored, int64_t r0, int64_t r1,
                                     Body&& body) {
  const ProxyPanel<T>& p = *in.proxies;
  const int block = block_rows(p);
  Scratch<T> sc(p.cp, block);
  PositiveList positives[kBlockRows];
  bool bad = false;
  for (int64_t i0 = r0; i0 < r1; i0 += block) {
    const int nr = static_cast<int>(std::min<int64_t>(block, r1 - i0));
    block_product<Product::kScores>(scored + i0 * p.k, nr, p, sc.s.data());
    for (int r = 0; r < nr; ++r) positives[r] = in.labels.row(i0 + r, sc.pos.data() + r * p.cp, bad);
    body(i0, nr, sc, static_cast<const PositiveList*>(positives));
  }
  return !bad;
}

// The backward's shape: row_weights(i, w, positives, tmp) turns row i's scores w into one weight
// per proxy (writing any output of its own), then one combine of the block's weights into out.
template <typename T, typename RowWeights>
DCHML_ROW_INLINE bool for_each_block_combined(const RowBlockInputs<T>& in, const T* scored, T* out, int64_t r0,
                                              int64_t r1, RowWeights&& row_weights) {
  const ProxyPanel<T>& p = *in.proxies;
  auto body = [&](int64_t i0, int nr, Scratch<T>& sc, const PositiveList* ls) DCHML_INLINE_LAMBDA {
    for (int r = 0; r < nr; ++r) row_weights(i0 + r, sc.s.data() + r * p.cp, ls[r], sc.tmp.data());
    block_product<Product::kCombine>(sc.s.data(), nr, p, out + i0 * p.k);
  };
  return for_each_block(in, scored, r0, r1, body);
}

// The margin-dynamic-softmax forward of a block (rows i0 .. i0 + nr, their scores in sc.s): the
// rows' log-sum-exps computed together, then loss and lse of each row.
template <typename T>
DCHML_ROW_INLINE void mds_block_forward(const RowBlockInputs<T>& in, T eta, T mu, int64_t i0, int nr, Scratch<T>& sc,
                                        const PositiveList* ls, T* loss, T* lse) {
  const ProxyPanel<T>& p = *in.proxies;
  T extra[kBlockRows], u_num[kBlockRows];
  for (int r = 0; r < nr; ++r) {
    const int64_t i = i0 + r;
    const T mean_den = mean_at(sc.s.data() + r * p.cp, ls[r]);
    extra[r] = mds_denominator_logit(eta, mu, p.k, mean_den);
    u_num[r] = surrogate_score(in.separate ? mean_positive_dot(in.codes + i * p.k, p, ls[r]) : mean_den, mu, p.k);
  }
  block_negatives_lse(p, sc.s.data(), nr, ls, eta, extra, lse + i0, sc.tmp.data());
  for (int r = 0; r < nr; ++r) loss[i0 + r] = mds_row_loss(eta, u_num[r], lse[i0 + r]);
}

// Row i's scores w -> one weight per proxy of its gradient (times grad_row): negatives their
// softmax share, positives their gbar share; with `other`, the numerator's part (positive_codes *
// sum_e g_e) is written to grad_codes' row i.
template <typename T>
DCHML_ROW_INLINE void mds_row_weights(const RowBlockInputs<T>& in, T eta, T mu, int64_t i, T* w, PositiveList l,
                                      T lse, T grad_row, T* grad_codes) {
  const ProxyPanel<T>& p = *in.proxies;
  const MdsRowGradient<T> gr = mds_row_gradient(eta, mu, p.k, mean_at(w, l), lse, grad_row, l.npos);
  row_negative_weights(p, w, l, eta, lse, gr.negative_scale);
  const T positive = gr.positive_den + (in.separate ? T(0) : gr.positive_codes);
  for (int64_t e = 0; e < l.npos; ++e) w[l.pos[e]] = positive;
  if (in.separate) {
    T* out = grad_codes + i * p.k;
    for (int64_t j = 0; j < p.k; ++j) out[j] = T(0);
    for (int64_t e = 0; e < l.npos; ++e) {
      const T* g = p.rows.data() + l.pos[e] * p.k;
      for (int64_t j = 0; j < p.k; ++j) out[j] += gr.positive_codes * g[j];
    }
  }
}

// The partial softmax's forward for a block: the negatives' log-sum-exps, then each row's mean
// over its positives.
template <typename T>
DCHML_ROW_INLINE void psl_block_forward(const RowBlockInputs<T>& in, T gamma, T sigma, int64_t i0, int nr,
                                        Scratch<T>& sc, const PositiveList* ls, T* loss, T* lse_neg) {
  const ProxyPanel<T>& p = *in.proxies;
  T none[kBlockRows];
  for (int r = 0; r < nr; ++r) none[r] = neg_infinity<T>();
  block_negatives_lse(p, sc.s.data(), nr, ls, gamma, none, lse_neg + i0, sc.tmp.data());
  for (int r = 0; r < nr; ++r) {
    const T* s = sc.s.data() + r * p.cp;
    auto score = [&](int64_t q) DCHML_INLINE_LAMBDA { return s[q]; };
    loss[i0 + r] = psl_row_loss(gamma, sigma, p.k, ls[r], lse_neg[i0 + r], score);
  }
}

// Row i's scores w -> one weight per proxy of its partial-softmax gradient (times grad_row); kept:
// room for the row's positives' coefficients.
template <typename T>
DCHML_ROW_INLINE void psl_row_weights(const ProxyPanel<T>& p, T gamma, T sigma, T* w, PositiveList l, T lse_neg,
                                      T grad_row, T* kept) {
  int64_t e = 0;  // the positives' coefficients, kept while the row becomes softmax weights
  auto score = [&](int64_t q) DCHML_INLINE_LAMBDA { return w[q]; };
  auto keep = [&](int64_t, T coefficient) DCHML_INLINE_LAMBDA { kept[e++] = coefficient; };
  const T negative_scale = psl_row_gradient(gamma, sigma, p.k, l, lse_neg, grad_row, score, keep);
  if (lse_neg == neg_infinity<T>()) {  // no negatives
    for (int64_t q = 0; q < p.c; ++q) w[q] = T(0);
  } else {
    row_negative_weights(p, w, l, gamma, lse_neg, negative_scale);
  }
  for (e = 0; e < l.npos; ++e) w[l.pos[e]] = kept[e];
}

// The two losses as the passes below see them: the rows whose scores are taken (`scored`), a
// block's forward, and one row's gradient weights (times grad_row; kept: scratch for the row).
template <typename T>
struct MdsRows {
  const RowBlockInputs<T>& in;
  T eta, mu;
  T* grad_codes;  // the numerator's part of the gradient with `other` (else unused)
  const T* scored() const { return in.den; }
  DCHML_ROW_INLINE void block_forward(int64_t i0, int nr, Scratch<T>& sc, const PositiveList* ls, T* loss,
                                      T* lse) const {
    mds_block_forward(in, eta, mu, i0, nr, sc, ls, loss, lse);
  }
  DCHML_ROW_INLINE void row_weights(int64_t i, T* w, PositiveList l, T lse, T grad_row, T*) const {
    mds_row_weights(in, eta, mu, i, w, l, lse, grad_row, grad_codes);
  }
};

template <typename T>
struct PslRows {
  const RowBlockInputs<T>& in;
  T gamma, sigma;
  const T* scored() const { return in.codes; }
  DCHML_ROW_INLINE void block_forward(int64_t i0, int nr, Scratch<T>& sc, const PositiveList* ls, T* loss,
                                      T* lse_neg) const {
    psl_block_forward(in, gamma, sigma, i0, nr, sc, ls, loss, lse_neg);
  }
  DCHML_ROW_INLINE void row_weights(int64_t, T* w, PositiveList l, T lse_neg, T grad_row, T* kept) const {
    psl_row_weights(*in.proxies, gamma, sigma, w, l, lse_neg, grad_row, kept);
  }
};

// The passes over rows [r0, r1), each compiled per instruction set with the loss's row code
// inlined. combined: where the block's weights x proxies product goes (the gradient of the
// scored rows).
template <typename T, typename Loss>
DCHML_SIMD_CLONES bool forward_rows(const Loss& loss, T* out, T* lse, int64_t r0, int64_t r1) {
  auto body = [&](int64_t i0, int nr, Scratch<T>& sc, const PositiveList* ls) DCHML_INLINE_LAMBDA {
    loss.block_forward(i0, nr, sc, ls, out, lse);
  };
  return for_each_block(loss.in, loss.scored(), r0, r1, body);
}

template <typename T, typename Loss>
DCHML_SIMD_CLONES bool backward_rows(const Loss& loss, const T* lse, const T* grad_loss, T* combined, int64_t r0,
                                     int64_t r1) {
  auto row_weights = [&](int64_t i, T* w, PositiveList l, T* kept) DCHML_INLINE_LAMBDA {
    loss.row_weights(i, w, l, lse[i], grad_loss[i], kept);
  };
  return for_each_block_combined(loss.in, loss.scored(), combined, r0, r1, row_weights);
}

// The forward, then from the same scores the gradient of grad_row * sum_i loss_i: the backward's
// second score pass and label read saved.
template <typename T, typename Loss>
DCHML_SIMD_CLONES bool forward_backward_rows(const Loss& loss, T grad_row, T* out, T* lse, T* combined, int64_t r0,
                                             int64_t r1) {
  const ProxyPanel<T>& p = *loss.in.proxies;
  auto body = [&](int64_t i0, int nr, Scratch<T>& sc, const PositiveList* ls) DCHML_INLINE_LAMBDA {
    loss.block_forward(i0, nr, sc, ls, out, lse);
    for (int r = 0; r < nr; ++r)
      loss.row_weights(i0 + r, sc.s.data() + r * p.cp, ls[r], lse[i0 + r], grad_row, sc.tmp.data());
    block_product<Product::kCombine>(sc.s.data(), nr, p, combined + i0 * p.k);
  };
  return for_each_block(loss.in, loss.scored(), r0, r1, body);
}

}  // namespace

template <typename T>
bool row_block_mds_forward(const RowBlockInputs<T>& in, T eta, T mu, T* loss, T* lse, int64_t r0, int64_t r1) {
  return forward_rows(MdsRows<T>{in, eta, mu, nullptr}, loss, lse, r0, r1);
}

template <typename T>
bool row_block_mds_backward(const RowBlockInputs<T>& in, T eta, T mu, const T* lse, const T* grad_loss,
                            T* grad_codes, T* grad_den, int64_t r0, int64_t r1) {
  return backward_rows(MdsRows<T>{in, eta, mu, grad_codes}, lse, grad_loss, in.separate ? grad_den : grad_codes, r0,
                       r1);
}

template <typename T>
bool row_block_psl_forward(const RowBlockInputs<T>& in, T gamma, T sigma, T* loss, T* lse_neg, int64_t r0,
                           int64_t r1) {
  return forward_rows(PslRows<T>{in, gamma, sigma}, loss, lse_neg, r0, r1);
}

template <typename T>
bool row_block_psl_backward(const RowBlockInputs<T>& in, T gamma, T sigma, const T* lse_neg, const T* grad_loss,
                            T* grad_codes, int64_t r0, int64_t r1) {
  return backward_rows(PslRows<T>{in, gamma, sigma}, lse_neg, grad_loss, grad_codes, r0, r1);
}

template <typename T>
bool row_block_mds_forward_backward(const RowBlockInputs<T>& in, T eta, T mu, T grad_row, T* loss, T* lse,
                                    T* grad_codes, T* grad_den, int64_t r0, int64_t r1) {
  return forward_backward_rows(MdsRows<T>{in, eta, mu, grad_codes}, grad_row, loss, lse,
                               in.separate ? grad_den : grad_codes, r0, r1);
}

template <typename T>
bool row_block_psl_forward_backward(const RowBlockInputs<T>& in, T gamma, T sigma, T grad_row, T* loss, T* lse_neg,
                                    T* grad_codes, int64_t r0, int64_t r1) {
  return forward_backward_rows(PslRows<T>{in, gamma, sigma}, grad_row, loss, lse_neg, grad_codes, r0, r1);
}

#define DCHML_ROW_BLOCK_INSTANCES(T)                                                                           \
  template bool row_block_mds_forward<T>(const RowBlockInputs<T>&, T, T, T*, T*, int64_t, int64_t);           \
  template bool row_block_mds_backward<T>(const RowBlockInputs<T>&, T, T, const T*, const T*, T*, T*, int64_t, \
                                          int64_t);                                                            \
  template bool row_block_psl_forward<T>(const RowBlockInputs<T>&, T, T, T*, T*, int64_t, int64_t);           \
  template bool row_block_psl_backward<T>(const RowBlockInputs<T>&, T, T, const T*, const T*, T*, int64_t,    \
                                          int64_t);                                                            \
  template bool row_block_mds_forward_backward<T>(const RowBlockInputs<T>&, T, T, T, T*, T*, T*, T*, int64_t,   \
                                                  int64_t);                                                    \
  template bool row_block_psl_forward_backward<T>(const RowBlockInputs<T>&, T, T, T, T*, T*, T*, int64_t, int64_t);
DCHML_ROW_BLOCK_INSTANCES(float)
DCHML_ROW_BLOCK_INSTANCES(double)
#undef DCHML_ROW_BLOCK_INSTANCES

bool takes_row_block_path(int64_t c, int64_t k, bool sign_tables) {
  constexpr int64_t kTableRowsMaxEntries = int64_t(1) << 23;
  return c <= kRowBlockMaxClasses || (sign_tables && c * k <= kTableRowsMaxEntries);
}

int64_t row_block_grain(int64_t n, int64_t c, int64_t k) {
  constexpr int64_t kSerialWork = int64_t(1) << 15;
  if (n * c * k <= kSerialWork) return std::max<int64_t>(n, 1);
  return kBlockRows;  // at::parallel_for hands each thread an equal share
}

}  // namespace dchml
