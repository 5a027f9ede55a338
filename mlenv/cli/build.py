"""`mlenv build`: build a target's image from the lock, tagged by content."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mlenv.cli import app, application
from mlenv.wording import counted


@app.command("build", json=True)
def build_command(
    ctx: typer.Context,
    target: Optional[str] = typer.Option(None, "--target", "-t", help="Lock target (default: the only linux target)."),
    stage: str = typer.Option("runtime", "--stage", help="Dockerfile stage: runtime (slim, with the code) or dev."),
    push: bool = typer.Option(False, "--push",
                              help="Push both tags to the registry named in \\[image] registry "
                                   "(ECR logins via boto3)."),
    force: bool = typer.Option(False, "--force", help="Build even when the content tag already exists."),
    no_cache: bool = typer.Option(False, "--no-cache",
                                  help="Rebuild every layer (implies --force; the uv cache still feeds installs)."),
    allow_stale: bool = typer.Option(False, "--allow-stale",
                                     help="Build from a lock that no longer matches mlenv.toml."),
    base_image: Optional[str] = typer.Option(None, "--base-image", help="Base image instead of the official one."),
    ca_bundle: Optional[Path] = typer.Option(None, "--ca-bundle", help="CA bundle passed as a BuildKit secret "
                                             "(default: $SSL_CERT_FILE, $REQUESTS_CA_BUNDLE or $PIP_CERT)."),
    network: Optional[str] = typer.Option(None, "--network",
                                          help="Network for RUN steps (e.g. host, to reach a loopback index)."),
    build_arg: list[str] = typer.Option([], "--build-arg",
                                        help="KEY=VALUE build argument (repeatable), e.g. MLENV_REQUIREMENT."),
) -> None:
    """Build the image of a lock target (skipped when its content tag exists; --force rebuilds)."""
    from mlenv.errors import UsageError
    from mlenv.image.build import build_target
    from mlenv.image.plan import image_targets

    args = parse_build_args(build_arg)
    mlenv = application(ctx)
    spec, lock = mlenv.spec, mlenv.lock
    if target is None:
        names = image_targets(spec, lock, None)
        if len(names) > 1:
            raise UsageError("the spec has several linux targets", hint=f"pick one with --target ({', '.join(names)})")
        target = names[0]

    display = _Display(mlenv.err)
    try:
        outcome = build_target(
            spec, lock, target, stage=stage, push_image=push, force=force, allow_stale=allow_stale,
            base_image=base_image, ca_bundle_path=str(ca_bundle) if ca_bundle else None, network=network,
            build_args=args, no_cache=no_cache, on_update=display.update,
        )
    finally:
        display.close()
    report = outcome.report
    if mlenv.json:
        mlenv.print_json({
            "target": target, "stage": outcome.stage, "tag": outcome.tag, "moving_tag": outcome.moving_tag,
            "image_id": outcome.image_id, "pushed_digest": outcome.pushed_digest,
            "skipped": outcome.skip_reason is not None, "skip_reason": outcome.skip_reason,
            "elapsed_s": round(report.elapsed, 2) if report else 0.0,
            "steps_run": report.ran() if report else [], "steps_cached": report.cached() if report else [],
        })
        return
    if outcome.dockerfile_updated:
        mlenv.status("Dockerfile regenerated from mlenv.lock")
    if outcome.skip_reason or report is None:
        mlenv.success(f"{outcome.tag} {outcome.skip_reason}; build skipped (--force rebuilds)")
    else:
        mlenv.success(f"built {outcome.tag} in {report.elapsed:.1f}s "
                        f"({counted(len(report.ran()), 'step')} run, {len(report.cached())} cached)")
    if outcome.pushed_digest:
        mlenv.success(f"pushed {outcome.tag}@{outcome.pushed_digest}")
    mlenv.out.print(outcome.tag, markup=False)


class _Display:
    """Build progress: a live line on a terminal (step, elapsed, cache hits), plain lines otherwise."""

    def __init__(self, err) -> None:
        import time

        self.err = err
        self.started = time.monotonic()
        self.finished: set[str] = set()
        self.live = None
        if err.is_terminal:
            from rich.status import Status

            self.live = Status("starting the build", console=err)
            self.live.start()

    def update(self, report, step) -> None:
        import time

        if step is None or not step.name.startswith("["):
            return
        elapsed = time.monotonic() - self.started
        cached = len(report.cached())
        if self.live is not None:
            from rich.text import Text

            # step names look like markup ("[deps 2/2] RUN ..."): always plain text
            self.live.update(Text.assemble(f"{elapsed:5.1f}s  {step.name[:90]}  ", (f"({cached} cached)", "dim")))
        if step.done and step.key not in self.finished:
            self.finished.add(step.key)
            how = "cached" if step.cached else (f"{step.seconds:.1f}s" if step.seconds is not None else "done")
            line = f"  {how:>7}  {step.name[:110]}"
            if self.live is not None:
                self.err.print(line, markup=False, highlight=False)
            else:
                print(line, file=self.err.file, flush=True)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()


def parse_build_args(items: list[str]) -> dict[str, str]:
    """``--build-arg KEY=VALUE`` options (of `mlenv build` and `mlenv up`) as a dict."""
    from mlenv.errors import UsageError

    args = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--build-arg {item!r} is not KEY=VALUE")
        args[key] = value
    return args
