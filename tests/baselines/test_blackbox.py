"""BlackBox (a conditional neural process): it learns from context, its std is a density's, padding never counts."""
from __future__ import annotations

import pytest
import torch

import bayesmeta as bm
from bayesmeta.baselines.blackbox import BlackBox, random_context
from bayesmeta.evaluation.metrics import gaussian_nll

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def train() -> bm.TaskSet:
    return bm.tasks.Sinusoid().sample(num_tasks=500, support=10, query=10, seed=0)


@pytest.fixture(scope="module")
def fitted(train) -> BlackBox:
    return BlackBox(hidden=32).meta_fit(train, steps=1000, batch_tasks=25, lr=3e-3, seed=0, progress=False)


def test_ten_shot_nll_beats_a_constant_predictor(train, fitted):
    """The best constant Gaussian (training targets' mean and std) scores 2.15 nats per query point: a sinusoid's
    marginal has variance E[A^2]/2 = 4.25. After 1000 steps (1 s) the 10-shot NLL measured 0.95-1.15 over seeds
    0-4, so a margin of 0.5 nats leaves as much again for noise; the empty context, never seen in training
    (contexts have 1-10 points), does worse still than the constant."""
    test = bm.tasks.Sinusoid().sample(num_tasks=100, support=10, query=50, seed=1)
    y, ally = test.query.y, train.all_points().y
    const = gaussian_nll(torch.full_like(y, ally.mean().item()), torch.full_like(y, ally.std().item()), y).mean()
    ten = fitted.adapt(test.support).predict(test.query.x)
    zero = fitted.adapt(test.support.head(0)).predict(test.query.x)
    nll = gaussian_nll(ten.mean, ten.std, y).mean()
    assert nll < const - 0.5
    assert nll < gaussian_nll(zero.mean, zero.std, y).mean() - 0.5
    for pred in (ten, zero):
        assert torch.isfinite(pred.std).all() and (pred.std >= fitted.min_std).all()


def test_predictions_ignore_padding_and_order(fitted):
    tasks = bm.tasks.Sinusoid().sample(num_tasks=4, support=6, query=5, seed=2)
    expected = fitted.adapt(tasks.support).predict(tasks.query.x)
    pad = torch.zeros(4, 3, 1)
    mask = torch.cat([tasks.support.mask, pad[..., 0].bool()], 1)
    for junk in (float("nan"), 1e6):
        padded = bm.TaskData(torch.cat([tasks.support.x, pad + junk], 1), torch.cat([tasks.support.y, pad - junk], 1), mask)
        got = fitted.adapt(padded).predict(tasks.query.x)
        torch.testing.assert_close(got.mean, expected.mean)
        torch.testing.assert_close(got.std, expected.std)
    perm = torch.randperm(6)
    shuffled = bm.TaskData(tasks.support.x[:, perm], tasks.support.y[:, perm], tasks.support.mask)
    torch.testing.assert_close(fitted.adapt(shuffled).predict(tasks.query.x).mean, expected.mean)


def test_random_context_is_a_nonempty_subset_of_every_size():
    mask = torch.tensor([[True] * 5 + [False] * 3, [True, True] + [False] * 6, [False] * 8])
    gen = torch.Generator().manual_seed(0)
    sizes = []
    for _ in range(200):
        keep = random_context(mask, gen)
        assert not (keep & ~mask).any() and (keep.sum(1)[:2] >= 1).all() and keep[2].sum() == 0
        sizes.append(keep.sum(1)[0].item())
    assert sorted(set(sizes)) == [1, 2, 3, 4, 5]


def test_deterministic_given_seed(train):
    tasks = train[:5]
    fit = lambda seed: BlackBox(hidden=8, depth=2).meta_fit(train, steps=20, seed=seed, progress=False)  # noqa: E731
    a, b, c = (fit(s).adapt(tasks.support).predict(tasks.query.x) for s in (0, 0, 1))
    torch.testing.assert_close(a.mean, b.mean, rtol=0, atol=0)
    torch.testing.assert_close(a.std, b.std, rtol=0, atol=0)
    assert not torch.allclose(a.mean, c.mean)


def test_device_follows_meta_fit(train, device):
    """Fit and adapt on ``device`` (CUDA when present); the same numbers as on the CPU up to float rounding."""
    results = []
    for dev in ("cpu", device):
        bb = BlackBox(hidden=16).meta_fit(train, steps=10, device=dev, progress=False)
        pred = bb.adapt(train.support[:4]).predict(train.query.x[:4])
        assert pred.mean.device.type == pred.std.device.type == dev
        results.append(torch.cat([pred.mean, pred.std], -1).cpu())
    torch.testing.assert_close(results[1], results[0], rtol=1e-3, atol=1e-4)


def test_errors(train):
    for options, message in [({"hidden": 0}, "hidden: expected a positive int"), ({"depth": 1.5}, "depth: expected"),
                             ({"min_std": -1.0}, "min_std: expected a positive number")]:
        with pytest.raises(ValueError, match=message):
            BlackBox(**options)
    with pytest.raises(RuntimeError, match="call meta_fit"):
        BlackBox().adapt(train.support)
    with pytest.raises(TypeError, match="tasks: expected a bayesmeta.TaskSet"):
        BlackBox().meta_fit(train.support, steps=1)
    bb = BlackBox(hidden=8).meta_fit(train, steps=2, progress=False)
    wide = bm.tasks.LinearGaussian(x_dim=2).sample(num_tasks=3, support=4, query=2, seed=0)
    with pytest.raises(ValueError, match="support: expected x_dim=1"):
        bb.adapt(wide.support)
    with pytest.raises(ValueError, match="x: expected shape 500 x num_points x 1"):
        bb.adapt(train.support).predict(torch.zeros(3, 2, 1))
    huge = bm.TaskSet.from_arrays(torch.zeros(3, 4, 1), torch.full((3, 4, 1), 1e30))
    with pytest.raises(FloatingPointError, match="BlackBox.meta_fit: expected a finite loss"):
        BlackBox(hidden=8).meta_fit(huge, steps=2, progress=False)
