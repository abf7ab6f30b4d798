r"""MAML and Meta-SGD: a shared initialization adapted to each task by a few gradient steps, all tasks at once.

Every task of a batch runs its inner loop in one vectorized program, so that a meta-batch of 100 tasks is
one batched computation rather than a Python loop over tasks: for any network, ``torch.func.vmap`` of
``torch.func.grad`` of a ``torch.func.functional_call``; for an ``nn.Sequential`` MLP (such as
:func:`~bayesmeta.baselines.maml_net`), the same numbers from batched matrix products on ``T`` stacked
copies of the parameters, about twice as fast (``benchmarks/maml_speed.py``); both are
:func:`~bayesmeta.baselines.functional.batched_forward`.
"""
from __future__ import annotations

import time
from typing import Any, Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from bayesmeta.baselines.base import Adapted, Baseline, check_meta_tasks, check_support_set
from bayesmeta.baselines.functional import (batched_forward, check_count, check_flag, check_net, clean, is_mlp,
                                            masked_mse, meta_train, net_dims, predictor, tile)
from bayesmeta.inference.checks import check_positive
from bayesmeta.tasks.taskset import TaskData, TaskSet

__all__ = ["MAML", "inner_loop"]

DIVERGED = ("{name}: the outer (query) loss became {value} at step {step}; training stopped and the net keeps its last "
            "good state. Lower lr or inner_lr, or check the data's scale.")


def inner_loop(net: nn.Module, params: Mapping[str, Tensor], support: TaskData, lr: float | Mapping[str, Any],
               steps: int, first_order: bool = False) -> dict[str, Tensor]:
    r"""``steps`` gradient steps on each task's support MSE from the shared ``params``, vectorized over tasks.

    .. math::

        \phi_i^{(0)} = \theta, \qquad
        \phi_i^{(k+1)} = \phi_i^{(k)} - \alpha \odot \nabla_\phi \mathcal L(\phi_i^{(k)}; D_i^{tr}),

    with :math:`\mathcal L` the masked MSE. The result is differentiable in ``params`` (and in ``lr`` where
    it holds tensors): through the Hessian-vector products (second order) or, with ``first_order``, with the
    inner gradients treated as constants. An MLP (:func:`~bayesmeta.baselines.functional.is_mlp`) runs on
    stacked copies with batched matrix products, any other module as ``vmap`` of ``grad``; both give the
    per-task loop's numbers.

    Args:
        net: the network; its parameter names key ``params``.
        params: :math:`\theta`, unbatched tensors (``*parameter.shape``).
        support: ``T`` tasks (``x``: ``T x N x x_dim``, ``y``: ``T x N x y_dim``, ``mask``: ``T x N``).
        lr: :math:`\alpha`: a number, or per parameter a number or a tensor broadcastable to its shape.
        steps: the number of inner steps (0: every task keeps :math:`\theta`).
        first_order: drop the second-order terms (first-order MAML).

    Returns:
        :math:`\phi_i`, each ``T x *parameter.shape``.

    >>> from bayesmeta.baselines import maml_net
    >>> net = maml_net()
    >>> support = TaskData.checked(torch.randn(4, 5, 1), torch.randn(4, 5, 1))
    >>> phi = inner_loop(net, dict(net.named_parameters()), support, lr=0.01, steps=2)
    >>> tuple(phi["0.weight"].shape)
    (4, 40, 1)
    """
    params = dict(params)
    lrs = dict(lr) if isinstance(lr, Mapping) else {k: lr for k in params}
    if steps == 0:
        return tile(params, support.num_tasks)
    if is_mlp(net):
        return _stacked_inner_loop(net, params, support, lrs, steps, first_order)

    def loss(p: dict[str, Tensor], x: Tensor, y: Tensor, m: Tensor) -> Tensor:
        return masked_mse(functional_call(net, p, (x,)), y, m)

    def adapt_one(x: Tensor, y: Tensor, m: Tensor) -> dict[str, Tensor]:
        p = params
        for _ in range(steps):
            g = grad(loss)(p, x, y, m)
            p = {k: p[k] - lrs[k] * (g[k].detach() if first_order else g[k]) for k in p}
        return p

    return vmap(adapt_one)(support.x, support.y, support.mask)


