// Labels of one loss call in the forms the CPU paths read. Torch-free.
//
// A row's positives are a sorted list of distinct proxy indices. They come from a CSR (offsets,
// indices), or are read row by row from dense (n, c) 0/1 labels of any common dtype: a row of the
// paper's data sets has 1-5 positives out of 21-255 classes, and reading it in place costs less
// than building a CSR in a separate pass (measured: the conversion alone was 6-80 us per call at
// n = 128, c = 21-255 for float32 labels, more than the loss arithmetic). Dense values are checked
// while they are read; a caller that sees `bad` asks scan_dense_labels for the exact problem.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/mds_loss.h"

namespace dchml {

// Element types of dense labels read in place (other dtypes are converted to one of them first).
// kByte: bool and uint8; kInt8 reads the same bytes and reports a bad value signed.
enum class LabelDtype : uint8_t { kByte, kInt8, kFloat32, kFloat64, kInt32, kInt64 };

// Reads dense row `row` (c values of `dtype`): writes its positives to out (room for c) and
// returns their count; sets bad when a value is not 0 or 1.
int64_t read_dense_row(const void* row, LabelDtype dtype, int64_t c, int64_t* out, bool& bad);

int64_t label_dtype_size(LabelDtype dtype);

// Each row's positives: from a CSR, or read from dense labels.
struct LabelRows {
  const int64_t* offsets = nullptr;  // CSR: (n + 1,) and (nnz,), validated by the caller
  const int64_t* indices = nullptr;
  const unsigned char* dense = nullptr;  // dense: (n, c) row-major
  LabelDtype dtype = LabelDtype::kByte;
  int64_t c = 0;

  static LabelRows csr(const int64_t* offsets, const int64_t* indices) {
    LabelRows r;
    r.offsets = offsets;
    r.indices = indices;
    return r;
  }
  static LabelRows dense_rows(const void* data, LabelDtype dtype, int64_t c) {
    LabelRows r;
    r.dense = static_cast<const unsigned char*>(data);
    r.dtype = dtype;
    r.c = c;
    return r;
  }

  // Row i's positives; dense rows are read into buffer (room for c). `bad` is set for a dense
  // value other than 0/1 and for a row without a positive.
  PositiveList row(int64_t i, int64_t* buffer, bool& bad) const {
    if (dense == nullptr) return {indices + offsets[i], offsets[i + 1] - offsets[i]};
    const int64_t npos = read_dense_row(dense + i * c * label_dtype_size(dtype), dtype, c, buffer, bad);
    bad |= npos == 0;
    return {buffer, npos};
  }
};

// What is wrong with dense labels, for the error message: the first value that is not 0/1 (in
// row-major order), and the rows without a positive.
struct LabelProblem {
  int64_t bad_row = -1, bad_column = -1;
  double bad_value = 0;
  int64_t empty_rows = 0, first_empty = -1;
  bool ok() const { return bad_row < 0 && empty_rows == 0; }
};

LabelProblem scan_dense_labels(const void* data, LabelDtype dtype, int64_t n, int64_t c);

// CSR of valid dense labels (offsets n + 1, indices nnz); empty result with `problem` set when
// they are not valid.
void dense_labels_to_csr(const void* data, LabelDtype dtype, int64_t n, int64_t c, std::vector<int64_t>& offsets,
                         std::vector<int64_t>& indices, LabelProblem& problem);

// "" for a valid CSR of n rows over c classes (offsets from 0 to nnz, every row non-empty,
// indices in [0, c) and increasing within a row), else what is wrong.
std::string csr_problem(const int64_t* offsets, const int64_t* indices, int64_t n, int64_t c, int64_t nnz);

}  // namespace dchml
