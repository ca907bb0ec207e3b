// Label rows of the CPU loss paths: see loss_labels.h.
#include "core/loss_labels.h"

#include <cstring>
#include <sstream>

#include "core/macros.h"

namespace dchml {
namespace {

// kMagnitude of every lane of a 64-bit word.
template <typename U>
constexpr uint64_t in_every_lane(U value) {
  uint64_t word = 0;
  for (size_t lane = 0; lane < 8 / sizeof(U); ++lane) word |= static_cast<uint64_t>(value) << (8 * sizeof(U) * lane);
  return word;
}

// A row of labels read through the bits of its values (U: the unsigned integer of the value's
// width): a value is zero when (bits & kMagnitude) == 0, so -0.0 counts as 0, and one when
// bits == kOne. Blocks of 16 values are tested for "any nonzero" as 64-bit words OR-ed (a row has
// a few positives among 21-255 classes); only a block holding one is read value by value, for
// the positions and the 0/1 check. Float compares (with their NaN rules) and vector lane
// reductions did not vectorise: float32 rows cost 6x int64 rows (measured, c = 255).
template <typename U, U kMagnitude, U kOne>
DCHML_SIMD_CLONES int64_t read_row_bits(const U* row, int64_t c, int64_t* out, bool& bad) {
  constexpr int kBlock = 16;
  constexpr int kWords = kBlock * sizeof(U) / 8;
  constexpr uint64_t kWordMagnitude = in_every_lane(kMagnitude);
  int64_t* const first = out;
  bool odd = false;
  auto read_values = [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      if ((row[q] & kMagnitude) == 0) continue;
      odd |= row[q] != kOne;
      *out++ = q;
    }
  };
  int64_t q = 0;
  for (; q + kBlock <= c; q += kBlock) {
    uint64_t any = 0;
    for (int w = 0; w < kWords; ++w) {
      uint64_t word;
      std::memcpy(&word, reinterpret_cast<const unsigned char*>(row + q) + 8 * w, 8);
      any |= word & kWordMagnitude;
    }
    if (any) read_values(q, q + kBlock);
  }
  read_values(q, c);
  bad |= odd;
  return out - first;
}

template <typename E>
double value_at(const void* data, int64_t j) {
  return static_cast<double>(static_cast<const E*>(data)[j]);
}

double label_value(const void* data, LabelDtype dtype, int64_t j) {
  switch (dtype) {
    case LabelDtype::kByte: return value_at<uint8_t>(data, j);
    case LabelDtype::kInt8: return value_at<int8_t>(data, j);
    case LabelDtype::kFloat32: return value_at<float>(data, j);
    case LabelDtype::kFloat64: return value_at<double>(data, j);
    case LabelDtype::kInt32: return value_at<int32_t>(data, j);
    case LabelDtype::kInt64: return value_at<int64_t>(data, j);
  }
  return 0;
}

}  // namespace

int64_t label_dtype_size(LabelDtype dtype) {
  switch (dtype) {
    case LabelDtype::kByte:
    case LabelDtype::kInt8: return 1;
    case LabelDtype::kFloat32:
    case LabelDtype::kInt32: return 4;
    case LabelDtype::kFloat64:
    case LabelDtype::kInt64: return 8;
  }
  return 1;
}

int64_t read_dense_row(const void* row, LabelDtype dtype, int64_t c, int64_t* out, bool& bad) {
  switch (dtype) {
    case LabelDtype::kByte:
    case LabelDtype::kInt8:
      return read_row_bits<uint8_t, 0xFFu, 1u>(static_cast<const uint8_t*>(row), c, out, bad);
    case LabelDtype::kFloat32:  // 1.0f = 0x3F800000
      return read_row_bits<uint32_t, 0x7FFFFFFFu, 0x3F800000u>(static_cast<const uint32_t*>(row), c, out, bad);
    case LabelDtype::kFloat64:
      return read_row_bits<uint64_t, 0x7FFFFFFFFFFFFFFFull, 0x3FF0000000000000ull>(
          static_cast<const uint64_t*>(row), c, out, bad);
    case LabelDtype::kInt32:
      return read_row_bits<uint32_t, 0xFFFFFFFFu, 1u>(static_cast<const uint32_t*>(row), c, out, bad);
    case LabelDtype::kInt64:
      return read_row_bits<uint64_t, ~0ull, 1ull>(static_cast<const uint64_t*>(row), c, out, bad);
  }
  return 0;
}

