"""Search spaces: ``-p name=values`` and ``[sweep.parameters]`` -> the list of runs, each with a stable id.

Three modes, as in Ray Tune / W&B sweeps: ``grid`` (every combination, the default), ``zip`` (the
i-th value of every parameter together) and ``random`` (N samples from lists and ranges, seeded).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
import re
from dataclasses import dataclass, field
from typing import Any

from mlenv.errors import UsageError, did_you_mean

DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice")
MODES = ("grid", "zip", "random")
DEFAULT_SEED = 0  # a random sweep is reproducible (and resumable) unless the user asks otherwise


@dataclass(frozen=True)
class Distribution:
    kind: str  # uniform | loguniform | int
    low: float
    high: float

    def sample(self, rng: random.Random) -> Any:
        if self.kind == "int":
            return rng.randint(int(self.low), int(self.high))
        if self.kind == "loguniform":
            value = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        else:
            value = rng.uniform(self.low, self.high)
        # 6 significant digits: readable run ids, and the same value after a round trip through text
        return float(f"{value:.6g}")

    def __str__(self) -> str:
        return f"{self.kind}:{self.low:g}:{self.high:g}"


@dataclass(frozen=True)
class Axis:
    """One swept parameter: explicit values, or a range to sample from (random mode only)."""

    name: str
    values: tuple[Any, ...] = ()
    distribution: Distribution | None = None


@dataclass(frozen=True)
class Run:
    run_id: str
    parameters: dict[str, Any] = field(hash=False)


_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _number(text: str, where: str) -> float:
    try:
        number = float(text)
    except ValueError:
        raise UsageError(f"{where}: {text!r} is not a number",
                         hint="ranges are written like lr=loguniform:1e-4:1e-1 or epochs=int:1:10") from None
    if not math.isfinite(number):  # float() accepts nan and inf: no range is sampled between them
        raise UsageError(f"{where}: {text!r} is not a finite number", hint="bounds are finite numbers, e.g. 1e-4")
    return number


def parse_distribution(name: str, text: str) -> Distribution | tuple[str, ...] | None:
    """``kind:low:high`` / ``choice:a,b`` -> a Distribution (or the choices); None when not a range."""
    kind, sep, rest = text.partition(":")
    if not sep or kind not in DISTRIBUTIONS:
        return None
    where = f"-p {name}={text}"
    if kind == "choice":
        choices = tuple(part.strip() for part in rest.split(","))
        if not rest or any(not part for part in choices):
            raise UsageError(f"{where}: choice needs values", hint=f"e.g. -p {name}=choice:adam,sgd")
        return choices
    bounds = rest.split(":")
    if len(bounds) != 2:
        raise UsageError(f"{where}: a {kind} range needs a low and a high bound",
                         hint=f"e.g. -p {name}={kind}:{'1:10' if kind == 'int' else '1e-4:1e-1'}")
    low, high = (_number(bound, where) for bound in bounds)
    if low > high:
        raise UsageError(f"{where}: the low bound is above the high bound",
                         hint=f"write {kind}:{bounds[1]}:{bounds[0]}")
    if kind == "loguniform" and low <= 0:
        raise UsageError(f"{where}: loguniform bounds must be positive", hint="use uniform for ranges that include 0")
    if kind == "int" and not (low.is_integer() and high.is_integer()):
        raise UsageError(f"{where}: int bounds must be whole numbers")
    return Distribution(kind, low, high)


def parse_cli_parameter(text: str) -> Axis:
    """One ``-p`` option: ``name=v1,v2``, ``name=loguniform:1e-4:1e-1``, ``name=choice:a,b``."""
    name, sep, values = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise UsageError(f"malformed -p {text!r}: expected NAME=VALUES",
                         hint="e.g. -p lr=0.1,0.01 or -p lr=loguniform:1e-4:1e-1")
    if not _NAME.match(name):
        raise UsageError(f"malformed -p {text!r}: {name!r} is not a parameter name",
                         hint="parameter names are Python identifiers, e.g. learning_rate")
    if values == "":
        raise UsageError(f"malformed -p {text!r}: no value after '='", hint=f"e.g. -p {name}=1,2,3")
    if values.lstrip()[:1] in ("[", "{"):
        return Axis(name, values=_flow_values(text, name, values))
    parsed = parse_distribution(name, values)
    if isinstance(parsed, Distribution):
        return Axis(name, distribution=parsed)
    if isinstance(parsed, tuple):
        return Axis(name, values=parsed)
    parts = tuple(part.strip() for part in values.split(","))
    if any(part == "" for part in parts):
        raise UsageError(f"malformed -p {text!r}: empty value in the list", hint="separate values with single commas")
    return Axis(name, values=parts)


def _flow_values(text: str, name: str, values: str) -> tuple[Any, ...]:
    """``-p 'layers=[8, 16]'`` is one list; ``-p 'layers=[8, 16], [32]'`` two (YAML flow values)."""
    import yaml

    try:
        parsed = yaml.safe_load(f"[{values}]")
    except yaml.YAMLError as exc:
        problem = str(getattr(exc, "problem", None) or exc).splitlines()[0]
        raise UsageError(f"malformed -p {text!r}: not a YAML list or dict ({problem})",
                         hint=f"e.g. -p '{name}=[8, 16]' (one list), -p '{name}=[8, 16], [32]' (two), "
                              f"or -y '{name}: [8, 16]'") from None
    return tuple(parsed)


def parse_yaml_parameters(text: str) -> list[Axis]:
    """One ``-y`` option, as papermill reads it: a YAML mapping of names to one value each."""
    import yaml
    from papermill.iorw import NoDatesSafeLoader

    example = "e.g. -y 'layers: [8, 16]' or -y '{lr: 0.1, layers: [8, 16]}'"
    try:
        data = yaml.load(text, Loader=NoDatesSafeLoader)
    except yaml.YAMLError as exc:
        problem = str(getattr(exc, "problem", None) or exc).splitlines()[0]
        raise UsageError(f"malformed -y {text!r}: {problem}", hint=example) from None
    if not isinstance(data, dict) or not data:
        raise UsageError(f"malformed -y {text!r}: expected NAME: VALUE", hint=example)
    axes = []
    for name, value in data.items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise UsageError(f"malformed -y {text!r}: {name!r} is not a parameter name",
                             hint="parameter names are Python identifiers, e.g. learning_rate")
        axes.append(Axis(name, values=(value,)))
    return axes


def parse_raw_parameter(text: str) -> Axis:
    """One ``-r NAME=TEXT`` option: TEXT is one string value, commas, brackets and all."""
    from mlenv.sweep.notebook import RawText

    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not _NAME.match(name):
        raise UsageError(f"malformed -r {text!r}: expected NAME=TEXT", hint="e.g. -r 'note=a, b and c'")
    return Axis(name, values=(RawText(value),))


def merge_values(axes: list[Axis]) -> list[Axis]:
    """Options naming the same parameter add values to it (``-p lr=0.1 -y 'lr: 0.5'``: two values)."""
    merged: dict[str, Axis] = {}
    for axis in axes:
        previous = merged.get(axis.name)
        if previous is None or previous.distribution or axis.distribution:
            merged[axis.name] = axis  # a range replaces: it cannot be added to
        else:
            merged[axis.name] = Axis(axis.name, values=previous.values + axis.values)
    return list(merged.values())


def parse_table_parameter(name: str, value: Any, where: str) -> Axis:
    """One entry of ``[sweep.parameters]``: a list, a single value, a range string or a range table."""
    if isinstance(value, list):
        if not value:
            raise UsageError(f"{where}: {name} has an empty list of values")
        return Axis(name, values=tuple(value))
    if isinstance(value, str):
        parsed = parse_distribution(name, value)
        if isinstance(parsed, Distribution):
            return Axis(name, distribution=parsed)
        if isinstance(parsed, tuple):
            return Axis(name, values=parsed)
        return Axis(name, values=(value,))
    if isinstance(value, dict):
        kind = value.get("distribution")
        if kind not in ("uniform", "loguniform", "int") or set(value) - {"distribution", "low", "high"}:
            raise UsageError(f"{where}: {name} must be a list, a value, or {{distribution, low, high}}",
                             hint='e.g. lr = { distribution = "loguniform", low = 1e-4, high = 1e-1 }')
        parsed = parse_distribution(name, f"{kind}:{value.get('low')}:{value.get('high')}")
        assert isinstance(parsed, Distribution)
        return Axis(name, distribution=parsed)
    return Axis(name, values=(value,))


def run_id(parameters: dict[str, Any]) -> str:
    """A readable, stable id: the same parameters give the same id in every invocation and order."""
    canonical = json.dumps(parameters, sort_keys=True, separators=(",", ":"), default=str)
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:8]
    if not parameters:
        return f"run-{digest}"
    slug = "_".join(f"{key}={_short(parameters[key])}" for key in sorted(parameters))
    slug = re.sub(r"[^A-Za-z0-9.=+_-]+", "-", slug).strip("-")[:60].rstrip("-_")
    return f"{slug}-{digest}"


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return str(value)


def expand(axes: list[Axis], mode: str, *, samples: int | None = None, seed: int | None = None,
           typer_fn=None) -> list[Run]:
    """The runs of a space, in a stable order, duplicates dropped.

    ``typer_fn(name, value)`` types each value like the notebook's default (see notebook.coerce).
    """
    typed = typer_fn or (lambda name, value: value)
    if mode not in MODES:
        raise UsageError(f"unknown sweep mode {mode!r}", hint=did_you_mean(mode, MODES) or f"one of {', '.join(MODES)}")
    ranges = [axis.name for axis in axes if axis.distribution]
    if mode != "random" and ranges:
        raise UsageError(f"{', '.join(ranges)}: a range can only be sampled",
                         hint=f"add --random N (and --seed S), or give explicit values, e.g. -p {ranges[0]}=0.1,0.01")
    if mode == "random" and not samples:
        raise UsageError("a random sweep needs a number of samples", hint="e.g. --random 20 --seed 1")
    names = [axis.name for axis in axes]
    value_lists = {axis.name: [typed(axis.name, value) for value in axis.values]
                   for axis in axes if not axis.distribution}

    combos: list[dict[str, Any]]
    if mode == "grid":
        combos = [dict(zip(names, combo, strict=True)) for combo in itertools.product(*(value_lists[n] for n in names))]
    elif mode == "zip":
        lengths = {name: len(values) for name, values in value_lists.items()}
        if len(set(lengths.values())) > 1:
            listing = ", ".join(f"{name} has {length}" for name, length in lengths.items())
            raise UsageError(f"--zip needs the same number of values for every parameter ({listing})",
                             hint="give each -p the same number of values, or drop --zip for a grid")
        combos = ([dict(zip(names, combo, strict=True)) for combo in zip(*(value_lists[n] for n in names), strict=True)]
                  if names else [{}])
    else:
        rng = random.Random(DEFAULT_SEED if seed is None else seed)
        combos = []
        for _ in range(samples or 0):
            combo = {}
            for axis in axes:
                if axis.distribution:
                    combo[axis.name] = typed(axis.name, axis.distribution.sample(rng))
                else:
                    combo[axis.name] = rng.choice(value_lists[axis.name])
            combos.append(combo)

    runs: list[Run] = []
    seen: set[str] = set()
    for combo in combos:
        identifier = run_id(combo)
        if identifier not in seen:
            seen.add(identifier)
            runs.append(Run(identifier, combo))
    return runs
