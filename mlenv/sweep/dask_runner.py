"""Runs on an existing Dask distributed cluster (``--cluster tcp://HOST:8786``).

Workers need mlenv with distributed, and a kernel of the notebook's environment (in a locked project
a kernelspec of the synced venv, see the README); nothing else is shared.  Each task carries the
notebook text and returns the executed notebook, so the client writes the same results layout as a
local sweep, wherever its output folder is (a local path or ``s3://``), and workers need no access to it.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from typing import TYPE_CHECKING, Callable

from mlenv.errors import ToolMissingError
from mlenv.sweep.execute import ERROR, RunOutcome, RunTask
from mlenv.sweep.runner import EventSink

if TYPE_CHECKING:
    from distributed import Client


def _remote(task: RunTask) -> RunOutcome:
    from mlenv.sweep.execute import execute_run

    try:
        return execute_run(task)
    except Exception as exc:
        return RunOutcome(task.run_id, ERROR, error={"ename": type(exc).__name__, "evalue": str(exc),
                                                     "cell": None, "execution_count": None})


def _require_distributed() -> None:
    """Before any run: --cluster needs the Dask client library here (workers need it too)."""
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise ToolMissingError("--cluster needs Dask's distributed package on this machine",
                               hint="pip install 'distributed' (or pip install 'mlenv[dask]'); "
                                    "the workers need it and mlenv too") from None


def _suspicious(keys: list[str], dask_scheduler=None) -> dict[str, int]:
    """On the scheduler: how often each task was running on a worker that died (then rescheduled)."""
    tasks = dask_scheduler.tasks
    return {key: getattr(tasks.get(key), "suspicious", 0) for key in keys}


def _reruns(client, key: str) -> int:
    try:
        return int(client.run_on_scheduler(_suspicious, [key]).get(key, 0))
    except Exception:  # an older scheduler without the count: the attempts stay as the run saw them
        return 0


class DaskRunner:
    name = "dask"

    def __init__(self, address: str, connect_timeout: float | None = None) -> None:
        self.address = address
        # client -> the record of what the workers run (a locked project); drift raises
        self.check_environment: Callable[[Client], dict[str, str]] | None = None
        self.environment: dict[str, str] = {}
        _require_distributed()
        self.connect_timeout = connect_timeout or float(os.environ.get("MLENV_DASK_CONNECT_TIMEOUT", "10"))

    def hold(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def _client(self) -> Client:
        from distributed import Client

        try:
            return Client(self.address, timeout=f"{self.connect_timeout}s", set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise ToolMissingError(f"cannot reach the Dask scheduler at {self.address}: {exc}",
                                   hint="start it with `dask scheduler` and workers with "
                                        f"`dask worker {self.address}` in the locked image") from None

    def run(self, tasks: list[RunTask], emit: EventSink) -> None:
        from distributed import as_completed

        if not tasks:
            return
        client = self._client()
        futures: dict = {}
        try:
            if not client.scheduler_info().get("workers"):
                try:
                    client.wait_for_workers(1, timeout=self.connect_timeout)
                except (TimeoutError, OSError):
                    hint = f"start some: `dask worker {self.address}` in the locked image"
                    raise ToolMissingError(f"the Dask cluster at {self.address} has no workers", hint=hint) from None
            if self.check_environment is not None:
                self.environment = self.check_environment(client)  # drift stops here, before any run
            token = uuid.uuid4().hex[:8]
            for task in tasks:
                task.prestart = False  # a long-lived worker must not keep an idle kernel around
            futures = {client.submit(_remote, task, key=f"mlenv-sweep-{task.run_id}-{token}", pure=False,
                                     retries=0): task for task in tasks}
            key_to_task = {future.key: task for future, task in futures.items()}
            started: set[str] = set()
            completed = as_completed(list(futures), loop=client.loop)
            last_poll = 0.0
            pending = len(futures)
            while pending:
                now = time.monotonic()
                if now - last_poll > 0.5:
                    last_poll = now
                    for keys in client.processing().values():
                        for key in keys:
                            running = key_to_task.get(key)
                            if running and running.run_id not in started:
                                started.add(running.run_id)
                                emit(("started", running.run_id, 1))
                batch = completed.next_batch(block=False) if completed.has_ready() else []
                if not batch:
                    time.sleep(0.05)
                    continue
                for future in batch:
                    pending -= 1
                    task = futures[future]
                    try:
                        outcome = future.result()
                    except Exception as exc:  # the worker process itself died
                        outcome = RunOutcome(task.run_id, ERROR, error={
                            "ename": type(exc).__name__, "evalue": f"the Dask worker failed: {exc}",
                            "cell": None, "execution_count": None})
                    reruns = _reruns(client, future.key)
                    if reruns:  # the scheduler ran it again after its worker died: each was an attempt
                        outcome.attempts = (outcome.attempts or 0) + reruns
                    if task.run_id not in started:
                        started.add(task.run_id)
                        emit(("started", task.run_id, outcome.attempts or 1))
                    emit(("finished", outcome))
        except BaseException:
            with contextlib.suppress(Exception):
                client.cancel(list(futures))  # runs already executing finish on their workers
            raise
        finally:
            with contextlib.suppress(Exception):
                client.close()

