// The four loss operators of one backend (schemas in ops/mds_loss.cpp): each builds the backend's
// prepared call (CpuLossCall, CudaLossCall) from its checked inputs and runs one method of it.
#pragma once

#include <torch/library.h>

#include <optional>
#include <tuple>

#include "ops/loss_inputs.h"

namespace dchml {

template <typename Call>
struct LossOperators {
  static std::tuple<at::Tensor, at::Tensor> mds_loss(const at::Tensor& codes, const std::optional<at::Tensor>& other,
                                                     const at::Tensor& proxies, const at::Tensor& labels,
                                                     const std::optional<at::Tensor>& indices, double eta, double mu) {
    return Call(LossInputs(codes, other, proxies, labels, indices)).mds_forward(eta, mu);
  }

  static std::tuple<at::Tensor, at::Tensor> mds_loss_backward(
      const at::Tensor& grad_loss, const at::Tensor& codes, const std::optional<at::Tensor>& other,
      const at::Tensor& proxies, const at::Tensor& labels, const std::optional<at::Tensor>& indices,
      const at::Tensor& lse, double eta, double mu) {
    return Call(LossInputs(codes, other, proxies, labels, indices).backward_of(grad_loss, "lse", lse))
        .mds_backward(eta, mu);
  }

  static std::tuple<at::Tensor, at::Tensor> partial_softmax_loss(const at::Tensor& codes, const at::Tensor& proxies,
                                                                 const at::Tensor& labels,
                                                                 const std::optional<at::Tensor>& indices,
                                                                 double gamma, double sigma) {
    return Call(LossInputs(codes, std::nullopt, proxies, labels, indices)).psl_forward(gamma, sigma);
  }

  static at::Tensor partial_softmax_loss_backward(const at::Tensor& grad_loss, const at::Tensor& codes,
                                                  const at::Tensor& proxies, const at::Tensor& labels,
                                                  const std::optional<at::Tensor>& indices,
                                                  const at::Tensor& lse_neg, double gamma, double sigma) {
    return Call(LossInputs(codes, std::nullopt, proxies, labels, indices).backward_of(grad_loss, "lse_neg", lse_neg))
        .psl_backward(gamma, sigma);
  }

  static void register_kernels(torch::Library& m) {
    m.impl("mds_loss", &mds_loss);
    m.impl("mds_loss_backward", &mds_loss_backward);
    m.impl("partial_softmax_loss", &partial_softmax_loss);
    m.impl("partial_softmax_loss_backward", &partial_softmax_loss_backward);
  }
};

}  // namespace dchml
