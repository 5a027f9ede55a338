"""Read what a repository already declares into spec inputs for ``mlenv init``.

Sources, in this order: ``pyproject.toml`` (``[project]``, PEP 735 ``[dependency-groups]``,
``[tool.uv]`` indexes and sources), a conda ``environment.yml``, and pip requirements files
(``requirements*.txt``, ``*-requirements.txt``, ``requirements/*.txt``, pip-tools ``.in`` files).

Nothing is dropped silently: whatever cannot become part of ``mlenv.toml`` is returned as a
``Note`` and shown by ``mlenv init``.  Decisions worth knowing:

* ``-c constraints.txt``: constraints are not dependencies.  A constraint on a package the project
  depends on directly is merged into that dependency (``numpy`` + ``numpy<2`` -> ``numpy<2``), which
  is what pip would install anyway; constraints on other packages are reported, because
  ``mlenv.lock`` pins every version and a constraint that matters belongs in the dependencies.
* ``--hash`` options are dropped: the lock records the hashes of what it resolves.
* ``torch==2.5.1+cu124`` becomes ``torch==2.5.1`` plus a pin of torch to the ``pytorch-cu124`` index
  on CUDA targets, so a CPU target of the same spec can still resolve torch from PyPI.
* pip's git lines (``git+https://host/repo@v1#egg=name``, also after ``-e``) become the PEP 508 direct
  reference ``name @ git+https://host/repo@v1`` (a ``subdirectory=`` stays in the fragment, as uv reads
  it), which ``mlenv lock`` pins by commit; an editable one is imported as a plain one, and said so.
* Other ``-e``/editable installs, bare URLs/paths, git lines without ``#egg=`` and ``--find-links``
  are reported, not imported: they point at one machine's files, a flat page or a package whose name
  is unknown, not at something a lock can pin for every target.
* Credentials in index URLs are removed (they must not be committed); ``${VAR}`` forms are kept.

pip's parser is not importable as a library; ``pip-requirements-parser`` (its vendored copy) was
considered and not used: last released 2022 with a pyparsing copy of an old ``packaging``, so it
would accept and reject requirements differently from the ``packaging`` the rest of mlenv uses.
This module follows pip's file grammar (line continuations, ``#`` comments after whitespace, one
option line or one requirement with per-requirement options per logical line) and validates every
requirement with ``packaging``.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple
from urllib.parse import parse_qs, urlsplit

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name

from mlenv.errors import SpecError
from mlenv.fsutil import read_text
from mlenv.spec import parse_requirement
from mlenv.validate import CREDENTIAL_HINT, redact_text, redact_url
from mlenv.wording import counted

PYPI_URLS = {"https://pypi.org/simple", "https://pypi.python.org/simple", "https://pypi.org/simple/"}
PYTORCH_HOST = "download.pytorch.org"
# Packages the PyTorch indexes publish CUDA builds of; they follow torch onto a CUDA index.
TORCH_FAMILY = {"torch", "torchvision", "torchaudio", "torchtext", "torchdata", "torchrec", "fbgemm-gpu", "xformers"}
MAIN = "main"
# requirements file stems that mean "the project's own dependencies" rather than a group
_MAIN_STEMS = {"", "base", "main", "common", "core", "prod", "production", "runtime", "install", "default",
               "requirements"}
_REQ_FILE = re.compile(r"^(?:(?P<pre>.+?)[-_.])?req(?:uirement)?s(?:[-_.](?P<post>.+))?$", re.IGNORECASE)
_COMMENT = re.compile(r"(^|\s+)#.*$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_KNOWN_MINORS = [f"3.{minor}" for minor in range(8, 15)]


@dataclass(frozen=True)
class Note:
    origin: str  # "requirements.txt:12", "environment.yml:7", "pyproject.toml"
    kind: str  # constraint, find-links, editable, url, hash, option, conda, credentials, file, cuda, python
    text: str


@dataclass(frozen=True)
class ImportedIndex:
    name: str
    url: str
    explicit: bool = False
    default: bool = False
    origin: str = ""

    @property
    def cuda(self) -> str | None:
        """CUDA version a PyTorch CUDA index serves (``.../whl/cu124`` -> ``12.4``)."""
        from mlenv.hardware.detect import cuda_from_local_version

        match = re.search(r"/(cu\d{2,3})/?$", self.url)
        return cuda_from_local_version(match.group(1)) if match else None

    @property
    def is_pytorch_cpu(self) -> bool:
        return urlsplit(self.url).hostname == PYTORCH_HOST and self.url.rstrip("/").endswith("/cpu")


@dataclass
class Imported:
    """Everything read from a repository, ready to become ``mlenv.toml``."""

    files: list[str] = field(default_factory=list)  # relative paths actually read
    name: str | None = None
    name_origin: str | None = None
    python: str | None = None
    python_origin: str | None = None
    dependencies: list[str] = field(default_factory=list)
    groups: dict[str, list[str]] = field(default_factory=dict)
    indexes: list[ImportedIndex] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)  # package -> index name, on every target
    cuda: str | None = None  # the CUDA the inputs ask for (torch +cu124, cudatoolkit=11.8, ...)
    cuda_origin: str | None = None
    cuda_packages: list[str] = field(default_factory=list)  # follow CUDA targets onto a PyTorch CUDA index
    cpu_packages: list[str] = field(default_factory=list)  # follow Linux CPU targets onto the PyTorch CPU index
    constraints: list[tuple[str, str]] = field(default_factory=list)  # (origin, requirement) not merged
    notes: list[Note] = field(default_factory=list)
    summary: list[tuple[str, str]] = field(default_factory=list)  # (file, what was imported from it)
    # groups that are alternatives (requirements-tpu.txt vs requirements-cuda.txt): one at a time
    exclusive_groups: list[list[str]] = field(default_factory=list)
    group_files: dict[str, str] = field(default_factory=dict)  # group -> the requirements file it came from
    file_digests: dict[str, str] = field(default_factory=dict)  # relative path -> "sha256:..." when read

    def note(self, origin: str, kind: str, text: str) -> None:
        # notes are printed and copied into mlenv.toml's comment block: never with a credential
        self.notes.append(Note(redact_text(origin), kind, redact_text(text)))

    def set_cuda(self, version: str, origin: str) -> None:
        """Record the CUDA the inputs ask for; ``origin`` says where and why ("requirements.txt:9 torch==...")."""
        if self.cuda is None:
            self.cuda, self.cuda_origin = version, origin
        elif self.cuda != version:
            self.note(origin, "cuda", f"asks for CUDA {version}, but {self.cuda_origin} asks for {self.cuda}: "
                      f"using {self.cuda}")

    def add_cuda_package(self, name: str) -> None:
        name = canonicalize_name(name)
        if name not in self.cuda_packages:
            self.cuda_packages.append(name)

    def add_index(self, url: str, origin: str, *, explicit: bool = False, default: bool = False,
                  name: str | None = None) -> ImportedIndex | None:
        url = self._clean_url(url, origin)
        if url.rstrip("/") + "/" in {u.rstrip("/") + "/" for u in PYPI_URLS}:
            return None  # PyPI is already the default index
        for existing in self.indexes:
            if existing.url == url:
                return existing
        name = name or index_name_for(url)
        taken = {index.name for index in self.indexes}
        unique, counter = name, 2
        while unique in taken:
            unique, counter = f"{name}-{counter}", counter + 1
        if default:
            for position, existing in enumerate(self.indexes):
                if existing.default:
                    self.note(origin, "option", f"a second --index-url ({url}) replaces {existing.url} as the "
                              "default index, as pip does")
                    self.indexes[position] = ImportedIndex(existing.name, existing.url, existing.explicit, False,
                                                           existing.origin)
        index = ImportedIndex(unique, url, explicit=explicit, default=default, origin=origin)
        self.indexes.append(index)
        return index

    def _clean_url(self, url: str, origin: str) -> str:
        clean = redact_url(url)
        if clean != url:
            host = urlsplit(clean).hostname or ""
            self.note(origin, "credentials", f"removed the credentials from index URL for {host}: mlenv.toml is "
                      f"committed; {CREDENTIAL_HINT}")
        return clean.rstrip("/")

    def without_credentials(self, requirement: Requirement, origin: str) -> Requirement:
        """``pkg @ https://user:token@host/...`` -> ``pkg @ https://host/...``, with a note saying how to
        supply the secret; ``${VAR}`` placeholders stay (uv expands them)."""
        if not requirement.url or redact_url(requirement.url) == requirement.url:
            return requirement
        clean = Requirement(str(requirement))
        clean.url = redact_url(requirement.url)
        host = urlsplit(clean.url).hostname or ""
        self.note(origin, "credentials", f"removed the credentials from the URL of {requirement.name} ({host}): "
                  f"mlenv.toml is committed; {CREDENTIAL_HINT}")
        return clean

    def requirements_of(self, group: str) -> list[str]:
        return self.dependencies if group == MAIN else self.groups.setdefault(group, [])


def index_name_for(url: str) -> str:
    """A readable [[index]] name: ``pytorch-cu124`` for PyTorch's indexes, the host name otherwise."""
    parts = urlsplit(url)
    host = (parts.hostname or "index").removeprefix("www.")
    if host == PYTORCH_HOST:
        match = re.search(r"/whl/(?:(nightly|test)/)?([A-Za-z0-9.]+)/?$", parts.path)
        if match:
            return "pytorch-" + (f"{match.group(1)}-" if match.group(1) else "") + match.group(2).replace(".", "")
        return "pytorch"
    name = re.sub(r"[^A-Za-z0-9]+", "-", host).strip("-").lower()
    return name or "index"


