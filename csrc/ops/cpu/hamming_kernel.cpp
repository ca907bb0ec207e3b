// CPU backend of the Hamming ranker ops: checks shapes and dtypes, then calls the torch-free
// engine in csrc/core/hamming.cpp (which does the threading and the SIMD dispatch).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <tuple>

#include "core/hamming.h"

namespace {

using dchml::hamming::Rows;

Rows rows_of(const at::Tensor& t) {
  Rows r;
  r.data = t.data_ptr<uint8_t>();
  r.n = t.size(0);
  r.nbytes = t.size(1);
  return r;
}

at::Tensor checked_codes(const at::Tensor& t, const char* name, int64_t bits) {
  TORCH_CHECK(t.dim() == 2, name, " must be 2-D (n, nbytes), got ", t.dim(), "-D");
  TORCH_CHECK(t.scalar_type() == at::kByte, name, " must be packed uint8, got ", t.scalar_type());
  TORCH_CHECK(bits >= 1 && bits <= dchml::hamming::kMaxBits, "bits must be in [1, ",
              dchml::hamming::kMaxBits, "], got ", bits);
  TORCH_CHECK(t.size(1) == (bits + 7) / 8, name, " has ", t.size(1), " bytes per row, but ", bits,
              " bits need ", (bits + 7) / 8);
  return t.contiguous();
}

at::Tensor checked_labels(const at::Tensor& t, const char* name, int64_t rows) {
  TORCH_CHECK(t.dim() == 2 && t.scalar_type() == at::kByte, name,
              " must be packed uint8 (n, ceil(c/8)), got ", t.dim(), "-D ", t.scalar_type());
  TORCH_CHECK(t.size(0) == rows, name, " has ", t.size(0), " rows, the codes have ", rows);
  return t.contiguous();
}

at::Tensor distance_cpu(const at::Tensor& query, const at::Tensor& db, int64_t bits) {
  auto q = checked_codes(query, "query", bits), d = checked_codes(db, "db", bits);
  auto out = at::empty({q.size(0), d.size(0)}, q.options().dtype(at::kInt));
  dchml::hamming::distance_matrix(rows_of(q), rows_of(d), bits, out.data_ptr<int32_t>());
  return out;
}

at::Tensor histogram_cpu(const at::Tensor& query, const at::Tensor& db, int64_t bits) {
  auto q = checked_codes(query, "query", bits), d = checked_codes(db, "db", bits);
  auto out = at::empty({q.size(0), bits + 1}, q.options().dtype(at::kLong));
  dchml::hamming::histogram(rows_of(q), rows_of(d), bits, out.data_ptr<int64_t>());
  return out;
}

std::tuple<at::Tensor, at::Tensor> histogram_relevant_cpu(const at::Tensor& query, const at::Tensor& db,
                                                          int64_t bits, const at::Tensor& query_labels,
                                                          const at::Tensor& db_labels) {
  auto q = checked_codes(query, "query", bits), d = checked_codes(db, "db", bits);
  auto ql = checked_labels(query_labels, "query_labels", q.size(0));
  auto dl = checked_labels(db_labels, "db_labels", d.size(0));
  TORCH_CHECK(ql.size(1) == dl.size(1), "query_labels and db_labels differ in width: ", ql.size(1),
              " vs ", dl.size(1), " bytes");
  auto all = at::empty({q.size(0), bits + 1}, q.options().dtype(at::kLong));
  auto rel = at::empty({q.size(0), bits + 1}, q.options().dtype(at::kLong));
  dchml::hamming::histogram_relevant(rows_of(q), rows_of(d), bits, rows_of(ql), rows_of(dl),
                                     all.data_ptr<int64_t>(), rel.data_ptr<int64_t>());
  return {all, rel};
}

std::tuple<at::Tensor, at::Tensor> topk_cpu(const at::Tensor& query, const at::Tensor& db, int64_t bits,
                                            int64_t k) {
  auto q = checked_codes(query, "query", bits), d = checked_codes(db, "db", bits);
  TORCH_CHECK(k >= 1 && k <= d.size(0), "k must be in [1, ", d.size(0), "] (the database size), got ", k);
  auto dist = at::empty({q.size(0), k}, q.options().dtype(at::kInt));
  auto index = at::empty({q.size(0), k}, q.options().dtype(at::kLong));
  dchml::hamming::topk(rows_of(q), rows_of(d), bits, k, dist.data_ptr<int32_t>(), index.data_ptr<int64_t>());
  return {dist, index};
}

at::Tensor average_precision_cpu(const at::Tensor& query, const at::Tensor& db, int64_t bits, int64_t k,
                                 const at::Tensor& query_labels, const at::Tensor& db_labels, bool expected) {
  auto q = checked_codes(query, "query", bits), d = checked_codes(db, "db", bits);
  auto ql = checked_labels(query_labels, "query_labels", q.size(0));
  auto dl = checked_labels(db_labels, "db_labels", d.size(0));
  TORCH_CHECK(ql.size(1) == dl.size(1), "query_labels and db_labels differ in width: ", ql.size(1),
              " vs ", dl.size(1), " bytes");
  TORCH_CHECK(k >= 1, "k must be >= 1, got ", k);
  auto ap = at::empty({q.size(0)}, q.options().dtype(at::kDouble));
  dchml::hamming::average_precision(rows_of(q), rows_of(d), bits, k, rows_of(ql), rows_of(dl), expected,
                                    ap.data_ptr<double>());
  return ap;
}

at::Tensor ap_from_ranking_cpu(const at::Tensor& dist, const at::Tensor& relevant, const at::Tensor& cut_total,
                               const at::Tensor& cut_relevant, bool expected) {
  TORCH_CHECK(dist.dim() == 2 && dist.scalar_type() == at::kInt, "dist must be int32 (nq, k)");
  TORCH_CHECK(relevant.sizes() == dist.sizes() && relevant.scalar_type() == at::kByte,
              "relevant must be uint8 with the shape of dist");
  TORCH_CHECK(cut_total.dim() == 1 && cut_total.size(0) == dist.size(0) && cut_total.scalar_type() == at::kLong,
              "cut_total must be int64 (nq,)");
  TORCH_CHECK(cut_relevant.sizes() == cut_total.sizes() && cut_relevant.scalar_type() == at::kLong,
              "cut_relevant must be int64 (nq,)");
  auto dd = dist.contiguous(), rr = relevant.contiguous();
  auto ct = cut_total.contiguous(), cr = cut_relevant.contiguous();
  const int64_t nq = dd.size(0), K = dd.size(1);
  auto ap = at::empty({nq}, dd.options().dtype(at::kDouble));
  const int32_t* dp = dd.data_ptr<int32_t>();
  const uint8_t* rp = rr.data_ptr<uint8_t>();
  const int64_t* ctp = ct.data_ptr<int64_t>();
  const int64_t* crp = cr.data_ptr<int64_t>();
  double* out = ap.data_ptr<double>();
#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t i = 0; i < nq; ++i)
    out[i] = dchml::hamming::ap_from_ranking(dp + i * K, rp + i * K, K, ctp[i], crp[i], expected);
  return ap;
}

}  // namespace

TORCH_LIBRARY_IMPL(dchml, CPU, m) {
  m.impl("hamming_distance", &distance_cpu);
  m.impl("hamming_histogram", &histogram_cpu);
  m.impl("hamming_histogram_relevant", &histogram_relevant_cpu);
  m.impl("hamming_topk", &topk_cpu);
  m.impl("hamming_average_precision", &average_precision_cpu);
  m.impl("hamming_ap_from_ranking", &ap_from_ranking_cpu);
}
