"""Loads the compiled extension `dchml.ops._kernels`; importing it registers every `torch.ops.dchml.*`."""
import torch  # noqa: F401  (the extension links against libtorch, which must be loaded first)

try:
    from . import _kernels
except ImportError as exc:  # pragma: no cover - only on a broken install
    raise ImportError(
        "dchml's compiled extension dchml.ops._kernels is missing or does not load; build it with "
        "`pip install --no-build-isolation -e .` (see README.md). Cause: " + str(exc)
    ) from exc


def cuda_built() -> bool:
    """True when the CUDA kernels were compiled into this build."""
    return bool(_kernels.with_cuda())
