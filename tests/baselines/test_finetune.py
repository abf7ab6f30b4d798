"""FineTune: the vectorized fine-tuning equals a per-task loop in plain torch, and each option does what it says."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import bayesmeta as bm
from bayesmeta.baselines import maml_net
from bayesmeta.baselines.finetune import FineTune, cv_folds
from bayesmeta.evaluation.metrics import mse

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def train() -> bm.TaskSet:
    return bm.tasks.Sinusoid().sample(num_tasks=200, support=10, query=10, seed=0)


@pytest.fixture(scope="module")
def ragged() -> bm.TaskData:
    """Five tasks with 2 to 8 support points (padded to 8)."""
    g = torch.Generator().manual_seed(3)
    xs = [10 * torch.rand(n, 1, generator=g) - 5 for n in (2, 8, 5, 3, 6)]
    ys = [torch.sin(x - i) * (i + 1) for i, x in enumerate(xs)]
    return bm.TaskSet.from_lists(xs, ys).support


def _fitted(train: bm.TaskSet, **options) -> FineTune:
    return FineTune(**options).meta_fit(train, steps=30, batch_tasks=25, lr=1e-2, progress=False)


def _reference(ft: FineTune, x: torch.Tensor, y: torch.Tensor, lr: float | None = None,
               steps: int | None = None) -> dict[str, torch.Tensor]:
    """Fine-tune one task (``x``: ``n x 1``) alone: a copy of the net, torch.optim, frozen layers' grads set to None."""
    lr = ft.lr if lr is None else lr
    steps = ft.steps if steps is None else steps
    net = copy.deepcopy(ft.net)
    layers = [m for m in net.modules() if isinstance(m, nn.Linear)]
    L = len(layers)
    if ft.reinit_head:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ft.seed)
            layers[-1].reset_parameters()
    allowed = set(range(L)) if ft.layers is None else {i % L for i in ft.layers}

    def run(num_steps: int, trainable) -> None:
        groups = [{"params": list(m.parameters()), "lr": lr * ft.layer_lr_decay ** (L - 1 - i)} for i, m in enumerate(layers)]
        opt = torch.optim.SGD(groups) if ft.optimizer == "sgd" else torch.optim.Adam(groups)
        for t in range(num_steps):
            opt.zero_grad(set_to_none=True)
            ((net(x) - y) ** 2).mean().backward()
            for i, m in enumerate(layers):
                if i not in trainable(t):
                    for p in m.parameters():
                        p.grad = None
            opt.step()

    run(ft.lp_steps, lambda t: {L - 1})
    schedule = ft.unfreeze_schedule
    run(steps, lambda t: allowed if schedule is None else {i for i in allowed if i >= L - 1 - sum(s <= t for s in schedule)})
    return {n: p.detach() for n, p in net.named_parameters()}


OPTIONS = {
    "plain-sgd": {},
    "plain-adam": {"optimizer": "adam", "lr": 1e-2},
    "layer_lr_decay": {"layer_lr_decay": 0.3},
    "unfreeze_schedule": {"optimizer": "adam", "unfreeze_schedule": [2, 4], "steps": 7},
    "reinit_head": {"reinit_head": True, "seed": 5},
    "lp_ft": {"optimizer": "adam", "lp_ft": 3, "reinit_head": True},
    "surgical-first": {"layers": [0]},
    "surgical-head": {"layers": [-1], "optimizer": "adam"},
}


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_vectorized_equals_per_task_loop(train, ragged, options):
    ft = _fitted(train, **{"lr": 0.05, "steps": 6, **options})
    params = ft.adapt(ragged).extras["params"]
    for i in range(ragged.num_tasks):
        m = ragged.mask[i]
        expected = _reference(ft, ragged.x[i][m], ragged.y[i][m])
        for name, value in expected.items():
            torch.testing.assert_close(params[name][i], value, rtol=1e-5, atol=1e-5, msg=f"task {i}, {name}")


