"""Benchmark: `mlenv sweep` (16 runs, 2 jobs) beside a sequential loop of `papermill` CLI calls.

Same machine, same run, same trivial notebook.  Goal: the sweep takes at most 0.5x the loop's wall
time, and mlenv's own overhead stays under 50 ms a run.  Also reports where a run's time goes
(kernel start / ready / shutdown vs cell execution vs mlenv) and what the spare kernels save.

    python bench/bench_sweep.py            # prints the table; main() returns the rows
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "tests" / "notebooks" / "trivial.ipynb"
RUNS, JOBS = 16, 2


def _timed(command: list[str], env: dict | None = None, cwd: Path | None = None) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env={**os.environ, **(env or {})}, cwd=cwd)
    return time.perf_counter() - started


def _papermill_loop(work: Path) -> float:
    papermill = shutil.which("papermill") or sys.exit("papermill CLI not found")
    started = time.perf_counter()
    for index in range(RUNS):
        subprocess.run([papermill, str(NOTEBOOK), str(work / f"pm-{index}.ipynb"), "-p", "x", str(index),
                        "-k", "python3", "--no-progress-bar"], check=True, capture_output=True)
    return time.perf_counter() - started


def _sweep_cli(work: Path, name: str, prestart: bool) -> float:
    values = ",".join(str(index) for index in range(RUNS))
    return _timed([sys.executable, "-m", "mlenv", "sweep", str(NOTEBOOK), "-p", f"x={values}", "--jobs", str(JOBS),
                   "-o", str(work / name)], env={"MLENV_SWEEP_PRESTART": "1" if prestart else "0"})


def _kernel_start() -> float:
    from jupyter_client.manager import start_new_kernel

    samples = []
    for _ in range(3):
        started = time.perf_counter()
        manager, client = start_new_kernel(kernel_name="python3", stderr=subprocess.DEVNULL)
        samples.append(time.perf_counter() - started)
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    return statistics.median(samples)


def _breakdown(work: Path) -> dict[str, float]:
    """One sweep in-process, to read each run's timings (ms per run, medians)."""
    from mlenv.sweep.config import resolve_options
    from mlenv.sweep.core import plan_sweep, run_sweep

    values = ",".join(str(index) for index in range(RUNS))
    options = resolve_options(str(NOTEBOOK), [f"x={values}"], output=str(work / "inproc"), jobs=JOBS)
    started = time.perf_counter()
    plan = plan_sweep(options)
    planned = time.perf_counter() - started
    result = run_sweep(options, plan=plan, live=False, console=_Quiet())
    wall = time.perf_counter() - started
    timings = list(result.timings.values())

    def median(fn) -> float:
        return statistics.median(fn(t) for t in timings) * 1000

    return {
        "wall_s": wall,
        "plan_ms": planned * 1000,
        "kernel_ready_ms": median(lambda t: t["execute"] - t["cells"]),
        "shutdown_ms": median(lambda t: t["shutdown"]),
        "kernel_wait_ms": median(lambda t: t["kernel_wait"]),
        "cells_ms": median(lambda t: t["cells"]),
        "mlenv_ms": median(lambda t: t["total"] - t["kernel_wait"] - t["execute"] - t["shutdown"] + t["publish"]),
        "fixed_mlenv_ms": (wall - planned - sum(t["total"] for t in timings) / JOBS) * 1000,
    }


class _Quiet:
    is_terminal = False

    def print(self, *args, **kwargs) -> None:
        pass


def main() -> list[dict]:
    work = Path(tempfile.mkdtemp(prefix="mlenv-bench-sweep-"))
    try:
        loop = _papermill_loop(work)
        sweep = _sweep_cli(work, "sweep", prestart=True)
        no_spare = _sweep_cli(work, "sweep-nospare", prestart=False)
        parts = _breakdown(work)
        kernel_start = _kernel_start()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = [
        {"benchmark": f"papermill CLI loop, {RUNS} runs sequential", "seconds": loop, "vs_loop": 1.0},
        {"benchmark": f"mlenv sweep, {RUNS} runs, {JOBS} jobs", "seconds": sweep, "vs_loop": sweep / loop},
        {"benchmark": f"mlenv sweep, {RUNS} runs, {JOBS} jobs, no spare kernels", "seconds": no_spare,
         "vs_loop": no_spare / loop},
    ]
    print(f"{'benchmark':<52} {'wall s':>8} {'x loop':>7}")
    for row in rows:
        print(f"{row['benchmark']:<52} {row['seconds']:>8.2f} {row['vs_loop']:>7.2f}")
    goal = "met" if rows[1]["vs_loop"] <= 0.5 else "MISSED"
    print(f"goal <= 0.50x the loop: {goal}")
    print()
    print("where a run's time goes (medians, ms per run, in-process sweep):")
    print(f"  kernel start, cold, alone ............... {kernel_start * 1000:7.0f}")
    print(f"  waiting for a kernel (spare ready) ...... {parts['kernel_wait_ms']:7.0f}")
    print(f"  kernel ready + message round trips ...... {parts['kernel_ready_ms']:7.0f}")
    print(f"  kernel shutdown ......................... {parts['shutdown_ms']:7.0f}")
    print(f"  cell execution .......................... {parts['cells_ms']:7.0f}")
    print(f"  mlenv per run (prepare, serialize, write) {parts['mlenv_ms']:7.0f}   goal < 50: "
          f"{'met' if parts['mlenv_ms'] < 50 else 'MISSED'}")
    print(f"  mlenv once per sweep (plan {parts['plan_ms']:.0f} ms; pool, results, report) "
          f"{parts['fixed_mlenv_ms']:.0f} ms")
    rows.append({"benchmark": "breakdown", **parts, "kernel_start_ms": kernel_start * 1000})
    return rows


if __name__ == "__main__":
    main()
