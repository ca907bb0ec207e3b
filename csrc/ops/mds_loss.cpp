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
  m.def(
      "partial_softmax_loss_backward(Tensor grad_loss, Tensor codes, Tensor proxies, Tensor offsets, "
      "Tensor indices, Tensor lse_neg, float gamma, float sigma) -> Tensor");
}
