"""The spec: ``mlenv.toml``, what a human writes.

``load_spec`` parses and validates the whole file up front, so every later step can trust it.  Each
error is a ``SpecError`` pointing at ``file:line:col`` with a hint ("did you mean ...") when one
helps.  Sections that later features read (``[image]``, ``[devbox]``, ``[ci]``, ``[sweep]``) are
validated here too, so a typo there fails at load time, not halfway through a build.
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path, PurePosixPath
from typing import Any, Callable, ClassVar, NamedTuple, TypeVar

import tomli  # tomllib's own upstream, compiled (mypyc): 2-3x faster on a large spec (`init` of 100k lines)
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name

from mlenv import validate
from mlenv.errors import SpecError, did_you_mean
from mlenv.hardware import catalog
from mlenv.hardware.platforms import PLATFORM_ALIASES, PLATFORMS
from mlenv.tomlpos import locate

SPEC_FILE = "mlenv.toml"
DEFAULT_INDEX_URL = "https://pypi.org/simple"


@dataclass(frozen=True)
class Index:
    name: str
    url: str
    # explicit: used only by packages pinned to it (the PyTorch indexes must not shadow PyPI)
    explicit: bool = False
    default: bool = False


@dataclass(frozen=True)
class Target:
    name: str
    platform: str
    cuda: str | None = None
    gpu: str | None = None
    gpu_count: int = 0
    gpu_memory_min: int | None = None  # GB
    cpu_min: int | None = None
    ram_min: int | None = None  # GB
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def os(self) -> str:
        return self.platform.split("/")[0]

    @property
    def arch(self) -> str:
        return self.platform.split("/")[1]

    @property
    def sys_platform(self) -> str:
        return PLATFORMS[self.platform][0]

    @property
    def platform_machine(self) -> str:
        return PLATFORMS[self.platform][1]

    @property
    def python_platform(self) -> str:
        return PLATFORMS[self.platform][2]

    @property
    def accelerator(self) -> str:
        return f"cuda{self.cuda}" if self.cuda else "cpu"

    def hardware(self) -> dict[str, Any]:
        """The hardware fields, as recorded in the lock inputs (None-valued ones left out)."""
        fields = {
            "platform": self.platform,
            "cuda": self.cuda,
            "gpu": self.gpu,
            "gpu-count": self.gpu_count or None,
            "gpu-memory-min": self.gpu_memory_min,
            "cpu-min": self.cpu_min,
            "ram-min": self.ram_min,
        }
        return {key: value for key, value in fields.items() if value is not None}


@dataclass(frozen=True)
class Spec:
    path: Path
    name: str
    python: str  # "3.11" or "3.11.7": an environment has exactly one Python
    dependencies: tuple[str, ...]
    groups: dict[str, tuple[str, ...]]
    indexes: tuple[Index, ...]
    sources: dict[str, str]
    targets: dict[str, Target]
    image: ImageSettings = field(default_factory=lambda: ImageSettings())
    devbox: DevboxSettings = field(default_factory=lambda: DevboxSettings())
    ci: CiSettings = field(default_factory=lambda: CiSettings())
    sweep: SweepSettings = field(default_factory=lambda: SweepSettings())  # (the classes are defined below)
    # sets of dependency groups that are alternatives (installed one at a time, locked apart)
    exclusive_groups: tuple[tuple[str, ...], ...] = ()
    sha256: str = ""  # digest of the exact bytes this spec was parsed from (set by load_spec)
    # files `mlenv init` imported -> their sha256 then ([imported] files): lock warns when one moved on
    imported: dict[str, str] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.path.parent

    @property
    def python_minor(self) -> str:
        return ".".join(self.python.split(".")[:2])

    @property
    def requires_python(self) -> str:
        return f"=={self.python}" if self.python.count(".") == 2 else f"=={self.python}.*"

    def index(self, name: str) -> Index:
        return next(index for index in self.indexes if index.name == name)

    def default_index(self) -> Index:
        for index in self.indexes:
            if index.default:
                return index
        return Index(name="pypi", url=DEFAULT_INDEX_URL, default=True)

    def sources_for(self, target: Target) -> dict[str, str]:
        """Package -> index name for one target: the spec-wide pins, overridden by the target's."""
        return {**self.sources, **target.sources}

    def target(self, name: str) -> Target:
        try:
            return self.targets[name]
        except KeyError:
            from mlenv.errors import UsageError

            raise UsageError(
                f"no target named {name!r} in {self.path.name}",
                hint=did_you_mean(name, self.targets) or f"targets: {', '.join(self.targets)}",
            ) from None


# --- validation ---------------------------------------------------------------------------------

