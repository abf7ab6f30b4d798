"""TaskData / TaskSet: construction, padding, indexing, dtype moves, splits and input validation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bayesmeta.tasks import TaskData, TaskSet


def _tasks(num_tasks: int = 4, support: int = 5, query: int = 7, x_dim: int = 2, seed: int = 0) -> TaskSet:
    g = torch.Generator().manual_seed(seed)
    return TaskSet.from_arrays(
        torch.randn(num_tasks, support, x_dim, generator=g),
        torch.randn(num_tasks, support, 1, generator=g),
        torch.randn(num_tasks, query, x_dim, generator=g),
        torch.randn(num_tasks, query, 1, generator=g),
        names=[f"t{i}" for i in range(num_tasks)],
        params={"w": torch.arange(num_tasks * 3.0).reshape(num_tasks, 3), "k": torch.arange(num_tasks)},
    )


# ---------------------------------------------------------------------- construction
def test_from_arrays_shapes_and_defaults():
    ts = _tasks()
    assert len(ts) == ts.num_tasks == 4
    assert ts.support.x.shape == (4, 5, 2) and ts.query.y.shape == (4, 7, 1)
    assert ts.x_dim == 2 and ts.y_dim == 1 and ts.dtype == torch.float32
    assert ts.support.mask.all() and ts.query.mask.all()
    assert ts.support.counts.tolist() == [5] * 4


def test_from_arrays_without_query_has_zero_query_points():
    ts = TaskSet.from_arrays(torch.randn(3, 4, 1), torch.randn(3, 4, 1))
    assert ts.query.num_points == 0 and ts.query.x.shape == (3, 0, 1) and ts.query.y.shape == (3, 0, 1)
    assert ts.query.counts.tolist() == [0, 0, 0]
    assert ts.names is None and ts.params is None
    assert ts.all_points().num_points == 4


def test_from_lists_ragged_pads_with_zeros_and_masks():
    xs = [torch.full((2, 1), 7.0), torch.full((4, 1), 3.0), torch.full((1, 1), 5.0)]
    ys = [torch.full((2, 1), 1.0), torch.full((4, 1), 2.0), torch.full((1, 1), 3.0)]
    ts = TaskSet.from_lists(xs, ys, query_x=[torch.ones(1, 1)] * 3, query_y=[torch.ones(1, 1)] * 3)
    assert ts.support.x.shape == (3, 4, 1)
    assert ts.support.mask.tolist() == [[True, True, False, False], [True] * 4, [True, False, False, False]]
    assert ts.support.counts.tolist() == [2, 4, 1]
    assert (ts.support.x[~ts.support.mask] == 0).all() and (ts.support.y[~ts.support.mask] == 0).all()
    assert (ts.support.x[ts.support.mask] != 0).all()


# ---------------------------------------------------------------------- indexing
@pytest.mark.parametrize(
    "index, expected",
    [
        (2, [2]),
        (-1, [3]),
        (slice(1, 3), [1, 2]),
        ([3, 0], [3, 0]),
        (torch.tensor([1, 3]), [1, 3]),
        (np.array([2, 0]), [2, 0]),
        (torch.tensor([True, False, True, False]), [0, 2]),
        ([False, True, False, True], [1, 3]),
    ],
)
def test_indexing_keeps_names_params_and_data_aligned(index, expected):
    ts = _tasks()
    sub = ts[index]
    assert isinstance(sub, TaskSet) and len(sub) == len(expected)
    assert sub.names == [f"t{i}" for i in expected]
    assert sub.params["k"].tolist() == expected
    assert torch.equal(sub.params["w"], ts.params["w"][expected])
    assert torch.equal(sub.support.x, ts.support.x[expected])
    assert torch.equal(sub.query.y, ts.query.y[expected])
    assert torch.equal(sub.support.mask, ts.support.mask[expected])


def test_index_out_of_range_is_an_index_error():
    with pytest.raises(IndexError, match="out of range"):
        _tasks()[4]


def test_to_float64_converts_floats_and_keeps_labels_and_masks():
    ts = _tasks().to(torch.float64)
    assert ts.dtype == torch.float64 and ts.support.y.dtype == torch.float64 and ts.query.x.dtype == torch.float64
    assert ts.params["w"].dtype == torch.float64 and ts.params["k"].dtype == torch.int64
    assert ts.support.mask.dtype == torch.bool and ts.names == _tasks().names
    labels = TaskSet.from_arrays(torch.randn(2, 3, 1), torch.tensor([[0, 1, 2], [2, 1, 0]])).to(torch.float64)
    assert labels.support.y.dtype == torch.int64 and labels.support.is_classification


# ---------------------------------------------------------------------- split and head
def test_split_fractions_and_counts():
    ts = TaskSet.from_arrays(torch.randn(10, 2, 1), torch.randn(10, 2, 1), names=[str(i) for i in range(10)])
    assert [len(p) for p in ts.split(0.8)] == [8, 2]
    assert [len(p) for p in ts.split(3)] == [3, 7]
    assert [len(p) for p in ts.split([2, 3, 5])] == [2, 3, 5]
    assert [len(p) for p in ts.split([0.5, 0.2])] == [5, 2, 3]
    first, second = ts.split(4)
    assert first.names == list("0123") and second.names == list("456789")


def test_split_seeded_shuffle_is_reproducible_and_a_partition():
    ts = TaskSet.from_arrays(torch.randn(10, 2, 1), torch.randn(10, 2, 1), names=[str(i) for i in range(10)])
    a = [p.names for p in ts.split([3, 7], seed=5)]
    b = [p.names for p in ts.split([3, 7], seed=5)]
    c = [p.names for p in ts.split([3, 7], seed=6)]
    assert a == b and a != c
    assert sorted(a[0] + a[1]) == sorted(ts.names)
    assert a[0] + a[1] != ts.names  # actually shuffled


@pytest.mark.parametrize("sizes", [11, [6, 5], [-1, 3], 1.5, 0, 0.01])
def test_split_bad_sizes(sizes):
    ts = TaskSet.from_arrays(torch.randn(10, 2, 1), torch.randn(10, 2, 1))
    with pytest.raises(ValueError, match="sizes: expected parts of at least one task"):
        ts.split(sizes)


def test_head_takes_first_observed_points():
    x = torch.arange(12.0).reshape(2, 6, 1)
    mask = torch.tensor([[False, True, True, False, True, True], [True] * 6])
    data = TaskData.checked(x, torch.zeros(2, 6, 1), mask)
    head = data.head(2)
    assert head.x.squeeze(-1).tolist() == [[1.0, 2.0], [6.0, 7.0]] and head.mask.all()
    sparse = TaskData.checked(x, torch.zeros(2, 6, 1), torch.tensor([[True] + [False] * 5, [True] * 6])).head(3)
    assert sparse.counts.tolist() == [1, 3]
    with pytest.raises(ValueError, match="k: expected a non-negative"):
        data.head(-1)


# ---------------------------------------------------------------------- non-finite values
def test_masked_nan_is_allowed_and_zeroed():
    x, y = torch.randn(2, 3, 1), torch.randn(2, 3, 1)
    x[0, 2], y[1, 0] = math.nan, math.inf
    mask = torch.tensor([[True, True, False], [False, True, True]])
    ts = TaskSet.from_arrays(x, y, support_mask=mask)
    assert torch.isfinite(ts.support.x).all() and torch.isfinite(ts.support.y).all()
    assert ts.support.x[0, 2] == 0 and ts.support.y[1, 0] == 0


@pytest.mark.parametrize("where", ["support_x", "support_y", "query_x"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_unmasked_nonfinite_is_a_value_error_naming_the_array(where, bad):
    arrays = {k: torch.randn(2, 3, 1) for k in ("support_x", "support_y", "query_x", "query_y")}
    arrays[where][1, 2, 0] = bad
    with pytest.raises(ValueError, match=f"{where}: expected finite values.*task 1, point 2"):
        TaskSet.from_arrays(**arrays)


# ---------------------------------------------------------------------- bad inputs
def test_x_of_rank_two():
    with pytest.raises(ValueError, match=r"support_x: expected shape .*3 dims.*x\[\.\.\., None\]"):
        TaskSet.from_arrays(torch.randn(3, 4), torch.randn(3, 4, 1))


def test_integer_x():
    with pytest.raises(TypeError, match="support_x: expected a floating-point tensor"):
        TaskSet.from_arrays(torch.ones(3, 4, 1, dtype=torch.int64), torch.randn(3, 4, 1))


def test_task_count_mismatch_between_x_and_y():
    with pytest.raises(ValueError, match=r"support_y: expected 3 tasks x 4 points .*got shape \(2, 4, 1\)"):
        TaskSet.from_arrays(torch.randn(3, 4, 1), torch.randn(2, 4, 1))


def test_point_count_mismatch_between_x_and_y():
    with pytest.raises(ValueError, match=r"query_y: expected 3 tasks x 4 points .*got shape \(3, 5, 1\)"):
        TaskSet.from_arrays(torch.randn(3, 2, 1), torch.randn(3, 2, 1), torch.randn(3, 4, 1), torch.randn(3, 5, 1))


def test_float_y_of_rank_two():
    with pytest.raises(ValueError, match=r"support_y: expected shape .*real targets.*y\[\.\.\., None\]"):
        TaskSet.from_arrays(torch.randn(3, 4, 1), torch.randn(3, 4))


def test_mask_of_wrong_shape():
    with pytest.raises(ValueError, match=r"support_mask: expected a bool tensor of shape \(3, 4\)"):
        TaskSet.from_arrays(torch.randn(3, 4, 1), torch.randn(3, 4, 1), support_mask=torch.ones(3, 5, dtype=torch.bool))


def test_a_task_with_no_points():
    mask = torch.tensor([[True, True], [False, False], [True, False]])
    with pytest.raises(ValueError, match=r"tasks \[1\]: expected at least one observed point"):
        TaskSet.from_arrays(torch.randn(3, 2, 1), torch.randn(3, 2, 1), support_mask=mask)


def test_query_x_dim_differs_from_support():
    with pytest.raises(ValueError, match="query_x: expected x_dim 2 to match support_x, got 3"):
        TaskSet.from_arrays(torch.randn(3, 2, 2), torch.randn(3, 2, 1), torch.randn(3, 2, 3), torch.randn(3, 2, 1))


def test_names_of_wrong_length():
    with pytest.raises(ValueError, match="names: expected 3 names, got 2"):
        TaskSet.from_arrays(torch.randn(3, 2, 1), torch.randn(3, 2, 1), names=["a", "b"])


def test_params_with_wrong_row_count():
    with pytest.raises(ValueError, match=r"params\['w'\]: expected 3 rows"):
        TaskSet.from_arrays(torch.randn(3, 2, 1), torch.randn(3, 2, 1), params={"w": torch.zeros(4, 2)})


@pytest.mark.parametrize("given", ["query_x", "query_y"])
def test_only_one_of_query_x_and_query_y(given):
    kwargs = {given: torch.randn(3, 2, 1)}
    with pytest.raises(ValueError, match="query_x, query_y: expected both or neither"):
        TaskSet.from_arrays(torch.randn(3, 2, 1), torch.randn(3, 2, 1), **kwargs)


def test_zero_dim_tensor_index_is_one_task():
    ts = TaskSet.from_arrays(torch.randn(5, 2, 1), torch.randn(5, 2, 1), names=list("abcde"))
    one = ts[torch.tensor(1)]
    assert len(one) == 1 and one.names == ["b"] and one.support.x.shape == (1, 2, 1)


def test_empty_index_gives_empty_selection():
    ts = TaskSet.from_arrays(torch.randn(5, 2, 1), torch.randn(5, 2, 1))
    assert ts.support[[]].num_tasks == 0


def test_split_takes_numpy_scalars():
    ts = TaskSet.from_arrays(torch.randn(10, 2, 1), torch.randn(10, 2, 1))
    assert [len(p) for p in ts.split(np.int64(2))] == [2, 8]
