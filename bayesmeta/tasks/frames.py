r"""Long-format tables to padded task arrays.

A long-format table has one row per observed point and a column naming the task the row belongs to.
:func:`dataframe_to_arrays` turns it into the rectangular, masked arrays that
:meth:`bayesmeta.tasks.TaskSet.from_arrays` takes, without a Python loop over tasks: rows are given
a task code (``pandas.factorize``), a position inside their task (a stable sort), and are scattered
into zero-padded ``num_tasks x max_points x dim`` arrays in one indexing operation.
"""
from __future__ import annotations

from typing import Any, Hashable, Sequence

import numpy as np
import pandas as pd
import torch

__all__ = ["dataframe_to_arrays"]


def dataframe_to_arrays(
    df: pd.DataFrame,
    task: Hashable,
    x: Sequence[Hashable] | Hashable,
    y: Sequence[Hashable] | Hashable,
    support: int | Hashable | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> dict[str, Any]:
    r"""Keyword arguments for :meth:`TaskSet.from_arrays` from a long-format table.

    Tasks are numbered in order of first appearance of their ``task`` value; ``names`` are those values
    as strings, in that order. Inside a task, support and query points keep the row order of ``df``.

    Args:
        df: a ``pandas.DataFrame`` with one row per point.
        task: the column naming each row's task.
        x: a feature column or a list of them (numeric) — ``x_dim`` is the number of columns.
        y: a target column (``y_dim = 1``) or a list of them (numeric, real-valued targets).
        support: ``None`` — every row is support and there is no query (``query_x = query_y = None``);
            an int ``k >= 0`` — in every task ``k`` rows drawn uniformly without replacement are
            support and the rest query (a task with at most ``k`` rows puts them all in the support);
            a column name — a boolean column, ``True`` on support rows.
        seed: seeds the ``numpy.random.Generator`` of the random split (``support`` an int).
        dtype: floating dtype of the returned tensors.

    Returns:
        ``support_x`` (``num_tasks x max_support x x_dim``), ``support_y``
        (``num_tasks x max_support x y_dim``), ``support_mask`` (``num_tasks x max_support`` bool), the
        same three for the query (``None`` when ``support`` is ``None``), and ``names`` (``num_tasks``
        strings). Padded entries are zero and ``False`` in the masks.

    >>> df = pd.DataFrame({"g": ["b", "a", "b"], "u": [1.0, 2.0, 3.0], "v": [0.5, 0.0, 1.5]})
    >>> arrays = dataframe_to_arrays(df, task="g", x="u", y="v")
    >>> arrays["names"], tuple(arrays["support_x"].shape), arrays["support_mask"].tolist()
    (['b', 'a'], (2, 2, 1), [[True, True], [True, False]])
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"df: expected a pandas.DataFrame, got {type(df).__name__}")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype: expected a floating torch.dtype such as torch.float32, got {dtype!r}")
    x_cols, y_cols = _column_list(x, "x"), _column_list(y, "y")
    _check_support_arg(support)
    _check_columns(df, task, x_cols, y_cols, support if _is_column(support) else None)
    if len(df) == 0:
        raise ValueError("df: expected at least one row, got an empty DataFrame")

    codes, uniques = pd.factorize(df[task], sort=False)
    if (codes < 0).any():
        raise ValueError(
            f"task: expected a task label on every row, got {int((codes < 0).sum())} missing in column {task!r}; "
            f"drop those rows first, e.g. df.dropna(subset=[{task!r}])"
        )
    num_tasks = len(uniques)
    x_values = _numeric_values(df, x_cols, "x")
    y_values = _numeric_values(df, y_cols, "y")
    names = [str(u) for u in uniques]

    if support is None:
        sx, sy, sm = _scatter(codes, x_values, y_values, num_tasks, dtype)
        return dict(
            support_x=sx, support_y=sy, support_mask=sm, query_x=None, query_y=None, query_mask=None, names=names
        )
    if _is_column(support):
        is_support = _support_column(df, support)
    else:
        is_support = _random_support(codes, num_tasks, int(support), seed)
    sx, sy, sm = _scatter(codes[is_support], x_values[is_support], y_values[is_support], num_tasks, dtype)
    qx, qy, qm = _scatter(codes[~is_support], x_values[~is_support], y_values[~is_support], num_tasks, dtype)
    return dict(support_x=sx, support_y=sy, support_mask=sm, query_x=qx, query_y=qy, query_mask=qm, names=names)


# ---------------------------------------------------------------------- argument checks
def _column_list(cols: Any, name: str) -> list[Hashable]:
    if isinstance(cols, (list, tuple, pd.Index)):
        out = list(cols)
        if not out:
            raise ValueError(f"{name}: expected at least one column name, got an empty {type(cols).__name__}")
        return out
    return [cols]


def _is_column(support: Any) -> bool:
    return support is not None and not isinstance(support, (int, np.integer))


def _check_support_arg(support: Any) -> None:
    if isinstance(support, (bool, np.bool_)):
        raise TypeError(f"support: expected None, a non-negative int or a boolean column name, got {support!r}")
    if isinstance(support, (int, np.integer)) and support < 0:
        raise ValueError(f"support: expected a non-negative number of support points per task, got {int(support)}")
    if isinstance(support, float):
        raise TypeError(f"support: expected None, a non-negative int or a boolean column name, got float {support!r}")


def _check_columns(
    df: pd.DataFrame, task: Hashable, x_cols: list[Hashable], y_cols: list[Hashable], support: Hashable | None
) -> None:
    wanted = [("task", task)] + [("x", c) for c in x_cols] + [("y", c) for c in y_cols]
    if support is not None:
        wanted.append(("support", support))
    missing = [(arg, col) for arg, col in wanted if col not in df.columns]
    if missing:
        args = ", ".join(dict.fromkeys(arg for arg, _ in missing))
        raise ValueError(
            f"{args}: expected columns of df, missing {[col for _, col in missing]}; "
            f"available columns: {list(df.columns)}"
        )


def _numeric_values(df: pd.DataFrame, cols: list[Hashable], name: str) -> np.ndarray:
    """``num_rows x len(cols)`` float64 values, checked numeric and finite."""
    bad = {c: str(df[c].dtype) for c in cols if not _is_real_numeric(df[c])}
    if bad:
        raise ValueError(
            f"{name}: expected numeric columns, got non-numeric {bad} (column: dtype); "
            f"convert them with pd.to_numeric or encode categories as numbers first"
        )
    values = df[cols].to_numpy(dtype=np.float64, na_value=np.nan)
    nonfinite = (~np.isfinite(values)).sum(0)
    if nonfinite.any():
        counts = ", ".join(f"{c!r} ({int(n)} row{'s' if n != 1 else ''})" for c, n in zip(cols, nonfinite) if n)
        raise ValueError(
            f"{name}: expected finite values, got NaN or infinite values in column {counts}; "
            f"drop those rows first, e.g. df.dropna(subset={cols!r})"
        )
    return values


def _is_real_numeric(col: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(col.dtype) and not pd.api.types.is_complex_dtype(col.dtype)


def _support_column(df: pd.DataFrame, support: Hashable) -> np.ndarray:
    col = df[support]
    if not pd.api.types.is_bool_dtype(col.dtype):
        raise ValueError(
            f"support: expected column {support!r} to be boolean (True on support rows), got dtype {col.dtype}; "
            f"convert it with df[{support!r}].astype(bool)"
        )
    if col.isna().any():
        raise ValueError(
            f"support: expected no missing values in column {support!r}, got {int(col.isna().sum())}; "
            f"fill them with True or False first"
        )
    return col.to_numpy(dtype=bool)


# ---------------------------------------------------------------------- vectorized assembly
def _random_support(codes: np.ndarray, num_tasks: int, k: int, seed: int) -> np.ndarray:
    """Row mask: ``k`` uniformly random rows per task (all rows of a task with at most ``k``)."""
    keys = np.random.default_rng(seed).random(len(codes))
    order = np.lexsort((keys, codes))  # by task, then by a random key: a random permutation per task
    rank = _within_group_rank(codes, order, num_tasks)
    return rank < k


def _within_group_rank(codes: np.ndarray, order: np.ndarray, num_tasks: int) -> np.ndarray:
    """Position of each row inside its task, given ``order`` that sorts the rows by task."""
    counts = np.bincount(codes, minlength=num_tasks)
    starts = np.cumsum(counts) - counts
    rank = np.empty(len(codes), dtype=np.int64)
    rank[order] = np.arange(len(codes)) - starts[codes[order]]
    return rank


def _scatter(
    codes: np.ndarray, x_values: np.ndarray, y_values: np.ndarray, num_tasks: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Zero-padded ``num_tasks x max_points x dim`` arrays and the mask, rows in their original order."""
    counts = np.bincount(codes, minlength=num_tasks)
    width = int(counts.max()) if len(counts) else 0
    pos = _within_group_rank(codes, np.argsort(codes, kind="stable"), num_tasks)
    x = np.zeros((num_tasks, width, x_values.shape[1]))
    y = np.zeros((num_tasks, width, y_values.shape[1]))
    mask = np.zeros((num_tasks, width), dtype=bool)
    x[codes, pos], y[codes, pos], mask[codes, pos] = x_values, y_values, True
    return torch.as_tensor(x, dtype=dtype), torch.as_tensor(y, dtype=dtype), torch.as_tensor(mask)
