r"""Per-task scores of predictions on query sets, vectorized over tasks and masked for ragged tasks.

Every regression metric takes ``T x N x y_dim`` tensors (tasks, points, outputs), every classification
metric ``T x N x C`` class probabilities and ``T x N`` integer labels; all take a ``T x N`` boolean ``mask``
(``False`` marks padding; ``None`` means every point is observed) and return one score per task, a
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

__all__ = ["mse", "gaussian_nll", "interval_coverage", "accuracy", "categorical_nll", "expected_calibration_error",
           "summarize"]

_LOG_2PI = math.log(2.0 * math.pi)
_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)
#: Tolerance on ``|sum(probs) - 1|`` at each observed point.
_SUM_TOL = 1e-3


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


def _check_classification(probs: Any, labels: Any, mask: Any) -> tuple[Tensor, Tensor, Tensor]:
    """Validated ``T x N x C`` probabilities, ``T x N`` long labels and mask; padding set to 0 in both."""
    probs = _as_float_tensor(probs, "probs")
    if probs.dim() != 3 or probs.shape[-1] == 0:
        raise ValueError(
            f"probs: expected shape num_tasks x num_points x num_classes (3 dims, num_classes >= 1), "
            f"got shape {tuple(probs.shape)}"
        )
    labels = labels if isinstance(labels, Tensor) else torch.as_tensor(labels)
    if labels.dtype not in _INT_DTYPES:
        raise TypeError(
            f"labels: expected an integer tensor of class indices, got {labels.dtype}; convert with .long()"
        )
    expected = tuple(probs.shape[:2])
    if tuple(labels.shape) != expected:
        raise ValueError(
            f"labels: expected shape {expected} (num_tasks x num_points, as probs), got shape {tuple(labels.shape)}"
            + ("; drop the trailing axis, labels[..., 0]" if tuple(labels.shape) == expected + (1,) else "")
        )
    mask = _check_mask(mask, probs)
    labels = labels.to(device=probs.device, dtype=torch.long)
    valid = ((probs >= 0) & (probs <= 1)).all(-1) & ((probs.sum(-1) - 1).abs() <= _SUM_TOL)  # False on NaN
    bad = ~valid & mask
    if bad.any():
        task, point = (int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"probs: expected probabilities in [0, 1] summing to 1 (within {_SUM_TOL}) at every observed point, "
            f"got {int(bad.sum())} point(s) that are not (first at task {task}, point {point}: "
            f"{probs[task, point].tolist()}); pass softmax(logits, -1), not logits"
        )
    num_classes = probs.shape[-1]
    bad = ((labels < 0) | (labels >= num_classes)) & mask
    if bad.any():
        task, point = (int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"labels: expected class indices in 0..{num_classes - 1} (probs has {num_classes} classes) at every "
            f"observed point, got {int(bad.sum())} outside (first at task {task}, point {point}: "
            f"{int(labels[task, point])})"
        )
    return _mask_values(probs, mask), torch.where(mask, labels, torch.zeros_like(labels)), mask


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


def accuracy(probs: Tensor, labels: Tensor, mask: Tensor | None = None) -> Tensor:
    r"""Fraction of observed points whose most probable class is the label.

    .. math::

        \mathrm{acc}_i = \frac{1}{|O_i|} \sum_{j \in O_i} \mathbf 1\big[\arg\max_c p_{ijc} = y_{ij}\big]

    (ties go to the lowest class index).

    Args:
        probs: ``T x N x C`` predicted class probabilities (each observed row in ``[0, 1]``, summing to 1).
        labels: ``T x N`` integer class indices in ``0..C-1``.
        mask: ``T x N`` bool, ``False`` on padding; ``None`` means every point is observed.

    Returns:
        ``T`` per-task accuracies in ``[0, 1]``.

    >>> probs = torch.tensor([[[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]]])
    >>> accuracy(probs, torch.tensor([[0, 1, 1]]))
    tensor([0.6667])
    """
    probs, labels, mask = _check_classification(probs, labels, mask)
    correct = (probs.argmax(-1) == labels).to(probs.dtype)
    return _masked_point_mean(correct, mask)


def categorical_nll(probs: Tensor, labels: Tensor, mask: Tensor | None = None) -> Tensor:
    r"""Negative log probability of the labels, averaged over observed points, in nats.

    .. math::

        \mathrm{NLL}_i = -\frac{1}{|O_i|} \sum_{j \in O_i} \log \max\big(p_{ij y_{ij}},\ p_{\min}\big),

    with :math:`p_{\min}` the smallest positive normal number of the dtype (``torch.finfo(dtype).tiny``): a
    zero probability on the true class scores about 87 nats in float32 (708 in float64) instead of ``inf``.

    Args:
        probs: ``T x N x C`` predicted class probabilities (each observed row in ``[0, 1]``, summing to 1).
        labels: ``T x N`` integer class indices in ``0..C-1``.
        mask: ``T x N`` bool, ``False`` on padding; ``None`` means every point is observed.

    Returns:
        ``T`` per-task negative log likelihoods.

    >>> nll = categorical_nll(torch.tensor([[[0.5, 0.5], [0.25, 0.75]]]), torch.tensor([[0, 1]]))
    >>> round(nll.item(), 4)  # -(log 0.5 + log 0.75) / 2
    0.4904
    """
    probs, labels, mask = _check_classification(probs, labels, mask)
    true_prob = probs.gather(-1, labels[..., None])[..., 0]
    per_point = -true_prob.clamp_min(torch.finfo(probs.dtype).tiny).log()
    return _masked_point_mean(per_point, mask)


def expected_calibration_error(probs: Tensor, labels: Tensor, mask: Tensor | None = None, bins: int = 15) -> Tensor:
    r"""Top-label expected calibration error with equal-width confidence bins (Guo et al., 2017,
    "On Calibration of Modern Neural Networks").

    With confidence :math:`c_{ij} = \max_c p_{ijc}`, correctness :math:`a_{ij} = \mathbf 1[\arg\max_c p_{ijc}
    = y_{ij}]` and :math:`B_{im}` the observed points of task :math:`i` with
    :math:`c_{ij} \in \big(\tfrac{m-1}{M}, \tfrac{m}{M}\big]`,

    .. math::

        \mathrm{ECE}_i = \sum_{m=1}^{M} \frac{|B_{im}|}{|O_i|}
        \Big| \mathrm{acc}(B_{im}) - \mathrm{conf}(B_{im}) \Big|
        = \frac{1}{|O_i|} \sum_{m=1}^{M} \Big| \sum_{j \in B_{im}} (a_{ij} - c_{ij}) \Big|.

    0 for a calibrated predictor (up to binning); the gap between confidence and accuracy otherwise.

    Args:
        probs: ``T x N x C`` predicted class probabilities (each observed row in ``[0, 1]``, summing to 1).
        labels: ``T x N`` integer class indices in ``0..C-1``.
        mask: ``T x N`` bool, ``False`` on padding; ``None`` means every point is observed.
        bins: number :math:`M` of equal-width bins on ``[0, 1]``.

    Returns:
        ``T`` per-task calibration errors in ``[0, 1]``.

    >>> probs = torch.tensor([[[0.9, 0.1], [0.9, 0.1]]])  # 90% confident, right half the time
    >>> expected_calibration_error(probs, torch.tensor([[0, 1]]))
    tensor([0.4000])
    """
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins: expected a positive int, got {bins!r}")
    probs, labels, mask = _check_classification(probs, labels, mask)
    confidence, predicted = probs.max(-1)
    gap = torch.where(mask, (predicted == labels).to(probs.dtype) - confidence, torch.zeros_like(confidence))
    index = (confidence * bins).ceil().long().sub(1).clamp(0, bins - 1)  # bin m-1 holds ((m-1)/M, m/M]
    per_bin = torch.zeros(*gap.shape[:-1], bins, dtype=gap.dtype, device=gap.device).scatter_add_(-1, index, gap)
    return per_bin.abs().sum(-1) / mask.sum(-1).to(probs.dtype)


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
