"""Resolve one target with uv.

uv does the resolving; mlenv feeds it a throwaway project describing one target and reads back what
it chose.  Two ``uv pip compile`` passes run per target:

1. ``--format pylock.toml`` for the target's platform: exact versions and only the artifacts that
   platform may install, with their hashes;
2. the same resolution (pinned to pass 1's versions) as annotated requirements: the dependency graph
   ("# via") and the index each package came from ("# from"), which pass 1 does not carry.

Pins survive re-locks because the previous ``pylock.<target>.toml`` is handed to uv as the existing
output file, which uv treats as preferences; ``--upgrade`` / ``--upgrade-package`` lift them.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import tempfile
import tomllib
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

import tomli_w
from packaging.utils import canonicalize_name

from mlenv.errors import MlenvError, ResolutionError, SpecError, ToolMissingError
from mlenv.lock.builds import PYTORCH_WHL, Routing, torch_routing
from mlenv.lock.model import MAIN_GROUP, Artifact
from mlenv.lock.vcs import VcsSource, from_pylock_entry, git_error, strip_credentials
from mlenv.spec import Spec, Target

ROOT_PROJECT = "mlenv-lock-root"  # the throwaway project uv resolves; never a real package name


@dataclass(frozen=True)
class ResolvedPackage:
    name: str
    version: str
    index: str
    groups: tuple[str, ...]
    artifacts: tuple[Artifact, ...]
    vcs: VcsSource | None = None


@functools.cache
def uv_binary() -> str:
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if found:
            return found
        raise ToolMissingError("uv is not installed", hint="pip install uv (mlenv depends on it)") from None


def _resolution_project(spec: Spec, target: Target, routing: Routing, groups: tuple[str, ...]) -> str:
    sources = {**spec.sources_for(target), **routing.sources()}
    dependencies = [*spec.dependencies, *routing.added.get(MAIN_GROUP, ())]
    project: dict[str, object] = {
        "project": {
            "name": ROOT_PROJECT,
            "version": "0",
            "requires-python": spec.requires_python,
            "dependencies": dependencies,
        },
    }
    chosen = {name: [*spec.groups[name], *routing.added.get(name, ())] for name in groups}
    if chosen:
        project["dependency-groups"] = chosen
    declared = list(spec.indexes)
    if routing.index is not None and routing.index not in declared:
        declared.append(routing.index)
    indexes = []
    for index in declared:
        entry: dict[str, str | bool] = {"name": index.name, "url": index.url}
        if index.explicit:
            entry["explicit"] = True
        if index.default:
            entry["default"] = True
        indexes.append(entry)
    uv_settings: dict = {}
    if indexes:
        uv_settings["index"] = indexes
    if sources:
        uv_settings["sources"] = {package: {"index": index} for package, index in sorted(sources.items())}
    if uv_settings:
        project["tool"] = {"uv": uv_settings}
    return tomli_w.dumps(project)


_NOISE = ("Using ", "Resolved ", "Prepared ", "Built ", "Building ", "Downloading ", "Updating ", "Updated ")
_QUIET_WARNINGS = ("`VIRTUAL_ENV", "The `--pylock` option", "pylock")
_FETCH = re.compile(r"Failed to fetch: [`']?(\S+?)[`']?$")


def _clean(stderr: str) -> list[str]:
    text = re.sub(r"\x1b\[[0-9;]*m", "", stderr)
    return [line.rstrip() for line in text.splitlines()]


def uv_warnings(stderr: str) -> list[str]:
    """uv's own warnings (an unknown extra, a yanked version...), without its notices about itself."""
    found = []
    for line in _clean(stderr):
        line = line.strip()
        if line.startswith("warning:"):
            message = line.removeprefix("warning:").strip()
            if not message.startswith(_QUIET_WARNINGS):
                found.append(message)
    return found


