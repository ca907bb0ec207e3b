// The loss gradients as differentiable ATen compositions: see loss_composite.h. Written with
// symbolic sizes, so that torch.compile and opcheck can trace them with dynamic shapes.
#include "ops/loss_composite.h"

#include <ATen/ATen.h>

#include <limits>

namespace dchml {
namespace {

constexpr double kMinusInfinity = -std::numeric_limits<double>::infinity();

// (n, c) bool: the positives, from dense 0/1 labels or from the CSR (offsets, indices). The row
// of each listed positive comes from a search of the offsets: no shape depends on the values.
at::Tensor positive_mask(const at::Tensor& codes, const at::Tensor& proxies, const at::Tensor& labels,
                         const std::optional<at::Tensor>& indices) {
  if (!indices.has_value()) return labels.scalar_type() == at::kBool ? labels : labels.ne(0);
  const at::Tensor entries = at::arange(c10::Scalar(indices->sym_size(0)), indices->options());
  const at::Tensor rows = at::searchsorted(labels.slice(0, 1), entries, /*out_int32=*/false, /*right=*/true);
  c10::List<std::optional<at::Tensor>> where;
  where.push_back(rows);
  where.push_back(*indices);
  const auto mask_options = codes.options().dtype(at::kBool);
  return at::zeros_symint({codes.sym_size(0), proxies.sym_size(0)}, mask_options)
      .index_put_(where, at::ones({}, mask_options));
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> mds_gradient_composite(const at::Tensor& grad_loss, const at::Tensor& codes,
                                                          const std::optional<at::Tensor>& other,
                                                          const at::Tensor& proxies, const at::Tensor& labels,
                                                          const std::optional<at::Tensor>& indices, double eta,
                                                          double mu) {
  const at::Tensor g = proxies.to(codes.scalar_type());
  const at::Tensor positive = positive_mask(codes, proxies, labels, indices);
  const at::Tensor share = positive.to(codes.scalar_type());
  const at::Tensor gbar = share.mm(g).div(share.sum(1, true));
  const at::Tensor& den = other.has_value() ? *other : codes;
  // the softmax over {eta u_i} U {eta s_iq : q negative}; positives are out of it (weight 0)
  const at::Tensor surrogate = den.mul(gbar).sum(1, true).sub(c10::Scalar(mu * codes.sym_size(1))).mul(eta);
  const at::Tensor negatives = den.mm(g.t()).mul(eta).masked_fill(positive, kMinusInfinity);
  const at::Tensor p = at::softmax(at::cat({surrogate, negatives}, 1), 1);
  const at::Tensor p0 = p.slice(1, 0, 1);
  const at::Tensor pull = p.slice(1, 1).mm(g);  // sum_q p_q g_q
  const at::Tensor scale = grad_loss.unsqueeze(1).mul(eta);
  if (other.has_value()) return {gbar.mul(scale).neg(), p0.mul(gbar).add(pull).mul(scale)};
  return {p0.sub(1).mul(gbar).add(pull).mul(scale), at::Tensor()};
}

at::Tensor psl_gradient_composite(const at::Tensor& grad_loss, const at::Tensor& codes, const at::Tensor& proxies,
                                  const at::Tensor& labels, const std::optional<at::Tensor>& indices, double gamma,
                                  double sigma) {
  const at::Tensor g = proxies.to(codes.scalar_type());
  const at::Tensor positive = positive_mask(codes, proxies, labels, indices);
  const at::Tensor share = positive.to(codes.scalar_type());
  const at::Tensor scores = codes.mm(g.t());
  // A row without negatives has loss 0 and gradient 0: its logits are made finite (0) and its
  // gradient multiplied by 0, so that no -inf - -inf = NaN reaches the graph.
  const at::Tensor has_negative = positive.logical_not().any(1, true);
  const at::Tensor negatives =
      scores.mul(gamma).masked_fill(positive, kMinusInfinity).masked_fill(has_negative.logical_not(), 0.0);
  const at::Tensor lse_neg = at::logsumexp(negatives, {1}, true);
  const at::Tensor pi = negatives.sub(lse_neg).exp();  // softmax over the negatives
  const at::Tensor positive_logits = scores.sub(c10::Scalar(sigma * codes.sym_size(1))).mul(gamma);
  // d/dpos_p of -pos_p + logaddexp(pos_p, lse_neg) is -(1 - sigmoid(pos_p - lse_neg)) = -w_p
  const at::Tensor w = at::sigmoid(lse_neg.sub(positive_logits)).mul(share);
  const at::Tensor coefficients = pi.mul(w.sum(1, true)).sub(w).mul(gamma).div(share.sum(1, true));
  return coefficients.mm(g).mul(grad_loss.unsqueeze(1).mul(has_negative.to(codes.scalar_type())));
}

}  // namespace dchml