def test_frozen_layers_do_not_move(train, ragged):
    pre = {n: p.detach().clone() for n, p in _fitted(train).net.named_parameters()}
    moved = lambda ft: [n for n, v in ft.adapt(ragged).extras["params"].items() if not torch.allclose(v, pre[n].expand_as(v))]  # noqa: E731
    assert moved(_fitted(train, layers=[-1])) == ["4.weight", "4.bias"]
    assert moved(_fitted(train, layers=[0])) == ["0.weight", "0.bias"]
    # Unfreezing at step 100 of 5: the layers before the head never train.
    assert moved(_fitted(train, steps=5, unfreeze_schedule=[100])) == ["4.weight", "4.bias"]
    assert moved(_fitted(train, steps=5, unfreeze_schedule=[3])) == ["2.weight", "2.bias", "4.weight", "4.bias"]


def test_layer_lr_decay_scales_each_layers_first_update(train, ragged):
    pre = {n: p.detach().clone() for n, p in _fitted(train).net.named_parameters()}
    step = {d: {n: v - pre[n] for n, v in _fitted(train, steps=1, layer_lr_decay=d).adapt(ragged).extras["params"].items()}
            for d in (1.0, 0.5)}
    for name, layer in (("4.weight", 2), ("2.weight", 1), ("0.weight", 0)):
        torch.testing.assert_close(step[0.5][name], 0.5 ** (2 - layer) * step[1.0][name], rtol=1e-4, atol=1e-7)


