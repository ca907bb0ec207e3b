// Schemas of the loss operators (docs/spec.md §3, §4, §6). Kernels: ops/cpu/mds_loss_kernel.cpp,
// ops/cuda/mds_loss_kernel.cu (both through ops/loss_operators.h); Python wrappers and fake
// kernels: dchml/ops/; autograd: below.
//
// Labels travel in one of two forms, as the pair (labels, indices):
// - indices None: labels is the dense (n, c) 0/1 matrix (bool, integer or float);
// - indices given: labels holds the CSR offsets (n+1,) int64 of the positives, indices (nnz,)
//   int64 lists them, sorted and distinct within each row, every row non-empty (dchml/ops/
//   validates user CSR and torch.sparse_csr labels into this form).
// Dense labels of any dtype are read in place, row by row, by the CPU row-block path and by the
// CUDA kernels (as a 0/1 byte mask); the CPU tiled path converts them to a CSR once per call.
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
      "mds_loss(Tensor codes, Tensor? other, Tensor proxies, Tensor labels, Tensor? indices, float eta, "
      "float mu) -> (Tensor loss, Tensor lse)");
  // Returns (grad_codes (n, k), grad_other (n, k), or (0, k) when other is None: its part is then
  // included in grad_codes).
  m.def(
      "mds_loss_backward(Tensor grad_loss, Tensor codes, Tensor? other, Tensor proxies, Tensor labels, "
      "Tensor? indices, Tensor lse, float eta, float mu) -> (Tensor grad_codes, Tensor grad_other)");
  // PSLDH partial-softmax rows (§6). Returns (loss (n,), lse_neg (n,)), lse_neg the log-sum-exp of
  // gamma s_q over the negatives (-inf for a row without negatives).
  m.def(
      "partial_softmax_loss(Tensor codes, Tensor proxies, Tensor labels, Tensor? indices, float gamma, "
      "float sigma) -> (Tensor loss, Tensor lse_neg)");
  // The same losses reduced over rows inside the op (reduction: 1 = mean, 2 = sum, as
  // at::Reduction), so that loss.backward() runs ONE autograd node: at the paper's scale a separate
  // mean() and its backward node cost ~35 us of a ~90 us step (measured). Returns (loss (), lse (n,)).
  // Mean of an empty batch is 0 (not NaN), as in dchml.losses.functional.
  m.def(
      "mds_loss_reduced(Tensor codes, Tensor? other, Tensor proxies, Tensor labels, Tensor? indices, float eta, "
      "float mu, int reduction) -> (Tensor loss, Tensor lse)");
  m.def(
      "partial_softmax_loss_reduced(Tensor codes, Tensor proxies, Tensor labels, Tensor? indices, float gamma, "
      "float sigma, int reduction) -> (Tensor loss, Tensor lse_neg)");
  m.def(
      "partial_softmax_loss_backward(Tensor grad_loss, Tensor codes, Tensor proxies, Tensor labels, "
      "Tensor? indices, Tensor lse_neg, float gamma, float sigma) -> Tensor");
}

// ---- Autograd (device-independent, in C++) ----
// The backward of both losses is another operator (the *_backward schemas above). It is wired
// here as a plain autograd Node, the way ATen's own operators are (a node holding its saved
// tensors as members), registered for the Autograd key. Measured at the paper's scale (n = 128,
// c = 21), step = loss + backward: the Python autograd hop of torch.library.register_autograd
// cost about 100 us of a 230 us step, and torch::autograd::Function (CppNode: a context with a
// string-keyed map, wrapped outputs) about 15 us of an 86 us step. torch.compile traces through
// the node (the backward ops have fake kernels in dchml/ops/). The backward operators have an
// Autograd kernel of their own, so that a backward with create_graph=True is differentiable too.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ATen.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>

#include <c10/core/impl/LocalDispatchKeySet.h>

#include "core/sign_panel.h"
#include "ops/cpu/loss_call.h"
#include "ops/loss_composite.h"

#include <memory>
#include <type_traits>

namespace dchml {
namespace {

using torch::autograd::Node;
using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

// Typed handles of the row operators, looked up once (the autograd code below calls them).
const auto& mds_loss_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("dchml::mds_loss", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const std::optional<at::Tensor>&,
                                                                 const at::Tensor&, const at::Tensor&,
                                                                 const std::optional<at::Tensor>&, double, double)>();
  return op;
}

const auto& mds_loss_backward_op() {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("dchml::mds_loss_backward", "")
          .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                    const std::optional<at::Tensor>&, const at::Tensor&,
                                                    const at::Tensor&, const std::optional<at::Tensor>&,
                                                    const at::Tensor&, double, double)>();
  return op;
}

