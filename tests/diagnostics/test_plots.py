"""predictive_bands: the panels, the nested bands and the errors."""
from __future__ import annotations

import pytest
import torch

import bayesmeta as bm
from bayesmeta.diagnostics.plots import predictive_bands
from bayesmeta.models import HierarchicalLinearRegression


@pytest.fixture(scope="module")
def setup():
    family = bm.tasks.LinearGaussian(x_dim=1, seed=0)
    tasks = family.sample(num_tasks=10, support=5, query=5, seed=0)
    prior = bm.fit_prior(HierarchicalLinearRegression(x_dim=1), tasks, guide="exact", steps=20, progress=False)
    grid = torch.linspace(-2, 2, 30).expand(10, 30)[..., None]
    return prior, tasks, grid


def test_rows_columns_bands_and_truth(setup):
    prior, tasks, grid = setup
    rows = [(f"{k} shots", prior.adapt(tasks.support.head(k), method="exact")) for k in (1, 5)]
    truth = torch.zeros(10, 30, 1)
    fig = predictive_bands(rows, grid, truth=truth, tasks=[0, 3, 7])
    assert len(fig.axes) == 6
    ax = fig.axes[0]
    assert ax.get_title() == "task 0" and ax.get_ylabel() == "1 shots"
    labels = [c.get_label() for c in ax.collections]
    assert labels.count("90% band") == 1 and labels.count("50% band") == 1
    assert [line.get_label() for line in ax.lines] == ["true function", "predictive mean"]
    # Nested: the 50% band lies inside the 90% band.
    wide, narrow = (c.get_paths()[0].get_extents() for c in ax.collections[:2])
    assert wide.y0 <= narrow.y0 and narrow.y1 <= wide.y1


def test_bad_arguments_are_named(setup):
    prior, tasks, grid = setup
    post = prior.adapt(tasks.support, method="exact")
    with pytest.raises(TypeError, match="posterior: expected a TaskPosterior"):
        predictive_bands("not a posterior", grid)
    with pytest.raises(ValueError, match="x: expected shape 10 x num_points x 1"):
        predictive_bands(post, grid[:3])
    with pytest.raises(ValueError, match="tasks: expected"):
        predictive_bands(post, grid, tasks=[12])
