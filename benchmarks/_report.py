"""What every benchmark page shares: progress lines, the machine it ran on, Markdown tables, an atomic write."""
from __future__ import annotations

import argparse
import datetime
import multiprocessing
import os
import platform
import shlex
import sys
import time
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pyro
import torch

import bayesmeta as bm
from bayesmeta._files import atomic_write

#: 1-minute load averages sampled at every progress message: other processes slow every timing.
LOADS: list[float] = []


def log(message: str) -> None:
    LOADS.append(os.getloadavg()[0])
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """``workers`` fresh (spawned) processes for independent parts of a page; the job sets its own torch threads."""
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


def gather(jobs: Sequence[Future], every: float = 30.0) -> list[Any]:
    """The results of worker-process ``jobs`` in their order, sampling the load average every ``every`` seconds
    while they run (the workers' own progress messages sample it in their processes, not in this one)."""
    while True:
        LOADS.append(os.getloadavg()[0])
        done, running = wait(jobs, timeout=every, return_when=FIRST_EXCEPTION)
        failed = [job for job in done if job.exception() is not None]
        if failed:  # say so now: the pool still waits for the other jobs before the error propagates
            log(f"a worker failed: {failed[0].exception()!r}; waiting for the other workers to end")
            failed[0].result()
        if not running:
            return [job.result() for job in jobs]


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool] | None = None) -> str:
    """A Markdown table with padded, aligned columns (``right[i]``: right-align column i)."""
    right = list(right) if right is not None else [False] + [True] * (len(headers) - 1)
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows)]
    widths = [max(w, 3) for w in widths]

    def line(cells: Sequence[str]) -> str:
        padded = [str(c).rjust(w) if r else str(c).ljust(w) for c, w, r in zip(cells, widths, right)]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ":" if r else ":" + "-" * (w + 1) for w, r in zip(widths, right)) + "|"
    return "\n".join([line(headers), rule] + [line(r) for r in rows])


def fmt(value: float, digits: int = 3) -> str:
    if value != value:  # NaN
        return "nan"
    return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.0f}"


def pm(stat: tuple[float, float] | None, digits: int = 3) -> str:
    """``mean ± se`` of a ``(mean, se)`` pair; '—' where there is none."""
    if stat is None:
        return "—"
    return f"{fmt(stat[0], digits)} ± {fmt(stat[1], 2)}"


def verdict(ok: bool) -> str:
    return "**MET**" if ok else "**NOT MET**"


@dataclass
class Row:
    """One method's line on a results page: its scores by number of shots (or context points)."""

    method: str
    scores: dict[int, Any]
    train_s: float | None
    note: str = ""


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def command_line() -> str:
    python = sys.executable
    try:
        rel = os.path.relpath(python)
        python = rel if not rel.startswith("..") else python
    except ValueError:
        pass
    return shlex.join([python] + sys.argv)


def machine_section(threads_note: str, own_load: int, busy_note: str = "") -> str:
    """The page's machine lines; ``own_load`` is the load the benchmark itself puts on the machine."""
    cores = os.cpu_count() or 1
    busy = max(LOADS) > cores + 0.5
    return "\n".join([
        f"* CPU: {cpu_model()}, {cores} cores; torch threads: {torch.get_num_threads()} ({threads_note}), "
        f"inter-op {torch.get_num_interop_threads()}",
        f"* Python {platform.python_version()}, torch {torch.__version__}, pyro {pyro.__version__}, "
        f"bayesmeta {bm.__version__}",
        f"* 1-minute load average during the run: {min(LOADS):.2f}–{max(LOADS):.2f} over {len(LOADS)} samples"
        + (f" — **above the {cores} cores: other processes competed for the CPU, so timings are inflated and "
           f"noisy{busy_note}**" if busy else f" (this benchmark alone loads about {own_load})"),
    ])


ROOT = Path(__file__).resolve().parents[1]
ONE_THREAD = "set to 1 by the script"


def page_args(doc: str, page: str, argv: Sequence[str] | None) -> tuple[bool, str]:
    """Every benchmark's command line: ``--quick`` and ``--out``; returns ``(quick, out)``, ``out`` a path or
    ``"-"`` (stdout, the default with ``--quick``; otherwise ``docs/<page>``)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run (< 1 min); numbers not meaningful")
    parser.add_argument("--out", default=None,
                        help=f"Markdown file to write ('-' for stdout); default docs/{page}, or stdout with --quick")
    args = parser.parse_args(argv)
    out = args.out if args.out is not None else ("-" if args.quick else str(ROOT / "docs" / page))
    return args.quick, out


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def page_header(title: str, script: str, quick: bool, date: str, wall: float, machine: str) -> list[str]:
    """The lines every page opens with: title, script, date and duration, the command, the machine."""
    return [
        f"# {title}",
        "",
        f"Written by `benchmarks/{script}`"
        + (" — **quick smoke run: tiny settings, the numbers mean nothing**" if quick else "")
        + f". Measured on {date} in {wall / 60:.1f} min with:",
        "",
        "```",
        command_line(),
        "```",
        "",
        machine,
    ]


def one_thread_machine() -> str:
    """``machine_section`` for the scripts that set torch to one thread and load about one core."""
    return machine_section(f"{ONE_THREAD}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}", 1)


def workers_machine(workers: int) -> str:
    """``machine_section`` for the scripts that run ``workers`` one-thread worker processes side by side."""
    return machine_section(f"set to 1 in each of the {workers} processes; OMP_NUM_THREADS="
                           f"{os.environ.get('OMP_NUM_THREADS')}", workers)


def write_page(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def publish(page: str, out: str, started: float) -> None:
    """Print the page (``out == "-"``) or write it atomically, and log the wall time since ``started``."""
    if out == "-":
        sys.stdout.write(page)
    else:
        write_page(out, page)
        log(f"wrote {out}")
    log(f"total wall time {time.perf_counter() - started:.0f} s")
