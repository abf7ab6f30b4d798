"""Long-format DataFrames to TaskSets: support modes, names, row bookkeeping and input validation."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from bayesmeta.tasks import TaskSet
from bayesmeta.tasks.frames import dataframe_to_arrays


def _frame(seed: int = 0) -> pd.DataFrame:
    """Three tasks of 5, 2 and 8 rows, interleaved; column ``row`` identifies every row."""
    rng = np.random.default_rng(seed)
    firm = np.array(["beta"] * 5 + ["alpha"] * 2 + ["gamma"] * 8)
    perm = rng.permutation(len(firm))
    firm = firm[perm]
    return pd.DataFrame(
        {
            "firm": firm,
            "row": np.arange(len(firm), dtype=float),
            "u": rng.normal(size=len(firm)),
            "v": rng.normal(size=len(firm)),
            "target": rng.normal(size=len(firm)),
            "target2": rng.normal(size=len(firm)),
            "is_support": rng.random(len(firm)) < 0.5,
        }
    )


def _first_appearance(df: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(df["firm"]))


def _rows(data, i: int) -> list[float]:
    """The ``row`` ids (first feature) of task ``i``'s observed points."""
    return data.x[i, data.mask[i], 0].tolist()


def test_support_none_every_row_is_support():
    df = _frame()
    ts = TaskSet.from_dataframe(df, task="firm", x=["row", "u"], y="target")
    names = _first_appearance(df)
    assert ts.names == names
    assert ts.query.num_points == 0 and ts.x_dim == 2 and ts.y_dim == 1 and ts.dtype == torch.float32
    sizes = df.groupby("firm").size()
    assert ts.support.counts.tolist() == [sizes[n] for n in names]
    assert ts.support.num_points == sizes.max()
    for i, name in enumerate(names):
        rows = df[df["firm"] == name]
        assert _rows(ts.support, i) == rows["row"].tolist()  # row order is kept
        assert np.allclose(ts.support.y[i, ts.support.mask[i], 0].numpy(), rows["target"].to_numpy())
    assert (ts.support.x[~ts.support.mask] == 0).all()


def test_raw_arrays_without_query_are_none():
    arrays = dataframe_to_arrays(_frame(), task="firm", x="u", y=["target", "target2"], dtype=torch.float64)
    assert set(arrays) == {"support_x", "support_y", "support_mask", "query_x", "query_y", "query_mask", "names"}
    assert arrays["query_x"] is None and arrays["query_y"] is None and arrays["query_mask"] is None
    assert arrays["support_y"].shape[-1] == 2 and arrays["support_x"].dtype == torch.float64


def test_support_int_counts_partition_and_reproducibility():
    df, k = _frame(), 3
    ts = TaskSet.from_dataframe(df, task="firm", x=["row", "v"], y=["target", "target2"], support=k, seed=11)
    assert ts.y_dim == 2
    sizes = df.groupby("firm").size()
    for i, name in enumerate(ts.names):
        n = sizes[name]
        assert int(ts.support.counts[i]) == min(k, n)
        assert int(ts.query.counts[i]) == max(n - k, 0)
        support_rows, query_rows = _rows(ts.support, i), _rows(ts.query, i)
        assert not set(support_rows) & set(query_rows)
        assert sorted(support_rows + query_rows) == df.loc[df["firm"] == name, "row"].tolist()
    again = TaskSet.from_dataframe(df, task="firm", x=["row", "v"], y=["target", "target2"], support=k, seed=11)
    other = TaskSet.from_dataframe(df, task="firm", x=["row", "v"], y=["target", "target2"], support=k, seed=12)
    assert torch.equal(ts.support.x, again.support.x) and torch.equal(ts.query.y, again.query.y)
    assert not torch.equal(ts.support.x, other.support.x)


def test_support_int_is_uniform_over_rows():
    # 2000 tasks of 4 rows, k = 1: each row is the support row of its task with probability 1/4,
    # independently across tasks, so its frequency is binomial; compare within 4 standard errors.
    n = 2000
    df = pd.DataFrame({"t": np.repeat(np.arange(n), 4), "row": np.tile([0.0, 1.0, 2.0, 3.0], n), "y": 0.0})
    picks = TaskSet.from_dataframe(df, "t", "row", "y", support=1, seed=0).support.x[:, 0, 0].numpy()
    for row in range(4):
        assert abs((picks == row).mean() - 0.25) <= 4 * np.sqrt(0.25 * 0.75 / n)


