"""Networks for the baselines' tests: each vectorized path of ``batched_forward`` gets the same function."""
from __future__ import annotations

from typing import Callable

import pytest
import torch
from torch import nn

from bayesmeta.baselines import maml_net


class WrappedMLP(nn.Module):
    """``maml_net()`` inside a plain module: not an ``nn.Sequential``, so it takes the ``vmap`` path."""

    def __init__(self) -> None:
        super().__init__()
        self.body = maml_net()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@pytest.fixture
def make_net() -> Callable[[str], nn.Module]:
    """Both vectorized paths: ``make_net("mlp")`` is ``maml_net()`` (batched matrix products), ``make_net("module")``
    the same weights in a :class:`WrappedMLP` (``vmap`` of ``functional_call``)."""
    return lambda kind: maml_net() if kind == "mlp" else WrappedMLP()