const auto& partial_softmax_loss_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("dchml::partial_softmax_loss", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                 const at::Tensor&, const std::optional<at::Tensor>&,
                                                                 double, double)>();
  return op;
}

const auto& partial_softmax_loss_backward_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("dchml::partial_softmax_loss_backward", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const std::optional<at::Tensor>&, const at::Tensor&, double, double)>();
  return op;
}

// ---- reductions over rows ----
// reduction codes as at::Reduction: 0 = none (per-row losses), 1 = mean, 2 = sum.

// A real CPU tensor whose memory can be read here (not a fake / functional tensor of a
// torch.compile trace, which runs this same autograd code).
bool readable_cpu(const at::Tensor& t) {
  return t.is_cpu() &&
         !t.key_set().has_any(c10::DispatchKeySet({c10::DispatchKey::Python, c10::DispatchKey::Functionalize,
                                                   c10::DispatchKey::PythonTLSSnapshot})) &&
         t.has_storage() && t.storage().data() != nullptr;
}

// On the CPU the sum is a plain loop into a scalar tensor: at::mean costs ~17 us at n = 128 on the
// 2-core test machine (sum, division, dtype round trip), as much as the loss kernel itself.
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
  if (reduction == 0) return grad;
  // a plain loop (at::full's TensorIterator fill cost ~1 us more here); with a graph to record
  // (create_graph=True), the differentiable form below
  if (readable_cpu(grad) && !at::GradMode::is_enabled()) {
    const int64_t rows = n.expect_int();
    const double scale = reduction == 1 && rows > 0 ? 1.0 / static_cast<double>(rows) : 1.0;
    at::Tensor out = at::empty({rows}, grad.options());
    AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "expand_reduced_grad", [&] {
      const scalar_t value = static_cast<scalar_t>(static_cast<double>(*grad.const_data_ptr<scalar_t>()) * scale);
      scalar_t* o = out.data_ptr<scalar_t>();
      for (int64_t i = 0; i < rows; ++i) o[i] = value;
    });
    return out;
  }
  const at::Tensor g = reduction == 1 && n > 0 ? grad.div(c10::Scalar(n)) : grad;
  return g.expand_symint({n});
}

// ---- the autograd node ----

// Autograd nodes are held by std::shared_ptr up to torch 2.12 and by c10::intrusive_ptr since
// (pytorch#181139); this package supports torch >= 2.4, so the handle type is read off Tensor.
using NodeHandle = std::decay_t<decltype(std::declval<const at::Tensor&>().grad_fn())>;

template <typename N>
auto make_node() {
  if constexpr (std::is_same_v<NodeHandle, std::shared_ptr<Node>>)
    return std::shared_ptr<N>(new N(), [](N* p) { deleteNode(p); });  // torch::autograd::deleteNode, by ADL
  else
    return c10::make_intrusive<N>();
}

// The gradient computed in the forward, times the upstream gradient: a scalar (reduced loss) or
// one value per row (reduction none, any stride). In place when `own` (the node is releasing its
// buffers and nothing else holds this one), else into a new tensor.
at::Tensor scale_rows(at::Tensor unit, const at::Tensor& grad, int64_t reduction, bool own) {
  at::Tensor out = own ? std::move(unit) : at::empty_like(unit);
  const int64_t n = out.size(0), k = out.size(1);
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "scale_rows", [&] {
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    const scalar_t* u = (own ? out : unit).const_data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    if (reduction != 0) {
      const scalar_t v = *g;
      if (own && v == scalar_t(1)) return;
      for (int64_t e = 0; e < n * k; ++e) o[e] = u[e] * v;
      return;
    }
    const int64_t stride = grad.stride(0);
    for (int64_t i = 0; i < n; ++i) {
      const scalar_t v = g[i * stride];
      for (int64_t j = 0; j < k; ++j) o[i * k + j] = u[i * k + j] * v;
    }
  });
  return out;
}

// Which loss, its two scalars, the reduction, and the tensors backward reads (saved with
// version checks: an input changed in place before backward raises instead of giving a wrong
// gradient). On the CPU row-block path the forward also computed the gradient for a unit
// upstream gradient (`unit_codes`, `unit_other`: the size of the codes, no (n x c) tensor); the
// backward then only scales it. Otherwise, and for a differentiable backward (create_graph), the
// backward operator recomputes the scores from the saved log-sum-exp.
struct LossBackward : public Node {
  bool partial_softmax = false;  // PSLDH (gamma, sigma) instead of margin-dynamic-softmax (eta, mu)
  bool has_other = false;
  double a = 0, b = 0;  // (eta, mu) or (gamma, sigma)
  int64_t reduction = 0;
  bool has_indices = false;  // labels: dense (n, c), or CSR offsets with indices
  SavedVariable codes, other, proxies, labels, indices, lse;
  at::Tensor unit_codes, unit_other;  // defined when computed in the forward
  bool releasing = false;             // this apply is the last: the buffers may be handed out

