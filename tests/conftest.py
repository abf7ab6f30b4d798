"""Shared test setup: fresh global state and seeds per test, and the devices to repeat tests on."""
from __future__ import annotations

import pyro
import pytest
import torch

# One intra-op thread: the tensors here are small, and two OpenMP threads contending with any other
# process on a 2-core machine made the suite up to 10x slower (make test also sets OMP_NUM_THREADS=1).
torch.set_num_threads(1)

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))]


@pytest.fixture(autouse=True)
def _fresh_state():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    """Run a test on the CPU and again on CUDA when a GPU is present."""
    return request.param
