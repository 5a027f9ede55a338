"""``mlenv init``: propose an ``mlenv.toml`` from what a folder already has and what this machine is.

``plan_init`` reads the folder (``mlenv.importers``) and the machine (``mlenv.hardware.detect``) and
returns an ``InitPlan`` holding the proposal and its rendered text; ``write_plan`` validates that text
with the real spec parser and writes it atomically.  Nothing is written when anything fails.

Target proposals:
* this machine, by platform (``cpu`` on Linux, ``macos``, ``windows``);
* a Linux ``cuda`` target when the inputs ask for CUDA (``torch==2.5.1+cu124``, a PyTorch CUDA index,
  ``cudatoolkit=11.8``), when a CUDA build of torch is installed, or when an NVIDIA GPU is present;
  the CUDA version is then the newest in the catalog that the driver runs and that supports the GPU.
PyTorch packages follow each CUDA target onto the matching ``download.pytorch.org/whl/cuXXX`` index
(an explicit index, so it never shadows PyPI for anything else).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable

from packaging.utils import canonicalize_name

from mlenv import validate
from mlenv.errors import SpecError, UsageError, did_you_mean
from mlenv.hardware import catalog
from mlenv.hardware.detect import MachineInfo, TorchBuild, cuda_for_driver, detect_machine, driver_meets, torch_build
from mlenv.hardware.platforms import PLATFORM_ALIASES, PLATFORMS
from mlenv.importers import (
    MAIN,
    PYTORCH_HOST,
    TORCH_FAMILY,
    Imported,
    ImportedIndex,
    Note,
    cyclic_gc_paused,
    import_project,
    torch_pin,
)
from mlenv.spec import SPEC_FILE, parse_requirement, parse_spec, target_limits

TARGET_OPTION_KEYS = ("cuda", "gpu", "gpu-count", "gpu-memory-min", "cpu-min", "ram-min")
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class ProposedTarget:
    name: str
    platform: str
    cuda: str | None = None
    gpu: str | None = None
    gpu_count: int = 0
    limits: tuple[tuple[str, int], ...] = ()  # gpu-memory-min, cpu-min, ram-min given on the command line
    reason: str = ""
    sources: tuple[tuple[str, str], ...] = ()  # (package, index name), filled in by plan_init


@dataclass
class InitPlan:
    root: Path
    name: str
    name_origin: str
    python: str
    python_origin: str
    imported: Imported
    machine: MachineInfo
    targets: list[ProposedTarget]
    indexes: list[ImportedIndex]
    notes: list[Note] = field(default_factory=list)  # the importers' plus init's own
    text: str = ""
    validated: str = ""  # the text plan_init already parsed back (write_plan need not do it twice)

    @property
    def path(self) -> Path:
        return self.root / SPEC_FILE


# --- --target NAME=PLATFORM[:key=value,...] --------------------------------------------------------

TARGET_SYNTAX = "NAME=PLATFORM[:cuda=12.4,gpu=a10g,gpu-count=2], e.g. gpu=linux/x86_64:cuda=12.4,gpu=a10g"


def parse_target_option(text: str) -> ProposedTarget:
    """Parse one ``--target`` value; every mistake is a UsageError naming the fix."""
    name, equals, rest = text.partition("=")
    name = name.strip()
    if not equals or not rest:
        raise UsageError(f"--target {text!r}: expected {TARGET_SYNTAX}")
    if validate.name(name) or "." in name:
        raise UsageError(f"--target {text!r}: invalid target name {name!r}", hint="use letters, digits, - and _")
    platform, _, options = rest.partition(":")
    platform = PLATFORM_ALIASES.get(platform.strip(), platform.strip())
    if platform not in PLATFORMS:
        raise UsageError(f"--target {text!r}: unknown platform {platform!r}",
                         hint=did_you_mean(platform, PLATFORMS) or f"one of: {', '.join(PLATFORMS)}")
    values: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in options.split(","))):
        key, equals, value = item.partition("=")
        key = key.strip().replace("_", "-")
        if not equals or not value.strip():
            raise UsageError(f"--target {text!r}: {item!r} is not key=value",
                             hint=f"keys: {', '.join(TARGET_OPTION_KEYS)}")
        if key not in TARGET_OPTION_KEYS:
            raise UsageError(f"--target {text!r}: unknown key {key!r}",
                             hint=did_you_mean(key, TARGET_OPTION_KEYS) or f"keys: {', '.join(TARGET_OPTION_KEYS)}")
        values[key] = value.strip()
    cuda, gpu = values.get("cuda"), values.get("gpu")
    if cuda is not None:
        if not platform.startswith(("linux/", "windows/")):
            raise UsageError(f"--target {text!r}: CUDA is not available on {platform}", hint="use a linux platform")
        try:
            catalog.cuda_release(cuda)
        except SpecError as exc:
            raise UsageError(f"--target {text!r}: {exc.message}", hint=exc.hint) from None
    if gpu is not None:
        try:
            model = catalog.gpu_model(gpu)
        except SpecError as exc:
            raise UsageError(f"--target {text!r}: {exc.message}", hint=exc.hint) from None
        if cuda is None:
            newest = next((v for v in reversed(catalog.cuda_versions())
                           if catalog.cuda_release(v).supports_sm(model.sm)), None)
            raise UsageError(f"--target {text!r}: a GPU needs a CUDA version",
                             hint=f"add cuda={newest}" if newest else None)
        if not catalog.cuda_release(cuda).supports_sm(model.sm):
            raise UsageError(f"--target {text!r}: CUDA {cuda} does not support {gpu} (compute capability {model.sm})")
        gpu = model.name
    numbers: dict[str, int] = {}
    for key in ("gpu-count", "gpu-memory-min", "cpu-min", "ram-min"):
        if key in values:
            if not (values[key].isascii() and values[key].isdigit()) or int(values[key]) < 1:
                raise UsageError(f"--target {text!r}: {key} must be a positive integer, got {values[key]!r}")
            problem = target_limits()[key](int(values[key]))
            if problem:
                raise UsageError(f"--target {text!r}: {key}: {problem}")
            numbers[key] = int(values[key])
    if numbers.get("gpu-count") and cuda is None:
        raise UsageError(f"--target {text!r}: gpu-count needs cuda=...")
    return ProposedTarget(
        name=name, platform=platform, cuda=cuda, gpu=gpu, gpu_count=numbers.pop("gpu-count", 0),
        limits=tuple(sorted(numbers.items())), reason="--target",
    )


# --- proposals --------------------------------------------------------------------------------------

def _local_target_name(platform: str) -> str:
    return {"linux": "cpu", "macos": "macos", "windows": "windows"}[platform.split("/")[0]]


def _machine_words(machine: MachineInfo) -> str:
    words = [f"{machine.system} {machine.machine}", f"{machine.cpus} CPUs"]
    if machine.ram_gb:
        words.append(f"{machine.ram_gb} GB RAM")
    return ", ".join(words)


def propose_targets(machine: MachineInfo, imported: Imported, torch: TorchBuild | None,
                    notes: list[Note]) -> list[ProposedTarget]:
    platform = machine.platform
    if platform is None:
        platform = "linux/x86_64"
        notes.append(Note("this machine", "platform", f"{machine.system} {machine.machine} is not a platform mlenv "
                          "knows; proposed linux/x86_64 instead"))
    targets = [ProposedTarget(_local_target_name(platform), platform,
                              reason=f"this machine ({machine.system} {machine.machine})")]
    cuda_platform = platform if platform.startswith("linux/") else "linux/x86_64"

    cuda, why = imported.cuda, (f"from {imported.cuda_origin}" if imported.cuda else "")
    if cuda is None and torch is not None and torch.cuda:
        if torch.cuda in catalog.cuda_versions():
            cuda, why = torch.cuda, f"torch {torch.version} is installed"
        else:
            notes.append(Note("this machine", "cuda", f"installed torch {torch.version} wants CUDA {torch.cuda}, "
                              "which is not in mlenv's catalog"))

    gpus = machine.gpus
    gpu_model, gpu_count = None, 0
    if gpus:
        first = gpus[0]
        sm = first.compute_cap
        driver = machine.driver
        if cuda is None:
            by_driver = cuda_for_driver(driver, sm=sm)
            if by_driver:
                cuda, why = by_driver, f"this machine's {first.name}, driver {driver}"
            else:
                compat = cuda_for_driver(driver, sm=sm, compat=True)
                if compat:
                    release = catalog.cuda_release(compat)
                    cuda, why = compat, f"this machine's {first.name}, driver {driver} (minor-version compatibility)"
                    notes.append(Note("this machine", "driver", f"driver {driver} is older than CUDA {compat} needs "
                                      f"({release.driver_min}); it runs through CUDA minor-version compatibility "
                                      f"(>= {release.driver_min_compat}). Upgrade the driver for full support"))
                else:
                    notes.append(Note("this machine", "driver", f"driver {driver or 'unknown'} is too old for every "
                                      f"CUDA mlenv knows ({', '.join(catalog.cuda_versions())}); no CUDA target "
                                      "proposed from this GPU"))
        elif driver:
            release = catalog.cuda_release(cuda)
            if not driver_meets(driver, release.driver_min):
                floor = ("runs through minor-version compatibility" if driver_meets(driver, release.driver_min_compat)
                         else "cannot run it")
                notes.append(Note("this machine", "driver", f"CUDA {cuda} needs driver {release.driver_min}; this "
                                  f"machine has {driver} and {floor}"))
        if cuda and first.model:
            model = catalog.gpu_model(first.model)
            if catalog.cuda_release(cuda).supports_sm(model.sm):
                gpu_model = model.name
                gpu_count = sum(1 for gpu in gpus if gpu.model == model.name)
            else:
                notes.append(Note("this machine", "cuda", f"CUDA {cuda} does not support this machine's {first.name} "
                                  f"(compute capability {model.sm}); the cuda target names no GPU"))
        elif first.model is None:
            notes.append(Note("this machine", "gpu", f"GPU {first.name!r} is not in mlenv's catalog; the cuda "
                              "target names no GPU model"))
    elif machine.gpu_error:
        notes.append(Note("this machine", "gpu", f"nvidia-smi failed: {machine.gpu_error}"))

    pinned_torch = torch_pin(imported)
    if cuda and pinned_torch and catalog.cuda_with_torch(cuda, pinned_torch) != cuda:
        # never propose a torch/CUDA pair PyTorch did not publish
        published = catalog.cuda_with_torch(cuda, pinned_torch)
        notes.append(Note("this machine", "cuda", f"torch {pinned_torch} has no CUDA {cuda} build; "
                          + (f"proposing CUDA {published}" if published else "no CUDA target proposed")))
        cuda, why = published, f"{why}; nearest CUDA with torch {pinned_torch} builds"
    if cuda:
        targets.append(ProposedTarget("cuda", cuda_platform, cuda=cuda, gpu=gpu_model,
                                      gpu_count=gpu_count if gpu_count > 1 else 0, reason=f"CUDA {cuda}: {why}"))
    return targets


def _torch_packages(imported: Imported) -> list[str]:
    names = list(imported.cuda_packages)
    for text in [*imported.dependencies, *(req for group in imported.groups.values() for req in group)]:
        name = canonicalize_name(parse_requirement(text).name)  # parsed once already: a cache hit
        if name in TORCH_FAMILY and name not in names:
            names.append(name)
    return names


def _attach_sources(targets: list[ProposedTarget], imported: Imported,
                    notes: list[Note]) -> tuple[list[ProposedTarget], list[ImportedIndex]]:
    """Pin PyTorch packages to the PyTorch index that matches each target's CUDA (or CPU)."""
    indexes = list(imported.indexes)
    torch_packages = _torch_packages(imported)

    def index_for(url: str, name: str) -> str:
        for index in indexes:
            if index.url.rstrip("/") == url:
                return index.name
        indexes.append(ImportedIndex(name, url, explicit=True, origin="mlenv init"))
        return name

    result = []
    for target in targets:
        pins: dict[str, str] = {}
        if target.cuda and torch_packages:
            tag = catalog.cuda_release(target.cuda).torch_index
            name = index_for(f"https://{PYTORCH_HOST}/whl/{tag}", f"pytorch-{tag}")
            pins = {package: name for package in torch_packages}
        elif target.platform.startswith(("linux/", "windows/")) and imported.cpu_packages:
            name = index_for(f"https://{PYTORCH_HOST}/whl/cpu", "pytorch-cpu")
            pins = {package: name for package in imported.cpu_packages}
        result.append(replace(target, sources=tuple(sorted(pins.items()))))

    used = {index for target in result for _, index in target.sources} | set(imported.sources.values())
    kept = []
    for index in indexes:
        if urlsplit_host(index.url) == PYTORCH_HOST and index.explicit and index.name not in used:
            notes.append(Note(index.origin or "mlenv init", "index", f"index {index.name} ({index.url}) left out: "
                              "no target uses its builds"))
            continue
        kept.append(index)
    return result, kept


