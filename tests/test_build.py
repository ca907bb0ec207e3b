"""The extension loads and reports its build, and a CPU-only build refuses CUDA tensors clearly."""
import pytest
import torch

import dchml
from dchml import ops


def test_extension_reports_build():
    assert isinstance(dchml.cuda_built(), bool)


def test_unsupported_device_is_a_clear_error():
    meta = torch.empty(2, 2, device="meta")
    with pytest.raises(ValueError, match="codes is on device meta"):
        ops.require_device_support("codes", meta)


def test_mixed_devices_are_a_clear_error():
    a = torch.zeros(2)
    b = torch.zeros(2, device="meta")
    with pytest.raises(ValueError, match="must be on one device"):
        ops.require_same_device(query=a, db=b)
