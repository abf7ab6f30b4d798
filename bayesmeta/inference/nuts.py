r"""NUTS chains that keep their per-draw statistics, run one after another or in parallel processes.

Pyro's ``MCMC`` keeps the draws and, per chain, the divergences and the mean acceptance rate; ArviZ's
energy plot and BFMI need more: the Hamiltonian of each transition, its tree depth, step size and
acceptance probability. :class:`RecordingNUTS` records them as it samples, and :func:`run_nuts` runs
chains on separate CPU cores where it can (each chain is one process: NUTS trajectories have
data-dependent lengths, so chains cannot share one vectorized program).
"""
from __future__ import annotations

import math
import multiprocessing
import os
import queue as queue_module
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import pyro
import torch
from pyro.infer import MCMC, NUTS
from torch import Tensor
from tqdm.auto import tqdm

__all__ = ["RecordingNUTS", "NutsRun", "run_nuts", "SAMPLE_STATS"]

#: The per-draw statistics recorded, in ArviZ's names.
SAMPLE_STATS = ("lp", "energy", "step_size", "tree_depth", "n_steps", "acceptance_rate", "diverging")


class RecordingNUTS(NUTS):
    r"""Pyro's NUTS, recording ArviZ's ``sample_stats`` for every draw after warm-up.

    ``energy`` is the Hamiltonian :math:`H = U(q) + K(p)` at the start of each transition, with the momentum
    just resampled (Betancourt 2016, "Diagnosing suboptimal cotangent disintegrations in Hamiltonian
    Monte Carlo": the energy distribution whose spread BFMI compares with that of its changes); ``lp`` is
    :math:`-U` of the draw (the log joint density in the unconstrained space, up to a constant);
    ``acceptance_rate`` the mean acceptance probability over the trajectory's proposals; ``n_steps`` the
    leapfrog steps and ``tree_depth`` the number of doublings.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stats: dict[str, list] = {name: [] for name in SAMPLE_STATS}

    def _sample_r(self, name: str) -> Any:
        r, r_unscaled = super()._sample_r(name)
        self._energy = float(self._kinetic_energy(r_unscaled) + self._potential_energy_last)
        return r, r_unscaled

    def _build_basetree(self, *args: Any, **kwargs: Any) -> Any:
        self._n_steps += 1
        return super()._build_basetree(*args, **kwargs)

    def sample(self, params: dict[str, Tensor]) -> dict[str, Tensor]:
        mean_before, divergences_before = self._mean_accept_prob, len(self._divergences)
        self._n_steps, self._energy = 0, math.nan
        z = super().sample(params)
        if self._t <= self._warmup_steps:
            return z
        n = self._t - self._warmup_steps  # the running mean's count (it restarts after warm-up)
        accept = mean_before + (self._mean_accept_prob - mean_before) * n
        record = {
            "lp": -float(self._potential_energy_last), "energy": self._energy, "step_size": float(self.step_size),
            "tree_depth": self._n_steps.bit_length(), "n_steps": self._n_steps, "acceptance_rate": accept,
            "diverging": len(self._divergences) > divergences_before,
        }
        for name, value in record.items():
            self.stats[name].append(value)
        return z


@dataclass
class NutsRun:
    """Draws and statistics of ``num_chains`` NUTS chains.

    Attributes:
        samples: site name -> ``num_chains x num_samples x *site_shape`` draws.
        sample_stats: name -> ``num_chains x num_samples`` (see :data:`SAMPLE_STATS`).
        seconds: wall time of the sampling.
    """

    samples: dict[str, Tensor]
    sample_stats: dict[str, Tensor]
    seconds: float = 0.0

    @property
    def divergences(self) -> dict[str, list[int]]:
        """Pyro's convention: ``{"chain c": [indices of divergent draws]}``."""
        diverging = self.sample_stats["diverging"]
        return {f"chain {c}": torch.nonzero(row).flatten().tolist() for c, row in enumerate(diverging)}


def _one_chain(
    model: Callable[..., None], args: tuple, kernel_options: dict[str, Any], num_samples: int, warmup_steps: int,
    seed: int, tick: Callable[[], None] | None,
) -> tuple[dict[str, Tensor], dict[str, list]]:
    pyro.set_rng_seed(seed)
    kernel = RecordingNUTS(model, **kernel_options)
    hook = (lambda *_: tick()) if tick is not None else None
    mcmc = MCMC(kernel, num_samples=num_samples, warmup_steps=warmup_steps, num_chains=1, disable_progbar=True,
                hook_fn=hook)
    with warnings.catch_warnings():
        # jit_compile=True is Pyro's torch.jit.trace of the potential, which torch 2.x marks deprecated; it
        # still halves the time per NUTS step here, and the user asked for it.
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace.*deprecated", category=DeprecationWarning)
        mcmc.run(*args)
    return {name: value.detach() for name, value in mcmc.get_samples().items()}, kernel.stats


