"""One run: a fresh kernel, papermill's executor, and a classified outcome.  Runs in worker processes.

Everything here must be importable on a Dask worker that has the locked environment and mlenv, and
nothing in it touches the sweep's output folder: the executed notebook travels back to the process
that owns the results (the local sweep, or the Dask client) and is written there, atomically.

Each worker keeps one kernel started ahead of need ("spare"): a kernel takes ~0.5 s to start, and the
spare starts while the current notebook executes, so a run usually begins with a kernel that is
already up.  A spare is never reused: every run still gets a kernel no notebook has touched.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from mlenv.wording import counted

if TYPE_CHECKING:
    from jupyter_client.manager import KernelManager

COMPLETED, FAILED, TIMEOUT, DIED, START_FAILED, NOT_RUN, ERROR, STOPPED = (
    "completed", "failed", "timeout", "died", "start-failed", "not-run", "error", "stopped")
STATUSES = (COMPLETED, FAILED, TIMEOUT, DIED, STOPPED, START_FAILED, ERROR, NOT_RUN)
HISTORY_IN_MEMORY = "--HistoryManager.hist_file=:memory:"  # parallel kernels must not share one sqlite file


@dataclass
class RunTask:
    run_id: str
    parameters: dict[str, Any]
    notebook_text: str
    notebook_sha256: str
    kernel: str
    cwd: str | None = None
    timeout: float | None = None  # per cell, seconds
    retries: int = 1  # extra attempts when the kernel fails to start
    start_timeout: float = 60.0
    prestart: bool = True


@dataclass
class RunOutcome:
    run_id: str
    status: str
    attempts: int = 0
    duration: float | None = None  # papermill's notebook duration, seconds
    error: dict[str, Any] | None = None  # {cell, execution_count, ename, evalue}
    notebook: str | None = None  # the executed notebook (JSON text)
    timings: dict[str, float] = field(default_factory=dict)  # where the time went, for bench/


class KernelStartError(Exception):
    pass


@dataclass
class _Kernel:
    """A started kernel and the file its own stderr goes to."""

    manager: KernelManager
    log_path: str


# --- kernels ------------------------------------------------------------------------------------

_spare: dict[tuple[str, str | None], _Kernel] = {}


def _new_kernel(kernel: str, cwd: str | None) -> _Kernel:
    from jupyter_client.manager import KernelManager

    manager = KernelManager(kernel_name=kernel)
    # nbclient drives the kernel with asyncio; the manager itself stays synchronous so it can be
    # started ahead of time outside any event loop.
    manager.client_class = "jupyter_client.asynchronous.AsyncKernelClient"
    # The kernel's own stderr (its "running over TCP" banner, crash dumps) goes to a file, not over
    # the sweep's live display; its tail explains start failures and deaths.
    log = tempfile.NamedTemporaryFile("w+", prefix="mlenv-kernel-", suffix=".log", delete=False)
    try:
        manager.start_kernel(cwd=cwd or os.getcwd(), stdout=log, stderr=log, extra_arguments=[HISTORY_IN_MEMORY])
    except Exception as exc:
        log.close()
        _discard_log(log.name)
        raise KernelStartError(f"{type(exc).__name__}: {exc}") from exc
    finally:
        log.close()
    return _Kernel(manager, log.name)


def _take_kernel(kernel: str, cwd: str | None, prestart: bool) -> _Kernel:
    key = (kernel, cwd)
    started = _spare.pop(key, None)
    if started is None or not started.manager.is_alive():
        if started is not None:
            _stop_kernel(started)
        started = _new_kernel(kernel, cwd)
    if prestart:
        try:
            _spare[key] = _new_kernel(kernel, cwd)
        except KernelStartError:
            pass  # the next run starts its own and retries
    return started


def _stop_kernel(kernel: _Kernel) -> None:
    manager = kernel.manager
    try:
        if manager.has_kernel:
            manager.shutdown_kernel(now=True)
    except Exception:
        pass
    try:
        manager.cleanup_resources()
    except Exception:
        pass
    _discard_log(kernel.log_path)


def _kernel_log_tail(kernel: _Kernel, lines: int = 5) -> str:
    try:
        with open(kernel.log_path, encoding="utf-8", errors="replace") as handle:
            tail = [line.rstrip() for line in handle.read().splitlines() if line.strip()]
    except OSError:
        return ""
    tail = [line for line in tail if "running over TCP without encryption" not in line]
    return " | ".join(tail[-lines:])


def _discard_log(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def shutdown_spares() -> None:
    while _spare:
        _stop_kernel(_spare.popitem()[1])


# --- one run ------------------------------------------------------------------------------------

def _prepare(task: RunTask):
    import nbformat
    from papermill.parameterize import parameterize_notebook

    nb = nbformat.reads(task.notebook_text, as_version=4)
    for cell in nb.cells:  # papermill's cell lookups expect these keys
        cell.metadata.setdefault("tags", [])
    nb.metadata.setdefault("papermill", {})
    if task.parameters:
        from mlenv.sweep.notebook import papermill_quiet

        with papermill_quiet():
            nb = parameterize_notebook(nb, task.parameters, kernel_name=task.kernel)
    _announce_run_id(nb, task.run_id)
    return nb


RUN_ID_VARIABLE = "MLENV_SWEEP_RUN_ID"


def _announce_run_id(nb, run_id: str) -> None:
    """Tell the notebook its run id (``os.environ["MLENV_SWEEP_RUN_ID"]``), e.g. to name artifacts.

    Kernels are started before their run is known (spares), so the id cannot ride in the kernel's
    environment; it is set at the end of papermill's injected-parameters cell instead.
    """
    import nbformat

    language = (nb.metadata.get("kernelspec") or {}).get("language") or \
        (nb.metadata.get("language_info") or {}).get("name") or "python"
    if language != "python":
        return
    line = f'__import__("os").environ[{RUN_ID_VARIABLE!r}] = {run_id!r}  # mlenv sweep'
    for cell in nb.cells:
        if "injected-parameters" in cell.metadata.get("tags", []):
            cell.source = cell.source.rstrip("\n") + "\n" + line + "\n"
            return
    cell = nbformat.v4.new_code_cell(source=line + "\n")
    cell.metadata["tags"] = ["injected-parameters"]
    position = next((index + 1 for index, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])), 0)
    nb.cells.insert(position, cell)


def _running_cell(nb) -> int | None:
    """The cell execution stopped in: cells run in order, so the last one that left 'pending'."""
    started = [index for index, cell in enumerate(nb.cells)
               if cell.metadata.get("papermill", {}).get("status") not in (None, "pending")]
    return started[-1] if started else None


def _started_any_cell(nb) -> bool:
    return any(cell.metadata.get("papermill", {}).get("status") not in (None, "pending") for cell in nb.cells)


def _source_index(cells, index: int) -> int:
    """The cell's index in the user's notebook (papermill's injected and banner cells shifted it)."""
    return index - sum(1 for cell in cells[:index]
                       if {"injected-parameters", "papermill-error-cell-tag"} & set(cell.metadata.get("tags", [])))


def execute_run(task: RunTask, on_start: Callable[[str, int], None] | None = None) -> RunOutcome:
    """Execute one parameterized notebook; never raises for anything the notebook or kernel does."""
    import logging

    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.clientwrap import PapermillNotebookClient
    from papermill.engines import NotebookExecutionManager

    # Outcomes are recorded, not logged: nbclient's own messages would garble the live display.
    quiet = logging.getLogger("mlenv.sweep.nbclient")
    quiet.propagate = False
    quiet.addHandler(logging.NullHandler())
    if task.cwd and not os.path.isdir(task.cwd):
        # the notebook's folder on the sweep's machine; a remote worker starts kernels in its own
        task.cwd = None
    # nbclient counts whole seconds; round up so a run never gets less time than asked for
    cell_timeout = int(math.ceil(task.timeout)) if task.timeout else None
    began = time.perf_counter()
    # seconds: kernel_wait (getting a started kernel), execute (kernel ready + cells), shutdown, total
    timings = {"kernel_wait": 0.0, "execute": 0.0, "shutdown": 0.0}
    attempts = 0
    last_start_error = ""
    while attempts <= max(0, task.retries):
        attempts += 1
        if on_start:
            on_start(task.run_id, attempts)
        nb = _prepare(task)
        waited = time.perf_counter()
        try:
            kernel = _take_kernel(task.kernel, task.cwd, task.prestart)
        except KernelStartError as exc:
            last_start_error = str(exc)
            timings["kernel_wait"] += time.perf_counter() - waited
            continue
        timings["kernel_wait"] += time.perf_counter() - waited
        status: str = COMPLETED
        error: dict[str, str | int | None] | None = None  # the cell fields come from _cell_position
        stopped_in: int | None = None  # the cell a timeout, a dead kernel or an error stopped
        executing = time.perf_counter()
        nb_man = NotebookExecutionManager(nb, output_path=None, progress_bar=False, log_output=False)
        nb_man.notebook_start()
        try:
            client = PapermillNotebookClient(nb_man, km=kernel.manager, kernel_name=task.kernel,
                                             startup_timeout=int(math.ceil(task.start_timeout)),
                                             timeout=cell_timeout, log=quiet)
        except Exception:
            _stop_kernel(kernel)
            raise
        try:
            client.execute(cwd=task.cwd)
        except CellTimeoutError:
            stopped_in = _running_cell(nb)
            status, error = TIMEOUT, {"ename": "CellTimeoutError",
                                      "evalue": f"a cell ran longer than the {cell_timeout} s timeout"}
            error.update(_cell_position(nb, stopped_in))
        except DeadKernelError as exc:
            if not _started_any_cell(nb):
                last_start_error = f"kernel died while starting: {_kernel_log_tail(kernel) or exc}"
                status = START_FAILED
            else:
                stopped_in = _running_cell(nb)
                detail = _kernel_log_tail(kernel)
                status, error = DIED, {"ename": "DeadKernelError",
                                       "evalue": "the kernel died while running this cell"
                                                 + (f": {detail}" if detail else "")}
                error.update(_cell_position(nb, stopped_in))
        except Exception as exc:  # a kernel that never answered, or papermill trouble
            if not _started_any_cell(nb):
                detail = _kernel_log_tail(kernel)
                last_start_error = f"{type(exc).__name__}: {exc}" + (f" ({detail})" if detail else "")
                status = START_FAILED
            else:
                stopped_in = _running_cell(nb)
                status, error = ERROR, {"ename": type(exc).__name__, "evalue": str(exc)}
                error.update(_cell_position(nb, stopped_in))
        finally:
            nb_man.notebook_complete()
            stopping = time.perf_counter()
            timings["execute"] += stopping - executing
            _stop_kernel(kernel)
            timings["shutdown"] += time.perf_counter() - stopping
        if status == START_FAILED:
            continue
        if status == COMPLETED:
            status, error = _check_cells(nb)
        elif stopped_in is not None:
            add_banner(nb, stopped_in, _BANNERS[status])
        return _finish(task, nb, status, attempts, error, began, timings)
    error = {"ename": "KernelStartError",
             "evalue": f"the kernel did not start after {counted(attempts, 'attempt')}: "
                       f"{last_start_error}"}
    return RunOutcome(task.run_id, START_FAILED, attempts=attempts, error=error,
                      timings={**timings, "total": time.perf_counter() - began})


def _cell_position(nb, index: int | None) -> dict[str, int | None]:
    """Where a run stopped: the user's cell number and its In [N]."""
    if index is None:
        return {"cell": None, "execution_count": None}
    return {"cell": _source_index(nb.cells, index), "execution_count": nb.cells[index].get("execution_count")}


_BANNERS = {TIMEOUT: "The run timed out in this cell", DIED: "The kernel died while running this cell",
            ERROR: "Execution failed in this cell", STOPPED: "The notebook stopped itself here (sys.exit); "
                                                             "later cells did not run"}


def add_banner(nb, index: int, message: str) -> None:
    """papermill's failure banner (a note at the top linking to one before the cell), with ``message``."""
    import html

    import nbformat
    from papermill.execute import ERROR_MARKER_TAG, ERROR_STYLE

    count = nb.cells[index].get("execution_count")
    top = nbformat.v4.new_markdown_cell(
        f"<span {ERROR_STYLE}>{html.escape(message)}: "
        f"'<a href=\"#papermill-error-cell\">In [{count if count is not None else ' '}]</a>'.</span>")
    anchor = nbformat.v4.new_markdown_cell(
        f'<span id="papermill-error-cell" {ERROR_STYLE}>{html.escape(message)}:</span>')
    for cell in (top, anchor):
        cell.metadata["tags"] = [ERROR_MARKER_TAG]
    nb.cells.insert(index, anchor)
    nb.cells.insert(0, top)


_STDERR_ERROR = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning)): ?(.*)$")