  std::string name() const override {
    return partial_softmax ? "PartialSoftmaxLossBackward" : "MarginDynamicSoftmaxLossBackward";
  }

  void will_release_variables() override { releasing = true; }

  void release_variables() override {
    for (SavedVariable* v : {&codes, &other, &proxies, &labels, &indices, &lse}) v->reset_data();
    unit_codes.reset();
    unit_other.reset();
  }

  variable_list apply(variable_list&& grads) override {
    if (!grads[0].defined()) return variable_list(num_outputs());
    const at::Tensor& grad = grads[0];
    if (unit_codes.defined() && !at::GradMode::is_enabled() && readable_cpu(grad) && grad.layout() == at::kStrided &&
        grad.scalar_type() == unit_codes.scalar_type()) {
      // the saved inputs are unpacked for their version checks only
      for (SavedVariable* v : {&codes, &proxies, &labels, &lse}) v->unpack();
      if (has_other) other.unpack();
      if (has_indices) indices.unpack();
      variable_list out{scale_rows(releasing ? std::move(unit_codes) : unit_codes, grad, reduction, releasing)};
      if (has_other) out.push_back(scale_rows(releasing ? std::move(unit_other) : unit_other, grad, reduction, releasing));
      return out;
    }
    const at::Tensor c = codes.unpack();
    const std::optional<at::Tensor> idx = has_indices ? std::optional<at::Tensor>(indices.unpack()) : std::nullopt;
    const at::Tensor grad_rows = expand_reduced_grad(grad, c.sym_size(0), reduction);
    if (partial_softmax)
      return {partial_softmax_loss_backward_op().call(grad_rows, c, proxies.unpack(), labels.unpack(), idx,
                                                      lse.unpack(), a, b)};
    auto [grad_codes, grad_other] = mds_loss_backward_op().call(
        grad_rows, c, has_other ? std::optional<at::Tensor>(other.unpack()) : std::nullopt, proxies.unpack(),
        labels.unpack(), idx, lse.unpack(), a, b);
    if (has_other) return {grad_codes, grad_other};
    return {grad_codes};
  }
};

// Whether the forward may run the CPU kernels directly and compute the gradient along: real CPU
// tensors (not the fake or functional tensors of a torch.compile trace, which take the operator
// path and its fake kernels) and no Python dispatch mode that must see the operator calls.
bool gradient_in_forward(const at::Tensor& codes, const std::optional<at::Tensor>& other, const at::Tensor& proxies,
                         const at::Tensor& labels, const std::optional<at::Tensor>& indices) {
  if (c10::impl::tls_is_dispatch_key_included(c10::DispatchKey::Python) ||
      c10::impl::tls_is_dispatch_key_included(c10::DispatchKey::PythonTLSSnapshot))
    return false;
  return readable_cpu(codes) && readable_cpu(proxies) && readable_cpu(labels) &&
         (!other.has_value() || readable_cpu(*other)) && (!indices.has_value() || readable_cpu(*indices));
}

