// Schemas of the loss operators (METHOD.md §3, §4, §6). Kernels: ops/cpu/mds_loss_kernel.cpp,
// ops/cuda/mds_loss_kernel.cu; Python wrappers, fake kernels and autograd: dchml/ops.py.
//
// Labels travel as CSR: offsets (n+1,) int64 and indices (nnz,) int64, sorted and distinct within
// each row, every row non-empty (dchml/ops.py normalises dense and sparse labels to this form).
// The forward ops return the per-row losses and ONE saved per-row scalar (a log-sum-exp); the
// backward ops recompute the scores from it, so no (n x c) tensor exists in either direction.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(dchml, m) {
  // Dense (n, c) 0/1 labels -> CSR of the positives. ValueError for values other than 0/1 and for
  // rows without a positive (how many, and the first).
  m.def("labels_to_csr(Tensor labels) -> (Tensor offsets, Tensor indices)");
  // Margin-dynamic-softmax rows (eq. 13), or the inter-modal term (eq. 14) when `other` is given:
  // numerator surrogate from codes, denominator (surrogate and negatives) from other.
  // Returns (loss (n,), lse (n,)) with lse = logsumexp({eta u_den} U {eta s_q : q negative}).
  m.def(
      "mds_loss(Tensor codes, Tensor? other, Tensor proxies, Tensor offsets, Tensor indices, float eta, "
      "float mu) -> (Tensor loss, Tensor lse)");
  // Returns (grad_codes (n, k), grad_other (n, k), or (0, k) when other is None: its part is then
  // included in grad_codes).
  m.def(
      "mds_loss_backward(Tensor grad_loss, Tensor codes, Tensor? other, Tensor proxies, Tensor offsets, "
      "Tensor indices, Tensor lse, float eta, float mu) -> (Tensor grad_codes, Tensor grad_other)");
  // PSLDH partial-softmax rows (§6). Returns (loss (n,), lse_neg (n,)), lse_neg the log-sum-exp of
  // gamma s_q over the negatives (-inf for a row without negatives).
  m.def(
      "partial_softmax_loss(Tensor codes, Tensor proxies, Tensor offsets, Tensor indices, float gamma, "
      "float sigma) -> (Tensor loss, Tensor lse_neg)");
  // The same losses reduced over rows inside the op (reduction: 1 = mean, 2 = sum, as
  // at::Reduction), so that loss.backward() runs ONE autograd node: at the paper's scale a separate
  // mean() and its backward node cost ~35 us of a ~90 us step (measured). Returns (loss (), lse (n,)).
  // Mean of an empty batch is 0 (not NaN), as in dchml.losses.
  m.def(
      "mds_loss_reduced(Tensor codes, Tensor? other, Tensor proxies, Tensor offsets, Tensor indices, float eta, "
      "float mu, int reduction) -> (Tensor loss, Tensor lse)");
  m.def(
      "partial_softmax_loss_reduced(Tensor codes, Tensor proxies, Tensor offsets, Tensor indices, float gamma, "
      "float sigma, int reduction) -> (Tensor loss, Tensor lse_neg)");
  m.def(
      "partial_softmax_loss_backward(Tensor grad_loss, Tensor codes, Tensor proxies, Tensor offsets, "
      "Tensor indices, Tensor lse_neg, float gamma, float sigma) -> Tensor");
}

// ---- Autograd (device-independent, in C++) ----
// The backward of both losses is another operator (the *_backward schemas above), wired here as
// a torch::autograd::Function registered for the Autograd key, like torchvision's roi_align. In
// C++ rather than torch.library.register_autograd because at the paper's scale (n = 128, c = 21)
// the Python autograd hop costs more than the kernels: measured about 100 us of a 230 us step.
// torch.compile traces through it (the backward ops have fake kernels in dchml/ops.py).
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ATen.h>
#include <torch/autograd.h>

namespace dchml {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Typed handles of the row operators, looked up once (the autograd functions below call them).
const auto& mds_loss_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("dchml::mds_loss", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const std::optional<at::Tensor>&,
                                                                 const at::Tensor&, const at::Tensor&,
                                                                 const at::Tensor&, double, double)>();
  return op;
}

