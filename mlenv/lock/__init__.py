"""Locking: turn the spec into ``mlenv.lock`` plus one ``pylock.<target>.toml`` per target.

    lock_project(spec)        resolve what changed (uv), write the lock files atomically
    check_lock(spec, lock)    what is stale and why, without the network
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mlenv import __version__
from mlenv.errors import LockError, MlenvError, ResolutionError, ToolMissingError
from mlenv.fsutil import atomic_write, sha256_bytes, sha256_file
from mlenv.hardware import catalog
from mlenv.lock.builds import BuildFacts, check_builds, check_published, clash_message, module_clashes
from mlenv.lock.inputs import Change, diff_inputs, input_hash, target_inputs
from mlenv.lock.model import (
    MAIN_GROUP,
    Lock,
    LockedPackage,
    LockedTarget,
    lock_path,
    pylock_name,
    read_lock,
)
from mlenv.lock.pylock import pylock_body, pylock_header
from mlenv.lock.resolve import ResolvedPackage, reject_vcs, resolve_target, uv_binary
from mlenv.lock.sources import moved_sources
from mlenv.spec import Spec, Target

Warn = Callable[[str], None]
Trace = Callable[[str], None]

__all__ = ["Change", "Lock", "LockResult", "Pin", "check_lock", "lock_project", "read_lock"]


@dataclass(frozen=True)
class Pin:
    """A package's pin as updates report it: the version, and the full commit of a git dependency."""

    version: str
    commit: str | None = None

    @classmethod
    def of(cls, package: LockedPackage) -> Pin:
        return cls(package.version, package.vcs.commit_id if package.vcs else None)

    def __str__(self) -> str:  # "1.0 (0123456789ab)": the commit shortened as the lock's vcs.short does
        return f"{self.version} ({self.commit[:12]})" if self.commit else self.version


Update = tuple[str, str, Pin | None, Pin | None]  # target, package, old pin, new pin


@dataclass
class LockResult:
    lock: Lock
    resolved: list[str]  # targets resolved by uv this time
    reused: list[str]  # targets whose inputs had not changed
    updates: list[Update] = field(default_factory=list)
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


def _locked_target(spec: Spec, target: Target, pylock_sha256: str, previous: LockedTarget | None,
                   facts: BuildFacts | None = None) -> LockedTarget:
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
        # the floor the resolved wheels need (never below the declared toolkit's)
        driver_min=(facts.driver_min if facts and facts.driver_min else cuda.driver_min) if cuda else None,
        driver_min_compat=cuda.driver_min_compat if cuda else None,
        sm_range=cuda.sm_range if cuda else (),
        # the image record belongs to `mlenv gen`/`build`; keep it while the packages are unchanged
        image=previous.image if previous and previous.pylock_sha256 == pylock_sha256 else {},
    )


def _merge(packages: dict[tuple[str, ...], LockedPackage], target: str,
           found: ResolvedPackage | LockedPackage) -> None:
    key = (found.name, found.version, found.index, found.vcs.commit_id if found.vcs else "")
    existing = packages.get(key)
    if existing is None:
        packages[key] = LockedPackage(found.name, found.version, found.index, (target,), found.groups, found.artifacts,
                                      found.vcs)
        return
    artifacts = {a.url: a for a in (*existing.artifacts, *found.artifacts)}
    packages[key] = replace(
        existing,
        targets=tuple(sorted({*existing.targets, target})),
        groups=tuple(sorted({*existing.groups, *found.groups})),
        artifacts=tuple(artifacts[url] for url in sorted(artifacts)),
    )


def _previous_lock(root: Path, warn: Warn) -> Lock | None:
    if not lock_path(root).is_file():
        return None
    try:
        return read_lock(root)
    except LockError as exc:
        warn(f"{exc.message}; re-locking every target from scratch")
        return None


def exclusive_sets(inputs_or_spec: Spec | dict[str, Any]) -> list[tuple[str, ...]]:
    """The exclusive group sets of a spec, or of a locked target's inputs."""
    if isinstance(inputs_or_spec, Spec):
        return [tuple(item) for item in inputs_or_spec.exclusive_groups]
    return [tuple(item) for item in inputs_or_spec.get("exclusive-groups", [])]