def group_for_file(relative: str) -> str | None:
    """Dependency group a requirements file stands for (``main`` for the project's own), or None
    when the name does not look like a requirements file."""
    path = Path(relative)
    stem = path.name.rsplit(".", 1)[0].lower()
    if len(path.parts) > 1 and path.parts[-2].lower() == "requirements":
        word = stem
    else:
        match = _REQ_FILE.match(stem)
        if not match:
            return None
        word = match.group("post") or match.group("pre") or ""
    word = re.sub(r"[-_.]+", "-", word).strip("-")
    if word in _MAIN_STEMS:
        return MAIN
    if word in ("development", "devel"):
        return "dev"
    if word in ("tests", "testing"):
        return "test"
    return word if _NAME.match(word) else None


# --- pip requirements files -----------------------------------------------------------------------

_OPTIONS: dict[str, tuple[str, bool]] = {
    # spelling -> (option, takes a value)
    "-r": ("requirement", True), "--requirement": ("requirement", True),
    "-c": ("constraint", True), "--constraint": ("constraint", True),
    "-e": ("editable", True), "--editable": ("editable", True),
    "-i": ("index-url", True), "--index-url": ("index-url", True),
    "--extra-index-url": ("extra-index-url", True),
    "--no-index": ("no-index", False),
    "-f": ("find-links", True), "--find-links": ("find-links", True),
    "--trusted-host": ("trusted-host", True),
    "--pre": ("pre", False),
    "--prefer-binary": ("prefer-binary", False),
    "--only-binary": ("only-binary", True),
    "--no-binary": ("no-binary", True),
    "--require-hashes": ("require-hashes", False),
    "--use-feature": ("use-feature", True),
}
_REQUIREMENT_OPTIONS = {"--hash", "--config-settings", "--global-option", "--install-option"}


class Req(NamedTuple):  # a tuple, not a frozen dataclass: made once per line, 3x cheaper to build
    requirement: Requirement
    origin: str  # "requirements.txt:12"
    text: str  # as written (whitespace trimmed), kept in mlenv.toml unless mlenv has to change it


@dataclass
class _Parsed:
    """What one requirements file (and the files it includes) contains."""

    requirements: list[Req] = field(default_factory=list)
    constraints: list[Req] = field(default_factory=list)
    hashes: int = 0


def logical_lines(text: str) -> Iterable[tuple[int, str]]:
    """pip's preprocessing: join ``\\`` continuations, strip comments; yields (first line number, line)."""
    buffer: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        if not buffer:
            start = number
        # a comment line ending in a backslash does not continue (pip: COMMENT_RE check first)
        if raw.endswith("\\") and not _COMMENT.match(raw):
            buffer.append(raw[:-1])
            continue
        buffer.append(raw)
        line = "".join(buffer) if len(buffer) > 1 else raw
        buffer = []
        if "#" in line:  # most lines have no comment: skip the substitution (100k-line files)
            line = _COMMENT.sub("", line)
        line = line.strip()
        if line:
            yield start, line
    if buffer:
        line = _COMMENT.sub("", "".join(buffer)).strip()
        if line:
            yield start, line


_NAMED_URL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\s*(\[[^\]]*\])?\s*@")
_WINDOWS_PATH = re.compile(r"^[A-Za-z]:[\\/]")
_EGG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9._,\s-]*\])?")  # #egg=name or name[extra,...]


def _looks_like_url_or_path(text: str) -> bool:
    first = text.split(";", 1)[0].strip() if ";" in text else text
    # the cheap tests first: almost every line is a plain requirement and fails all of them
    looks = "://" in first or first.startswith((".", "/", "~", "\\")) or first.endswith(
        (".whl", ".tar.gz", ".zip", ".tar.bz2")) or (first[1:2] == ":" and _WINDOWS_PATH.match(first) is not None)
    return looks and not _NAMED_URL.match(text)


def _split_options(line: str, where: str, path: Path, number: int) -> list[tuple[str, str | None, str]]:
    """Option tokens of an option line -> [(option, value, spelling)]."""
    try:
        tokens = shlex.split(line, posix=True)
    except ValueError as exc:
        raise SpecError(f"cannot parse options: {exc}", path=str(path), line=number) from None
    options = []
    position = 0
    while position < len(tokens):
        token = tokens[position]
        value: str | None = None
        spelling = token
        if token.startswith("--") and "=" in token:
            spelling, value = token.split("=", 1)
        elif not token.startswith("--") and len(token) > 2 and token[:2] in _OPTIONS:
            spelling, value = token[:2], token[2:].lstrip("=")
        if spelling not in _OPTIONS:
            known = sorted(option for option in _OPTIONS if option.startswith("--"))
            from mlenv.errors import did_you_mean

            raise SpecError(f"unknown option {spelling!r} in a requirements file", path=str(path), line=number,
                            hint=did_you_mean(spelling, known) or "pip accepts: " + ", ".join(known))
        option, takes_value = _OPTIONS[spelling]
        if takes_value and value is None:
            position += 1
            if position >= len(tokens):
                raise SpecError(f"{spelling} needs a value", path=str(path), line=number)
            value = tokens[position]
        options.append((option, value, spelling))
        position += 1
    return options


