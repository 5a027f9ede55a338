"""The lock model: ``mlenv.lock`` as data, read and written deterministically.

One committed lock holds every target.  A package appears once per distinct (name, version, index)
with the targets and dependency groups that install it, so a CPU and a CUDA target may pin different
builds of torch side by side without rewriting each other.  Each target also gets a PEP 751
``pylock.<target>.toml`` (see ``mlenv.lock.pylock``) that pip and uv install from.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import tomli_w

from mlenv import validate
from mlenv.errors import LockError
from mlenv.fsutil import content_digest
from mlenv.lock.vcs import VcsSource

LOCK_FILE = "mlenv.lock"
LOCK_FORMAT = 1
MAIN_GROUP = "main"  # the project's own dependencies, as opposed to named dependency groups


REPAIR_HINT = "re-run `mlenv lock` (or restore mlenv.lock and the pylock files from version control)"


def pylock_name(target: str) -> str:
    """The pylock file of a target; the name was validated where it was read (spec or lock)."""
    problem = validate.name(target)
    if problem:
        raise LockError(f"refusing to build a file name from target {target!r}: {problem}", hint=REPAIR_HINT)
    return f"pylock.{target}.toml"


class _Reader:
    """Typed access to parsed lock TOML: every wrong type or missing field is one ``LockError`` naming
    the field, because a lock `doctor` cannot read must fail `lock --check` and `sync` the same way."""

    def __init__(self, source: str) -> None:
        self.source = source

    def corrupt(self, where: str, problem: str) -> LockError:
        return LockError(f"{self.source} is corrupt: {where}: {problem}", hint=REPAIR_HINT)

    def get(self, table: Any, key: str, kind: type | tuple[type, ...], where: str, default: Any = ...) -> Any:
        if not isinstance(table, dict):
            raise self.corrupt(where, f"expected a table, got {type(table).__name__}")
        if key not in table:
            if default is ...:
                raise self.corrupt(f"{where}.{key}", "missing")
            return default
        value = table[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            expected = " or ".join(k.__name__ for k in kinds)
            raise self.corrupt(f"{where}.{key}", f"expected {expected}, got {type(value).__name__} {value!r}")
        return value

    def strings(self, table: Any, key: str, where: str, default: Any = ...) -> list[str]:
        values = self.get(table, key, list, where, default)
        if not all(isinstance(item, str) for item in values):
            raise self.corrupt(f"{where}.{key}", "expected a list of strings")
        return values

    def tables(self, data: dict, key: str) -> list[dict]:
        entries = self.get(data, key, list, "", [])
        for position, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise self.corrupt(f"{key}[{position}]", f"expected a table, got {type(entry).__name__}")
        return entries

    def name(self, value: str, where: str) -> str:
        problem = validate.name(value)
        if problem:
            raise self.corrupt(where, problem)
        return value


@dataclass(frozen=True)
class Artifact:
    url: str
    sha256: str
    size: int | None = None

    @property
    def filename(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1].split("#", 1)[0]

    @property
    def is_wheel(self) -> bool:
        return self.filename.endswith(".whl")


@dataclass(frozen=True)
class LockedPackage:
    name: str  # canonical (PEP 503) name
    version: str
    index: str  # index name from the spec ("pypi" for the default)
    targets: tuple[str, ...]
    groups: tuple[str, ...]  # "main" and/or dependency-group names
    artifacts: tuple[Artifact, ...]
    vcs: VcsSource | None = None  # a git dependency: the commit it is locked to (then no artifacts)


@dataclass(frozen=True)
class LockedTarget:
    name: str
    platform: str
    python_platform: str
    accelerator: str  # "cpu" or "cuda12.4"
    input_hash: str
    inputs: dict[str, Any]
    pylock_sha256: str
    cuda: str | None = None
    gpu: str | None = None
    gpu_count: int = 0
    driver_min: str | None = None
    driver_min_compat: str | None = None
    sm_range: tuple[str, ...] = ()  # (lowest, highest) compute capability the CUDA toolkit runs on
    image: dict[str, str] = field(default_factory=dict)  # base image ref/digest, filled by `mlenv gen`/`build`

    @property
    def pylock_path(self) -> str:
        return pylock_name(self.name)

    def to_toml(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "platform": self.platform,
            "python-platform": self.python_platform,
            "accelerator": self.accelerator,
        }
        if self.cuda:
            data.update(
                {
                    "cuda": self.cuda,
                    "driver-min": self.driver_min,
                    "driver-min-compat": self.driver_min_compat,
                    "sm-range": list(self.sm_range),
                }
            )
            if self.gpu:
                data["gpu"] = self.gpu
            data["gpu-count"] = self.gpu_count
        data["input-hash"] = self.input_hash
        data["pylock"] = {"path": self.pylock_path, "sha256": self.pylock_sha256}
        if self.image:
            data["image"] = dict(sorted(self.image.items()))
        data["inputs"] = self.inputs
        return data

    @classmethod
    def from_toml(cls, data: dict[str, Any], reader: _Reader | None = None, where: str = "target") -> LockedTarget:
        r = reader or _Reader(LOCK_FILE)
        optional_str = (str, type(None))
        image = r.get(data, "image", dict, where, {})
        if not all(isinstance(value, str) for value in image.values()):
            raise r.corrupt(f"{where}.image", "expected a table of strings")
        sm_range = tuple(r.strings(data, "sm-range", where, []))
        gpu_count = r.get(data, "gpu-count", int, where, 0)
        if gpu_count < 0:
            raise r.corrupt(f"{where}.gpu-count", f"expected a count, got {gpu_count}")
        from mlenv.hardware.platforms import PLATFORMS

        platform = r.get(data, "platform", str, where)
        if platform not in PLATFORMS:
            raise r.corrupt(f"{where}.platform", f"unknown platform {platform!r}")
        cuda = r.get(data, "cuda", optional_str, where, None)
        if cuda is not None and not re.fullmatch(r"\d{1,2}\.\d{1,2}", cuda):
            raise r.corrupt(f"{where}.cuda", f"expected a CUDA version such as \"12.4\", got {cuda!r}")
        return cls(
            name=r.name(r.get(data, "name", str, where), f"{where}.name"),
            platform=platform,
            python_platform=r.get(data, "python-platform", str, where),
            accelerator=r.name(r.get(data, "accelerator", str, where), f"{where}.accelerator"),
            input_hash=r.get(data, "input-hash", str, where),
            inputs=r.get(data, "inputs", dict, where, {}),
            pylock_sha256=r.get(r.get(data, "pylock", dict, where), "sha256", str, f"{where}.pylock"),
            cuda=cuda,
            gpu=r.get(data, "gpu", optional_str, where, None),
            gpu_count=gpu_count,
            driver_min=r.get(data, "driver-min", optional_str, where, None),
            driver_min_compat=r.get(data, "driver-min-compat", optional_str, where, None),
            sm_range=sm_range,
            image=dict(image),
        )


@dataclass(frozen=True)
class Lock:
    created_by: str
    compat_data: str
    python_requires: str
    python_version: str
    indexes: dict[str, str]  # name -> url
    targets: dict[str, LockedTarget]
    packages: tuple[LockedPackage, ...]
    version: int = LOCK_FORMAT
    # sha256 of the mlenv.toml bytes locked: lets `lock --check` prove freshness without parsing
    # the spec (see mlenv/_entry.py); any mismatch falls back to the full, explaining check
    spec_sha256: str = ""

    def target(self, name: str) -> LockedTarget:
        try:
            return self.targets[name]
        except KeyError:
            from mlenv.errors import UsageError, did_you_mean

            raise UsageError(
                f"the lock has no target {name!r}",
                hint=did_you_mean(name, self.targets) or f"locked targets: {', '.join(self.targets)}",
            ) from None

    def group_names(self) -> list[str]:
        """The dependency groups the lock knows (from its packages and every target's inputs)."""
        names = {group for package in self.packages for group in package.groups}
        for target in self.targets.values():
            groups = target.inputs.get("groups")
            if isinstance(groups, dict):
                names.update(groups)
        return sorted(names - {MAIN_GROUP})

    def require_groups(self, groups: tuple[str, ...] | list[str] | None) -> None:
        """A ``--group`` the lock does not have is a typo, not an empty group: say so with the choices."""
        known = self.group_names()
        unknown = [group for group in groups or () if group not in known]
        if unknown:
            from mlenv.errors import UsageError, did_you_mean

            listing = f"the lock's groups: {', '.join(known)}" if known else "the lock has no dependency groups"
            guess = did_you_mean(unknown[0], known)
            raise UsageError(f"unknown dependency group {unknown[0]!r}",
                             hint=f"{guess} ({listing})" if guess else listing)

    def packages_for(self, target: str, groups: tuple[str, ...] | None = None) -> list[LockedPackage]:
        """Packages a target installs; ``groups=None`` means the main dependencies and every group."""
        self.require_groups(groups)
        chosen = []
        for package in self.packages:
            if target not in package.targets:
                continue
            if groups is not None and not set(package.groups) & ({MAIN_GROUP} | set(groups)):
                continue
            chosen.append(package)
        return chosen

    def with_target(self, target: LockedTarget) -> Lock:
        return replace(self, targets={**self.targets, target.name: target})

    # --- serialization ------------------------------------------------------------------------

    def dumps(self) -> str:
        """Deterministic TOML: same lock, same bytes (sorted, no timestamps)."""
        packages = sorted(self.packages, key=lambda p: (p.name, p.version, p.index, p.vcs.commit_id if p.vcs else ""))
        meta: dict[str, object] = {
            "version": self.version,
            "created-by": self.created_by,
            "compat-data": self.compat_data,
            "spec-sha256": self.spec_sha256,
        }
        data = {
            "lock": meta,
            "python": {"requires": self.python_requires, "version": self.python_version},
            "index": [{"name": name, "url": url} for name, url in sorted(self.indexes.items())],
            "target": [self.targets[name].to_toml() for name in sorted(self.targets)],
            "package": [
                {
                    "name": package.name,
                    "version": package.version,
                    "index": package.index,
                    "targets": sorted(package.targets),
                    "groups": sorted(package.groups),
                    "artifacts": [
                        {"url": a.url, "sha256": a.sha256, **({"size": a.size} if a.size is not None else {})}
                        for a in sorted(package.artifacts, key=lambda a: a.url)
                    ],
                    **({"vcs": package.vcs.to_toml()} if package.vcs else {}),
                }
                for package in packages
            ],
        }
        # a digest of everything else: a hand edit (a version, a sha256, a target field) is caught by
        # every reader, including the stdlib-only `lock --check` fast path in mlenv/_entry.py
        meta["content-sha256"] = content_digest(data)
        header = "# Written by mlenv from mlenv.toml: do not edit by hand; run `mlenv lock` instead.\n"
        return header + tomli_w.dumps(data, multiline_strings=False)

    @classmethod
    def loads(cls, text: str, *, source: str = LOCK_FILE) -> Lock:
        """Parse and check a lock.  Names become file names, so each is validated here, where it is
        read; the content digest proves nobody edited the records since mlenv wrote them."""
        r = _Reader(source)
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise LockError(f"{source} is corrupt (not TOML: {exc})", hint=REPAIR_HINT) from None
        meta = r.get(data, "lock", dict, "")
        version = r.get(meta, "version", (int, str), "lock")
        if version != LOCK_FORMAT:
            if isinstance(version, int) and version > LOCK_FORMAT:
                raise LockError(f"{source} has format version {version}, this mlenv reads {LOCK_FORMAT}",
                                hint="upgrade mlenv, or re-create the lock with `mlenv lock`")
            raise r.corrupt("lock.version", f"expected {LOCK_FORMAT}, got {version!r}")
        recorded = r.get(meta, "content-sha256", str, "lock")
        unsigned = {**data, "lock": {key: value for key, value in meta.items() if key != "content-sha256"}}
        if content_digest(unsigned) != recorded:
            raise LockError(f"{source} is corrupt: it was edited by hand (its records no longer match the digest "
                            "mlenv wrote)",
                            hint=REPAIR_HINT)

        python = r.get(data, "python", dict, "")
        indexes: dict[str, str] = {}
        for position, entry in enumerate(r.tables(data, "index")):
            where = f"index[{position}]"
            indexes[r.name(r.get(entry, "name", str, where), f"{where}.name")] = r.get(entry, "url", str, where)
        targets: dict[str, LockedTarget] = {}
        for position, entry in enumerate(r.tables(data, "target")):
            target = LockedTarget.from_toml(entry, r, f"target[{position}]")
            targets[target.name] = target
        packages = []
        for position, entry in enumerate(r.tables(data, "package")):
            where = f"package[{position}]"
            package_targets = r.strings(entry, "targets", where)
            unknown = set(package_targets) - targets.keys()
            if unknown:
                raise r.corrupt(f"{where}.targets", f"names targets the lock does not have: {sorted(unknown)}")
            artifacts = []
            for number, artifact in enumerate(r.get(entry, "artifacts", list, where)):
                here = f"{where}.artifacts[{number}]"
                size = r.get(artifact, "size", (int, type(None)), here, None)
                artifacts.append(Artifact(url=r.get(artifact, "url", str, here),
                                          sha256=r.get(artifact, "sha256", str, here), size=size))
            packages.append(LockedPackage(
                name=r.name(r.get(entry, "name", str, where), f"{where}.name"),
                version=r.get(entry, "version", str, where),
                index=r.name(r.get(entry, "index", str, where), f"{where}.index"),
                targets=tuple(package_targets),
                groups=tuple(r.name(group, f"{where}.groups") for group in r.strings(entry, "groups", where)),
                artifacts=tuple(artifacts),
                vcs=VcsSource.from_toml(entry["vcs"], lambda key, problem, here=f"{where}.vcs": r.corrupt(
                    f"{here}.{key}" if key else here, problem)) if "vcs" in entry else None,
            ))
        # the Python version reaches shell commands (`uv python install 3.11`) in generated files
        python_version = r.get(python, "version", str, "python")
        if not re.fullmatch(r"3\.\d{1,2}(\.\d{1,2})?", python_version):
            raise r.corrupt("python.version", f"expected a version such as \"3.11\", got {python_version!r}")
        return cls(
            version=version,
            created_by=r.get(meta, "created-by", str, "lock"),
            compat_data=r.get(meta, "compat-data", str, "lock"),
            spec_sha256=r.get(meta, "spec-sha256", str, "lock", ""),
            python_requires=r.get(python, "requires", str, "python"),
            python_version=python_version,
            indexes=indexes,
            targets=targets,
            packages=tuple(packages),
        )


def lock_path(spec_root: Path) -> Path:
    return spec_root / LOCK_FILE


def read_lock(spec_root: Path) -> Lock:
    """Read the lock beside a spec; a missing lock is a ``LockError`` that says how to make one."""
    path = lock_path(spec_root)
    if not path.is_file():
        if path.exists() or path.is_symlink():
            raise LockError(f"{path} is not a file", hint="remove it, then run `mlenv lock`")
        raise LockError(f"no {LOCK_FILE} in {spec_root}", hint="run `mlenv lock` first")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise LockError(f"{path} is corrupt (not UTF-8 text)", hint=REPAIR_HINT) from None
    except OSError as exc:
        raise LockError(f"cannot read {path}: {exc.strerror}", hint="check the file's permissions") from None
    return Lock.loads(text, source=str(path))


def write_lock(spec_root: Path, lock: Lock) -> None:
    """Write ``mlenv.lock`` atomically (readers never see half a lock)."""
    from mlenv.fsutil import atomic_write

    atomic_write(lock_path(spec_root), lock.dumps())
