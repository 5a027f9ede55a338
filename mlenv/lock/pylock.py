"""Write a target's PEP 751 ``pylock.<target>.toml`` from the lock.

Every package carries the sha256 of each artifact, so pip and uv install it with hash checking.
Packages only a dependency group needs get a ``'<group>' in dependency_groups`` marker: installers
then take them only when asked (``uv pip sync pylock.cpu.toml --group dev``).
"""

from __future__ import annotations

import tomli_w

from mlenv import __version__
from mlenv.hardware.platforms import PLATFORMS
from mlenv.lock.model import MAIN_GROUP, LockedTarget


def _artifact(artifact) -> dict:
    entry = {"url": artifact.url}
    if artifact.size is not None:
        entry["size"] = artifact.size
    entry["hashes"] = {"sha256": artifact.sha256}
    return entry


def render_pylock(target: LockedTarget, packages, *, requires_python: str, index_urls: dict[str, str]) -> str:
    """``packages``: what uv resolved for this target (name, version, index, groups, artifacts)."""
    sys_platform, machine, _ = PLATFORMS[target.platform]
    packages = sorted(packages, key=lambda p: p.name)
    groups = sorted({group for package in packages for group in package.groups} - {MAIN_GROUP})
    entries = []
    for package in packages:
        entry: dict = {"name": package.name, "version": package.version}
        if MAIN_GROUP not in package.groups:
            entry["marker"] = " or ".join(f"'{group}' in dependency_groups" for group in sorted(package.groups))
        if package.index != "url":  # a direct-URL dependency comes from its URL, not an index
            entry["index"] = index_urls.get(package.index, package.index)
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
    header = (
        f"# Target {target.name!r} of mlenv.lock, written by mlenv {__version__}: do not edit by hand.\n"
        f"# Install: uv pip sync {target.pylock_path} [--group GROUP]   (hashes are always checked)\n"
    )
    return header + tomli_w.dumps(data)
