"""The protocol every baseline shares: meta_fit's record, padding never reaching a network, checked query inputs."""
from __future__ import annotations

import pytest
import torch

import bayesmeta as bm
from bayesmeta.baselines import MAML, Baseline, BlackBox, FineTune, TrainFromScratch
from bayesmeta.baselines.base import check_support_set


@pytest.fixture(scope="module")
def tasks() -> bm.TaskSet:
    return bm.tasks.Sinusoid().sample(num_tasks=6, support=5, query=4, seed=0)


def _padded(support: bm.TaskData, junk: float) -> bm.TaskData:
    pad = torch.full((support.num_tasks, 2, support.x_dim), junk)
    mask = torch.cat([support.mask, torch.zeros(support.num_tasks, 2, dtype=torch.bool)], 1)
    return bm.TaskData(torch.cat([support.x, pad], 1), torch.cat([support.y, pad], 1), mask)


def test_meta_fit_records_its_arguments_apart_from_the_learners_own_keys(tasks):
    class Recorder(Baseline):
        def _meta_fit(self, tasks, steps, batch_tasks, lr, device, seed, progress) -> None:
            self.config.update(steps="the learner's own", lr="kept")

    learner = Recorder().meta_fit(tasks, steps=3, batch_tasks=2, lr=0.5, seed=7, progress=False)
    assert learner.config["meta_fit"] == {"steps": 3, "batch_tasks": 2, "lr": 0.5, "seed": 7}
    assert learner.config["steps"] == "the learner's own" and learner.config["lr"] == "kept"
    assert learner.fitted and learner.config["seconds"] >= 0


def test_check_support_set_zeroes_the_padding(tasks):
    cleaned = check_support_set(_padded(tasks.support, float("nan")))
    assert torch.isfinite(cleaned.x).all() and torch.isfinite(cleaned.y).all()
    assert (cleaned.x[:, -2:] == 0).all() and (cleaned.y[:, -2:] == 0).all()
    torch.testing.assert_close(cleaned.x[:, :5], tasks.support.x, rtol=0, atol=0)


@pytest.mark.parametrize("make", [lambda: MAML(), lambda: TrainFromScratch(steps=3), lambda: FineTune(steps=2),
                                  lambda: BlackBox(hidden=8)], ids=["MAML", "TrainFromScratch", "FineTune", "BlackBox"])
def test_nan_padding_changes_nothing_and_bad_queries_are_named(tasks, make):
    learner = make().meta_fit(tasks, steps=2, batch_tasks=3, progress=False)
    expected = learner.adapt(tasks.support).predict(tasks.query.x).mean
    adapted = learner.adapt(_padded(tasks.support, float("nan")))
    torch.testing.assert_close(adapted.predict(tasks.query.x).mean, expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="x: expected finite inputs"):
        adapted.predict(torch.full_like(tasks.query.x, float("nan")))
    with pytest.raises(TypeError, match="x: expected a floating-point tensor"):
        adapted.predict(tasks.query.x.long())
    with pytest.raises(TypeError, match="x: expected a tensor"):
        adapted.predict(tasks.query.x.tolist())
