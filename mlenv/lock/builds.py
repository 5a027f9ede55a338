"""Accelerator builds: which index a target's PyTorch packages come from, and what was really pinned.

Routing (before resolving).  PyTorch publishes one build per accelerator, each on its own index
(``download.pytorch.org/whl/cpu``, ``.../cu124``), and PyPI's torch is a CUDA build.  uv's
``--torch-backend`` routes torch packages to those indexes, but its URLs are compiled in, so neither
a mirror nor a test index can stand in for them.  mlenv does the same with ordinary explicit
indexes and sources: every torch-family package a target's spec requires, and not pinned by the spec
(``[sources]`` / target ``sources``), comes from the target's build index: a spec ``[[index]]`` whose
URL ends in ``/cpu`` or ``/cuXYZ`` (a mirror) or PyTorch's own.  macOS targets keep PyPI's torch
(PyTorch publishes no other macOS build).

Facts (after resolving).  The CUDA build of what was pinned is read back from the versions
(``torch 2.5.1+cu124``, ``nvidia-cuda-runtime-cu12 12.4.127``, ``nvidia-cublas 13.1.0.3``) and
compared with the target's ``cuda``: a build for another CUDA fails the target, and the driver floor
recorded in the lock is the highest any pinned CUDA runtime needs (never below the declared toolkit's).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from mlenv.errors import ResolutionError
from mlenv.hardware import catalog
from mlenv.lock.model import MAIN_GROUP
from mlenv.spec import Index, Spec, Target

PYTORCH_WHL = "https://download.pytorch.org/whl"
# nvidia-* wheels whose version is the CUDA runtime version they ship; the libraries (cuBLAS, cuDNN,
# NCCL, nvJitLink, ...) version on their own schedule (CUDA 13.2 ships cuBLAS 13.4)
_RUNTIME_VERSIONED = {"nvidia-cuda-runtime", "nvidia-cuda-nvrtc", "nvidia-cuda-cupti"}
_MAJOR_SUFFIX = re.compile(r"^(nvidia-.+)-cu(\d+)$")


def build_for(target: Target) -> str | None:
    """The PyTorch build a target needs: ``cu124`` for CUDA 12.4, ``cpu`` on Linux/Windows, None on macOS."""
    if target.cuda:
        return catalog.cuda_release(target.cuda).torch_index
    return "cpu" if target.os in ("linux", "windows") else None


def serves_build(url: str, build: str) -> bool:
    """Whether an index URL is a PyTorch-style index of ``build`` (``.../whl/cu124``, ``.../cu124/simple``)."""
    return bool(re.search(rf"/{re.escape(build)}(?:/simple)?/?$", urlsplit(url).path))


@dataclass(frozen=True)
class Routing:
    build: str | None = None
    index: Index | None = None  # where routed packages come from; None when nothing is routed
    packages: tuple[str, ...] = ()  # canonical names sent to ``index``
    added: dict[str, tuple[str, ...]] = field(default_factory=dict)  # group -> requirements mlenv adds

    def sources(self) -> dict[str, str]:
        return {name: self.index.name for name in self.packages} if self.index else {}


def requirements_by_group(spec: Spec) -> list[tuple[str, tuple[str, ...]]]:
    return [(MAIN_GROUP, spec.dependencies), *spec.groups.items()]


def torch_routing(spec: Spec, target: Target) -> Routing:
    build = build_for(target)
    family = catalog.torch_packages()
    where: dict[str, set[str]] = {}
    for group, requirements in requirements_by_group(spec):
        for text in requirements:
            name = canonicalize_name(Requirement(text).name)
            if name in family:
                where.setdefault(name, set()).add(group)
    pinned = spec.sources_for(target)
    routed = sorted(name for name in where if name not in pinned)
    if build is None or not routed:
        return Routing(build=build)
    added: dict[str, tuple[str, ...]] = {}
    if "torch" not in pinned and MAIN_GROUP not in where.get("torch", set()):
        # every torch-family package depends on torch, and uv applies sources to direct requirements
        # only: require torch where the family is required, or it would come from PyPI (a CUDA build)
        for group in sorted(set().union(*(where[name] for name in routed)) - where.get("torch", set())):
            added[group] = ("torch",)
        if added and "torch" not in routed:
            routed.append("torch")
    mirror = next((index for index in spec.indexes
                   if index.name == f"pytorch-{build}" or serves_build(index.url, build)), None)
    index = mirror or Index(f"pytorch-{build}", f"{PYTORCH_WHL}/{build}", explicit=True)
    return Routing(build=build, index=index, packages=tuple(sorted(routed)), added=added)


def check_published(spec: Spec, target: Target) -> None:
    """Refuse, before asking the network, a torch release pinned for a CUDA it was never built for."""
    if not target.cuda:
        return
    build = catalog.cuda_release(target.cuda).torch_index
    for group, requirements in requirements_by_group(spec):
        for text in requirements:
            requirement = Requirement(text)
            if canonicalize_name(requirement.name) != "torch":
                continue
            pins = [s.version for s in requirement.specifier if s.operator in ("==", "===")]
            if not pins:
                continue
            version = pins[0].removesuffix(".*")
            builds = catalog.torch_builds(version)
            if builds is None or build in builds:
                continue
            nearest = catalog.cuda_with_torch(target.cuda, version)
            where = "dependencies" if group == MAIN_GROUP else f"group {group!r}"
            fix = (f'set cuda = "{nearest}" on target {target.name!r}' if nearest else
                   "require a torch release built for CUDA " + target.cuda)
            raise ResolutionError(
                f"target {target.name!r}: torch {version} ({where}) was never published for CUDA {target.cuda} "
                f"({build}); PyTorch built it for {', '.join(builds)} only",
                hint=f"{fix}, or change the torch requirement",
            )


@dataclass
class BuildFacts:
    """What the resolved wheels say about the accelerator."""

    driver_min: str | None = None  # the floor the pinned CUDA runtimes need (None on CPU targets)
    driver_runtime: str | None = None  # the CUDA runtime that sets that floor
    problems: list[str] = field(default_factory=list)  # each fails the target
    warnings: list[str] = field(default_factory=list)


def _version(text: str) -> Version | None:
    try:
        return Version(text)
    except InvalidVersion:
        return None


def cuda_of(name: str, version: str) -> tuple[int | None, str | None]:
    """(CUDA major, CUDA runtime "X.Y" when the version says it) of one pinned package."""
    parsed = _version(version)
    if parsed is None:
        return None, None
    family = catalog.torch_packages()
    if name in family and parsed.local and parsed.local.startswith("cu"):
        from mlenv.hardware.detect import cuda_from_local_version

        runtime = cuda_from_local_version(parsed.local)
        return (int(runtime.split(".")[0]), runtime) if runtime else (None, None)
    if not name.startswith("nvidia-"):
        return None, None
    match = _MAJOR_SUFFIX.match(name)
    base, major = (match.group(1), int(match.group(2))) if match else (name, None)
    if base in _RUNTIME_VERSIONED and len(parsed.release) >= 2:
        return parsed.release[0], f"{parsed.release[0]}.{parsed.release[1]}"
    return major, None


def check_builds(target: Target, packages) -> BuildFacts:
    """Compare the CUDA build of every pinned package with the target; ``packages`` has .name/.version."""
    facts = BuildFacts()
    family = catalog.torch_packages()
    if not target.cuda:
        cuda_builds = sorted(f"{p.name} {p.version}" for p in packages if cuda_of(p.name, p.version)[0] is not None)
        if cuda_builds:
            facts.warnings.append(
                f"target {target.name!r} has no CUDA but pins CUDA builds: {', '.join(cuda_builds[:4])}"
                + (f" and {len(cuda_builds) - 4} more" if len(cuda_builds) > 4 else "")
                + "; pin the torch packages to a CPU index in [sources] if this target runs without a GPU")
        return facts
    declared = Version(target.cuda)
    release = catalog.cuda_release(target.cuda)
    facts.driver_min, facts.driver_runtime = release.driver_min, target.cuda
    wanted = release.torch_index
    for package in sorted(packages, key=lambda p: p.name):
        parsed = _version(package.version)
        if package.name in family and parsed and parsed.local == "cpu":
            facts.problems.append(f"{package.name} {package.version} is a CPU build; target {target.name!r} declares "
                                  f"CUDA {target.cuda} (fix: take {package.name} from the {wanted} index)")
            continue
        major, runtime = cuda_of(package.name, package.version)
        if major is None:
            continue
        if package.name in family and runtime != target.cuda:
            facts.problems.append(f"{package.name} {package.version} is a CUDA {runtime} build; target {target.name!r} "
                                  f"declares CUDA {target.cuda} (fix: take {package.name} from the {wanted} index, "
                                  f'or set cuda = "{runtime}")')
        elif major != declared.major:
            facts.problems.append(f"{package.name} {package.version} is a CUDA {major} build; target {target.name!r} "
                                  f"declares CUDA {target.cuda} (fix: require the torch build for {wanted}, or set "
                                  f"cuda to a CUDA {major} release)")
        elif runtime and Version(runtime) > Version(facts.driver_runtime or target.cuda):
            facts.driver_runtime, newest = runtime, package
    if facts.driver_runtime != target.cuda:
        runtime = facts.driver_runtime
        floor = catalog.driver_for_cuda(runtime)
        unknown = "" if floor else (f"; mlenv's data has no driver floor for CUDA {runtime} yet, so this is the "
                                    "floor of the nearest release it knows")
        facts.driver_min = floor or _nearest_floor(runtime)
        facts.warnings.append(f"target {target.name!r}: {newest.name} {newest.version} needs the CUDA {runtime} "
                              f"runtime: driver floor raised to {facts.driver_min} (CUDA {target.cuda} alone needs "
                              f"{release.driver_min}){unknown}")
    return facts


def _nearest_floor(runtime: str) -> str:
    known = catalog.known_runtime_cudas()
    newer = [v for v in known if Version(v) >= Version(runtime)]
    return catalog.driver_for_cuda(newer[0] if newer else known[-1]) or ""


def module_clashes(names) -> list[tuple[str, tuple[str, ...]]]:
    """(module, distributions) for every top-level module two of ``names`` would both install."""
    present = set(names)
    clashes = []
    for module, providers in catalog.module_providers().items():
        found = tuple(sorted(present & set(providers)))
        if len(found) > 1:
            clashes.append((module, found))
    return clashes


def installed_clashes(modules: dict[str, list[str]]) -> list[tuple[str, tuple[str, ...]]]:
    """(module, distributions) for every top-level module two installed distributions provide;
    ``modules`` maps each distribution to the modules it installs (doctor's probe reads them from RECORD)."""
    providers: dict[str, set[str]] = {}
    for distribution, provided in modules.items():
        for module in provided:
            providers.setdefault(module, set()).add(distribution)
    return [(module, tuple(sorted(names))) for module, names in sorted(providers.items()) if len(names) > 1]


def clash_message(module: str, providers, *, group: str | None = None, unlocked=()) -> str:
    """One clash, with its fix: a distribution the lock does not have goes with `mlenv sync`; two that
    the lock installs need the spec changed."""
    within = f" with group {group!r}" if group else ""
    said = f"{' and '.join(providers)} both install the module {module!r}{within}"
    if unlocked:
        return f"{said}: {', '.join(unlocked)} is not in the lock (fix: `mlenv sync` removes it)"
    return (f"{said}, so one overwrites the other's files: keep one in mlenv.toml (or make them exclusive groups, "
            "project.exclusive-groups), then run `mlenv lock` and `mlenv sync`")
