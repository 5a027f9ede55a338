"""The command-line shell: parses arguments, calls the domain packages, prints.

A new command is one module that registers itself below and reads everything through the
``Application`` in ``ctx.obj`` (``--spec``, ``--json`` and ``--debug`` are added for you)::

    from mlenv.cli import app, application

    @app.command("boxes", json=True)        # json=True adds --json; spec=False drops --spec
    def boxes_command(ctx: typer.Context, name: str = typer.Argument(...)) -> None:
        \"\"\"One line of help.\"\"\"
        mlenv = application(ctx)              # .spec and .lock load on first use
        result = do_the_work(mlenv.spec, mlenv.lock, warn=mlenv.warn)   # domain code takes callbacks
        if mlenv.json:
            return mlenv.print_json(result.to_json())   # failures print {"error": ...} by themselves
        mlenv.success(f"done: {result.name}")          # text is printed literally (no markup)

Errors are ``mlenv.errors.MlenvError`` subclasses: ``main`` prints them (or their JSON) and exits with
their ``ExitCode``.  Sub-groups use ``mlenv.cli.Typer`` so their commands get the common options.
Only typer and rich are imported at startup; every command imports what it needs when it runs, so
`mlenv --help` stays fast.  Domain code never imports from here.
"""

from __future__ import annotations

import sys

import typer

from mlenv import __version__
from mlenv.cli.application import Application, Command, JsonCommand, Typer, application

__all__ = ["Application", "Command", "JsonCommand", "Typer", "app", "application", "main"]

app = Typer(
    name="mlenv",
    help="One spec, one lock, and every place your ML code runs built from it and proven by it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"mlenv {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks (also MLENV_DEBUG=1)."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    if debug:
        application(ctx).debug = True


def _register() -> None:
    # Each module adds its commands to `app`; importing them is cheap (typer only).
    from mlenv.cli import boxes, build, ci, connect, doctor, gen, init, lock, sweep, sync  # noqa: F401


_register()


def main(args: list[str] | None = None) -> None:
    """Console-script entry point: maps errors to one message and a documented exit code."""
    try:  # recent typer vendors click; older releases use the click package
        from typer._click import exceptions as click_exceptions
    except ImportError:
        from click import exceptions as click_exceptions  # type: ignore[no-redef]

    from mlenv import console
    from mlenv.application import run
    from mlenv.errors import ExitCode

    argv = sys.argv[1:] if args is None else list(args)
    wants_json = "--json" in argv[: argv.index("--")] if "--" in argv else "--json" in argv
    mlenv = Application()

    def invoke() -> int:
        try:
            # standalone_mode=False: click returns typer.Exit codes instead of exiting, and lets our
            # errors through to `run`, which prints them
            code = app(args=argv, standalone_mode=False, obj=mlenv)
        except click_exceptions.ClickException as exc:
            if wants_json:
                console.print_json({"error": {"code": exc.exit_code, "message": exc.format_message(), "hint": None}})
            exc.show()
            return exc.exit_code
        except typer.Abort:
            raise KeyboardInterrupt from None
        if code == ExitCode.INTERRUPTED:  # typer turned a KeyboardInterrupt outside a command into Exit(130)
            raise KeyboardInterrupt
        return code if isinstance(code, int) else 0

    run(invoke, mlenv, wants_json=wants_json)
