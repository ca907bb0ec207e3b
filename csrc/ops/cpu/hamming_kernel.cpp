// CPU backend of the Hamming ranker ops: checks shapes and dtypes, then calls the torch-free
// engine in csrc/core/hamming.cpp (which does the threading and the SIMD dispatch).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <tuple>

#include "core/hamming.h"
#include "ops/hamming_inputs.h"

namespace {

using dchml::hamming::Rows;

Rows rows_of(const at::Tensor& t) {
  Rows r;
  r.data = t.data_ptr<uint8_t>();
  r.n = t.size(0);
  r.nbytes = t.size(1);
  return r;
}

// A ranking call's own numbers, printed to stderr when DCHML_HAMMING_STATS is set (read by
// benchmarks/bench_hamming.py); the engine returns them per call, so concurrent calls keep theirs.
class RankReport {
 public:
  RankReport() : on_(std::getenv("DCHML_HAMMING_STATS") != nullptr), start_(std::chrono::steady_clock::now()) {}
  dchml::hamming::RankStats* stats() { return on_ ? &stats_ : nullptr; }
  void print(int64_t bits, int64_t k, int64_t nq, int64_t ndb) const {
    if (!on_) return;
    const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    const auto& s = stats_;
    std::fprintf(stderr,
                 "[dchml hamming] isa=%s bits=%lld k=%lld nq=%lld ndb=%lld wall=%.3fs | queries: fast %lld, "
                 "fallback %lld, exact %lld, mean candidates per fast query %.0f | thread-seconds: plan %.3f, "
                 "stream %.3f, select+rank %.3f (incl. AP), exact %.3f\n",
                 dchml::hamming::isa_name(dchml::hamming::active_isa()), (long long)bits, (long long)k, (long long)nq,
                 (long long)ndb, wall, (long long)s.fast, (long long)s.fallback, (long long)s.exact,
                 s.fast ? (double)s.candidates / (double)s.fast : 0.0, s.ns_plan * 1e-9, s.ns_stream * 1e-9,
                 s.ns_finish * 1e-9, s.ns_exact * 1e-9);
  }

 private:
  bool on_;
  std::chrono::steady_clock::time_point start_;
  dchml::hamming::RankStats stats_;
};

at::Tensor checked_codes(const at::Tensor& t, const char* name, int64_t bits) {
  dchml::check_packed_codes(t, name, bits, dchml::hamming::kMaxBits);
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
  dchml::check_packed_labels(query_labels, db_labels, q.size(0), d.size(0));
  auto ql = query_labels.contiguous(), dl = db_labels.contiguous();
  auto all = at::empty({q.size(0), bits + 1}, q.options().dtype(at::kLong));
  auto rel = at::empty({q.size(0), bits + 1}, q.options().dtype(at::kLong));
  dchml::hamming::histogram_relevant(rows_of(q), rows_of(d), bits, rows_of(ql), rows_of(dl),
                                     all.data_ptr<int64_t>(), rel.data_ptr<int64_t>());
  return {all, rel};
}

std::tuple<at::Tensor, at::Tensor> topk_cpu(const at::Tensor& query, const at::Tensor& db, int64_t bits,
                                            int64_t k) {
  auto q = checked_codes(query, "query", bits), d = checked_codes(db, "db", bits);
  dchml::check_topk_k(k, d.size(0));
  auto dist = at::empty({q.size(0), k}, q.options().dtype(at::kInt));
  auto index = at::empty({q.size(0), k}, q.options().dtype(at::kLong));
  RankReport report;
  dchml::hamming::topk(rows_of(q), rows_of(d), bits, k, dist.data_ptr<int32_t>(), index.data_ptr<int64_t>(),
                       report.stats());
  report.print(bits, k, q.size(0), d.size(0));
  return {dist, index};
}

at::Tensor average_precision_cpu(const at::Tensor& query, const at::Tensor& db, int64_t bits, int64_t k,
                                 const at::Tensor& query_labels, const at::Tensor& db_labels, bool expected) {
  auto q = checked_codes(query, "query", bits), d = checked_codes(db, "db", bits);
  dchml::check_packed_labels(query_labels, db_labels, q.size(0), d.size(0));
  auto ql = query_labels.contiguous(), dl = db_labels.contiguous();
  TORCH_CHECK_VALUE(k >= 1, "k must be >= 1, got ", k);
  auto ap = at::empty({q.size(0)}, q.options().dtype(at::kDouble));
  RankReport report;
  dchml::hamming::average_precision(rows_of(q), rows_of(d), bits, k, rows_of(ql), rows_of(dl), expected,
                                    ap.data_ptr<double>(), report.stats());
  report.print(bits, k, q.size(0), d.size(0));
  return ap;
}

at::Tensor ap_from_ranking_cpu(const at::Tensor& dist, const at::Tensor& relevant, const at::Tensor& cut_total,
                               const at::Tensor& cut_relevant, bool expected) {
  TORCH_CHECK_VALUE(dist.dim() == 2, "dist must be 2-D (nq, k), got ", dist.sizes());
  TORCH_CHECK_VALUE(relevant.sizes() == dist.sizes(), "relevant must have the shape of dist, got ", relevant.sizes());
  TORCH_CHECK_VALUE(
      cut_total.dim() == 1 && cut_total.size(0) == dist.size(0) && cut_relevant.sizes() == cut_total.sizes(),
      "cut_total and cut_relevant must be (nq,) = (", dist.size(0), ",), got ", cut_total.sizes(), " and ",
      cut_relevant.sizes());
  TORCH_CHECK_TYPE(dist.scalar_type() == at::kInt && relevant.scalar_type() == at::kByte &&
                       cut_total.scalar_type() == at::kLong && cut_relevant.scalar_type() == at::kLong,
                   "dist, relevant, cut_total, cut_relevant must be int32, uint8, int64, int64, got ",
                   dist.scalar_type(), ", ", relevant.scalar_type(), ", ", cut_total.scalar_type(), ", ",
                   cut_relevant.scalar_type());
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