def test_reinit_head_changes_only_the_head_before_fine_tuning(train, ragged):
    net = _fitted(train).net
    params = _fitted(train, steps=0, reinit_head=True, seed=1).adapt(ragged).extras["params"]
    fresh = nn.Linear(40, 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        fresh.reset_parameters()
    torch.testing.assert_close(params["4.weight"][0], fresh.weight.detach())
    assert not torch.allclose(params["4.weight"][0], net[4].weight)
    torch.testing.assert_close(params["2.weight"][3], net[2].weight.detach())


def test_cv_folds_hold_each_observed_point_out_once(ragged):
    for cv in ("loo", 3):
        held = cv_folds(ragged.mask, cv)
        assert held.shape[0] == (8 if cv == "loo" else 3)
        torch.testing.assert_close(held.sum(0), ragged.mask.long())
    loo = cv_folds(ragged.mask, "loo")
    assert (loo.sum(-1) <= 1).all()  # one held-out point per task and fold


def test_cv_loss_is_the_mean_error_on_points_left_out_of_training(train, ragged):
    """The CV loss of each grid point equals the per-task loop trained without the held-out point."""
    ft = _fitted(train, optimizer="adam", cv_grid={"lr": [0.01, 0.1], "steps": [0, 4]})
    cv = ft.adapt(ragged[:2]).extras["cv"]
    assert [(g["lr"], g["steps"]) for g in cv["grid"]] == [(0.01, 0), (0.01, 4), (0.1, 0), (0.1, 4)]
    for i in range(2):
        x, y = ragged.x[i][ragged.mask[i]], ragged.y[i][ragged.mask[i]]
        for g, point in enumerate(cv["grid"]):
            errors = []
            for j in range(len(x)):
                keep = torch.arange(len(x)) != j
                params = _reference(ft, x[keep], y[keep], lr=point["lr"], steps=point["steps"])
                errors.append((torch.func.functional_call(ft.net, params, (x[j:j + 1],)) - y[j]).pow(2).item())
            assert cv["loss"][i, g].item() == pytest.approx(sum(errors) / len(errors), rel=1e-4)
    torch.testing.assert_close(cv["choice"], cv["loss"].argmin(-1))


def test_cv_grid_avoids_an_absurd_learning_rate(train, ragged):
    """lr = 1e4 diverges (the CV loss is huge or inf), so every task picks lr = 1e-3 and adapt still succeeds."""
    adapted = _fitted(train, cv_grid={"lr": [1e4, 1e-3]}, cv=2).adapt(ragged)
    cv = adapted.extras["cv"]
    assert (cv["loss"][:, 0] > 1e3).all() and torch.isfinite(cv["loss"][:, 1]).all()
    assert cv["choice"].tolist() == [1] * 5 and cv["lr"].tolist() == pytest.approx([1e-3] * 5)
    assert torch.isfinite(adapted.predict(ragged.x).mean).all()


def test_per_task_steps_from_cv_match_the_loop(train, ragged):
    """Chosen step counts differ between tasks; each task's result is the loop run for its own choice."""
    ft = _fitted(train, lr=0.05, cv_grid={"steps": [0, 3, 12]})
    adapted = ft.adapt(ragged)
    steps = adapted.extras["cv"]["steps"]
    for i in range(ragged.num_tasks):
        m = ragged.mask[i]
        expected = _reference(ft, ragged.x[i][m], ragged.y[i][m], steps=int(steps[i]))
        torch.testing.assert_close(adapted.extras["params"]["0.weight"][i], expected["0.weight"], rtol=1e-5, atol=1e-5)


def test_pretraining_lowers_pooled_mse_and_fine_tuning_lowers_every_support_mse(train):
    """Pooled MSE of the 1-40-40-1 net: 4.4 at init, 3.0 after 1000 steps (the best pooled predictor, -1.62 cos x,
    reaches 2.9); 300 steps give 3.25. Small SGD steps (lr 1e-3, 10 steps) descend on every task's support."""
    test = bm.tasks.Sinusoid().sample(num_tasks=50, support=10, query=10, seed=1)
    pts = test.all_points()
    ft = FineTune(lr=1e-3, steps=10)
    ft._bind(maml_net())
    before = mse(ft.net(pts.x), pts.y).mean()
    ft.meta_fit(train, steps=300, lr=1e-3, progress=False)
    with torch.no_grad():
        after = mse(ft.net(pts.x), pts.y).mean()
        support = mse(ft.net(test.support.x), test.support.y)
    assert after < 0.85 * before
    tuned = mse(ft.adapt(test.support).predict(test.support.x).mean, test.support.y)
    assert (tuned < support).all()


def test_padding_never_counts(train, ragged):
    ft = _fitted(train, optimizer="adam", cv_grid={"lr": [0.01, 0.1]})
    x = torch.cat([ragged.x, torch.full((5, 2, 1), float("nan"))], 1)
    y = torch.cat([ragged.y, torch.full((5, 2, 1), 1e6)], 1)
    # Padding that is not zero, or padding of NaN and 1e6 (TaskData itself does not clean it).
    junk = bm.TaskData(torch.where(ragged.mask[..., None], ragged.x, 7.0), torch.where(ragged.mask[..., None], ragged.y, -3.0),
                       ragged.mask)
    padded = bm.TaskData(x, y, torch.cat([ragged.mask, torch.zeros(5, 2, dtype=torch.bool)], 1))
    query = torch.linspace(-5, 5, 7).expand(5, 7)[..., None]
    expected = ft.adapt(ragged).predict(query).mean
    for support in (junk, padded):
        torch.testing.assert_close(ft.adapt(support).predict(query).mean, expected)


def test_deterministic_given_seed(train, ragged):
    a = _fitted(train, reinit_head=True).adapt(ragged).predict(ragged.x).mean
    b = _fitted(train, reinit_head=True).adapt(ragged).predict(ragged.x).mean
    c = FineTune().meta_fit(train, steps=30, lr=1e-2, seed=1, progress=False).adapt(ragged).predict(ragged.x).mean
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)


