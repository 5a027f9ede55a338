"""Shared helpers for the benchmarks in bench/: timing subprocesses fairly and printing tables.

Each benchmark module exposes ``main() -> list[Row]`` (it prints its own table) and can also be run
on its own (``python bench/bench_cli.py``).  ``bench/run.py`` puts this folder on ``sys.path``, so
``from common import ...`` works both ways.

Fairness rules the helpers enforce:
- cases are compared in the same run with interleaved repetitions (a b c a b c ...), so a slow
  moment of the machine or the network hits every case alike;
- the reported number is the median wall time, with min and max beside it;
- a case that fails (non-zero exit) aborts the benchmark instead of timing an error path.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

REPO = Path(__file__).resolve().parent.parent
QUICK_ENV = "MLENV_BENCH_QUICK"


def quick() -> bool:
    """True when the run asked for fewer repetitions (``run.py --quick`` sets the variable)."""
    return os.environ.get(QUICK_ENV, "") not in ("", "0")


def repetitions(full: int, fast: int) -> int:
    return fast if quick() else full


class Skip(Exception):
    """Raise from a benchmark that cannot run on this machine (no Docker engine, no GPU): run.py
    reports it as skipped with this message instead of failed."""


class BenchFailed(RuntimeError):
    """A measured command failed: its output is in the message so the reason is visible."""


@dataclass
class Row:
    """One measured case.  ``goal`` / ``ratio`` stay empty for baselines."""

    benchmark: str
    case: str
    samples: list[float] = field(default_factory=list)  # seconds
    note: str = ""
    goal: str = ""  # e.g. "<= 1.3x hello" or "< 100 ms"
    ratio: float | None = None
    met: bool | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def best(self) -> float:
        return min(self.samples)

    @property
    def worst(self) -> float:
        return max(self.samples)

    def as_dict(self) -> dict:
        return {
            "benchmark": self.benchmark,
            "case": self.case,
            "n": len(self.samples),
            "median_ms": round(self.median * 1000, 1),
            "min_ms": round(self.best * 1000, 1),
            "max_ms": round(self.worst * 1000, 1),
            "ratio": None if self.ratio is None else round(self.ratio, 2),
            "goal": self.goal,
            "met": self.met,
            "note": self.note,
        }


Command = Sequence[str]
Runner = Callable[[], float]


def run_timed(cmd: Command, *, cwd: Path | None = None, env: dict | None = None, ok_codes=(0,)) -> float:
    """Wall time in seconds of one subprocess run (output captured, not printed)."""
    start = time.perf_counter()
    result = subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode not in ok_codes:
        tail = (result.stderr or result.stdout).strip().splitlines()[-8:]
        raise BenchFailed(f"{' '.join(map(str, cmd))} exited {result.returncode}: " + " | ".join(tail))
    return elapsed


def command_runner(cmd: Command, *, cwd: Path | None = None, env: dict | None = None,
                   before: Callable[[], None] | None = None, ok_codes=(0,)) -> Runner:
    """A runner for ``interleave``; ``before`` runs untimed ahead of every repetition (e.g. cleanup)."""

    def run() -> float:
        if before is not None:
            before()
        return run_timed(cmd, cwd=cwd, env=env, ok_codes=ok_codes)

    return run


def interleave(cases: dict[str, Runner], repeat: int, warmup: int = 1) -> dict[str, list[float]]:
    """Run every case ``warmup`` times untimed, then ``repeat`` rounds of one run each, in turn."""
    for _ in range(warmup):
        for runner in cases.values():
            runner()
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeat):
        for name, runner in cases.items():
            samples[name].append(runner())
    return samples


def in_process(fn: Callable[[], object], repeat: int) -> list[float]:
    """Per-call wall times of a Python callable, after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f}" if seconds < 10 else f"{seconds * 1000:,.0f}"


def verdict(met: bool | None) -> str:
    if met is None:
        return ""
    return "[green]met[/]" if met else "[red]missed[/]"


def print_table(title: str, rows: list[Row], *, caption: str | None = None) -> None:
    """One rich table per benchmark: median/min/max in ms, ratio against the baseline, goal."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, caption=caption, title_justify="left", caption_justify="left")
    table.add_column("case")
    table.add_column("n", justify="right")
    table.add_column("median ms", justify="right")
    table.add_column("min ms", justify="right")
    table.add_column("max ms", justify="right")
    table.add_column("ratio", justify="right")
    table.add_column("goal")
    table.add_column("", justify="left")
    table.add_column("note", overflow="fold")
    for row in rows:
        table.add_row(
            row.case,
            str(len(row.samples)),
            fmt_ms(row.median),
            fmt_ms(row.best),
            fmt_ms(row.worst),
            "" if row.ratio is None else f"{row.ratio:.2f}x",
            row.goal,
            verdict(row.met),
            row.note,
        )
    console = Console()
    if not console.is_terminal:  # piped into a file: do not wrap at rich's default 80 columns
        console = Console(width=160)
    console.print(table)


def markdown_table(rows: list[Row]) -> str:
    """The same table as Markdown, for pasting into bench/README.md."""
    lines = ["| case | n | median ms | min ms | max ms | ratio | goal | result |",
             "|---|---:|---:|---:|---:|---:|---|---|"]
    for row in rows:
        ratio = "" if row.ratio is None else f"{row.ratio:.2f}x"
        result = "" if row.met is None else ("met" if row.met else "**missed**")
        lines.append(f"| {row.case} | {len(row.samples)} | {fmt_ms(row.median)} | {fmt_ms(row.best)} | "
                     f"{fmt_ms(row.worst)} | {ratio} | {row.goal} | {result} |")
    return "\n".join(lines)


def machine() -> str:
    """One line describing where the numbers came from."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()} ({sys.executable})")


def python() -> str:
    """The interpreter every subprocess case runs under: the one running the benchmark."""
    return sys.executable
