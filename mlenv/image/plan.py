"""What goes into a target's image: base reference and digest, tags, labels.

Planning reads the spec and the lock; the only thing it writes is the base image's reference and
registry digest into the lock target (``record_base_image``), so later builds use the same bytes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Callable

from mlenv.errors import UsageError
from mlenv.hardware import catalog
from mlenv.lock.model import MAIN_GROUP, Lock, LockedTarget, write_lock
from mlenv.spec import Spec

DEBIAN_RELEASE = "bookworm"
DEFAULT_USER = "app"
DEFAULT_UID = 1000
# nvidia/cuda publishes images per patch release; the newest patch of each minor we ship data for
# (belongs in the hardware catalog as an `image-version` key once that file grows one).
CUDA_IMAGE_VERSIONS = {"11.8": "11.8.0", "12.1": "12.1.1", "12.4": "12.4.1", "12.6": "12.6.3",
                       "12.8": "12.8.1", "13.0": "13.0.0"}


def default_base_image(lock: Lock, target: LockedTarget, *, devel: bool = False) -> str:
    """The official base for a target: python slim for CPU, nvidia/cuda with cuDNN for CUDA."""
    if not target.cuda:
        return f"python:{lock.python_version}-slim-{DEBIAN_RELEASE}"
    release = catalog.cuda_release(target.cuda)
    version = CUDA_IMAGE_VERSIONS.get(target.cuda, f"{target.cuda}.0")
    # cuDNN tag names changed at 12.4 ("cudnn8-" before, "cudnn-" after): the catalog knows which
    flavor = "devel" if devel else "runtime"
    return f"nvidia/cuda:{version}-{release.cudnn_tag}-{flavor}-ubuntu{release.ubuntu}"


def containerizable(target: LockedTarget) -> bool:
    return target.platform.startswith("linux/")


@dataclass(frozen=True)
class ImagePlan:
    project: str
    target: str
    python: str
    accelerator: str
    cuda: str | None
    base_ref: str  # the reference a user would write ("python:3.11-slim-bookworm")
    base_digest: str | None  # "sha256:..." when a registry answered
    pylock: str
    pylock_sha256: str
    groups: tuple[str, ...]
    user: str = DEFAULT_USER
    system_packages: tuple[str, ...] = ()
    image_name: str = ""
    registry: str | None = None
    ca_bundle: str | None = None  # only an explicit [image] ca-bundle / --ca-bundle goes into files

    @property
    def base_image(self) -> str:
        """What FROM names: pinned by digest when known, so builds are immutable."""
        if self.base_digest and "@" not in self.base_ref:
            return f"{self.base_ref}@{self.base_digest}"
        return self.base_ref

    @property
    def lock_hash(self) -> str:
        """Changes exactly when what the image installs changes: packages, Python, base image."""
        material = "\n".join([self.pylock_sha256, self.python, self.base_image])
        return hashlib.sha256(material.encode()).hexdigest()[:12]

    @property
    def gpu(self) -> bool:
        return self.cuda is not None

    def labels(self) -> list[tuple[str, str]]:
        labels = {
            "org.opencontainers.image.title": f"{self.project}-{self.target}",
            "org.opencontainers.image.description": f"{self.project}: environment of mlenv.lock target {self.target}",
            "org.opencontainers.image.base.name": self.base_ref,
            "io.mlenv.target": self.target,
            "io.mlenv.python": self.python,
            "io.mlenv.accelerator": self.accelerator,
            "io.mlenv.lock-hash": self.lock_hash,
            "io.mlenv.pylock-sha256": self.pylock_sha256,
        }
        if self.base_digest:
            labels["org.opencontainers.image.base.digest"] = self.base_digest
        return sorted(labels.items())

    def repository(self) -> str:
        name = self.image_name or self.project.lower()
        return f"{self.registry.rstrip('/')}/{name}" if self.registry else name

    def tags(self, stage: str, *material: str) -> tuple[str, str]:
        """(content tag, moving tag).

        The content hash starts from the lock hash and takes in whatever else shapes the image
        (``material``: the rendered Dockerfile, build arguments, the source of runtime images), so
        a changed ``[image] system-packages`` or user never reuses an old image by its tag.
        """
        suffix = "" if stage == "runtime" else f"-{stage}"
        content = hashlib.sha256("\n".join([self.lock_hash, stage, *material]).encode()).hexdigest()[:12]
        return (f"{self.repository()}:{self.target}{suffix}-{content}", f"{self.repository()}:{self.target}{suffix}")


def plan_image(
    spec: Spec,
    lock: Lock,
    target_name: str,
    *,
    base_image: str | None = None,
    ca_bundle: str | None = None,
    resolve_digest: Callable[[str], str | None] | None = None,
    refresh: bool = False,
) -> ImagePlan:
    """Everything a generated file needs about one target's image.

    The base reference comes from ``--base-image`` (this run only), else ``[image] base``, else the
    official image; the lock records the reference and its digest.
    A digest recorded in the lock for the same reference is reused; otherwise ``resolve_digest``
    asks a registry (None when none answers; the build then uses the tag).  ``refresh`` ignores the
    recorded digest: the way to take a rebuilt upstream base image on purpose.
    """
    if target_name not in spec.targets:
        spec.target(target_name)  # raises the UsageError with a suggestion
    target = lock.target(target_name)
    if not containerizable(target):
        raise UsageError(
            f"target {target_name!r} is {target.platform}: container images are Linux only",
            hint="generate images for a linux/* target",
        )
    settings = spec.image
    ref = base_image or settings.base or default_base_image(lock, target, devel=settings.devel)
    recorded = target.image.get("digest") if target.image.get("ref") == ref else None
    digest = recorded
    if "@" in ref:
        ref, digest = ref.split("@", 1)
    elif resolve_digest is not None and (refresh or not recorded):
        # an unreachable registry keeps the recorded pin rather than dropping it
        digest = resolve_digest(ref) or recorded
    groups = sorted({g for p in lock.packages_for(target_name) for g in p.groups} - {MAIN_GROUP})
    # uv fetches a git dependency with git, in the deps stage
    fetch_tools = {"git"} if any(p.vcs for p in lock.packages_for(target_name)) else set()
    return ImagePlan(
        project=spec.name,
        target=target_name,
        python=lock.python_version,
        accelerator=target.accelerator,
        cuda=target.cuda,
        base_ref=ref,
        base_digest=digest,
        pylock=target.pylock_path,
        pylock_sha256=target.pylock_sha256,
        groups=tuple(groups),
        user=settings.user or DEFAULT_USER,
        system_packages=tuple(sorted(set(settings.system_packages) | fetch_tools)),
        image_name=settings.name or "",
        registry=settings.registry,
        ca_bundle=ca_bundle or settings.ca_bundle,
    )


def record_base_image(spec: Spec, lock: Lock, plan: ImagePlan) -> Lock:
    """Write the base reference (and digest) into the lock target; input hashes stay untouched."""
    record = {"ref": plan.base_ref, **({"digest": plan.base_digest} if plan.base_digest else {})}
    target = lock.targets[plan.target]
    if target.image == record:
        return lock
    updated = lock.with_target(replace(target, image=record))
    write_lock(spec.root, updated)
    return updated




def image_targets(spec: Spec, lock: Lock, requested: str | None) -> list[str]:
    if requested:
        spec.target(requested)
        lock.target(requested)
        return [requested]
    names = [name for name in spec.targets if name in lock.targets and containerizable(lock.targets[name])]
    if not names:
        raise UsageError("no linux target to build images for", hint='add a target with platform = "linux/x86_64"')
    return names