class RequirementsReader:
    """Reads requirements files into an ``Imported``, following ``-r``/``-c`` with cycle detection."""

    def __init__(self, imported: Imported, root: Path, top_level: dict[Path, str]) -> None:
        self.imported, self.root, self.top_level = imported, root, top_level
        self._rel: dict[Path, str] = {}  # asked once per line: resolving each time was most of init's time

    def rel(self, path: Path) -> str:
        if path not in self._rel:
            try:
                self._rel[path] = path.resolve().relative_to(self.root.resolve()).as_posix()
            except ValueError:
                self._rel[path] = str(path)
        return self._rel[path]

    def read(self, path: Path, group: str) -> _Parsed:
        parsed = _Parsed()
        self._read_file(path.resolve(), group, parsed, stack=(), constraint=False)
        if parsed.hashes:
            self.imported.note(self.rel(path), "hash", f"{counted(parsed.hashes, '--hash option')} dropped: "
                               "mlenv.lock records the hashes of what it resolves")
        return parsed

    def read_lines(self, lines: list[tuple[int, str]], path: Path, group: str) -> _Parsed:
        """Requirement lines that live inside another file (the ``pip:`` list of environment.yml)."""
        parsed = _Parsed()
        for number, line in lines:
            self._line(line, number, path, path.parent, group, parsed, (path,), constraint=False)
        return parsed

    def _read_file(self, path: Path, group: str, parsed: _Parsed, stack: tuple[Path, ...], constraint: bool) -> None:
        try:
            text = read_text(path, encoding="utf-8-sig")
        except UnicodeDecodeError:
            raise SpecError("not UTF-8 text", path=self.rel(path)) from None
        stack = stack + (path,)
        base = path.parent
        for number, line in logical_lines(text):
            self._line(line, number, path, base, group, parsed, stack, constraint)

    def _include(self, value: str, path: Path, number: int, base: Path, group: str, parsed: _Parsed,
                 stack: tuple[Path, ...], constraint: bool, spelling: str) -> None:
        where = f"{self.rel(path)}:{number}"
        if re.match(r"^[a-z][a-z0-9+.-]*://", value, re.IGNORECASE) and not value.startswith("file:"):
            raise SpecError(f"cannot follow {spelling} {value}: remote requirements files are not read",
                            path=self.rel(path), line=number,
                            hint="download it into the repository and refer to the copy")
        target = (base / value.removeprefix("file://")).resolve()
        if not target.is_file():
            raise SpecError(f"{spelling} {value}: no such file ({self.rel(target)})", path=self.rel(path), line=number,
                            hint="fix the path; it is relative to the file that includes it")
        if target in stack:
            chain = " -> ".join(self.rel(p) for p in (*stack, target))
            raise SpecError(f"requirements files include each other in a cycle: {chain}", path=self.rel(path),
                            line=number, hint=f"remove the {spelling} line that closes the cycle")
        other_group = self.top_level.get(target)
        if not constraint and other_group is not None and other_group != group:
            # read on its own as group `other_group`; a group is installed on top of main anyway
            if other_group != MAIN:
                self.imported.note(where, "file", f"includes {self.rel(target)}, imported as group "
                                   f"{other_group!r}: install both groups to get the same packages")
            return
        self._read_file(target, group, parsed, stack, constraint)

    def _url_ok(self, url: str, where: str, spelling: str) -> bool:
        if re.match(r"^(https?|file)://", url, re.IGNORECASE):
            return True
        self.imported.note(where, "option", f"{spelling} {url} not imported: an index is an http(s):// or "
                           "file:// URL")
        return False

    def _line(self, line: str, number: int, path: Path, base: Path, group: str, parsed: _Parsed,
              stack: tuple[Path, ...], constraint: bool) -> None:
        imported = self.imported
        where = f"{self.rel(path)}:{number}"
        if line[0] == "-":  # logical lines are stripped and never empty
            for option, value, spelling in _split_options(line, where, Path(self.rel(path)), number):
                if value is None:  # a switch: --no-index, --pre, --require-hashes, ...
                    imported.note(where, "option", "--no-index ignored: mlenv always resolves from indexes"
                                  if option == "no-index" else f"{spelling} ignored")
                elif option == "requirement":
                    self._include(value, path, number, base, group, parsed, stack, constraint, spelling)
                elif option == "constraint":
                    self._include(value, path, number, base, group, parsed, stack, True, spelling)
                elif option == "editable" and value[:4].lower() == "git+":
                    self._git_line(value, where, parsed, constraint, editable=True)
                elif option == "editable":
                    imported.note(where, "editable", f"-e {value} not imported: editable installs are of this "
                                  "checkout; install it into the environment with `pip install -e`")
                elif option == "index-url":
                    if self._url_ok(value, where, spelling):
                        imported.add_index(value, where, default=True)
                elif option == "extra-index-url":
                    if self._url_ok(value, where, spelling):
                        index = imported.add_index(value, where)
                        if index is not None and urlsplit(index.url).hostname == PYTORCH_HOST:
                            # a PyTorch index must not shadow PyPI for numpy & co: pinned packages only
                            imported.indexes[imported.indexes.index(index)] = ImportedIndex(
                                index.name, index.url, True, index.default, index.origin)
                elif option == "find-links":
                    imported.note(where, "find-links", f"--find-links {value} not imported: mlenv resolves from "
                                  "PEP 503 indexes; publish those files to an index and add it as [[index]]")
                else:
                    imported.note(where, "option", f"{spelling} {value} ignored")
            return
        # a requirement, possibly followed by per-requirement options (pip: first token starting with "-")
        text, extra = line, []
        if " -" in line:  # a word after the first starts with "-" (the first cannot: options returned above)
            words = line.split(" ")
            cut = next(i for i, word in enumerate(words) if word.startswith("-"))
            text, extra = " ".join(words[:cut]).strip(), words[cut:]
        for option in extra:
            name = option.split("=", 1)[0]
            if name == "--hash":
                parsed.hashes += 1
            elif name in _REQUIREMENT_OPTIONS:
                imported.note(where, "option", f"{name} ignored for {text}")
            elif option:
                raise SpecError(f"unknown option {name!r} after a requirement", path=self.rel(path), line=number,
                                hint="pip allows --hash, --config-settings, --global-option after a requirement")
        if _looks_like_url_or_path(text):
            if text[:4].lower() == "git+":
                self._git_line(text, where, parsed, constraint, editable=False)
                return
            imported.note(where, "url", f"{text} not imported: a bare URL or path has no package name to lock; "
                          "write it as `name @ url`, or publish the package to an index")
            return
        try:
            requirement = parse_requirement(text)
        except InvalidRequirement as exc:
            message = str(exc).splitlines()[0]
            raise SpecError(f"invalid requirement {text!r}: {message}", path=self.rel(path), line=number,
                            hint="fix the line; see https://peps.python.org/pep-0508/") from None
        if requirement.url:
            if requirement.url.startswith("file:"):
                imported.note(where, "url", f"{text} not imported: a local file URL exists on one machine only")
                return
            imported.note(where, "url", f"{requirement.name} @ {requirement.url} kept as a direct URL: it cannot "
                          "differ per target; prefer a version from an index")
        (parsed.constraints if constraint else parsed.requirements).append(Req(requirement, where, text))

    def _git_line(self, text: str, where: str, parsed: _Parsed, constraint: bool, *, editable: bool) -> None:
        """A pip git line (``git+URL@ref#egg=name``) as the direct reference ``name @ git+URL@ref``."""
        written = f"-e {text}" if editable else text
        requirement = git_direct_reference(text)
        if isinstance(requirement, str):
            self.imported.note(where, "url", f"{written} not imported: {requirement}")
            return
        reference = str(requirement)  # the URL's credentials are removed (with a note) when it is added
        if editable:
            self.imported.note(where, "editable", f"{written} imported as `{reference}`, not editable: mlenv "
                               "installs the commit the lock pins; for an editable checkout, clone the repository "
                               "and `pip install -e` it into the environment")
        else:
            self.imported.note(where, "url", f"{written} imported as `{reference}`: `mlenv lock` pins the commit "
                               "its ref names")
        (parsed.constraints if constraint else parsed.requirements).append(Req(requirement, where, reference))


