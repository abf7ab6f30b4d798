r"""The building blocks the baselines share: masked losses, stacked per-task networks, seeding, meta-training.

Every baseline holds ``T`` tasks' parameters stacked along a leading task axis (``T x *parameter.shape``)
and runs them in one program: :func:`batched_forward` (batched matrix products for an MLP, ``vmap`` of
``functional_call`` otherwise). Losses skip the padding of ragged tasks through their ``mask``
(:func:`masked_mse`); :func:`meta_train` is the Adam loop over meta-batches that every meta-trained
learner runs; the ``check_*`` functions validate constructor arguments with messages that name them.
"""
from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap
from tqdm.auto import tqdm

from bayesmeta.inference.posterior import Prediction
from bayesmeta.tasks.taskset import TaskData

__all__ = ["masked_sum", "masked_mean", "masked_mse", "clean", "is_mlp", "batched_forward", "predictor",
           "seeded", "mlp", "maml_net", "initial_parameters", "tile", "check_net", "net_dims", "sample_batch",
           "meta_train", "check_finite", "is_int", "check_count", "check_flag", "check_values"]

Params = dict[str, Tensor]

#: Parameter-free layers that act elementwise, so that they apply unchanged to a leading task axis.
ELEMENTWISE = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.ELU, nn.LeakyReLU, nn.SiLU, nn.Softplus, nn.Identity)


# ---------------------------------------------------------------------------------------------- masked losses
def masked_sum(values: Tensor, mask: Tensor) -> Tensor:
    """``... x num_points`` values, ``... x num_points`` bool mask -> ``...`` sums over the observed points."""
    return torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device)).sum(-1)


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """``... x num_points`` values and mask -> ``...`` means over the observed points (0 where there are none)."""
    return masked_sum(values, mask) / mask.sum(-1).clamp(min=1).to(values.dtype)


