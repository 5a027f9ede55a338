"""The command-line shell: parses arguments, calls the domain packages, prints.

Only typer and rich are imported at startup; every command imports what it needs when it runs, so
`mlenv --help` stays fast.  Domain code never imports from here.
"""

from __future__ import annotations

import sys

import typer

from mlenv import __version__

app = typer.Typer(
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
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks (also MLENV_DEBUG=1)."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    from mlenv import console

    console.set_debug(debug)


def _register() -> None:
    # Each module adds its commands to `app`; importing them is cheap (typer only).
    from mlenv.cli import build, doctor, gen, init, lock, sweep, sync  # noqa: F401


_register()


def main() -> None:
    """Console-script entry point: maps errors to one message and a documented exit code."""
    try:  # recent typer vendors click; older releases use the click package
        from typer._click import exceptions as click_exceptions
    except ImportError:
        from click import exceptions as click_exceptions

    from rich.markup import escape

    from mlenv import console
    from mlenv.errors import MlenvError

    try:
        # standalone_mode=False: click returns typer.Exit codes instead of exiting, and lets our
        # errors through to be printed here
        code = app(standalone_mode=False)
    except MlenvError as exc:
        if console.debug_enabled():
            console.err.print_exception()
        # messages quote user input and tool output: never let rich read them as markup
        console.err.print(f"[red]error:[/] {escape(exc.message)}", highlight=False)
        if exc.hint:
            console.err.print(f"  [cyan]hint:[/] {escape(exc.hint)}", highlight=False)
        sys.exit(exc.exit_code)
    except click_exceptions.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        console.err.print("[red]interrupted[/]")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