def git_direct_reference(text: str) -> Requirement | str:
    """pip's ``git+URL@ref#egg=name[extra]&subdirectory=dir`` (``; marker`` after it) as the PEP 508
    ``name[extra] @ git+URL@ref#subdirectory=dir``; or, when there is none, why not."""
    url, _, marker = text.partition("; ")  # pip: a URL's marker follows "; " (a bare ";" may be in the URL)
    url = url.strip()
    base, _, fragment = url.partition("#")
    fields = parse_qs(fragment, keep_blank_values=True)
    egg = (fields.get("egg") or [""])[-1]
    if not egg:
        return (f"no package name (pip reads it from `#egg=name`); write it as `name @ {base}` with the "
                "package's name")
    if not _EGG.fullmatch(egg):
        return f"#egg={egg} is not a package name; write it as `name @ {base}` with the package's name"
    subdirectory = (fields.get("subdirectory") or [""])[-1]
    reference = f"{egg} @ {base}" + (f"#subdirectory={subdirectory}" if subdirectory else "")
    try:
        return parse_requirement(reference + (f" ; {marker.strip()}" if marker.strip() else ""))
    except InvalidRequirement as exc:
        return str(exc).splitlines()[0]


def strip_local_versions(requirement: Requirement, origin: str, imported: Imported) -> Requirement:
    """``torch==2.5.1+cu124`` -> ``torch==2.5.1`` and record that torch wants CUDA 12.4."""
    from mlenv.hardware.detect import cuda_from_local_version

    changed, kept = False, []
    for specifier in requirement.specifier:
        version, local = specifier.version, None
        if specifier.operator in ("==", "===") and "+" in version:
            version, local = version.split("+", 1)
        if local is None:
            kept.append(str(specifier))
            continue
        changed = True
        cuda = cuda_from_local_version(local)
        operator = "==" if specifier.operator == "===" else specifier.operator
        kept.append(f"{operator}{version}")
        if cuda:
            imported.set_cuda(cuda, f"{origin} ({requirement.name}{specifier})")
            imported.add_cuda_package(requirement.name)
        elif local == "cpu":
            name = canonicalize_name(requirement.name)
            if name not in imported.cpu_packages:
                imported.cpu_packages.append(name)
        else:
            imported.note(origin, "option", f"local version +{local} of {requirement.name} dropped")
    if not changed:
        return requirement
    result = Requirement(str(requirement))
    result.specifier = SpecifierSet(",".join(kept))
    return result


def _merge_constraints(imported: Imported, constraints: list[Req], rel: str) -> None:
    direct: dict[str, list[tuple[str, int]]] = {}  # package -> where it is a direct dependency
    for group in [MAIN, *imported.groups]:
        for position, text in enumerate(imported.requirements_of(group)):
            direct.setdefault(canonicalize_name(parse_requirement(text).name), []).append((group, position))
    merged = 0
    for item in constraints:
        origin = item.origin
        constraint = strip_local_versions(item.requirement, origin, imported)
        name = canonicalize_name(constraint.name)
        if name in direct and not constraint.url and not constraint.extras and constraint.marker is None:
            for group, position in direct[name]:
                requirements = imported.requirements_of(group)
                requirement = Requirement(requirements[position])
                if requirement.url:
                    continue
                requirement.specifier = requirement.specifier & constraint.specifier
                requirements[position] = str(requirement)
            merged += 1
        else:
            imported.constraints.append((origin, str(constraint)))
            imported.note(origin, "constraint", f"constraint {constraint} not imported: not a direct dependency; "
                          "mlenv.lock pins every version, add it to dependencies if it matters")
    if merged:
        imported.summary.append((rel, f"{counted(merged, 'constraint')} merged into direct dependencies"))


def _add_requirements(imported: Imported, group: str, requirements: list[Req]) -> int:
    target = imported.requirements_of(group)
    added = 0
    # sets beside the lists: membership must stay O(1) for 100k-line requirements files
    present = set(target)
    main = set(imported.dependencies) if group != MAIN else present
    for item in requirements:
        requirement = item.requirement
        if requirement.url:
            requirement = imported.without_credentials(requirement, item.origin)
        if "+" in item.text:  # a local version (`torch==2.5.1+cu124`) is spelled with a "+"
            requirement = strip_local_versions(requirement, item.origin, imported)
        text = item.text if requirement is item.requirement else str(requirement)
        if text in present or text in main:
            continue
        target.append(text)
        present.add(text)
        added += 1
    return added


# --- pyproject.toml -------------------------------------------------------------------------------

def choose_python(specifier: str, running: str, origin: str = "") -> str | None:
    """A concrete minor for ``requires-python``: the running interpreter's when allowed, else the
    allowed minor closest to it (newer on ties).  None when no known minor fits."""
    try:
        spec = SpecifierSet(specifier)
    except InvalidSpecifier:
        raise SpecError(f"invalid requires-python {specifier!r}", path=origin or None) from None

    def allowed(minor: str) -> bool:
        return any(spec.contains(f"{minor}.{micro}", prereleases=True) for micro in (0, 99))

    running_minor = ".".join(running.split(".")[:2])
    if allowed(running_minor) or spec.contains(running, prereleases=True):
        return running_minor
    candidates = [minor for minor in _KNOWN_MINORS if allowed(minor)]
    if not candidates:
        return None
    running_number = int(running_minor.split(".")[1])

    def distance(minor: str) -> tuple[int, int]:
        """Nearest to the running minor first; of two equally near, the newer."""
        number = int(minor.split(".")[1])
        return abs(number - running_number), -number

    return min(candidates, key=distance)


def _group_name(raw: str) -> str:
    name = re.sub(r"[^a-z0-9]+", "-", raw.lower()).strip("-") or "group"
    return f"{name}-group" if name == MAIN else name  # "main" means the project's own dependencies


