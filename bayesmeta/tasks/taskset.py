r"""Batched collections of few-shot tasks.

A :class:`TaskSet` holds ``num_tasks`` tasks on one device, each with a *support* set (the few labelled
points a learner adapts on) and a *query* set (the points it is scored on). Tasks of different sizes
are padded to a rectangle and carry boolean masks, so every operation is one batched tensor op:
tasks first, then points, then features.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["TaskData", "TaskSet"]

Index = int | slice | Sequence[int] | Tensor | np.ndarray


def _as_tensor(value: Any, name: str) -> Tensor:
    if isinstance(value, Tensor):
        return value
    try:
        return torch.as_tensor(np.asarray(value))
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name}: expected a tensor or array, got {type(value).__name__} ({error})") from None


def _check_finite(t: Tensor, mask: Tensor, name: str) -> None:
    if not t.is_floating_point():
        return
    bad = ~torch.isfinite(t)
    if t.dim() == 3:
        bad = bad.any(-1)
    bad = bad & mask
    if bad.any():
        task, point = (int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"{name}: expected finite values, got {int(bad.sum())} NaN/Inf at observed points "
            f"(first at task {task}, point {point}); drop those points or mark them False in the mask"
        )


@dataclass(frozen=True)
class TaskData:
    r"""One side (support or query) of a batch of tasks.

    Attributes:
        x: ``num_tasks x num_points x x_dim`` inputs (floating point).
        y: ``num_tasks x num_points x y_dim`` regression targets, or ``num_tasks x num_points`` integer
            class labels.
        mask: ``num_tasks x num_points`` boolean; ``False`` marks padding. Padded entries are zero.

    >>> d = TaskData.checked(torch.zeros(2, 3, 1), torch.ones(2, 3, 1))
    >>> d.num_tasks, d.num_points, d.x_dim, d.y_dim, d.counts.tolist()
    (2, 3, 1, 1, [3, 3])
    """

    x: Tensor
    y: Tensor
    mask: Tensor

    @classmethod
    def checked(cls, x: Any, y: Any, mask: Any = None, *, name: str = "support") -> TaskData:
        """Validate and build; ``name`` prefixes error messages (``support_x``, ``query_y``, ...)."""
        x, y = _as_tensor(x, f"{name}_x"), _as_tensor(y, f"{name}_y")
        if x.dim() != 3:
            raise ValueError(
                f"{name}_x: expected shape num_tasks x num_points x x_dim (3 dims), got shape {tuple(x.shape)}"
                + ("; for 1-D inputs add a trailing axis, x[..., None]" if x.dim() == 2 else "")
            )
        if not x.is_floating_point():
            raise TypeError(f"{name}_x: expected a floating-point tensor, got {x.dtype}; convert with .float()")
        if y.is_floating_point():
            if y.dim() != 3:
                raise ValueError(
                    f"{name}_y: expected shape num_tasks x num_points x y_dim (3 dims) for real targets, got "
                    f"shape {tuple(y.shape)}" + ("; add a trailing axis, y[..., None]" if y.dim() == 2 else "")
                )
            y = y.to(x.dtype)
        elif y.dtype in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
            if y.dim() != 2:
                raise ValueError(
                    f"{name}_y: expected shape num_tasks x num_points for integer class labels, got shape {tuple(y.shape)}"
                )
            y = y.long()
        else:
            raise TypeError(f"{name}_y: expected floating-point targets or integer labels, got {y.dtype}")
        if tuple(y.shape[:2]) != tuple(x.shape[:2]):
            raise ValueError(
                f"{name}_y: expected {x.shape[0]} tasks x {x.shape[1]} points to match {name}_x, "
                f"got shape {tuple(y.shape)}"
            )
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        mask = _as_tensor(mask, f"{name}_mask")
        if mask.dtype != torch.bool or tuple(mask.shape) != tuple(x.shape[:2]):
            raise ValueError(
                f"{name}_mask: expected a bool tensor of shape {tuple(x.shape[:2])}, "
                f"got {mask.dtype} of shape {tuple(mask.shape)}"
            )
        mask = mask.to(x.device)
        _check_finite(x, mask, f"{name}_x")
        _check_finite(y, mask, f"{name}_y")
        # Padding is zero so that no masked NaN or junk can leak into a sum.
        x = torch.where(mask[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device))
        y = torch.where(mask[..., None] if y.dim() == 3 else mask, y, torch.zeros((), dtype=y.dtype, device=y.device))
        return cls(x, y, mask)

    @property
    def num_tasks(self) -> int:
        return self.x.shape[0]

    @property
    def num_points(self) -> int:
        return self.x.shape[1]

    @property
    def x_dim(self) -> int:
        return self.x.shape[2]

    @property
    def y_dim(self) -> int:
        """Number of target columns; 1 for class labels."""
        return self.y.shape[2] if self.y.dim() == 3 else 1

    @property
    def is_classification(self) -> bool:
        return self.y.dim() == 2

    @property
    def counts(self) -> Tensor:
        """``num_tasks`` number of observed points per task."""
        return self.mask.sum(-1)

    @property
    def device(self) -> torch.device:
        return self.x.device

    def __getitem__(self, index: Index) -> TaskData:
        index = _task_index(index, self.num_tasks, self.device)
        return TaskData(self.x[index], self.y[index], self.mask[index])

    def to(self, *args: Any, **kwargs: Any) -> TaskData:
        """Move to a device and/or floating dtype (labels and masks keep their dtype)."""
        x = self.x.to(*args, **kwargs)
        y = self.y.to(*args, **kwargs) if self.y.is_floating_point() else self.y.to(x.device)
        return TaskData(x, y, self.mask.to(x.device))

    def cat(self, other: TaskData) -> TaskData:
        """Concatenate the points of two views of the same tasks."""
        return TaskData(
            torch.cat([self.x, other.x], 1), torch.cat([self.y, other.y], 1), torch.cat([self.mask, other.mask], 1)
        )

    def head(self, k: int) -> TaskData:
        """The first ``k`` observed points of every task (fewer where a task has fewer).

        >>> d = TaskData.checked(torch.arange(6.).reshape(1, 6, 1), torch.zeros(1, 6, 1))
        >>> d.head(2).x.flatten().tolist()
        [0.0, 1.0]
        """
        if k < 0:
            raise ValueError(f"k: expected a non-negative number of points, got {k}")
        order = torch.sort((~self.mask).to(torch.int8), dim=1, stable=True).indices[:, :k]
        x = self.x.gather(1, order[..., None].expand(-1, -1, self.x_dim))
        y = self.y.gather(1, order[..., None].expand(-1, -1, self.y_dim) if self.y.dim() == 3 else order)
        return TaskData(x, y, self.mask.gather(1, order))


def _task_index(index: Index, num_tasks: int, device: torch.device) -> slice | Tensor:
    if isinstance(index, (Tensor, np.ndarray)) and index.ndim == 0 and not index.dtype == torch.bool:
        index = int(index)
    if isinstance(index, (list, tuple)) and len(index) == 0:
        return torch.zeros(0, dtype=torch.long, device=device)
    if isinstance(index, (int, np.integer)):
        i = int(index)
        if not -num_tasks <= i < num_tasks:
            raise IndexError(f"task index {i} out of range for {num_tasks} tasks")
        i %= num_tasks
        return slice(i, i + 1)
    if isinstance(index, slice):
        return index
    index = torch.as_tensor(np.asarray(index) if not isinstance(index, Tensor) else index)
    if index.dtype == torch.bool:
        if index.shape != (num_tasks,):
            raise IndexError(f"boolean task index: expected shape ({num_tasks},), got {tuple(index.shape)}")
        index = index.nonzero().squeeze(-1)
    if index.dtype not in (torch.int64, torch.int32):
        raise IndexError(f"task index: expected integers, a slice or a boolean mask, got {index.dtype}")
    if index.numel() and (index.max() >= num_tasks or index.min() < -num_tasks):
        raise IndexError(f"task index out of range for {num_tasks} tasks")
    return index.to(device=device, dtype=torch.long)


class TaskSet:
    r"""A batch of few-shot tasks: support and query sets, optional names and true parameters.

    Args:
        support: the points a learner adapts on.
        query: the points it is scored on; ``None`` for a fixed collection (every point is support).
        names: one string per task.
        params: true task parameters of a synthetic family, each a tensor with ``num_tasks`` rows.

    Use the constructors :meth:`from_arrays`, :meth:`from_lists` and :meth:`from_dataframe`.

    >>> ts = TaskSet.from_arrays(torch.randn(4, 5, 1), torch.randn(4, 5, 1), torch.randn(4, 10, 1), torch.randn(4, 10, 1))
    >>> len(ts), ts.support.x.shape, ts.query.num_points, len(ts[1:3])
    (4, torch.Size([4, 5, 1]), 10, 2)
    """

    def __init__(
        self,
        support: TaskData,
        query: TaskData | None = None,
        names: Sequence[str] | None = None,
        params: Mapping[str, Tensor] | None = None,
    ) -> None:
        if query is None:
            empty_y = support.y[:, :0]
            query = TaskData(support.x[:, :0], empty_y, support.mask[:, :0])
        self.support, self.query = support, query
        self.names = list(names) if names is not None else None
        self.params = {k: v for k, v in params.items()} if params is not None else None
        self._validate()

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_arrays(
        cls,
        support_x: Any,
        support_y: Any,
        query_x: Any = None,
        query_y: Any = None,
        support_mask: Any = None,
        query_mask: Any = None,
        names: Sequence[str] | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> TaskSet:
        r"""Build from rectangular arrays.

        Args:
            support_x: ``num_tasks x num_support x x_dim`` float inputs.
            support_y: ``num_tasks x num_support x y_dim`` float targets or ``num_tasks x num_support`` labels.
            query_x, query_y: the same for the query set (both or neither).
            support_mask, query_mask: ``num_tasks x num_points`` bool; ``False`` marks padding.
            names: ``num_tasks`` strings.
            params: true task parameters, each with ``num_tasks`` rows.
        """
        support = TaskData.checked(support_x, support_y, support_mask, name="support")
        if (query_x is None) != (query_y is None):
            raise ValueError("query_x, query_y: expected both or neither, got only one")
        query = None
        if query_x is not None:
            query = TaskData.checked(query_x, query_y, query_mask, name="query")
        if params is not None:
            params = {k: _as_tensor(v, f"params[{k!r}]") for k, v in params.items()}
        return cls(support, query, names=names, params=params)

    @classmethod
    def from_lists(
        cls,
        support_x: Sequence[Any],
        support_y: Sequence[Any],
        query_x: Sequence[Any] | None = None,
        query_y: Sequence[Any] | None = None,
        names: Sequence[str] | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> TaskSet:
        r"""Build from per-task arrays of different lengths (padded, with masks).

        Args:
            support_x: ``num_tasks`` arrays, the i-th ``n_i x x_dim``.
            support_y: ``num_tasks`` arrays, ``n_i x y_dim`` targets or ``n_i`` labels.
            query_x, query_y: the same for the query sets (both or neither).

        >>> ts = TaskSet.from_lists([torch.ones(2, 1), torch.ones(4, 1)], [torch.ones(2, 1), torch.ones(4, 1)])
        >>> ts.support.mask.tolist()
        [[True, True, False, False], [True, True, True, True]]
        """
        sx, sy, sm = _pad_lists(support_x, support_y, "support")
        if (query_x is None) != (query_y is None):
            raise ValueError("query_x, query_y: expected both or neither, got only one")
        qx = qy = qm = None
        if query_x is not None:
            if len(query_x) != len(support_x):
                raise ValueError(f"query_x: expected {len(support_x)} tasks to match support_x, got {len(query_x)}")
            qx, qy, qm = _pad_lists(query_x, query_y, "query")
        return cls.from_arrays(sx, sy, qx, qy, sm, qm, names=names, params=params)

    @classmethod
    def from_dataframe(
        cls,
        df: Any,
        task: str,
        x: Sequence[str] | str,
        y: Sequence[str] | str,
        support: int | str | None = None,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ) -> TaskSet:
        r"""Build from a long-format table: one row per point, a column naming its task.

        Args:
            df: a ``pandas.DataFrame``.
            task: the column that names each row's task.
            x: the feature column(s).
            y: the target column (or columns).
            support: ``None`` — every point is support and there is no query (a fixed collection);
                an int ``k`` — ``k`` random points per task are support, the rest query (tasks with
                fewer than ``k`` rows put all of them in the support); a column name — a boolean
                column that is ``True`` on support rows.
            seed: seeds the random support/query split.

        >>> import pandas as pd
        >>> df = pd.DataFrame({"firm": ["a", "a", "b", "b", "b"], "v": [1., 2, 3, 4, 5], "i": [0., 1, 0, 1, 1]})
        >>> ts = TaskSet.from_dataframe(df, task="firm", x=["v"], y="i", support=1)
        >>> ts.names, ts.support.counts.tolist(), ts.query.counts.tolist()
        (['a', 'b'], [1, 1], [1, 2])
        """
        from bayesmeta.tasks.frames import dataframe_to_arrays

        arrays = dataframe_to_arrays(df, task=task, x=x, y=y, support=support, seed=seed, dtype=dtype)
        return cls.from_arrays(**arrays)

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        s, q = self.support, self.query
        if q.num_tasks != s.num_tasks:
            raise ValueError(f"query_x: expected {s.num_tasks} tasks to match support_x, got {q.num_tasks}")
        if q.x_dim != s.x_dim:
            raise ValueError(f"query_x: expected x_dim {s.x_dim} to match support_x, got {q.x_dim}")
        if q.x.dtype != s.x.dtype:
            raise TypeError(f"query_x: expected dtype {s.x.dtype} to match support_x, got {q.x.dtype}")
        if q.is_classification != s.is_classification or q.y_dim != s.y_dim:
            raise ValueError(
                f"query_y: expected the same kind of targets as support_y (shape ... x {tuple(s.y.shape[2:])}, "
                f"{s.y.dtype}), got ... x {tuple(q.y.shape[2:])}, {q.y.dtype}"
            )
        if s.num_tasks == 0:
            raise ValueError("support_x: expected at least one task, got 0")
        empty = (s.counts + q.counts) == 0
        if empty.any():
            which = empty.nonzero().squeeze(-1)[:5].tolist()
            raise ValueError(
                f"tasks {which}: expected at least one observed point per task, got none in support or query"
            )
        if self.names is not None and len(self.names) != s.num_tasks:
            raise ValueError(f"names: expected {s.num_tasks} names, got {len(self.names)}")
        if self.params is not None:
            for key, value in self.params.items():
                if value.dim() == 0 or value.shape[0] != s.num_tasks:
                    raise ValueError(
                        f"params[{key!r}]: expected {s.num_tasks} rows (one per task), got shape {tuple(value.shape)}"
                    )

    # ------------------------------------------------------------------ container protocol
    def __len__(self) -> int:
        return self.support.num_tasks

    @property
    def num_tasks(self) -> int:
        return len(self)

    @property
    def x_dim(self) -> int:
        return self.support.x_dim

    @property
    def y_dim(self) -> int:
        return self.support.y_dim

    @property
    def device(self) -> torch.device:
        return self.support.device

    @property
    def dtype(self) -> torch.dtype:
        return self.support.x.dtype

    def __getitem__(self, index: Index) -> TaskSet:
        """Select tasks by int, slice, integer indices or a boolean mask; always returns a TaskSet."""
        idx = _task_index(index, len(self), self.device)
        names = None
        if self.names is not None:
            if isinstance(idx, slice):
                names = self.names[idx]
            else:
                names = [self.names[i] for i in idx.tolist()]
        params = None
        if self.params is not None:
            params = {k: v[idx if isinstance(idx, slice) else idx.to(v.device)] for k, v in self.params.items()}
        return TaskSet._trusted(self.support[idx], self.query[idx], names, params)

    @classmethod
    def _trusted(cls, support: TaskData, query: TaskData, names: list[str] | None, params: dict | None) -> TaskSet:
        # Internal: slices of an already validated TaskSet need no second check (hot path in fit_prior).
        obj = cls.__new__(cls)
        obj.support, obj.query, obj.names, obj.params = support, query, names, params
        return obj

    def to(self, *args: Any, **kwargs: Any) -> TaskSet:
        """Move every tensor to a device and/or floating dtype, like ``Tensor.to``."""
        params = None
        if self.params is not None:
            device = self.support.to(*args, **kwargs).device
            params = {k: v.to(*args, **kwargs) if v.is_floating_point() else v.to(device) for k, v in self.params.items()}
        return TaskSet._trusted(self.support.to(*args, **kwargs), self.query.to(*args, **kwargs), self.names, params)

    def split(self, sizes: int | float | Sequence[int | float], seed: int | None = None) -> tuple[TaskSet, ...]:
        """Split the tasks into consecutive parts (shuffled first when ``seed`` is given).

        ``sizes`` is a count or fraction for the first part (the rest forms the second), or a list of
        counts/fractions; fractions may leave a remainder, which becomes a last part.

        >>> ts = TaskSet.from_arrays(torch.zeros(10, 2, 1), torch.zeros(10, 2, 1))
        >>> [len(p) for p in ts.split(0.8)], [len(p) for p in ts.split([2, 3, 5], seed=0)]
        ([8, 2], [2, 3, 5])
        """
        n = len(self)
        sizes = [sizes] if isinstance(sizes, (int, float, np.integer, np.floating)) else list(sizes)
        counts = [int(round(float(s) * n)) if isinstance(s, (float, np.floating)) else int(s) for s in sizes]
        if any(c < 1 for c in counts) or sum(counts) > n:
            raise ValueError(
                f"sizes: expected parts of at least one task adding up to at most {n} tasks, got {sizes} "
                f"(= {counts} tasks)"
            )
        if sum(counts) < n:
            counts.append(n - sum(counts))
        if seed is None:
            order = torch.arange(n, device=self.device)
        else:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(self.device)
        parts, start = [], 0
        for c in counts:
            parts.append(self[order[start : start + c]])
            start += c
        return tuple(parts)

    def all_points(self) -> TaskData:
        """Support and query points together (what a model is scored on during meta-training)."""
        return self.support.cat(self.query)

    def __repr__(self) -> str:
        kind = "labels" if self.support.is_classification else f"y_dim={self.y_dim}"
        return (
            f"TaskSet({len(self)} tasks, support {self.support.num_points} pts, query {self.query.num_points} pts, "
            f"x_dim={self.x_dim}, {kind}, device={self.device})"
        )


def _pad_lists(xs: Sequence[Any], ys: Sequence[Any], name: str) -> tuple[Tensor, Tensor, Tensor]:
    if len(xs) != len(ys):
        raise ValueError(f"{name}_y: expected {len(xs)} tasks to match {name}_x, got {len(ys)}")
    if len(xs) == 0:
        raise ValueError(f"{name}_x: expected at least one task, got an empty list")
    xs = [_as_tensor(v, f"{name}_x[{i}]") for i, v in enumerate(xs)]
    ys = [_as_tensor(v, f"{name}_y[{i}]") for i, v in enumerate(ys)]
    for i, (xi, yi) in enumerate(zip(xs, ys)):
        if xi.dim() != 2:
            raise ValueError(f"{name}_x[{i}]: expected shape num_points x x_dim, got shape {tuple(xi.shape)}")
        if yi.shape[:1] != xi.shape[:1]:
            raise ValueError(f"{name}_y[{i}]: expected {xi.shape[0]} points to match {name}_x[{i}], got shape {tuple(yi.shape)}")
    counts = torch.tensor([xi.shape[0] for xi in xs])
    mask = torch.arange(int(counts.max()) if len(counts) else 0)[None, :] < counts[:, None]
    x = torch.nn.utils.rnn.pad_sequence(xs, batch_first=True)
    y = torch.nn.utils.rnn.pad_sequence(ys, batch_first=True)
    return x, y, mask