Check = Callable[[Any], str | None]  # returns an error message, or None when the value is fine


def _is(kind: type | tuple[type, ...], label: str) -> Check:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) and kind is not bool and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            return f"expected {label}, got a boolean"
        return None if isinstance(value, kind) else f"expected {label}, got {type(value).__name__}"

    return check


def _string_list(value: Any) -> str | None:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        return "expected a list of strings"
    return None


def _positive_int(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return "expected a positive integer"
    return None


_DURATION = re.compile(r"^(\d+)(s|m|h|d)$")
_DURATION_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int | None:
    """Seconds in a duration such as "30m", "2h" or "1d"; None when ``text`` is not one."""
    match = _DURATION.match(text) if isinstance(text, str) else None
    return int(match.group(1)) * _DURATION_SECONDS[match.group(2)] if match else None


def _duration(value: Any) -> str | None:
    if parse_duration(value) is None:
        return 'expected a duration such as "30m", "2h" or "1d"'
    return None


def _one_of(*choices: str) -> Check:
    def check(value: Any) -> str | None:
        if value not in choices:
            return f"expected one of {', '.join(choices)}, got {value!r}"
        return None

    return check


STR, BOOL, INT = _is(str, "a string"), _is(bool, "true or false"), _positive_int
TABLE = _is(dict, "a table")
NUMBER = _is((int, float), "a number")


# --- the optional sections: one frozen dataclass each ---------------------------------------------


def setting(check: Check, default: Any = None, *, parse: Callable[[Any], Any] | None = None,
            factory: Callable[[], Any] | None = None) -> Any:
    """One key of a section.  The key users write is the field name with '-' for '_'
    (``system_packages`` is ``system-packages``); ``check`` validates the raw TOML value, ``parse`` turns
    it into the attribute's value (lists become tuples by default)."""
    metadata = {"check": check, "parse": parse}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def _frozen(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _seconds(value: Any) -> int:
    seconds = parse_duration(value)
    assert seconds is not None  # checked by _duration first
    return seconds


class Conflict(NamedTuple):
    """Keys of one section that do not fit together: the key to point at, what is wrong, the fix."""

    key: str
    message: str
    hint: str | None = None


@dataclass(frozen=True)
class Section:
    """Settings of one optional table of mlenv.toml; unset keys keep their defaults."""

    given: frozenset[str] = field(default=frozenset(), repr=False, compare=False)  # keys the user wrote
    label: ClassVar[str] = "section"

    @classmethod
    def keys(cls) -> dict[str, Any]:
        """TOML key -> dataclass field, for every key the section accepts."""
        return {f.name.replace("_", "-"): f for f in fields(cls) if "check" in f.metadata}

    def written(self) -> dict[str, Any]:
        """The keys the user wrote, by their TOML names, with their parsed values (for layering)."""
        return {key: getattr(self, f.name) for key, f in self.keys().items() if key in self.given}

    def conflict(self) -> Conflict | None:
        """Checks across keys, after each key passed its own; None when they fit together."""
        return None


@dataclass(frozen=True)
class ImageSettings(Section):
    label = "image"
    name: str | None = setting(validate.image_reference)
    base: str | None = setting(validate.image_reference)
    devel: bool = setting(BOOL, False)
    docker: str | None = setting(validate.line)
    registry: str | None = setting(validate.image_reference)
    system_packages: tuple[str, ...] = setting(validate.debian_packages, ())
    ca_bundle: str | None = setting(validate.line)
    user: str | None = setting(validate.posix_user)


@dataclass(frozen=True)
class DevboxSettings(Section):
    label = "devbox"
    provider: str | None = setting(_one_of("docker", "ssh", "aws"))
    target: str | None = setting(validate.name)
    idle: int | None = setting(_duration, parse=_seconds)  # seconds
    idle_connected: int | None = setting(_duration, parse=_seconds)
    max_lifetime: int | None = setting(_duration, parse=_seconds)
    host: str | None = setting(validate.hostname)
    user: str | None = setting(validate.login)
    port: int | None = setting(validate.port)
    # ssh: run the box as a container when the machine's docker answers (unset), always (true), never (false: a venv)
    docker: bool | None = setting(BOOL)
    region: str | None = setting(validate.line)
    instance_type: str | None = setting(validate.line)
    ami: str | None = setting(validate.line)
    ami_parameter: str | None = setting(validate.line)
    disk_gb: int | None = setting(validate.int_between(1, 16384, "GB; the largest EBS volume"))
    spot: bool = setting(BOOL, False)
    ssh_cidrs: tuple[str, ...] = setting(_string_list, ())  # aws: where SSH may come from (default: the caller /32)
    instance_profile: str | None = setting(validate.line)  # aws: IAM instance profile (ECR pulls via the instance role)


# [ci] values land in workflow YAML and in shell words: each is held to what is safe there.
_RUNNER_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")
_BRANCH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/*-]{0,199}\Z")
_PLAIN_PATH = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._/-]{0,199}\Z")  # also inside hashFiles('...')
_CI_JOB_TARGET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,60}\Z")  # target names become job ids
_PARAMETER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}\Z")
_PARAMETER_VALUE = re.compile(r"^[A-Za-z0-9_.+-]{1,100}\Z")
_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[A-Za-z0-9+=,.@_/-]{1,512}\Z")


_runner_label = validate.matching(validate.line, _RUNNER_LABEL,
                                  "{value!r} is not a runner label (letters, digits, . _ -)")


def _runner_labels(value: Any) -> str | None:
    if isinstance(value, list) and not value:
        return "needs at least one runner label"
    return validate.each(_runner_label, "a list of runner labels")(value)


# a target name that can also name CI jobs (``image-NAME``, ``test-NAME``)
ci_job_target = validate.matching(validate.name, _CI_JOB_TARGET,
                                  "target name {value!r} cannot name a CI job (use letters, digits, - and _)")


# a path inside the project bound for YAML, ``hashFiles('...')`` and shell words: relative and plain
plain_relative_path = validate.matching(validate.relative_path, _PLAIN_PATH,
                                        "{value!r} must use only letters, digits, '.', '_', '-' and '/'")


def _notebook_paths(value: Any) -> str | None:
    problem = validate.each(plain_relative_path, "a list of notebook paths")(value)
    if problem:
        return problem
    for notebook in value:
        if not notebook.endswith(".ipynb"):
            return f"{notebook!r} is not a .ipynb file"
    stems = [PurePosixPath(notebook).stem for notebook in value]
    if len(set(stems)) != len(stems):
        return "two notebooks share a file name; their outputs would collide"
    return None


def _parameter_values(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _parameter_text(value: Any) -> str:
    """A value as ``mlenv sweep -p name=v1,v2`` takes it (TOML true is "true", not Python's "True")."""
    return json.dumps(value) if isinstance(value, bool) else str(value)


def _notebook_parameters(value: Any) -> str | None:
    if not isinstance(value, dict):
        return f"expected a table, got {type(value).__name__}"
    for name, values in value.items():
        if not _PARAMETER.match(name):
            return f"{name!r} is not a parameter name (parameter names are Python identifiers)"
        if not _parameter_values(values):
            return f"{name} has no values"
        for item in _parameter_values(values):
            if isinstance(item, (dict, list)) or not _PARAMETER_VALUE.match(_parameter_text(item)):
                return (f"{name}: {item!r} is not a simple value "
                        "(numbers, true/false, or words of letters, digits, . _ + -)")
    return None


def _sweep_arguments(value: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """(name, "v1,v2") pairs, sorted by name, as ``mlenv sweep -p`` takes them."""
    return tuple((name, ",".join(_parameter_text(item) for item in _parameter_values(values)))
                 for name, values in sorted(value.items()))


def _branch(value: Any) -> str | None:
    problem = validate.line(value)
    if problem is None and (not _BRANCH.match(value) or ".." in value):
        problem = f"{value!r} is not a branch name or pattern"
    return problem


def _mlenv_requirement(value: Any) -> str | None:
    problem = validate.workflow_text(value)
    if problem is None:
        try:
            problem = None if Requirement(value).name == "mlenv" else "not a requirement on mlenv"
        except InvalidRequirement:
            problem = "not a requirement on mlenv"
    if problem:
        return (f"{value!r} is not a requirement on mlenv "
                '(e.g. "mlenv==0.1.0" or "mlenv @ https://example.com/mlenv-0.1.0-py3-none-any.whl")')
    return None


@dataclass(frozen=True)
class CiSettings(Section):
    """``[ci]``, what ``mlenv ci init`` writes into workflows.  ``mlenv.ci`` adds only what needs the
    lock or the files: targets it can build, notebooks that exist, defaults taken from the project."""

    label = "ci"
    runs_on: str = setting(_runner_label, "ubuntu-latest")
    gpu_runs_on: tuple[str, ...] = setting(_runner_labels, ("self-hosted", "linux", "x64", "gpu"))
    targets: tuple[str, ...] = setting(validate.each(ci_job_target, "a list of target names"), ())  # (): linux ones
    push: bool = setting(BOOL, True)
    registry: str = setting(_one_of("ghcr", "ecr"), "ghcr")
    aws_role: str | None = setting(validate.line)  # with registry = "ecr" only (see conflict)
    aws_region: str | None = setting(validate.line)
    cache: str = setting(_one_of("registry", "gha"), "registry")
    test_command: str | None = setting(validate.workflow_text)  # None: pytest when the project has tests
    notebooks: tuple[str, ...] = setting(_notebook_paths, ())
    notebook_parameters: tuple[tuple[str, str], ...] = setting(_notebook_parameters, (), parse=_sweep_arguments)
    notebook_target: str | None = setting(validate.name)  # None: a CPU target of the CI targets
    branches: tuple[str, ...] = setting(validate.each(_branch, "a list of branch names"), ("main",))
    mlenv_requirement: str | None = setting(_mlenv_requirement)  # None: the wheel committed in .mlenv/

    def conflict(self) -> Conflict | None:
        if self.registry == "ecr":
            if not self.aws_role or not _ROLE_ARN.match(self.aws_role):
                return Conflict("aws-role", "ECR pushes need the ARN of a role GitHub's OIDC token may assume",
                                'e.g. aws-role = "arn:aws:iam::123456789012:role/github-ci"')
            if not self.aws_region or not validate.AWS_REGION.fullmatch(self.aws_region):
                return Conflict("aws-region", "ECR needs the region of the registry", 'e.g. aws-region = "eu-west-1"')
        elif self.aws_role or self.aws_region:
            return Conflict("aws-role" if self.aws_role else "aws-region", 'only used with registry = "ecr"')
        if self.notebook_target is not None and self.targets and self.notebook_target not in self.targets:
            return Conflict("notebook-target",
                            f"{self.notebook_target!r} is not one of the CI targets ({', '.join(self.targets)})")
        return None


@dataclass(frozen=True)
class SweepSettings(Section):
    label = "sweep"
    notebook: str | None = setting(validate.line)  # a path; may be absolute (it never reaches a generated file)
    parameters: dict[str, Any] = setting(TABLE, factory=dict)
    mode: str | None = setting(_one_of("grid", "zip", "random"))
    samples: int | None = setting(INT)
    seed: int | None = setting(_is(int, "an integer"))
    jobs: int | None = setting(INT)
    timeout: float | None = setting(validate.finite_positive)
    retries: int | None = setting(validate.int_between(0, 100, "retries of a run"))
    output: str | None = setting(validate.relative_path_or_url)
    sort: str | None = setting(validate.line)
    kernel: str | None = setting(validate.line)
    cluster: str | None = setting(validate.url)


# The optional tables of mlenv.toml.  A feature that grows a setting adds one line to its class.
SECTIONS: dict[str, type[Section]] = {
    "image": ImageSettings,
    "devbox": DevboxSettings,
    "ci": CiSettings,
    "sweep": SweepSettings,
}
S = TypeVar("S", bound=Section)

TOP_LEVEL = ("project", "dependency-groups", "index", "sources", "targets", "imported", *SECTIONS)
PROJECT_KEYS = ("name", "python", "dependencies", "exclusive-groups")
INDEX_KEYS = ("name", "url", "explicit", "default")
TARGET_KEYS = ("platform", "cuda", "gpu", "gpu-count", "gpu-memory-min", "cpu-min", "ram-min", "sources")
_CUDA_INDEX = re.compile(r"/cu(\d{2,3})(?:/|$)")


# The shape of most requirement lines (pip freeze, pip-compile, `numpy>=1.26`): a name and version
# clauses in canonical PEP 440 spelling, no spaces, extras, markers or URLs.  Only the shape is
# checked here; packaging's SpecifierSet validates every clause (`>=1.*`, `~=1` are refused there).
_PLAIN_VERSION = r"[0-9]+(?:\.[0-9]+)*(?:(?:a|b|rc)[0-9]+)?(?:\.post[0-9]+)?(?:\.dev[0-9]+)?(?:\.\*)?" \
                 r"(?:\+[a-z0-9]+(?:\.[a-z0-9]+)*)?"
_PLAIN_CLAUSE = rf"(?:~=|==|!=|<=|>=|<|>){_PLAIN_VERSION}"
_PLAIN_REQUIREMENT = re.compile(
    rf"([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)((?:{_PLAIN_CLAUSE}(?:,{_PLAIN_CLAUSE})*)?)")


@functools.cache
def _specifier_set(text: str) -> SpecifierSet:
    """One object per distinct specifier (``>=1.0``, ``==2.0.0`` recur across packages); shared, like
    parse_requirement's results."""
    return SpecifierSet(text)


@functools.cache
def parse_requirement(text: str) -> Requirement:
    """A PEP 508 requirement, parsed once per distinct text in this process: `mlenv init` reads each
    line, proposes, then validates the proposal with this parser, and a 100k-line file must stay fast.
    The object is shared: never mutate it (copy with ``Requirement(str(requirement))``).

    Plain lines (``name==1.2.3``, ``name>=1,<2``) take a fast path: packaging's full PEP 508 parser
    costs ~25 us a line, its SpecifierSet alone ~3 us.  The result is the object packaging builds
    (tests/test_spec.py compares both on a corpus); anything else, or anything the fast path
    refuses, goes to ``Requirement`` itself, which stays the authority and words the errors."""
    plain = _PLAIN_REQUIREMENT.fullmatch(text)
    if plain is not None:
        try:
            specifier = _specifier_set(plain.group(2))
        except InvalidSpecifier:
            return Requirement(text)  # raises InvalidRequirement with packaging's own message
        requirement = Requirement.__new__(Requirement)
        requirement.name, requirement.url, requirement.extras = plain.group(1), None, set()
        requirement.specifier, requirement.marker = specifier, None
        return requirement
    return Requirement(text)


@functools.cache
def target_limits() -> dict[str, Check]:
    """Upper bounds of a target's numbers: no machine has more GPUs than the largest one in mlenv's
    instance catalog, no GPU more memory than the largest in the hardware catalog.  CPU and RAM caps
    sit above any single server sold, to catch typos (an extra digit), not to judge hardware."""
    from mlenv.boxes import catalog as instances

    largest = max(instances.instance_types(), key=lambda row: row.gpu_count)
    memory = max(catalog.gpu_model(name).memory_gb for name in catalog.gpu_names())
    return {
        "gpu-count": validate.int_between(1, largest.gpu_count,
                                          f"the largest machine mlenv knows, {largest.describe()}"),
        "gpu-memory-min": validate.int_between(1, memory, "GB; no GPU in mlenv's catalog has more"),
        "cpu-min": validate.int_between(1, 4096, "CPUs"),
        "ram-min": validate.int_between(1, 65536, "GB"),
    }


class _Validator:
    def __init__(self, text: str, path: Path) -> None:
        self.text, self.path = text, path

    def fail(self, where: tuple, message: str, hint: str | None = None) -> SpecError:
        position = locate(self.text, where)
        line, col = position if position else (None, None)
        return SpecError(message, path=str(self.path), line=line, col=col, hint=hint)

    def keys(self, table: dict, allowed: tuple[str, ...] | dict, where: tuple, what: str) -> None:
        for key in table:
            if key not in allowed:
                hint = did_you_mean(key, allowed) or f"allowed: {', '.join(allowed)}"
                raise self.fail(where + (key,), f"unknown key {key!r} in {what}", hint)

    def check(self, value: Any, check: Check, where: tuple) -> None:
        problem = check(value)
        if problem:
            raise self.fail(where, f"{'.'.join(map(str, where))}: {problem}")

    def section(self, cls: type[S], table: Any, where: tuple) -> S:
        self.check(table, TABLE, where)
        accepted = cls.keys()
        self.keys(table, tuple(accepted), where,
                  f"[{'.'.join(map(str, where))}]" if where else f"the {cls.label} settings")
        values = {}
        for key, value in table.items():
            spec_field = accepted[key]
            self.check(value, spec_field.metadata["check"], where + (key,))
            values[spec_field.name] = (spec_field.metadata["parse"] or _frozen)(value)
        settings = cls(given=frozenset(table), **values)
        conflict = settings.conflict()
        if conflict:
            key_path = where + (conflict.key,)
            raise self.fail(key_path, f"{'.'.join(map(str, key_path))}: {conflict.message}", conflict.hint)
        return settings

    def requirements(self, value: Any, where: tuple) -> tuple[str, ...]:
        self.check(value, _string_list, where)
        for item in value:
            try:
                url = parse_requirement(item).url
            except InvalidRequirement as exc:
                raise self.fail(where, validate.redact_text(f"invalid requirement {item!r}: {exc}")) from None
            if url and validate.url_secret(url):
                raise self.fail(where, f"{validate.redact_text(item)!r} has a credential in its URL, and "
                                "mlenv.toml is committed", validate.CREDENTIAL_HINT)
        return tuple(value)


def parse_spec(text: str, path: Path) -> Spec:
    """Validate spec text; ``path`` is used for messages and as the project root."""
    try:
        data = tomli.loads(text)
    except tomli.TOMLDecodeError as exc:
        message = str(exc)
        match = re.search(r"\(at line (\d+), column (\d+)\)", message)
        line, col = (int(match.group(1)), int(match.group(2))) if match else (None, None)
        message = re.sub(r"\s*\(at line \d+, column \d+\)", "", message)
        raise SpecError(f"malformed TOML: {message}", path=str(path), line=line, col=col) from None

    v = _Validator(text, path)
    v.keys(data, TOP_LEVEL, (), "mlenv.toml")

    project = data.get("project")
    if not isinstance(project, dict):
        raise v.fail(("project",), "missing [project] table", 'add [project] with name = "..." and python = "3.11"')
    v.keys(project, PROJECT_KEYS, ("project",), "[project]")
    name = project.get("name")
    if validate.name(name):
        raise v.fail(("project", "name"), "project.name must be a name such as \"my-project\"")
    python = project.get("python")
    if python is None:
        raise v.fail(("project",), "project.python is required", 'e.g. python = "3.11"')
    if validate.python_version(python):
        raise v.fail(
            ("project", "python"),
            f"project.python: {validate.python_version(python)}",
            "an environment has exactly one Python; pick the version the team runs",
        )
    dependencies = v.requirements(project.get("dependencies", []), ("project", "dependencies"))

    groups_table = data.get("dependency-groups", {})
    v.check(groups_table, TABLE, ("dependency-groups",))
    groups: dict[str, tuple[str, ...]] = {}
    for group, requirements in groups_table.items():
        if validate.name(group) or group == "main":
            raise v.fail(("dependency-groups", group), f"invalid group name {group!r}",
                         "use letters, digits, '.', '-' and '_' (and not \"main\")")
        groups[group] = v.requirements(requirements, ("dependency-groups", group))

    exclusive = project.get("exclusive-groups", [])
    if not isinstance(exclusive, list) or not all(isinstance(item, list) for item in exclusive):
        raise v.fail(("project", "exclusive-groups"), 'project.exclusive-groups must be a list of lists of group '
                     'names, e.g. [["tpu", "cuda"]]')
    seen_exclusive: set[str] = set()
    for position, alternatives in enumerate(exclusive):
        v.check(alternatives, _string_list, ("project", "exclusive-groups", position))
        if len(alternatives) < 2:
            raise v.fail(("project", "exclusive-groups"), f"exclusive-groups {alternatives!r}: name two or more groups")
        for group in alternatives:
            if group not in groups:
                raise v.fail(("project", "exclusive-groups"), f"exclusive-groups names unknown group {group!r}",
                             did_you_mean(group, groups) or f"groups: {', '.join(groups) or 'none'}")
            if group in seen_exclusive:
                raise v.fail(("project", "exclusive-groups"), f"group {group!r} is in two exclusive sets")
            seen_exclusive.add(group)
    exclusive_groups = tuple(tuple(item) for item in exclusive)

    index_list = data.get("index", [])
    if not isinstance(index_list, list):
        raise v.fail(("index",), "index must be an array of tables: [[index]]")
    indexes: list[Index] = []
    for position, table in enumerate(index_list):
        where = ("index", position)
        v.check(table, TABLE, where)
        v.keys(table, INDEX_KEYS, where, "[[index]]")
        for key in ("name", "url"):
            if not isinstance(table.get(key), str):
                raise v.fail(where + (key,) if key in table else where, f"[[index]] needs a string {key!r}")
        for key in ("explicit", "default"):
            if key in table:
                v.check(table[key], BOOL, where + (key,))
        if validate.name(table["name"]):
            raise v.fail(where + ("name",), f"[[index]] {validate.name(table['name'])}")
        if not re.match(r"^(https?|file)://", table["url"]):
            raise v.fail(where + ("url",), "index url must start with http://, https:// or file://, "
                         f"got {validate.redact_url(table['url'])!r}")
        if validate.url_secret(table["url"]):
            raise v.fail(where + ("url",), f"index {table['name']!r} has a credential in its URL, and mlenv.toml "
                         "is committed", validate.CREDENTIAL_HINT)
        if any(index.name == table["name"] for index in indexes):
            raise v.fail(where + ("name",), f"duplicate index name {table['name']!r}")
        indexes.append(Index(table["name"], table["url"].rstrip("/"), table.get("explicit", False),
                             table.get("default", False)))
    if sum(index.default for index in indexes) > 1:
        raise v.fail(("index",), "only one [[index]] may set default = true")
    index_names = [index.name for index in indexes]

    def index_pins(table: Any, where: tuple) -> dict[str, str]:
        v.check(table, TABLE, where)
        pins = {}
        for package, index_name in table.items():
            if not isinstance(index_name, str):
                raise v.fail(where + (package,), f"{package}: expected the name of an [[index]]")
            if index_name not in index_names:
                hint = did_you_mean(index_name, index_names) or (
                    f"indexes: {', '.join(index_names)}" if index_names else "declare it with [[index]]"
                )
                raise v.fail(where + (package,), f"{package} is pinned to unknown index {index_name!r}", hint)
            pins[str(canonicalize_name(package))] = index_name
        return pins

    sources = index_pins(data.get("sources", {}), ("sources",))

    targets_table = data.get("targets")
    if not targets_table:
        raise v.fail(("targets",), "no targets", 'add e.g. [targets.cpu] with platform = "linux/x86_64"')
    v.check(targets_table, TABLE, ("targets",))
    targets: dict[str, Target] = {}
    for target_name, table in targets_table.items():
        where = ("targets", target_name)
        if validate.name(target_name) or "." in target_name:
            raise v.fail(where, f"invalid target name {target_name!r}", "use letters, digits, - and _")
        v.check(table, TABLE, where)
        v.keys(table, TARGET_KEYS, where, f"[targets.{target_name}]")
        platform = table.get("platform")
        if not isinstance(platform, str):
            raise v.fail(where, f"target {target_name!r} needs platform", f"one of: {', '.join(PLATFORMS)}")
        platform = PLATFORM_ALIASES.get(platform, platform)
        if platform not in PLATFORMS:
            raise v.fail(where + ("platform",), f"unknown platform {platform!r}",
                         did_you_mean(platform, PLATFORMS) or f"one of: {', '.join(PLATFORMS)}")
        for key in ("gpu-count", "gpu-memory-min", "cpu-min", "ram-min"):
            if key in table:
                v.check(table[key], INT, where + (key,))
                v.check(table[key], target_limits()[key], where + (key,))
        cuda, gpu = table.get("cuda"), table.get("gpu")
        if cuda is not None:
            if isinstance(cuda, float):
                raise v.fail(where + ("cuda",), f"write the CUDA version as a string: cuda = \"{cuda}\"")
            v.check(cuda, STR, where + ("cuda",))
            if not platform.startswith(("linux/", "windows/")):
                raise v.fail(where + ("cuda",), f"CUDA is not available on {platform}",
                             "drop cuda from this target, or use a linux platform")
            try:
                catalog.cuda_release(cuda)
            except SpecError as exc:
                raise v.fail(where + ("cuda",), exc.message, exc.hint) from None
        if gpu is not None:
            v.check(gpu, STR, where + ("gpu",))
            try:
                model = catalog.gpu_model(gpu)
            except SpecError as exc:
                raise v.fail(where + ("gpu",), exc.message, exc.hint) from None
            if cuda is None:
                raise v.fail(where + ("gpu",), f"target {target_name!r} names a GPU but no CUDA version",
                             'add cuda = "12.4" (or another version)')
            if not catalog.cuda_release(cuda).supports_sm(model.sm):
                raise v.fail(where + ("cuda",), f"CUDA {cuda} does not support {gpu} (compute capability {model.sm})",
                             "pick a CUDA version that supports this GPU")
            memory_min = table.get("gpu-memory-min")
            if memory_min and model.memory_gb < memory_min:
                raise v.fail(where + ("gpu-memory-min",),
                             f"{gpu} has {model.memory_gb} GB but the target asks for {memory_min} GB")
        if table.get("gpu-count") and cuda is None:
            raise v.fail(where + ("gpu-count",), "gpu-count needs a CUDA target", 'add cuda = "12.4"')
        target_sources = index_pins(table.get("sources", {}), where + ("sources",))
        pins = {**sources, **target_sources}
        for package, index_name in pins.items():
            match = _CUDA_INDEX.search(next(index.url for index in indexes if index.name == index_name))
            if not match:
                continue
            served = match.group(1)
            wanted = catalog.cuda_release(cuda).torch_index[2:] if cuda else None
            if wanted and served != wanted:
                location = where + ("sources", package) if package in target_sources else ("sources", package)
                raise v.fail(location,
                             f"target {target_name!r} uses CUDA {cuda} but pins {package} to index "
                             f"{index_name!r}, which serves CUDA builds cu{served}",
                             f"pin {package} to an index serving cu{wanted} for this target")
        targets[target_name] = Target(
            name=target_name,
            platform=platform,
            cuda=cuda,
            gpu=gpu.lower() if gpu else None,
            gpu_count=table.get("gpu-count", 1 if cuda and gpu else 0),
            gpu_memory_min=table.get("gpu-memory-min"),
            cpu_min=table.get("cpu-min"),
            ram_min=table.get("ram-min"),
            sources=target_sources,
        )

    imported_table = data.get("imported", {})
    v.check(imported_table, TABLE, ("imported",))
    v.keys(imported_table, ("files",), ("imported",), "[imported]")
    imported_files = imported_table.get("files", {})
    v.check(imported_files, TABLE, ("imported", "files"))
    for relative, digest in imported_files.items():
        parts = Path(relative).parts
        if Path(relative).is_absolute() or ".." in parts or "\n" in relative or not parts:
            raise v.fail(("imported", "files", relative),
                         f"imported file {relative!r} must be a path inside the project")
        if not isinstance(digest, str) or not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            raise v.fail(("imported", "files", relative), f"imported file {relative!r}: expected \"sha256:<64 hex>\"")

    image = v.section(ImageSettings, data.get("image", {}), ("image",))
    devbox = v.section(DevboxSettings, data.get("devbox", {}), ("devbox",))
    ci = v.section(CiSettings, data.get("ci", {}), ("ci",))
    sweep = v.section(SweepSettings, data.get("sweep", {}), ("sweep",))
    devbox_target = devbox.target
    if devbox_target and devbox_target not in targets:
        raise v.fail(("devbox", "target"), f"unknown target {devbox_target!r}", did_you_mean(devbox_target, targets))
    named = [("targets", name) for name in ci.targets]
    if ci.notebook_target:
        named.append(("notebook-target", ci.notebook_target))
    for key, ci_target in named:
        if ci_target not in targets:
            raise v.fail(("ci", key), f"ci.{key}: unknown target {ci_target!r}", did_you_mean(ci_target, targets))

    return Spec(
        path=path,
        name=str(name),
        python=python,
        dependencies=dependencies,
        groups=groups,
        indexes=tuple(indexes),
        sources=sources,
        targets=targets,
        exclusive_groups=exclusive_groups,
        imported=dict(imported_files),
        image=image,
        devbox=devbox,
        ci=ci,
        sweep=sweep,
    )


def _not_a_spec_file(path: Path) -> SpecError:
    if path.is_symlink() and not path.exists():
        return SpecError(f"{path} is a broken symlink (to {os.readlink(path)})",
                         hint="fix or remove the link; mlenv does not fall back to a parent folder's spec")
    return SpecError(f"{path} is not a file", hint=f"move the folder {path.name} aside, then run `mlenv init`")


def spec_error(spec: Spec, where: tuple, message: str, hint: str | None = None) -> SpecError:
    """A problem found after loading (against the lock or the project's files), pointed at ``where``
    (a key path such as ``("ci", "targets")``) in the spec file, like the errors found while loading."""
    try:
        text = spec.path.read_text(encoding="utf-8")
    except OSError:
        text = ""
    return _Validator(text, spec.path).fail(where, message, hint)


def parse_section(cls: type[S], table: dict, *, text: str, path: Path, where: tuple = ()) -> S:
    """Validate one section's keys found elsewhere (``mlenv sweep -f sweep.toml``) exactly like the
    spec's own table, with ``file:line:col`` errors; ``where`` is the table's key path in ``text``."""
    return _Validator(text, path).section(cls, table, where)


def find_spec(start: Path | None = None) -> Path:
    """The nearest ``mlenv.toml`` at or above ``start`` (the current directory by default)."""
    start = (start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        candidate = folder / SPEC_FILE
        if candidate.is_file():
            return candidate
        if candidate.exists() or candidate.is_symlink():
            # this folder's spec is broken: never fall back silently to a parent folder's project
            raise _not_a_spec_file(candidate)
    raise SpecError(f"no {SPEC_FILE} in {start} or any parent folder", hint="run `mlenv init` to create one")


def load_spec(path: Path | str | None = None) -> Spec:
    """Load and validate a spec; ``path`` may be the file, its folder, or None (search upwards)."""
    if path is None:
        spec_path = find_spec()
    else:
        spec_path = Path(path)
        if spec_path.is_dir():
            spec_path = spec_path / SPEC_FILE
        if not spec_path.is_file():
            if spec_path.exists() or spec_path.is_symlink():
                raise _not_a_spec_file(spec_path)
            raise SpecError(f"{spec_path} does not exist", hint="run `mlenv init` to create one")
    # read once: the digest recorded in the lock must be of the bytes that were resolved
    from mlenv.fsutil import read_bytes

    data = read_bytes(spec_path)  # a FileAccessError that says what to do when it cannot be read
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError("not UTF-8 text", path=str(spec_path)) from None
    import hashlib
    from dataclasses import replace

    return replace(parse_spec(text, spec_path.resolve()), sha256=hashlib.sha256(data).hexdigest())
