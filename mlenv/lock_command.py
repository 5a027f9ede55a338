"""`mlenv lock` and `mlenv lock --check`: what they do and print, without typer.

`mlenv.cli.lock` parses the options and calls ``run_lock``; the entry point (mlenv/_entry.py) calls
it directly for a plain `mlenv lock`, the command people and CI run most, so that it does not pay
for loading typer and pydantic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mlenv.application import Application
from mlenv.wording import counted

if TYPE_CHECKING:
    from mlenv.lock import Lock, Pin


def run_lock(mlenv: Application, *, check: bool = False, upgrade: bool = False,
             upgrade_packages: tuple[str, ...] = ()) -> int:
    """Lock (or only check) the project; returns the exit code (errors are raised)."""
    from mlenv.errors import DriftError, UsageError
    from mlenv.lock import check_lock, lock_project
    from mlenv.lock.sources import moved_sources

    spec = mlenv.spec
    if check:
        for message in moved_sources(spec):
            mlenv.warn(message)
        if upgrade or upgrade_packages:
            raise UsageError("--check cannot be combined with --upgrade")
        changes = check_lock(spec, mlenv.lock)
        if mlenv.json:
            mlenv.print_json({
                "fresh": not changes,
                "changes": [{"target": c.target, "field": c.field, "detail": c.detail} for c in changes],
            })
            return DriftError.exit_code if changes else 0
        if changes:
            targets = sorted({c.target for c in changes})
            details = "\n".join(f"  {c}" for c in changes)
            raise DriftError(f"mlenv.lock is stale for {', '.join(targets)}:\n{details}", hint="run `mlenv lock`")
        mlenv.success(f"mlenv.lock is up to date ({counted(len(spec.targets), 'target')})")
        return 0

    def trace(text: str) -> None:  # uv's full output, with --debug
        if mlenv.debug:
            mlenv.err.print(text, markup=False, highlight=False)

    result = lock_project(spec, upgrade=upgrade, upgrade_packages=upgrade_packages, warn=mlenv.warn, trace=trace,
                          while_resolving=_load_report)
    for message in _nothing_to_upgrade(upgrade_packages, result.lock):
        mlenv.warn(message)
    if mlenv.json:
        mlenv.print_json({
            "resolved": result.resolved,
            "reused": result.reused,
            "updates": [_update_json(*update) for update in result.updates],
        })
        return 0
    from rich.table import Table
    from rich.text import Text

    table = Table("target", "platform", "accelerator", "packages", "status", box=None)
    for name, target in sorted(result.lock.targets.items()):
        status = "resolved" if name in result.resolved else "unchanged"
        table.add_row(Text(name), target.platform, target.accelerator, str(len(result.lock.packages_for(name))), status)
    mlenv.out.print(table)
    lines: list[Text] = []
    for changed, package, old, new in result.updates:
        if old is None:
            lines.append(Text.assemble("  ", ("+", "green"), f" {changed}: {package} {new}"))
        elif new is None:
            lines.append(Text.assemble("  ", ("-", "red"), f" {changed}: {package} {old}"))
        else:
            lines.append(Text.assemble("  ", ("~", "yellow"), f" {changed}: {package} {old} -> {new}"))
    if lines:  # one print: a first lock lists every package
        mlenv.out.print(Text("\n").join(lines))
    if result.resolved:
        mlenv.success(f"locked {', '.join(result.resolved)}; mlenv.lock and pylock files written")
    else:
        mlenv.success("mlenv.lock is up to date; nothing to resolve")
    return 0


def _nothing_to_upgrade(upgrade_packages: tuple[str, ...], lock: Lock) -> list[str]:
    """A warning for each --upgrade-package no target locks (uv passes a typo by in silence)."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    locked = {package.name for package in lock.packages}
    messages = []
    for wanted in upgrade_packages:
        try:
            name = canonicalize_name(Requirement(wanted).name)  # uv also takes NAME<VERSION
        except InvalidRequirement:
            continue  # uv said what is wrong with it
        if name not in locked:
            messages.append(f"--upgrade-package {wanted}: no target locks {name}, so nothing was upgraded "
                            "(check the spelling)")
    return messages


def _update_json(target: str, package: str, old: Pin | None, new: Pin | None) -> dict[str, Any]:
    """One update for --json: versions in "old" and "new"; a git dependency's full commits in "commit"."""
    entry: dict[str, Any] = {"target": target, "package": package, "old": old.version if old else None,
                             "new": new.version if new else None}
    commits = {"old": old.commit if old else None, "new": new.commit if new else None}
    if any(commits.values()):
        entry["commit"] = commits
    return entry


def _load_report() -> None:
    """Import what the report prints with (rich: tens of milliseconds) while uv resolves, on a core
    that would otherwise wait for it."""
    import rich.table  # noqa: F401

    from mlenv import console  # noqa: F401
