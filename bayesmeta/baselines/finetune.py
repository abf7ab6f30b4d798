r"""Transfer learning by fine-tuning: pre-train one network on every task's points, then fine-tune a copy per task.

Every task of a support set is fine-tuned at once: the per-task copies of the parameters are stacked
(``T x ...``), the network runs on them as :func:`~bayesmeta.baselines.functional.batched_forward` (batched
matrix products for an MLP, ``torch.func.vmap`` of ``functional_call`` otherwise), and each update multiplies the
per-task gradient by a ``T``-vector of learning rates that carries the layer's factor, the freezing
schedule and each task's own step count. Nothing loops over tasks.
"""
from __future__ import annotations

import itertools
import math
import time
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from bayesmeta.baselines.base import Adapted, Baseline, check_meta_tasks
from bayesmeta.baselines.functional import (Params, batched_forward, check_count, check_flag, check_net, check_values,
                                            clean, initial_parameters, is_int, maml_net, masked_mse, masked_sum,
                                            meta_train, predictor, tile)
from bayesmeta.inference.checks import check_positive
from bayesmeta.tasks.taskset import TaskData, TaskSet

__all__ = ["FineTune", "cv_folds"]

GRID_KEYS = ("lr", "steps", "layer_lr_decay")


def cv_folds(mask: Tensor, cv: str | int) -> Tensor:
    """Held-out masks of the cross-validation folds: the ``j``-th observed point of a task is in fold ``j mod k``.

    Args:
        mask: ``T x N`` bool, ``False`` on padding.
        cv: ``"loo"`` (leave one out: ``k`` = the largest number of observed points) or the number of folds ``k``.

    Returns:
        ``k x T x N`` bool: ``[f, i, j]`` is True when point ``j`` of task ``i`` is held out in fold ``f``. Each
        observed point is held out exactly once; a fold trains on ``mask & ~held[f]``.

    >>> cv_folds(torch.tensor([[True, True, False]]), "loo").int().tolist()
    [[[1, 0, 0]], [[0, 1, 0]]]
    """
    rank = mask.long().cumsum(-1) - 1
    k = max(1, int(mask.sum(-1).max())) if cv == "loo" else int(cv)
    folds = torch.arange(k, device=mask.device)[:, None, None]
    return mask & (rank % k == folds)


