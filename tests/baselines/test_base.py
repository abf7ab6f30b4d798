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


def test_meta_batches_from_a_large_pool_are_distinct_and_uniform():
    """Above 2**16 tasks a batch is drawn in O(batch) (no permutation of the pool): still distinct, still uniform."""
    from bayesmeta.baselines.functional import sample_batch

    generator = torch.Generator().manual_seed(0)
    pool, batch, draws = 100_000, 25, 4000
    batches = torch.stack([sample_batch(generator, pool, batch) for _ in range(draws)])
    assert all(len(set(row.tolist())) == batch for row in batches)
    assert int(batches.min()) >= 0 and int(batches.max()) < pool
    # Tasks fall in 10 equal ranges with probability 1/10 each: counts of 100000 draws, sd about 95.
    counts = torch.bincount(batches.flatten() // (pool // 10), minlength=10).double()
    assert ((counts - draws * batch / 10).abs() < 5 * (draws * batch * 0.1 * 0.9) ** 0.5).all()
    # Large batches too (a third of the pool: redraws; most of the pool: a permutation).
    assert len(set(sample_batch(generator, 90_000, 30_000).tolist())) == 30_000
    assert len(set(sample_batch(generator, 70_000, 69_999).tolist())) == 69_999
