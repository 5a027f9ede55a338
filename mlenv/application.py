"""What every command shares, without typer: the ``Application`` and ``run``.

The ``Application`` carries what the common options said (``--spec``, ``--json``, ``--debug``), loads
the spec and the lock the first time a command asks for them, and is the one way commands print.
``run`` calls a command and maps what it raises to one message and a documented exit code (Ctrl-C:
130, SIGTERM: 143, ``MlenvError``: its own code).

`mlenv.cli` builds the typer app on top of both.  They live outside ``mlenv.cli`` because importing
that package loads typer, and typer loads pydantic to parse options (a fifth of a second on a busy
machine): the entry point runs the most frequent command, a plain `mlenv lock`, without them
(mlenv/_entry.py).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

from mlenv.errors import ExitCode, Interrupted, MlenvError

if TYPE_CHECKING:
    from rich.console import Console

    from mlenv.lock import Lock
    from mlenv.spec import Spec


class Application:
    """Options common to every command, the spec and lock on demand, and the output helpers.

    The console (rich) is imported on first output, not at startup: `mlenv lock` loads it while uv
    resolves (see ``mlenv.lock_command``)."""

    def __init__(self) -> None:
        self.spec_path: Path | None = None
        self.json = False

    @property
    def debug(self) -> bool:
        from mlenv import console

        return console.debug_enabled()

    @debug.setter
    def debug(self, enabled: bool) -> None:
        from mlenv import console

        console.set_debug(enabled)

    @cached_property
    def spec(self) -> Spec:
        """The validated mlenv.toml (``--spec``, or the nearest one at or above the current folder)."""
        from mlenv.spec import load_spec

        return load_spec(self.spec_path)

    @cached_property
    def lock(self) -> Lock:
        """The project's mlenv.lock; a missing or corrupt lock is a ``LockError`` (exit 4)."""
        from mlenv.lock import read_lock

        return read_lock(self.spec.root)

    # Output: results on stdout, people's messages on stderr, every message printed literally.
    @property
    def out(self) -> Console:
        from mlenv import console

        return console.out

    @property
    def err(self) -> Console:
        from mlenv import console

        return console.err

    def print_json(self, data: Any) -> None:
        from mlenv import console

        console.print_json(data)

    def status(self, message: str) -> None:
        from mlenv import console

        console.status(message)

    def success(self, message: str) -> None:
        from mlenv import console

        console.success(message)

    def warn(self, message: str) -> None:
        from mlenv import console

        console.warn(message)


# --- running a command ------------------------------------------------------------------------------

_terminated = False
_MAIN_PID = os.getpid()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    """SIGTERM runs the same cleanup as Ctrl-C (what completed is kept), then exits 143."""
    global _terminated
    if os.getpid() != _MAIN_PID:  # a forked worker inherited this handler: die as it would have
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    _terminated = True
    raise KeyboardInterrupt


def _interruption(exc: Interrupted | None = None) -> Interrupted:
    """The error to report after Ctrl-C or SIGTERM (exit 130 or 143)."""
    exc = exc or Interrupted("interrupted")
    if _terminated:
        exc.exit_code = ExitCode.TERMINATED
        exc.message = exc.message.replace("interrupted", "terminated (SIGTERM)", 1)
    return exc


def run(command: Callable[[], int], app: Application, *, wants_json: bool = False) -> NoReturn:
    """Run ``command`` (which returns its exit code) and exit: an ``MlenvError`` becomes its message
    (or its JSON with ``--json``) and its exit code, Ctrl-C exit 130, SIGTERM exit 143."""
    global _MAIN_PID
    _MAIN_PID = os.getpid()
    signal.signal(signal.SIGTERM, _on_sigterm)

    def fail(exc: MlenvError) -> NoReturn:
        from mlenv import console

        if app.json or wants_json:
            console.print_json(exc.to_json())
        console.error(exc.message, exc.hint)
        sys.exit(exc.exit_code)

    try:
        code = command()
    except Interrupted as exc:
        if app.debug:
            app.err.print_exception()
        fail(_interruption(exc))
    except MlenvError as exc:
        if app.debug:
            app.err.print_exception()
        fail(exc)
    except KeyboardInterrupt:
        fail(_interruption())
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").partition(".")[0]
        if not missing or missing == "mlenv":
            raise  # a module of mlenv itself: a broken install or a bug, shown in full
        if app.debug:
            app.err.print_exception()
        fail(_missing_module(missing))
    sys.exit(code)


def _missing_module(module: str) -> MlenvError:
    """A third-party module this command imports is not installed in mlenv's Python: what is missing where,
    and the fix (the usual case is a dev image or box built by an mlenv that installed fewer packages)."""
    from mlenv.errors import ToolMissingError

    argv = sys.argv[1:2]
    command = f"`mlenv {argv[0]}`" if argv and not argv[0].startswith("-") else "this command"
    return ToolMissingError(
        f"this mlenv cannot run {command}: the Python module {module!r} is not installed in {sys.prefix}",
        hint="a dev box or image made by an older mlenv: make it again with a current one (`mlenv up NAME` "
             "after `mlenv down NAME`, which deletes the box's workspace: copy out what you need first; "
             "`mlenv build --stage dev` for an image); elsewhere: reinstall mlenv with its dependencies")
