"""Build of the `dchml.ops._kernels` extension (package metadata lives in pyproject.toml).

CUDA kernels are compiled by default only when a GPU is visible (torch.cuda.is_available()) and a
CUDA toolkit is found: on a machine without a GPU they would never run, and compiling them is most
of a first set-up's time. CI sets FORCE_CUDA=1 (.ci/run) so they are compiled and linked on
every run. Environment:
  FORCE_CUDA=1       compile the CUDA kernels even without a GPU (fail if no toolkit);
  FORCE_CUDA=0       CPU only, even with a GPU.
  CUDA_HOME          toolkit root; defaults to /usr/local/cuda when that exists.
  TORCH_CUDA_ARCH_LIST  GPU architectures; without a visible GPU we default to DEFAULT_CUDA_ARCHS:
                     native code for A100 (8.0), RTX 30xx / A-series (8.6), RTX 40xx / L4 / L40 (8.9)
                     and H100/H200 (9.0), plus PTX that newer GPUs JIT-compile.
  MAX_JOBS           parallel compile jobs (ninja).
  DCHML_DEBUG=1      -O0 -g, for debuggers and sanitizers.
  DCHML_PREBUILT=1   do not build the extension: scripts/setup_env.sh has built it in place
                     (incrementally) and its editable install would compile it all again.
Install with `pip install --no-build-isolation -e .` (isolation would fetch another torch).
"""
import glob
import os
import sys

from setuptools import setup

if "CUDA_HOME" not in os.environ and os.path.isdir("/usr/local/cuda"):
    # torch otherwise guesses /usr/local and fails to link -lcudart.
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

import torch  # noqa: E402  (after CUDA_HOME, which cpp_extension reads on import)
from torch.utils import cpp_extension  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))
# Where no GPU is visible at build time (CI, containers built without one), code for the GPUs the
# package is run on: PTX alone would make an A100 or RTX card JIT-compile every kernel at first use.
# Cost: the two .cu files take about twice as long to compile as with 9.0+PTX alone (measured, CPU
# seconds: loss kernels 47 -> 90, ranker 30 -> 58); set TORCH_CUDA_ARCH_LIST to build fewer.
DEFAULT_CUDA_ARCHS = "8.0;8.6;8.9;9.0+PTX"


def want_cuda():
    force = os.environ.get("FORCE_CUDA")
    if force == "0":
        return False
    found = cpp_extension.CUDA_HOME is not None and torch.version.cuda is not None
    if force == "1" and not found:
        sys.exit("FORCE_CUDA=1 but no CUDA toolkit (CUDA_HOME) or no CUDA build of torch was found")
    return found and (force == "1" or torch.cuda.is_available())


def sources(*patterns):
    out = []
    for pattern in patterns:
        out += sorted(glob.glob(os.path.join("csrc", pattern), recursive=True))
    return out


def extension():
    with_cuda = want_cuda()
    debug = os.environ.get("DCHML_DEBUG") == "1"
    opt = ["-O0", "-g"] if debug else ["-O3"]
    # No -std flag: torch sets the standard its headers need (C++20 in recent releases).
    cxx = opt + ["-fopenmp", "-Wall", "-Wno-unknown-pragmas"]
    srcs = sources("module.cpp", "core/*.cpp", "ops/*.cpp", "ops/cpu/*.cpp")
    macros = []
    kwargs = {}
    if with_cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS
        srcs += sources("ops/cuda/*.cu")
        macros.append(("WITH_CUDA", None))
        kwargs["extra_compile_args"] = {
            "cxx": cxx,
            "nvcc": opt + ["--expt-relaxed-constexpr", "-lineinfo"],
        }
        ext_cls = cpp_extension.CUDAExtension
    else:
        kwargs["extra_compile_args"] = {"cxx": cxx}
        ext_cls = cpp_extension.CppExtension
    print(
        f"dchml build: torch {torch.__version__}, CUDA kernels "
        f"{'ON (CUDA_HOME=' + str(cpp_extension.CUDA_HOME) + ', arch ' + os.environ.get('TORCH_CUDA_ARCH_LIST', 'auto') + ')' if with_cuda else 'OFF'}, "
        f"{'debug' if debug else 'release'}, {len(srcs)} sources, MAX_JOBS={os.environ.get('MAX_JOBS', 'auto')}",
        flush=True,
    )
    return ext_cls(
        name="dchml.ops._kernels",
        sources=srcs,
        include_dirs=[os.path.join(ROOT, "csrc")],
        define_macros=macros,
        extra_link_args=["-fopenmp"],
        **kwargs,
    )


setup(
    ext_modules=[] if os.environ.get("DCHML_PREBUILT") == "1" else [extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
