"""Images built from the lock: build through a BuildKit-capable docker CLI, everything else through the SDK.

The Docker Engine API offers BuildKit only over a session protocol the ``docker`` SDK does not
implement (docker-py #2230), so build secrets and cache mounts need a CLI: ``docker buildx build``
where the plugin exists, else a client with built-in BuildKit (``DOCKER_BUILDKIT=1``).  Engine
reachability, inspection, tagging, registry digests, push and running containers use the SDK.
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

from mlenv.errors import BuildError, MlenvError, ToolMissingError, UsageError

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
CA_SECRET_ID = "cacert"
CA_ENV_VARS = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT")


# --- the engine (docker SDK) ----------------------------------------------------------------------


def docker_host() -> str:
    return os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST


def engine():
    """A connected ``docker.DockerClient``; unreachable engines are one ``ToolMissingError``."""
    try:
        import docker
        from docker.errors import DockerException
    except ImportError:  # pragma: no cover - a dependency of mlenv
        raise ToolMissingError("the docker Python SDK is not installed", hint="pip install docker") from None
    try:
        # a short timeout for the reachability check (a black-holed tcp:// host must not hang),
        # a long one for real work (pushes, big images)
        client = docker.from_env(timeout=10)
        client.ping()
        client.api.timeout = 600
    except (DockerException, OSError) as exc:
        raise ToolMissingError(
            f"cannot reach the Docker Engine at DOCKER_HOST={docker_host()} ({_short(exc)})",
            hint="start dockerd, or set DOCKER_HOST to the socket of a running engine",
        ) from None
    return client


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) < 160 else text[:157] + "..."


def _engine_call(what: str, call: Callable):
    """Run one SDK call; engine errors become MlenvErrors instead of tracebacks."""
    from docker.errors import APIError, DockerException
    from requests.exceptions import ConnectionError as RequestsConnectionError

    try:
        return call()
    except APIError as exc:
        raise MlenvError(f"{what} failed: {exc.explanation or exc}") from None
    except (RequestsConnectionError, DockerException) as exc:
        raise ToolMissingError(
            f"lost the Docker Engine at DOCKER_HOST={docker_host()} during {what} ({_short(exc)})",
            hint="check that dockerd is running",
        ) from None


def local_image(ref: str):
    """The local image for ``ref``, or None."""
    from docker.errors import ImageNotFound

    client = engine()
    try:
        return client.images.get(ref)
    except ImageNotFound:
        return None


def run_python(image_ref: str, code: str) -> str:
    """Run ``python -c code`` in a throwaway container of a local image and return its stdout.

    ``python`` is tried before ``python3``: an image's PATH decides which environment answers, as
    it would for the code the image runs.  Nothing is pulled: a missing image is an ``MlenvError``.
    """
    from docker.errors import APIError, ImageNotFound

    client = engine()
    try:
        client.images.get(image_ref)
    except ImageNotFound:
        raise MlenvError(
            f"no local image {image_ref!r}",
            hint="build it with `mlenv build`, or `docker pull` it first",
        ) from None
    last_error = ""
    for interpreter in ("python", "python3"):
        # create/start/remove by hand: `containers.run` leaves the container behind when start fails
        container = _engine_call("creating a container", lambda: client.containers.create(
            image_ref, [interpreter, "-c", code], entrypoint=[], network_mode="none"))
        try:
            try:
                container.start()
            except APIError as exc:
                last_error = str(exc.explanation or exc)
                if "executable file not found" in last_error or "no such file" in last_error.lower():
                    continue
                raise MlenvError(f"cannot run a container of {image_ref!r}: {last_error}") from None
            status = container.wait().get("StatusCode", 1)
            stdout = container.logs(stdout=True, stderr=False).decode("utf-8", "replace")
            if status != 0:
                stderr = container.logs(stdout=False, stderr=True).decode("utf-8", "replace").strip()
                last_line = stderr.splitlines()[-1] if stderr else ""
                raise MlenvError(f"{interpreter} in image {image_ref!r} exited {status}" + (f": {last_line}" if last_line else ""))
            return stdout
        finally:
            try:
                container.remove(force=True)
            except APIError:
                pass
    raise MlenvError(f"image {image_ref!r} has no python or python3 on its PATH", hint=last_error or None)


# --- registries -----------------------------------------------------------------------------------


def split_ref(ref: str) -> tuple[str, str, str | None]:
    """``(repository, tag, digest)`` of an image reference; the tag defaults to ``latest``."""
    digest = None
    if "@" in ref:
        ref, digest = ref.split("@", 1)
    name, _, tag = ref.rpartition(":")
    if not name or "/" in tag:
        name, tag = ref, "latest" if digest is None else ""
    return name, tag, digest


def registry_host(repository: str) -> str | None:
    """The registry host of a repository name, or None for Docker Hub."""
    first = repository.split("/", 1)[0]
    if "/" in repository and ("." in first or ":" in first or first == "localhost"):
        return first
    return None


def registry_digest(ref: str, *, timeout: int = 20) -> str | None:
    """The registry's manifest digest for ``ref``, or None when no registry answers."""
    import docker

    engine()  # an unreachable engine is an error worth reporting, an unreachable registry is not
    try:
        client = docker.from_env(timeout=timeout)
        data = client.images.get_registry_data(ref, auth_config=_auth_for(ref))
    except Exception:  # noqa: BLE001 - any failure means "not resolvable now"; callers fall back
        return None
    return data.id


