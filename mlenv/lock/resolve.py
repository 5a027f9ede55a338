"""Resolve one target with uv.

uv does the resolving; mlenv feeds it a throwaway project describing one target and reads back what
it chose.  Two ``uv pip compile`` passes run per target:

1. ``--format pylock.toml`` for the target's platform: exact versions and only the artifacts that
   platform may install, with their hashes;
2. the same resolution (pinned to pass 1's versions) as annotated requirements: the dependency graph
   ("# via") and the index each package came from ("# from"), which pass 1 does not carry.

Pins survive re-locks because the previous ``pylock.<target>.toml`` is handed to uv as the existing
output file, which uv treats as preferences; ``--upgrade`` / ``--upgrade-package`` lift them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import tomllib
from collections import defaultdict, deque
from dataclasses import dataclass
from pathlib import Path

import tomli_w
from packaging.utils import canonicalize_name

from mlenv.errors import ResolutionError, ToolMissingError
from mlenv.lock.model import MAIN_GROUP, Artifact
from mlenv.spec import Spec, Target

ROOT_PROJECT = "mlenv-lock-root"  # the throwaway project uv resolves; never a real package name


@dataclass(frozen=True)
class ResolvedPackage:
    name: str
    version: str
    index: str
    groups: tuple[str, ...]
    artifacts: tuple[Artifact, ...]


def uv_binary() -> str:
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if found:
            return found
        raise ToolMissingError("uv is not installed", hint="pip install uv (mlenv depends on it)") from None


def _resolution_project(spec: Spec, target: Target) -> str:
    sources = spec.sources_for(target)
    project = {
        "project": {
            "name": ROOT_PROJECT,
            "version": "0",
            "requires-python": spec.requires_python,
            "dependencies": list(spec.dependencies),
        },
    }
    if spec.groups:
        project["dependency-groups"] = {name: list(reqs) for name, reqs in spec.groups.items()}
    indexes = []
    for index in spec.indexes:
        entry = {"name": index.name, "url": index.url}
        if index.explicit:
            entry["explicit"] = True
        if index.default:
            entry["default"] = True
        indexes.append(entry)
    uv_settings: dict = {}
    if indexes:
        uv_settings["index"] = indexes
    if sources:
        uv_settings["sources"] = {package: {"index": index} for package, index in sorted(sources.items())}
    if uv_settings:
        project["tool"] = {"uv": uv_settings}
    return tomli_w.dumps(project)


def _explain_failure(target: str, stderr: str) -> ResolutionError:
    """Turn uv's report into a few lines that name the target and the reason."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", stderr)
    lines = [line.strip(" │╰─▶×") .strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith(("Using ", "Resolved ", "warning: `VIRTUAL_ENV"))]
    hints = [line.removeprefix("hint:").strip() for line in lines if line.startswith("hint:")]
    reasons = [line for line in lines if not line.startswith("hint:")]
    reason = " ".join(reasons[:6]) or "uv failed without a message"
    if len(reason) > 600:
        reason = reason[:600] + " ..."
    hint = hints[0] if hints else "check the versions and indexes in mlenv.toml; run with --debug for uv's full output"
    return ResolutionError(f"could not lock target {target!r}: {reason}", hint=hint)


def _run_uv(args: list[str], cwd: Path, target: str) -> None:
    env = {**os.environ, "NO_COLOR": "1", "UV_NO_PROGRESS": "1"}
    env.pop("VIRTUAL_ENV", None)
    try:
        result = subprocess.run([uv_binary(), *args], cwd=cwd, env=env, capture_output=True, text=True)
    except OSError as exc:
        raise ToolMissingError(f"cannot run uv: {exc}", hint="reinstall mlenv (it depends on uv)") from None
    if result.returncode != 0:
        from mlenv import console

        if console.debug_enabled():
            console.err.print(result.stderr)
        raise _explain_failure(target, result.stderr)


