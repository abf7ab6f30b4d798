r"""Synthetic task families: the standard few-shot regression benchmarks, with known task parameters.

Every family draws a whole batch of tasks with batched tensor operations (no loop over tasks) from a
local ``torch.Generator`` seeded by ``seed``, so the same call always returns the same tasks and the
global random state is left alone. The true per-task parameters are stored in ``TaskSet.params``.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor

from bayesmeta.tasks.taskset import TaskSet

__all__ = ["Sinusoid", "LinearGaussian", "GPFunctions"]


# ---------------------------------------------------------------------- shared checks and draws
def _check_dtype(dtype: Any) -> torch.dtype:
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype: expected a floating torch.dtype such as torch.float32, got {dtype!r}")
    return dtype


def _check_range(value: Any, name: str, positive: bool = False) -> tuple[float, float]:
    """A ``(low, high)`` pair of finite floats with ``low <= high`` (and ``low > 0`` if ``positive``)."""
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a (low, high) pair of numbers, got {value!r}") from None
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise ValueError(f"{name}: expected finite bounds with low <= high, got ({low}, {high})")
    if positive and low <= 0:
        raise ValueError(f"{name}: expected positive bounds, got ({low}, {high})")
    return low, high


def _check_nonnegative(value: Any, name: str) -> float:
    value = float(value)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name}: expected a finite number >= 0, got {value}")
    return value


def _check_sample_args(num_tasks: Any, support: Any, query: Any, seed: Any) -> None:
    for name, value in (("num_tasks", num_tasks), ("support", support), ("query", query), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
    if num_tasks < 1:
        raise ValueError(f"num_tasks: expected at least 1 task, got {num_tasks}")
    if support < 0:
        raise ValueError(f"support: expected a non-negative number of support points, got {support}")
    if query < 0:
        raise ValueError(f"query: expected a non-negative number of query points, got {query}")
    if support + query < 1:
        raise ValueError("support, query: expected at least one point per task in total, got support=0, query=0")


def _uniform(g: torch.Generator, shape: Sequence[int], bounds: tuple[float, float]) -> Tensor:
    """float64 draws from ``U[low, high]`` of the given shape."""
    low, high = bounds
    return low + (high - low) * torch.rand(*shape, generator=g, dtype=torch.float64)


def _split(x: Tensor, y: Tensor, support: int, params: dict[str, Tensor]) -> TaskSet:
    """A TaskSet with the first ``support`` points of each task as support, the rest as query."""
    return TaskSet.from_arrays(x[:, :support], y[:, :support], x[:, support:], y[:, support:], params=params)


# ---------------------------------------------------------------------- families
class Sinusoid:
    r"""Sine waves of random amplitude and phase: the regression benchmark of MAML.

    For task :math:`i` and point :math:`j`:

    .. math::

        A_i \sim \mathcal{U}[a_0, a_1], \qquad p_i \sim \mathcal{U}[p_0, p_1], \qquad
        x_{ij} \sim \mathcal{U}[x_0, x_1],

        y_{ij} = A_i \sin(x_{ij} - p_i) + \sigma\,\varepsilon_{ij}, \qquad
        \varepsilon_{ij} \sim \mathcal{N}(0, 1).

    Reference: C. Finn, P. Abbeel, S. Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep
    Networks", ICML 2017 (defaults: :math:`A \in [0.1, 5]`, :math:`p \in [0, \pi]`, :math:`x \in [-5, 5]`,
    no noise).

    Args:
        amplitude: ``(a0, a1)`` range of the amplitude.
        phase: ``(p0, p1)`` range of the phase.
        x_range: ``(x0, x1)`` range of the inputs.
        noise_std: :math:`\sigma`, the standard deviation of the observation noise.
        dtype: floating dtype of the sampled tensors.

    >>> tasks = Sinusoid().sample(num_tasks=3, support=5, query=10, seed=0)
    >>> tuple(tasks.support.x.shape), tuple(tasks.query.y.shape), sorted(tasks.params)
    ((3, 5, 1), (3, 10, 1), ['amplitude', 'phase'])
    """

    def __init__(
        self,
        amplitude: tuple[float, float] = (0.1, 5.0),
        phase: tuple[float, float] = (0.0, math.pi),
        x_range: tuple[float, float] = (-5.0, 5.0),
        noise_std: float = 0.0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.amplitude = _check_range(amplitude, "amplitude")
        self.phase = _check_range(phase, "phase")
        self.x_range = _check_range(x_range, "x_range")
        self.noise_std = _check_nonnegative(noise_std, "noise_std")
        self.dtype = _check_dtype(dtype)

    def sample(self, num_tasks: int, support: int, query: int, seed: int) -> TaskSet:
        """``num_tasks`` tasks with ``support`` and ``query`` points each (``x``, ``y``: ``... x 1``).

        ``params``: ``"amplitude"`` and ``"phase"``, each of shape ``num_tasks``.
        """
        _check_sample_args(num_tasks, support, query, seed)
        g = torch.Generator().manual_seed(seed)
        n = support + query
        params = {
            "amplitude": _uniform(g, (num_tasks,), self.amplitude).to(self.dtype),
            "phase": _uniform(g, (num_tasks,), self.phase).to(self.dtype),
        }
        x = _uniform(g, (num_tasks, n, 1), self.x_range).to(self.dtype)
        y = self.function(x, params)
        if self.noise_std > 0:
            y = y + self.noise_std * torch.randn(num_tasks, n, 1, generator=g, dtype=torch.float64).to(self.dtype)
        return _split(x, y, support, params)

    @staticmethod
    def function(x: Tensor, params: dict[str, Tensor]) -> Tensor:
        r"""The noiseless curves :math:`A_i \sin(x - p_i)`.

        Args:
            x: ``num_tasks x num_points x 1`` inputs.
            params: ``"amplitude"`` and ``"phase"``, each of shape ``num_tasks``.

        Returns:
            ``num_tasks x num_points x 1``.

        >>> Sinusoid.function(torch.zeros(1, 2, 1), {"amplitude": torch.tensor([2.0]), "phase": torch.tensor([0.0])})
        tensor([[[0.],
                 [0.]]])
        """
        amplitude, phase = params["amplitude"][:, None, None], params["phase"][:, None, None]
        return amplitude * torch.sin(x - phase)


class LinearGaussian:
    r"""Hierarchical Bayesian linear regression: task weights drawn around shared prior means.

    With :math:`d` = ``x_dim`` inputs, :math:`D = d + 1` weights when ``bias`` (the intercept last,
    :math:`D = d` without) and :math:`\theta = (\mu, \tau, \sigma)`:

    .. math::

        w_i \sim \mathcal{N}\big(\mu, \operatorname{diag}(\tau^2)\big), \qquad
        x_{ij} \sim \mathcal{N}(0, I_d),

        y_{ij} = [x_{ij}, 1]^\top w_i + \sigma\,\varepsilon_{ij}, \qquad \varepsilon_{ij} \sim \mathcal{N}(0, 1).

    Because the posterior over :math:`w_i` given :math:`\theta` is Gaussian in closed form, this family is
    the exact reference for testing priors learned across tasks. Reference: D. V. Lindley, A. F. M. Smith,
    "Bayes Estimates for the Linear Model", JRSS B 34(1), 1972; A. Gelman et al., *Bayesian Data
    Analysis*, 3rd ed., 2013, ch. 15.

    Args:
        x_dim: number of input features.
        bias: append a constant feature 1, whose weight (the intercept) is last in :math:`w_i`.
        prior_loc: :math:`\mu`, shape ``D``; drawn :math:`\mathcal{N}(0, 1)` from ``seed`` when ``None``.
        prior_scale: :math:`\tau > 0`, shape ``D``; drawn :math:`\mathcal{U}[0.5, 1.5]` from ``seed`` when ``None``.
        noise_scale: :math:`\sigma > 0`.
        seed: seeds the draws of ``prior_loc`` and ``prior_scale`` (not the tasks: see :meth:`sample`).
        dtype: floating dtype of ``theta`` and the sampled tensors.

    Attributes:
        theta: ``{"prior_loc": D, "prior_scale": D, "noise_scale": 0-dim}`` tensors, named as in
            ``HierarchicalLinearRegression``.
        phi_dim: ``D``, the number of weights per task.

    >>> family = LinearGaussian(x_dim=2, seed=0)
    >>> tasks = family.sample(num_tasks=4, support=3, query=6, seed=1)
    >>> family.phi_dim, tuple(tasks.params["weights"].shape), tuple(tasks.query.x.shape)
    (3, (4, 3), (4, 6, 2))
    """

    def __init__(
        self,
        x_dim: int = 3,
        bias: bool = True,
        prior_loc: Any = None,
        prior_scale: Any = None,
        noise_scale: float = 0.5,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if isinstance(x_dim, bool) or not isinstance(x_dim, int) or x_dim < 1:
            raise ValueError(f"x_dim: expected a positive int, got {x_dim!r}")
        self.dtype = _check_dtype(dtype)
        self.x_dim, self.bias = x_dim, bool(bias)
        self.phi_dim = x_dim + int(self.bias)
        g = torch.Generator().manual_seed(seed)
        # Both are always drawn, so that prior_scale does not depend on whether prior_loc was given.
        default_loc = torch.randn(self.phi_dim, generator=g, dtype=torch.float64)
        default_scale = 0.5 + torch.rand(self.phi_dim, generator=g, dtype=torch.float64)
        loc = self._vector(prior_loc, default_loc, "prior_loc")
        scale = self._vector(prior_scale, default_scale, "prior_scale")
        if not (scale > 0).all():
            raise ValueError(f"prior_scale: expected every entry > 0, got {scale.tolist()}")
        noise = float(noise_scale)
        if not (math.isfinite(noise) and noise > 0):
            raise ValueError(f"noise_scale: expected a finite number > 0, got {noise}")
        self.theta: dict[str, Tensor] = {
            "prior_loc": loc,
            "prior_scale": scale,
            "noise_scale": torch.tensor(noise, dtype=self.dtype),
        }

    def _vector(self, value: Any, default: Tensor, name: str) -> Tensor:
        if value is None:
            return default.to(self.dtype)
        value = torch.as_tensor(value, dtype=self.dtype).clone()
        if tuple(value.shape) != (self.phi_dim,):
            raise ValueError(
                f"{name}: expected shape ({self.phi_dim},) (x_dim={self.x_dim}"
                f"{' + 1 intercept' if self.bias else ''}), got shape {tuple(value.shape)}"
            )
        if not torch.isfinite(value).all():
            raise ValueError(f"{name}: expected finite values, got {value.tolist()}")
        return value

    def sample(self, num_tasks: int, support: int, query: int, seed: int) -> TaskSet:
        """``num_tasks`` tasks with ``support`` and ``query`` points (``x``: ``... x x_dim``, ``y``: ``... x 1``).

        ``params``: ``"weights"`` of shape ``num_tasks x phi_dim``.
        """
        _check_sample_args(num_tasks, support, query, seed)
        g = torch.Generator().manual_seed(seed)
        n = support + query
        eps_w = torch.randn(num_tasks, self.phi_dim, generator=g, dtype=torch.float64).to(self.dtype)
        weights = self.theta["prior_loc"] + self.theta["prior_scale"] * eps_w
        x = torch.randn(num_tasks, n, self.x_dim, generator=g, dtype=torch.float64).to(self.dtype)
        noise = torch.randn(num_tasks, n, 1, generator=g, dtype=torch.float64).to(self.dtype)
        y = self.function(x, {"weights": weights}) + self.theta["noise_scale"] * noise
        return _split(x, y, support, {"weights": weights})

    def features(self, x: Tensor) -> Tensor:
        """The design matrix: ``num_tasks x num_points x x_dim`` → ``num_tasks x num_points x phi_dim``.

        >>> LinearGaussian(x_dim=1).features(torch.full((1, 2, 1), 3.0)).tolist()
        [[[3.0, 1.0], [3.0, 1.0]]]
        """
        if not self.bias:
            return x
        return torch.cat([x, torch.ones(*x.shape[:-1], 1, dtype=x.dtype, device=x.device)], -1)

    def function(self, x: Tensor, params: dict[str, Tensor]) -> Tensor:
        r"""The noiseless means :math:`[x, 1]^\top w_i`.

        Args:
            x: ``num_tasks x num_points x x_dim`` inputs.
            params: ``"weights"`` of shape ``num_tasks x phi_dim``.

        Returns:
            ``num_tasks x num_points x 1``.

        >>> LinearGaussian(x_dim=1).function(torch.ones(1, 1, 1), {"weights": torch.tensor([[2.0, 0.5]])})
        tensor([[[2.5000]]])
        """
        return self.features(x) @ params["weights"][..., None]


class GPFunctions:
    r"""Functions drawn from Gaussian processes with a random RBF kernel: the neural-process benchmark.

    For task :math:`i`, with its :math:`N = N_s + N_q` inputs drawn jointly:

    .. math::

        \ell_i \sim \mathcal{U}[\ell_0, \ell_1], \qquad s_i \sim \mathcal{U}[s_0, s_1], \qquad
        x_{ij} \sim \mathcal{U}[x_0, x_1],

        y_{i,1:N} \sim \mathcal{N}\big(0, K_i + \sigma^2 I\big), \qquad
        (K_i)_{ab} = s_i^2 \exp\!\Big(-\frac{(x_{ia} - x_{ib})^2}{2\ell_i^2}\Big).

    The first ``support`` points of each task form the support set, the rest the query set. The
    covariance is factorised in float64 with one batched Cholesky (plus a jitter of ``1e-6`` on the
    diagonal) and the result cast to ``dtype``.

    References: M. Garnelo et al., "Conditional Neural Processes", ICML 2018; H. Kim et al., "Attentive
    Neural Processes", ICLR 2019.

    Args:
        lengthscale: ``(l0, l1)`` range of the RBF lengthscale (positive).
        signal_scale: ``(s0, s1)`` range of the signal standard deviation.
        noise_std: :math:`\sigma`, the observation-noise standard deviation.
        x_range: ``(x0, x1)`` range of the inputs.
        dtype: floating dtype of the sampled tensors.

    >>> tasks = GPFunctions().sample(num_tasks=2, support=4, query=6, seed=0)
    >>> tuple(tasks.support.y.shape), tuple(tasks.query.x.shape), sorted(tasks.params)
    ((2, 4, 1), (2, 6, 1), ['lengthscale', 'signal_scale'])
    """

    jitter: float = 1e-6

    def __init__(
        self,
        lengthscale: tuple[float, float] = (0.1, 0.6),
        signal_scale: tuple[float, float] = (0.1, 1.0),
        noise_std: float = 0.02,
        x_range: tuple[float, float] = (-2.0, 2.0),
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.lengthscale = _check_range(lengthscale, "lengthscale", positive=True)
        self.signal_scale = _check_range(signal_scale, "signal_scale")
        if self.signal_scale[0] < 0:
            raise ValueError(f"signal_scale: expected bounds >= 0, got {self.signal_scale}")
        self.noise_std = _check_nonnegative(noise_std, "noise_std")
        self.x_range = _check_range(x_range, "x_range")
        self.dtype = _check_dtype(dtype)

    def sample(self, num_tasks: int, support: int, query: int, seed: int) -> TaskSet:
        """``num_tasks`` tasks with ``support`` and ``query`` points each (``x``, ``y``: ``... x 1``).

        ``params``: ``"lengthscale"`` and ``"signal_scale"``, each of shape ``num_tasks``.
        """
        _check_sample_args(num_tasks, support, query, seed)
        g = torch.Generator().manual_seed(seed)
        n = support + query
        params = {
            "lengthscale": _uniform(g, (num_tasks,), self.lengthscale),
            "signal_scale": _uniform(g, (num_tasks,), self.signal_scale),
        }
        x = _uniform(g, (num_tasks, n, 1), self.x_range)
        cov = self.covariance(x, x, params)
        cov = cov + (self.noise_std**2 + self.jitter) * torch.eye(n, dtype=torch.float64)
        z = torch.randn(num_tasks, n, 1, generator=g, dtype=torch.float64)
        y = torch.linalg.cholesky(cov) @ z
        params = {k: v.to(self.dtype) for k, v in params.items()}
        return _split(x.to(self.dtype), y.to(self.dtype), support, params)

    @staticmethod
    def covariance(x1: Tensor, x2: Tensor, params: dict[str, Tensor]) -> Tensor:
        r"""The noiseless RBF kernel matrices :math:`K_i(x_1, x_2)`.

        Args:
            x1: ``num_tasks x n1 x 1`` inputs.
            x2: ``num_tasks x n2 x 1`` inputs.
            params: ``"lengthscale"`` and ``"signal_scale"``, each of shape ``num_tasks``.

        Returns:
            ``num_tasks x n1 x n2``.

        >>> p = {"lengthscale": torch.tensor([1.0]), "signal_scale": torch.tensor([2.0])}
        >>> GPFunctions.covariance(torch.zeros(1, 1, 1), torch.zeros(1, 2, 1), p)
        tensor([[[4., 4.]]])
        """
        ell = params["lengthscale"].to(x1.dtype)[:, None, None]
        scale = params["signal_scale"].to(x1.dtype)[:, None, None]
        sq_dist = (x1 - x2.transpose(-1, -2)) ** 2
        return scale**2 * torch.exp(-0.5 * sq_dist / ell**2)
