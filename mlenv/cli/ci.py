"""`mlenv ci init`: CI workflows built from the lock."""

from __future__ import annotations

import sys

import typer

from mlenv.cli import Typer, app, application
from mlenv.wording import counted

ci_app = Typer(help="CI workflows that test in the locked environment.", no_args_is_help=True)
app.add_typer(ci_app, name="ci")


@ci_app.command("init")
def ci_init(
    ctx: typer.Context,
    provider: str = typer.Option("github", "--provider", help="CI system: github (.github/workflows/mlenv.yml)."),
    force: bool = typer.Option(False, "--force", help="Replace a workflow that was edited by hand."),
    check: bool = typer.Option(False, "--check", help="Write nothing; exit 1 when the workflow is out of date."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the workflow instead of writing it."),
) -> None:
    """Write GitHub Actions workflows: lock check, one image per lock, tests and notebooks in that image."""
    from mlenv import ci
    from mlenv.errors import DriftError

    mlenv = application(ctx)
    spec = mlenv.spec
    files = ci.init(spec, mlenv.lock, provider=provider, force=force, check=check or dry_run, warn=mlenv.warn)
    if not (check or dry_run):  # the workflow installs the committed wheel (`gen --check` holds it to this mlenv)
        files.append(ci.write_wheel(spec, warn=mlenv.warn))
    for workflow in files:
        if dry_run:
            sys.stdout.write(workflow.text)
            continue
        shown = workflow.path.relative_to(spec.root)
        mlenv.out.print(f"  {workflow.status:>9}  {shown}", markup=False)
        if workflow.status == "kept":
            mlenv.warn(f"{shown} was edited by hand; left as it is (`mlenv ci init --force` replaces it)")
    if check:
        stale = [f for f in files if f.status == "stale"]
        if stale:
            raise DriftError(f"{counted(len(stale), 'workflow')} out of date with mlenv.toml and mlenv.lock",
                             hint="run `mlenv ci init` and commit the result")
        mlenv.success("workflows are up to date")
