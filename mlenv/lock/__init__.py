"""Locking: turn the spec into ``mlenv.lock`` plus one ``pylock.<target>.toml`` per target.

    lock_project(spec)        resolve what changed (uv), write the lock files atomically
    check_lock(spec, lock)    what is stale and why, without the network
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from mlenv import __version__
from mlenv.errors import LockError
from mlenv.fsutil import atomic_write, sha256_bytes, sha256_file
from mlenv.hardware import catalog
from mlenv.lock.inputs import Change, diff_inputs, input_hash, target_inputs
from mlenv.lock.model import LOCK_FILE, Lock, LockedPackage, LockedTarget, lock_path, pylock_name, read_lock
from mlenv.lock.pylock import render_pylock
from mlenv.lock.resolve import ResolvedPackage, resolve_target, uv_binary
from mlenv.spec import Spec, Target

__all__ = ["Change", "Lock", "LockResult", "check_lock", "lock_project", "read_lock"]


@dataclass
class LockResult:
    lock: Lock
    resolved: list[str]  # targets resolved by uv this time
    reused: list[str]  # targets whose inputs had not changed
    updates: list[tuple[str, str, str | None, str | None]] = field(default_factory=list)  # target, pkg, old, new
    written: bool = True


def check_lock(spec: Spec, lock: Lock) -> list[Change]:
    """Every reason the lock no longer matches the spec (empty when fresh).  Reads only local files."""
    changes: list[Change] = []
    if lock.compat_data != catalog.version():
        changes.append(Change("*", "compat-data", f"hardware data changed: {lock.compat_data} -> {catalog.version()}"))
    for name, target in spec.targets.items():
        locked = lock.targets.get(name)
        if locked is None:
            changes.append(Change(name, "target", "target is not locked yet"))
            continue
        inputs = target_inputs(spec, target)
        if input_hash(inputs) != locked.input_hash:
            changes += diff_inputs(name, locked.inputs, inputs)
        pylock = spec.root / locked.pylock_path
        if not pylock.is_file():
            changes.append(Change(name, "pylock", f"{locked.pylock_path} is missing"))
        elif sha256_file(pylock) != locked.pylock_sha256:
            changes.append(Change(name, "pylock", f"{locked.pylock_path} was modified by hand"))
    for name in lock.targets.keys() - spec.targets.keys():
        changes.append(Change(name, "target", "target was removed from mlenv.toml"))
    return changes


def _locked_target(spec: Spec, target: Target, pylock_sha256: str, previous: LockedTarget | None) -> LockedTarget:
    inputs = target_inputs(spec, target)
    cuda = catalog.cuda_release(target.cuda) if target.cuda else None
    return LockedTarget(
        name=target.name,
        platform=target.platform,
        python_platform=target.python_platform,
        accelerator=target.accelerator,
        input_hash=input_hash(inputs),
        inputs=inputs,
        pylock_sha256=pylock_sha256,
        cuda=target.cuda,
        gpu=target.gpu,
        gpu_count=target.gpu_count,
        driver_min=cuda.driver_min if cuda else None,
        driver_min_compat=cuda.driver_min_compat if cuda else None,
        sm_range=cuda.sm_range if cuda else (),
        # the image record belongs to `mlenv gen`/`build`; keep it while the packages are unchanged
        image=previous.image if previous and previous.pylock_sha256 == pylock_sha256 else {},
    )


def _merge(packages: dict[tuple[str, str, str], LockedPackage], target: str, found: ResolvedPackage | LockedPackage):
    key = (found.name, found.version, found.index)
    existing = packages.get(key)
    if existing is None:
        packages[key] = LockedPackage(found.name, found.version, found.index, (target,), found.groups, found.artifacts)
        return
    artifacts = {a.url: a for a in (*existing.artifacts, *found.artifacts)}
    packages[key] = replace(
        existing,
        targets=tuple(sorted({*existing.targets, target})),
        groups=tuple(sorted({*existing.groups, *found.groups})),
        artifacts=tuple(artifacts[url] for url in sorted(artifacts)),
    )


def _previous_lock(root: Path) -> Lock | None:
    if not lock_path(root).is_file():
        return None
    try:
        return read_lock(root)
    except LockError as exc:
        from mlenv import console

        console.warn(f"{exc.message}; re-locking every target from scratch")
        return None


def lock_project(
    spec: Spec,
    *,
    upgrade: bool = False,
    upgrade_packages: tuple[str, ...] = (),
    write: bool = True,
) -> LockResult:
    """Resolve the targets whose inputs changed (all with ``upgrade``) and write the lock files.

    Nothing is written unless every target resolves: a failure leaves the previous lock intact.
    """
    root = spec.root
    previous = _previous_lock(root)
    fresh_data = previous is not None and previous.compat_data == catalog.version()

    to_resolve: list[Target] = []
    reused: list[str] = []
    for name, target in spec.targets.items():
        locked = previous.targets.get(name) if previous else None
        pylock = root / pylock_name(name)
        unchanged = (
            fresh_data
            and locked is not None
            and locked.input_hash == input_hash(target_inputs(spec, target))
            and pylock.is_file()
            and sha256_file(pylock) == locked.pylock_sha256
        )
        if unchanged and not upgrade and not upgrade_packages:
            reused.append(name)
        else:
            to_resolve.append(target)

    def resolve(target: Target) -> list[ResolvedPackage]:
        return resolve_target(
            spec,
            target,
            previous_pylock=root / pylock_name(target.name),
            upgrade=upgrade,
            upgrade_packages=upgrade_packages,
        )

    # uv.find_uv_bin() reads sysconfig, whose first use is not thread-safe: find uv before the threads
    if to_resolve:
        uv_binary()
    # uv runs in subprocesses, so threads give real parallelism across targets
    with ThreadPoolExecutor(max_workers=max(1, len(to_resolve))) as pool:
        results = dict(zip((t.name for t in to_resolve), pool.map(resolve, to_resolve)))

    packages: dict[tuple[str, str, str], LockedPackage] = {}
    if previous:
        for package in previous.packages:
            for target in set(package.targets) & set(reused):
                _merge(packages, target, package)
    for target_name, resolved in results.items():
        for package in resolved:
            _merge(packages, target_name, package)

    default = spec.default_index()
    indexes = {default.name: default.url, **{index.name: index.url for index in spec.indexes}}
    used_indexes = {package.index for package in packages.values()}
    lock = Lock(
        created_by=f"mlenv {__version__}",
        compat_data=catalog.version(),
        spec_sha256=sha256_file(spec.path),
        python_requires=spec.requires_python,
        python_version=spec.python,
        indexes={name: url for name, url in indexes.items() if name in used_indexes or name == default.name},
        targets={},
        packages=tuple(packages.values()),
    )

    pylocks: dict[str, str] = {}
    targets: dict[str, LockedTarget] = {}
    for name, target in spec.targets.items():
        old = previous.targets.get(name) if previous else None
        if name in reused:
            targets[name] = old
            continue
        # the pylock depends only on packages and target facts, never on its own hash
        draft = _locked_target(spec, target, "", old)
        text = render_pylock(draft, results[name], requires_python=spec.requires_python, index_urls=indexes)
        pylocks[name] = text
        targets[name] = _locked_target(spec, target, sha256_bytes(text.encode()), old)
    lock = replace(lock, targets=targets)

    result = LockResult(lock=lock, resolved=sorted(results), reused=sorted(reused))
    result.updates = _updates(previous, lock, results)
    if write:
        # pylock files first, the lock last: an interrupted write leaves a lock that `--check` flags
        for name, text in pylocks.items():
            atomic_write(root / pylock_name(name), text)
        for name in (previous.targets if previous else {}):
            if name not in spec.targets:
                (root / pylock_name(name)).unlink(missing_ok=True)
        new_text = lock.dumps()
        if not lock_path(root).is_file() or lock_path(root).read_text() != new_text:
            atomic_write(lock_path(root), new_text)
    return result


def _updates(previous: Lock | None, lock: Lock, results: dict) -> list[tuple[str, str, str | None, str | None]]:
    """(target, package, old version, new version) for every package a re-resolution moved."""
    changes = []
    for target in sorted(results):
        old = {p.name: p.version for p in previous.packages_for(target)} if previous and target in previous.targets else {}
        new = {p.name: p.version for p in lock.packages_for(target)}
        for name in sorted(old.keys() | new.keys()):
            if old.get(name) != new.get(name):
                changes.append((target, name, old.get(name), new.get(name)))
    return changes