def _user_words(line: str, spec: Spec | None) -> str:
    """uv talks about the throwaway project; the user knows dependencies and group names."""
    line = re.sub(re.escape(ROOT_PROJECT) + r"(?:\[|:)(\w[\w.-]*)\]?", r"group '\1'", line)
    line = re.sub(re.escape(ROOT_PROJECT) + r"(?: \(pyproject\.toml(?::[^)]*)?\))?", "mlenv.toml", line)
    return line.replace("pyproject.toml", "mlenv.toml")


def _where_required(spec: Spec | None, text: str) -> list[str]:
    """For each direct requirement named in uv's report: where mlenv.toml asks for it."""
    if spec is None:
        return []
    from packaging.requirements import Requirement

    places: dict[str, list[str]] = defaultdict(list)
    for group, requirements in ((MAIN_GROUP, spec.dependencies), *spec.groups.items()):
        for item in requirements:
            name = canonicalize_name(Requirement(item).name)
            places[name].append(f"{'dependencies' if group == MAIN_GROUP else f'group {group!r}'}: {item}")
    mentioned = {canonicalize_name(word) for word in re.findall(r"[A-Za-z0-9][A-Za-z0-9._-]*", text)}
    return [f"{name} is required by " + "; ".join(places[name])
            for name in sorted(mentioned & places.keys()) if len(places[name]) > 1]


def _explain(stderr: str, spec: Spec | None) -> tuple[list[str], list[str], bool]:
    """The lines of uv's report that say what failed and why, its hint lines, and True when lines
    were left out (so that --debug adds something)."""
    lines, hints, cut = [], [], False
    in_traceback = after_frame = in_hint = False
    for raw in _clean(stderr):
        line = raw.strip().lstrip("│├╰─▶×").strip()
        line = re.sub(r"^(error|cause|Caused by):\s*", "", line)
        if line.startswith("hint:"):
            in_hint = True
            line = line.removeprefix("hint:").strip()
        if in_hint:
            if line:
                hints.append(line)
            continue
        if not line or line.startswith(_NOISE) or line.startswith("warning:"):
            continue
        if line.startswith("Traceback (most recent call last)"):
            in_traceback, cut = True, True
            continue
        if in_traceback:
            # frames and their source lines say where; the exception line at the end says why
            if line.startswith('File "'):
                after_frame = True
                continue
            if after_frame:
                after_frame = False
                continue
            in_traceback = False
        if line in ("[stderr]", "[stdout]", "--- stderr", "--- stdout"):
            continue
        lines.append(_user_words(line, spec))
    unique = list(dict.fromkeys(lines))
    if len(unique) > 14:
        # keep the head (what failed) and the tail (the cause), never half a line
        unique, cut = unique[:4] + ["..."] + unique[-9:], True
    if hints:
        # uv's hints can go on to uv-only settings; the first sentence is the advice, whole
        text = " ".join(hints)
        first = re.split(r"(?<=[.!?])\s", text, maxsplit=1)
        hints, cut = [first[0]], cut or len(first) > 1
    return unique, hints, cut


def explain_failure(target: str, stderr: str, spec: Spec | None = None) -> MlenvError:
    """uv's failure as one error: unreachable index -> exit 6 naming the URL, else exit 5."""
    git = git_error(f"could not lock target {target!r}", stderr)
    if git is not None:
        return git
    lines, hints, cut = _explain(stderr, spec)
    fetch = next((m.group(1) for line in lines if (m := _FETCH.search(line))), None)
    if fetch:
        cause = lines[-1] if lines else ""
        url = fetch.rstrip("/")
        base = url.rsplit("/", 1)[0] if url.count("/") > 3 else url
        mirror = ("add the mirror as [[index]] (name, url, explicit = true) and pin the packages to it in [sources]")
        if urlsplit(url).hostname == urlsplit(PYTORCH_WHL).hostname:
            build = urlsplit(base).path.rstrip("/").rsplit("/", 1)[-1]
            mirror = (f'mirror it: [[index]] name = "pytorch-{build}", url = "https://<your mirror>/whl/{build}", '
                      "explicit = true; mlenv sends the torch packages to it (or pin them in [sources])")
        return ToolMissingError(f"could not lock target {target!r}: cannot reach {base} ({cause})",
                                hint=f"check the URL and the network, or {mirror}")
    reasons = lines or ["uv failed without a message"]
    reasons += _where_required(spec, " ".join(reasons))
    body = "\n".join(f"  {line}" for line in reasons)
    hint = " ".join(hints) or "check the versions and indexes in mlenv.toml"
    if cut:
        hint += (" Run with --debug for uv's full output." if hint.endswith(".")
                 else "; run with --debug for uv's full output")
    return ResolutionError(f"could not lock target {target!r}:\n{body}", hint=hint)


