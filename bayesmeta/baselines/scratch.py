r"""Train from scratch: no meta-learning at all, one fresh network per task fitted to its support alone."""
from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from bayesmeta.baselines.base import Adapted, Baseline, check_meta_tasks, check_support_set
from bayesmeta.baselines.functional import (batched_forward, check_finite, check_net, initial_parameters, is_int,
                                            masked_mse, net_dims, predictor, tile)
from bayesmeta.inference.checks import check_positive
from bayesmeta.tasks.taskset import TaskData, TaskSet

__all__ = ["TrainFromScratch"]

DIVERGED = "{name}: the support loss became {value} at step {step}; lower lr or check the data's scale"

OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}


class TrainFromScratch(Baseline):
    r"""A fresh network per task, trained on that task's support only: the no-transfer reference.

    For task :math:`i`, every copy starts from the same seeded initialization :math:`\phi^{(0)}` (nothing is
    learned across tasks) and takes ``steps`` full-batch optimizer steps on its support MSE,

    .. math::

        \phi_i = \operatorname{Opt}^{\,S}\Big(\phi^{(0)};\ \frac{1}{|D_i^{tr}|} \sum_{(x, y) \in D_i^{tr}}
        \lVert f_{\phi}(x) - y \rVert^2\Big), \qquad \hat y = f_{\phi_i}(x).

    All tasks train in one vectorized program: their parameters are stacked (``T x *parameter.shape``) and
    the summed loss is minimized; since each task's loss depends on its own slice only and Adam and SGD
    update each entry on its own, this is exactly independent training of every task. It is the no-transfer
    reference that anything learned across tasks must beat. References: the network of C. Finn, P. Abbeel,
    S. Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks", ICML 2017, §5.1; the
    optimizer of D. P. Kingma, J. Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015.

    Args:
        net: the architecture (default :func:`~bayesmeta.baselines.maml_net`); its values are not used:
            it is re-initialized under ``seed`` (see :func:`~bayesmeta.baselines.functional.initial_parameters`).
        lr: the optimizer's learning rate.
        steps: full-batch steps per task.
        optimizer: ``"adam"`` or ``"sgd"``.
        seed: seeds the initialization.

    >>> import bayesmeta as bm
    >>> tasks = bm.tasks.Sinusoid().sample(num_tasks=3, support=5, query=4, seed=0)
    >>> adapted = TrainFromScratch(steps=5).adapt(tasks.support)
    >>> tuple(adapted.predict(tasks.query.x).mean.shape), len(adapted.extras["loss"])
    ((3, 4, 1), 5)
    """

    def __init__(self, net: nn.Module | None = None, lr: float = 1e-2, steps: int = 100, optimizer: str = "adam",
                 seed: int = 0) -> None:
        super().__init__()
        self.net = check_net(net)
        self.lr = float(check_positive(lr, "lr"))
        self.steps = check_positive(steps, "steps", integer=True)
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer: expected one of {sorted(OPTIMIZERS)}, got {optimizer!r}")
        self.optimizer = optimizer
        if not is_int(seed):
            raise TypeError(f"seed: expected an int, got {type(seed).__name__} {seed!r}")
        self.seed = seed
        self.init = initial_parameters(self.net, seed)
        self.x_dim, self.y_dim = net_dims(self.net)
        self.config.update(adapt_lr=self.lr, adapt_steps=steps, optimizer=optimizer, init_seed=seed)

    def _meta_fit(self, tasks: TaskSet, steps: int, batch_tasks: int, lr: float, device: Any, seed: int,
                  progress: bool) -> None:
        """No meta-training: checks the collection and records it (the protocol's ``steps``, ``lr`` are unused)."""
        tasks = check_meta_tasks(tasks, self.x_dim, self.y_dim)
        self.config.update(num_tasks=len(tasks), device=str(device) if device is not None else None,
                           meta_training="none")

    def adapt(self, support: TaskData | TaskSet) -> Adapted:
        """Train one copy of the network per task on its support (all tasks at once).

        Args:
            support: ``T`` tasks' support sets (``tasks.support`` or a TaskSet); trained on their device
                and dtype. A task without support points keeps the initialization.

        Returns:
            An :class:`~bayesmeta.baselines.Adapted` whose ``predict(x)`` (``x``: ``T x N x x_dim``) gives the
            ``T x N x y_dim`` mean; ``extras``: ``"params"`` (each ``T x *parameter.shape``), ``"loss"`` (the
            mean support MSE over tasks before each step) and ``"train_mse"`` (``T``, after the last step).

        Raises:
            FloatingPointError: the support loss became NaN/Inf (the step is named).
        """
        support = check_support_set(support, self.x_dim, self.y_dim)
        start = time.perf_counter()
        init = {k: v.to(support.x.device, support.x.dtype) for k, v in self.init.items()}
        params = {k: v.requires_grad_() for k, v in tile(init, support.num_tasks, copy=True).items()}
        optimizer = OPTIMIZERS[self.optimizer](list(params.values()), lr=self.lr)
        history: list[float] = []
        with torch.enable_grad():
            for step in range(self.steps):
                losses = masked_mse(batched_forward(self.net, params, support.x), support.y, support.mask)
                history.append(check_finite(losses.mean().item(), DIVERGED, name="TrainFromScratch.adapt", step=step))
                optimizer.zero_grad(set_to_none=True)
                losses.sum().backward()
                optimizer.step()
        phi = {k: v.detach() for k, v in params.items()}
        with torch.no_grad():
            final = masked_mse(batched_forward(self.net, phi, support.x), support.y, support.mask)
        extras = {"params": phi, "loss": history, "train_mse": final}
        return Adapted(support, predictor(self.net, phi), time.perf_counter() - start, extras=extras)
