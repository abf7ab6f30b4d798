"""Your own data: long-format CSV tables read, checked and turned into padded task tensors."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


PREDICTION_COLUMNS = ("mean", "std", "lower90", "upper90")
INTERVAL = 0.9


# ---------------------------------------------------------------------- your own data: tables
@dataclass(frozen=True)
class Columns:
    """The columns of a long-format table: the task names, the inputs, the target."""

    task: str
    x: list[str]
    y: str

    def __post_init__(self) -> None:
        clashes = [f"{self.task!r} is both --task-col and --x"] if self.task in self.x else []
        clashes += [f"{self.y!r} is both --y and --x"] if self.y in self.x else []
        clashes += [f"{self.y!r} is both --y and --task-col"] if self.y == self.task else []
        if clashes:
            raise ValueError(f"columns: expected different columns for tasks, inputs and target; {'; '.join(clashes)}")

    def to_config(self) -> dict[str, str]:
        """Plain strings for ``LearnedPrior.config`` (a saved prior keeps only scalar config values)."""
        return {"cli_task": self.task, "cli_x": json.dumps(self.x), "cli_y": self.y}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        """The columns stored by :meth:`to_config` (``None`` where absent), as ``task``, ``x``, ``y``."""
        x = config.get("cli_x")
        if isinstance(x, str):
            x = json.loads(x)
        return {"task": config.get("cli_task"), "x": x, "y": config.get("cli_y")}


def read_table(path: str) -> Any:
    """A CSV file as a ``pandas.DataFrame`` of text (numbers are parsed where they are used, so that every
    other column is written back exactly as it was read)."""
    import pandas as pd

    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if not file.is_file():
        raise ValueError(f"{path}: not a file; expected a CSV file")
    try:
        table = pd.read_csv(file, dtype=str, skipinitialspace=True)
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(
            f"{path}: not a readable CSV file (expected comma-separated text with a header row): {detail}"
        ) from None
    if table.empty:
        raise ValueError(f"{path}: no rows below the header; expected one row per point")
    return table


def check_columns(table: Any, path: str, wanted: dict[str, list[str]]) -> None:
    """Every column in ``wanted`` (``--flag: [names]``) is in ``table``; else name them and list the others."""
    missing = [f"{name!r} ({flag})" for flag, names in wanted.items() for name in names if name not in table.columns]
    if not missing:
        return
    columns = [str(c) for c in table.columns]
    hint = ""
    if len(columns) == 1 and any(sep in columns[0] for sep in (";", "\t", "|")):
        hint = "; the file seems to use another separator: bayesmeta reads comma-separated files"
    raise ValueError(
        f"{path}: no column {', '.join(missing)}; available columns: {', '.join(columns)}{hint}"
    )


def _row(position: int) -> str:
    return f"row {position + 1} below the header"


def task_labels(table: Any, path: str, column: str) -> Any:
    labels = table[column]
    empty = labels.isna().to_numpy()
    if empty.any():
        raise ValueError(
            f"{path}: column {column!r} (--task-col) is empty on {int(empty.sum())} row(s), first at "
            f"{_row(int(empty.argmax()))}; every row needs the name of its task"
        )
    return labels


def numeric_column(table: Any, path: str, column: str, flag: str) -> Any:
    """``num_rows`` float64 values of a text column; an error names the first bad row.

    >>> import pandas as pd
    >>> numeric_column(pd.DataFrame({"v": ["1.5", "2e3"]}), "t.csv", "v", "--x").tolist()
    [1.5, 2000.0]
    """
    import numpy as np
    import pandas as pd

    text = table[column]
    values = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)
    unreadable = np.isnan(values) & text.notna().to_numpy()
    if unreadable.any():
        first = int(unreadable.argmax())
        raise ValueError(
            f"{path}: column {column!r} ({flag}) is not numeric: {_row(first)} holds {text.iloc[first]!r} "
            f"({int(unreadable.sum())} such row(s)); expected numbers"
        )
    bad = ~np.isfinite(values)
    if bad.any():
        raise ValueError(
            f"{path}: column {column!r} ({flag}) has {int(bad.sum())} empty, NaN or infinite value(s), first at "
            f"{_row(int(bad.argmax()))}; drop or fill those rows"
        )
    return values


def table_tasks(table: Any, path: str, columns: Columns) -> Any:
    """The rows of a long-format table as a support-only :class:`~bayesmeta.TaskSet` (tasks in order of
    first appearance, ``names`` their labels)."""
    import pandas as pd

    import bayesmeta as bm

    check_columns(table, path, {"--task-col": [columns.task], "--x": columns.x, "--y": [columns.y]})
    frame = pd.DataFrame({columns.task: task_labels(table, path, columns.task)})
    for name, flag in [(name, "--x") for name in columns.x] + [(columns.y, "--y")]:
        frame[name] = numeric_column(table, path, name, flag)
    return bm.TaskSet.from_dataframe(frame, task=columns.task, x=columns.x, y=columns.y, support=None)


def pad_by_task(codes: Any, values: Any, num_tasks: int) -> tuple[torch.Tensor, Any]:
    """Rows grouped by task into one zero-padded array, and each row's position inside its task.

    Args:
        codes: ``num_rows`` task indices in ``[0, num_tasks)``.
        values: ``num_rows x dim`` row values.

    Returns:
        ``num_tasks x max_rows x dim`` float64 tensor (rows keep their order within a task), and
        ``num_rows`` positions, so that ``padded[codes, positions]`` gives the rows back.

    >>> import numpy as np
    >>> padded, positions = pad_by_task(np.array([1, 0, 1]), np.array([[1.0], [2.0], [3.0]]), num_tasks=2)
    >>> padded[..., 0].tolist(), positions.tolist()
    ([[2.0, 0.0], [1.0, 3.0]], [0, 0, 1])
    """
    import numpy as np

    counts = np.bincount(codes, minlength=num_tasks)
    order = np.argsort(codes, kind="stable")
    starts = np.cumsum(counts) - counts
    positions = np.empty(len(codes), dtype=np.int64)
    positions[order] = np.arange(len(codes)) - starts[codes[order]]
    padded = np.zeros((num_tasks, int(counts.max()), values.shape[1]))
    padded[codes, positions] = values
    return torch.as_tensor(padded), positions


def count_span(counts: torch.Tensor) -> str:
    low, high = int(counts.min()), int(counts.max())
    return f"{low}" if low == high else f"{low}-{high}"