// The Autograd-key kernel of the four loss operators: the row op below autograd, the reduction,
// and (when a gradient is needed) one LossBackward node for the loss output; the saved per-row
// log-sum-exp is not differentiable.
std::tuple<at::Tensor, at::Tensor> loss_with_node(bool partial_softmax, const at::Tensor& codes,
                                                  const std::optional<at::Tensor>& other, const at::Tensor& proxies,
                                                  const at::Tensor& labels, const std::optional<at::Tensor>& indices, double a,
                                                  double b, int64_t reduction) {
  const bool needs_grad = at::GradMode::is_enabled() &&
                          (codes.requires_grad() || (other.has_value() && other->requires_grad()));
  at::Tensor rows, lse, unit_codes, unit_other;
  if (needs_grad && gradient_in_forward(codes, other, proxies, labels, indices)) {
    // the gradient of the returned loss for a unit upstream gradient: rows weighted 1 (none, sum)
    // or 1 / n (mean)
    at::AutoDispatchBelowADInplaceOrView guard;
    const double grad_row = reduction == 1 && codes.size(0) > 0 ? 1.0 / static_cast<double>(codes.size(0)) : 1.0;
    CpuLossCall call(LossInputs(codes, other, proxies, labels, indices));
    ForwardWithGradient f = partial_softmax ? call.psl_forward_with_gradient(a, b, grad_row)
                                            : call.mds_forward_with_gradient(a, b, grad_row);
    rows = std::move(f.loss);
    lse = std::move(f.lse);
    unit_codes = std::move(f.grad_codes);
    unit_other = std::move(f.grad_other);
  } else {
    at::AutoDispatchBelowADInplaceOrView guard;
    std::tie(rows, lse) = partial_softmax ? partial_softmax_loss_op().call(codes, proxies, labels, indices, a, b)
                                          : mds_loss_op().call(codes, other, proxies, labels, indices, a, b);
  }
  at::Tensor loss = reduction == 0 ? rows : reduce_rows(rows, reduction);
  if (!needs_grad) return {loss, lse};
  auto node = make_node<LossBackward>();
  node->set_next_edges(other.has_value() ? torch::autograd::collect_next_edges(codes, *other)
                                         : torch::autograd::collect_next_edges(codes));
  node->partial_softmax = partial_softmax;
  node->has_other = other.has_value();
  node->a = a;
  node->b = b;
  node->reduction = reduction;
  node->codes = SavedVariable(codes, false);
  if (other.has_value()) node->other = SavedVariable(*other, false);
  node->proxies = SavedVariable(proxies, false);
  node->labels = SavedVariable(labels, false);
  node->has_indices = indices.has_value();
  if (indices.has_value()) node->indices = SavedVariable(*indices, false);
  node->lse = SavedVariable(lse, false);
  node->unit_codes = std::move(unit_codes);
  node->unit_other = std::move(unit_other);
  torch::autograd::set_history(loss, node);
  return {loss, lse};
}

std::tuple<at::Tensor, at::Tensor> mds_loss_autograd(const at::Tensor& codes, const std::optional<at::Tensor>& other,
                                                     const at::Tensor& proxies, const at::Tensor& labels,
                                                     const std::optional<at::Tensor>& indices, double eta, double mu) {
  return loss_with_node(false, codes, other, proxies, labels, indices, eta, mu, 0);
}

std::tuple<at::Tensor, at::Tensor> mds_loss_reduced_autograd(const at::Tensor& codes,
                                                             const std::optional<at::Tensor>& other,
                                                             const at::Tensor& proxies, const at::Tensor& labels,
                                                             const std::optional<at::Tensor>& indices, double eta, double mu,
                                                             int64_t reduction) {
  TORCH_CHECK_VALUE(reduction == 1 || reduction == 2, "reduction must be 1 (mean) or 2 (sum), got ", reduction);
  return loss_with_node(false, codes, other, proxies, labels, indices, eta, mu, reduction);
}

std::tuple<at::Tensor, at::Tensor> partial_softmax_loss_autograd(const at::Tensor& codes, const at::Tensor& proxies,
                                                                 const at::Tensor& labels, const std::optional<at::Tensor>& indices,
                                                                 double gamma, double sigma) {
  return loss_with_node(true, codes, std::nullopt, proxies, labels, indices, gamma, sigma, 0);
}

std::tuple<at::Tensor, at::Tensor> partial_softmax_loss_reduced_autograd(const at::Tensor& codes,
                                                                         const at::Tensor& proxies,
                                                                         const at::Tensor& labels,
                                                                         const std::optional<at::Tensor>& indices, double gamma,
                                                                         double sigma, int64_t reduction) {
  TORCH_CHECK_VALUE(reduction == 1 || reduction == 2, "reduction must be 1 (mean) or 2 (sum), got ", reduction);
  return loss_with_node(true, codes, std::nullopt, proxies, labels, indices, gamma, sigma, reduction);
}

// Backend kernels of the reduced ops (CPU and CUDA alike): the row op, then the reduction.
std::tuple<at::Tensor, at::Tensor> mds_loss_reduced_kernel(const at::Tensor& codes,
                                                           const std::optional<at::Tensor>& other,
                                                           const at::Tensor& proxies, const at::Tensor& labels,
                                                           const std::optional<at::Tensor>& indices, double eta, double mu,
                                                           int64_t reduction) {
  auto [rows, lse] = mds_loss_op().call(codes, other, proxies, labels, indices, eta, mu);
  return {reduce_rows(rows, reduction), lse};
}