def read_pyproject(path: Path, imported: Imported, root: Path, running_python: str) -> None:
    rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
    try:
        data = tomllib.loads(read_text(path))
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        match = re.search(r"\(at line (\d+), column (\d+)\)", message)
        message = re.sub(r"\s*\(at line.*", "", message)
        raise SpecError(f"malformed TOML: {message}", path=rel,
                        line=int(match.group(1)) if match else None,
                        col=int(match.group(2)) if match else None) from None
    except UnicodeDecodeError:
        raise SpecError("not UTF-8 text", path=rel) from None
    imported.files.append(rel)
    project_table = data.get("project")
    project: dict[str, Any] = project_table if isinstance(project_table, dict) else {}
    project_name = project.get("name")
    self_name = canonicalize_name(project_name) if isinstance(project_name, str) else None
    if isinstance(project_name, str) and _NAME.match(project_name):
        imported.name, imported.name_origin = project_name, rel

    def requirement_list(value: Any, where: str) -> list[Req]:
        if not isinstance(value, list):
            raise SpecError(f"{where} must be a list of requirement strings", path=rel)
        result = []
        for item in value:
            if isinstance(item, dict):
                continue  # include-group tables are expanded by the caller
            if not isinstance(item, str):
                raise SpecError(f"{where}: expected strings, got {item!r}", path=rel)
            try:
                result.append(Req(parse_requirement(item), f"{rel} {where}", item.strip()))
            except InvalidRequirement as exc:
                raise SpecError(f"{where}: invalid requirement {item!r}: {str(exc).splitlines()[0]}",
                                path=rel) from None
        return result

    counts: list[str] = []
    if "dependencies" in project.get("dynamic", []):
        imported.note(rel, "option", "dependencies are dynamic (computed by the build backend) and were not read: "
                      "add them to mlenv.toml")
    if "dependencies" in project:
        added = _add_requirements(imported, MAIN, requirement_list(project["dependencies"], "project.dependencies"))
        counts.append(counted(added, "dependency", "dependencies"))

    extras = project.get("optional-dependencies", {})
    if not isinstance(extras, dict):
        raise SpecError("project.optional-dependencies must be a table", path=rel)

    def expand_extra(extra: str, seen: tuple[str, ...]) -> list[Req]:
        result = []
        for item in requirement_list(extras.get(extra, []), f"optional-dependencies.{extra}"):
            requirement = item.requirement
            if self_name and canonicalize_name(requirement.name) == self_name:
                # `project[a,b]` inside an extra means "the other extras too"
                for other in sorted(requirement.extras):
                    match = next((key for key in extras if _group_name(key) == _group_name(other)), None)
                    if match and match not in seen:
                        result.extend(expand_extra(match, seen + (match,)))
                continue
            result.append(item)
        return result

    for extra in extras:
        group = _group_name(extra)
        added = _add_requirements(imported, group, expand_extra(extra, (extra,)))
        counts.append(f"extra {extra!r} -> group {group!r} ({added})")

    dependency_groups = data.get("dependency-groups", {})
    if not isinstance(dependency_groups, dict):
        raise SpecError("[dependency-groups] must be a table", path=rel)

    def expand_group(group: str, seen: tuple[str, ...]) -> list[Req]:
        items = dependency_groups.get(group)
        if items is None:
            raise SpecError(f"dependency group {group!r} is included but not defined", path=rel,
                            hint=f"groups: {', '.join(dependency_groups)}")
        result = requirement_list(items, f"dependency-groups.{group}")
        for item in items:
            if isinstance(item, dict):
                included = item.get("include-group")
                if not isinstance(included, str):
                    raise SpecError(f"dependency-groups.{group}: unknown table {item!r}", path=rel,
                                    hint='only {include-group = "name"} is allowed (PEP 735)')
                match = next((key for key in dependency_groups if _group_name(key) == _group_name(included)), included)
                if match in seen:
                    raise SpecError(f"dependency groups include each other in a cycle: {' -> '.join(seen + (match,))}",
                                    path=rel)
                result.extend(expand_group(match, seen + (match,)))
        return result

    for group in dependency_groups:
        name = _group_name(group)
        added = _add_requirements(imported, name, expand_group(group, (group,)))
        counts.append(f"group {name!r} ({added})")

    requires_python = project.get("requires-python")
    if isinstance(requires_python, str) and imported.python is None:
        chosen = choose_python(requires_python, running_python, rel)
        if chosen:
            imported.python, imported.python_origin = chosen, f"{rel} requires-python {requires_python}"
        else:
            imported.note(rel, "python", f"requires-python {requires_python} allows no Python mlenv knows")

    uv = data.get("tool", {}).get("uv", {}) if isinstance(data.get("tool"), dict) else {}
    uv_names: dict[str, str] = {}
    for table in uv.get("index", []) if isinstance(uv.get("index"), list) else []:
        if isinstance(table, dict) and isinstance(table.get("url"), str):
            if not re.match(r"^(https?|file)://", table["url"]):
                imported.note(f"{rel} [[tool.uv.index]]", "option", f"index {table['url']} not imported: mlenv "
                              "indexes are http(s):// or file:// URLs")
                continue
            index = imported.add_index(table["url"], f"{rel} [[tool.uv.index]]",
                                       explicit=bool(table.get("explicit", False)),
                                       default=bool(table.get("default", False)),
                                       name=_group_name(table["name"]) if isinstance(table.get("name"), str) else None)
            if index is not None and isinstance(table.get("name"), str):
                uv_names[table["name"]] = index.name
    # uv's pip-style settings: the same indexes as [[tool.uv.index]], credentials removed the same way
    for key in ("index-url", "extra-index-url"):
        values = uv.get(key)
        for url in [values] if isinstance(values, str) else values if isinstance(values, list) else []:
            where = f"{rel} [tool.uv] {key}"
            if isinstance(url, str) and re.match(r"^(https?|file)://", url):
                imported.add_index(url, where, default=key == "index-url")
            else:
                imported.note(where, "option", f"{url} not imported: an index is an http(s):// or file:// URL")
    links = uv.get("find-links")
    for url in [links] if isinstance(links, str) else links if isinstance(links, list) else []:
        imported.note(f"{rel} [tool.uv] find-links", "find-links", f"{url} not imported: mlenv resolves from "
                      "PEP 503 indexes; publish those files to an index and add it as [[index]]")
    for package, source in (uv.get("sources", {}) if isinstance(uv.get("sources"), dict) else {}).items():
        index_name = source.get("index") if isinstance(source, dict) else None
        origin = f"{rel} [tool.uv.sources]"
        direct = _source_url(source) if isinstance(source, dict) and index_name is None else None
        if direct is not None:
            _pin_to_url(imported, package, direct, origin)
            continue
        if not isinstance(index_name, str) or index_name not in uv_names:
            imported.note(origin, "option", f"source of {package} not imported: only an index, a URL or a git "
                          "repository (`{ index = \"name\" }`, `{ url = ... }`, `{ git = ... }`) map to mlenv.toml")
            continue
        index = next(i for i in imported.indexes if i.name == uv_names[index_name])
        if index.cuda:
            imported.set_cuda(index.cuda, origin)
            imported.add_cuda_package(package)
        elif index.is_pytorch_cpu:
            if canonicalize_name(package) not in imported.cpu_packages:
                imported.cpu_packages.append(canonicalize_name(package))
        else:
            imported.sources[canonicalize_name(package)] = index.name
    if isinstance(data.get("tool"), dict) and "poetry" in data["tool"]:
        imported.note(rel, "option", "[tool.poetry] dependencies are not read: list them in [project] or "
                      "add them to mlenv.toml")
    if counts:
        imported.summary.append((rel, ", ".join(counts)))


