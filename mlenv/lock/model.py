"""The lock model: ``mlenv.lock`` as data, read and written deterministically.

One committed lock holds every target.  A package appears once per distinct (name, version, index)
with the targets and dependency groups that install it, so a CPU and a CUDA target may pin different
builds of torch side by side without rewriting each other.  Each target also gets a PEP 751
``pylock.<target>.toml`` (see ``mlenv.lock.pylock``) that pip and uv install from.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import tomli_w

from mlenv.errors import LockError

LOCK_FILE = "mlenv.lock"
LOCK_FORMAT = 1
MAIN_GROUP = "main"  # the project's own dependencies, as opposed to named dependency groups


def pylock_name(target: str) -> str:
    return f"pylock.{target}.toml"


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
    def from_toml(cls, data: dict[str, Any]) -> "LockedTarget":
        return cls(
            name=data["name"],
            platform=data["platform"],
            python_platform=data["python-platform"],
            accelerator=data["accelerator"],
            input_hash=data["input-hash"],
            inputs=data.get("inputs", {}),
            pylock_sha256=data["pylock"]["sha256"],
            cuda=data.get("cuda"),
            gpu=data.get("gpu"),
            gpu_count=data.get("gpu-count", 0),
            driver_min=data.get("driver-min"),
            driver_min_compat=data.get("driver-min-compat"),
            sm_range=tuple(data.get("sm-range", ())),
            image=dict(data.get("image", {})),
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

    def packages_for(self, target: str, groups: tuple[str, ...] | None = None) -> list[LockedPackage]:
        """Packages a target installs; ``groups=None`` means the main dependencies and every group."""
        chosen = []
        for package in self.packages:
            if target not in package.targets:
                continue
            if groups is not None and not set(package.groups) & ({MAIN_GROUP} | set(groups)):
                continue
            chosen.append(package)
        return chosen

    def with_target(self, target: LockedTarget) -> "Lock":
        return replace(self, targets={**self.targets, target.name: target})

    # --- serialization ------------------------------------------------------------------------

    def dumps(self) -> str:
        """Deterministic TOML: same lock, same bytes (sorted, no timestamps)."""
        packages = sorted(self.packages, key=lambda p: (p.name, p.version, p.index))
        data = {
            "lock": {
                "version": self.version,
                "created-by": self.created_by,
                "compat-data": self.compat_data,
                "spec-sha256": self.spec_sha256,
            },
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
                }
                for package in packages
            ],
        }
        header = "# Written by mlenv from mlenv.toml: do not edit by hand; run `mlenv lock` instead.\n"
        return header + tomli_w.dumps(data, multiline_strings=False)

    @classmethod
    def loads(cls, text: str, *, source: str = LOCK_FILE) -> "Lock":
        try:
            data = tomllib.loads(text)
            meta = data["lock"]
            if meta["version"] != LOCK_FORMAT:
                raise LockError(
                    f"{source} has format version {meta['version']}, this mlenv reads {LOCK_FORMAT}",
                    hint="upgrade mlenv, or re-create the lock with `mlenv lock`",
                )
            return cls(
                version=meta["version"],
                created_by=meta["created-by"],
                compat_data=meta["compat-data"],
                spec_sha256=meta.get("spec-sha256", ""),
                python_requires=data["python"]["requires"],
                python_version=data["python"]["version"],
                indexes={entry["name"]: entry["url"] for entry in data.get("index", [])},
                targets={entry["name"]: LockedTarget.from_toml(entry) for entry in data.get("target", [])},
                packages=tuple(
                    LockedPackage(
                        name=entry["name"],
                        version=entry["version"],
                        index=entry["index"],
                        targets=tuple(entry["targets"]),
                        groups=tuple(entry["groups"]),
                        artifacts=tuple(
                            Artifact(url=a["url"], sha256=a["sha256"], size=a.get("size")) for a in entry["artifacts"]
                        ),
                    )
                    for entry in data.get("package", [])
                ),
            )
        except LockError:
            raise
        except (tomllib.TOMLDecodeError, KeyError, TypeError) as exc:
            raise LockError(
                f"{source} is corrupt ({type(exc).__name__}: {exc})",
                hint="restore it from version control, or re-create it with `mlenv lock`",
            ) from None


def lock_path(spec_root: Path) -> Path:
    return spec_root / LOCK_FILE


def read_lock(spec_root: Path) -> Lock:
    """Read the lock beside a spec; a missing lock is a ``LockError`` that says how to make one."""
    path = lock_path(spec_root)
    if not path.is_file():
        raise LockError(f"no {LOCK_FILE} in {spec_root}", hint="run `mlenv lock` first")
    return Lock.loads(path.read_text(encoding="utf-8"), source=str(path))


def write_lock(spec_root: Path, lock: Lock) -> None:
    """Write ``mlenv.lock`` atomically (readers never see half a lock)."""
    from mlenv.fsutil import atomic_write

    atomic_write(lock_path(spec_root), lock.dumps())
