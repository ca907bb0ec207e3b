// Shared by the torch-free core, the CPU kernels and the CUDA kernels: one spelling for
// "callable from host and device", so the same arithmetic runs (and is tested) on both.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define DCHML_HD __host__ __device__ __forceinline__
#else
#define DCHML_HD inline
#endif

// x86 host code built by GCC or Clang: the AVX-512 routines of the CPU loss (sign_panel.cpp,
// masked_softmax.cpp) are compiled with this target attribute while the rest of the build stays
// baseline x86-64; they are only called after a run-time CPU check (SignPanel::supported()).
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDACC__)
#define DCHML_X86_TARGETS 1
#define DCHML_AVX512F __attribute__((target("avx512f")))
#endif
