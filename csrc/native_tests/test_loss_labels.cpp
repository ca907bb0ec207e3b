// Native tests of the loss labels (core/loss_labels.h): dense rows of every element type read in
// place (positions, the 0/1 check, -0.0 as zero, NaN and the block tail), the exact problem scan
// behind the error messages, the dense -> CSR conversion and the CSR check.
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "core/loss_labels.h"
#include "native_tests/check.h"

using namespace dchml;

namespace {

template <typename E>
void check_reads(LabelDtype dtype) {
  for (int64_t c : {1, 15, 16, 17, 40, 255}) {
    std::vector<E> row(c, E(0));
    std::vector<int64_t> want;
    for (int64_t q = 0; q < c; q += 7) {
      row[q] = E(1);
      want.push_back(q);
    }
    row[c - 1] = E(1);  // the tail after the last full block
    if (want.back() != c - 1) want.push_back(c - 1);
    std::vector<int64_t> out(c);
    bool bad = false;
    const int64_t npos = read_dense_row(row.data(), dtype, c, out.data(), bad);
    DCHML_CHECK(!bad);
    DCHML_CHECK(npos == static_cast<int64_t>(want.size()));
    for (int64_t e = 0; e < npos && e < static_cast<int64_t>(want.size()); ++e) DCHML_CHECK(out[e] == want[e]);
    for (int64_t at : {int64_t(0), c / 2, c - 1}) {  // a value other than 0/1 anywhere is seen
      std::vector<E> wrong(row);
      wrong[at] = E(2);
      bool flagged = false;
      read_dense_row(wrong.data(), dtype, c, out.data(), flagged);
      DCHML_CHECK(flagged);
    }
  }
}

}  // namespace

DCHML_TEST(dense_rows_of_every_dtype_are_read_in_place) {
  check_reads<uint8_t>(LabelDtype::kByte);
  check_reads<float>(LabelDtype::kFloat32);
  check_reads<double>(LabelDtype::kFloat64);
  check_reads<int32_t>(LabelDtype::kInt32);
  check_reads<int64_t>(LabelDtype::kInt64);
}

DCHML_TEST(float_labels_treat_negative_zero_as_zero_and_flag_fractions_and_nan) {
  std::vector<float> row(20, 0.0f);
  row[3] = -0.0f;
  row[5] = 1.0f;
  std::vector<int64_t> out(20);
  bool bad = false;
  DCHML_CHECK(read_dense_row(row.data(), LabelDtype::kFloat32, 20, out.data(), bad) == 1 && out[0] == 5 && !bad);
  for (float v : {0.5f, -1.0f, 1.5f, std::numeric_limits<float>::quiet_NaN(), 1e-30f}) {
    std::vector<float> wrong(row);
    wrong[18] = v;
    bool flagged = false;
    read_dense_row(wrong.data(), LabelDtype::kFloat32, 20, out.data(), flagged);
    DCHML_CHECK(flagged);
  }
  std::vector<double> d(3, 0.0);
  d[1] = 0.5;
  bool flagged = false;
  read_dense_row(d.data(), LabelDtype::kFloat64, 3, out.data(), flagged);
  DCHML_CHECK(flagged);
  std::vector<int8_t> minus(9, 0);
  minus[8] = -1;  // int8 -1 is not a label, and is reported signed
  minus[0] = 1;
  flagged = false;
  read_dense_row(minus.data(), LabelDtype::kInt8, 9, out.data(), flagged);
  DCHML_CHECK(flagged);
  DCHML_CHECK(scan_dense_labels(minus.data(), LabelDtype::kInt8, 1, 9).bad_value == -1.0);
  std::vector<uint8_t> big(9, 0);
  big[0] = 1;
  big[4] = 200;
  DCHML_CHECK(scan_dense_labels(big.data(), LabelDtype::kByte, 1, 9).bad_value == 200.0);
}

DCHML_TEST(label_scan_names_the_first_bad_value_and_the_empty_rows) {
  const int64_t n = 5, c = 4;
  std::vector<int64_t> labels(n * c, 0);
  labels[0 * c + 1] = 1;
  labels[2 * c + 3] = 1;
  labels[3 * c + 2] = 7;
  labels[4 * c + 0] = 1;
  const LabelProblem p = scan_dense_labels(labels.data(), LabelDtype::kInt64, n, c);
  DCHML_CHECK(p.bad_row == 3 && p.bad_column == 2 && p.bad_value == 7.0);
  DCHML_CHECK(p.empty_rows == 1 && p.first_empty == 1);
  std::vector<int64_t> offsets, indices;
  LabelProblem conversion;
  dense_labels_to_csr(labels.data(), LabelDtype::kInt64, n, c, offsets, indices, conversion);
  DCHML_CHECK(!conversion.ok() && offsets.empty());
  labels[3 * c + 2] = 1;
  labels[1 * c + 0] = 1;
  dense_labels_to_csr(labels.data(), LabelDtype::kInt64, n, c, offsets, indices, conversion);
  DCHML_CHECK(conversion.ok());
  DCHML_CHECK((offsets == std::vector<int64_t>{0, 1, 2, 3, 4, 5}));
  DCHML_CHECK((indices == std::vector<int64_t>{1, 0, 3, 2, 0}));
}

DCHML_TEST(csr_problems_are_named) {
  const std::vector<int64_t> offsets = {0, 2, 3}, indices = {1, 4, 0};
  DCHML_CHECK(csr_problem(offsets.data(), indices.data(), 2, 5, 3).empty());
  DCHML_CHECK(!csr_problem(offsets.data(), indices.data(), 2, 4, 3).empty());  // index 4 >= c
  const std::vector<int64_t> unsorted = {4, 1, 0};
  DCHML_CHECK(csr_problem(offsets.data(), unsorted.data(), 2, 5, 3).find("increase") != std::string::npos);
  const std::vector<int64_t> empty_row = {0, 0, 3};
  DCHML_CHECK(csr_problem(empty_row.data(), indices.data(), 2, 5, 3).find("row 0") != std::string::npos);
  const std::vector<int64_t> short_end = {0, 2, 2};
  DCHML_CHECK(!csr_problem(short_end.data(), indices.data(), 2, 5, 3).empty());
}