def _stacked_inner_loop(net: nn.Module, params: dict[str, Tensor], support: TaskData, lrs: dict[str, Any],
                        steps: int, first_order: bool) -> dict[str, Tensor]:
    """:func:`inner_loop` for an MLP: θ expanded to ``T`` copies; the gradient of the summed task losses with
    respect to the copies is each task's own gradient, since a task's loss reads only its copy."""
    with torch.enable_grad():
        p = tile(params, support.num_tasks)
        p = {k: v if v.requires_grad else v.detach().requires_grad_() for k, v in p.items()}
        for _ in range(steps):
            loss = masked_mse(batched_forward(net, p, support.x), support.y, support.mask).sum()
            g = torch.autograd.grad(loss, list(p.values()), create_graph=not first_order)
            p = {k: v - lrs[k] * gk for (k, v), gk in zip(p.items(), g)}
    return p


class MAML(Baseline):
    r"""Model-agnostic meta-learning: learn an initialization :math:`\theta` that a few gradient steps adapt.

    For task :math:`i` with support :math:`D_i^{tr}` and query :math:`D_i^{q}`, the task parameters are
    :math:`K` gradient steps from :math:`\theta` (a point estimate of :math:`\phi_i` in a hierarchical model
    whose prior is centred on :math:`\theta`, Grant et al. 2018),

    .. math::

        \phi_i = U^K(\theta; D_i^{tr}), \qquad U(\phi; D) = \phi - \alpha \odot \nabla_\phi \mathcal L(\phi; D),
        \qquad \mathcal L(\phi; D) = \frac{1}{|D|}\sum_{(x, y) \in D} \lVert f_\phi(x) - y \rVert^2,

        \min_{\theta\,(,\,\alpha)} \; \frac{1}{B} \sum_{i \in \text{batch}} \mathcal L\big(\phi_i; D_i^{q}\big),

    optimized by Adam over meta-batches of :math:`B` tasks. :math:`\alpha` is a fixed scalar (MAML), or a
    learned tensor of :math:`\theta`'s shape (Meta-SGD). ``first_order`` treats :math:`\nabla_\phi\mathcal L`
    as a constant in the outer gradient (first-order MAML).

    References: C. Finn, P. Abbeel, S. Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep
    Networks", ICML 2017; Z. Li, F. Zhou, F. Chen, H. Li, "Meta-SGD: Learning to Learn Quickly for Few-Shot
    Learning", arXiv:1707.09835, 2017; E. Grant et al., "Recasting Gradient-Based Meta-Learning as
    Hierarchical Bayes", ICLR 2018.

    Args:
        net: the network :math:`f_\theta`; its parameters are :math:`\theta` and are trained in place
            (default :func:`~bayesmeta.baselines.maml_net`, 1-40-40-1 ReLU).
        inner_lr: :math:`\alpha` (with ``learn_inner_lr``, its initial value).
        inner_steps: :math:`K` during meta-training, and the default of :meth:`adapt`.
        first_order: drop the second-order terms of the outer gradient.
        learn_inner_lr: learn one inner learning rate per parameter entry (Meta-SGD), held in ``inner_lrs``.

    >>> import bayesmeta as bm
    >>> tasks = bm.tasks.Sinusoid().sample(num_tasks=8, support=5, query=5, seed=0)
    >>> maml = MAML().meta_fit(tasks, steps=2, batch_tasks=4, progress=False)
    >>> tuple(maml.adapt(tasks.support).predict(tasks.query.x).mean.shape), len(maml.history["loss"])
    ((8, 5, 1), 2)
    """

    def __init__(self, net: nn.Module | None = None, inner_lr: float = 0.01, inner_steps: int = 1,
                 first_order: bool = False, learn_inner_lr: bool = False) -> None:
        super().__init__()
        self.net = check_net(net)
        self.inner_lr = float(check_positive(inner_lr, "inner_lr"))
        self.inner_steps = check_positive(inner_steps, "inner_steps", integer=True)
        self.first_order = check_flag(first_order, "first_order")
        self.learn_inner_lr = check_flag(learn_inner_lr, "learn_inner_lr")
        self.inner_lrs: nn.ParameterList | None = None
        if learn_inner_lr:
            self.inner_lrs = nn.ParameterList(
                [nn.Parameter(torch.full_like(p.detach(), self.inner_lr)) for p in self.net.parameters()])
        self.x_dim, self.y_dim = net_dims(self.net)
        self.config.update(inner_lr=self.inner_lr, inner_steps=inner_steps, first_order=first_order,
                           learn_inner_lr=learn_inner_lr)

    def parameters(self) -> list[Tensor]:
        """What meta-training optimizes: :math:`\\theta` (``net.parameters()``), then the Meta-SGD rates."""
        return list(self.net.parameters()) + (list(self.inner_lrs) if self.inner_lrs is not None else [])

    def inner_lr_dict(self) -> dict[str, Any]:
        """:math:`\\alpha` per parameter name: the learned tensors (Meta-SGD) or the fixed number."""
        names = [name for name, _ in self.net.named_parameters()]
        if self.inner_lrs is None:
            return {name: self.inner_lr for name in names}
        return dict(zip(names, self.inner_lrs))

    def outer_loss(self, support: TaskData, query: TaskData) -> Tensor:
        r"""The meta-objective on one batch: the mean over tasks of the query MSE after the inner loop.

        Args:
            support: ``T`` tasks' support sets (on the net's device and dtype).
            query: the same tasks' query sets.

        Returns:
            A scalar, differentiable in :math:`\theta` (and the Meta-SGD rates).
        """
        phi = inner_loop(self.net, dict(self.net.named_parameters()), support, self.inner_lr_dict(),
                         self.inner_steps, self.first_order)
        return masked_mse(batched_forward(self.net, phi, query.x), query.y, query.mask).mean()

    def _meta_fit(self, tasks: TaskSet, steps: int, batch_tasks: int, lr: float, device: Any, seed: int,
                  progress: bool) -> None:
        tasks = check_meta_tasks(tasks, self.x_dim, self.y_dim)
        _require_query(tasks, "MAML")
        if device is not None:
            self.net.to(device)
            if self.inner_lrs is not None:
                self.inner_lrs.to(device)
        first = next(self.net.parameters())
        tasks = tasks.to(first.device, first.dtype)
        s, q = clean(tasks.support), clean(tasks.query)

        def loss(idx: Tensor, gen: torch.Generator) -> Tensor:
            idx = idx.to(first.device)
            return self.outer_loss(TaskData(s.x[idx], s.y[idx], s.mask[idx]), TaskData(q.x[idx], q.y[idx], q.mask[idx]))

        meta_train(self.parameters(), loss, len(tasks), steps, batch_tasks, lr, seed, progress, "MAML.meta_fit",
                   self.history["loss"], message=DIVERGED, keep_order=True)
        self.config.update(device=str(first.device), num_tasks=len(tasks))

    def adapt(self, support: TaskData | TaskSet, inner_steps: int | None = None) -> Adapted:
        """Run the inner loop on each task's support (all tasks at once) from the learned :math:`\\theta`.

        Args:
            support: ``T`` tasks' support sets (``tasks.support`` or a TaskSet); computed on their device
                and dtype.
            inner_steps: the number of steps (default: the ``inner_steps`` of training; the MAML protocol
                reports 1 and 10); 0 predicts with :math:`\\theta` itself. The step size stays ``inner_lr``
                (or the learned rates).

        Returns:
            An :class:`~bayesmeta.baselines.Adapted` whose ``predict(x)`` (``x``: ``T x N x x_dim``) gives the
            ``T x N x y_dim`` mean (no ``std``); ``extras["params"]`` holds :math:`\\phi_i`
            (``T x *parameter.shape`` each).
        """
        support = check_support_set(support, self.x_dim, self.y_dim)
        steps = self.inner_steps if inner_steps is None else check_count(inner_steps, "inner_steps")
        start = time.perf_counter()
        to = {"device": support.x.device, "dtype": support.x.dtype}
        theta = {k: v.detach().to(**to) for k, v in self.net.named_parameters()}
        lrs = {k: v.detach().to(**to) if isinstance(v, Tensor) else v for k, v in self.inner_lr_dict().items()}
        phi = {k: v.detach() for k, v in inner_loop(self.net, theta, support, lrs, steps).items()}
        return Adapted(support, predictor(self.net, phi), time.perf_counter() - start,
                       extras={"params": phi, "inner_steps": steps})


def _require_query(tasks: TaskSet, who: str) -> None:
    """Every meta-training task needs query points: the outer loss is measured on them."""
    empty = tasks.query.counts == 0
    if empty.any():
        first = int(empty.nonzero()[0])
        raise ValueError(
            f"tasks: {who} needs query points in every meta-training task (its outer loss is the query MSE), got "
            f"{int(empty.sum())} task(s) without any (first: task {first}); sample tasks with a query set, e.g. "
            "family.sample(num_tasks, support=10, query=10, seed=0), or TaskSet.from_dataframe(..., support=k)")
