"""`mlenv init`: write mlenv.toml from what the folder has and what this machine is."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from mlenv.cli import app, application
from mlenv.wording import counted


@app.command("init", spec=False)
def init_command(
    ctx: typer.Context,
    path: Path = typer.Option(Path("."), "--path", help="Folder to initialise (default: the current one)."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Accept the proposal without asking."),
    force: bool = typer.Option(False, "--force", help="Replace an existing mlenv.toml."),
    name: Optional[str] = typer.Option(None, "--name", help="Project name (default: pyproject name or folder name)."),
    python: Optional[str] = typer.Option(None, "--python", help="Python version, e.g. 3.11."),
    target: Optional[List[str]] = typer.Option(
        None, "--target", "-t", metavar="NAME=PLATFORM[:k=v,...]",
        help="A target instead of the proposed ones; repeatable. "
             "E.g. cpu=linux/x86_64  or  gpu=linux/x86_64:cuda=12.4,gpu=a10g,gpu-count=2 "
             "(keys: cuda, gpu, gpu-count, gpu-memory-min, cpu-min, ram-min).",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the proposed mlenv.toml instead of writing it."),
    refresh: bool = typer.Option(False, "--refresh", help="Re-import the dependencies into the existing mlenv.toml, "
                                 "keeping its targets, indexes and sections."),
) -> None:
    """Create mlenv.toml from requirements*.txt, pyproject.toml, environment.yml and this machine."""
    import sys

    if refresh:
        _refresh(application(ctx), path, dry_run)
        return

    from mlenv.init import check_writable, plan_init, write_plan

    mlenv = application(ctx)

    if not dry_run:
        check_writable(path, force)
    interactive = not yes and not dry_run and sys.stdin.isatty()
    plan = plan_init(path, name=name, python=python, targets=target or None)
    if interactive:
        new_name = typer.prompt("Project name", default=plan.name)
        new_python = typer.prompt("Python version", default=plan.python)
        if new_name != plan.name or new_python != plan.python:
            plan = plan_init(path, name=new_name, python=new_python, targets=target or None)
    _print_summary(plan, mlenv.err if dry_run else mlenv.out)
    if dry_run:
        mlenv.out.print(plan.text, markup=False, highlight=False, end="")
        return
    if interactive and not typer.confirm(f"Write {plan.path}?", default=True):
        mlenv.err.print("nothing written")
        raise typer.Exit(1)
    write_plan(plan, force=force)
    mlenv.success(f"wrote {plan.path}; next: review it, then run `mlenv lock`")
    import gc

    # the process ends here: its final collection would walk every object of a large requirements
    # file (0.3 s for 100k lines) only to find no cycles; frozen objects are skipped
    gc.freeze()


def _print_summary(plan, sink) -> None:
    """Tables of what was imported from where, the targets and why, and what was not imported.
    With --dry-run they go to stderr, so that `--dry-run > mlenv.toml` captures the spec alone."""
    from rich.table import Table
    from rich.text import Text

    files = Table(title="Imported", title_justify="left", show_edge=False)
    files.add_column("from")
    files.add_column("what")
    files.add_row("project", Text(f"name {plan.name!r} ({plan.name_origin}), "
                                  f"Python {plan.python} ({plan.python_origin})"))
    for source, what in plan.imported.summary:
        files.add_row(Text(source), Text(what))
    if not plan.imported.summary:
        files.add_row("-", "no requirements files, pyproject.toml or environment.yml: empty dependencies")
    sink.print(files)

    targets = Table(title="Targets", title_justify="left", show_edge=False)
    for column in ("name", "platform", "cuda", "gpu", "why"):
        targets.add_column(column)
    for target in plan.targets:
        gpu = (f"{target.gpu_count}x " if target.gpu_count else "") + (target.gpu or "")
        targets.add_row(target.name, target.platform, target.cuda or "-", gpu or "-", Text(target.reason))
    sink.print(targets)

    if plan.notes:
        notes = Table(title="Reported (not imported as-is)", title_justify="left", show_edge=False)
        notes.add_column("where")
        notes.add_column("what")
        for note in plan.notes:
            notes.add_row(Text(note.origin), Text(note.text))
        sink.print(notes)


def _refresh(mlenv, path: Path, dry_run: bool) -> None:
    import platform

    from rich.text import Text

    from mlenv.refresh import plan_refresh, write_refresh

    plan = plan_refresh(path, running_python=platform.python_version())
    sink = mlenv.err if dry_run else mlenv.out
    for change in plan.changes:
        sink.print(Text(f"  {change}"))
    for note in plan.notes:
        sink.print(Text(f"  note: {note.origin}: {note.text}"))
    if dry_run:
        mlenv.out.print(plan.text, markup=False, highlight=False, end="")
        return
    write_refresh(plan)
    what = counted(len(plan.changes), "dependency change") if plan.changes else "dependencies unchanged"
    mlenv.success(f"refreshed {plan.path} ({what}); targets and sections kept; next: `mlenv lock`")
