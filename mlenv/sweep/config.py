"""The sweep's settings, merged from (lowest first) ``[sweep]`` in mlenv.toml, ``-f sweep.toml``, the CLI."""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from mlenv.errors import SpecError, UsageError
from mlenv.sweep.space import (
    Axis,
    merge_values,
    parse_cli_parameter,
    parse_raw_parameter,
    parse_table_parameter,
    parse_yaml_parameters,
)
from mlenv.sweep.store import is_url


@dataclass
class SweepOptions:
    notebook: Path | str  # a local path, or a URL papermill can read (s3://...)
    axes: list[Axis] = field(default_factory=list)
    mode: str = "grid"
    samples: int | None = None
    seed: int | None = None
    jobs: int | None = None
    timeout: float | None = None
    retries: int = 1
    output: str | None = None
    sort: str | None = None
    kernel: str | None = None
    cluster: str | None = None
    resume: bool = False
    allow_drift: bool = False  # run although the kernel does not match mlenv.lock (recorded)
    spec_path: Path | None = None  # --spec: the project whose [sweep] and lock apply (else found from the folders)

    def output_location(self) -> str:
        return self.output or str(Path("sweeps") / notebook_stem(self.notebook))


def notebook_stem(notebook: Path | str) -> str:
    """``train`` for ``train.ipynb``, a local path or a URL (``s3://bucket/nb/train.ipynb``)."""
    return PurePosixPath(str(notebook).split("?")[0]).stem if is_url(notebook) else Path(notebook).stem


def _check_table(table: dict, text: str, path: Path, prefix: tuple) -> dict[str, Any]:
    """The [sweep] keys of a file, validated by the spec's own [sweep] model (file:line:col errors)."""
    from mlenv.spec import SweepSettings, parse_section

    return parse_section(SweepSettings, table, text=text, path=path, where=prefix).written()


def read_sweep_file(path: Path) -> tuple[dict[str, Any], Path]:
    """``-f sweep.toml``: the [sweep] keys, at the top level or in a [sweep] table."""
    if path.is_dir() or not path.is_file():
        raise UsageError(f"-f {path}: no such file",
                         hint="pass a TOML file with the sweep settings (notebook, parameters, mode, ...)")
    text = path.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"malformed TOML: {exc}", path=str(path)) from None
    prefix: tuple = ()
    if set(data) == {"sweep"} and isinstance(data["sweep"], dict):
        data, prefix = data["sweep"], ("sweep",)
    return _check_table(data, text, path, prefix), path.resolve().parent


def _project_settings(notebook: Path | str | None, cwd: Path,
                      spec_path: Path | None = None) -> tuple[dict[str, Any], Path] | None:
    """[sweep] of ``spec_path`` (``--spec``: it must load), else of the project around ``cwd``."""
    from mlenv.spec import find_spec, load_spec

    if spec_path is None:
        try:
            spec_path = find_spec(cwd)
        except SpecError:
            return None  # a sweep needs no project: a notebook is enough
    spec = load_spec(spec_path)
    settings = spec.sweep.written()
    if not settings:
        return None
    configured = settings.get("notebook")
    if notebook is not None and configured and str(notebook) != configured and (
            is_url(notebook) or (spec.root / configured).resolve() != Path(notebook).resolve()):
        return None  # [sweep] describes another notebook
    return settings, spec.root


def resolve_options(
    notebook: str | None,
    parameters: list[str],
    *,
    yaml_parameters: Sequence[str] = (),
    raw_parameters: Sequence[str] = (),
    file: str | None = None,
    zip_mode: bool = False,
    random_samples: int | None = None,
    seed: int | None = None,
    jobs: int | None = None,
    timeout: float | None = None,
    retries: int | None = None,
    output: str | None = None,
    sort: str | None = None,
    kernel: str | None = None,
    cluster: str | None = None,
    resume: bool = False,
    allow_drift: bool = False,
    spec_path: Path | None = None,
    cwd: Path | None = None,
) -> SweepOptions:
    cwd = cwd or Path.cwd()
    spec_path = cwd / spec_path if spec_path is not None else None
    notebook_path: Path | str | None = (notebook if is_url(notebook) else cwd / notebook) if notebook else None
    layers: list[tuple[dict[str, Any], Path]] = []
    project = _project_settings(notebook_path, cwd, spec_path)
    if project:
        layers.append(project)
    if file:
        layers.append(read_sweep_file(cwd / file))

    merged: dict[str, Any] = {}
    axes: dict[str, Axis] = {}
    for settings, base in layers:
        for key, value in settings.items():
            if key == "parameters":
                for name, spec_value in value.items():
                    axes[name] = parse_table_parameter(name, spec_value, f"sweep parameters in {base}")
            elif key in ("notebook", "output") and not is_url(str(value)):
                merged[key] = str(base / value)
            else:
                merged[key] = value
    given = [parse_cli_parameter(text) for text in parameters]
    for text in yaml_parameters:
        given.extend(parse_yaml_parameters(text))
    given.extend(parse_raw_parameter(text) for text in raw_parameters)
    for axis in merge_values(given):  # the command line replaces a parameter of the files
        axes[axis.name] = axis

    if zip_mode and random_samples is not None:
        raise UsageError("--zip and --random exclude each other", hint="pick one way to combine the values")
    if random_samples is not None and random_samples < 1:
        raise UsageError("--random needs a positive number of samples", hint="e.g. --random 20")
    cli = {"jobs": jobs, "timeout": timeout, "retries": retries, "output": output, "sort": sort, "kernel": kernel,
           "cluster": cluster, "seed": seed}
    if output is not None and not is_url(output):
        cli["output"] = str(cwd / output)
    merged.update({key: value for key, value in cli.items() if value is not None})
    if zip_mode:
        merged["mode"] = "zip"
    if random_samples is not None:
        merged["mode"], merged["samples"] = "random", random_samples
    if merged.get("mode") == "random" and not merged.get("samples"):
        raise UsageError("a random sweep needs a number of samples",
                         hint="--random N, or samples = N in the sweep settings")

    configured = merged.get("notebook")
    path = notebook_path or ((configured if is_url(configured) else Path(configured)) if configured else None)
    if path is None:
        raise UsageError("which notebook? none given, and mlenv.toml names no sweep notebook",
                         hint="mlenv sweep train.ipynb -p lr=0.1,0.01")
    if merged.get("jobs") is not None and merged["jobs"] < 1:
        raise UsageError("--jobs must be at least 1")
    if merged.get("timeout") is not None and merged["timeout"] <= 0:
        raise UsageError("--timeout must be a positive number of seconds")
    if merged.get("retries") is not None and merged["retries"] < 0:
        raise UsageError("--retries cannot be negative")
    return SweepOptions(
        notebook=path, axes=list(axes.values()), mode=merged.get("mode", "grid"), samples=merged.get("samples"),
        seed=merged.get("seed"), jobs=merged.get("jobs"), timeout=merged.get("timeout"),
        retries=merged.get("retries", 1), output=merged.get("output") or str(cwd / "sweeps" / notebook_stem(path)),
        sort=merged.get("sort"), kernel=merged.get("kernel"), cluster=merged.get("cluster"), resume=resume,
        allow_drift=allow_drift, spec_path=spec_path,
    )