def _source_url(source: dict[str, Any]) -> str | None:
    """The direct reference a ``[tool.uv.sources]`` entry stands for (``{ git = ..., tag = ... }`` ->
    ``git+https://...@tag``), or None for the kinds mlenv.toml cannot hold (path, workspace)."""
    subdirectory = source.get("subdirectory")
    fragment = f"#subdirectory={subdirectory}" if isinstance(subdirectory, str) else ""
    if isinstance(source.get("url"), str) and not source["url"].lower().startswith("file:"):
        return source["url"] + fragment  # a file: URL exists on one machine only, like a path source
    if isinstance(source.get("git"), str):
        ref = next((source[key] for key in ("rev", "tag", "branch") if isinstance(source.get(key), str)), None)
        return f"git+{source['git']}" + (f"@{ref}" if ref else "") + fragment
    return None


def _pin_to_url(imported: Imported, package: str, url: str, origin: str) -> None:
    """What uv does with a URL or git source: the dependency on ``package`` (in every group) is
    installed from ``url``; mlenv.toml says so as ``package @ url``, without the URL's credentials."""
    name = canonicalize_name(package)
    replaced = []
    for group in [MAIN, *imported.groups]:
        requirements = imported.requirements_of(group)
        for position, text in enumerate(requirements):
            requirement = parse_requirement(text)
            if canonicalize_name(requirement.name) != name or requirement.url:
                continue
            direct = Requirement(text)
            direct.url, direct.specifier = url, SpecifierSet()
            requirements[position] = str(imported.without_credentials(direct, origin))
            replaced.append(text)
    if replaced:
        imported.note(origin, "url", f"{', '.join(replaced)} installed from {url}, as uv would: kept as a direct "
                      "URL; it cannot differ per target")
    else:
        imported.note(origin, "option", f"source of {package} not imported: {package} is not a dependency")


# --- conda environment.yml ------------------------------------------------------------------------

CONDA_RENAMES = {
    "pytorch": "torch", "pytorch-cpu": "torch", "pytorch-gpu": "torch",
    "py-opencv": "opencv-python", "opencv": "opencv-python", "libopencv": None,
    "tensorflow-gpu": "tensorflow", "py-xgboost": "xgboost", "py-xgboost-gpu": "xgboost",
    "matplotlib-base": "matplotlib", "msgpack-python": "msgpack", "pytables": "tables",
    "python-graphviz": "graphviz", "pytorch-lightning": "pytorch-lightning",
}
CONDA_CUDA = {"cudatoolkit", "pytorch-cuda", "cuda-version", "cuda-toolkit", "cuda", "cuda-runtime", "cuda-cudart"}
# conda packages that are system libraries or toolchains, not Python distributions on PyPI
CONDA_SYSTEM = {
    "cudnn", "nccl", "mkl", "mkl-include", "mkl-service", "mkl_fft", "mkl_random", "blas", "openblas", "intel-openmp",
    "llvm-openmp", "ffmpeg", "git", "git-lfs", "gcc", "gxx", "gfortran", "compilers", "make", "openssl",
    "ca-certificates", "zlib", "xz", "bzip2", "sqlite", "tk", "readline", "ncurses", "nodejs", "magma",
    "openmpi", "mpich", "hdf5", "graphviz", "cmake", "ninja", "pkg-config", "tzdata", "cpuonly", "nvidia",
    "cutensor", "libgcc", "libstdcxx-ng", "libgcc-ng", "libgomp", "jpeg", "libpng", "freetype", "expat",
}
_CONDA_SPEC = re.compile(r"^(?:(?P<channel>[^:\s]+)::)?(?P<name>[A-Za-z0-9_][A-Za-z0-9_.\-]*)\s*(?P<rest>.*)$")


def conda_to_pip(spec: str) -> tuple[str, str | None, str | None]:
    """One conda match spec -> (conda name, PEP 440 specifier or None, build string or None)."""
    match = _CONDA_SPEC.match(spec.strip())
    if not match:
        raise ValueError(spec)
    name, rest = match.group("name").lower(), match.group("rest").strip()
    build = None
    if not rest:
        return name, "", None
    if rest.startswith("[") or "|" in rest:
        raise ValueError(spec)
    if rest.startswith("=="):
        version, _, build = rest[2:].partition("=")
        specifier = f"=={version.strip()}"
    elif rest.startswith("="):
        version, _, build = rest[1:].partition("=")
        version = version.strip()
        # conda's `=1.26` means 1.26.* (its "fuzzy" match)
        specifier = f"=={version}" if version.endswith("*") else f"=={version}.*"
    elif rest[0] in "<>!~":
        specifier = rest.replace(" ", "")
    else:
        version, _, build = rest.partition(" ")
        if version[0].isdigit():
            specifier = f"=={version}" if version.endswith("*") else f"=={version}.*"
        else:
            specifier = version
    specifier = specifier.replace(".*.*", ".*").replace("*.*", "*")
    SpecifierSet(specifier)  # raises InvalidSpecifier
    return name, specifier, (build or "").strip() or None


def _conda_version(specifier: str) -> str | None:
    match = re.match(r"^==\s*(\d+(?:\.\d+){0,2})(?:\.\*)?$", specifier)
    return match.group(1) if match else None


