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


class Interrupted(Exception):
    """Raised from on_epoch_end to stop a run the way a crash would (after a committed epoch)."""


def train_until(train, data, cfg, path: str, epoch: int) -> None:
    """Run `train(data, cfg)` with its checkpoint at `path` and stop it after `epoch`."""
    def stop(done, record):
        if done == epoch:
            raise Interrupted

    with pytest.raises(Interrupted):
        train(data, cfg, checkpoint_path=path, progress=False, log=None, on_epoch_end=stop)


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test, the caller's count restored after it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

