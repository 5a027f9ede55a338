"""One BuildKit build through a docker CLI, and its progress.

The ``docker`` SDK cannot drive BuildKit (no session support: build secrets and ``RUN --mount``
fail), so builds run ``docker buildx build`` where the plugin exists, else a client old enough to
have BuildKit built in (``DOCKER_BUILDKIT=1``).  Progress is parsed from ``rawjson`` or ``plain``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from mlenv.errors import BuildError, Interrupted, ToolMissingError, UsageError
from mlenv.image.engine import docker_host

CA_SECRET_ID = "cacert"
CA_ENV_VARS = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT")


@dataclass(frozen=True)
class Builder:
    """How to run a BuildKit build: the argv prefix, extra environment, and the progress format."""

    argv: tuple[str, ...]
    env: dict[str, str]
    progress: str  # "rawjson" or "plain"

    def describe(self) -> str:
        return " ".join(self.argv)


def _client_version(docker: str) -> tuple[int, ...] | None:
    try:
        result = subprocess.run([docker, "version", "--format", "{{.Client.Version}}"], capture_output=True,
                                text=True, timeout=30)
    except OSError:
        return None
    match = re.match(r"(\d+)\.(\d+)", result.stdout.strip())
    return tuple(int(part) for part in match.groups()) if match else None


def _buildx_version(docker: str) -> tuple[int, ...] | None:
    try:
        result = subprocess.run([docker, "buildx", "version"], capture_output=True, text=True, timeout=30)
    except OSError:
        return None
    if result.returncode != 0:
        return None
    match = re.search(r"v?(\d+)\.(\d+)", result.stdout)
    return tuple(int(part) for part in match.groups()) if match else (0, 0)


def _candidates(configured: str | None) -> list[str]:
    if configured:
        return [configured]
    found: list[str] = []
    seen: set[Path] = set()  # a symlinked client is the same client
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        path = Path(directory) / "docker"
        if path.is_file() and os.access(path, os.X_OK) and path.resolve() not in seen:
            seen.add(path.resolve())
            found.append(str(path))
    return found


def find_builder(configured: str | None = None) -> Builder:
    """The first docker CLI that can build with BuildKit: buildx, else a client older than 23.

    ``configured`` (``[image] docker`` or ``MLENV_DOCKER``) replaces the PATH search.
    """
    configured = configured or os.environ.get("MLENV_DOCKER") or None
    if configured and not shutil.which(configured):
        raise ToolMissingError(f"the configured docker CLI {configured!r} does not exist",
                               hint="fix [image] docker in mlenv.toml or MLENV_DOCKER")
    seen = []
    for docker in _candidates(shutil.which(configured) if configured else None):
        buildx = _buildx_version(docker)
        if buildx is not None:
            progress = "rawjson" if buildx >= (0, 12) else "plain"
            return Builder((docker, "buildx", "build", "--load"), {}, progress)
        version = _client_version(docker)
        seen.append(f"{docker} ({'.'.join(map(str, version)) if version else 'unknown version'})")
        # clients from 23 on send `docker build` to buildx; without the plugin they cannot BuildKit
        if version and version < (23,):
            return Builder((docker, "build"), {"DOCKER_BUILDKIT": "1"}, "plain")
    found = f" Found {', '.join(seen)}: no buildx plugin, and too new for built-in BuildKit." if seen else ""
    raise ToolMissingError(
        "no docker CLI that can build with BuildKit." + found,
        hint="install the buildx plugin (apt-get install docker-buildx / docker-buildx-plugin), "
        "or point [image] docker / MLENV_DOCKER at a docker CLI that has it",
    )


def ca_bundle(explicit: str | None = None) -> Path | None:
    """The CA bundle to pass as a build secret: explicit, else the first of SSL_CERT_FILE, ..."""
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise UsageError(f"CA bundle {explicit} does not exist", hint="pass an existing PEM file to --ca-bundle")
        return path.resolve()
    for var in CA_ENV_VARS:
        value = os.environ.get(var)
        if value and Path(value).is_file():
            return Path(value).resolve()
    return None


# --- progress ---------------------------------------------------------------------------------------


@dataclass
class Step:
    key: str
    name: str
    started: float | None = None
    done: bool = False
    cached: bool = False
    error: str | None = None
    seconds: float | None = None
    logs: deque = field(default_factory=lambda: deque(maxlen=40))


@dataclass
class BuildReport:
    steps: dict[str, Step] = field(default_factory=dict)
    output_tail: deque = field(default_factory=lambda: deque(maxlen=60))
    elapsed: float = 0.0

    def step(self, key: str, name: str | None = None) -> Step:
        step = self.steps.get(key)
        if step is None:
            step = self.steps[key] = Step(key, name or key)
        elif name and step.name == step.key:
            step.name = name
        return step

    def ran(self) -> list[str]:
        """Dockerfile instructions that executed (not cached); FROM and BuildKit internals left out."""
        return [s.name for s in self.steps.values() if s.done and not s.cached and _is_instruction(s.name)]

    def cached(self) -> list[str]:
        return [s.name for s in self.steps.values() if s.cached and _is_instruction(s.name)]

    def failed(self) -> Step | None:
        return next((s for s in self.steps.values() if s.error), None)


_INSTRUCTION = re.compile(r"^\[[^\]\s]+ \d+/\d+\] (?!FROM )")


def _is_instruction(name: str) -> bool:
    return bool(_INSTRUCTION.match(name))


_PLAIN_STEP = re.compile(r"^#(\d+) (.*)$")
_PLAIN_DONE = re.compile(r"^DONE (\d+(?:\.\d+)?)s$")
_PLAIN_LOG = re.compile(r"^\d+(?:\.\d+)? (.*)$")


def parse_plain(line: str, report: BuildReport) -> Step | None:
    """Feed one ``--progress=plain`` line; returns the step it concerned."""
    match = _PLAIN_STEP.match(line.rstrip("\n"))
    if not match:
        return None
    key, rest = match.groups()
    step = report.step(key)
    if rest.startswith("[") and step.name == step.key:
        step.name = rest
        step.started = step.started or time.monotonic()
    elif rest == "CACHED":
        step.cached = step.done = True
    elif (done := _PLAIN_DONE.match(rest)) is not None:
        step.done, step.seconds = True, float(done.group(1))
    elif rest.startswith("ERROR"):
        step.error = rest.partition(":")[2].strip() or rest
    elif (log := _PLAIN_LOG.match(rest)) is not None:
        step.logs.append(log.group(1))
    elif step.name == step.key:
        step.name = rest
    return step


def parse_rawjson(line: str, report: BuildReport) -> list[Step]:
    """Feed one ``--progress=rawjson`` line (a BuildKit SolveStatus)."""
    try:
        status = json.loads(line)
    except json.JSONDecodeError:
        return []
    touched = []
    for vertex in status.get("vertexes") or []:
        step = report.step(vertex.get("digest", ""), vertex.get("name"))
        step.cached = step.cached or bool(vertex.get("cached"))
        if vertex.get("started") and step.started is None:
            step.started = time.monotonic()
        if vertex.get("completed"):
            step.done = True
        if vertex.get("error"):
            step.error = vertex["error"]
        touched.append(step)
    for log in status.get("logs") or []:
        step = report.step(log.get("vertex", ""))
        data = log.get("data", "")
        try:
            text = base64.b64decode(data).decode("utf-8", "replace")
        except (ValueError, TypeError):
            text = str(data)
        step.logs.extend(text.splitlines())
        touched.append(step)
    return touched


# --- building ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildRequest:
    context: Path
    dockerfile: Path
    target: str  # the Dockerfile stage
    tags: tuple[str, ...]
    secrets: dict[str, Path] = field(default_factory=dict)
    build_args: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    network: str | None = None
    no_cache: bool = False


def build_command(builder: Builder, request: BuildRequest) -> list[str]:
    argv = [*builder.argv, "--progress", builder.progress, "-f", str(request.dockerfile), "--target", request.target]
    for tag in request.tags:
        argv += ["-t", tag]
    for secret_id, path in sorted(request.secrets.items()):
        argv += ["--secret", f"id={secret_id},src={path}"]
    for key, value in sorted(request.build_args.items()):
        argv += ["--build-arg", f"{key}={value}"]
    for key, value in sorted(request.labels.items()):
        argv += ["--label", f"{key}={value}"]
    if request.network:
        argv += ["--network", request.network]
    if request.no_cache:
        argv.append("--no-cache")
    argv.append(str(request.context))
    return argv


def run_build(
    builder: Builder,
    request: BuildRequest,
    *,
    on_update: Callable[[BuildReport, Step | None], None] | None = None,
) -> BuildReport:
    """Run the build CLI, parsing its progress; a failure is a ``BuildError`` naming the failing step."""
    argv = build_command(builder, request)
    env = {**os.environ, **builder.env}
    report = BuildReport()
    started = time.monotonic()
    try:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
                                   errors="replace", bufsize=1)
    except OSError as exc:
        raise ToolMissingError(f"cannot run {argv[0]}: {exc}", hint="check [image] docker / MLENV_DOCKER") from None
    assert process.stdout is not None
    try:
        for line in process.stdout:
            report.output_tail.append(line.rstrip("\n"))
            if builder.progress == "rawjson":
                steps = parse_rawjson(line, report)
            else:
                step = parse_plain(line, report)
                steps = [step] if step else []
            if on_update:
                for step in steps:
                    on_update(report, step)
                if not steps:  # the line only moved the output tail
                    on_update(report, None)
        code = process.wait()
    except KeyboardInterrupt:
        process.terminate()
        process.wait()
        raise Interrupted("build interrupted") from None
    report.elapsed = time.monotonic() - started
    if code != 0:
        raise _build_failure(report, code)
    return report


def _build_failure(report: BuildReport, code: int) -> BuildError:
    failed = report.failed()
    if failed is not None:
        log = "\n".join(f"    {line}" for line in list(failed.logs)[-15:])
        name = failed.name if len(failed.name) <= 140 else failed.name[:137] + "..."
        message = f"build failed at {name}: {failed.error}"
        if log:
            message += f"\n  last lines of its log:\n{log}"
        if "load metadata for" in failed.name:
            return BuildError(message, hint="the base image is not reachable: point --base-image or [image] base "
                                            "at a mirror or private registry that has it")
        return BuildError(message, hint="fix the step above; "
                                        "`mlenv build --no-cache` rebuilds every layer if a cache is bad")
    tail = "\n".join(f"    {line}" for line in list(report.output_tail)[-15:])
    if "Cannot connect to the Docker daemon" in tail or "connect: no such file" in tail:
        return BuildError(f"the build CLI cannot reach the Docker Engine at DOCKER_HOST={docker_host()}",
                          hint="start dockerd, or set DOCKER_HOST")
    return BuildError(f"the build exited {code}:\n{tail}")