def urlsplit_host(url: str) -> str | None:
    from urllib.parse import urlsplit

    return urlsplit(url).hostname


def _default_name(root: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", root.resolve().name).strip("-._")
    return name or "project"


def plan_init(root: Path, *, name: str | None = None, python: str | None = None,
              targets: Iterable[str] | None = None, machine: MachineInfo | None = None,
              torch: TorchBuild | None | bool = True) -> InitPlan:
    """Everything ``mlenv init`` would write, without writing.  ``torch=True`` looks for torch in the
    folder's ``.venv`` and in the running interpreter; pass a TorchBuild or None to skip that."""
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"{root} is not a folder", hint="pass an existing folder with --path")
    machine = machine or detect_machine()
    if python is not None and validate.python_version(python):
        raise UsageError(f"--python: {validate.python_version(python)}")
    if name is not None and validate.name(name):
        raise UsageError(f"--name: {validate.name(name)}")
    explicit_targets = [parse_target_option(text) for text in targets or []]
    seen: set[str] = set()
    for target in explicit_targets:
        if target.name in seen:
            raise UsageError(f"--target {target.name} given twice")
        seen.add(target.name)

    imported = import_project(root, running_python=machine.python)
    notes: list[Note] = list(imported.notes)

    installed_torch = _find_torch(root) if torch is True else (torch or None)

    if explicit_targets:
        proposed = explicit_targets
    else:
        proposed = propose_targets(machine, imported, installed_torch, notes)
    proposed, indexes = _attach_sources(proposed, imported, notes)

    if imported.cuda and not any(target.cuda for target in proposed):
        notes.append(Note(imported.cuda_origin or "", "cuda", f"the inputs ask for CUDA {imported.cuda} but no "
                          "target has CUDA: the CPU targets get torch from PyPI"))

    if python is not None:
        python_origin = "--python"
    elif imported.python:
        python, python_origin = imported.python, imported.python_origin or ""
    elif pinned := _python_version_file(root):
        python, python_origin = pinned, ".python-version"
    else:
        python, python_origin = machine.python_minor, "the running interpreter"

    if name is not None:
        name_origin = "--name"
    elif imported.name:
        name, name_origin = imported.name, imported.name_origin or ""
    else:
        name, name_origin = _default_name(root), "the folder name"

    plan = InitPlan(root=root, name=name, name_origin=name_origin, python=python, python_origin=python_origin,
                    imported=imported, machine=machine, targets=proposed, indexes=indexes, notes=notes)
    plan.text = render(plan)
    try:
        with cyclic_gc_paused():  # the rendered spec is as large as the requirements files
            parse_spec(plan.text, plan.path)
        plan.validated = plan.text
    except SpecError as exc:
        # the inputs were read fine, so this is a proposal mlenv cannot express: say what, keep nothing
        raise SpecError(f"the proposed {SPEC_FILE} does not validate: {exc.message}",
                        hint=exc.hint or "adjust the inputs or pass --target/--python explicitly") from None
    return plan


