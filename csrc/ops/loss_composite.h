// The gradients of the losses (docs/spec.md §3, §4, §6) as compositions of differentiable ATen
// operators: the values the backward operators compute, in a form autograd can differentiate
// again. Used only for a differentiable backward (create_graph=True, see ops/mds_loss.cpp); it
// forms (n x c) scores and softmax weights, which the fused kernels never do.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace dchml {

// Arguments as the backward operators take them (labels dense, or CSR offsets with indices).
// Returns (grad_codes, grad_other), grad_other undefined when `other` is None (its part is then
// in grad_codes).
std::tuple<at::Tensor, at::Tensor> mds_gradient_composite(const at::Tensor& grad_loss, const at::Tensor& codes,
                                                          const std::optional<at::Tensor>& other,
                                                          const at::Tensor& proxies, const at::Tensor& labels,
                                                          const std::optional<at::Tensor>& indices, double eta,
                                                          double mu);

at::Tensor psl_gradient_composite(const at::Tensor& grad_loss, const at::Tensor& codes, const at::Tensor& proxies,
                                  const at::Tensor& labels, const std::optional<at::Tensor>& indices, double gamma,
                                  double sigma);

}  // namespace dchml