def test_adapt_works_under_no_grad(train, ragged):
    """Evaluation code wraps prediction in torch.no_grad(); fine-tuning (and its CV search) still differentiates."""
    ft = _fitted(train, cv_grid={"lr": [0.01, 0.1]})
    expected = ft.adapt(ragged).predict(ragged.x).mean
    with torch.no_grad():
        got = ft.adapt(ragged).predict(ragged.x).mean
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_device_follows_meta_fit(train, ragged, device):
    """Fit and adapt on ``device`` (CUDA when present); the same numbers as on the CPU up to float rounding."""
    options = {"optimizer": "adam", "reinit_head": True, "lp_ft": 2, "cv_grid": {"lr": [0.01, 0.1]}}
    results = []
    for dev in ("cpu", device):
        ft = FineTune(**options).meta_fit(train, steps=10, device=dev, progress=False)
        pred = ft.adapt(ragged).predict(ragged.x)
        assert pred.mean.device.type == dev
        results.append(pred.mean.cpu())
    torch.testing.assert_close(results[1], results[0], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("options, message", [
    ({"net": "mlp"}, "net: expected a torch.nn.Module"),
    ({"lr": 0}, "lr: expected a positive number"),
    ({"steps": 2.5}, "steps: expected a non-negative int"),
    ({"optimizer": "rmsprop"}, "optimizer: expected 'sgd' or 'adam'"),
    ({"layer_lr_decay": 1.5}, r"layer_lr_decay: expected a factor in \(0, 1\]"),
    ({"unfreeze_schedule": [5, 2]}, "unfreeze_schedule: expected non-decreasing"),
    ({"unfreeze_schedule": [1, 2, 3]}, "unfreeze_schedule: expected at most 2 steps"),
    ({"layers": [3]}, r"layers: expected indices in \[-3, 2\]"),
    ({"layers": []}, "layers: expected a non-empty list of ints"),
    ({"lp_ft": 2, "layers": [0]}, "lp_ft: linear probing trains the head"),
    ({"reinit_head": 1}, "reinit_head: expected True or False"),
    ({"cv_grid": {"momentum": [0.9]}}, "cv_grid: expected a dict with keys among"),
    ({"cv_grid": {"lr": []}}, r"cv_grid\['lr'\]: expected a non-empty list"),
    ({"cv_grid": {"steps": [-1]}}, r"cv_grid\['steps'\]: expected a non-negative int"),
    ({"cv": 1}, "cv: expected 'loo' or a number of folds >= 2"),
])
def test_constructor_errors(options, message):
    net = maml_net() if "layers" in options or "unfreeze_schedule" in options or "lp_ft" in options else None
    with pytest.raises((ValueError, TypeError), match=message):
        FineTune(**{"net": net, **options})


def test_input_and_numerical_errors(train, ragged):
    with pytest.raises(RuntimeError, match="call meta_fit"):
        FineTune().adapt(ragged)
    with pytest.raises(TypeError, match="tasks: expected a bayesmeta.TaskSet"):
        FineTune().meta_fit(ragged, steps=1)
    wide = bm.tasks.LinearGaussian(x_dim=2).sample(num_tasks=3, support=4, query=0, seed=0)
    ft = _fitted(train)
    with pytest.raises(ValueError, match="support: expected x_dim=1"):
        ft.adapt(wide.support)
    with pytest.raises(ValueError, match="net: expected output shape"):
        FineTune(net=maml_net(y_dim=2)).meta_fit(train, steps=1, progress=False)
    with pytest.raises(FloatingPointError, match="FineTune.adapt: expected finite support losses"):
        _fitted(train, lr=1e6, steps=20).adapt(ragged)
    with pytest.raises(FloatingPointError, match="at step 1;"):  # divergence in the last step is caught too
        _fitted(train, lr=1e30, steps=1).adapt(ragged)
    huge = bm.TaskSet.from_arrays(torch.zeros(3, 4, 1), torch.full((3, 4, 1), 1e30))
    with pytest.raises(FloatingPointError, match="FineTune.meta_fit: expected a finite loss"):
        FineTune().meta_fit(huge, steps=2, progress=False)