def install_groups(lock: Lock, target: LockedTarget, groups: tuple[str, ...] | None) -> tuple[str, ...]:
    """The groups to install: the ones asked for (None: every group that is not an alternative), refusing
    unknown names and two alternatives of one exclusive set."""
    from mlenv.errors import UsageError, did_you_mean

    locked_groups = {g for p in lock.packages_for(target.name) for g in p.groups}
    known = sorted((locked_groups | set(target.inputs.get("groups", {}))) - {"main"})
    sets = exclusive_sets(target.inputs)
    alternatives = {g for item in sets for g in item}
    if groups is None:
        return tuple(g for g in known if g not in alternatives)
    for group in groups:
        if group not in known:
            raise UsageError(f"target {target.name!r} has no dependency group {group!r}",
                             hint=did_you_mean(group, known) or f"groups: {', '.join(known) or 'none'}")
    for item in sets:
        chosen = [g for g in groups if g in item]
        if len(chosen) > 1:
            raise UsageError(f"groups {' and '.join(repr(g) for g in chosen)} are alternatives and cannot be installed "
                             "together", hint=f"pick one of {', '.join(item)} (mlenv.toml: project.exclusive-groups)")
    return tuple(groups)


class TargetFailed(Exception):
    """One target could not be locked; collected so that every failing target is reported."""

    def __init__(self, target: str, error: MlenvError) -> None:
        super().__init__(target)
        self.target, self.error = target, error


# what one resolution installs: (None or the exclusive group, its packages), main + shared groups first
InstallSets = list[tuple[str | None, list[ResolvedPackage]]]
# resolve(target, groups, main pins or None, label) -> packages
ResolveOne = Callable[[Target, tuple[str, ...], list[ResolvedPackage] | None, str], list[ResolvedPackage]]


def _resolve_with_alternatives(spec: Spec, target: Target, resolve: ResolveOne,
                               label: str) -> tuple[list[ResolvedPackage], InstallSets]:
    """Main + shared groups once, then each exclusive group on top of those pins, merged with markers.
    Returns the merged packages and, per installable set (None: no alternative), what it installs."""
    alternatives = [g for item in spec.exclusive_groups for g in item]
    shared = tuple(g for g in spec.groups if g not in alternatives)
    base = resolve(target, shared, None, label)
    merged = {p.name: p for p in base}
    sets: InstallSets = [(None, base)]
    for group in alternatives:
        try:
            extra = resolve(target, (*shared, group), base, f"{label} + group {group}")
        except ResolutionError as exc:
            raise ResolutionError(exc.message, hint=f"group {group!r} is an alternative: it is resolved on top of the "
                                  "pins of the main dependencies and shared groups (the `you require X==...` above); "
                                  "relax the group's requirements, or constrain the main dependencies so both "
                                  "agree") from None
        sets.append((group, extra))
        for package in extra:
            known = merged.get(package.name)
            if known is None:
                merged[package.name] = replace(package, groups=(group,))
            elif known.version != package.version:
                raise ResolutionError(
                    f"could not lock target {label!r}: group {group!r} needs {package.name} {package.version}, "
                    f"but the main dependencies lock {package.name} {known.version}",
                    hint=f"an alternative installs on top of the main pins: constrain {package.name} in dependencies "
                         f"so both agree, or move it into each alternative group")
            elif group in package.groups and group not in known.groups and MAIN_GROUP not in known.groups:
                merged[package.name] = replace(known, groups=tuple(sorted({*known.groups, group})))
    return sorted(merged.values(), key=lambda p: p.name), sets


def _check_target(target: Target, packages: list[ResolvedPackage], sets: InstallSets) -> BuildFacts:
    """The facts a lock states, checked: CUDA builds match the target, no module from two distributions."""
    facts = check_builds(target, packages)
    problems = list(facts.problems)
    base = sets[0][1]
    for group, installed in sets:
        names = {p.name for p in base} | {p.name for p in installed}
        for module, providers in module_clashes(names):
            problems.append(clash_message(module, providers, group=group))
    if problems:
        raise ResolutionError(f"could not lock target {target.name!r}:\n" + "\n".join(f"  {p}" for p in problems),
                              hint="the lock states facts that were checked; fix the requirements or the target")
    return facts


