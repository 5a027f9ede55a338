"""Read-only access to the shipped hardware catalog (``data/catalog.toml``)."""

from __future__ import annotations

import functools
import tomllib
from dataclasses import dataclass
from importlib import resources

from packaging.version import Version

from mlenv.errors import SpecError, did_you_mean


@dataclass(frozen=True)
class CudaRelease:
    version: str
    driver_min: str
    driver_min_compat: str
    sm_range: tuple[str, str]
    cudnn_tag: str
    ubuntu: str
    torch_index: str

    def supports_sm(self, sm: str) -> bool:
        low, high = self.sm_range
        return Version(low) <= Version(sm) <= Version(high)


@dataclass(frozen=True)
class GpuModel:
    name: str
    sm: str
    memory_gb: int
    match: tuple[str, ...]


@functools.cache
def _data() -> dict:
    text = resources.files("mlenv.hardware").joinpath("data/catalog.toml").read_text()
    return tomllib.loads(text)


def version() -> str:
    return _data()["version"]


def cuda_versions() -> list[str]:
    return sorted(_data()["cuda"], key=Version)


def gpu_names() -> list[str]:
    return list(_data()["gpu"])


def cuda_release(version_: str) -> CudaRelease:
    table = _data()["cuda"].get(version_)
    if table is None:
        raise SpecError(
            f"unknown CUDA version {version_!r}",
            hint=f"mlenv knows CUDA {', '.join(cuda_versions())}",
        )
    return CudaRelease(
        version=version_,
        driver_min=table["driver-min"],
        driver_min_compat=table["driver-min-compat"],
        sm_range=tuple(table["sm"]),
        cudnn_tag=table["cudnn-tag"],
        ubuntu=table["ubuntu"],
        torch_index=table["torch-index"],
    )


def gpu_model(name: str) -> GpuModel:
    table = _data()["gpu"].get(name.lower())
    if table is None:
        raise SpecError(
            f"unknown GPU model {name!r}",
            hint=did_you_mean(name.lower(), gpu_names()) or f"known: {', '.join(gpu_names())}",
        )
    return GpuModel(name=name.lower(), sm=table["sm"], memory_gb=table["memory-gb"], match=tuple(table["match"]))


def gpu_model_for_smi_name(smi_name: str) -> GpuModel | None:
    """Map a name printed by nvidia-smi ("NVIDIA A10G", "Tesla T4") to a catalog model."""
    lowered = smi_name.lower().strip() + " "
    candidates = [(pattern, name) for name in gpu_names() for pattern in gpu_model(name).match]
    for pattern, name in sorted(candidates, key=lambda item: -len(item[0])):
        if pattern in lowered:
            return gpu_model(name)
    return None


def driver_for_cuda(version_: str) -> str | None:
    """Minimum Linux driver for a CUDA runtime minor ("12.8" -> "570.26"); None when unknown."""
    return _data()["driver-for-cuda"].get(version_)


def known_runtime_cudas() -> list[str]:
    return sorted(_data()["driver-for-cuda"], key=Version)


def torch_packages() -> frozenset[str]:
    """Canonical names of the packages PyTorch publishes per-accelerator builds of."""
    return frozenset(_data()["torch"]["packages"])


def torch_release_line(version_: str) -> str | None:
    """``2.5.1`` / ``2.5.1+cu124`` -> ``2.5``; None for a version that is not X.Y[...]."""
    try:
        release = Version(version_).release
    except ValueError:
        return None
    return f"{release[0]}.{release[1]}" if len(release) >= 2 else None


def torch_builds(version_: str) -> tuple[str, ...] | None:
    """CUDA builds (``cu124``...) PyTorch published of a torch release; None when the line is unknown."""
    line = torch_release_line(version_)
    builds = _data()["torch"]["builds"].get(line) if line else None
    return tuple(builds) if builds is not None else None


def cuda_with_torch(cuda: str, torch_version: str) -> str | None:
    """The catalog CUDA version nearest to ``cuda`` that has builds of ``torch_version`` (same CUDA when
    it has them; the newer one on ties).  ``cuda`` itself when the torch line is unknown; None when no
    CUDA mlenv knows has builds of that torch."""
    builds = torch_builds(torch_version)
    if builds is None:
        return cuda
    candidates = [v for v in cuda_versions() if _data()["cuda"][v]["torch-index"] in builds]
    if not candidates:
        return None
    wanted = Version(cuda)
    return min(candidates, key=lambda v: (abs(Version(v).major * 100 + Version(v).minor
                                             - wanted.major * 100 - wanted.minor), -Version(v).minor))


def module_providers() -> dict[str, tuple[str, ...]]:
    """Top-level module -> the distributions that install it (only sets of two or more)."""
    return {module: tuple(names) for module, names in _data()["modules"].items()}
