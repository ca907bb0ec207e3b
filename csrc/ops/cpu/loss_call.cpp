// The CPU loss call: see loss_call.h.
#include "ops/cpu/loss_call.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <atomic>
#include <memory>
#include <type_traits>

#include "core/loss_proxies.h"
#include "core/loss_row_block.h"
#include "core/loss_tiled.h"

namespace dchml {
namespace {

// Dense labels as one of the element types the paths read in place; any other dtype (half,
// bfloat16, int16, ...) is converted to float32, which keeps every value that is not 0/1 so.
std::tuple<at::Tensor, LabelDtype> readable_labels(const at::Tensor& labels) {
  switch (labels.scalar_type()) {
    case at::kBool:
    case at::kByte: return {labels.contiguous(), LabelDtype::kByte};
    case at::kChar: return {labels.contiguous(), LabelDtype::kInt8};
    case at::kFloat: return {labels.contiguous(), LabelDtype::kFloat32};
    case at::kDouble: return {labels.contiguous(), LabelDtype::kFloat64};
    case at::kInt: return {labels.contiguous(), LabelDtype::kInt32};
    case at::kLong: return {labels.contiguous(), LabelDtype::kInt64};
    default: return {labels.to(at::kFloat).contiguous(), LabelDtype::kFloat32};
  }
}

[[noreturn]] void raise_dense_label_problem(const LabelProblem& p) {
  TORCH_CHECK_VALUE(p.bad_row < 0, "labels must be 0/1, got ", p.bad_value, " at row ", p.bad_row, ", column ",
                    p.bad_column);
  TORCH_CHECK_VALUE(p.empty_rows == 0, "labels: ", p.empty_rows, " row(s) have no positive label (first: row ",
                    p.first_empty, "); every sample needs at least one label (docs/spec.md §3)");
  TORCH_CHECK(false, "dchml: labels were flagged invalid but no invalid value was found");
}

template <typename P>
void raise_if_not_sign(const at::Tensor& proxies, int64_t bad) {
  const int64_t k = std::max<int64_t>(proxies.size(1), 1);
  TORCH_CHECK_VALUE(bad < 0, "proxies must be +1/-1, got ",
                    bad < 0 ? 0.0 : static_cast<double>(proxies.const_data_ptr<P>()[bad]), " at row ", bad / k,
                    ", column ", bad % k);
}

template <typename T, typename P>
ProxyPanel<T> checked_panel(const at::Tensor& proxies, PanelUse use, bool need_rows) {
  ProxyPanel<T> panel;
  raise_if_not_sign<P>(proxies, build_proxy_panel<T, P>(proxies.const_data_ptr<P>(), proxies.size(0),
                                                        proxies.size(1), use, need_rows, panel));
  return panel;
}

// The tiled path's products without lookup tables: one GEMM per tile through ATen (MKL / oneDNN),
// on the proxies converted to T.
template <typename T>
class GemmTileProducts final : public TileProducts<T> {
 public:
  GemmTileProducts(const std::vector<T>& rows, int64_t c, int64_t k)
      : g_(matrix(const_cast<T*>(rows.data()), c, k)) {}
  bool per_row() const override { return false; }
  void scores(const T* block, int64_t k, int64_t b, int64_t e, int64_t q0, int64_t cols, T* tile) const override {
    at::Tensor out = matrix(tile + b * cols, e - b, cols);
    at::mm_out(out, matrix(const_cast<T*>(block) + b * k, e - b, k), g_.narrow(0, q0, cols).t());
  }
  void combine(const T* tile, int64_t k, int64_t b, int64_t e, int64_t q0, int64_t cols, T* out) const override {
    matrix(out + b * k, e - b, k).addmm_(matrix(const_cast<T*>(tile) + b * cols, e - b, cols), g_.narrow(0, q0, cols));
  }

