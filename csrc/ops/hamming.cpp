// Operator schemas of the Hamming ranker (backends: cpu/hamming_kernel.cpp, cuda/hamming_kernel.cu).
// Codes are packed uint8 rows (n, ceil(bits/8)); labels are packed uint8 rows (n, ceil(c/8)).
// Validation with user-facing messages happens in dchml/ops/; the kernels re-check cheaply.
#include <torch/library.h>

#include <string>

#include "core/hamming.h"

namespace {

// Which SIMD path the CPU engine uses: "" reports it, a name forces it (tests, benchmarks).
std::string hamming_isa(const std::string& request) {
  using namespace dchml::hamming;
  if (!request.empty()) {
    Isa isa;
    TORCH_CHECK_VALUE(parse_isa(request, &isa), "isa must be 'portable', 'avx2', 'avx512' or 'best', got '",
                request, "'");
    force_isa(isa);
  }
  return isa_name(active_isa());
}

std::string hamming_best_isa() { return dchml::hamming::isa_name(dchml::hamming::best_isa()); }

}  // namespace

TORCH_LIBRARY_FRAGMENT(dchml, m) {
  m.def("hamming_distance(Tensor query, Tensor db, int bits) -> Tensor");
  m.def("hamming_histogram(Tensor query, Tensor db, int bits) -> Tensor");
  m.def(
      "hamming_histogram_relevant(Tensor query, Tensor db, int bits, Tensor query_labels, "
      "Tensor db_labels) -> (Tensor, Tensor)");
  m.def("hamming_topk(Tensor query, Tensor db, int bits, int k) -> (Tensor, Tensor)");
  m.def(
      "hamming_average_precision(Tensor query, Tensor db, int bits, int k, Tensor query_labels, "
      "Tensor db_labels, bool expected) -> Tensor");
  m.def(
      "hamming_ap_from_ranking(Tensor dist, Tensor relevant, Tensor cut_total, Tensor cut_relevant, "
      "bool expected) -> Tensor");
  m.def("_hamming_isa(str request) -> str", &hamming_isa);
  m.def("_hamming_best_isa() -> str", &hamming_best_isa);
}
