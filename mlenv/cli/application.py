"""The application object every command gets in ``ctx.obj`` (as hatch does with its ``Application``),
and the common options.

``Application`` itself lives in ``mlenv.application`` (typer-free, so the entry point can run a plain
`mlenv lock` without typer).  The common options are declared once, here, and added to every command
by ``Command``; a command asks for ``--json`` with ``@app.command(..., json=True)``.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any, Optional

import typer
from typer.core import TyperCommand

from mlenv.application import Application

__all__ = ["Application", "Command", "JsonCommand", "NoSpecCommand", "Typer", "application"]


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
        params = [*(params or []), *(_common_params()[name] for name in self.common)]
        super().__init__(*args, params=params, **kwargs)

    def invoke(self, ctx: Any) -> Any:
        app = ctx.ensure_object(Application)
        for name in self.common:
            _apply(app, _COMMON[name][1], ctx.params.pop(name))
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
