"""Fitted priors shared by the inference tests (fitting is the slow part; do it once per session)."""
from __future__ import annotations

import pytest

import bayesmeta as bm
from bayesmeta.models import HierarchicalLinearRegression


@pytest.fixture(scope="session")
def linear_family():
    return bm.tasks.LinearGaussian(x_dim=3, seed=0)


@pytest.fixture(scope="session")
def linear_train(linear_family):
    return linear_family.sample(num_tasks=2000, support=10, query=10, seed=0)


@pytest.fixture(scope="session")
def linear_test(linear_family):
    return linear_family.sample(num_tasks=200, support=10, query=50, seed=1)


@pytest.fixture(scope="session")
def amortized_prior(linear_train):
    """The issue's walk-through: 3000 steps, 64 tasks a step, the default (amortized) guide."""
    model = HierarchicalLinearRegression(x_dim=3)
    return bm.fit_prior(model, linear_train, steps=3000, batch_tasks=64, lr=1e-2, seed=0, progress=False)
