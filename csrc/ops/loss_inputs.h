// The checked inputs of one loss operator call, shared by the CPU and CUDA prepared calls
// (ops/cpu/loss_call.h, ops/cuda/mds_loss_kernel.cu). The Python wrappers in dchml/ops/ check
// first and explain; these checks keep direct torch.ops calls safe. Bad values and shapes raise
// ValueError, bad dtypes TypeError.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <optional>

namespace dchml {

// labels: the dense (n, c) 0/1 matrix when indices is None; otherwise the CSR offsets (n + 1,)
// int64 of the positives listed in indices (nnz,) int64 (see ops/mds_loss.cpp).
inline void check_loss_inputs(const at::Tensor& codes, const std::optional<at::Tensor>& other,
                              const at::Tensor& proxies, const at::Tensor& labels,
                              const std::optional<at::Tensor>& indices) {
  TORCH_CHECK_VALUE(codes.dim() == 2, "codes must be 2-D (n, k), got ", codes.dim(), "-D");
  TORCH_CHECK_TYPE(codes.scalar_type() == at::kFloat || codes.scalar_type() == at::kDouble,
                   "codes must be float32 or float64, got ", codes.scalar_type());
  const int64_t n = codes.size(0), k = codes.size(1);
  if (other.has_value()) {
    TORCH_CHECK_VALUE(other->sizes() == codes.sizes(), "other must have the shape of codes ", codes.sizes(),
                      ", got ", other->sizes());
    TORCH_CHECK_TYPE(other->scalar_type() == codes.scalar_type(), "other must have the dtype of codes (",
                     codes.scalar_type(), "), got ", other->scalar_type());
    TORCH_CHECK_VALUE(other->device() == codes.device(), "other must be on ", codes.device(), ", got ",
                      other->device());
  }
  TORCH_CHECK_VALUE(proxies.dim() == 2 && proxies.size(1) == k, "proxies must be (c, ", k, "), got ",
                    proxies.sizes());
  TORCH_CHECK_TYPE(proxies.scalar_type() == codes.scalar_type() || proxies.scalar_type() == at::kChar,
                   "proxies must be int8 or have the dtype of codes (", codes.scalar_type(), "), got ",
                   proxies.scalar_type());
  if (indices.has_value()) {
    TORCH_CHECK_VALUE(labels.dim() == 1 && labels.size(0) == n + 1 && labels.scalar_type() == at::kLong,
                      "label offsets must be int64 of shape (", n + 1, ",), got ", labels.scalar_type(), " ",
                      labels.sizes());
    TORCH_CHECK_VALUE(indices->dim() == 1 && indices->scalar_type() == at::kLong,
                      "label indices must be 1-D int64, got ", indices->scalar_type(), " ", indices->sizes());
    TORCH_CHECK_VALUE(indices->device() == codes.device(), "all inputs must be on ", codes.device(), ", got ",
                      indices->device());
  } else {
    TORCH_CHECK_VALUE(labels.dim() == 2 && labels.size(0) == n && labels.size(1) == proxies.size(0),
                      "labels must be (n, c) = (", n, ", ", proxies.size(0), "), got ", labels.sizes());
    TORCH_CHECK_TYPE(!labels.is_complex(), "labels must be 0/1 as bool, integer or float, got ",
                     labels.scalar_type());
  }
  for (const at::Tensor* t : {&proxies, &labels})
    TORCH_CHECK_VALUE(t->device() == codes.device(), "all inputs must be on ", codes.device(), ", got ",
                      t->device());
}

inline void check_row_vector(const char* name, const at::Tensor& t, const at::Tensor& codes) {
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == codes.size(0), name, " must have shape (", codes.size(0),
                    ",), got ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == codes.scalar_type(), name, " must have the dtype of codes, got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == codes.device(), name, " must be on ", codes.device(), ", got ", t.device());
}

// Checked, contiguous inputs: the forward's, and with grad_loss and the saved per-row log-sum-exp
// the backward's. Labels stay as given: each backend reads them in its own form.
struct LossInputs {
  at::Tensor codes, den, proxies;  // den: `other` when separate, else codes
  bool separate = false;
  int64_t n = 0, c = 0, k = 0;
  at::Tensor labels;
  std::optional<at::Tensor> indices;
  at::Tensor grad_loss, saved;  // backward only

  LossInputs(const at::Tensor& codes_in, const std::optional<at::Tensor>& other, const at::Tensor& proxies_in,
             const at::Tensor& labels_in, const std::optional<at::Tensor>& indices_in)
      : labels(labels_in), indices(indices_in) {
    check_loss_inputs(codes_in, other, proxies_in, labels_in, indices_in);
    codes = codes_in.contiguous();
    proxies = proxies_in.contiguous();
    separate = other.has_value();
    den = separate ? other->contiguous() : codes;
    n = codes.size(0);
    c = proxies.size(0);
    k = codes.size(1);
  }

  LossInputs& backward_of(const at::Tensor& grad_loss_in, const char* saved_name, const at::Tensor& saved_in) {
    check_row_vector("grad_loss", grad_loss_in, codes);
    check_row_vector(saved_name, saved_in, codes);
    grad_loss = grad_loss_in.contiguous();
    saved = saved_in.contiguous();
    return *this;
  }

  at::Tensor row_output() const { return at::empty({n}, codes.options()); }
  at::Tensor code_output(bool present = true) const { return at::empty({present ? n : 0, k}, codes.options()); }
};

// Calls body(T(), P()) with T the codes' floating dtype and P the proxies' element type (int8, or
// the codes' dtype): the one type switch of every loss kernel, CPU and CUDA.
template <typename F>
void dispatch_proxies(const at::Tensor& codes, const at::Tensor& proxies, F&& body) {
  AT_DISPATCH_FLOATING_TYPES(codes.scalar_type(), "dchml_loss", [&] {
    if (proxies.scalar_type() == at::kChar)
      body(scalar_t(), int8_t());
    else
      body(scalar_t(), scalar_t());
  });
}

}  // namespace dchml
