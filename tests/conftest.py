"""Shared test fixtures: the device parametrisation (CUDA cases skip without a GPU)."""
import pytest
import torch

import dchml

HAS_CUDA = torch.cuda.is_available() and dchml.cuda_built()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs an NVIDIA GPU and a CUDA build of dchml")

DEVICES = ["cpu", pytest.param("cuda", marks=[needs_cuda, pytest.mark.cuda])]


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)
