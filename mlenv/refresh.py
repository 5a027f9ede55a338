"""``mlenv init --refresh``: re-import the dependencies into an existing ``mlenv.toml``.

After ``init``, mlenv.toml is the spec and people edit it (targets, indexes, image settings,
comments).  When the requirements files it was imported from move on, ``--refresh`` reads them again
and replaces only what came from them: ``[project] dependencies``, ``exclusive-groups``,
``[dependency-groups]`` and ``[imported] files``.  Everything else, comments included, stays as it
was (tomlkit edits the document in place).  The result is validated before it is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from mlenv.errors import SpecError, UsageError
from mlenv.importers import Imported, Note, import_project
from mlenv.spec import SPEC_FILE, parse_spec


@dataclass
class Refresh:
    path: Path
    text: str
    changes: list[str] = field(default_factory=list)  # "+ numpy", "- pandas", "~ torch==2.5 -> torch==2.6"
    notes: list[Note] = field(default_factory=list)
    imported: Imported | None = None


def _diff(where: str, old: list[str], new: list[str]) -> list[str]:
    before = {canonicalize_name(Requirement(item).name): item for item in old}
    after = {canonicalize_name(Requirement(item).name): item for item in new}
    changes = []
    for name in sorted(before.keys() | after.keys()):
        if name not in after:
            changes.append(f"{where}: - {before[name]}")
        elif name not in before:
            changes.append(f"{where}: + {after[name]}")
        elif before[name] != after[name]:
            changes.append(f"{where}: ~ {before[name]} -> {after[name]}")
    return changes


def _array(items: list[str]):
    import tomlkit

    array = tomlkit.array()
    array.extend(items)
    return array.multiline(True) if items else array


def plan_refresh(root: Path, *, running_python: str) -> Refresh:
    import tomlkit

    path = Path(root) / SPEC_FILE
    if not path.is_file():
        raise UsageError(f"no {SPEC_FILE} in {root} to refresh", hint="run `mlenv init` first")
    original = path.read_text(encoding="utf-8")
    current = parse_spec(original, path)  # a broken spec is reported as such, not overwritten
    imported = import_project(Path(root), running_python=running_python)
    document = tomlkit.parse(original)

    project = document["project"]
    project["dependencies"] = _array(list(imported.dependencies))
    changes = _diff("dependencies", list(current.dependencies), list(imported.dependencies))
    if imported.exclusive_groups:
        project["exclusive-groups"] = [list(members) for members in imported.exclusive_groups]
    elif "exclusive-groups" in project:
        del project["exclusive-groups"]

    groups = {name: items for name, items in imported.groups.items() if items}
    for name in sorted(current.groups.keys() | groups.keys()):
        changes += _diff(f"group {name}", list(current.groups.get(name, ())), groups.get(name, []))
    if groups:
        table = tomlkit.table()
        for name in sorted(groups):
            table[name] = _array(groups[name])
        document["dependency-groups"] = table
    elif "dependency-groups" in document:
        del document["dependency-groups"]

    files = tomlkit.table()
    for relative, digest in sorted(imported.file_digests.items()):
        files[relative] = digest
    if "imported" not in document:
        document["imported"] = tomlkit.table()
    document["imported"]["files"] = files

    text = tomlkit.dumps(document)
    try:
        parse_spec(text, path)
    except SpecError as exc:
        raise SpecError(f"the refreshed {SPEC_FILE} does not validate: {exc.message}",
                        hint=exc.hint or "edit mlenv.toml by hand, or re-create it with `mlenv init --force`") from None
    return Refresh(path=path, text=text, changes=changes, notes=list(imported.notes), imported=imported)


def write_refresh(refresh: Refresh) -> None:
    from mlenv.fsutil import atomic_write

    atomic_write(refresh.path, refresh.text)
