"""A sweep from options to results: plan, resume, run (locally or on Dask), record, report."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Callable

from rich.markup import escape

from mlenv.errors import ExitCode, Interrupted, SpecError, UsageError, did_you_mean
from mlenv.sweep.config import SweepOptions
from mlenv.sweep.execute import COMPLETED, NOT_RUN, RunOutcome, RunTask
from mlenv.sweep.metrics import extract_metrics
from mlenv.sweep.notebook import NotebookInfo, coerce, load_notebook
from mlenv.sweep.results import RunRecord, Summary, parse_sort
from mlenv.sweep.space import Run, expand
from mlenv.wording import counted

if TYPE_CHECKING:
    from mlenv.sweep.environment import LockedKernel, Project
    from mlenv.sweep.runner import Runner
    from mlenv.sweep.store import Store


@dataclass
class Plan:
    options: SweepOptions
    notebook: NotebookInfo
    runs: list[Run]
    store: Store
    locked: LockedKernel | None = None  # the kernel checked against mlenv.lock (None: no lock)
    project: Project | None = None  # (spec, lock, lock bytes) of a locked project, for checking Dask workers

    @property
    def kernel(self) -> str:
        return self.locked.kernel if self.locked else self.notebook.kernel

    @property
    def parameter_names(self) -> list[str]:
        return [axis.name for axis in self.options.axes]


@dataclass
class SweepResult:
    summary: Summary
    interrupted: str | None = None  # "Ctrl-C" or "SIGTERM" when the sweep was stopped
    timings: dict[str, dict[str, float]] = field(default_factory=dict)  # per run, for the benchmark


def plan_sweep(options: SweepOptions, warn=None) -> Plan:
    """Everything that can be wrong with the input is found here, before any kernel starts.

    In a locked project this includes the kernel's environment (see ``mlenv.sweep.environment``);
    ``warn(message)`` hears about drift allowed with ``allow_drift``.
    """
    from pathlib import Path

    from mlenv.sweep.environment import check_locked_kernel
    from mlenv.sweep.store import open_store

    info = load_notebook(options.notebook, options.kernel)
    names = [axis.name for axis in options.axes]
    if names and not info.has_parameters_cell:
        raise SpecError(f"{info.path.name} has no cell tagged 'parameters', so it takes no parameters",
                        path=info.location,
                        hint="in Jupyter: View > Cell Toolbar > Tags, add the tag 'parameters' to the cell "
                             "with the defaults")
    known = list(info.parameters)
    for name in names:
        if name not in info.parameters:
            listing = ", ".join(info.parameters[k].describe() for k in known) or "none"
            raise UsageError(f"{info.path.name} has no parameter {name!r} (known: {listing})",
                             hint=did_you_mean(name, known) or "parameters are the names assigned in the cell "
                                                               "tagged 'parameters'")
    runs = expand(options.axes, options.mode, samples=options.samples, seed=options.seed,
                  typer_fn=lambda name, value: coerce(info.parameters.get(name), value, name=name))
    parse_sort(options.sort)  # a malformed --sort fails now, not after the runs
    store = open_store(options.output_location())
    store.check()
    locked, project = check_locked_kernel(Path(info.folder), info.kernel, info.language,
                                          allow_drift=options.allow_drift, warn=warn or (lambda message: None),
                                          check_local=not options.cluster, spec_path=options.spec_path)
    return Plan(options, info, runs, store, locked, project)


def _resumable(plan: Plan, run: Run) -> RunRecord | None:
    text = plan.store.read_text(f"{run.run_id}.ipynb")
    if text is None:
        return None
    try:
        nb = json.loads(text)
    except ValueError:
        return None
    meta = nb.get("metadata", {}).get("mlenv", {})
    if meta.get("status") != COMPLETED or meta.get("notebook_sha256") != plan.notebook.sha256:
        return None  # failed, or made from another version of the notebook: run again
    return RunRecord(run.run_id, run.parameters, COMPLETED, metrics=extract_metrics(nb),
                     duration=nb.get("metadata", {}).get("papermill", {}).get("duration"),
                     attempts=meta.get("attempts", 1), output=f"{run.run_id}.ipynb",
                     resumed=True)


def make_runner(options: SweepOptions, plan: Plan | None = None,
                warn: Callable[[str], None] | None = None) -> Runner:
    if options.cluster:
        from mlenv.sweep.dask_runner import DaskRunner

        runner = DaskRunner(options.cluster)
        if plan is not None and plan.project is not None:
            from mlenv.sweep.environment import check_workers

            project, kernel = plan.project, plan.kernel
            runner.check_environment = lambda client: check_workers(
                client, project, kernel, allow_drift=options.allow_drift, warn=warn or (lambda message: None))
        return runner
    from mlenv.sweep.runner import LocalRunner

    return LocalRunner(options.jobs)


def run_sweep(options: SweepOptions, *, console=None, live: bool | None = None, runner: Runner | None = None,
              plan: Plan | None = None) -> SweepResult:
    """Run every planned run; write outputs as they finish and the results files at the end.

    Ctrl-C stops the runs in flight: outputs already written stay, the rest are recorded as not run,
    the results files are written, and ``Interrupted`` is raised (``--resume`` continues).
    """
    from mlenv.sweep.progress import SweepProgress

    if console is None:  # the CLI passes its own; domain code never imports mlenv.console
        from rich.console import Console

        console = Console(stderr=True, highlight=False, emoji=False)
    plan = plan or plan_sweep(options)
    records: dict[str, RunRecord] = {run.run_id: RunRecord(run.run_id, run.parameters) for run in plan.runs}
    if options.resume:
        for run in plan.runs:
            previous = _resumable(plan, run)
            if previous is not None:
                records[run.run_id] = previous
    todo = [run for run in plan.runs if not records[run.run_id].resumed]
    cwd = plan.notebook.folder
    tasks = [RunTask(run_id=run.run_id, parameters=run.parameters, notebook_text=plan.notebook.text,
                     notebook_sha256=plan.notebook.sha256, kernel=plan.kernel, cwd=cwd,
                     timeout=options.timeout, retries=options.retries) for run in todo]
    runner = runner or make_runner(options, plan, warn=lambda message: console.print(
        f"[yellow]warning:[/] {escape(message)}", highlight=False))
    result = SweepResult(summary=Summary(
        notebook=plan.notebook.path.name, kernel=plan.notebook.kernel, mode=options.mode,
        output=str(plan.store), parameter_names=plan.parameter_names, records=[], sort=parse_sort(options.sort),
        environment=dict(plan.locked.record) if plan.locked else {}))

    def finished(outcome: RunOutcome) -> None:
        publishing = time.perf_counter()
        record = records[outcome.run_id]
        with sigterm.held():  # a run is recorded whole: never "completed" without its output notebook
            record.status, record.attempts, record.error = outcome.status, outcome.attempts, outcome.error
            record.duration = outcome.duration
            if outcome.notebook is not None:
                name = f"{outcome.run_id}.ipynb"
                plan.store.write_text(name, outcome.notebook)
                record.output = name  # relative to the results folder, which may be moved or be s3://
                record.metrics = extract_metrics(json.loads(outcome.notebook))
        result.timings[outcome.run_id] = {**outcome.timings, "publish": time.perf_counter() - publishing}

    progress = SweepProgress(console, total=len(tasks), skipped=len(plan.runs) - len(tasks), live=live)

    def emit(event: tuple) -> None:
        if event[0] == "finished":
            finished(event[1])
        progress.handle(event)

    prepare = getattr(runner, "prepare", None)
    if plan.locked:
        plan.locked.activate()  # its temporary kernelspec, before the workers fork
    with SigtermAsInterrupt() as sigterm:
        try:
            if prepare is not None:
                prepare(tasks)
            with runner.hold(), progress:
                runner.run(tasks, emit)
        except KeyboardInterrupt as stop:
            result.interrupted = "SIGTERM" if isinstance(stop, Terminated) else "Ctrl-C"
        finally:
            if plan.locked:
                plan.locked.cleanup()
        result.summary.environment.update(getattr(runner, "environment", None) or {})
        sigterm.armed = False  # a SIGTERM from now on is noted, not raised: the results get written
        result.summary.records = [records[run.run_id] for run in plan.runs]
        write_results(plan.store, result.summary)
    if sigterm.fired and not result.interrupted:
        result.interrupted = "SIGTERM"
    if result.interrupted:
        done = sum(1 for record in result.summary.records if record.status != NOT_RUN)
        error = Interrupted(f"sweep stopped by {result.interrupted}: "
                            f"{done} of {counted(len(plan.runs), 'run')} finished, "
                            f"the rest are marked not-run in {result.summary.location('results.json')}",
                            hint="run the same command with --resume to finish it")
        if result.interrupted == "SIGTERM":
            error.exit_code = ExitCode.TERMINATED  # what a shell reports for a process ended by SIGTERM
        raise error
    return result


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be, so both stop a sweep the same way."""


class SigtermAsInterrupt:
    """While armed, SIGTERM stops the sweep like Ctrl-C (runs in flight stop, finished ones are kept);
    disarmed, it is only noted, so the results files are still written.  Main thread only."""

    def __init__(self) -> None:
        self.armed, self.fired = True, False
        self._previous: Callable[[int, FrameType | None], object] | int | None = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        first = not self.fired
        self.fired = True
        if self.armed and first:
            raise Terminated()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """SIGTERM waits for the block (it would land between two halves of one record), then stops the
        sweep as it would have."""
        armed, fired, self.armed = self.armed, self.fired, False
        try:
            yield
        finally:
            self.armed = armed
        if armed and self.fired and not fired:
            raise Terminated()

    def __enter__(self) -> SigtermAsInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def write_results(store: Store, summary: Summary) -> None:
    store.write_text("results.json", summary.to_json())
    store.write_text("results.csv", summary.to_csv())
    store.write_text("report.html", summary.to_html())
