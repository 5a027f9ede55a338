"""Where runs execute.  A runner takes tasks and reports events; the sweep owns results and outputs.

The interface is small on purpose so other places to run fit behind it: ``LocalRunner`` (a process
pool on this machine), ``DaskRunner`` (an existing Dask cluster), and later a dev-box runner that
ships the sweep over SSH, runs a LocalRunner there, holds the box's keep-alive while it runs (see
``Runner.hold``), and streams the same events back.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import time
from typing import TYPE_CHECKING, Callable, Iterator, Protocol

from mlenv.sweep.execute import RunOutcome, RunTask

if TYPE_CHECKING:
    from multiprocessing.pool import Pool
    from multiprocessing.queues import Queue

# ("started", run_id, attempt) | ("finished", RunOutcome)
Event = tuple
EventSink = Callable[[Event], None]


class Runner(Protocol):
    name: str

    def run(self, tasks: list[RunTask], emit: EventSink) -> None:
        """Execute every task, calling ``emit`` from the calling thread; KeyboardInterrupt stops it."""

    def hold(self) -> contextlib.AbstractContextManager:
        """Held while the sweep runs: a dev-box runner keeps its box alive (keep-alive hook)."""


def default_jobs() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


# --- local process pool -------------------------------------------------------------------------

_events: Queue[Event] | None = None  # the worker's queue to the parent, set by _init_worker


def _init_worker(events: Queue[Event]) -> None:
    global _events
    from multiprocessing import util

    from mlenv.sweep.execute import shutdown_spares

    # Ctrl-C belongs to the parent, which stops the pool; a worker must not die halfway through
    # writing anything, and kernels run in their own sessions anyway.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The parent's SIGTERM handler (stop the sweep) is not for workers: the pool ends them with SIGTERM.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _events = events
    util.Finalize(None, shutdown_spares, exitpriority=10)


def _work(task: RunTask) -> RunOutcome:
    from mlenv.sweep.execute import ERROR, execute_run

    def started(run_id: str, attempt: int) -> None:
        assert _events is not None, "_init_worker gives every worker its queue"
        _events.put(("started", run_id, attempt, os.getpid()))

    try:
        return execute_run(task, on_start=started)
    except Exception as exc:  # a bug in mlenv must not take the other runs down
        return RunOutcome(task.run_id, ERROR, error={"ename": type(exc).__name__, "evalue": str(exc),
                                                     "cell": None, "execution_count": None})


class LocalRunner:
    name = "local"

    def __init__(self, jobs: int | None = None) -> None:
        self.jobs = jobs or default_jobs()
        self._pool: Pool | None = None
        self._events: Queue[Event] | None = None

    def hold(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def prepare(self, tasks: list[RunTask]) -> None:
        """Fork the workers now, before the live display starts its thread (fork + threads = trouble)."""
        import multiprocessing

        if not tasks or self._pool is not None:
            return
        workers = min(self.jobs, len(tasks))
        # Workers start a spare kernel for their next run; the last runs have no next run.
        # MLENV_SWEEP_PRESTART=0 turns spares off (for measuring them, or for kernels too big to double).
        prestart = os.environ.get("MLENV_SWEEP_PRESTART", "1") not in ("0", "false", "no")
        for position, task in enumerate(tasks):
            task.prestart = prestart and position < len(tasks) - workers
        # fork: workers inherit papermill already imported (~0.5 s each saved over spawn)
        context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
        self._events = context.Queue()
        self._pool = context.Pool(workers, initializer=_init_worker, initargs=(self._events,))

    def run(self, tasks: list[RunTask], emit: EventSink) -> None:
        if not tasks:
            return
        self.prepare(tasks)
        pool, events = self._pool, self._events
        assert pool is not None and events is not None, "prepare() forks the pool for any tasks"
        self._pool = None
        finished: queue.SimpleQueue[RunOutcome] = queue.SimpleQueue()
        running: dict[str, int] = {}  # run id -> worker pid
        done: set[str] = set()
        last_check = time.monotonic()
        lost_worker = False

        def forward(event: Event) -> None:
            if event[0] == "started":
                running[event[1]] = event[3]
            emit(event[:3] if event[0] == "started" else event)

        try:
            pending = len(tasks)
            for task in tasks:
                pool.apply_async(_work, (task,), callback=finished.put, error_callback=_on_crash(finished, task))
            while pending:
                for event in _drain(events):
                    forward(event)
                try:
                    outcome = finished.get(timeout=0.05)
                except queue.Empty:
                    # A pool never hears back from a worker that was killed (OOM killer, a notebook
                    # killing its parent): find such runs rather than wait for them forever.
                    if time.monotonic() - last_check > 1.0:
                        last_check = time.monotonic()
                        for run_id, pid in list(running.items()):
                            if not _alive(pid):
                                lost_worker = True
                                finished.put(_crashed(next(t for t in tasks if t.run_id == run_id),
                                                      WorkerDied(f"the worker process {pid} running it died")))
                                running.pop(run_id)
                    continue
                for event in _drain(events):  # "started" before "finished", even for quick runs
                    forward(event)
                if outcome.run_id in done:
                    continue
                done.add(outcome.run_id)
                running.pop(outcome.run_id, None)
                pending -= 1
                emit(("finished", outcome))
            if lost_worker:
                # the dead worker may have held the task queue's lock: closing would wait forever
                pool.terminate()
            else:
                pool.close()
                pool.join()
        except BaseException:
            pool.terminate()
            raise
        finally:
            events.close()


class WorkerDied(RuntimeError):
    pass


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except FileNotFoundError:
        return False
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _drain(events: Queue[Event]) -> Iterator[Event]:
    while True:
        try:
            yield events.get_nowait()
        except queue.Empty:
            return


def _on_crash(finished: queue.SimpleQueue[RunOutcome], task: RunTask) -> Callable[[BaseException], None]:
    """The pool's error callback for ``task``: the run is recorded as crashed, the sweep goes on."""
    return lambda exc: finished.put(_crashed(task, exc))


def _crashed(task: RunTask, exc: BaseException) -> RunOutcome:
    from mlenv.sweep.execute import ERROR

    return RunOutcome(task.run_id, ERROR, error={"ename": type(exc).__name__, "evalue": str(exc),
                                                 "cell": None, "execution_count": None})
