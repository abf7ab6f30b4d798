r"""Per-task scores of predictions on query sets, vectorized over tasks and masked for ragged tasks.

Every metric takes ``T x N x y_dim`` tensors (tasks, points, outputs) and a ``T x N`` boolean ``mask``
(``False`` marks padding; ``None`` means every point is observed) and returns one score per task, a
``T`` tensor, so that a caller can average over tasks and attach a standard error with
:func:`summarize`. Padded entries never reach the result, whatever they hold (NaN included).

Each task needs at least one observed point: a task without any has no score, and asking for one is
an error rather than a silent NaN.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

__all__ = ["mse", "gaussian_nll", "interval_coverage", "summarize"]

_LOG_2PI = math.log(2.0 * math.pi)


# ---------------------------------------------------------------------- validation
def _as_float_tensor(value: Any, name: str) -> Tensor:
    if not isinstance(value, Tensor):
        try:
            value = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as error:
            raise TypeError(f"{name}: expected a tensor, got {type(value).__name__} ({error})") from None
    if not value.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got {value.dtype}; convert with .float()")
    return value


def _check_targets(y: Any) -> Tensor:
    y = _as_float_tensor(y, "y")
    if y.dim() != 3:
        raise ValueError(
            f"y: expected shape num_tasks x num_points x y_dim (3 dims), got shape {tuple(y.shape)}"
            + ("; add a trailing axis, y[..., None]" if y.dim() == 2 else "")
        )
    return y


def _check_like(value: Any, y: Tensor, name: str) -> Tensor:
    """A floating tensor with exactly the shape of ``y``, on its device and in its dtype."""
    value = _as_float_tensor(value, name)
    if tuple(value.shape) != tuple(y.shape):
        raise ValueError(
            f"{name}: expected shape {tuple(y.shape)} (num_tasks x num_points x y_dim, as y), "
            f"got shape {tuple(value.shape)}"
        )
    return value.to(device=y.device, dtype=y.dtype)


def _check_mask(mask: Any, y: Tensor) -> Tensor:
    """A ``T x N`` bool mask (all True when ``None``) in which every task observes at least one point."""
    expected = tuple(y.shape[:2])
    if mask is None:
        mask = torch.ones(expected, dtype=torch.bool, device=y.device)
    if not isinstance(mask, Tensor):
        mask = torch.as_tensor(mask)
    if mask.dtype != torch.bool or tuple(mask.shape) != expected:
        raise ValueError(
            f"mask: expected a bool tensor of shape {expected} (num_tasks x num_points), "
            f"got {mask.dtype} of shape {tuple(mask.shape)}"
        )
    mask = mask.to(y.device)
    empty = ~mask.any(-1)
    if empty.any():
        first = int(empty.nonzero()[0])
        raise ValueError(
            f"mask: expected at least one observed point per task, got {int(empty.sum())} task(s) with none "
            f"(first: task {first}); drop those tasks before scoring"
        )
    return mask


def _masked_point_mean(per_point: Tensor, mask: Tensor) -> Tensor:
    """``T x N`` values -> ``T`` means over the observed points (padding replaced by 0 before summing)."""
    zero = torch.zeros((), dtype=per_point.dtype, device=per_point.device)
    total = torch.where(mask, per_point, zero).sum(-1)
    return total / mask.sum(-1).to(per_point.dtype)


def _mask_values(values: Tensor, mask: Tensor) -> Tensor:
    """Replace padded entries of a ``T x N x y_dim`` tensor by 0, so that NaN/Inf padding cannot leak."""
    return torch.where(mask[..., None], values, torch.zeros((), dtype=values.dtype, device=values.device))


# ---------------------------------------------------------------------- metrics
def mse(pred_mean: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
    r"""Mean squared error of each task over its observed query points.

    .. math::

        \mathrm{MSE}_i = \frac{1}{|O_i|\, d_y} \sum_{j \in O_i} \lVert \hat y_{ij} - y_{ij} \rVert^2,

    where :math:`O_i` is the set of observed points of task :math:`i` and :math:`d_y` = ``y_dim``.

    Args:
        pred_mean: ``T x N x y_dim`` point predictions.
        y: ``T x N x y_dim`` targets.
        mask: ``T x N`` bool, ``False`` on padding; ``None`` means every point is observed.

    Returns:
        ``T`` per-task mean squared errors.

    >>> y = torch.tensor([[[1.0], [2.0], [99.0]]])
    >>> mse(torch.zeros(1, 3, 1), y, mask=torch.tensor([[True, True, False]]))
    tensor([2.5000])
    """
    y = _check_targets(y)
    pred_mean = _check_like(pred_mean, y, "pred_mean")
    mask = _check_mask(mask, y)
    squared = _mask_values(pred_mean - y, mask).pow(2).mean(-1)
    return _masked_point_mean(squared, mask)


def gaussian_nll(pred_mean: Tensor, pred_std: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
    r"""Negative log density of the targets under independent Gaussians, averaged over observed points.

    .. math::

        \mathrm{NLL}_i = -\frac{1}{|O_i|} \sum_{j \in O_i} \sum_{k=1}^{d_y}
        \log \mathcal N\big(y_{ijk};\ \hat\mu_{ijk},\ \hat\sigma_{ijk}^2\big),

    in nats per point (the ``y_dim`` outputs of one point are summed: a point's joint log density).

    Args:
        pred_mean: ``T x N x y_dim`` predictive means.
        pred_std: ``T x N x y_dim`` predictive standard deviations, ``> 0`` at observed points.
        y: ``T x N x y_dim`` targets.
        mask: ``T x N`` bool, ``False`` on padding; ``None`` means every point is observed.

    Returns:
        ``T`` per-task negative log likelihoods.

    >>> nll = gaussian_nll(torch.zeros(1, 1, 1), torch.ones(1, 1, 1), torch.zeros(1, 1, 1))
    >>> round(nll.item(), 4)  # 0.5 * log(2 pi)
    0.9189
    """
    y = _check_targets(y)
    pred_mean = _check_like(pred_mean, y, "pred_mean")
    pred_std = _check_like(pred_std, y, "pred_std")
    mask = _check_mask(mask, y)
    bad = (~(pred_std > 0)).any(-1) & mask
    if bad.any():
        task, point = (int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"pred_std: expected > 0 at every observed point, got {int(bad.sum())} point(s) with std <= 0 or NaN "
            f"(first at task {task}, point {point}); a degenerate predictive has no density"
        )
    one = torch.ones((), dtype=y.dtype, device=y.device)
    std = torch.where(mask[..., None], pred_std, one)
    z = _mask_values((y - pred_mean), mask) / std
    per_point = (0.5 * z.pow(2) + std.log() + 0.5 * _LOG_2PI).sum(-1)
    return _masked_point_mean(per_point, mask)


def interval_coverage(lower: Tensor, upper: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
    r"""Fraction of observed targets inside their predictive interval ``[lower, upper]`` (ends included).

    .. math::

        \mathrm{cov}_i = \frac{1}{|O_i|\, d_y} \sum_{j \in O_i} \sum_{k=1}^{d_y}
        \mathbf 1\big[l_{ijk} \le y_{ijk} \le u_{ijk}\big].

    A calibrated central 90% interval covers about 0.9 of the points.

    Args:
        lower: ``T x N x y_dim`` lower ends (e.g. the first output of ``Prediction.interval(0.9)``).
        upper: ``T x N x y_dim`` upper ends.
        y: ``T x N x y_dim`` targets.
        mask: ``T x N`` bool, ``False`` on padding; ``None`` means every point is observed.

    Returns:
        ``T`` per-task coverages in ``[0, 1]``.

    >>> y = torch.tensor([[[0.0], [3.0]], [[1.0], [-1.0]]])
    >>> interval_coverage(-torch.ones(2, 2, 1), torch.ones(2, 2, 1), y)
    tensor([0.5000, 1.0000])
    """
    y = _check_targets(y)
    lower = _check_like(lower, y, "lower")
    upper = _check_like(upper, y, "upper")
    mask = _check_mask(mask, y)
    inside = ((lower <= y) & (y <= upper)).to(y.dtype).mean(-1)
    return _masked_point_mean(inside, mask)


def summarize(values: Tensor) -> tuple[float, float]:
    r"""Mean over tasks and its standard error, :math:`s / \sqrt{T}` with the sample standard deviation
    :math:`s` (``T - 1`` in the denominator).

    Args:
        values: ``T`` per-task scores (the output of a metric), finite.

    Returns:
        ``(mean, standard_error)`` as floats; the standard error is NaN for a single task (undefined).

    >>> summarize(torch.tensor([1.0, 2.0, 3.0, 4.0]))  # s = 1.291, se = s / 2
    (2.5, 0.6454972243679028)
    """
    values = _as_float_tensor(values, "values")
    if values.dim() != 1 or values.numel() == 0:
        raise ValueError(f"values: expected a non-empty 1-D tensor of per-task scores, got shape {tuple(values.shape)}")
    if not torch.isfinite(values).all():
        bad = int((~torch.isfinite(values)).sum())
        raise ValueError(f"values: expected finite scores, got {bad} NaN/Inf of {values.numel()}")
    values = values.detach().to(device="cpu", dtype=torch.float64)
    count = values.numel()
    mean = values.mean().item()
    if count == 1:
        return mean, math.nan
    return mean, values.std(unbiased=True).item() / math.sqrt(count)
