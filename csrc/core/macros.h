// Shared by the torch-free core, the CPU kernels and the CUDA kernels: one spelling for
// "callable from host and device", so the same arithmetic runs (and is tested) on both.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define DCHML_HD __host__ __device__ __forceinline__
#else
#define DCHML_HD inline
#endif