def _error_from_outputs(cell) -> tuple[str, str] | None:
    """The error a cell printed when the kernel sent no error output (IPython's UsageError goes to stderr)."""
    found = None
    for output in cell.get("outputs", []):
        if output.get("output_type") == "error" and output.get("evalue"):
            return output["ename"], output["evalue"]
        if output.get("output_type") == "stream" and output.get("name") == "stderr":
            for line in str(output.get("text", "")).splitlines():
                match = _STDERR_ERROR.match(line.strip())
                if match:
                    found = (match.group(1), match.group(2))
    return found


def _check_cells(nb) -> tuple[str, dict | None]:
    """A run whose kernel finished: failed (papermill's rule, plus the message from the cell's own
    output when papermill has none), stopped early by sys.exit(), or completed."""
    from papermill.exceptions import PapermillExecutionError
    from papermill.execute import raise_for_execution_errors

    cells = list(nb.cells)  # papermill inserts its banner cells into nb
    try:
        raise_for_execution_errors(nb, None)
    except PapermillExecutionError as exc:
        ename, evalue = exc.ename, exc.evalue
        if not evalue:
            ename, evalue = _error_from_outputs(cells[exc.cell_index]) or (ename, evalue)
        return FAILED, {"ename": ename, "evalue": evalue, "cell": _source_index(cells, exc.cell_index),
                        "execution_count": exc.exec_count}
    pending = [index for index, cell in enumerate(cells) if cell.cell_type == "code"
               and cell.metadata.get("papermill", {}).get("status") == "pending"]
    if not pending:
        return COMPLETED, None
    last = max((index for index in range(pending[0]) if cells[index].cell_type == "code"), default=0)
    position = _cell_position(nb, last)
    later = counted(len(pending), "later cell")
    error = {"ename": "SystemExit",
             "evalue": f"the notebook called sys.exit() in cell {position['cell']}; {later} did not run",
             **position}
    add_banner(nb, last, _BANNERS[STOPPED])
    return STOPPED, error



def _finish(task: RunTask, nb, status: str, attempts: int, error, began: float, timings: dict) -> RunOutcome:
    import nbformat

    duration = nb.metadata.get("papermill", {}).get("duration")
    nb.metadata["mlenv"] = {
        "run_id": task.run_id,
        "parameters": task.parameters,
        "status": status,
        "error": error,
        "notebook_sha256": task.notebook_sha256,
        "attempts": attempts,
    }
    text = nbformat.writes(nb)
    timings["cells"] = sum(cell.metadata.get("papermill", {}).get("duration") or 0.0 for cell in nb.cells)
    timings["total"] = time.perf_counter() - began
    return RunOutcome(task.run_id, status, attempts=attempts, duration=duration, error=error,
                      notebook=text, timings=timings)
