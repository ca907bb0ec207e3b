// Shared by the torch-free core, the CPU kernels and the CUDA kernels: one spelling for
// "callable from host and device", so the same arithmetic runs (and is tested) on both.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define DCHML_HD __host__ __device__ __forceinline__
#else
#define DCHML_HD inline
#endif

// Row functions of the losses, shared by host and device. On the host they are forced inline:
// each SIMD clone of a CPU row loop (DCHML_SIMD_CLONES) must compile them for its own
// instruction set, which a call to one out-of-line copy would not.
// DCHML_ROW_INLINE: the same for host-only row helpers.
#if defined(__GNUC__) || defined(__clang__)
#define DCHML_ROW_INLINE inline __attribute__((always_inline))
#else
#define DCHML_ROW_INLINE inline
#endif
#if defined(__CUDACC__) || defined(__HIPCC__)
#define DCHML_HD_ROW __host__ __device__ __forceinline__
#else
#define DCHML_HD_ROW DCHML_ROW_INLINE
#endif
// The same for a lambda passed to a row function ([&](...) DCHML_INLINE_LAMBDA { ... }): GCC
// compiles a lambda as a function of its own, outside the SIMD clones, unless told to inline it.
#if (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDACC__)
#define DCHML_INLINE_LAMBDA __attribute__((always_inline))
#else
#define DCHML_INLINE_LAMBDA
#endif

// x86 host code built by GCC or Clang: the AVX-512 routines of the CPU loss (sign_panel.cpp,
// masked_softmax.cpp) are compiled with this target attribute while the rest of the build stays
// baseline x86-64; they are only called after a run-time CPU check (SignPanel::supported()).
// DCHML_SIMD_CLONES compiles a row loop once per instruction set and picks one at load time.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDACC__)
#define DCHML_X86_TARGETS 1
#define DCHML_AVX512F __attribute__((target("avx512f")))
#define DCHML_SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define DCHML_SIMD_CLONES
#endif