def masked_mse(pred: Tensor, y: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error over the observed points, differentiable and safe under ``vmap``.

    Args:
        pred, y: ``... x num_points x y_dim`` (e.g. ``T x N x y_dim``, or ``N x y_dim`` for one task).
        mask: ``... x num_points`` bool, ``False`` on padding (never counted, whatever it holds).

    Returns:
        ``...`` one value per task; 0 for a task without observed points.

    >>> masked_mse(torch.zeros(1, 3, 1), torch.tensor([[[1.0], [2.0], [99.0]]]), torch.tensor([[True, True, False]]))
    tensor([2.5000])
    """
    return masked_mean((pred - y).pow(2).mean(-1), mask)


def clean(data: TaskData) -> TaskData:
    """Zero the padded entries, so that no junk (NaN included) there reaches a forward or backward pass.

    >>> clean(TaskData(torch.tensor([[[1.0], [float("nan")]]]), torch.ones(1, 2, 1), torch.tensor([[True, False]]))).x
    tensor([[[1.],
             [0.]]])
    """
    m = data.mask[..., None]
    return TaskData(torch.where(m, data.x, 0.0), torch.where(m, data.y, 0.0), data.mask)


# ------------------------------------------------------------------------------------- per-task networks
def is_mlp(net: nn.Module) -> bool:
    """Whether ``net`` is an ``nn.Sequential`` of ``nn.Linear`` and elementwise activations (batched-matmul path).

    >>> is_mlp(maml_net()), is_mlp(nn.Sequential(nn.Conv1d(1, 1, 3)))
    (True, False)
    """
    return isinstance(net, nn.Sequential) and all(isinstance(m, (nn.Linear, *ELEMENTWISE)) for m in net)


def batched_forward(net: nn.Module, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
    """Run ``net`` with each task's own parameters on that task's inputs.

    An MLP (:func:`is_mlp`) runs as batched matrix products; any other module as ``vmap`` of
    ``functional_call`` (the same numbers, slower; buffers come from ``net``).

    Args:
        net: the module whose parameters are swapped in (its own values are not used).
        params: each ``T x *parameter.shape``, as named by ``net.named_parameters()``.
        x: ``T x N x x_dim`` inputs.

    Returns:
        ``T x N x y_dim`` outputs.

    >>> net = maml_net()
    >>> tuple(batched_forward(net, tile(dict(net.named_parameters()), 3), torch.zeros(3, 5, 1)).shape)
    (3, 5, 1)
    """
    if not is_mlp(net):
        return vmap(lambda p, xi: functional_call(net, p, (xi,)))(dict(params), x)
    h = x
    for i, layer in enumerate(net):
        if isinstance(layer, nn.Linear):
            weight, bias = params[f"{i}.weight"].transpose(-1, -2), params.get(f"{i}.bias")
            h = h @ weight if bias is None else torch.baddbmm(bias.unsqueeze(-2), h, weight)
        else:
            h = layer(h)
    return h


def predictor(net: nn.Module, params: Mapping[str, Tensor]) -> Callable[[Tensor], Prediction]:
    """``x: T x N x x_dim`` -> a :class:`~bayesmeta.Prediction` whose ``mean`` is :func:`batched_forward`."""
    return lambda x: Prediction(batched_forward(net, params, x))


def tile(params: Mapping[str, Tensor], num_tasks: int, copy: bool = False) -> Params:
    """Each parameter along a new leading task axis: ``*shape`` -> ``num_tasks x *shape`` (a view; ``copy``: owned).

    >>> tile({"w": torch.ones(2, 3)}, 4)["w"].shape
    torch.Size([4, 2, 3])
    """
    stacked = {k: v.expand(num_tasks, *v.shape) for k, v in params.items()}
    return {k: v.clone() for k, v in stacked.items()} if copy else stacked


# ------------------------------------------------------------------------------------ networks and seeds
@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's CPU generator seeded by ``seed``; the global generator is restored after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def mlp(sizes: Sequence[int]) -> nn.Sequential:
    """``Linear`` layers of the given sizes with a ReLU between each two (drawn from torch's global generator).

    >>> mlp([2, 8, 1])
    Sequential(
      (0): Linear(in_features=2, out_features=8, bias=True)
      (1): ReLU()
      (2): Linear(in_features=8, out_features=1, bias=True)
    )
    """
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(sizes) - 2 else [])
    return nn.Sequential(*layers)


def maml_net(x_dim: int = 1, y_dim: int = 1, hidden: Sequence[int] = (40, 40), seed: int = 0) -> nn.Sequential:
    """The MAML paper's regression network: ``x_dim``-40-40-``y_dim`` with ReLU (Finn et al. 2017, §5.1).

    Seeded, so the same arguments build the same weights whatever torch's global generator holds.

    >>> net = maml_net()
    >>> [tuple(p.shape) for p in net.parameters()]
    [(40, 1), (40,), (40, 40), (40,), (1, 40), (1,)]
    """
    with seeded(seed):
        return mlp([x_dim, *hidden, y_dim])


def initial_parameters(net: nn.Module, seed: int) -> Params:
    """A freshly initialized copy of ``net``'s parameters: every submodule's ``reset_parameters()`` under ``seed``.

    Runs on a CPU copy (``net`` itself is untouched), so the values do not depend on the device or on torch's
    global generator. Parameters of modules without ``reset_parameters`` keep their current values. For
    :func:`maml_net` with the same seed it gives the same weights as a new ``maml_net``.

    >>> torch.equal(initial_parameters(maml_net(seed=3), seed=0)["0.weight"], maml_net(seed=0)[0].weight)
    True
    """
    fresh = copy.deepcopy(net).to("cpu")
    with seeded(seed):
        for module in fresh.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
    return {name: p.detach() for name, p in fresh.named_parameters()}


def check_net(net: Any) -> nn.Module:
    """``None`` -> :func:`maml_net`; otherwise an ``nn.Module`` with at least one parameter.

    >>> type(check_net(None)).__name__
    'Sequential'
    """
    if net is None:
        return maml_net()
    if not isinstance(net, nn.Module):
        raise TypeError(
            f"net: expected a torch.nn.Module (e.g. bayesmeta.baselines.maml_net()), got {type(net).__name__}")
    if not any(True for _ in net.parameters()):
        raise ValueError(f"net: expected a module with trainable parameters, got {type(net).__name__} with none")
    return net


def net_dims(net: nn.Module) -> tuple[int | None, int | None]:
    """``(x_dim, y_dim)`` of an ``nn.Sequential`` that starts and ends with ``nn.Linear``; ``None`` where unknown.

    >>> net_dims(maml_net(x_dim=3)), net_dims(nn.Tanh())
    ((3, 1), (None, None))
    """
    if isinstance(net, nn.Sequential) and len(net) and isinstance(net[0], nn.Linear) and isinstance(net[-1], nn.Linear):
        return net[0].in_features, net[-1].out_features
    return None, None


# ----------------------------------------------------------------------------------------- meta-training
def sample_batch(generator: torch.Generator, num_tasks: int, batch_tasks: int, keep_order: bool = True) -> Tensor:
    """The task indices of one meta-batch: ``batch_tasks`` distinct tasks drawn at random.

    When ``batch_tasks >= num_tasks`` every task is in the batch: with ``keep_order`` in order and without a
    draw (MAML's batches), otherwise in a random order (FineTune's and BlackBox's, whose seeded runs read the
    generator's next values).

    >>> sample_batch(torch.Generator().manual_seed(0), 10, 3).shape, sample_batch(torch.Generator(), 2, 3).tolist()
    (torch.Size([3]), [0, 1])
    """
    if keep_order and batch_tasks >= num_tasks:
        return torch.arange(num_tasks)
    if num_tasks <= _PERMUTE_UP_TO or 2 * batch_tasks >= num_tasks:
        return torch.randperm(num_tasks, generator=generator)[:batch_tasks]
    # A large pool (fresh tasks for every meta-batch, say): a permutation per step would cost O(num_tasks);
    # draw with replacement and redraw the repeats, O(batch_tasks), the same distribution.
    chosen = torch.randint(num_tasks, (batch_tasks,), generator=generator)
    while True:
        repeated = torch.zeros(batch_tasks, dtype=torch.bool)
        order = chosen.argsort(stable=True)
        repeated[order[1:]] = chosen[order[1:]] == chosen[order[:-1]]
        if not repeated.any():
            return chosen
        chosen[repeated] = torch.randint(num_tasks, (int(repeated.sum()),), generator=generator)


#: Up to this many tasks a meta-batch is the head of a fresh permutation (the seeded streams of earlier runs).
_PERMUTE_UP_TO = 2**16


FINITE_LOSS = "{name}: expected a finite loss, got {value} at step {step}; lower lr (got {lr}) or check the tasks " \
              "for extreme values"


def meta_train(params: list[Tensor], loss_fn: Callable[[Tensor, torch.Generator], Tensor], num_tasks: int,
               steps: int, batch_tasks: int, lr: float, seed: int, progress: bool, name: str, history: list[float],
               message: str = FINITE_LOSS, keep_order: bool = False) -> None:
    """Adam on ``loss_fn(task_indices, generator)``, one meta-batch (:func:`sample_batch`) per step.

    Args:
        params: what Adam updates.
        loss_fn: the scalar loss of a batch: ``batch_tasks`` task indices (CPU) and the seeded CPU generator
            the batches come from (for any further draws).
        num_tasks, steps, batch_tasks, lr, seed, progress: the meta-training protocol's arguments.
        name: the progress bar's label.
        history: receives each step's loss.
        message: the error for a non-finite loss, formatted with ``name``, ``value``, ``step`` and ``lr``.
        keep_order: passed to :func:`sample_batch`.
    """
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(params, lr=lr)
    bar = tqdm(range(steps), desc=name, unit="step", disable=not progress, dynamic_ncols=True)
    for step in bar:
        loss = loss_fn(sample_batch(gen, num_tasks, batch_tasks, keep_order), gen)
        value = check_finite(loss.item(), message, name=name, step=step, lr=lr)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.append(value)
        if step % 10 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{value:.4g}")


def check_finite(value: float, message: str, **fields: Any) -> float:
    """``value`` if finite; else ``FloatingPointError(message.format(value=value, **fields))``."""
    if not math.isfinite(value):
        raise FloatingPointError(message.format(value=value, **fields))
    return value


# --------------------------------------------------------------------------------------- argument checks
def is_int(value: Any) -> bool:
    """An ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_count(value: Any, name: str) -> int:
    """A non-negative int (``ValueError`` otherwise)."""
    if not is_int(value) or value < 0:
        raise ValueError(f"{name}: expected a non-negative int, got {value!r}")
    return value


def check_flag(value: Any, name: str) -> bool:
    """``True`` or ``False`` (``TypeError`` otherwise)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected True or False, got {type(value).__name__} {value!r}")
    return value


def check_values(value: Any, name: str, kind: str = "values") -> list:
    """A non-empty list (or tuple) of anything, or with ``kind="ints"`` of ints (``ValueError`` otherwise)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value \
            or (kind == "ints" and not all(is_int(v) for v in value)):
        raise ValueError(f"{name}: expected a non-empty list of {kind}, got {value!r}")
    return list(value)