def _run_uv(args: list[str], cwd: Path, target: str, spec: Spec | None = None,
            trace: Callable[[str], None] | None = None) -> str:
    """Run uv; returns its stderr (warnings).  ``trace`` receives uv's full stderr (for --debug)."""
    env = {**os.environ, "NO_COLOR": "1", "UV_NO_PROGRESS": "1"}
    env.pop("VIRTUAL_ENV", None)
    try:
        result = subprocess.run([uv_binary(), *args], cwd=cwd, env=env, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise ToolMissingError(f"cannot run uv: {exc}", hint="reinstall mlenv (it depends on uv)") from None
    if trace is not None and result.stderr.strip():
        trace(f"uv {' '.join(args[:2])} for target {target!r}:\n{result.stderr}")
    if result.returncode != 0:
        raise explain_failure(target, result.stderr, spec)
    return result.stderr


_VIA = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:==(\S+)| @ (\S+))\s*(?:#\s*via\s+(.*))?$")
_FROM = re.compile(r"^#\s*from\s+(\S+)")
_ROOT = re.compile(re.escape(ROOT_PROJECT) + r"\s+\(pyproject\.toml(?::([^)]+))?\)")


def _parse_annotated(text: str) -> tuple[dict[str, str], dict[str, set[str]], dict[str, str]]:
    """From annotated requirements: versions, who requires each package, and its index URL."""
    versions: dict[str, str] = {}
    required_by: dict[str, set[str]] = defaultdict(set)
    index_url: dict[str, str] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        match = _VIA.match(line)
        if match:
            current = canonicalize_name(match.group(1))
            versions[current] = match.group(2) or "@ " + strip_credentials(match.group(3))
            for parent in (match.group(4) or "").split(","):
                parent = parent.strip()
                if not parent:
                    continue
                root = _ROOT.match(parent)
                if root:
                    required_by[current].add(f"@{root.group(1) or MAIN_GROUP}")
                else:
                    required_by[current].add(canonicalize_name(parent))
            continue
        match = _FROM.match(line)
        if match and current:
            index_url[current] = match.group(1).rstrip("/")
    return versions, required_by, index_url


def _groups_of(required_by: dict[str, set[str]]) -> dict[str, set[str]]:
    """Which groups reach each package: walk the graph down from each group's direct requirements."""
    children: dict[str, set[str]] = defaultdict(set)
    for package, parents in required_by.items():
        for parent in parents:
            children[parent].add(package)
    groups: dict[str, set[str]] = defaultdict(set)
    for root in [node for node in children if node.startswith("@")]:
        queue, seen = deque(children[root]), set()
        while queue:
            package = queue.popleft()
            if package in seen:
                continue
            seen.add(package)
            groups[package].add(root[1:])
            queue.extend(children.get(package, ()))
    return groups


def _artifacts(entry: dict) -> tuple[Artifact, ...]:
    found = []
    for wheel in entry.get("wheels", []):
        found.append(Artifact(url=_archive_url(wheel), sha256=wheel["hashes"]["sha256"], size=wheel.get("size")))
    for kind in ("sdist", "archive"):  # an archive is a direct-URL dependency (`pkg @ https://...`)
        artifact = entry.get(kind)
        if artifact:
            found.append(Artifact(url=_archive_url(artifact), sha256=artifact["hashes"]["sha256"],
                                  size=artifact.get("size")))
    return tuple(found)


def _archive_url(artifact: dict) -> str:
    """An archive's URL, without credentials (uv writes a ${VAR} expanded); a local file (`pkg @
    file:///...whl`) uv records by its absolute path."""
    return strip_credentials(artifact["url"]) if "url" in artifact else Path(artifact["path"]).as_uri()


def reject_vcs(spec: Spec) -> None:
    """git dependencies are locked by commit; other VCS (which uv cannot resolve either) and local
    folders (nothing to pin them by) are refused before anything is cloned or built."""
    from packaging.requirements import Requirement

    for group, requirements in ((MAIN_GROUP, spec.dependencies), *spec.groups.items()):
        for item in requirements:
            url = Requirement(item).url or ""
            where = "dependencies" if group == MAIN_GROUP else f"[dependency-groups] {group}"
            if url.startswith("file:") and Path(url2pathname(urlsplit(url).path)).is_dir():
                raise SpecError(
                    f"{where}: {item!r} is a local folder, which has no hash or commit to lock",
                    path=str(spec.path),
                    hint="build it into a wheel and depend on that file (locked by sha256), publish it to an index, "
                         "or commit it and depend on `name @ git+file:///path/to/repo@ref` (locked by commit)",
                )
            if re.match(r"^(hg|svn|bzr)\+", url):
                raise SpecError(
                    f"{where}: {item!r} is a {url.split('+', 1)[0]} checkout; mlenv locks git repositories only",
                    path=str(spec.path),
                    hint="depend on a released version from an index, on a git repository "
                         "(`name @ git+https://...@ref`, locked by commit), or on an archive URL (locked by sha256)",
                )


def resolve_target(
    spec: Spec,
    target: Target,
    *,
    groups: tuple[str, ...] | None = None,
    previous_pylock: Path | None = None,
    upgrade: bool = False,
    upgrade_packages: tuple[str, ...] = (),
    warn: Callable[[str], None] | None = None,
    trace: Callable[[str], None] | None = None,
    label: str | None = None,
    preferences: list[ResolvedPackage] | None = None,
) -> list[ResolvedPackage]:
    """Resolve ``target`` with the main dependencies and ``groups`` (None: every group).

    ``warn`` receives uv's warnings, ``trace`` uv's full output; ``label`` names the resolution in
    messages (a target, or a target with one exclusive group)."""
    label = label or target.name
    groups = tuple(spec.groups) if groups is None else groups
    routing = torch_routing(spec, target)
    output_name = "pylock.resolved.toml"
    with tempfile.TemporaryDirectory(prefix="mlenv-lock-") as workdir:
        work = Path(workdir)
        (work / "pyproject.toml").write_text(_resolution_project(spec, target, routing, groups))
        if previous_pylock is not None and previous_pylock.is_file() and not upgrade:
            shutil.copyfile(previous_pylock, work / output_name)
        common = [
            "pip", "compile", "pyproject.toml",
            "--python-version", spec.python,
            "--python-platform", target.python_platform,
            "--no-header",
        ]
        for group in groups:
            common += ["--group", group]
        if preferences:
            # an alternative group installs on top of the main pins: they are constraints, not preferences
            (work / "main-pins.txt").write_text("".join(
                f"{p.name}=={p.version}\n" for p in preferences if p.index != "url"))
            common += ["--constraint", "main-pins.txt"]
        upgrades = ["--upgrade"] if upgrade else []
        for package in upgrade_packages:
            upgrades += ["--upgrade-package", package]
        stderr = _run_uv([*common, *upgrades, "--format", "pylock.toml", "-o", output_name], work, label, spec, trace)
        if warn is not None:
            for message in uv_warnings(stderr):
                warn(f"{label}: uv: {_user_words(message, spec)}")
        pylock = tomllib.loads((work / output_name).read_text())

        # Pass 2 starts from exactly pass 1's pins, so it re-derives the same resolution.  It is only
        # needed for what pass 1 does not say: which groups reach a package (when there are groups)
        # and which index served it (when an index other than the default may serve any package).
        ambiguous_index = any(not index.explicit and not index.default for index in spec.indexes)
        if not groups and not ambiguous_index:
            return _from_pylock_alone(spec, target, routing, pylock)
        pins: dict[str, str] = {}
        for entry in pylock.get("packages", []):
            direct = entry.get("archive")
            vcs = from_pylock_entry(entry)  # credentials out: pass 2 prints a ${VAR}, pass 1 its value
            pins[canonicalize_name(entry["name"])] = (f"@ {vcs.requirement_url}" if vcs else
                                                      f"@ {_archive_url(direct)}" if direct else entry["version"])
        (work / "annotated.txt").write_text("".join(
            f"{name} {pin}\n" if pin.startswith("@") else f"{name}=={pin}\n" for name, pin in sorted(pins.items())))
        annotate = [*common, "--quiet", "--emit-index-annotation", "--annotation-style", "line", "-o", "annotated.txt"]
        # pass 1 just put every page and metadata file pass 2 needs in uv's cache: skip revalidating
        # them (most of a warm resolve's time on indexes that send no cache headers)
        try:
            _run_uv([*annotate, "--offline"], work, label, spec)
        except (ResolutionError, ToolMissingError):
            _run_uv(annotate, work, label, spec, trace)
        versions, required_by, index_urls = _parse_annotated((work / "annotated.txt").read_text())

    if versions != pins:
        moved = sorted(name for name in versions.keys() | pins.keys() if versions.get(name) != pins.get(name))
        raise ResolutionError(
            f"uv resolved target {label!r} differently in its two passes ({', '.join(moved[:5])})",
            hint="this is a bug in mlenv; please report it with your mlenv.toml",
        )
    groups_of = _groups_of(required_by)
    url_to_index = {index.url.rstrip("/"): index.name for index in spec.indexes}
    if routing.index is not None:
        url_to_index.setdefault(routing.index.url.rstrip("/"), routing.index.name)
    default = spec.default_index()
    url_to_index.setdefault(default.url.rstrip("/"), default.name)
    resolved = []
    for entry in pylock.get("packages", []):
        name = canonicalize_name(entry["name"])
        url = index_urls.get(name, "")
        direct = entry.get("archive") or entry.get("vcs")
        resolved.append(
            ResolvedPackage(
                name=name,
                version=entry["version"],
                index=url_to_index.get(url, url or ("url" if direct else default.name)),
                groups=tuple(sorted(groups_of.get(name) or {MAIN_GROUP})),
                artifacts=_artifacts(entry),
                vcs=from_pylock_entry(entry),
            )
        )
    return resolved


def _from_pylock_alone(spec: Spec, target: Target, routing: Routing, pylock: dict) -> list[ResolvedPackage]:
    """No groups and no index that could serve any package: everything is main, and a package comes
    from the index its source pins it to, else from the default index."""
    from packaging.requirements import Requirement

    # uv applies sources to direct requirements only; anything else came from the default index
    direct = {canonicalize_name(Requirement(item).name) for item in spec.dependencies} | set(routing.packages)
    sources = {name: index for name, index in {**spec.sources_for(target), **routing.sources()}.items()
               if name in direct}
    default = spec.default_index().name
    return [
        ResolvedPackage(
            name=canonicalize_name(entry["name"]),
            version=entry["version"],
            index="url" if entry.get("archive") or entry.get("vcs") else sources.get(canonicalize_name(entry["name"]),
                                                                                     default),
            groups=(MAIN_GROUP,),
            artifacts=_artifacts(entry),
            vcs=from_pylock_entry(entry),
        )
        for entry in pylock.get("packages", [])
    ]