def _worker(job: tuple, results: Any, ticks: Any) -> None:
    chain, model, args, kernel_options, num_samples, warmup_steps, seed = job
    torch.set_num_threads(1)
    try:
        samples, stats = _one_chain(model, args, kernel_options, num_samples, warmup_steps, seed, lambda: ticks.put(1))
        results.put((chain, {k: v.numpy() for k, v in samples.items()}, stats, None))
    except BaseException as error:  # noqa: BLE001 - reported to the parent, which re-raises
        results.put((chain, None, None, f"{type(error).__name__}: {error}"))


def run_nuts(
    model: Callable[..., None],
    args: tuple,
    num_samples: int,
    warmup_steps: int,
    num_chains: int = 1,
    seed: int = 0,
    progress: bool = False,
    parallel: bool | None = None,
    desc: str = "nuts",
    **kernel_options: Any,
) -> NutsRun:
    """Run ``num_chains`` chains of :class:`RecordingNUTS` on ``model(*args)``; chain ``c`` is seeded ``seed + c``.

    Args:
        parallel: one process per chain (forked; up to the number of CPU cores). Default: when there is more
            than one chain and more than one core, and the model lives on the CPU.
        progress: one tqdm bar over all chains' iterations.
        **kernel_options: passed to NUTS (``jit_compile``, ``target_accept_prob``, ``init_strategy``, ...).

    The same seed gives the same draws whether the chains run in parallel or one after another.
    """
    cores = os.cpu_count() or 1
    on_cpu = all(t.device.type == "cpu" for t in _tensors(model))
    if parallel is None:
        parallel = num_chains > 1 and cores > 1 and on_cpu
    total = num_chains * (num_samples + warmup_steps)
    bar = tqdm(total=total, desc=desc, unit="it", disable=not progress, dynamic_ncols=True)
    start = time.perf_counter()
    try:
        if parallel:
            chains = _run_parallel(model, args, kernel_options, num_samples, warmup_steps, num_chains, seed, bar,
                                   min(num_chains, cores))
        else:
            chains = [_one_chain(model, args, kernel_options, num_samples, warmup_steps, seed + c, lambda: bar.update(1))
                      for c in range(num_chains)]
    finally:
        bar.close()
    samples = {name: torch.stack([torch.as_tensor(c[0][name]) for c in chains]) for name in chains[0][0]}
    stats = {
        name: torch.tensor([c[1][name] for c in chains], dtype=torch.bool if name == "diverging" else None)
        for name in SAMPLE_STATS
    }
    return NutsRun(samples, stats, time.perf_counter() - start)


def _run_parallel(model, args, kernel_options, num_samples, warmup_steps, num_chains, seed, bar, workers):
    context = multiprocessing.get_context("fork")
    results, ticks = context.Queue(), context.Queue()
    pending = list(range(num_chains))
    running: dict[int, Any] = {}
    out: dict[int, tuple] = {}
    while pending or running:
        while pending and len(running) < workers:
            chain = pending.pop(0)
            job = (chain, model, args, kernel_options, num_samples, warmup_steps, seed + chain)
            running[chain] = context.Process(target=_worker, args=(job, results, ticks), daemon=True)
            running[chain].start()
        try:
            chain, samples, stats, error = results.get(timeout=0.2)
        except queue_module.Empty:
            _drain(ticks, bar)
            dead = [c for c, p in running.items() if not p.is_alive() and p.exitcode not in (0, None)]
            if dead:
                raise RuntimeError(f"run_nuts: the process of chain {dead[0]} died (exit code "
                                   f"{running[dead[0]].exitcode})")
            continue
        process = running.pop(chain)
        while process.is_alive():  # it may still be flushing progress ticks into the pipe
            _drain(ticks, bar)
            process.join(0.05)
        if error is not None:
            for process in running.values():
                process.terminate()
            raise RuntimeError(f"run_nuts: chain {chain} failed: {error}")
        out[chain] = (samples, stats)
    _drain(ticks, bar)
    return [out[c] for c in range(num_chains)]


def _drain(ticks: Any, bar: tqdm) -> None:
    count = 0
    while True:
        try:
            ticks.get_nowait()
        except queue_module.Empty:
            break
        count += 1
    if count:
        bar.update(count)


def _tensors(model: Any) -> list[Tensor]:
    if isinstance(model, torch.nn.Module):
        return [*model.parameters(), *model.buffers()]
    inner = getattr(model, "fn", None)  # poutine handlers wrap the model
    return _tensors(inner) if inner is not None else []
