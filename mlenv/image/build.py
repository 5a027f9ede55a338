"""`mlenv build`: a target's image from the lock, tagged by its content, optionally pushed."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mlenv.errors import BuildError, LockError, UsageError
from mlenv.fsutil import atomic_write, sha256_file
from mlenv.image.buildkit import CA_SECRET_ID, BuildReport, BuildRequest, Step, ca_bundle, find_builder, run_build
from mlenv.image.engine import connect, local_image
from mlenv.image.plan import plan_image, record_base_image
from mlenv.image.registry import push, registry_digest, registry_host, remote_exists, split_ref
from mlenv.selfwheel import write_wheel


def source_hash(context: Path, dockerfile: Path) -> str:
    """sha256 over the files the build context sends (``.dockerignore`` applied), names and bytes."""
    import hashlib

    from docker.utils.build import exclude_paths

    ignore = context / ".dockerignore"
    patterns = []
    if ignore.is_file():
        lines = ignore.read_text().splitlines()
        patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    digest = hashlib.sha256()
    for relative in sorted(exclude_paths(str(context), patterns, dockerfile=str(dockerfile.relative_to(context)))):
        path = context / relative
        if path.is_file() and not path.is_symlink():
            digest.update(relative.encode() + b"\0")
            with open(path, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
            digest.update(b"\0")
    return digest.hexdigest()


@dataclass
class BuildOutcome:
    tag: str
    moving_tag: str
    stage: str
    skip_reason: str | None = None  # why no build ran ("exists locally", "exists in the registry")
    report: BuildReport | None = None
    image_id: str | None = None
    pushed_digest: str | None = None
    dockerfile_updated: bool = False


def build_target(
    spec,
    lock,
    target_name: str,
    *,
    stage: str = "runtime",
    push_image: bool = False,
    force: bool = False,
    allow_stale: bool = False,
    base_image: str | None = None,
    ca_bundle_path: str | None = None,
    network: str | None = None,
    build_args: dict[str, str] | None = None,
    no_cache: bool = False,
    on_update: Callable[[BuildReport, Step | None], None] | None = None,
) -> BuildOutcome:
    """Build one target's image from the lock, tagged by content; skip it when that tag exists."""
    from mlenv import render
    from mlenv.lock import check_lock

    if stage not in ("runtime", "dev"):
        raise UsageError(f"unknown stage {stage!r}", hint="one of: runtime, dev")
    spec.target(target_name)
    lock.target(target_name)
    stale = [c for c in check_lock(spec, lock) if c.target in (target_name, "*")]
    if stale and not allow_stale:
        raise LockError(
            f"mlenv.lock is stale for {target_name}: {stale[0].detail}"
            + (f" (and {len(stale) - 1} more)" if len(stale) > 1 else ""),
            hint="run `mlenv lock` (or build anyway with --allow-stale)",
        )
    connect()  # unreachable engine: one clear error before anything is written
    bundle = ca_bundle(ca_bundle_path or spec.image.ca_bundle)

    plan = plan_image(spec, lock, target_name, base_image=base_image, resolve_digest=registry_digest)
    record_base_image(spec, lock, plan)
    root = spec.root
    dockerfile = root / render.dockerfile_name(spec, lock, target_name)
    text = render.render_dockerfile(plan)
    updated = not dockerfile.is_file() or dockerfile.read_text(encoding="utf-8") != text
    if updated and not render.is_generated(dockerfile):
        raise UsageError(f"{dockerfile.name} was not written by mlenv; `mlenv build` builds the generated one",
                         hint="move it aside, or run `mlenv gen dockerfile --force` to replace it")
    if updated:
        # the Dockerfile follows the lock; an outdated one would build something else than the tag says
        atomic_write(dockerfile, text)
    if not (root / ".dockerignore").exists():
        atomic_write(root / ".dockerignore", render.render_dockerignore(spec))
    wheel, _ = write_wheel(root)  # the dev stage installs this very mlenv (.mlenv/mlenv-*.whl)

    material = [text, json.dumps(sorted((build_args or {}).items()))]
    if stage == "runtime":
        material.append(source_hash(root, dockerfile))
    else:  # another mlenv in the tool venv is another dev image
        material.append(sha256_file(wheel))
    content_tag, moving_tag = plan.tags(stage, *material)
    outcome = BuildOutcome(content_tag, moving_tag, stage, dockerfile_updated=updated)
    if not force and not no_cache:
        existing = local_image(content_tag)
        if existing is not None:
            existing.tag(*split_ref(moving_tag)[:2])
            outcome.skip_reason, outcome.image_id = "exists locally", existing.id
        elif plan.registry and remote_exists(content_tag):
            outcome.skip_reason = "exists in the registry"
    if outcome.skip_reason is None:
        request = BuildRequest(
            context=root,
            dockerfile=dockerfile,
            target=stage,
            tags=(content_tag, moving_tag),
            secrets={CA_SECRET_ID: bundle} if bundle else {},
            build_args=dict(build_args or {}),
            network=network,
            no_cache=no_cache,
        )
        # looked for only now: an existing tag (`mlenv up` of a known box) needs no build CLI
        builder = find_builder(spec.image.docker)
        outcome.report = run_build(builder, request, on_update=on_update)
        image = local_image(content_tag)
        if image is None:
            raise BuildError(f"the build finished but {content_tag} is not in the engine",
                             hint="is the docker CLI talking to the same engine as DOCKER_HOST?")
        outcome.image_id = image.id
    if push_image:
        if not plan.registry and registry_host(split_ref(content_tag)[0]) is None:
            raise UsageError("nothing to push to: the image name has no registry",
                             hint="set [image] registry in mlenv.toml "
                                  "(e.g. 123456789012.dkr.ecr.eu-west-1.amazonaws.com)")
        if outcome.skip_reason != "exists in the registry":
            outcome.pushed_digest = push(content_tag)
            push(moving_tag)
    return outcome