LabelProblem scan_dense_labels(const void* data, LabelDtype dtype, int64_t n, int64_t c) {
  LabelProblem p;
  const auto* bytes = static_cast<const unsigned char*>(data);
  const int64_t row_bytes = c * label_dtype_size(dtype);
  std::vector<int64_t> buffer(static_cast<size_t>(c));
  for (int64_t i = 0; i < n; ++i) {
    bool bad = false;
    const int64_t npos = read_dense_row(bytes + i * row_bytes, dtype, c, buffer.data(), bad);
    if (npos == 0 && p.empty_rows++ == 0) p.first_empty = i;
    if (bad && p.bad_row < 0) {
      for (int64_t q = 0; q < c; ++q) {
        const double v = label_value(data, dtype, i * c + q);
        if (v != 0.0 && v != 1.0) {
          p.bad_row = i;
          p.bad_column = q;
          p.bad_value = v;
          break;
        }
      }
    }
  }
  return p;
}

void dense_labels_to_csr(const void* data, LabelDtype dtype, int64_t n, int64_t c, std::vector<int64_t>& offsets,
                         std::vector<int64_t>& indices, LabelProblem& problem) {
  const auto* bytes = static_cast<const unsigned char*>(data);
  const int64_t row_bytes = c * label_dtype_size(dtype);
  offsets.assign(static_cast<size_t>(n) + 1, 0);
  indices.clear();
  std::vector<int64_t> buffer(static_cast<size_t>(c));
  bool bad = false;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t npos = read_dense_row(bytes + i * row_bytes, dtype, c, buffer.data(), bad);
    bad |= npos == 0;
    indices.insert(indices.end(), buffer.begin(), buffer.begin() + npos);
    offsets[i + 1] = static_cast<int64_t>(indices.size());
  }
  problem = bad ? scan_dense_labels(data, dtype, n, c) : LabelProblem{};
  if (!problem.ok()) {
    offsets.clear();
    indices.clear();
  }
}

std::string csr_problem(const int64_t* offsets, const int64_t* indices, int64_t n, int64_t c, int64_t nnz) {
  std::ostringstream why;
  if (offsets[0] != 0 || offsets[n] != nnz) {
    why << "label offsets must start at 0 and end at len(indices) = " << nnz << ", got " << offsets[0] << " and "
        << offsets[n];
    return why.str();
  }
  for (int64_t i = 0; i < n; ++i) {
    if (offsets[i + 1] <= offsets[i]) {
      if (offsets[i + 1] < offsets[i])
        why << "label offsets must not decrease, got " << offsets[i] << " then " << offsets[i + 1] << " at row " << i;
      else
        why << "labels: row " << i << " has no positive label; every sample needs at least one label (docs/spec.md §3)";
      return why.str();
    }
    for (int64_t e = offsets[i]; e < offsets[i + 1]; ++e) {
      if (indices[e] < 0 || indices[e] >= c) {
        why << "label indices must lie in [0, " << c << "), got " << indices[e] << " in row " << i;
        return why.str();
      }
      if (e > offsets[i] && indices[e] <= indices[e - 1]) {
        why << "label indices must increase within a row, got " << indices[e - 1] << " then " << indices[e]
            << " in row " << i;
        return why.str();
      }
    }
  }
  return "";
}

}  // namespace dchml
