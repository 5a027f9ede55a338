"""Git dependencies (``pkg @ git+https://host/repo@ref``), locked by the commit the ref named.

uv resolves the ref while locking; its pylock output carries PEP 751's ``[packages.vcs]`` table
(``type``, ``url``, ``requested-revision``, ``commit-id``).  mlenv records that table in
``mlenv.lock`` (covered by the lock's content digest) and writes it unchanged into the target's
``pylock.<target>.toml``, so uv installs exactly that commit.  The ref stays the request: changing
it in ``mlenv.toml`` makes the lock stale; a branch that moved on is followed only when asked
(``mlenv lock --upgrade-package NAME``).

Credentials never reach the lock.  uv expands ``${VAR}`` in the spec's URLs and writes the expanded
URL into its output; mlenv records the URL without its user info.  To install from a private
repository, ``sync`` hands git the spec's URL with the placeholders expanded through git's own
environment configuration (``url.<with credentials>.insteadOf <recorded URL>``): the secret lives
in the environment of one process, never in a file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from mlenv import validate
from mlenv.errors import ToolMissingError

VCS_SCHEMES = ("git+",)  # the VCS mlenv locks; hg/svn/bzr are refused at lock time
_COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # SHA-1 or SHA-256 object names
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class VcsSource:
    """Where a locked package's source is: one commit of one repository."""

    url: str  # the repository, without "git+", ref or credentials: "https://host/owner/repo"
    commit_id: str
    requested_revision: str | None = None  # the ref the spec asked for (None: the default branch)
    subdirectory: str | None = None
    type: str = "git"

    @property
    def requirement_url(self) -> str:
        """The URL pinned to the commit, as uv writes it in requirements: ``git+URL@COMMIT``."""
        pinned = f"git+{self.url}@{self.commit_id}"
        return pinned + (f"#subdirectory={self.subdirectory}" if self.subdirectory else "")

    @property
    def short(self) -> str:
        return self.commit_id[:12]

    def to_toml(self) -> dict[str, str]:
        """PEP 751's ``[packages.vcs]`` keys (``mlenv.lock`` uses the same table)."""
        data = {"type": self.type, "url": self.url}
        if self.requested_revision:
            data["requested-revision"] = self.requested_revision
        data["commit-id"] = self.commit_id
        if self.subdirectory:
            data["subdirectory"] = self.subdirectory
        return data

    @classmethod
    def from_toml(cls, data: dict[str, Any], corrupt) -> VcsSource:
        """Read a ``vcs`` table; ``corrupt(field, problem)`` makes the reader's error."""
        if not isinstance(data, dict):
            raise corrupt("", "expected a table")
        values: dict[str, str | None] = {}
        for key in ("type", "url", "commit-id", "requested-revision", "subdirectory"):
            value = data.get(key)
            if value is None and key in ("type", "url", "commit-id"):
                raise corrupt(key, "missing")
            if value is not None and (not isinstance(value, str) or validate.line(value)):
                raise corrupt(key, f"expected one line of text, got {value!r}")
            values[key] = value
        if values["type"] != "git":
            raise corrupt("type", f"mlenv locks git repositories only, got {values['type']!r}")
        commit = str(values["commit-id"])
        if not _COMMIT.fullmatch(commit):
            raise corrupt("commit-id", f"expected a full commit id (40 hex digits), got {commit!r}")
        url = str(values["url"])
        if validate.url_secret(url):
            raise corrupt("url", "has a credential in it; mlenv never writes one")
        return cls(url=url, commit_id=commit, requested_revision=values["requested-revision"],
                   subdirectory=values["subdirectory"])


def from_pylock_entry(entry: dict[str, Any]) -> VcsSource | None:
    """The source of one package of uv's pylock output, credentials removed; None unless from git."""
    vcs = entry.get("vcs")
    if not vcs:
        return None
    return VcsSource(
        url=strip_credentials(vcs["url"]),
        commit_id=vcs["commit-id"],
        requested_revision=vcs.get("requested-revision"),
        subdirectory=vcs.get("subdirectory"),
        type=vcs.get("type", "git"),
    )


