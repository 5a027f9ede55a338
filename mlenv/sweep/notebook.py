"""What the sweep needs to know about a notebook before running it: parameters, their types, kernel."""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlenv.errors import SpecError, SweepError, UsageError, did_you_mean
from mlenv.fsutil import sha256_bytes


@dataclass(frozen=True)
class Parameter:
    name: str
    default: Any  # the literal default, or None when it is not a literal
    type_name: str | None  # "int", "float", "bool", "str", "list", "dict"; None when unknown
    source: str  # the default as written in the cell

    def describe(self) -> str:
        return f"{self.name}: {self.type_name or 'any'} = {self.source}"


@dataclass(frozen=True)
class NotebookInfo:
    path: Path
    text: str  # the notebook file as read: shipped to remote workers, hashed for resume
    kernel: str
    language: str
    has_parameters_cell: bool
    parameters: dict[str, Parameter]

    @property
    def sha256(self) -> str:
        return sha256_bytes(self.text.encode())


_ANNOTATION_TYPES = {"int": "int", "float": "float", "bool": "bool", "str": "str", "list": "list", "dict": "dict"}


def _literal_type(value: Any) -> str | None:
    for kind, name in ((bool, "bool"), (int, "int"), (float, "float"), (str, "str"), (list, "list"),
                       (tuple, "list"), (dict, "dict")):
        if isinstance(value, kind):
            return name
    return None


def load_notebook(path: str | Path, kernel: str | None = None) -> NotebookInfo:
    """Read and inspect a notebook; every problem is one clear error raised before any run starts."""
    import nbformat
    from papermill.translators import papermill_translators

    path = Path(path)
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.ipynb"))[:5]
        raise UsageError(f"{path} is a folder, not a notebook",
                         hint=f"pass one notebook: {', '.join(found)}" if found else "pass the .ipynb file to sweep")
    if not path.is_file():
        raise UsageError(f"notebook {path} does not exist", hint="check the path (relative to the current folder)")
    try:
        text = path.read_text(encoding="utf-8")
        nb = nbformat.reads(text, as_version=4)
    except (UnicodeDecodeError, ValueError, KeyError, nbformat.reader.NotJSONError) as exc:
        raise SpecError(f"not a readable notebook: {str(exc).splitlines()[0][:200]}", path=str(path),
                        hint="sweep takes a Jupyter .ipynb file") from None

    kernelspec = nb.metadata.get("kernelspec") or {}
    kernel_name = kernel or kernelspec.get("name")
    if not kernel_name:
        raise SweepError(f"{path.name} names no kernel (no kernelspec in its metadata)",
                         hint="pass --kernel python3 (see `jupyter kernelspec list`), or save it from Jupyter once")
    check_kernel(kernel_name)
    language = (nb.metadata.get("language_info") or {}).get("name") or kernelspec.get("language") or "python"

    parameters: dict[str, Parameter] = {}
    cell = next((c for c in nb.cells if "parameters" in (c.metadata.get("tags") or [])), None)
    if cell is not None:
        translator = papermill_translators.find_translator(kernel_name, language)
        try:
            inspected = translator.inspect(cell)
        except NotImplementedError:
            inspected = []
        for item in inspected:
            try:
                default = ast.literal_eval(item.default)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                default = None
            annotation = (item.inferred_type_name or "").strip().lower()
            type_name = _ANNOTATION_TYPES.get(annotation) or _literal_type(default)
            parameters[item.name] = Parameter(item.name, default, type_name, item.default)
    return NotebookInfo(path=path, text=text, kernel=kernel_name, language=language,
                        has_parameters_cell=cell is not None, parameters=parameters)


def check_kernel(name: str) -> None:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    manager = KernelSpecManager()
    try:
        manager.get_kernel_spec(name)
    except NoSuchKernel:
        known = sorted(manager.find_kernel_specs())
        raise SweepError(
            f"no Jupyter kernel named {name!r} on this machine",
            hint=did_you_mean(name, known) or (f"installed kernels: {', '.join(known)}; pass --kernel NAME"
                                               if known else "install one: python -m ipykernel install --user"),
        ) from None


# --- typing values ------------------------------------------------------------------------------

_TRUE, _FALSE = {"true", "yes", "1", "on"}, {"false", "no", "0", "off"}


def coerce(parameter: Parameter | None, value: Any, *, name: str) -> Any:
    """``value`` (text from the command line, or a TOML value) typed like the notebook's default."""
    kind = parameter.type_name if parameter else None
    text = value if isinstance(value, str) else None
    try:
        if kind == "int":
            if text is not None:
                return int(text.replace("_", ""))
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        elif kind == "float":
            if text is not None:
                return float(text)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
        elif kind == "bool":
            if isinstance(value, bool):
                return value
            if text is not None and text.strip().lower() in _TRUE | _FALSE:
                return text.strip().lower() in _TRUE
        elif kind == "str":
            return value if text is not None else str(value)
        elif kind in ("list", "dict"):
            if text is not None:
                parsed = _literal(text)
                if isinstance(parsed, (list, dict)):
                    return parsed
            elif isinstance(value, (list, dict)):
                return value
        else:  # unknown default (an expression): take the value as a literal when it reads as one
            return _literal(text) if text is not None else value
    except ValueError:
        pass
    raise UsageError(
        f"parameter {name}: {value!r} is not a valid {kind}",
        hint=f"the notebook's default is {parameter.source}" if parameter else None,
    )


def _literal(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text