std::tuple<at::Tensor, at::Tensor> partial_softmax_loss_reduced_kernel(const at::Tensor& codes,
                                                                       const at::Tensor& proxies,
                                                                       const at::Tensor& labels,
                                                                       const std::optional<at::Tensor>& indices, double gamma,
                                                                       double sigma, int64_t reduction) {
  auto [rows, lse_neg] = partial_softmax_loss_op().call(codes, proxies, labels, indices, gamma, sigma);
  return {reduce_rows(rows, reduction), lse_neg};
}

// ---- the backward operators under autograd: a differentiable backward ----
// A backward run with create_graph=True must return gradients that autograd can differentiate
// again; the fused backward kernels are not differentiable. So the backward operators have an
// Autograd kernel too: without a graph to record (every first-order backward) it is the fused
// kernel alone; with one, the fused kernel still runs (its input checks, its values) and the
// result carries the graph of the same gradient written as ATen operators (ops/loss_composite.h),
// so second derivatives are exact. That graph holds (n x c) tensors: a cost only the caller who
// asks for it pays.
bool records_graph(std::initializer_list<const at::Tensor*> inputs) {
  if (!at::GradMode::is_enabled()) return false;
  for (const at::Tensor* t : inputs)
    if (t->defined() && t->requires_grad()) return true;
  return false;
}

// The values of `fused`, the derivatives of `composite` (composite - composite.detach() is 0).
at::Tensor with_graph_of(const at::Tensor& fused, const at::Tensor& composite) {
  return fused.add(composite.sub(composite.detach()));
}

std::tuple<at::Tensor, at::Tensor> mds_loss_backward_autograd(const at::Tensor& grad_loss, const at::Tensor& codes,
                                                              const std::optional<at::Tensor>& other,
                                                              const at::Tensor& proxies, const at::Tensor& labels,
                                                              const std::optional<at::Tensor>& indices,
                                                              const at::Tensor& lse, double eta, double mu) {
  const at::Tensor none;
  const bool graph = records_graph({&grad_loss, &codes, other.has_value() ? &*other : &none});
  std::tuple<at::Tensor, at::Tensor> fused;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    fused = mds_loss_backward_op().call(grad_loss, codes, other, proxies, labels, indices, lse, eta, mu);
  }
  if (!graph) return fused;
  auto [grad_codes, grad_other] = mds_gradient_composite(grad_loss, codes, other, proxies, labels, indices, eta, mu);
  return {with_graph_of(std::get<0>(fused), grad_codes),
          other.has_value() ? with_graph_of(std::get<1>(fused), grad_other) : std::get<1>(fused)};
}

at::Tensor partial_softmax_loss_backward_autograd(const at::Tensor& grad_loss, const at::Tensor& codes,
                                                  const at::Tensor& proxies, const at::Tensor& labels,
                                                  const std::optional<at::Tensor>& indices, const at::Tensor& lse_neg,
                                                  double gamma, double sigma) {
  const bool graph = records_graph({&grad_loss, &codes});
  at::Tensor fused;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    fused = partial_softmax_loss_backward_op().call(grad_loss, codes, proxies, labels, indices, lse_neg, gamma, sigma);
  }
  if (!graph) return fused;
  return with_graph_of(fused, psl_gradient_composite(grad_loss, codes, proxies, labels, indices, gamma, sigma));
}

}  // namespace

// The CPU float products and softmax: AVX-512 lookup tables (SignPanel, masked_softmax) when the
// CPU has them, else the register-tiled loops (row-block path) or a GEMM (tiled path). request:
// -1 reports, 0 switches the tables off, 1 back on (where supported); returns whether they run.
// For tests and benchmarks, so that both paths are exercised on one machine.
bool loss_tables(int64_t request) {
  TORCH_CHECK_VALUE(request >= -1 && request <= 1, "request must be -1, 0 or 1, got ", request);
  if (request >= 0) SignPanel::set_enabled(request == 1);
  return SignPanel::supported();
}

TORCH_LIBRARY_FRAGMENT(dchml, m) { m.def("_loss_tables(int request) -> bool", &loss_tables); }

TORCH_LIBRARY_IMPL(dchml, Autograd, m) {
  m.impl("mds_loss", &mds_loss_autograd);
  m.impl("partial_softmax_loss", &partial_softmax_loss_autograd);
  m.impl("mds_loss_reduced", &mds_loss_reduced_autograd);
  m.impl("partial_softmax_loss_reduced", &partial_softmax_loss_reduced_autograd);
}

// the backward operators' own (a differentiable backward, see above)
TORCH_LIBRARY_IMPL(dchml, Autograd, m) {
  m.impl("mds_loss_backward", &mds_loss_backward_autograd);
  m.impl("partial_softmax_loss_backward", &partial_softmax_loss_backward_autograd);
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