_VIA = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)\s*(?:#\s*via\s+(.*))?$")
_FROM = re.compile(r"^#\s*from\s+(\S+)")
_ROOT = re.compile(re.escape(ROOT_PROJECT) + r"\s+\(pyproject\.toml(?::([^)]+))?\)")


def _parse_annotated(text: str) -> tuple[dict[str, str], dict[str, set[str]], dict[str, str]]:
    """From annotated requirements: versions, who requires each package, and its index URL."""
    versions: dict[str, str] = {}
    required_by: dict[str, set[str]] = defaultdict(set)
    index_url: dict[str, str] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        match = _VIA.match(line)
        if match:
            current = canonicalize_name(match.group(1))
            versions[current] = match.group(2)
            for parent in (match.group(3) or "").split(","):
                parent = parent.strip()
                if not parent:
                    continue
                root = _ROOT.match(parent)
                if root:
                    required_by[current].add(f"@{root.group(1) or MAIN_GROUP}")
                else:
                    required_by[current].add(canonicalize_name(parent))
            continue
        match = _FROM.match(line)
        if match and current:
            index_url[current] = match.group(1).rstrip("/")
    return versions, required_by, index_url


def _groups_of(required_by: dict[str, set[str]]) -> dict[str, set[str]]:
    """Which groups reach each package: walk the graph down from each group's direct requirements."""
    children: dict[str, set[str]] = defaultdict(set)
    for package, parents in required_by.items():
        for parent in parents:
            children[parent].add(package)
    groups: dict[str, set[str]] = defaultdict(set)
    for root in [node for node in children if node.startswith("@")]:
        queue, seen = deque(children[root]), set()
        while queue:
            package = queue.popleft()
            if package in seen:
                continue
            seen.add(package)
            groups[package].add(root[1:])
            queue.extend(children.get(package, ()))
    return groups


def _artifacts(entry: dict) -> tuple[Artifact, ...]:
    found = []
    for wheel in entry.get("wheels", []):
        found.append(Artifact(url=wheel["url"], sha256=wheel["hashes"]["sha256"], size=wheel.get("size")))
    sdist = entry.get("sdist")
    if sdist:
        found.append(Artifact(url=sdist["url"], sha256=sdist["hashes"]["sha256"], size=sdist.get("size")))
    return tuple(found)


def resolve_target(
    spec: Spec,
    target: Target,
    *,
    previous_pylock: Path | None = None,
    upgrade: bool = False,
    upgrade_packages: tuple[str, ...] = (),
) -> list[ResolvedPackage]:
    output_name = f"pylock.{target.name}.toml"
    with tempfile.TemporaryDirectory(prefix=f"mlenv-lock-{target.name}-") as workdir:
        work = Path(workdir)
        (work / "pyproject.toml").write_text(_resolution_project(spec, target))
        if previous_pylock is not None and previous_pylock.is_file() and not upgrade:
            shutil.copyfile(previous_pylock, work / output_name)
        common = [
            "pip", "compile", "pyproject.toml",
            "--python-version", spec.python,
            "--python-platform", target.python_platform,
            "--no-header", "--quiet",
        ]
        for group in spec.groups:
            common += ["--group", group]
        upgrades = ["--upgrade"] if upgrade else []
        for package in upgrade_packages:
            upgrades += ["--upgrade-package", package]
        _run_uv([*common, *upgrades, "--format", "pylock.toml", "-o", output_name], work, target.name)
        pylock = tomllib.loads((work / output_name).read_text())

        # Pass 2 starts from exactly pass 1's pins, so it re-derives the same resolution.
        pins = {canonicalize_name(entry["name"]): entry["version"] for entry in pylock.get("packages", [])}
        (work / "annotated.txt").write_text("".join(f"{name}=={version}\n" for name, version in sorted(pins.items())))
        annotate = [*common, "--emit-index-annotation", "--annotation-style", "line", "-o", "annotated.txt"]
        # pass 1 just put every page and metadata file pass 2 needs in uv's cache: skip revalidating
        # them (most of a warm resolve's time on indexes that send no cache headers)
        try:
            _run_uv([*annotate, "--offline"], work, target.name)
        except ResolutionError:
            _run_uv(annotate, work, target.name)
        versions, required_by, index_urls = _parse_annotated((work / "annotated.txt").read_text())

    if versions != pins:
        raise ResolutionError(
            f"uv resolved target {target.name!r} differently in its two passes",
            hint="this is a bug in mlenv; please report it with your mlenv.toml",
        )
    groups = _groups_of(required_by)
    url_to_index = {index.url.rstrip("/"): index.name for index in spec.indexes}
    default = spec.default_index()
    url_to_index.setdefault(default.url.rstrip("/"), default.name)
    resolved = []
    for entry in pylock.get("packages", []):
        name = canonicalize_name(entry["name"])
        url = index_urls.get(name, "")
        resolved.append(
            ResolvedPackage(
                name=name,
                version=entry["version"],
                index=url_to_index.get(url, url or default.name),
                groups=tuple(sorted(groups.get(name) or {MAIN_GROUP})),
                artifacts=_artifacts(entry),
            )
        )
    return resolved
