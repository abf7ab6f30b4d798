"""Shared test setup: fresh global state and seeds per test, and the devices to repeat tests on."""
from __future__ import annotations

import pyro
import pytest
import torch

import bayesmeta as bm
from bayesmeta.models import HierarchicalLinearRegression

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


@pytest.fixture(scope="session")
def linear_tasks():
    """400 linear-regression tasks (2 inputs and an intercept, 8 + 8 points) and their family."""
    family = bm.tasks.LinearGaussian(x_dim=2, seed=4)
    return family, family.sample(num_tasks=400, support=8, query=8, seed=0)


@pytest.fixture(scope="session")
def linear_type_ii_ml(linear_tasks):
    """``HierarchicalLinearRegression(2)`` at the type-II maximum-likelihood θ of ``linear_tasks`` (the exact guide,
    full batch): the reference that fits with a hyperprior on θ must centre on."""
    model = HierarchicalLinearRegression(2)
    bm.fit_prior(model, linear_tasks[1], guide="exact", steps=1500, batch_tasks=len(linear_tasks[1]), lr=0.05,
                 lr_decay=0.01, seed=0, progress=False)
    return model
