"""A wheel of the running mlenv, for the dev image's ``mlenv-tool`` stage.

The dev image carries the very mlenv that generated its Dockerfile (``mlenv doctor`` inside a
devcontainer or a dev box must read the lock the way this mlenv wrote it), whether this mlenv is a
release, an editable checkout or a fork, and without assuming any release on a package index.
``mlenv gen``, ``mlenv ci init`` and ``mlenv build`` write the wheel to ``.mlenv/`` in the build
context, and the project commits it (as gradle-wrapper.jar or yarn's ``.yarn/releases``): a fresh
clone or a CI checkout builds the dev image, and CI installs mlenv, from the committed wheel.  The
Dockerfile installs it unless ``MLENV_REQUIREMENT`` names another (forks, mirrors).

The wheel is assembled here from the files of the running package rather than by a build backend:
an editable install or a checkout has no backend available offline, and the archive must be
byte-identical for identical files so that Docker reuses the layer that installs it.
"""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile
from importlib import metadata
from pathlib import Path

from mlenv import __version__

FOLDER = ".mlenv"
WHEEL = f"mlenv-{__version__}-py3-none-any.whl"
# What mlenv runs in the image and on a dev box: `mlenv doctor` (and `lock --check`): the CLI shell, the
# lock format and version parsing (tomli reads mlenv.toml); the box side of `mlenv sweep --on`:
# papermill, nbformat and pyyaml (notebooks, parameters), jinja2 (the report) and ipykernel (a notebook
# outside a project runs on a kernel of this venv's Python).  Docker, boto3, paramiko, distributed ...
# stay out of the tool venv.  Pinned to the versions this mlenv runs with, which are known to work
# with it.  A test checks that doctor and `lock --check` import nothing else and that a sweep runs
# with only these installed.
TOOL_REQUIREMENTS = ("typer", "rich", "packaging", "tomli", "tomli-w",
                     "papermill", "nbformat", "pyyaml", "jinja2", "ipykernel")
_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: same files, same bytes
WHEEL_PATTERN = "mlenv-*.whl"  # any version: the Dockerfile, the workflow and .dockerignore name it so
# how the .gitignore older mlenv wrote into .mlenv/ began (it ignored the wheel, which is committed now)
_OLD_IGNORE_HEADER = "# written by mlenv: the wheel the dev image installs"


def _package_files() -> list[tuple[str, Path]]:
    """(path inside the wheel, file on disk) for the mlenv package and its templates."""
    from mlenv.render import templates_dir

    package = Path(__file__).resolve().parent
    entries = [(f"mlenv/{path.relative_to(package).as_posix()}", path) for path in package.rglob("*")
               if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".pyo")
               and path.relative_to(package).parts[0] != "templates"]
    templates = templates_dir()
    entries += [(f"mlenv/templates/{path.relative_to(templates).as_posix()}", path) for path in templates.rglob("*")
                if path.is_file() and "__pycache__" not in path.parts]
    return sorted(entries)


def _requirement(name: str) -> str:
    try:
        return f"{name}=={metadata.version(name)}"
    except metadata.PackageNotFoundError:
        return name


def wheel_bytes() -> bytes:
    """The wheel of the running mlenv (deterministic for the same files and dependency versions)."""
    dist_info = f"mlenv-{__version__}.dist-info"
    files: list[tuple[str, bytes]] = [(name, path.read_bytes()) for name, path in _package_files()]
    meta = ["Metadata-Version: 2.1", "Name: mlenv", f"Version: {__version__}", "Requires-Python: >=3.11",
            "Summary: mlenv as installed in dev images (the mlenv that generated the Dockerfile)"]
    meta += [f"Requires-Dist: {_requirement(name)}" for name in TOOL_REQUIREMENTS]
    files += [
        (f"{dist_info}/METADATA", ("\n".join(meta) + "\n").encode()),
        (f"{dist_info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: mlenv\nRoot-Is-Purelib: true\nTag: py3-none-any\n"),
        (f"{dist_info}/entry_points.txt", b"[console_scripts]\nmlenv = mlenv._entry:main\n"),
    ]
    record = [f"{name},sha256={_urlsafe_digest(data)},{len(data)}" for name, data in files]
    files.append((f"{dist_info}/RECORD", ("\n".join(record + [f"{dist_info}/RECORD,,"]) + "\n").encode()))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in files:
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return buffer.getvalue()


def _urlsafe_digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def write_wheel(project_root: Path) -> tuple[Path, bool]:
    """Put the wheel into ``<project>/.mlenv/`` (rewritten only when it changed); its path, and
    whether it was (re)written.
    Older mlenv wheels there are removed, so the Dockerfile's ``COPY .mlenv/mlenv-*.whl`` sees one."""
    from mlenv.fsutil import atomic_write

    folder = project_root / FOLDER
    folder.mkdir(exist_ok=True)
    _drop_old_ignore(folder)
    target = folder / WHEEL
    data = wheel_bytes()
    changed = not target.is_file() or target.read_bytes() != data
    if changed:
        atomic_write(target, data)
    for other in folder.glob(WHEEL_PATTERN):
        if other != target:
            other.unlink()
    return target, changed


def wheel_is_current(project_root: Path) -> bool:
    """Whether ``.mlenv/`` holds exactly the wheel this mlenv would write (``gen --check``)."""
    target = project_root / FOLDER / WHEEL
    return (target.is_file() and target.read_bytes() == wheel_bytes()
            and [path.name for path in (project_root / FOLDER).glob(WHEEL_PATTERN)] == [WHEEL])


def _drop_old_ignore(folder: Path) -> None:
    """Older mlenv wrote ``.mlenv/.gitignore`` ignoring everything, the wheel included; the wheel is
    committed now.  Only that file of mlenv's is removed; one the user wrote is theirs (see
    ``ignored_note``)."""
    ignore = folder / ".gitignore"
    if ignore.is_file() and ignore.read_text(encoding="utf-8", errors="replace").startswith(_OLD_IGNORE_HEADER):
        ignore.unlink()


def ignored_note(project_root: Path, wheel: Path) -> str | None:
    """Advice when git ignores the wheel (fresh clones and CI checkouts would have no mlenv to install);
    None when git keeps it, outside a git work tree, or without git."""
    import shutil
    import subprocess

    git = shutil.which("git")
    if git is None:
        return None
    shown = wheel.relative_to(project_root).as_posix()
    result = subprocess.run([git, "check-ignore", "-q", "--", shown], cwd=project_root, check=False,
                            capture_output=True)
    if result.returncode != 0:  # 1: not ignored, 128: not a git work tree
        return None
    return (f"git ignores {shown}, so clones and CI checkouts will not have the mlenv the dev image and CI install; "
            f"un-ignore it (`git check-ignore -v {shown}` names the rule) and commit it")
