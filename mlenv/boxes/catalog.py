"""The shipped EC2 instance catalog (``data/instances.toml``) and the choice of a type for a target.

The Pricing API needs credentials and is slow; a small table of the types an ML dev box uses, with
the date of its prices, is enough to pick the cheapest fit and to show what a box costs.
"""

from __future__ import annotations

import functools
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from mlenv.errors import UsageError
from mlenv.hardware import catalog as hardware
from mlenv.spec import Target

HOURS_PER_MONTH = 730  # AWS bills EBS and alarms per month; this is its own month-to-hour factor
# platform in the spec -> EC2 architecture name
EC2_ARCH = {"linux/x86_64": "x86_64", "linux/aarch64": "arm64"}


@dataclass(frozen=True)
class InstanceType:
    name: str
    arch: str  # "x86_64" | "arm64" (EC2's names)
    vcpu: int
    ram_gb: float
    price: float  # on-demand $/hour in prices_region at prices_date
    gpu: str | None = None
    gpu_count: int = 0
    gpu_memory_gb: int = 0  # per GPU

    def describe(self) -> str:
        gpus = f", {self.gpu_count}x {self.gpu.upper()} {self.gpu_memory_gb} GB" if self.gpu else ""
        return f"{self.name} ({self.vcpu} vCPU, {self.ram_gb:g} GB RAM{gpus})"


@functools.cache
def _data() -> dict:
    return tomllib.loads((Path(__file__).parent / "data" / "instances.toml").read_text(encoding="utf-8"))


def prices_date() -> str:
    return _data()["prices-date"]


def prices_region() -> str:
    return _data()["prices-region"]


def gp3_per_gb_hour() -> float:
    return _data()["storage"]["gp3-gb-month"] / HOURS_PER_MONTH


def alarm_per_hour() -> float:
    return _data()["storage"]["alarm-month"] / HOURS_PER_MONTH


@functools.cache
def instance_types() -> tuple[InstanceType, ...]:
    return tuple(
        InstanceType(
            name=name,
            arch=row["arch"],
            vcpu=row["vcpu"],
            ram_gb=row["ram-gb"],
            price=row["price"],
            gpu=row.get("gpu"),
            gpu_count=row.get("gpu-count", 0),
            gpu_memory_gb=row.get("gpu-memory-gb", 0),
        )
        for name, row in _data()["type"].items()
    )


def lookup(name: str) -> InstanceType | None:
    """A catalog row by type name; None for types mlenv has no data on (still launchable)."""
    return next((row for row in instance_types() if row.name == name), None)


def fits(row: InstanceType, target: Target) -> bool:
    """Whether an instance type can run ``target`` (and does not pay for GPUs a CPU target ignores)."""
    if EC2_ARCH.get(target.platform) != row.arch:
        return False
    if (target.cpu_min or 0) > row.vcpu or (target.ram_min or 0) > row.ram_gb:
        return False
    if not target.cuda:
        return row.gpu is None
    if row.gpu is None or row.gpu_count < max(target.gpu_count, 1):
        return False
    if target.gpu and row.gpu != target.gpu:
        return False
    if (target.gpu_memory_min or 0) > row.gpu_memory_gb:
        return False
    return hardware.cuda_release(target.cuda).supports_sm(hardware.gpu_model(row.gpu).sm)


def cheapest(target: Target) -> InstanceType:
    """The cheapest catalog type that satisfies ``target`` (ties: the smaller type by name)."""
    if target.platform not in EC2_ARCH:
        raise UsageError(
            f"target {target.name!r} is for {target.platform}; EC2 boxes run linux/x86_64 or linux/aarch64",
            hint="pick a linux target with --target",
        )
    candidates = [row for row in instance_types() if fits(row, target)]
    if not candidates:
        wanted = ", ".join(f"{key}={value}" for key, value in target.hardware().items())
        raise UsageError(
            f"no EC2 instance type in mlenv's catalog satisfies target {target.name!r} ({wanted})",
            hint="relax the target's requirements, or name a type with --instance-type / [devbox] instance-type",
        )
    return min(candidates, key=lambda row: (row.price, row.name))


def check_type_name(name: str) -> InstanceType | None:
    """Validate an explicit ``--instance-type``; a well-formed type mlenv has no data on still
    launches (AWS is the judge of what exists), only without a price."""
    if not re.fullmatch(r"[a-z][a-z0-9-]*\.[a-z0-9-]+", name):
        raise UsageError(f"{name!r} is not an EC2 instance type name", hint="e.g. g5.xlarge")
    return lookup(name)
