"""Write a target's PEP 751 ``pylock.<target>.toml`` from the lock.

Every package carries the sha256 of each artifact, so pip and uv install it with hash checking.
Packages only a dependency group needs get a ``'<group>' in dependency_groups`` marker: installers
then take them only when asked (``uv pip sync pylock.cpu.toml --group dev``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import tomli_w

from mlenv import __version__
from mlenv.hardware.platforms import PLATFORMS
from mlenv.lock.model import MAIN_GROUP, Artifact, pylock_name
from mlenv.lock.vcs import VcsSource


def _artifact(artifact: Artifact) -> dict[str, object]:
    entry: dict[str, object] = {"url": artifact.url}
    if artifact.size is not None:
        entry["size"] = artifact.size
    entry["hashes"] = {"sha256": artifact.sha256}
    return entry


class Resolved(Protocol):
    """What a pylock entry is made of: a package uv resolved, or one kept from the lock."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def index(self) -> str: ...
    @property
    def groups(self) -> tuple[str, ...]: ...
    @property
    def artifacts(self) -> tuple[Artifact, ...]: ...
    @property
    def vcs(self) -> VcsSource | None: ...


def pylock_header(target: str) -> str:
    return (
        f"# Target {target!r} of mlenv.lock, written by mlenv {__version__}: do not edit by hand.\n"
        f"# Install: uv pip sync {pylock_name(target)} [--group GROUP]   (hashes are always checked)\n"
    )


def pylock_body(platform: str, packages: Iterable[Resolved], *, requires_python: str,
                index_urls: dict[str, str]) -> str:
    """The TOML of a pylock without its header: the same for targets that share a platform and a
    resolution, so `lock_project` renders it once for them."""
    sys_platform, machine, _ = PLATFORMS[platform]
    ordered = sorted(packages, key=lambda p: p.name)
    groups = sorted({group for package in ordered for group in package.groups} - {MAIN_GROUP})
    entries = []
    for package in ordered:
        entry: dict[str, object] = {"name": package.name, "version": package.version}
        if MAIN_GROUP not in package.groups:
            entry["marker"] = " or ".join(f"'{group}' in dependency_groups" for group in sorted(package.groups))
        if package.index != "url":  # a direct-URL or git dependency comes from its URL, not an index
            entry["index"] = index_urls.get(package.index, package.index)
        if package.vcs is not None:  # PEP 751 [packages.vcs]: uv installs exactly that commit
            entry["vcs"] = package.vcs.to_toml()
        wheels = [_artifact(a) for a in sorted(package.artifacts, key=lambda a: a.url) if a.is_wheel]
        sdists = [_artifact(a) for a in package.artifacts if not a.is_wheel]
        if sdists:
            entry["sdist"] = sdists[0]
        if wheels:
            entry["wheels"] = wheels
        entries.append(entry)
    data = {
        "lock-version": "1.0",
        "created-by": "mlenv",
        "requires-python": requires_python,
        "environments": [f"sys_platform == '{sys_platform}' and platform_machine == '{machine}'"],
        "dependency-groups": groups,
        "default-groups": [],
        "packages": entries,
    }
    return tomli_w.dumps(data)
