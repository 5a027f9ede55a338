"""What the sweep needs to know about a notebook before running it: parameters, their types, kernel."""

from __future__ import annotations

import ast
import contextlib
import json
import re
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
    note: str | None = None  # why the type is unknown, when it is worth saying

    def describe(self) -> str:
        text = f"{self.name}: {self.type_name or 'any'} = {self.source}"
        return f"{text} ({self.note})" if self.note else text


@dataclass(frozen=True)
class NotebookInfo:
    path: Path
    text: str  # the notebook file as read: shipped to remote workers, hashed for resume
    kernel: str
    language: str
    has_parameters_cell: bool
    parameters: dict[str, Parameter]
    location: str = ""  # as given: a path, or the URL a remote notebook was read from

    @property
    def is_remote(self) -> bool:
        from mlenv.sweep.store import is_url

        return is_url(self.location)

    @property
    def folder(self) -> str:
        """Where its kernels start: the notebook's folder, or the current one for a remote notebook."""
        import os

        return os.getcwd() if self.is_remote else str(self.path.resolve().parent)

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
    """Read (a path or a URL papermill reads) and inspect a notebook; every problem is one clear error
    raised before any run starts."""
    from mlenv.sweep.store import is_url, read_notebook_text

    if is_url(path):
        location = str(path)
        text = read_notebook_text(location)
        path = Path(location.split("?")[0].rsplit("/", 1)[-1] or "notebook.ipynb")  # for names only
    else:
        path = Path(path)
        location = str(path)
        if path.is_dir():
            found = sorted(p.name for p in path.glob("*.ipynb"))[:5]
            raise UsageError(f"{path} is a folder, not a notebook",
                             hint=(f"pass one notebook: {', '.join(found)}" if found
                                   else "pass the .ipynb file to sweep"))
        if not path.is_file():
            raise UsageError(f"notebook {path} does not exist", hint="check the path (relative to the current folder)")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise SpecError("not a readable notebook: the file is not UTF-8 text", path=str(path),
                            hint="sweep takes a Jupyter .ipynb file") from None
    nb = parse_notebook(text, location)
    kernelspec = nb.metadata.get("kernelspec") or {}
    kernel_name = kernel or kernelspec.get("name")
    if not kernel_name:
        raise SweepError(f"{path.name} names no kernel (no kernelspec in its metadata)",
                         hint="pass --kernel python3 (see `jupyter kernelspec list`), or save it from Jupyter once")
    kernel_name = check_kernel(kernel_name)
    language = (nb.metadata.get("language_info") or {}).get("name") or kernelspec.get("language") or "python"

    cell = next((c for c in nb.cells if "parameters" in (c.metadata.get("tags") or [])), None)
    parameters = inspect_parameters(cell, kernel_name, language) if cell is not None else {}
    return NotebookInfo(path=path, text=text, kernel=kernel_name, language=language,
                        has_parameters_cell=cell is not None, parameters=parameters, location=location)


def parse_notebook(text: str, where: str):
    """The notebook in ``text`` as an nbformat v4 node; anything else is one clear error."""
    import nbformat

    hint = "sweep takes a Jupyter .ipynb file; open and save it in Jupyter to repair it"
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise SpecError(f"not a readable notebook: not JSON ({exc})", path=where, hint=hint) from None
    if not isinstance(data, dict) or "cells" not in data and "worksheets" not in data:
        raise SpecError("not a notebook: the file is JSON but has no cells", path=where, hint=hint)
    try:
        nb = nbformat.reads(text, as_version=4, capture_validation_error={})
        nbformat.validate(nb)
    except nbformat.ValidationError as exc:
        raise SpecError(f"not a valid notebook: {_validation_message(exc)}", path=where, hint=hint) from None
    except (AttributeError, TypeError, KeyError, ValueError) as exc:  # nbformat's upgraders assume the schema
        raise SpecError(f"not a valid notebook: {type(exc).__name__}: {str(exc)[:200]}", path=where,
                        hint=hint) from None
    return nb


def _validation_message(exc) -> str:
    message = str(getattr(exc, "message", None) or exc).splitlines()[0][:200]
    place = "/".join(str(part) for part in getattr(exc, "absolute_path", None) or ())
    return f"{message} (at {place})" if place else message


def resolve_kernel_name(name: str) -> str:
    """The kernelspec jupyter_client starts for ``name``: 'python' is an alias of the native kernel."""
    from jupyter_client.kernelspec import NATIVE_KERNEL_NAME

    return NATIVE_KERNEL_NAME if name == "python" else name


