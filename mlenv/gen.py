"""`mlenv gen`: plan each target's image, render its files, write them, record the base pin.

Everything is rendered before anything is written, so a bad input leaves no file half-made, and a
file mlenv did not write is never replaced without ``force``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from mlenv import selfwheel, validate
from mlenv.errors import UsageError
from mlenv.fsutil import atomic_write
from mlenv.image.plan import ImagePlan, image_targets, plan_image, record_base_image
from mlenv.lock.model import Lock
from mlenv.render import (
    devcontainer_path,
    dockerfile_name,
    is_generated,
    render_devcontainer,
    render_dockerfile,
    render_dockerignore,
)
from mlenv.spec import Spec


@dataclass
class Generated:
    path: Path
    status: str  # "written", "unchanged", "kept" (an existing .dockerignore), "stale" (check mode)


@dataclass
class GenerateResult:
    files: list[Generated] = field(default_factory=list)
    plans: dict[str, ImagePlan] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # advice for the user, printed as warnings

    def stale(self) -> list[Generated]:
        return [f for f in self.files if f.status == "stale"]


def refuse_foreign(paths: list[Path], root: Path) -> None:
    foreign = [p for p in paths if not is_generated(p)]
    if foreign:
        names = ", ".join(str(p.relative_to(root)) if p.is_relative_to(root) else str(p) for p in foreign)
        raise UsageError(f"{names} exists and was not written by mlenv; not replacing it",
                         hint="move it aside, or pass --force to replace it with the generated file")


def _emit(path: Path, text: str, result: GenerateResult, check: bool) -> None:
    current = path.read_text(encoding="utf-8") if path.is_file() else None
    if current == text:
        result.files.append(Generated(path, "unchanged"))
    elif check:
        result.files.append(Generated(path, "stale"))
    else:
        atomic_write(path, text)
        result.files.append(Generated(path, "written"))


def generate(
    spec: Spec,
    lock: Lock,
    what: str,
    *,
    target: str | None = None,
    base_image: str | None = None,
    ca_bundle: str | None = None,
    resolve_digest: Callable[[str], str | None] | None = None,
    refresh: bool = False,
    check: bool = False,
    force: bool = False,
) -> GenerateResult:
    """Write (or, with ``check``, compare) the files ``what`` names: dockerfile, devcontainer or all.

    Everything is rendered before anything is written, so a bad input leaves no file half-made.
    """
    if what not in ("dockerfile", "devcontainer", "all"):
        raise UsageError(f"unknown generator {what!r}", hint="one of: dockerfile, devcontainer, all")
    result = GenerateResult()
    outputs: list[tuple[Path, str]] = []
    root = spec.root
    for name in image_targets(spec, lock, target):
        plan = plan_image(spec, lock, name, base_image=base_image, ca_bundle=ca_bundle, resolve_digest=resolve_digest,
                          refresh=refresh)
        result.plans[name] = plan
        dockerfile = dockerfile_name(spec, lock, name)
        if what in ("dockerfile", "all"):
            outputs.append((root / dockerfile, render_dockerfile(plan)))
        if what in ("devcontainer", "all"):
            # Jupyter comes from the lock like everything else, so the dev image cannot drift from it
            locked = {p.name for p in lock.packages_for(name)}
            if "ipykernel" not in locked:
                result.notes.append(
                    f"target {name}: no ipykernel in the lock, so notebooks cannot run in the dev image; "
                    'add "ipykernel" and "jupyterlab" to [dependency-groups] dev and run `mlenv lock`')
            config = root / devcontainer_path(spec, lock, name)
            relative_root = Path(*([".."] * (len(config.relative_to(root).parts) - 1)))
            outputs.append((config, render_devcontainer(
                plan, dockerfile=(relative_root / dockerfile).as_posix(), context=relative_root.as_posix())))
    for path in [path for path, _ in outputs] + [root / ".dockerignore"]:
        validate.inside(root, path)  # a symlinked .devcontainer/ must not lead a write out of the project
    if not check and not force:
        refuse_foreign([path for path, _ in outputs], root)
    ignore_text = render_dockerignore(spec) if what in ("dockerfile", "all") else ""  # rendered before any write
    for path, text in outputs:
        _emit(path, text, result, check)
    ignore = root / ".dockerignore"
    if what in ("dockerfile", "all"):
        if ignore.exists():  # the user's to edit: never replaced
            result.files.append(Generated(ignore, "kept"))
        else:
            _emit(ignore, ignore_text, result, check)
    # the dev stage (and CI) installs this very mlenv from .mlenv/, committed with the project
    if check:
        result.files.append(Generated(root / selfwheel.FOLDER / selfwheel.WHEEL,
                                      "unchanged" if selfwheel.wheel_is_current(root) else "stale"))
    else:
        wheel, changed = selfwheel.write_wheel(root)
        result.files.append(Generated(wheel, "written" if changed else "unchanged"))
        note = selfwheel.ignored_note(root, wheel)
        if note is not None:
            result.notes.append(note)
        for plan in result.plans.values():
            lock = record_base_image(spec, lock, plan)
    return result