 private:
  static at::Tensor matrix(T* data, int64_t rows, int64_t cols) {
    return at::from_blob(data, {rows, cols}, at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
  }
  at::Tensor g_;
};

void run_rows(int64_t n, int64_t grain, const RowRange& f) { at::parallel_for(0, n, grain, f); }

template <typename T>
T* out_ptr(const at::Tensor& t) {
  return t.data_ptr<T>();
}

template <typename T>
const T* in_ptr(const at::Tensor& t) {
  return t.const_data_ptr<T>();
}

}  // namespace

CpuLossCall::CpuLossCall(LossInputs inputs) : in_(std::move(inputs)) {
  row_block_ = takes_row_block_path(in_.c, in_.k, in_.codes.scalar_type() == at::kFloat && SignPanel::supported());
  if (in_.indices.has_value()) {
    offsets_ = in_.labels.contiguous();
    indices_ = in_.indices->contiguous();
    const std::string problem = csr_problem(offsets_.const_data_ptr<int64_t>(), indices_.const_data_ptr<int64_t>(),
                                            in_.n, in_.c, indices_.numel());
    TORCH_CHECK_VALUE(problem.empty(), problem);
    return;
  }
  std::tie(dense_, dense_dtype_) = readable_labels(in_.labels);
  if (row_block_) return;  // read row by row by the kernels, checked as they go
  LabelProblem problem;
  dense_labels_to_csr(dense_.const_data_ptr(), dense_dtype_, in_.n, in_.c, csr_offsets_, csr_indices_, problem);
  if (!problem.ok()) raise_dense_label_problem(problem);
}

LabelRows CpuLossCall::label_rows() const {
  if (dense_.defined() && row_block_) return LabelRows::dense_rows(dense_.const_data_ptr(), dense_dtype_, in_.c);
  if (offsets_.defined()) return LabelRows::csr(offsets_.const_data_ptr<int64_t>(), indices_.const_data_ptr<int64_t>());
  return LabelRows::csr(csr_offsets_.data(), csr_indices_.data());
}

void CpuLossCall::raise_label_problem() const {
  raise_dense_label_problem(scan_dense_labels(dense_.const_data_ptr(), dense_dtype_, in_.n, in_.c));
}

// kernel(inputs, r0, r1) -> labels ok, over the rows on the threads.
template <typename T, typename P, typename Kernel>
void CpuLossCall::run_row_block(Kernel&& kernel) const {
  const ProxyPanel<T> panel = checked_panel<T, P>(in_.proxies, PanelUse::kRowBlock, in_.separate);
  const RowBlockInputs<T> inputs{in_.codes.const_data_ptr<T>(), in_.den.const_data_ptr<T>(), in_.separate, &panel,
                                 label_rows()};
  std::atomic<bool> labels_ok{true};
  at::parallel_for(0, in_.n, row_block_grain(in_.n, in_.c, in_.k), [&](int64_t r0, int64_t r1) {
    if (!kernel(inputs, r0, r1)) labels_ok.store(false, std::memory_order_relaxed);
  });
  if (!labels_ok.load()) raise_label_problem();
}

// body(products, rows, run_finish) with the tile products and the rows of the per-row finish;
// run_finish(f) runs f(r0, r1) over the rows on the threads.
template <typename T, typename P, typename Body>
void CpuLossCall::run_tiled(Body&& body) const {
  const ProxyPanel<T> panel = checked_panel<T, P>(in_.proxies, PanelUse::kTiled, false);
  std::unique_ptr<TileProducts<T>> products;
  if constexpr (std::is_same_v<T, float>) {
    if (panel.tables) products = std::make_unique<SignTileProducts>(*panel.tables);
  }
  if (!products) products = std::make_unique<GemmTileProducts<T>>(panel.rows, in_.c, in_.k);
  const LabelRows labels = label_rows();
  const TiledRows<T, P> rows{in_.codes.const_data_ptr<T>(), in_.den.const_data_ptr<T>(), in_.separate,
                             in_.proxies.const_data_ptr<P>(), {labels.offsets, labels.indices}, in_.k};
  auto run_finish = [&](auto&& f) { at::parallel_for(0, in_.n, tiled_finish_grain(in_.k), f); };
  body(*products, rows, run_finish);
}

// The one dtype dispatch and path choice of the four operators: row_block(inputs, r0, r1) ->
// labels ok, or tiled(products, rows, run_finish); each finds its T as the inputs' Scalar.
template <typename RowBlock, typename Tiled>
void CpuLossCall::run(RowBlock&& row_block, Tiled&& tiled) const {
  if (in_.n == 0) return;
  dispatch_proxies(in_.codes, in_.proxies, [&](auto t_tag, auto p_tag) {
    using T = decltype(t_tag);
    using P = decltype(p_tag);
    if (row_block_)
      run_row_block<T, P>(row_block);
    else
      run_tiled<T, P>(tiled);
  });
}

template <typename Inputs>
using ScalarOf = typename std::decay_t<Inputs>::Scalar;

// The tiled path's two passes over (scale * den) and the proxies, into out: (n,) log-sum-exp of
// the negatives, or (n, k) softmax-weighted sum of the negatives under the saved log-sum-exp.
template <typename T, typename P>
void tiled_lse(const LossInputs& in, const at::Tensor& den, double scale, const TileProducts<T>& products,
               const TiledRows<T, P>& rows, const at::Tensor& out) {
  const at::Tensor scaled = den * scale;
  tiled_negatives_lse<T>(in_ptr<T>(scaled), in.n, in.k, in.c, rows.labels.offsets, rows.labels.indices, products,
                         run_rows, TileShape{}, out_ptr<T>(out));
}

template <typename T, typename P>
void tiled_softmax_sum(const LossInputs& in, const at::Tensor& den, double scale, const TileProducts<T>& products,
                       const TiledRows<T, P>& rows, const at::Tensor& out) {
  const at::Tensor scaled = den * scale;
  tiled_negatives_softmax_sum<T>(in_ptr<T>(scaled), in.n, in.k, in.c, rows.labels.offsets, rows.labels.indices,
                                 in_ptr<T>(in.saved), products, run_rows, TileShape{}, out_ptr<T>(out));
}

std::tuple<at::Tensor, at::Tensor> CpuLossCall::mds_forward(double eta, double mu) const {
  at::Tensor loss = in_.row_output(), lse = in_.row_output();
  run(
      [&](const auto& rb, int64_t r0, int64_t r1) {
        using T = ScalarOf<decltype(rb)>;
        return row_block_mds_forward<T>(rb, T(eta), T(mu), out_ptr<T>(loss), out_ptr<T>(lse), r0, r1);
      },
      [&](const auto& products, const auto& rows, auto&& run_finish) {
        using T = ScalarOf<decltype(rows)>;
        const at::Tensor negatives = in_.row_output();
        tiled_lse(in_, in_.den, eta, products, rows, negatives);
        run_finish([&](int64_t r0, int64_t r1) {
          tiled_mds_forward_rows(rows, T(eta), T(mu), in_ptr<T>(negatives), out_ptr<T>(loss), out_ptr<T>(lse), r0, r1);
        });
      });
  return {loss, lse};
}

std::tuple<at::Tensor, at::Tensor> CpuLossCall::mds_backward(double eta, double mu) const {
  at::Tensor grad_codes = in_.code_output(), grad_other = in_.code_output(in_.separate);
  run(
      [&](const auto& rb, int64_t r0, int64_t r1) {
        using T = ScalarOf<decltype(rb)>;
        return row_block_mds_backward<T>(rb, T(eta), T(mu), in_ptr<T>(in_.saved), in_ptr<T>(in_.grad_loss),
                                         out_ptr<T>(grad_codes), in_.separate ? out_ptr<T>(grad_other) : nullptr, r0,
                                         r1);
      },
      [&](const auto& products, const auto& rows, auto&& run_finish) {
        using T = ScalarOf<decltype(rows)>;
        // the negatives' softmax sum goes straight into the denominator's gradient, finished in place
        const at::Tensor den_grad = in_.separate ? grad_other : grad_codes;
        tiled_softmax_sum(in_, in_.den, eta, products, rows, den_grad);
        run_finish([&](int64_t r0, int64_t r1) {
          tiled_mds_backward_rows(rows, T(eta), T(mu), in_ptr<T>(in_.saved), in_ptr<T>(in_.grad_loss),
                                  in_ptr<T>(den_grad), out_ptr<T>(grad_codes),
                                  in_.separate ? out_ptr<T>(grad_other) : nullptr, r0, r1);
        });
      });
  return {grad_codes, grad_other};
}

std::tuple<at::Tensor, at::Tensor> CpuLossCall::psl_forward(double gamma, double sigma) const {
  at::Tensor loss = in_.row_output(), lse_neg = in_.row_output();
  run(
      [&](const auto& rb, int64_t r0, int64_t r1) {
        using T = ScalarOf<decltype(rb)>;
        return row_block_psl_forward<T>(rb, T(gamma), T(sigma), out_ptr<T>(loss), out_ptr<T>(lse_neg), r0, r1);
      },
      [&](const auto& products, const auto& rows, auto&& run_finish) {
        using T = ScalarOf<decltype(rows)>;
        tiled_lse(in_, in_.codes, gamma, products, rows, lse_neg);
        run_finish([&](int64_t r0, int64_t r1) {
          tiled_psl_forward_rows(rows, T(gamma), T(sigma), in_ptr<T>(lse_neg), out_ptr<T>(loss), r0, r1);
        });
      });
  return {loss, lse_neg};
}

at::Tensor CpuLossCall::psl_backward(double gamma, double sigma) const {
  at::Tensor grad_codes = in_.code_output();
  run(
      [&](const auto& rb, int64_t r0, int64_t r1) {
        using T = ScalarOf<decltype(rb)>;
        return row_block_psl_backward<T>(rb, T(gamma), T(sigma), in_ptr<T>(in_.saved), in_ptr<T>(in_.grad_loss),
                                         out_ptr<T>(grad_codes), r0, r1);
      },
      [&](const auto& products, const auto& rows, auto&& run_finish) {
        using T = ScalarOf<decltype(rows)>;
        const at::Tensor negatives = in_.code_output();
        tiled_softmax_sum(in_, in_.codes, gamma, products, rows, negatives);
        run_finish([&](int64_t r0, int64_t r1) {
          tiled_psl_backward_rows(rows, T(gamma), T(sigma), in_ptr<T>(in_.saved), in_ptr<T>(in_.grad_loss),
                                  in_ptr<T>(negatives), out_ptr<T>(grad_codes), r0, r1);
        });
      });
  return grad_codes;
}

ForwardWithGradient CpuLossCall::mds_forward_with_gradient(double eta, double mu, double grad_row) const {
  if (!row_block_) {
    auto [loss, lse] = mds_forward(eta, mu);
    return {loss, lse, at::Tensor(), at::Tensor()};
  }
  ForwardWithGradient out{in_.row_output(), in_.row_output(), in_.code_output(), in_.code_output(in_.separate)};
  run(
      [&](const auto& rb, int64_t r0, int64_t r1) {
        using T = ScalarOf<decltype(rb)>;
        return row_block_mds_forward_backward<T>(rb, T(eta), T(mu), T(grad_row), out_ptr<T>(out.loss),
                                                 out_ptr<T>(out.lse), out_ptr<T>(out.grad_codes),
                                                 in_.separate ? out_ptr<T>(out.grad_other) : nullptr, r0, r1);
      },
      [](const auto&, const auto&, auto&&) {});  // not reached: row-block calls only
  return out;
}

ForwardWithGradient CpuLossCall::psl_forward_with_gradient(double gamma, double sigma, double grad_row) const {
  if (!row_block_) {
    auto [loss, lse_neg] = psl_forward(gamma, sigma);
    return {loss, lse_neg, at::Tensor(), at::Tensor()};
  }
  ForwardWithGradient out{in_.row_output(), in_.row_output(), in_.code_output(), in_.code_output(false)};
  run(
      [&](const auto& rb, int64_t r0, int64_t r1) {
        using T = ScalarOf<decltype(rb)>;
        return row_block_psl_forward_backward<T>(rb, T(gamma), T(sigma), T(grad_row), out_ptr<T>(out.loss),
                                                 out_ptr<T>(out.lse), out_ptr<T>(out.grad_codes), r0, r1);
      },
      [](const auto&, const auto&, auto&&) {});  // not reached: row-block calls only
  return out;
}

std::tuple<at::Tensor, at::Tensor> labels_to_csr_cpu(const at::Tensor& labels) {
  TORCH_CHECK_VALUE(labels.dim() == 2, "labels must be 2-D (n, c), got ", labels.dim(), "-D");
  TORCH_CHECK_TYPE(!labels.is_complex(), "labels must be 0/1 as bool, integer or float, got ", labels.scalar_type());
  const auto [dense, dtype] = readable_labels(labels);
  std::vector<int64_t> offsets, indices;
  LabelProblem problem;
  dense_labels_to_csr(dense.const_data_ptr(), dtype, labels.size(0), labels.size(1), offsets, indices, problem);
  if (!problem.ok()) raise_dense_label_problem(problem);
  const auto options = labels.options().dtype(at::kLong);
  at::Tensor off = at::empty({static_cast<int64_t>(offsets.size())}, options);
  at::Tensor idx = at::empty({static_cast<int64_t>(indices.size())}, options);
  std::copy(offsets.begin(), offsets.end(), off.data_ptr<int64_t>());
  std::copy(indices.begin(), indices.end(), idx.data_ptr<int64_t>());
  return {off, idx};
}

}  // namespace dchml