def test_support_zero_and_larger_than_every_task():
    df = _frame()
    zero = TaskSet.from_dataframe(df, task="firm", x="u", y="target", support=0)
    assert zero.support.num_points == 0 and zero.query.counts.sum() == len(df)
    big = TaskSet.from_dataframe(df, task="firm", x="u", y="target", support=100)
    assert big.query.num_points == 0 and big.support.counts.sum() == len(df)


def test_support_bool_column():
    df = _frame()
    ts = TaskSet.from_dataframe(df, task="firm", x="row", y="target", support="is_support")
    for i, name in enumerate(ts.names):
        rows = df[df["firm"] == name]
        assert _rows(ts.support, i) == rows.loc[rows["is_support"], "row"].tolist()
        assert _rows(ts.query, i) == rows.loc[~rows["is_support"], "row"].tolist()


def test_names_are_strings_in_order_of_first_appearance():
    df = pd.DataFrame({"t": [30, 10, 30, 20], "x": [1.0, 2.0, 3.0, 4.0], "y": [0.0, 0.0, 0.0, 0.0]})
    ts = TaskSet.from_dataframe(df, task="t", x="x", y="y")
    assert ts.names == ["30", "10", "20"]
    assert ts.support.counts.tolist() == [2, 1, 1]


def test_nullable_and_integer_columns_are_converted_to_float():
    df = pd.DataFrame({"t": ["a", "a", "b"], "x": pd.array([1, 2, 3], dtype="Int64"), "y": [1, 0, 1]})
    ts = TaskSet.from_dataframe(df, task="t", x="x", y="y", dtype=torch.float64)
    assert ts.support.x.dtype == torch.float64 and ts.support.y[0, :, 0].tolist() == [1.0, 0.0]


# ---------------------------------------------------------------------- errors
def test_not_a_dataframe():
    with pytest.raises(TypeError, match="df: expected a pandas.DataFrame, got dict"):
        dataframe_to_arrays({"t": [1]}, task="t", x="x", y="y")


def test_missing_columns_are_listed_with_the_available_ones():
    expected = r"x, y: expected columns of df, missing \['w', 'nope'\]; available columns: \['firm', 'row'"
    with pytest.raises(ValueError, match=expected):
        TaskSet.from_dataframe(_frame(), task="firm", x=["u", "w"], y="nope")


def test_missing_support_column():
    with pytest.raises(ValueError, match=r"support: expected columns of df, missing \['split'\]"):
        TaskSet.from_dataframe(_frame(), task="firm", x="u", y="target", support="split")


@pytest.mark.parametrize("arg", ["x", "y"])
def test_non_numeric_columns(arg):
    df = _frame().assign(label=lambda d: d["firm"] + "!")
    kwargs = {"x": "u", "y": "target", arg: "label"}
    with pytest.raises(ValueError, match=f"{arg}: expected numeric columns, got non-numeric .*'label'"):
        TaskSet.from_dataframe(df, task="firm", **kwargs)


def test_negative_support():
    with pytest.raises(ValueError, match="support: expected a non-negative number of support points per task, got -1"):
        TaskSet.from_dataframe(_frame(), task="firm", x="u", y="target", support=-1)


def test_support_column_not_boolean():
    df = _frame().assign(flag=lambda d: d["is_support"].astype(int))
    with pytest.raises(ValueError, match="support: expected column 'flag' to be boolean.*got dtype int64"):
        TaskSet.from_dataframe(df, task="firm", x="u", y="target", support="flag")


@pytest.mark.parametrize("arg, column", [("x", "v"), ("y", "target")])
def test_nan_in_value_columns(arg, column):
    df = _frame()
    df.loc[[1, 4, 6], column] = np.nan
    expected = rf"{arg}: expected finite values, got NaN .* column '{column}' \(3 rows\).*dropna"
    with pytest.raises(ValueError, match=expected):
        TaskSet.from_dataframe(df, task="firm", x=["u", "v"], y="target")


def test_missing_task_label():
    df = _frame().astype({"firm": object})
    df.loc[0, "firm"] = None
    with pytest.raises(ValueError, match="task: expected a task label on every row, got 1 missing"):
        TaskSet.from_dataframe(df, task="firm", x="u", y="target")


def test_empty_frame_and_empty_feature_list():
    with pytest.raises(ValueError, match="df: expected at least one row"):
        TaskSet.from_dataframe(_frame().iloc[:0], task="firm", x="u", y="target")
    with pytest.raises(ValueError, match="x: expected at least one column name"):
        TaskSet.from_dataframe(_frame(), task="firm", x=[], y="target")


def test_bool_support_is_rejected():
    with pytest.raises(TypeError, match="support: expected None, a non-negative int or a boolean column name"):
        TaskSet.from_dataframe(_frame(), task="firm", x="u", y="target", support=True)