const auto& mds_loss_backward_op() {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("dchml::mds_loss_backward", "")
          .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                    const std::optional<at::Tensor>&, const at::Tensor&,
                                                    const at::Tensor&, const at::Tensor&, const at::Tensor&, double,
                                                    double)>();
  return op;
}

const auto& partial_softmax_loss_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("dchml::partial_softmax_loss", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                 const at::Tensor&, const at::Tensor&, double,
                                                                 double)>();
  return op;
}

const auto& partial_softmax_loss_backward_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("dchml::partial_softmax_loss_backward", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&, const at::Tensor&, double, double)>();
  return op;
}

class MdsLossFunction : public torch::autograd::Function<MdsLossFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& codes, const std::optional<at::Tensor>& other,
                               const at::Tensor& proxies, const at::Tensor& offsets, const at::Tensor& indices,
                               double eta, double mu) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [loss, lse] = mds_loss_op().call(codes, other, proxies, offsets, indices, eta, mu);
    ctx->save_for_backward({codes, other.value_or(at::Tensor()), proxies, offsets, indices, lse});
    ctx->saved_data["eta"] = eta;
    ctx->saved_data["mu"] = mu;
    ctx->saved_data["has_other"] = other.has_value();
    ctx->mark_non_differentiable({lse});
    return {loss, lse};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const bool has_other = ctx->saved_data["has_other"].toBool();
    if (!grads[0].defined()) return variable_list(7);
    auto [grad_codes, grad_other] =
        mds_loss_backward_op().call(grads[0], saved[0], has_other ? std::optional<at::Tensor>(saved[1]) : std::nullopt,
                                    saved[2], saved[3], saved[4], saved[5], ctx->saved_data["eta"].toDouble(),
                                    ctx->saved_data["mu"].toDouble());
    return {grad_codes, has_other ? grad_other : at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor()};
  }
};