class FineTune(Baseline):
    r"""Pre-train on the pooled tasks, then fine-tune on each new task's support (Finn et al. 2017's baseline).

    Pre-training fits one network to every point of every meta-training task, a masked mean squared error
    minimized by Adam. Adaptation takes ``steps`` full-batch gradient steps on each task's support from there:

    .. math::

        \theta = \arg\min_\theta \sum_i \sum_j \lVert f_\theta(x_{ij}) - y_{ij} \rVert^2, \qquad
        \phi_i \leftarrow \phi_i - \alpha_{\ell}\, m_\ell(s)\, \nabla_{\phi_{i\ell}} \mathcal L(\phi_i, D^{tr}_i),
        \quad \phi_i^{(0)} = \theta,

    with :math:`\alpha_\ell = \alpha\,\delta^{L-1-\ell}` for layer :math:`\ell` of :math:`L` and
    :math:`m_\ell(s) \in \{0, 1\}` whether layer :math:`\ell` trains at step :math:`s`: the lecture's design
    choices (CS-330 lecture 2) as options. References: C. Finn, P. Abbeel, S. Levine, ICML 2017 (the
    "pretrained" baseline); A. Kumar et al., "Fine-Tuning can Distort Pretrained Features and Underperform
    Out-of-Distribution", ICLR 2022 (LP-FT); Y. Lee et al., "Surgical Fine-Tuning Improves Adaptation to
    Distribution Shifts", ICLR 2023.

    *Layers* are the modules that own parameters, in definition order (the three ``Linear`` of
    :func:`maml_net`; see :attr:`layer_names`); the last is the *head*.

    Args:
        net: a network mapping ``... x x_dim`` to ``... x y_dim`` (trained in place by ``meta_fit``); ``None``:
            :func:`maml_net` sized from the tasks and seeded by ``meta_fit``'s ``seed``.
        lr: :math:`\alpha`, the fine-tuning learning rate (of the head).
        steps: fine-tuning steps (0: predict with the pre-trained network).
        optimizer: ``"sgd"`` or ``"adam"`` (torch's defaults, fresh state per task).
        layer_lr_decay: :math:`\delta \in (0, 1]`: the head gets ``lr``, the layer before ``lr * δ``, ...
        unfreeze_schedule: gradual unfreezing: non-decreasing step indices ``[s_1, s_2, ...]``; only the head
            trains at first, and at fine-tuning step ``s_k`` the ``k``-th layer before the head becomes trainable
            (``[5, 10]`` on three layers: head only for steps 0-4, the last two for 5-9, all from 10). Layers
            beyond the list stay frozen. An unfrozen layer's Adam state starts at its first update.
        reinit_head: re-initialize the head (``reset_parameters()``, seeded by ``seed``) before fine-tuning.
        lp_ft: LP-FT: train only the head for this many steps (``True``: ``steps``), then every allowed layer
            for ``steps`` steps with a fresh optimizer state; ``False`` or 0: off.
        layers: surgical fine-tuning: indices of the layers that may train (negative from the end).
        cv_grid: choose hyperparameters by cross-validation on each support set: a dict with any of ``"lr"``,
            ``"steps"``, ``"layer_lr_decay"``, each a list of values; their product is searched. The choice is
            made **per task** (each task's own CV loss; ties go to the first grid point), in one vectorized run
            per (lr, decay) pair over every task and fold, the step counts read off that run.
        cv: ``"loo"`` (leave one out) or a number of folds ``k >= 2`` (see :func:`cv_folds`).
        seed: seeds ``reinit_head``.

    >>> import bayesmeta as bm
    >>> tasks = bm.tasks.Sinusoid().sample(num_tasks=20, support=5, query=5, seed=0)
    >>> ft = FineTune(lr=0.01, steps=3, lp_ft=2).meta_fit(tasks, steps=5, progress=False)
    >>> adapted = ft.adapt(tasks.support)
    >>> tuple(adapted.predict(tasks.query.x).mean.shape), ft.layer_names
    ((20, 5, 1), ['0', '2', '4'])
    """

    def __init__(self, net: nn.Module | None = None, lr: float = 1e-2, steps: int = 10, optimizer: str = "sgd",
                 layer_lr_decay: float = 1.0, unfreeze_schedule: Sequence[int] | None = None, reinit_head: bool = False,
                 lp_ft: bool | int = False, layers: Sequence[int] | None = None,
                 cv_grid: Mapping[str, Sequence[float]] | None = None, cv: str | int = "loo", seed: int = 0) -> None:
        super().__init__()
        if optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer: expected 'sgd' or 'adam', got {optimizer!r}")
        if not (cv == "loo" or (is_int(cv) and cv >= 2)):
            raise ValueError(f"cv: expected 'loo' or a number of folds >= 2, got {cv!r}")
        self.lr, self.steps = check_positive(lr, "lr"), check_count(steps, "steps")
        self.optimizer, self.reinit_head, self.cv = optimizer, check_flag(reinit_head, "reinit_head"), cv
        self.layer_lr_decay = _decay(layer_lr_decay, "layer_lr_decay")
        self.unfreeze_schedule = None if unfreeze_schedule is None else _schedule(unfreeze_schedule)
        self.lp_steps = (self.steps if lp_ft else 0) if isinstance(lp_ft, bool) else check_count(lp_ft, "lp_ft")
        self.layers = None if layers is None else check_values(layers, "layers", "ints")
        self.cv_grid = None if cv_grid is None else _grid(cv_grid)
        self.seed = check_count(seed, "seed")
        self.net: nn.Module | None = None
        if net is not None:
            self._bind(check_net(net))

    # ------------------------------------------------------------------ structure
    def _bind(self, net: nn.Module) -> None:
        """Find the layers, then check the options that depend on them."""
        self.net = net
        groups = [(name, [n for n, _ in m.named_parameters(recurse=False)]) for name, m in net.named_modules()]
        groups = [(name, own) for name, own in groups if own]
        self.layer_names = [name for name, _ in groups]
        L = self.num_layers = len(groups)
        self._layer_of = {(f"{name}." if name else "") + n: i for i, (name, own) in enumerate(groups) for n in own}
        if self.layers is not None and any(not -L <= i < L for i in self.layers):
            raise ValueError(f"layers: expected indices in [{-L}, {L - 1}] for a network of {L} layers, got {self.layers}")
        self._allowed = set(range(L)) if self.layers is None else {i % L for i in self.layers}
        if self.unfreeze_schedule is not None and len(self.unfreeze_schedule) > L - 1:
            raise ValueError(f"unfreeze_schedule: expected at most {L - 1} steps (one per layer before the head), "
                             f"got {len(self.unfreeze_schedule)}")
        if self.lp_steps and L - 1 not in self._allowed:
            raise ValueError(f"lp_ft: linear probing trains the head (layer {L - 1}), but layers={self.layers} excludes it")
        self._head = net.get_submodule(self.layer_names[-1])
        if self.reinit_head and not hasattr(self._head, "reset_parameters"):
            raise ValueError(f"reinit_head: the head {type(self._head).__name__} has no reset_parameters()")

    def _trainable(self, step: int) -> set[int]:
        """The layers that train at (LP + FT) step ``step``."""
        L = self.num_layers
        if step < self.lp_steps:
            return {L - 1}
        t = step - self.lp_steps
        first = 0 if self.unfreeze_schedule is None else L - 1 - sum(s <= t for s in self.unfreeze_schedule)
        return set(range(first, L)) & self._allowed

    # ------------------------------------------------------------------ pre-training
    def _meta_fit(self, tasks: TaskSet, steps: int, batch_tasks: int, lr: float, device: Any, seed: int,
                  progress: bool) -> None:
        tasks = check_meta_tasks(tasks)
        if self.net is None:
            self._bind(maml_net(tasks.x_dim, tasks.y_dim, seed=seed))
        net = self.net.to(device) if device is not None else self.net
        ref = next(net.parameters())
        data = clean(tasks.all_points().to(ref.device, ref.dtype))
        with torch.no_grad():
            out = net(data.x[:1])
        if tuple(out.shape) != (1, data.num_points, tasks.y_dim):
            raise ValueError(f"net: expected output shape 1 x {data.num_points} x {tasks.y_dim} for input "
                             f"1 x {data.num_points} x {tasks.x_dim}, got {tuple(out.shape)}")
        self._dims = (tasks.x_dim, tasks.y_dim)

        def loss(idx: Tensor, gen: torch.Generator) -> Tensor:  # the mean over every point of the batch
            idx = idx.to(data.device)
            x, y, m = data.x[idx], data.y[idx], data.mask[idx]
            return masked_mse(net(x).flatten(0, 1), y.flatten(0, 1), m.flatten())

        meta_train(list(net.parameters()), loss, len(tasks), steps, batch_tasks, lr, seed, progress,
                   "FineTune.meta_fit", self.history["loss"])

    # ------------------------------------------------------------------ fine-tuning
    def adapt(self, support: TaskData | TaskSet) -> Adapted:
        """Fine-tune a copy of the pre-trained network on each task's support (all tasks at once).

        Args:
            support: ``T`` tasks' support sets (``x``: ``T x N x x_dim``, masked).

        Returns:
            An :class:`Adapted` whose ``predict(x)`` (``x``: ``T x M x x_dim``) gives ``mean`` ``T x M x y_dim`` and
            ``std`` None; ``extras["params"]``: the fine-tuned parameters, each ``T x ...``; with ``cv_grid``,
            ``extras["cv"]``: ``"grid"`` (list of dicts), ``"loss"`` (``T x G`` CV mean squared errors, inf where
            a run diverged), ``"choice"`` (``T`` grid indices) and the chosen ``"lr"``, ``"steps"``,
            ``"layer_lr_decay"`` (each ``T``).
        """
        start_time = time.perf_counter()
        support = self._fitted_support(support)
        start, T = self._start(), support.num_tasks
        hp = self._hyper(T, self.lr, self.layer_lr_decay, self.steps)
        extras: dict[str, Any] = {}
        with torch.enable_grad():  # fine-tuning differentiates even when the caller is under torch.no_grad()
            if self.cv_grid is not None:
                hp, extras["cv"] = self._cross_validate(start, support)
            params, _ = self._tune(tile(start, T, copy=True), support, hp)
        extras["params"] = params
        return Adapted(support, predictor(self.net, params), time.perf_counter() - start_time, extras)

    def _start(self) -> Params:
        """The pre-trained parameters (unbatched), with the head re-initialized if asked."""
        params = {n: p.detach() for n, p in self.net.named_parameters()}
        if self.reinit_head:  # drawn on the CPU: the same weights on every device
            ref, fresh = next(self._head.parameters()), initial_parameters(self._head, self.seed)
            prefix = self.layer_names[-1] + "." if self.layer_names[-1] else ""
            params.update({prefix + n: fresh[n].to(ref.device) for n, _ in self._head.named_parameters(recurse=False)})
        return params

    def _hyper(self, T: int, lr: float, decay: float, steps: int) -> dict[str, Tensor]:
        ref = next(self.net.parameters())
        full = lambda v, dtype: torch.full((T,), v, dtype=dtype, device=ref.device)  # noqa: E731
        return {"lr": full(lr, ref.dtype), "layer_lr_decay": full(decay, ref.dtype), "steps": full(steps, torch.long)}

    def _sse(self, params: Params, data: TaskData) -> Tensor:
        """``T`` sums over observed points of the squared error (averaged over ``y_dim``)."""
        return masked_sum((batched_forward(self.net, params, data.x) - data.y).pow(2).mean(-1), data.mask)

    def _tune(self, params: Params, data: TaskData, hp: dict[str, Tensor], checkpoints: Sequence[int] = (),
              heldout: TaskData | None = None) -> tuple[Params, dict[int, Tensor]]:
        """Fine-tune stacked ``T x ...`` parameters; with ``heldout``, record its per-task squared-error sums
        after each fine-tuning step count in ``checkpoints`` (and tolerate divergence: it is a CV run)."""
        L, lp, counts = self.num_layers, self.lp_steps, data.counts.clamp(min=1)
        total, state, scores = lp + int(hp["steps"].max()), {}, {}
        for step in range(total + 1):
            t = step - lp
            if heldout is not None and t in checkpoints:
                with torch.no_grad():
                    scores[t] = self._sse(params, heldout)
            if step == total:
                break
            if t == 0:
                state = {}  # LP-FT: the fine-tuning phase starts with a fresh optimizer
            train = [n for n in params if self._layer_of[n] in self._trainable(step)]
            if not train:
                continue
            leaves = {n: p.detach().requires_grad_(n in train) for n, p in params.items()}
            loss = self._sse(leaves, data) / counts
            if heldout is None:
                _check_finite(loss, step, hp["lr"])
            grads = torch.autograd.grad(loss.sum(), [leaves[n] for n in train], allow_unused=True)
            params = {n: p.detach() for n, p in leaves.items()}
            active = (t < hp["steps"]).to(hp["lr"].dtype) if t >= 0 else 1.0
            for n, g in zip(train, grads):
                if g is not None:
                    rate = hp["lr"] * hp["layer_lr_decay"] ** (L - 1 - self._layer_of[n]) * active
                    params[n] = self._update(n, params[n], g, rate, state)
        if heldout is None and total:
            with torch.no_grad():
                _check_finite(self._sse(params, data) / counts, total, hp["lr"])
        return params, scores

    def _update(self, name: str, p: Tensor, g: Tensor, rate: Tensor, state: dict[str, Any]) -> Tensor:
        """One SGD or Adam step (as ``torch.optim`` computes it) with a per-task learning rate ``rate``: ``T``."""
        rate = rate.reshape(-1, *[1] * (p.dim() - 1))
        if self.optimizer == "sgd":
            return p - rate * g
        b1, b2 = 0.9, 0.999
        m, v, k = state.get(name, (torch.zeros_like(p), torch.zeros_like(p), 0))
        m, v, k = m.lerp(g, 1 - b1), v * b2 + (1 - b2) * g * g, k + 1
        state[name] = (m, v, k)
        denom = v.sqrt() / math.sqrt(1 - b2**k) + 1e-8
        return p - rate / (1 - b1**k) * m / denom

    def _cross_validate(self, start: Params, support: TaskData) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Per-task choice from ``cv_grid``: folds become extra tasks (``F * T``), one run per (lr, decay)."""
        held = cv_folds(support.mask, self.cv)
        F, T = held.shape[0], support.num_tasks
        x, y = (t.expand(F, *t.shape).flatten(0, 1) for t in (support.x, support.y))
        train = TaskData(x, y, (support.mask & ~held).flatten(0, 1))
        test = TaskData(x, y, held.flatten(0, 1))
        grid = self.cv_grid
        step_values = list(grid.get("steps", [self.steps]))
        points, losses = [], []
        for lr, decay in itertools.product(grid.get("lr", [self.lr]), grid.get("layer_lr_decay", [self.layer_lr_decay])):
            hp = self._hyper(F * T, lr, decay, max(step_values))
            _, scores = self._tune(tile(start, F * T, copy=True), train, hp, checkpoints=step_values, heldout=test)
            for s in step_values:
                points.append({"lr": lr, "layer_lr_decay": decay, "steps": s})
                losses.append(scores[s].reshape(F, T).sum(0) / support.counts.clamp(min=1))
        loss = torch.stack(losses, -1)
        loss = torch.where(torch.isnan(loss), math.inf, loss)
        choice = loss.argmin(-1)
        hp = {k: torch.tensor([p[k] for p in points], dtype=v.dtype, device=v.device)[choice]
              for k, v in self._hyper(T, 0.0, 0.0, 0).items()}
        return hp, {"grid": points, "loss": loss, "choice": choice, **hp}


def _check_finite(loss: Tensor, step: int, lr: Tensor) -> None:
    if not torch.isfinite(loss).all():
        bad = int((~torch.isfinite(loss)).nonzero()[0])
        raise FloatingPointError(f"FineTune.adapt: expected finite support losses, got {loss[bad].item()} for task "
                                 f"{bad} at step {step}; lower lr (task {bad}: {lr[bad].item():g})")


def _decay(value: Any, name: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value <= 1:
        raise ValueError(f"{name}: expected a factor in (0, 1], got {value!r}")
    return float(value)


def _schedule(value: Any) -> list[int]:
    steps = check_values(value, "unfreeze_schedule", "ints")
    if any(s < 0 for s in steps) or steps != sorted(steps):
        raise ValueError(f"unfreeze_schedule: expected non-decreasing step indices >= 0, got {steps}")
    return steps


def _grid(value: Any) -> dict[str, list]:
    if not isinstance(value, Mapping) or not value or set(value) - set(GRID_KEYS):
        raise ValueError(f"cv_grid: expected a dict with keys among {list(GRID_KEYS)}, each a list of values, got {value!r}")
    checks = {"lr": check_positive, "steps": check_count, "layer_lr_decay": _decay}
    return {k: [checks[k](v, f"cv_grid[{k!r}]") for v in check_values(vs, f"cv_grid[{k!r}]")]
            for k, vs in value.items()}