def lock_project(
    spec: Spec,
    *,
    upgrade: bool = False,
    upgrade_packages: tuple[str, ...] = (),
    write: bool = True,
    warn: Warn | None = None,
    trace: Trace | None = None,
    while_resolving: Callable[[], object] | None = None,
) -> LockResult:
    """Resolve the targets whose inputs changed (all with ``upgrade``) and write the lock files.

    Nothing is written unless every target resolves: a failure leaves the previous lock intact.
    ``warn`` receives what the user should know (uv's warnings, raised driver floors, moved sources);
    ``trace`` uv's full output (for --debug); ``while_resolving`` runs on this thread while uv
    resolves (the caller prepares its report in time that would otherwise be spent waiting).
    """
    warn = warn or (lambda message: None)
    root = spec.root
    previous = _previous_lock(root, warn)
    fresh_data = previous is not None and previous.compat_data == catalog.version()
    for message in moved_sources(spec):
        warn(message)

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
    if to_resolve:
        reject_vcs(spec)

    # targets whose resolution inputs are identical (same platform, Python, sources: a CPU target and a
    # bigger CPU target) are resolved once; uv runs in subprocesses, so threads give real parallelism
    from mlenv.lock.builds import torch_routing
    from mlenv.lock.resolve import _resolution_project

    def resolution_key(target: Target) -> tuple[str, str]:
        routing = torch_routing(spec, target)
        return (target.python_platform, _resolution_project(spec, target, routing, tuple(spec.groups)))

    def resolve_one(target: Target, groups: tuple[str, ...], base: list[ResolvedPackage] | None,
                    label: str) -> list[ResolvedPackage]:
        previous_pylock = root / pylock_name(target.name)
        return resolve_target(
            spec, target, groups=groups, previous_pylock=previous_pylock if base is None else None,
            upgrade=upgrade, upgrade_packages=upgrade_packages, warn=warn, trace=trace, label=label,
            preferences=base,
        )

    failures: list[TargetFailed] = []
    for target in to_resolve:
        try:
            check_published(spec, target)  # a torch/CUDA pair never published: said before the network
        except MlenvError as exc:
            failures.append(TargetFailed(target.name, exc))
    failed = {f.target for f in failures}
    leaders: dict[tuple[str, str], Target] = {}
    follower_of: dict[str, str] = {}
    for target in to_resolve:
        if target.name not in failed:
            leader = leaders.setdefault(resolution_key(target), target)
            follower_of[target.name] = leader.name
    unique = [t for t in to_resolve if follower_of.get(t.name) == t.name]
    labels = {leader.name: ", ".join(n for n, of in follower_of.items() if of == leader.name) for leader in unique}

    def resolve(target: Target) -> tuple[list[ResolvedPackage], InstallSets] | TargetFailed:
        try:
            return _resolve_with_alternatives(spec, target, resolve_one, labels[target.name])
        except MlenvError as exc:
            return TargetFailed(labels[target.name], exc)

    # uv.find_uv_bin() reads sysconfig, whose first use is not thread-safe: find uv before the threads
    if unique:
        uv_binary()
    with ThreadPoolExecutor(max_workers=max(1, len(unique))) as pool:
        outcomes = pool.map(resolve, unique)
        if while_resolving is not None and unique:
            while_resolving()
        by_leader = dict(zip((t.name for t in unique), outcomes, strict=True))
    failures += [outcome for outcome in by_leader.values() if isinstance(outcome, TargetFailed)]
    results: dict[str, list[ResolvedPackage]] = {}
    facts: dict[str, BuildFacts] = {}
    for target in to_resolve:
        outcome = by_leader.get(follower_of.get(target.name, ""))
        if outcome is None or isinstance(outcome, TargetFailed):
            continue
        try:
            facts[target.name] = _check_target(target, *outcome)
        except MlenvError as exc:
            failures.append(TargetFailed(target.name, exc))
            continue
        results[target.name] = outcome[0]
        for message in facts[target.name].warnings:
            warn(message)
    if failures:
        raise _combined(failures)

    packages: dict[tuple[str, ...], LockedPackage] = {}
    if previous:
        for kept in previous.packages:
            for target_name in set(kept.targets) & set(reused):
                _merge(packages, target_name, kept)
    for target_name, resolved in results.items():
        for package in resolved:
            _merge(packages, target_name, package)

    default = spec.default_index()
    indexes = {default.name: default.url, **{index.name: index.url for index in spec.indexes}}
    for target in spec.targets.values():
        routed = torch_routing(spec, target).index
        if routed is not None:
            indexes.setdefault(routed.name, routed.url)
    used_indexes = {package.index for package in packages.values()}
    lock = Lock(
        created_by=f"mlenv {__version__}",
        compat_data=catalog.version(),
        spec_sha256=spec.sha256 or sha256_file(spec.path),
        python_requires=spec.requires_python,
        python_version=spec.python,
        indexes={name: url for name, url in indexes.items() if name in used_indexes or name == default.name},
        targets={},
        packages=tuple(packages.values()),
    )

    pylocks: dict[str, str] = {}
    bodies: dict[tuple[str, str], str] = {}  # (resolution, platform) -> pylock body: rendered once
    targets: dict[str, LockedTarget] = {}
    for name, target in spec.targets.items():
        old = previous.targets.get(name) if previous else None
        if name in reused and old is not None:
            targets[name] = old
            continue
        shared = (follower_of[name], target.platform)
        if shared not in bodies:
            bodies[shared] = pylock_body(target.platform, results[name], requires_python=spec.requires_python,
                                         index_urls=indexes)
        # the pylock depends only on packages and target facts, never on its own hash
        text = pylock_header(name) + bodies[shared]
        pylocks[name] = text
        targets[name] = _locked_target(spec, target, sha256_bytes(text.encode()), old, facts[name])
    lock = replace(lock, targets=targets)

    result = LockResult(lock=lock, resolved=sorted(results), reused=sorted(reused))
    result.updates = _updates(previous, lock, results)
    if write:
        # pylock files first, the lock last: an interrupted write leaves a lock that `--check` flags.
        # The pylocks are written (each waits for its fsync) on threads while this one renders the lock.
        with ThreadPoolExecutor(max_workers=max(1, len(pylocks))) as writers:
            writes = [writers.submit(atomic_write, root / pylock_name(name), text) for name, text in pylocks.items()]
            new_text = lock.dumps()
            for done in writes:
                done.result()  # a failed write raises here, before the lock is touched
        for name in (previous.targets if previous else {}):
            if name not in spec.targets:
                (root / pylock_name(name)).unlink(missing_ok=True)
        if not lock_path(root).is_file() or lock_path(root).read_bytes() != new_text.encode():
            atomic_write(lock_path(root), new_text)
    return result


def _combined(failures: list[TargetFailed]) -> MlenvError:
    """One error for every failing target; exit 6 when an index was unreachable, else the first's code."""
    if len(failures) == 1:
        return failures[0].error
    errors = [f.error for f in failures]
    kind = next((type(e) for e in errors if isinstance(e, ToolMissingError)), type(errors[0]))
    hints = list(dict.fromkeys(e.hint for e in errors if e.hint))
    error = kind("\n".join(e.message for e in errors), hint=" / ".join(hints) or None)
    return error


def _updates(previous: Lock | None, lock: Lock, results: dict[str, list[ResolvedPackage]]) -> list[Update]:
    """(target, package, old pin, new pin) for every package a re-resolution moved."""
    changes = []
    for target in sorted(results):
        old = ({p.name: Pin.of(p) for p in previous.packages_for(target)}
               if previous and target in previous.targets else {})
        new = {p.name: Pin.of(p) for p in lock.packages_for(target)}
        for name in sorted(old.keys() | new.keys()):
            if old.get(name) != new.get(name):
                changes.append((target, name, old.get(name), new.get(name)))
    return changes