class PartialSoftmaxFunction : public torch::autograd::Function<PartialSoftmaxFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& codes, const at::Tensor& proxies,
                               const at::Tensor& offsets, const at::Tensor& indices, double gamma, double sigma) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [loss, lse_neg] = partial_softmax_loss_op().call(codes, proxies, offsets, indices, gamma, sigma);
    ctx->save_for_backward({codes, proxies, offsets, indices, lse_neg});
    ctx->saved_data["gamma"] = gamma;
    ctx->saved_data["sigma"] = sigma;
    ctx->mark_non_differentiable({lse_neg});
    return {loss, lse_neg};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    if (!grads[0].defined()) return variable_list(6);
    at::Tensor grad_codes =
        partial_softmax_loss_backward_op().call(grads[0], saved[0], saved[1], saved[2], saved[3], saved[4],
                                                ctx->saved_data["gamma"].toDouble(), ctx->saved_data["sigma"].toDouble());
    return {grad_codes, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// ---- reduced variants: the row op, then the reduction, in one node ----

// On the CPU the sum is a plain loop into a scalar tensor: at::mean costs ~17 us at n = 128 on the
// 2-core test machine (sum, division, dtype round trip), as much as the loss kernel itself.
// A real CPU tensor whose memory can be read here (not a fake / functional tensor of a
// torch.compile trace, which runs this same autograd code).
bool readable_cpu(const at::Tensor& t) {
  return t.is_cpu() &&
         !t.key_set().has_any(c10::DispatchKeySet({c10::DispatchKey::Python, c10::DispatchKey::Functionalize,
                                                   c10::DispatchKey::PythonTLSSnapshot})) &&
         t.has_storage() && t.storage().data() != nullptr;
}

at::Tensor reduce_rows(const at::Tensor& rows, int64_t reduction) {
  TORCH_CHECK_VALUE(reduction == 1 || reduction == 2, "reduction must be 1 (mean) or 2 (sum), got ", reduction);
  if (readable_cpu(rows) && rows.is_contiguous()) {
    const int64_t n = rows.numel();
    double acc = 0;  // float64 accumulation for both dtypes
    AT_DISPATCH_FLOATING_TYPES(rows.scalar_type(), "reduce_rows", [&] {
      const scalar_t* r = rows.const_data_ptr<scalar_t>();
      for (int64_t i = 0; i < n; ++i) acc += static_cast<double>(r[i]);
    });
    if (reduction == 1 && n > 0) acc /= static_cast<double>(n);
    return at::scalar_tensor(acc, rows.options());
  }
  if (reduction == 2 || rows.sym_numel() == 0) return rows.sum();
  return rows.mean();
}

// d(reduced)/d(rows): grad (a scalar) for sum, grad / n for mean, as an (n,) tensor. On the CPU
// the scalar is read directly (no device sync there) and one filled tensor made.
at::Tensor expand_reduced_grad(const at::Tensor& grad, const c10::SymInt& n, int64_t reduction) {
  if (readable_cpu(grad)) {
    const int64_t rows = n.expect_int();
    const double scale = reduction == 1 && rows > 0 ? 1.0 / static_cast<double>(rows) : 1.0;
    return at::full({rows}, grad.item<double>() * scale, grad.options());
  }
  const at::Tensor g = reduction == 1 && n > 0 ? grad.div(c10::Scalar(n)) : grad;
  return g.expand_symint({n});
}

// Backend kernel (CPU and CUDA alike): the row op, then the reduction.
std::tuple<at::Tensor, at::Tensor> mds_loss_reduced_kernel(const at::Tensor& codes,
                                                           const std::optional<at::Tensor>& other,
                                                           const at::Tensor& proxies, const at::Tensor& offsets,
                                                           const at::Tensor& indices, double eta, double mu,
                                                           int64_t reduction) {
  auto [rows, lse] = mds_loss_op().call(codes, other, proxies, offsets, indices, eta, mu);
  return {reduce_rows(rows, reduction), lse};
}

std::tuple<at::Tensor, at::Tensor> partial_softmax_loss_reduced_kernel(const at::Tensor& codes,
                                                                       const at::Tensor& proxies,
                                                                       const at::Tensor& offsets,
                                                                       const at::Tensor& indices, double gamma,
                                                                       double sigma, int64_t reduction) {
  auto [rows, lse_neg] = partial_softmax_loss_op().call(codes, proxies, offsets, indices, gamma, sigma);
  return {reduce_rows(rows, reduction), lse_neg};
}

class MdsLossReducedFunction : public torch::autograd::Function<MdsLossReducedFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& codes, const std::optional<at::Tensor>& other,
                               const at::Tensor& proxies, const at::Tensor& offsets, const at::Tensor& indices,
                               double eta, double mu, int64_t reduction) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [rows, lse] = mds_loss_op().call(codes, other, proxies, offsets, indices, eta, mu);
    ctx->save_for_backward({codes, other.value_or(at::Tensor()), proxies, offsets, indices, lse});
    ctx->saved_data["eta"] = eta;
    ctx->saved_data["mu"] = mu;
    ctx->saved_data["has_other"] = other.has_value();
    ctx->saved_data["reduction"] = reduction;
    ctx->mark_non_differentiable({lse});
    ctx->set_materialize_grads(false);  // lse is non-differentiable: no zero (n,) gradient for it
    return {reduce_rows(rows, reduction), lse};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) return variable_list(8);
    const auto saved = ctx->get_saved_variables();
    const bool has_other = ctx->saved_data["has_other"].toBool();
    const at::Tensor grad_rows =
        expand_reduced_grad(grads[0], saved[0].sym_size(0), ctx->saved_data["reduction"].toInt());
    auto [grad_codes, grad_other] = mds_loss_backward_op().call(
        grad_rows, saved[0], has_other ? std::optional<at::Tensor>(saved[1]) : std::nullopt, saved[2], saved[3],
        saved[4], saved[5], ctx->saved_data["eta"].toDouble(), ctx->saved_data["mu"].toDouble());
    return {grad_codes, has_other ? grad_other : at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class PartialSoftmaxReducedFunction : public torch::autograd::Function<PartialSoftmaxReducedFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& codes, const at::Tensor& proxies,
                               const at::Tensor& offsets, const at::Tensor& indices, double gamma, double sigma,
                               int64_t reduction) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [rows, lse_neg] = partial_softmax_loss_op().call(codes, proxies, offsets, indices, gamma, sigma);
    ctx->save_for_backward({codes, proxies, offsets, indices, lse_neg});
    ctx->saved_data["gamma"] = gamma;
    ctx->saved_data["sigma"] = sigma;
    ctx->saved_data["reduction"] = reduction;
    ctx->mark_non_differentiable({lse_neg});
    ctx->set_materialize_grads(false);
    return {reduce_rows(rows, reduction), lse_neg};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) return variable_list(7);
    const auto saved = ctx->get_saved_variables();
    const at::Tensor grad_rows =
        expand_reduced_grad(grads[0], saved[0].sym_size(0), ctx->saved_data["reduction"].toInt());
    at::Tensor grad_codes =
        partial_softmax_loss_backward_op().call(grad_rows, saved[0], saved[1], saved[2], saved[3], saved[4],
                                                ctx->saved_data["gamma"].toDouble(), ctx->saved_data["sigma"].toDouble());
    return {grad_codes, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> mds_loss_reduced_autograd(const at::Tensor& codes,
                                                             const std::optional<at::Tensor>& other,
                                                             const at::Tensor& proxies, const at::Tensor& offsets,
                                                             const at::Tensor& indices, double eta, double mu,
                                                             int64_t reduction) {
  auto out = MdsLossReducedFunction::apply(codes, other, proxies, offsets, indices, eta, mu, reduction);
  return {out[0], out[1]};
}

std::tuple<at::Tensor, at::Tensor> partial_softmax_loss_reduced_autograd(const at::Tensor& codes,
                                                                         const at::Tensor& proxies,
                                                                         const at::Tensor& offsets,
                                                                         const at::Tensor& indices, double gamma,
                                                                         double sigma, int64_t reduction) {
  auto out = PartialSoftmaxReducedFunction::apply(codes, proxies, offsets, indices, gamma, sigma, reduction);
  return {out[0], out[1]};
}

std::tuple<at::Tensor, at::Tensor> mds_loss_autograd(const at::Tensor& codes, const std::optional<at::Tensor>& other,
                                                     const at::Tensor& proxies, const at::Tensor& offsets,
                                                     const at::Tensor& indices, double eta, double mu) {
  auto out = MdsLossFunction::apply(codes, other, proxies, offsets, indices, eta, mu);
  return {out[0], out[1]};
}

std::tuple<at::Tensor, at::Tensor> partial_softmax_loss_autograd(const at::Tensor& codes, const at::Tensor& proxies,
                                                                 const at::Tensor& offsets, const at::Tensor& indices,
                                                                 double gamma, double sigma) {
  auto out = PartialSoftmaxFunction::apply(codes, proxies, offsets, indices, gamma, sigma);
  return {out[0], out[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(dchml, Autograd, m) {
  m.impl("mds_loss", &mds_loss_autograd);
  m.impl("partial_softmax_loss", &partial_softmax_loss_autograd);
  m.impl("mds_loss_reduced", &mds_loss_reduced_autograd);
  m.impl("partial_softmax_loss_reduced", &partial_softmax_loss_reduced_autograd);
}

// The reduced ops' backend kernels only call the row ops (which dispatch on device) and at::sum /
// at::mean: one function serves CPU and CUDA.
TORCH_LIBRARY_IMPL(dchml, CPU, m) {
  m.impl("mds_loss_reduced", &mds_loss_reduced_kernel);
  m.impl("partial_softmax_loss_reduced", &partial_softmax_loss_reduced_kernel);
}

TORCH_LIBRARY_IMPL(dchml, CUDA, m) {
  m.impl("mds_loss_reduced", &mds_loss_reduced_kernel);
  m.impl("partial_softmax_loss_reduced", &partial_softmax_loss_reduced_kernel);
}

}  // namespace dchml
