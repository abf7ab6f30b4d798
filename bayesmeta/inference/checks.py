"""Validation where data enters: fit_prior, adapt, predict."""
from __future__ import annotations

import math
from typing import Any

import torch

from bayesmeta.model import HierarchicalModel
from bayesmeta.tasks.taskset import TaskData, TaskSet

__all__ = ["check_model", "check_tasks", "check_support", "check_positive", "check_query_x"]


def check_model(model: Any) -> HierarchicalModel:
    if not isinstance(model, HierarchicalModel):
        raise TypeError(f"model: expected a bayesmeta.HierarchicalModel, got {type(model).__name__}")
    return model


def _check_dims(data: TaskData, model: HierarchicalModel, name: str) -> None:
    if data.x_dim != model.x_dim:
        raise ValueError(
            f"{name}: expected x_dim {model.x_dim} for {type(model).__name__}, got x_dim {data.x_dim} "
            f"(x of shape {tuple(data.x.shape)})"
        )
    if not data.is_classification and data.y_dim != model.y_dim:
        raise ValueError(f"{name}: expected y_dim {model.y_dim} for {type(model).__name__}, got y_dim {data.y_dim}")


def check_tasks(tasks: Any, model: HierarchicalModel, name: str = "tasks") -> TaskSet:
    """A TaskSet whose inputs and targets fit ``model``; every task has points (TaskSet guarantees it)."""
    if not isinstance(tasks, TaskSet):
        raise TypeError(
            f"{name}: expected a bayesmeta.TaskSet, got {type(tasks).__name__}; "
            "build one with TaskSet.from_arrays / from_lists / from_dataframe"
        )
    _check_dims(tasks.support, model, name)
    return tasks


def check_support(support: Any, model: HierarchicalModel, name: str = "support") -> TaskSet:
    """A support set (TaskData, or a TaskSet whose support is used) as a support-only TaskSet."""
    names = None
    if isinstance(support, TaskSet):
        support, names = support.support, support.names
    if not isinstance(support, TaskData):
        raise TypeError(
            f"{name}: expected the support of a TaskSet (tasks.support, a TaskData) or a TaskSet, "
            f"got {type(support).__name__}"
        )
    support = TaskData.checked(support.x, support.y, support.mask, name=name)
    _check_dims(support, model, name)
    tasks = TaskSet._trusted(support, TaskData(support.x[:, :0], support.y[:, :0], support.mask[:, :0]), names, None)
    return tasks


def check_query_x(x: Any, num_tasks: int, x_dim: int, name: str = "x") -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor of shape {num_tasks} x num_points x {x_dim}, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got {x.dtype}")
    if x.dim() != 3 or x.shape[0] != num_tasks or x.shape[2] != x_dim:
        raise ValueError(f"{name}: expected shape {num_tasks} x num_points x {x_dim}, got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name}: expected finite inputs, got NaN/Inf")
    return x


def check_positive(value: Any, name: str, integer: bool = False) -> Any:
    ok = isinstance(value, int) and not isinstance(value, bool) if integer else isinstance(value, (int, float))
    if not ok or not math.isfinite(value) or value <= 0:
        kind = "a positive int" if integer else "a positive number"
        raise ValueError(f"{name}: expected {kind}, got {value!r}")
    return value
