// Input checks of the Hamming ranker operators, shared by the CPU and CUDA kernels (the Python
// wrappers in dchml/ops/ and dchml/retrieval/codes.py check first and explain). As for the loss
// operators: a bad shape or value raises ValueError, a bad dtype TypeError.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace dchml {

// Packed codes: uint8 (n, ceil(bits / 8)), bits in [1, max_bits].
inline void check_packed_codes(const at::Tensor& t, const char* name, int64_t bits, int64_t max_bits) {
  TORCH_CHECK_VALUE(t.dim() == 2, name, " must be 2-D (n, nbytes), got ", t.dim(), "-D");
  TORCH_CHECK_TYPE(t.scalar_type() == at::kByte, name, " must be packed uint8, got ", t.scalar_type());
  TORCH_CHECK_VALUE(bits >= 1 && bits <= max_bits, "bits must be in [1, ", max_bits, "], got ", bits);
  TORCH_CHECK_VALUE(t.size(1) == (bits + 7) / 8, name, " has ", t.size(1), " bytes per row, but ", bits,
                    " bits need ", (bits + 7) / 8);
}

// Packed labels: uint8 (rows, ceil(c / 8)), the two of a query/database pair equally wide.
inline void check_packed_labels(const at::Tensor& query_labels, const at::Tensor& db_labels, int64_t query_rows,
                                int64_t db_rows) {
  for (const at::Tensor* t : {&query_labels, &db_labels}) {
    const char* name = t == &query_labels ? "query_labels" : "db_labels";
    TORCH_CHECK_VALUE(t->dim() == 2, name, " must be 2-D (n, ceil(c/8)), got ", t->dim(), "-D");
    TORCH_CHECK_TYPE(t->scalar_type() == at::kByte, name, " must be packed uint8, got ", t->scalar_type());
    const int64_t rows = t == &query_labels ? query_rows : db_rows;
    TORCH_CHECK_VALUE(t->size(0) == rows, name, " has ", t->size(0), " rows, the codes have ", rows);
  }
  TORCH_CHECK_VALUE(query_labels.size(1) == db_labels.size(1), "query_labels and db_labels differ in width: ",
                    query_labels.size(1), " vs ", db_labels.size(1), " bytes");
}

inline void check_topk_k(int64_t k, int64_t database_rows) {
  TORCH_CHECK_VALUE(k >= 1 && k <= database_rows, "k must be in [1, ", database_rows, "] (the database size), got ",
                    k);
}

}  // namespace dchml
