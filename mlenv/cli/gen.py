"""`mlenv gen dockerfile|devcontainer|all`: files that build and run images from the lock."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mlenv.cli import Typer, app, application
from mlenv.wording import counted

gen_app = Typer(
    help="Generate a Dockerfile, .devcontainer/devcontainer.json and .dockerignore from mlenv.lock.",
    no_args_is_help=True,
)
app.add_typer(gen_app, name="gen")

_TARGET = typer.Option(None, "--target", "-t", help="Lock target (default: every linux target).")
_BASE = typer.Option(None, "--base-image", help="Base image instead of the official one (mirror, private registry).")
_CA = typer.Option(None, "--ca-bundle", help="CA bundle PEM the devcontainer build passes as a BuildKit secret.")
_CHECK = typer.Option(False, "--check", help="Write nothing; exit 1 when a generated file is out of date.")
_RESOLVE = typer.Option(True, "--resolve-digest/--no-resolve-digest",
                        help="Pin the base image by its registry digest (needs a reachable engine and registry).")
_REFRESH = typer.Option(False, "--refresh-base",
                        help="Look the base image digest up again instead of reusing the one in mlenv.lock.")
_FORCE = typer.Option(False, "--force", help="Replace a Dockerfile or devcontainer.json that mlenv did not write.")


def _generate(ctx: typer.Context, what: str, target, base_image, ca_bundle, check: bool, resolve: bool,
              refresh: bool, force: bool) -> None:
    from mlenv.errors import DriftError
    from mlenv.gen import generate
    from mlenv.image.registry import digest_resolver
    from mlenv.lock import check_lock

    mlenv = application(ctx)
    spec, lock = mlenv.spec, mlenv.lock
    stale = check_lock(spec, lock)
    if stale:
        mlenv.warn(f"mlenv.lock is stale ({stale[0].detail}); files follow the lock as it is — run `mlenv lock`")
    result = generate(spec, lock, what, target=target, base_image=base_image,
                      ca_bundle=str(Path(ca_bundle).resolve()) if ca_bundle else None,
                      resolve_digest=digest_resolver(mlenv.status) if resolve and not check else None,
                      refresh=refresh and resolve, check=check, force=force)
    for generated in result.files:
        shown = generated.path.relative_to(spec.root) if generated.path.is_relative_to(spec.root) else generated.path
        mlenv.out.print(f"  {generated.status:>9}  {shown}", markup=False)
    for note in result.notes:
        mlenv.warn(note)
    for plan in result.plans.values():
        pin = f"@{plan.base_digest[:19]}…" if plan.base_digest else " (tag only: no registry digest)"
        mlenv.status(f"{plan.target}: base {plan.base_ref}{pin}")
    if check:
        if result.stale():
            raise DriftError(f"{counted(len(result.stale()), 'generated file')} out of date",
                             hint=f"run `mlenv gen {what}`")
        mlenv.success("generated files are up to date")


@gen_app.command("dockerfile")
def gen_dockerfile(ctx: typer.Context, target: Optional[str] = _TARGET, base_image: Optional[str] = _BASE,
                   check: bool = _CHECK, resolve: bool = _RESOLVE, refresh: bool = _REFRESH,
                   force: bool = _FORCE) -> None:
    """Dockerfile with deps/dev/runtime stages (and .dockerignore unless one exists)."""
    _generate(ctx, "dockerfile", target, base_image, None, check, resolve, refresh, force)


@gen_app.command("devcontainer")
def gen_devcontainer(ctx: typer.Context, target: Optional[str] = _TARGET, base_image: Optional[str] = _BASE,
                     ca_bundle: Optional[Path] = _CA, check: bool = _CHECK, resolve: bool = _RESOLVE,
                     refresh: bool = _REFRESH, force: bool = _FORCE) -> None:
    """.devcontainer/devcontainer.json building the dev stage (one per target when there are several)."""
    _generate(ctx, "devcontainer", target, base_image, ca_bundle, check, resolve, refresh, force)


@gen_app.command("all")
def gen_all(ctx: typer.Context, target: Optional[str] = _TARGET, base_image: Optional[str] = _BASE,
            ca_bundle: Optional[Path] = _CA, check: bool = _CHECK, resolve: bool = _RESOLVE,
            refresh: bool = _REFRESH, force: bool = _FORCE) -> None:
    """Dockerfile, devcontainer and .dockerignore together."""
    _generate(ctx, "all", target, base_image, ca_bundle, check, resolve, refresh, force)
