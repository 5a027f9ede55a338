"""What a target's resolution depends on, normalized, hashed and compared.

The lock stores each target's normalized inputs and their hash (conda-lock's approach), so
``mlenv lock --check`` can say which target went stale and exactly why — which dependency, which
hardware field — by comparing the spec with the lock alone, without the network.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from packaging.requirements import Requirement

from mlenv.spec import Spec, Target


def _normalize_requirements(requirements) -> list[str]:
    return sorted({str(Requirement(item)) for item in requirements})


def target_inputs(spec: Spec, target: Target) -> dict[str, Any]:
    from mlenv.lock.builds import torch_routing

    routing = torch_routing(spec, target)
    # the sources uv is given: the spec's, plus the torch packages sent to the target's build index
    sources = {**spec.sources_for(target), **routing.sources()}
    default = spec.default_index()
    # only indexes that can influence this target's resolution
    used = {default.name: default.url}
    for index in spec.indexes:
        if not index.explicit or index.name in sources.values():
            used[index.name] = index.url
    if routing.index is not None:
        used[routing.index.name] = routing.index.url
    inputs: dict[str, Any] = {
        "python": spec.python,
        "dependencies": _normalize_requirements(spec.dependencies),
        "groups": {name: _normalize_requirements(reqs) for name, reqs in sorted(spec.groups.items())},
        "indexes": dict(sorted(used.items())),
        "explicit-indexes": sorted(index.name for index in spec.indexes if index.explicit and index.name in used),
        "sources": dict(sorted(sources.items())),
        "hardware": target.hardware(),
    }
    if spec.exclusive_groups:  # only when used, so older locks stay fresh
        inputs["exclusive-groups"] = [sorted(item) for item in spec.exclusive_groups]
    return inputs


def input_hash(inputs: dict[str, Any]) -> str:
    canonical = json.dumps(inputs, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Change:
    """One difference between a target's locked inputs and the spec's current ones."""

    target: str
    field: str  # "dependencies", "groups.dev", "hardware.cuda", "python", "target", ...
    detail: str

    def __str__(self) -> str:
        return f"{self.target}: {self.detail}"


def _diff_requirements(target: str, field: str, old: list[str], new: list[str]) -> list[Change]:
    by_name_old = {Requirement(item).name.lower(): item for item in old}
    by_name_new = {Requirement(item).name.lower(): item for item in new}
    changes = []
    for name in sorted(by_name_old.keys() | by_name_new.keys()):
        before, after = by_name_old.get(name), by_name_new.get(name)
        if before == after:
            continue
        if before is None:
            changes.append(Change(target, field, f"{field}: added {after}"))
        elif after is None:
            changes.append(Change(target, field, f"{field}: removed {before}"))
        else:
            changes.append(Change(target, field, f"{field}: {before} -> {after}"))
    return changes


def _diff_mapping(target: str, field: str, old: dict, new: dict) -> list[Change]:
    changes = []
    for key in sorted(old.keys() | new.keys()):
        before, after = old.get(key), new.get(key)
        if before != after:
            changes.append(Change(target, f"{field}.{key}", f"{field}.{key}: {before!r} -> {after!r}"))
    return changes


def diff_inputs(target: str, old: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    """Explain, field by field, how a target's inputs changed since it was locked."""
    changes: list[Change] = []
    if old.get("python") != new.get("python"):
        changes.append(Change(target, "python", f"python: {old.get('python')} -> {new.get('python')}"))
    changes += _diff_requirements(target, "dependencies", old.get("dependencies", []), new.get("dependencies", []))
    old_groups, new_groups = old.get("groups", {}), new.get("groups", {})
    for group in sorted(old_groups.keys() | new_groups.keys()):
        if group not in new_groups:
            changes.append(Change(target, f"groups.{group}", f"group {group!r} removed"))
        elif group not in old_groups:
            changes.append(Change(target, f"groups.{group}", f"group {group!r} added"))
        else:
            changes += _diff_requirements(target, f"groups.{group}", old_groups[group], new_groups[group])
    changes += _diff_mapping(target, "indexes", old.get("indexes", {}), new.get("indexes", {}))
    if old.get("explicit-indexes") != new.get("explicit-indexes"):
        changes.append(Change(target, "explicit-indexes", "explicit indexes changed"))
    changes += _diff_mapping(target, "sources", old.get("sources", {}), new.get("sources", {}))
    changes += _diff_mapping(target, "hardware", old.get("hardware", {}), new.get("hardware", {}))
    if old.get("exclusive-groups", []) != new.get("exclusive-groups", []):
        changes.append(Change(target, "exclusive-groups", f"exclusive-groups: {old.get('exclusive-groups', [])} -> "
                              f"{new.get('exclusive-groups', [])}"))
    if not changes and old != new:
        changes.append(Change(target, "inputs", "inputs changed"))
    return changes
