r"""The black-box learner: a conditional neural process reads the support set and predicts at new inputs."""
from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import Tensor, nn

from bayesmeta.baselines.base import Adapted, Baseline, check_meta_tasks
from bayesmeta.baselines.functional import clean, masked_mean, meta_train, mlp, seeded
from bayesmeta.inference.checks import check_positive
from bayesmeta.inference.posterior import Prediction
from bayesmeta.tasks.taskset import TaskData, TaskSet

__all__ = ["BlackBox", "ConditionalNeuralProcess"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class ConditionalNeuralProcess(nn.Module):
    r"""Encoder :math:`h` (mean-pooled over the context) and decoder :math:`g` of a CNP.

    Args:
        x_dim, y_dim: input and target sizes.
        hidden: width of every layer and of the representation :math:`r`.
        depth: ``Linear`` layers in the encoder and in the decoder.
        min_std: floor of the predictive standard deviation.

    >>> cnp = ConditionalNeuralProcess(1, 1, hidden=8, depth=2)
    >>> r = cnp.encode(torch.zeros(3, 5, 1), torch.zeros(3, 5, 1), torch.ones(3, 5, dtype=torch.bool))
    >>> mean, std = cnp.decode(r, torch.zeros(3, 7, 1))
    >>> tuple(r.shape), tuple(mean.shape), bool((std >= 0.01).all())
    ((3, 8), (3, 7, 1), True)
    """

    def __init__(self, x_dim: int, y_dim: int, hidden: int = 128, depth: int = 3, min_std: float = 0.01) -> None:
        super().__init__()
        self.min_std = min_std
        self.encoder = mlp([x_dim + y_dim] + [hidden] * depth)
        self.decoder = mlp([hidden + x_dim] + [hidden] * (depth - 1) + [2 * y_dim])

    def encode(self, x: Tensor, y: Tensor, mask: Tensor) -> Tensor:
        """``T x N x x_dim``, ``T x N x y_dim``, ``T x N`` context -> ``T x hidden`` masked mean (0 if empty)."""
        h = torch.where(mask[..., None], self.encoder(torch.cat([x, y], -1)), 0.0)
        return h.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)

    def decode(self, r: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """``T x hidden`` representations, ``T x M x x_dim`` inputs -> mean and std, each ``T x M x y_dim``."""
        out = self.decoder(torch.cat([r[:, None].expand(-1, x.shape[1], -1), x], -1))
        mean, raw = out.chunk(2, -1)
        return mean, self.min_std + nn.functional.softplus(raw)


class BlackBox(Baseline):
    r"""A conditional neural process: the lecture's black-box learner :math:`y = f_\theta(D^{tr}, x)`.

    A set encoder summarizes the support, a decoder predicts a Gaussian at each query input:

    .. math::

        r_i = \frac{1}{|C_i|} \sum_{j \in C_i} h_\theta(x_{ij}, y_{ij}), \qquad
        p_\theta(y \mid x, C_i) = \mathcal N\big(y;\ \mu_\theta(r_i, x),\ \sigma_\theta(r_i, x)^2\big),
        \quad \sigma_\theta = \sigma_{min} + \operatorname{softplus}(\cdot),

    meta-trained by maximizing :math:`\mathbb E_{C_i}\, \frac{1}{|D_i|}\sum_{j \in D_i} \log p_\theta(y_{ij}
    \mid x_{ij}, C_i)`, where each task's context :math:`C_i` is a random subset of its support, of a size
    drawn uniformly from 1 to the support size, and the targets :math:`D_i` are all its points (support and
    query: as in the paper, the context is part of the targets). Reference: M. Garnelo et al., "Conditional
    Neural Processes", ICML 2018.

    Args:
        hidden: width of the encoder, the representation and the decoder.
        depth: ``Linear`` layers in the encoder and in the decoder.
        min_std: :math:`\sigma_{min} > 0`, the floor of the predictive standard deviation.

    Attributes:
        net: the :class:`ConditionalNeuralProcess`, built by ``meta_fit`` (seeded by its ``seed``).

    >>> import bayesmeta as bm
    >>> tasks = bm.tasks.Sinusoid().sample(num_tasks=20, support=5, query=5, seed=0)
    >>> bb = BlackBox(hidden=16).meta_fit(tasks, steps=5, progress=False)
    >>> pred = bb.adapt(tasks.support).predict(tasks.query.x)
    >>> tuple(pred.mean.shape), bool((pred.std > 0).all())
    ((20, 5, 1), True)
    """

    def __init__(self, hidden: int = 128, depth: int = 3, min_std: float = 0.01) -> None:
        super().__init__()
        self.hidden = check_positive(hidden, "hidden", integer=True)
        self.depth = check_positive(depth, "depth", integer=True)
        self.min_std = check_positive(min_std, "min_std")
        self.net: ConditionalNeuralProcess | None = None

    def _meta_fit(self, tasks: TaskSet, steps: int, batch_tasks: int, lr: float, device: Any, seed: int,
                  progress: bool) -> None:
        tasks = check_meta_tasks(tasks)
        with seeded(seed):
            net = ConditionalNeuralProcess(tasks.x_dim, tasks.y_dim, self.hidden, self.depth, self.min_std)
        net = self.net = net.to(device=device, dtype=tasks.dtype)
        self._dims = (tasks.x_dim, tasks.y_dim)
        ref = next(net.parameters())
        context, targets = clean(tasks.support.to(ref.device)), clean(tasks.all_points().to(ref.device))

        def loss(idx: Tensor, gen: torch.Generator) -> Tensor:
            keep = random_context(context.mask[idx.to(ref.device)], gen)
            c, d = context[idx], targets[idx]
            mean, std = net.decode(net.encode(c.x, c.y, keep), d.x)
            nll = (0.5 * ((d.y - mean) / std).pow(2) + std.log() + _HALF_LOG_2PI).sum(-1)
            return masked_mean(nll, d.mask).mean()

        meta_train(list(net.parameters()), loss, len(tasks), steps, batch_tasks, lr, seed, progress,
                   "BlackBox.meta_fit", self.history["loss"])

    def adapt(self, support: TaskData | TaskSet) -> Adapted:
        """Encode each task's support once; predictions decode at any inputs.

        Args:
            support: ``T`` tasks' support sets (``x``: ``T x N x x_dim``, masked). An empty set is allowed (``r = 0``)
                but never seen in meta-training, whose contexts have at least one point: on sinusoids its query NLL
                measured 5-12 nats, worse than the best constant Gaussian's 2.15.

        Returns:
            An :class:`Adapted` whose ``predict(x)`` (``x``: ``T x M x x_dim``) gives ``mean`` and ``std``, each
            ``T x M x y_dim``; ``extras["representation"]``: ``T x hidden``.
        """
        start = time.perf_counter()
        support, net = self._fitted_support(support), self.net
        with torch.no_grad():
            r = net.encode(support.x, support.y, support.mask)
        return Adapted(support, lambda x: Prediction(*net.decode(r, x)), time.perf_counter() - start,
                       {"representation": r})


def random_context(mask: Tensor, gen: torch.Generator) -> Tensor:
    """Keep in each task a uniformly random subset of its observed points, of a size uniform on 1..(its count).

    Args:
        mask: ``T x N`` bool, ``False`` on padding.
        gen: the CPU generator the draws come from (so that a seed fixes them on any device).

    Returns:
        ``T x N`` bool, a subset of ``mask`` (empty for a task with no points).

    >>> keep = random_context(torch.tensor([[True, True, True, False]]), torch.Generator().manual_seed(0))
    >>> bool(keep[0, 3]), 1 <= int(keep.sum()) <= 3
    (False, True)
    """
    keys = torch.rand(mask.shape, generator=gen).to(mask.device).masked_fill(~mask, 2.0)
    ranks = keys.argsort(1).argsort(1)
    counts = mask.sum(1)
    sizes = (torch.rand(counts.shape, generator=gen).to(mask.device) * counts).long() + 1
    return (ranks < sizes[:, None]) & mask
