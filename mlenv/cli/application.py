"""The application object every command gets in ``ctx.obj`` (as hatch does with its ``Application``).

It carries what the common options said (``--spec``, ``--json``, ``--debug``), loads the spec and
the lock the first time a command asks for them, and is the one way commands print.  The common
options are declared once, here, and added to every command by ``Command``; a command asks for
``--json`` with ``@app.command(..., json=True)``.
"""

from __future__ import annotations

from functools import cache, cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from typer.core import TyperCommand

from mlenv import console

if TYPE_CHECKING:
    from mlenv.lock import Lock
    from mlenv.spec import Spec


class Application:
    """Options common to every command, the spec and lock on demand, and the output helpers."""

    def __init__(self) -> None:
        self.spec_path: Path | None = None
        self.json = False
        self.console = console

    @property
    def debug(self) -> bool:
        return console.debug_enabled()

    @debug.setter
    def debug(self, enabled: bool) -> None:
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
    def out(self):  # noqa: ANN201 - rich.console.Console, imported lazily by callers
        return console.out

    @property
    def err(self):  # noqa: ANN201
        return console.err

    def print_json(self, data: Any) -> None:
        console.print_json(data)

    def status(self, message: str) -> None:
        console.status(message)

    def success(self, message: str) -> None:
        console.success(message)

    def warn(self, message: str) -> None:
        console.warn(message)


def application(ctx: typer.Context) -> Application:
    """The application of a command's context (created by ``mlenv.cli.main``, or here for tests)."""
    return ctx.ensure_object(Application)


# --- the common options ---------------------------------------------------------------------------

# parameter name of each common option -> its flag and the Application attribute it sets
_COMMON = {"spec_path": ("--spec", "spec_path"), "json_output": ("--json", "json"), "debug": ("--debug", "debug")}


@cache
def _common_params() -> dict:
    """The common options as click parameters, built by typer itself (so they render like any other
    option and follow the installed typer's internals)."""
    from typer.main import get_command

    declared = typer.Typer()

    @declared.command()
    def options(
        spec_path: Optional[Path] = typer.Option(None, "--spec", help="Path to mlenv.toml (default: search upwards).",
                                                 rich_help_panel="Common options"),
        json_output: bool = typer.Option(False, "--json", help="Machine-readable output on stdout, also on failure.",
                                         rich_help_panel="Common options"),
        debug: bool = typer.Option(False, "--debug", help="Show tracebacks (also MLENV_DEBUG=1).",
                                   rich_help_panel="Common options"),
    ) -> None:
        pass

    return {param.name: param for param in get_command(declared).params}


class Command(TyperCommand):
    """A typer command that also takes the common options and hands them to the ``Application``."""

    common: tuple[str, ...] = ("spec_path", "debug")

    def __init__(self, *args: Any, params: list | None = None, **kwargs: Any) -> None:
        params = list(params or [])
        taken = {opt for param in params for opt in getattr(param, "opts", ())}
        # a command that still declares --spec/--json itself keeps its own option
        self.added = [name for name in self.common if _COMMON[name][0] not in taken]
        # ... and still fills the Application from it (e.g. --json, so failures print JSON)
        self.own = {param.name: attribute for param in params for flag, attribute in _COMMON.values()
                    if flag in getattr(param, "opts", ())}
        params += [_common_params()[name] for name in self.added]
        super().__init__(*args, params=params, **kwargs)

    def invoke(self, ctx: Any) -> Any:
        app = ctx.ensure_object(Application)
        for name in self.added:
            _apply(app, _COMMON[name][1], ctx.params.pop(name))
        for name, attribute in self.own.items():
            _apply(app, attribute, ctx.params.get(name))
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            from mlenv.errors import Interrupted

            raise Interrupted("interrupted") from None


def _apply(app: Application, attribute: str, value: Any) -> None:
    if value is None or value is False:  # not given: keep what the root options or defaults said
        return
    setattr(app, attribute, Path(value) if attribute == "spec_path" else value)


class JsonCommand(Command):
    common = ("spec_path", "json_output", "debug")


class NoSpecCommand(Command):
    """For commands that do not read mlenv.toml (``mlenv init``)."""

    common = ("debug",)


class Typer(typer.Typer):
    """``typer.Typer`` whose commands take the common options: ``@app.command("x", json=True)``."""

    def command(self, name: str | None = None, *, json: bool = False, spec: bool = True, **kwargs: Any) -> Any:
        if kwargs.get("cls") is None:
            kwargs["cls"] = JsonCommand if json else (Command if spec else NoSpecCommand)
        return super().command(name, **kwargs)