def _python_version_file(root: Path) -> str | None:
    """The version in pyenv's/uv's ``.python-version``, when it is a plain CPython version."""
    try:
        words = (root / ".python-version").read_text(encoding="utf-8").split()
    except (OSError, UnicodeDecodeError):
        return None
    return words[0] if words and not validate.python_version(words[0]) else None


def _find_torch(root: Path) -> TorchBuild | None:
    for candidate in (root / ".venv" / "bin" / "python", root / ".venv" / "Scripts" / "python.exe"):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            try:
                build = torch_build(candidate)
            except Exception:  # a broken venv must not stop init; it only loses a hint
                build = None
            if build:
                return build
    return torch_build(None)


# --- rendering --------------------------------------------------------------------------------------

def _string(value: str) -> str:
    return json.dumps(value)  # a JSON string with ensure_ascii is a valid TOML basic string


def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else _string(key)


def _comment(text: str) -> str:
    return re.sub(r"[\x00-\x1f\x7f]+", " ", text)


def _string_array(items: list[str], indent: str = "    ") -> str:
    if not items:
        return "[]"
    return "[\n" + "".join(f"{indent}{_string(item)},\n" for item in items) + "]"


def render(plan: InitPlan) -> str:
    imported = plan.imported
    lines = ["# mlenv.toml: this project's environment, for every place its code runs."]
    if imported.files:
        lines.append(f"# Written by `mlenv init` from {', '.join(imported.files)}.")
    else:
        lines.append("# Written by `mlenv init`.")
    lines += ["# Edit it freely, then run `mlenv lock`.", ""]
    lines += [
        "[project]",
        f"name = {_string(plan.name)}",
        f"python = {_string(plan.python)}  # {_comment(plan.python_origin)}",
        f"dependencies = {_string_array(imported.dependencies)}",
    ]
    if imported.exclusive_groups:
        lines.append("# alternatives: locked apart, installed one at a time (mlenv sync --group NAME)")
        lines.append("exclusive-groups = [" + ", ".join(
            "[" + ", ".join(_string(group) for group in members) + "]" for members in imported.exclusive_groups) + "]")
    groups = {group: items for group, items in imported.groups.items() if items and group != MAIN}
    if groups:
        lines += ["", "[dependency-groups]"]
        for group in sorted(groups):
            lines.append(f"{_key(group)} = {_string_array(groups[group])}")
    for index in plan.indexes:
        lines.append("")
        if urlsplit_host(index.url) == PYTORCH_HOST:
            lines.append("# PyTorch builds; explicit: only packages pinned to it below are taken from it")
        elif index.origin:
            lines.append(f"# from {_comment(index.origin)}")
        lines += ["[[index]]", f"name = {_string(index.name)}", f"url = {_string(index.url)}"]
        if index.explicit:
            lines.append("explicit = true")
        if index.default:
            lines.append("default = true")
    if imported.sources:
        lines += ["", "[sources]"]
        lines += [f"{_key(package)} = {_string(index)}" for package, index in sorted(imported.sources.items())]
    for target in plan.targets:
        lines += ["", f"# {_comment(target.reason)}", f"[targets.{_key(target.name)}]",
                  f"platform = {_string(target.platform)}"]
        if target.cuda:
            lines.append(f"cuda = {_string(target.cuda)}")
        if target.gpu:
            lines.append(f"gpu = {_string(target.gpu)}")
        if target.gpu_count:
            lines.append(f"gpu-count = {target.gpu_count}")
        lines += [f"{key} = {value}" for key, value in target.limits]
        if target.sources:
            pins = ", ".join(f"{_key(package)} = {_string(index)}" for package, index in target.sources)
            lines.append(f"sources = {{ {pins} }}")
    if imported.file_digests:
        lines += ["", "# what `mlenv init` read: `mlenv lock` warns when one of these files changes later",
                  "[imported.files]"]
        lines += [f"{_string(path)} = {_string(digest)}" for path, digest in sorted(imported.file_digests.items())]
    # what the inputs said, not this machine's state: the file is shared by everyone's machines
    reported = [note for note in plan.notes if note.kind != "hash" and note.origin != "this machine"]
    if reported:
        lines += ["", "# Not imported or changed by `mlenv init` (its output explains each):"]
        lines += [f"#   {_comment(note.origin)}: {_comment(note.text)}" for note in reported]
    return "\n".join(lines) + "\n"


# --- writing ----------------------------------------------------------------------------------------

def check_writable(root: Path, force: bool) -> None:
    path = Path(root) / SPEC_FILE
    if path.exists() and not force:
        raise UsageError(f"{path} already exists; nothing written",
                         hint="pass --force to replace it, or edit it by hand")


def write_plan(plan: InitPlan, *, force: bool = False) -> Path:
    """Validate the rendered spec by parsing it back, then write it atomically."""
    from mlenv.fsutil import atomic_write

    check_writable(plan.root, force)
    if plan.validated != plan.text:
        parse_spec(plan.text, plan.path)
    atomic_write(plan.path, plan.text)
    return plan.path


def init_project(root: Path, *, force: bool = False, **kwargs) -> InitPlan:
    """``mlenv init`` from Python: plan and write; returns the plan (``plan.path`` is the file)."""
    check_writable(root, force)
    plan = plan_init(root, **kwargs)
    write_plan(plan, force=force)
    return plan


__all__ = [
    "InitPlan", "ProposedTarget", "TARGET_SYNTAX", "check_writable", "init_project", "parse_target_option",
    "plan_init", "propose_targets", "render", "write_plan",
]