def read_environment_yml(path: Path, imported: Imported, root: Path, reader: RequirementsReader,
                         running_python: str) -> None:
    import yaml  # PyYAML: read only when a conda environment file exists

    rel = path.relative_to(root).as_posix()
    try:
        text = read_text(path)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise SpecError(f"malformed YAML: {exc.problem or exc}", path=rel,
                        line=mark.line + 1 if mark else None, col=mark.column + 1 if mark else None) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"malformed YAML: {exc}", path=rel) from None
    except UnicodeDecodeError:
        raise SpecError("not UTF-8 text", path=rel) from None
    imported.files.append(rel)
    if node is None:
        imported.summary.append((rel, "empty"))
        return
    if not isinstance(node, yaml.MappingNode):
        raise SpecError("a conda environment file must be a mapping with a `dependencies:` list",
                        path=rel, line=node.start_mark.line + 1)
    top = {key.value: value for key, value in node.value if isinstance(key, yaml.ScalarNode)}
    channels = top.get("channels")
    if isinstance(channels, yaml.SequenceNode):
        names = [item.value for item in channels.value if isinstance(item, yaml.ScalarNode)]
        if names:
            imported.note(f"{rel}:{channels.start_mark.line + 1}", "conda",
                          f"channels {', '.join(names)} not used: packages come from PyPI and [[index]] entries")
    dependencies = top.get("dependencies")
    if dependencies is None:
        imported.summary.append((rel, "no dependencies"))
        return
    if not isinstance(dependencies, yaml.SequenceNode):
        raise SpecError("`dependencies:` must be a list", path=rel, line=dependencies.start_mark.line + 1)

    conda_requirements: list[Req] = []
    renamed, unmapped = [], []
    pip_lines: list[tuple[int, str]] = []
    torch_seen = False
    cuda_requests: list[tuple[str, str]] = []  # (X.Y, origin): decided once torch's version is known
    for item in dependencies.value:
        line = item.start_mark.line + 1
        where = f"{rel}:{line}"
        if isinstance(item, yaml.MappingNode):
            for key, value in item.value:
                if key.value == "pip" and not isinstance(value, yaml.SequenceNode):
                    raise SpecError("`pip:` must be a list of requirement lines", path=rel, line=line)
                if key.value != "pip":
                    raise SpecError(f"unexpected entry {key.value!r} in dependencies", path=rel, line=line,
                                    hint="conda allows package specs and one `pip:` list")
                for entry in value.value:
                    if not isinstance(entry, yaml.ScalarNode):
                        raise SpecError("pip: entries must be strings", path=rel, line=entry.start_mark.line + 1)
                    pip_lines.append((entry.start_mark.line + 1, str(entry.value)))
            continue
        if not isinstance(item, yaml.ScalarNode) or not str(item.value).strip():
            raise SpecError("dependencies entries must be package specs such as numpy=1.26", path=rel, line=line)
        raw = str(item.value).strip()
        try:
            name, specifier, build = conda_to_pip(raw)
        except (ValueError, InvalidSpecifier):
            unmapped.append(raw)
            imported.note(where, "conda", f"{raw} not imported: cannot translate this conda spec to pip")
            continue
        if build:
            imported.note(where, "conda", f"build string {build!r} of {name} dropped: builds are conda's, not pip's")
        if name == "python":
            version = _conda_version(specifier or "")
            if version and "." in version:
                # an environment pins Python by minor: conda's 3.8.5 is "a 3.8", and a 3.8.18 must do
                minor = ".".join(version.split(".")[:2])
                if minor != version:
                    imported.note(where, "python", f"{raw}: Python {minor} (the patch release comes from the "
                                  "interpreter or image, not from the lock)")
                imported.python, imported.python_origin = minor, f"{where} {raw}"
            elif specifier:
                chosen = choose_python(specifier, running_python, rel)
                if chosen:
                    imported.python, imported.python_origin = chosen, f"{where} {raw}"
            continue
        if name == "pip":
            unmapped.append(raw)
            imported.note(where, "conda", f"{raw} not imported: mlenv installs with uv, the environment needs no pip")
            continue
        if name in CONDA_CUDA:
            version = _conda_version(specifier or "")
            if version and version.count(".") >= 1:
                cuda_requests.append((".".join(version.split(".")[:2]), f"{where} {raw}"))
            else:
                imported.note(where, "cuda", f"{raw}: no CUDA version given; pick one with `mlenv init --target`")
            continue
        if (name in CONDA_SYSTEM or name.startswith(("lib", "_", "cuda-", "r-", "magma-"))
                or CONDA_RENAMES.get(name, "") is None):
            unmapped.append(raw)
            imported.note(where, "conda", f"{raw} not imported: a system library or tool, not a PyPI package; "
                          "if the image needs it, add it to [image] system-packages")
            continue
        pypi = CONDA_RENAMES.get(name, name)
        if pypi != name:
            renamed.append(f"{name} -> {pypi}")
        if pypi == "torch":
            torch_seen = True
        try:
            requirement = Requirement(f"{pypi}{specifier or ''}")
        except InvalidRequirement:
            unmapped.append(raw)
            imported.note(where, "conda", f"{raw} not imported: cannot translate this conda spec to pip")
            continue
        conda_requirements.append(Req(requirement, where, f"{pypi}{specifier or ''}"))
    torch_version = next((_conda_version(str(item.requirement.specifier)) for item in conda_requirements
                          if canonicalize_name(item.requirement.name) == "torch"), None)
    for version, origin in cuda_requests[:1]:
        _set_catalog_cuda(imported, version, origin, torch=torch_version)
    for version, origin in cuda_requests[1:]:
        imported.note(origin, "cuda", f"CUDA {version}: the first CUDA package decides ({cuda_requests[0][1]})")
    conda_count = _add_requirements(imported, MAIN, conda_requirements)
    # conda installs its packages first and pip's on top; keep that order in the spec
    parsed = reader.read_lines(pip_lines, path, MAIN)
    pip_count = _add_requirements(imported, MAIN, parsed.requirements)
    if parsed.constraints:
        _merge_constraints(imported, parsed.constraints, rel)
    if torch_seen and imported.cuda:
        for item in conda_requirements:
            if canonicalize_name(item.requirement.name) in TORCH_FAMILY:
                imported.add_cuda_package(item.requirement.name)
    parts = [counted(conda_count, "conda package"), counted(pip_count, "pip package")]
    if renamed:
        parts.append("renamed " + ", ".join(renamed))
    if unmapped:
        parts.append(f"{len(unmapped)} not mapped")
    imported.summary.append((rel, ", ".join(parts)))


def _set_catalog_cuda(imported: Imported, version: str, origin: str, *, torch: str | None = None) -> None:
    from packaging.version import Version

    from mlenv.hardware import catalog

    if torch and catalog.torch_builds(torch) is not None:
        # the CUDA must be one PyTorch published this torch for: never propose an unpublished pair
        chosen = catalog.cuda_with_torch(version, torch)
        builds = ", ".join(catalog.torch_builds(torch) or ())
        if chosen is None:
            imported.note(origin, "cuda", f"torch {torch} was published for {builds} only, and mlenv knows none of "
                          f"them (known: {', '.join(catalog.cuda_versions())}); no CUDA target proposed: "
                          "a newer torch runs on a CUDA mlenv knows")
            return
        if chosen != version:
            imported.note(origin, "cuda", f"CUDA {version}: using {chosen}, the nearest CUDA with builds of "
                          f"torch {torch} ({builds}) that mlenv knows")
        imported.set_cuda(chosen, origin)
        return
    known = catalog.cuda_versions()
    if version in known:
        imported.set_cuda(version, origin)
        return
    same_major = [v for v in known if v.split(".")[0] == version.split(".")[0] and Version(v) >= Version(version)]
    if same_major:
        imported.note(origin, "cuda", f"CUDA {version} is not in mlenv's catalog; using {same_major[0]}, "
                      "the next release of the same major version")
        imported.set_cuda(same_major[0], origin)
    else:
        imported.note(origin, "cuda", f"CUDA {version} is not in mlenv's catalog (known: {', '.join(known)}); "
                      "no CUDA target proposed from it")


# --- everything -----------------------------------------------------------------------------------