def check_kernel(name: str) -> str:
    """The resolved kernel name, or one clear error when no such kernel is installed."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    name = resolve_kernel_name(name)
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
    return name


def inspect_parameters(cell, kernel_name: str, language: str) -> dict[str, Parameter]:
    """The names assigned in the parameters cell, typed by their defaults.

    papermill's inspection drops lines it cannot parse (``d = a == 3``) and logs a warning; papermill
    still injects such names, so they are known here too, untyped.  Its log line is kept from the user.
    """
    from papermill.translators import papermill_translators

    translator = papermill_translators.find_translator(kernel_name, language)
    try:
        with papermill_quiet():
            inspected = translator.inspect(cell)
    except NotImplementedError:
        inspected = []
    parameters: dict[str, Parameter] = {}
    for item in inspected:
        try:
            default = ast.literal_eval(item.default)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            default = None
        annotation = (item.inferred_type_name or "").strip().lower()
        type_name = _ANNOTATION_TYPES.get(annotation) or _literal_type(default)
        parameters[item.name] = Parameter(item.name, default, type_name, item.default)
    if language == "python":
        for name, source in _assigned_names(cell.source):
            if name not in parameters:
                parameters[name] = Parameter(name, None, None, source, note="papermill could not read its default")
    return parameters


@contextlib.contextmanager
def papermill_quiet():
    """papermill's log lines (\"Unable to parse line ...\") must not reach the user unformatted; what
    they say is reported by mlenv instead (an untyped parameter, with a note)."""
    import logging

    # a disabled parent does not silence its children: each logger that speaks is named
    loggers = [logging.getLogger(name) for name in ("papermill", "papermill.translators", "papermill.parameterize")]
    states = [logger.disabled for logger in loggers]
    for logger in loggers:
        logger.disabled = True
    try:
        yield
    finally:
        for logger, state in zip(loggers, states, strict=True):
            logger.disabled = state


_ASSIGNMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*(?::[^=]*)?=(?!=)\s*(.*)$")


def _assigned_names(source: str) -> list[tuple[str, str]]:
    """Top-level ``name = ...`` lines of a cell (magics and all), as papermill's injection would see them."""
    found = []
    for line in source.splitlines():
        match = _ASSIGNMENT.match(line)
        if match:
            found.append((match.group(1), match.group(2).split("#")[0].strip() or "?"))
    return found


# --- typing values ------------------------------------------------------------------------------

_TRUE, _FALSE = {"true", "yes", "1", "on"}, {"false", "no", "0", "off"}
_NONE = {"none", "null", "~"}


class RawText(str):
    """A value given with ``-r NAME=TEXT``: the string as typed, never split or converted."""


def coerce(parameter: Parameter | None, value: Any, *, name: str) -> Any:
    """``value`` (text from the command line, or a TOML/YAML value) typed like the notebook's default.

    As with papermill's ``-p``, ``None`` (or ``null``) is None whatever the default; ``-r`` text is
    passed as the string typed.
    """
    if isinstance(value, RawText):
        return str(value)
    kind = parameter.type_name if parameter else None
    text = value if isinstance(value, str) else None
    if value is None or (text is not None and kind != "str" and text.strip().lower() in _NONE):
        return None
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
                parsed = literal(text)
                if isinstance(parsed, (list, dict)):
                    return parsed
            elif isinstance(value, (list, dict)):
                return value
        else:  # unknown default (an expression): take the value as a literal when it reads as one
            return literal(text) if text is not None else value
    except ValueError:
        pass
    raise UsageError(f"parameter {name}: {value!r} is not a valid {kind}", hint=_how_to_pass(parameter, name))


def _how_to_pass(parameter: Parameter | None, name: str) -> str:
    kind = parameter.type_name if parameter else None
    default = f"the notebook's default is {parameter.source}; " if parameter else ""
    if kind == "list":
        return f"{default}pass a list as YAML: -p '{name}=[8, 16]' or -y '{name}: [8, 16]' (repeat for more values)"
    if kind == "dict":
        return f"{default}pass a dict as YAML: -p '{name}={{a: 1}}' or -y '{name}: {{a: 1}}' (repeat for more values)"
    return (f"{default}-p splits values at commas; a text with commas: -r '{name}=a,b'; "
            f"None: -p {name}=None; a list: -y '{name}: [1, 2]'")


def literal(text: str) -> Any:
    """A value typed as JSON, a Python literal or YAML would read it; the text itself otherwise."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    if text.lstrip()[:1] in ("[", "{"):
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError:
            pass
    return text