def strip_credentials(url: str) -> str:
    """``url`` without user info but an ssh account name (``ssh://git@host``).  Unlike the spec, the
    lock keeps no ``${VAR}`` placeholder either: installers read pylock URLs without expanding them."""
    url = validate.redact_url(url)  # the secrets go; placeholders and ssh account names stay
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if at and _PLACEHOLDER.search(userinfo):
        return urlunsplit(parts._replace(netloc=host))
    return url


def repository_url(requirement_url: str) -> str | None:
    """``git+https://host/repo@ref#subdirectory=x`` -> ``https://host/repo``; None for other URLs."""
    if not requirement_url.startswith(VCS_SCHEMES):
        return None
    url = requirement_url.split("+", 1)[1].split("#", 1)[0]
    parts = urlsplit(url)
    path = parts.path.rsplit("@", 1)[0] if "@" in parts.path else parts.path
    return urlunsplit(parts._replace(path=path))


def git_credentials_env(requirement_urls, environ=None) -> dict[str, str]:
    """git configuration, passed in the environment, that puts the spec's ``${VAR}`` credentials back
    into the credential-free URLs the lock records (``url.<with>.insteadOf <without>``).  A variable
    that is not set is left out: git then asks its credential helper, as for any other URL."""
    environ = os.environ if environ is None else environ
    rewrites: dict[str, str] = {}
    for requirement_url in requirement_urls:
        url = repository_url(requirement_url)
        if url is None or not _PLACEHOLDER.search(urlsplit(url).netloc):
            continue
        names = _PLACEHOLDER.findall(urlsplit(url).netloc)
        if any(not environ.get(name) for name in names):
            continue
        expanded = _PLACEHOLDER.sub(lambda match: environ[match.group(1)], url)
        rewrites[strip_credentials(url)] = expanded
    env: dict[str, str] = {}
    if rewrites:
        first = int((environ.get("GIT_CONFIG_COUNT") or "0").strip() or 0)
        for number, (plain, secret) in enumerate(sorted(rewrites.items()), start=first):
            env[f"GIT_CONFIG_KEY_{number}"] = f"url.{secret}.insteadOf"
            env[f"GIT_CONFIG_VALUE_{number}"] = plain
        env["GIT_CONFIG_COUNT"] = str(first + len(rewrites))
    return env


def git_error(what: str, report: str) -> ToolMissingError | None:
    """uv's report of a failed git operation (an unknown ref, an unreachable or private repository) as
    one error naming the repository and carrying git's own stderr; None when git was not the cause.
    ``what`` says what failed: "could not lock target 'cpu'"."""
    lines = [line.rstrip() for line in re.sub(r"\x1b\[[0-9;]*m", "", report).splitlines()]
    if not any("Git operation failed" in line for line in lines):
        return None
    named = (re.search(r"`[^`\s]+ @ (git\+[^`\s]+)`", line) or re.search(r"git fetch .*? '([^']+)'", line)
             for line in lines)
    url = next((match.group(1) for match in named if match), "")
    git_says, in_stderr = [], False
    for line in lines:
        text = line.strip()
        if text == "--- stderr":
            in_stderr = True
        elif in_stderr and text and not text.startswith("---"):
            git_says.append(text)
    if not git_says:  # git gave no stderr: uv's innermost cause is the next best thing
        git_says = [re.sub(r"^\W*(cause|error):\s*", "", line.strip()) for line in lines if line.strip()][-1:]
    body = "\n".join(f"  git: {line}" for line in git_says)
    return ToolMissingError(
        f"{what}: git could not fetch {url or 'a git dependency'}\n{body}",
        hint="check the repository URL and the ref in mlenv.toml (a branch, tag or commit that exists there) and "
             "that git reaches it (`git ls-remote URL`); a private repository needs ${VARIABLE} credentials in "
             "the URL, a git credential helper, or an ssh key",
    )