def discover_requirements(root: Path) -> list[Path]:
    """Requirements files at the top of ``root`` and in ``root/requirements/``, sorted."""
    found = []
    for folder in (root, root / "requirements"):
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if not path.is_file() or path.suffix not in (".txt", ".in"):
                continue
            relative = path.relative_to(root).as_posix()
            if path.name.lower().startswith("constraint"):
                continue  # reached through -c only
            if group_for_file(relative) is not None:
                found.append(path)
    return found


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while requirements become objects: each collection walks every
    object made so far (a third of the time on a 100k-line file), and parsing makes no reference
    cycles to collect; reference counting frees everything else as usual."""
    import gc

    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def import_project(root: Path, *, running_python: str) -> Imported:
    """Read ``pyproject.toml``, ``environment.yml`` and requirements files found in ``root``."""
    with cyclic_gc_paused():
        return _import_project(root.resolve(), running_python)


def _import_project(root: Path, running_python: str) -> Imported:
    imported = Imported()
    pyproject = root / "pyproject.toml"
    if pyproject.is_file():
        read_pyproject(pyproject, imported, root, running_python)

    requirement_files = discover_requirements(root)
    skipped = set()
    for path in requirement_files:
        source = path.with_suffix(".in")
        if path.suffix == ".txt" and source in requirement_files:
            skipped.add(path)
            imported.note(path.relative_to(root).as_posix(), "file",
                          f"skipped: compiled from {source.name} (pip-tools), which was imported instead")
    top_level = {path.resolve(): group_for_file(path.relative_to(root).as_posix()) or MAIN
                 for path in requirement_files if path not in skipped}
    reader = RequirementsReader(imported, root, top_level)

    for name in ("environment.yml", "environment.yaml"):
        if (root / name).is_file():
            read_environment_yml(root / name, imported, root, reader, running_python)
            break

    # main first, so other groups can leave out what main already installs
    ordered = sorted(top_level.items(), key=lambda item: (item[1] != MAIN, str(item[0])))
    for path, group in ordered:
        parsed = reader.read(path, group)
        rel = reader.rel(path)
        imported.files.append(rel)
        added = _add_requirements(imported, group, parsed.requirements)
        what = f"{counted(added, 'requirement')} -> {'dependencies' if group == MAIN else f'group {group!r}'}"
        if len(parsed.requirements) > added:
            what += f" ({len(parsed.requirements) - added} already listed)"
        imported.summary.append((rel, what))
        if parsed.constraints:
            _merge_constraints(imported, parsed.constraints, rel)

    # a PyTorch CUDA index without local versions still decides which torch pip installs
    for index in imported.indexes:
        if index.cuda:
            imported.set_cuda(index.cuda, index.origin)
            for text in imported.dependencies:
                name = canonicalize_name(Requirement(text).name)
                if name in TORCH_FAMILY:
                    imported.add_cuda_package(name)
        elif index.is_pytorch_cpu:
            for text in imported.dependencies:
                name = canonicalize_name(Requirement(text).name)
                if name in TORCH_FAMILY and name not in imported.cpu_packages:
                    imported.cpu_packages.append(name)
    for group in list(imported.groups):
        if not imported.groups[group]:
            del imported.groups[group]
    imported.group_files = {group: reader.rel(path) for path, group in top_level.items() if group != MAIN}
    import hashlib

    # what each imported file was: `lock` warns when one moves on after init ([imported] files)
    imported.file_digests = {rel: "sha256:" + hashlib.sha256((root / rel).read_bytes()).hexdigest()
                             for rel in imported.files if (root / rel).is_file()}
    imported.exclusive_groups = exclusive_variants(imported)
    return imported


# --- variants: requirement files meant to be installed one at a time ------------------------------

# group names that choose an accelerator or backend: two of them in one repository are alternatives
_VARIANT_WORD = re.compile(r"^(cpu|gpu|cuda\d*|cu\d{2,3}|tpu|rocm\d*|mps|xpu|metal|neuron|habana|hpu|ipu|npu|"
                           r"openvino|directml|onnx-?gpu|tensorrt)$")


def _variant_word(group: str) -> bool:
    return any(_VARIANT_WORD.match(part) for part in group.split("-"))


def _pins(requirements: list[str]) -> dict[str, Requirement]:
    return {canonicalize_name(Requirement(text).name): Requirement(text) for text in requirements}


def _conflict(a: list[str], b: list[str]) -> str | None:
    """Why two groups cannot install together, or None: the same package pinned to different versions,
    or two distributions of one module (tensorflow and tensorflow-cpu)."""
    from mlenv.hardware import catalog

    first, second = _pins(a), _pins(b)
    for name in sorted(first.keys() & second.keys()):
        left, right = first[name].specifier, second[name].specifier
        exact_left = {s.version for s in left if s.operator in ("==", "===")}
        exact_right = {s.version for s in right if s.operator in ("==", "===")}
        if exact_left and exact_right and exact_left != exact_right:
            return f"{name}{left} vs {name}{right}"
        if exact_left and not all(right.contains(v.removesuffix(".*"), prereleases=True) for v in exact_left
                                  if not v.endswith(".*")):
            return f"{name}{left} vs {name}{right}"
    for module, providers in catalog.module_providers().items():
        in_first = sorted(first.keys() & set(providers))
        in_second = sorted(second.keys() & set(providers))
        if in_first and in_second and in_first != in_second:
            return f"{in_first[0]} and {in_second[0]} both install the module {module!r}"
    return None


def exclusive_variants(imported: Imported) -> list[list[str]]:
    """Sets of groups that are alternatives: by name (two accelerator variants, e.g. -tpu and -cuda) and
    by content (they pin one package differently, or install one module from two distributions)."""
    groups = sorted(group for group in imported.groups if imported.groups[group])
    parent = {group: group for group in groups}

    def root(group: str) -> str:
        while parent[group] != group:
            group = parent[group]
        return group

    reasons: list[tuple[str, str]] = []
    by_name = [group for group in groups if _variant_word(group)]
    for other in by_name[1:]:
        parent[root(other)] = root(by_name[0])
    if len(by_name) > 1:
        reasons.append((", ".join(by_name), "their names choose an accelerator"))
    for position, first in enumerate(groups):
        for second in groups[position + 1:]:
            why = _conflict(imported.groups[first], imported.groups[second])
            if why and root(first) != root(second):
                parent[root(second)] = root(first)
                reasons.append((f"{first}, {second}", why))
            elif why:
                reasons.append((f"{first}, {second}", why))
    sets: dict[str, list[str]] = {}
    for group in groups:
        sets.setdefault(root(group), []).append(group)
    found = [members for members in sets.values() if len(members) > 1]
    for group in by_name:
        if imported.cuda and re.search(r"(^|-)(gpu|cuda\d*|cu\d{2,3})($|-)", group):
            # a hardware choice: its packages belong with the CUDA target proposed from the inputs
            imported.note(imported.group_files.get(group, group), "variants",
                          f"group {group!r} is the CUDA variant: install it on the CUDA target "
                          f"(`mlenv sync --target cuda --group {group}`)")
    for members, why in reasons:
        files = ", ".join(imported.group_files.get(g, g) for g in members.split(", "))
        imported.note(files, "variants", f"groups {members} are alternatives ({why}): locked apart as "
                      "project.exclusive-groups, installed one at a time (`mlenv sync --group NAME`)")
    return found


def torch_pin(imported: Imported) -> str | None:
    """The torch release the main dependencies pin (``torch==2.5.1``), if any."""
    for text in imported.dependencies:
        requirement = parse_requirement(text)
        if canonicalize_name(requirement.name) == "torch":
            for specifier in requirement.specifier:
                if specifier.operator in ("==", "==="):
                    return specifier.version.removesuffix(".*")
    return None
