// One loss operator call on the CPU, prepared once: the checked contiguous inputs, the path
// (row-block or tiled, core/loss_row_block.h and core/loss_tiled.h), the labels in the form that
// path reads, then one method per operator that allocates the outputs, dispatches on dtype and
// runs the path over threads. The operators in mds_loss_kernel.cpp are one line each.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>
#include <vector>

#include "core/loss_labels.h"
#include "ops/loss_inputs.h"

namespace dchml {

// A forward run for a caller that will need the gradient (the autograd kernel): the loss rows, the
// saved per-row log-sum-exp and, when the call takes the row-block path, the gradient of
// grad_row * sum_i loss_i (grad_other: (0, k) without `other`) from the forward's own scores.
// On the tiled path the gradients are undefined and the backward operator recomputes them.
struct ForwardWithGradient {
  at::Tensor loss, lse, grad_codes, grad_other;
};

class CpuLossCall {
 public:
  explicit CpuLossCall(LossInputs inputs);

  std::tuple<at::Tensor, at::Tensor> mds_forward(double eta, double mu) const;
  std::tuple<at::Tensor, at::Tensor> mds_backward(double eta, double mu) const;  // needs backward_of
  std::tuple<at::Tensor, at::Tensor> psl_forward(double gamma, double sigma) const;
  at::Tensor psl_backward(double gamma, double sigma) const;  // needs backward_of
  ForwardWithGradient mds_forward_with_gradient(double eta, double mu, double grad_row) const;
  ForwardWithGradient psl_forward_with_gradient(double gamma, double sigma, double grad_row) const;

 private:
  template <typename RowBlock, typename Tiled>
  void run(RowBlock&& row_block, Tiled&& tiled) const;
  template <typename T, typename P, typename Kernel>
  void run_row_block(Kernel&& kernel) const;
  template <typename T, typename P, typename Body>
  void run_tiled(Body&& body) const;
  LabelRows label_rows() const;
  [[noreturn]] void raise_label_problem() const;

  LossInputs in_;
  bool row_block_ = false;
  // labels as the path reads them: dense rows (row-block path) or a CSR
  at::Tensor dense_;
  LabelDtype dense_dtype_ = LabelDtype::kByte;
  at::Tensor offsets_, indices_;            // a CSR given by the caller
  std::vector<int64_t> csr_offsets_, csr_indices_;  // or converted from dense labels here
};

// Dense (n, c) 0/1 labels -> CSR of the positives (the labels_to_csr operator).
std::tuple<at::Tensor, at::Tensor> labels_to_csr_cpu(const at::Tensor& labels);

}  // namespace dchml
