"""Validators for values that cross into a path or another language, in one place.

A value from ``mlenv.toml``, ``mlenv.lock`` or the command line that ends up in a file name, a shell
command, a Dockerfile, a ``.dockerignore``, cloud-init or an ssh config is checked here by what it
*is* (a name, a POSIX user, a Debian package, an image reference, ...) where it is read, and quoted
where it is rendered.  Every validator has the spec's ``Check`` shape: it takes any value and returns
an error message, or None when the value is fine, so ``mlenv.spec`` can point at ``file:line:col``.

Patterns use ``re.fullmatch``: ``$`` matches before a trailing newline, which is exactly the
character that adds a line to a Dockerfile or a ``.dockerignore``.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

from mlenv.errors import ExitCode, MlenvError

Check = Callable[[Any], "str | None"]

# Targets, dependency groups, indexes: they become file names (pylock.<target>.toml), image tags,
# uv arguments.  No slash, no leading dot or dash (not a path, not an option), bounded length.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
# Box names also become host names and ssh Host aliases: lowercase DNS-label-like.
BOX_NAME = re.compile(r"[a-z][a-z0-9-]{0,30}")
# Environment variable names passed to a shell or an ssh session (POSIX portable names).
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# AWS region names (eu-west-1, us-gov-east-1): they reach workflow YAML and the first-boot script.
AWS_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d{1,2}")
# Debian's adduser NAME_REGEX without the trailing '$' (machine accounts); useradd caps at 32.
POSIX_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
# Debian policy 5.6.1 (package), optional :arch, optional =version (apt-get install pkg=1.2-3).
DEBIAN_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]+(?::[a-z0-9-]+)?(?:=[0-9][A-Za-z0-9.+~:-]*)?")
# The distribution/reference grammar (docker/distribution reference/regexp.go).
_DOMAIN_COMPONENT = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9A-Fa-f:]+\])(?::[0-9]+)?"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE_REFERENCE = re.compile(
    rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
    r"(?::[\w][\w.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9A-Fa-f]{32,})?"
)
_HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_PLACEHOLDER = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# schemes whose user name is an account, not a secret (git+ssh://git@github.com/...)
_SSH_SCHEMES = {"ssh", "git+ssh", "sftp"}
URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


# CPython minors mlenv locks for (uv installs and resolves these); a typo such as "3.99" is refused
SUPPORTED_PYTHONS = tuple(f"3.{minor}" for minor in range(8, 15))


class OutsideProject(MlenvError):
    """A path built from input (a name in the spec or lock) would leave the project folder."""

    exit_code = ExitCode.INVALID_INPUT


def _text(value: Any, what: str) -> str | None:
    if not isinstance(value, str):
        return f"expected {what} (a string), got {type(value).__name__}"
    if _CONTROL.search(value):
        return f"{what} must not contain control characters (newline, tab, ...): {value!r}"
    return None


def name(value: Any) -> str | None:
    """Target, group and index names: safe as one file-name component and as one argument."""
    problem = _text(value, "a name")
    if problem:
        return problem
    if not NAME.fullmatch(value):
        return (f"invalid name {value!r}: use letters, digits, '.', '-' and '_', starting with a letter or "
                "digit (at most 100 characters)")
    return None


def box_name(value: Any) -> str | None:
    """Box names become host names, container names and ssh ``Host`` aliases."""
    problem = _text(value, "a box name")
    if problem:
        return problem
    if not BOX_NAME.fullmatch(value):
        return f"invalid box name {value!r}: a lowercase letter, then lowercase letters, digits and '-' (at most 31)"
    return None


def posix_user(value: Any) -> str | None:
    """A user name ``useradd`` accepts and a shell cannot read as anything else."""
    problem = _text(value, "a user name")
    if problem:
        return problem
    if not POSIX_USER.fullmatch(value):
        return (f"invalid user name {value!r}: lowercase letters, digits, '_' and '-', starting with a letter "
                "or '_' (at most 32)")
    if value == "root":
        return "the image user must not be root: the runtime stage runs as a non-root user on purpose"
    return None


def debian_package(value: Any) -> str | None:
    """One apt package (``name``, ``name:arch`` or ``name=version``), never a second word."""
    problem = _text(value, "a Debian package name")
    if problem:
        return problem
    if not DEBIAN_PACKAGE.fullmatch(value):
        return f"invalid Debian package name {value!r}: e.g. \"libgl1\", \"git\" or \"curl=7.88.1-10\""
    return None


def debian_packages(value: Any) -> str | None:
    """A list of ``debian_package`` values."""
    if not isinstance(value, list):
        return "expected a list of Debian package names"
    for item in value:
        problem = debian_package(item)
        if problem:
            return problem
    return None


def image_reference(value: Any) -> str | None:
    """``[registry[:port]/]repository[:tag][@digest]``, as the Docker reference grammar defines it."""
    problem = _text(value, "an image reference")
    if problem:
        return problem
    if len(value) > 512 or not IMAGE_REFERENCE.fullmatch(value):
        return (f"invalid image reference {value!r}: e.g. \"python:3.11-slim-bookworm\" or "
                "\"registry.example.com/team/base:1.0@sha256:...\" (lowercase repository)")
    return None


def relative_path(value: Any) -> str | None:
    """A path inside the project: relative, no ``..``, one line, and not read as a ``.dockerignore``
    exception (``!``) or comment (``#``) when it is written there."""
    problem = _text(value, "a relative path")
    if problem:
        return problem
    if not value.strip():
        return "expected a relative path, got an empty string"
    if value.startswith(("/", "\\", "~")) or re.match(r"[A-Za-z]:", value):
        return f"{value!r} must be relative to the project folder"
    if ".." in re.split(r"[\\/]", value):
        return f"{value!r} must stay inside the project folder (no '..')"
    if value.startswith(("!", "#")):
        return f"{value!r} must not start with '!' or '#'"
    return None


def hostname(value: Any) -> str | None:
    """A DNS name or an IP address; never something ssh or a shell reads as an option or a word."""
    problem = _text(value, "a host name")
    if problem:
        return problem
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        address = None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        # ssh_config reads '%' as a token, and Python accepts any text (spaces, quotes) as a zone
        return (f"invalid host name {value!r}: an IPv6 zone ('%...') cannot be written into an ssh config; "
                "use the machine's DNS name or a global address")
    if address is not None:
        return None
    labels = value.rstrip(".").split(".")
    if len(value) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        return f"invalid host name {value!r}: letters, digits, '-' and '.', or an IP address"
    return None


def python_version(value: Any) -> str | None:
    """One CPython version ("3.11" or "3.11.9") of a minor mlenv supports."""
    problem = _text(value, "a Python version")
    if problem:
        return problem
    if not re.fullmatch(r"3\.\d{1,2}(\.\d{1,2})?", value):
        return f'expected one version such as "3.11" or "3.11.9", got {value!r}'
    if ".".join(value.split(".")[:2]) not in SUPPORTED_PYTHONS:
        return f"there is no Python {value} that mlenv can lock; supported: {', '.join(SUPPORTED_PYTHONS)}"
    return None


def int_between(low: int, high: int, why: str = "") -> Check:
    """An integer in ``[low, high]``; ``why`` says where the upper bound comes from."""

    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"expected an integer, got {type(value).__name__}"
        if not low <= value <= high:
            expected = f"a positive integer up to {high}" if low == 1 else f"{low} to {high}"
            return f"expected {expected}{f' ({why})' if why else ''}, got {value}"
        return None

    return check


def line(value: Any) -> str | None:
    """Free text that stays on one line (a label, a command, a region): no control characters."""
    return _text(value, "a string")


def login(value: Any) -> str | None:
    """An account to log in as over ssh: a POSIX user name (root allowed, unlike ``posix_user``)."""
    problem = _text(value, "a user name")
    if problem:
        return problem
    if not POSIX_USER.fullmatch(value):
        return f"invalid user name {value!r}: lowercase letters, digits, '_' and '-', starting with a letter or '_'"
    return None


def url(value: Any) -> str | None:
    """``scheme://...`` on one line (an s3:// prefix, a tcp:// scheduler address)."""
    problem = _text(value, "a URL")
    if problem:
        return problem
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*://\S+", value):
        return f"invalid URL {value!r}: expected scheme://..., e.g. s3://bucket/prefix"
    return None


def relative_path_or_url(value: Any) -> str | None:
    """Where results go: a folder inside the project, or a URL (``s3://bucket/prefix``)."""
    return url(value) if isinstance(value, str) and "://" in value else relative_path(value)


def finite_positive(value: Any) -> str | None:
    """A number of seconds (or any amount): finite and above zero; TOML allows nan and inf."""
    import math

    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"expected a number, got {type(value).__name__}"
    if not math.isfinite(value) or value <= 0:
        return f"expected a positive, finite number, got {value}"
    return None


port = int_between(1, 65535, "a TCP port")


def matching(check: Check, pattern: re.Pattern[str], problem: str) -> Check:
    """``check``, then ``pattern`` (the whole value); ``problem`` is formatted with ``value``."""

    def check_pattern(value: Any) -> str | None:
        found = check(value)
        if found is None and not pattern.fullmatch(value):
            return problem.format(value=value)
        return found

    return check_pattern


def each(check: Check, what: str = "a list") -> Check:
    """A check applied to every item of a list."""

    def check_all(value: Any) -> str | None:
        if not isinstance(value, list):
            return f"expected {what}"
        for item in value:
            problem = check(item)
            if problem:
                return problem
        return None

    return check_all


# --- paths ----------------------------------------------------------------------------------------

def inside(root: str | os.PathLike, path: str | os.PathLike) -> Path:
    """``path`` (relative to ``root`` or absolute) resolved, symlinks included; ``OutsideProject`` when it
    leaves ``root``.  Checked after resolving: a symlink inside the project may point anywhere."""
    base = Path(root).resolve()
    resolved = (base / path).resolve()
    if resolved != base and base not in resolved.parents:
        raise OutsideProject(
            f"{os.fspath(path)!r} resolves to {resolved}, outside the project folder {base}; nothing was changed",
            hint="names in mlenv.toml and mlenv.lock must be plain names; restore the file from version control",
        )
    return resolved


# --- credentials ----------------------------------------------------------------------------------

def _is_placeholder(text: str | None) -> bool:
    return text is not None and _PLACEHOLDER.fullmatch(text) is not None


def url_secret(url: str) -> str | None:
    """The credential written into ``url`` (password, or a token in the user-name place), or None.
    ``${VAR}`` placeholders are not secrets: the tool expands them from the environment."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if "@" not in parts.netloc:
        return None
    userinfo = parts.netloc.rsplit("@", 1)[0]
    user, _, password = userinfo.partition(":")
    if password:
        return None if _is_placeholder(password) else password
    if parts.scheme.lower() in _SSH_SCHEMES:
        return None  # git+ssh://git@host: an account name, authenticated by a key
    return None if (not user or _is_placeholder(user)) else user


def redact_url(url: str) -> str:
    """``url`` without its credentials (user info), keeping ``${VAR}`` placeholders and ssh account names.
    mlenv writes URLs into committed files and prints them: a token must reach neither."""
    if url_secret(url) is None:
        return url
    parts = urlsplit(url)
    userinfo, host = parts.netloc.rsplit("@", 1)
    user, _, password = userinfo.partition(":")
    keep = ""
    if password and (_is_placeholder(user) or parts.scheme.lower() in _SSH_SCHEMES):
        keep = user + "@"
    return urlunsplit(parts._replace(netloc=keep + host))


def redact_text(text: str) -> str:
    """Every URL in free text (a requirement line, an error message) with ``redact_url`` applied."""
    return URL_IN_TEXT.sub(lambda match: redact_url(match.group(0)), text)


CREDENTIAL_HINT = ("write ${VARIABLE} in its place (uv and pip expand it from the environment), or configure "
                   "the secret with keyring or UV_INDEX_<NAME>_USERNAME / UV_INDEX_<NAME>_PASSWORD")


# --- quoting for templates ------------------------------------------------------------------------

class UnsafeValue(MlenvError):
    """A value reached a template that cannot represent it; validation at load time should have said so."""

    exit_code = ExitCode.INVALID_INPUT


def shell_word(value: Any) -> str:
    """One POSIX shell word (jinja filter ``sh``).  A Dockerfile instruction ends at a newline whatever
    the shell quoting says, so a line break is refused rather than quoted."""
    import shlex

    text = str(value)
    if "\n" in text or "\r" in text:
        raise UnsafeValue(f"{text!r} contains a line break and cannot be written into a generated file")
    return shlex.quote(text)


def dockerfile_string(value: Any) -> str:
    """A double-quoted Dockerfile value (ARG/ENV/LABEL), with ``\\``, ``"`` and ``$`` escaped."""
    text = str(value)
    if _CONTROL.search(text):
        raise UnsafeValue(f"{text!r} contains control characters and cannot be written into a Dockerfile")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


def ignore_line(value: Any) -> str:
    """A literal path as one ``.dockerignore`` pattern line: never an exception (``!``), a comment or a
    second line; glob characters are escaped so the path matches itself only."""
    text = str(value)
    problem = relative_path(text)
    if problem:
        raise UnsafeValue(f".dockerignore: {problem}")
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def yaml_string(value: Any) -> str:
    """A double-quoted YAML scalar (a JSON string is one).  Control characters are refused: a value
    that needs them was not validated."""
    import json

    text = str(value)
    if _CONTROL.search(text):
        raise UnsafeValue(f"{text!r} contains control characters and cannot be written into a YAML file")
    return json.dumps(text, ensure_ascii=False)


def workflow_text(value: Any) -> str | None:
    """Free text bound for a CI workflow (a test command): one line, and never a GitHub expression,
    which the runner would evaluate with the repository's secrets in reach."""
    problem = _text(value, "text")
    if problem:
        return problem
    if "${{" in value:
        return f"{value!r} must not contain '${{{{' (GitHub would evaluate it as an expression)"
    if any(url_secret(found.group(0)) for found in URL_IN_TEXT.finditer(value)):
        return (f"{redact_text(value)!r} has a credential in a URL, and the workflow is committed like "
                "mlenv.toml: use a URL without one")
    if not value.strip():
        return "expected text, got an empty string"
    return None


def require(value: Any, check: Check, what: str) -> Any:
    """``value`` when ``check`` passes, else ``UnsafeValue`` naming ``what``: the last gate before a
    template, for values that may come from the command line or an older spec."""
    problem = check(value)
    if problem:
        raise UnsafeValue(f"{what}: {problem}")
    return value


def install_filters(environment) -> None:
    """Register the quoting filters on a jinja2 Environment: ``sh``, ``dockerfile_string``, ``ignore_line``."""
    environment.filters.update(sh=shell_word, dockerfile_string=dockerfile_string, ignore_line=ignore_line)