def digest_resolver() -> Callable[[str], str | None]:
    """``registry_digest`` that degrades to None (with one note) when no engine is reachable."""
    from mlenv import console

    state = {"engine": None}

    def resolve(ref: str) -> str | None:
        if state["engine"] is None:
            try:
                engine()
                state["engine"] = True
            except ToolMissingError:
                state["engine"] = False
                console.status(f"no Docker Engine at DOCKER_HOST={docker_host()}: base images stay unpinned")
        return registry_digest(ref) if state["engine"] else None

    return resolve


_ECR = re.compile(r"^(\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com(\.cn)?$")


def is_ecr(host: str | None) -> bool:
    return bool(host and _ECR.match(host))


_auth_cache: dict[str, dict] = {}


def _auth_for(ref: str) -> dict | None:
    host = registry_host(split_ref(ref)[0])
    if not is_ecr(host):
        return None
    if host not in _auth_cache:
        _auth_cache[host] = ecr_login(host)
    return _auth_cache[host]


def ecr_login(host: str) -> dict:
    """Docker credentials for an ECR registry from boto3's ``get_authorization_token``."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    match = _ECR.match(host)
    region = match.group(2) if match else None
    try:
        # boto3 itself honours AWS_ENDPOINT_URL_ECR (moto, VPC endpoints)
        client = boto3.client("ecr", region_name=region)
        response = client.get_authorization_token(registryIds=[match.group(1)] if match else [])
    except (BotoCoreError, ClientError) as exc:
        raise MlenvError(
            f"cannot log in to ECR registry {host}: {_short(exc)}",
            hint="configure AWS credentials (aws configure / AWS_PROFILE) with ecr:GetAuthorizationToken",
        ) from None
    token = response["authorizationData"][0]["authorizationToken"]
    username, password = base64.b64decode(token).decode().split(":", 1)
    return {"username": username, "password": password, "serveraddress": f"https://{host}"}


def remote_exists(ref: str) -> bool:
    return registry_digest(ref) is not None


def push(ref: str) -> str:
    """Push a local tag; returns the digest the registry reports."""
    client = engine()
    repository, tag, _ = split_ref(ref)
    stream = _engine_call(
        f"push of {ref}",
        lambda: client.images.push(repository, tag=tag, stream=True, decode=True, auth_config=_auth_for(ref)),
    )
    digest = None
    for event in stream:
        if "error" in event:
            raise MlenvError(f"push of {ref} failed: {event['error']}",
                             hint="check the registry address and your login (docker login / AWS credentials)")
        aux = event.get("aux") or {}
        digest = aux.get("Digest", digest)
    if not digest:
        raise MlenvError(f"push of {ref} reported no digest")
    return digest


# --- the build CLI ----------------------------------------------------------------------------------


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
    found = []
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        path = Path(directory) / "docker"
        if path.is_file() and os.access(path, os.X_OK) and str(path.resolve()) not in {str(Path(f).resolve()) for f in found}:
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
                for step in steps or [None]:
                    on_update(report, step)
        code = process.wait()
    except KeyboardInterrupt:
        process.terminate()
        process.wait()
        from mlenv.errors import Interrupted

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
        return BuildError(message, hint="fix the step above; `mlenv build --no-cache` rebuilds every layer if a cache is bad")
    tail = "\n".join(f"    {line}" for line in list(report.output_tail)[-15:])
    if "Cannot connect to the Docker daemon" in tail or "connect: no such file" in tail:
        return BuildError(f"the build CLI cannot reach the Docker Engine at DOCKER_HOST={docker_host()}",
                          hint="start dockerd, or set DOCKER_HOST")
    return BuildError(f"the build exited {code}:\n{tail}")


# --- mlenv build -----------------------------------------------------------------------------------


def source_hash(context: Path, dockerfile: Path) -> str:
    """sha256 over the files the build context sends (``.dockerignore`` applied), names and bytes."""
    import hashlib

    from docker.utils.build import exclude_paths

    ignore = context / ".dockerignore"
    patterns = []
    if ignore.is_file():
        patterns = [line.strip() for line in ignore.read_text().splitlines() if line.strip() and not line.startswith("#")]
    digest = hashlib.sha256()
    for relative in sorted(exclude_paths(str(context), patterns, dockerfile=str(dockerfile.relative_to(context)))):
        path = context / relative
        if path.is_file() and not path.is_symlink():
            digest.update(relative.encode() + b"\0")
            with open(path, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
            digest.update(b"\0")
    return digest.hexdigest()


@dataclass
class BuildOutcome:
    tag: str
    moving_tag: str
    stage: str
    skipped: str | None = None  # why no build ran ("exists locally", "exists in the registry")
    report: BuildReport | None = None
    image_id: str | None = None
    pushed_digest: str | None = None
    dockerfile_updated: bool = False


def build_target(
    spec,
    lock,
    target_name: str,
    *,
    stage: str = "runtime",
    push_image: bool = False,
    force: bool = False,
    allow_stale: bool = False,
    base_image: str | None = None,
    ca_bundle_path: str | None = None,
    network: str | None = None,
    build_args: dict[str, str] | None = None,
    no_cache: bool = False,
    on_update: Callable[[BuildReport, Step | None], None] | None = None,
) -> BuildOutcome:
    """Build one target's image from the lock, tagged by content; skip it when that tag exists."""
    from mlenv import render
    from mlenv.errors import LockError
    from mlenv.fsutil import atomic_write
    from mlenv.lock import check_lock

    if stage not in ("runtime", "dev"):
        raise UsageError(f"unknown stage {stage!r}", hint="one of: runtime, dev")
    spec.target(target_name)
    lock.target(target_name)
    stale = [c for c in check_lock(spec, lock) if c.target in (target_name, "*")]
    if stale and not allow_stale:
        raise LockError(
            f"mlenv.lock is stale for {target_name}: {stale[0].detail}"
            + (f" (and {len(stale) - 1} more)" if len(stale) > 1 else ""),
            hint="run `mlenv lock` (or build anyway with --allow-stale)",
        )
    engine()  # unreachable engine: one clear error before anything is written
    builder = find_builder(spec.image.get("docker"))
    settings_ca = ca_bundle_path or spec.image.get("ca-bundle")
    bundle = ca_bundle(settings_ca)

    plan = render.plan_image(spec, lock, target_name, base_image=base_image, resolve_digest=registry_digest)
    render.record_base_image(spec, lock, plan)
    root = spec.root
    dockerfile = root / render.dockerfile_name(spec, lock, target_name)
    text = render.render_dockerfile(plan)
    updated = not dockerfile.is_file() or dockerfile.read_text(encoding="utf-8") != text
    if updated and not render.is_generated(dockerfile):
        raise UsageError(f"{dockerfile.name} was not written by mlenv; `mlenv build` builds the generated one",
                         hint="move it aside, or run `mlenv gen dockerfile --force` to replace it")
    if updated:
        # the Dockerfile follows the lock; an outdated one would build something else than the tag says
        atomic_write(dockerfile, text)
    if not (root / ".dockerignore").exists():
        atomic_write(root / ".dockerignore", render.render_dockerignore(spec))

    material = [text, json.dumps(sorted((build_args or {}).items()))]
    if stage == "runtime":
        material.append(source_hash(root, dockerfile))
    content_tag, moving_tag = plan.tags(stage, *material)
    outcome = BuildOutcome(content_tag, moving_tag, stage, dockerfile_updated=updated)
    if not force and not no_cache:
        existing = local_image(content_tag)
        if existing is not None:
            existing.tag(*split_ref(moving_tag)[:2])
            outcome.skipped, outcome.image_id = "exists locally", existing.id
        elif plan.registry and remote_exists(content_tag):
            outcome.skipped = "exists in the registry"
    if outcome.skipped is None:
        request = BuildRequest(
            context=root,
            dockerfile=dockerfile,
            target=stage,
            tags=(content_tag, moving_tag),
            secrets={CA_SECRET_ID: bundle} if bundle else {},
            build_args=dict(build_args or {}),
            network=network,
            no_cache=no_cache,
        )
        outcome.report = run_build(builder, request, on_update=on_update)
        image = local_image(content_tag)
        if image is None:
            raise BuildError(f"the build finished but {content_tag} is not in the engine",
                             hint="is the docker CLI talking to the same engine as DOCKER_HOST?")
        outcome.image_id = image.id
    if push_image:
        if not plan.registry and registry_host(split_ref(content_tag)[0]) is None:
            raise UsageError("nothing to push to: the image name has no registry",
                             hint="set [image] registry in mlenv.toml (e.g. 123456789012.dkr.ecr.eu-west-1.amazonaws.com)")
        if outcome.skipped != "exists in the registry":
            outcome.pushed_digest = push(content_tag)
            push(moving_tag)
    return outcome
