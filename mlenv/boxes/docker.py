"""The docker provider: a dev box is a container of the target's ``dev`` image on the Docker Engine
(local, or ``DOCKER_HOST``), no cloud account needed.

The container runs sshd (published on 127.0.0.1 only, at a free port) and the idle watchdog as its
main process: when the watchdog decides to stop, it exits, the container stops, and with no restart
policy it stays stopped until ``mlenv start`` / ``mlenv up``.  The workspace is a named volume, so
it survives stop/start.  Container and volume labels are the source of truth (``mlenv.box``,
``mlenv.owner``, ``mlenv.project``, ``mlenv.lock``): nothing about a box is stored on this machine.
"""

from __future__ import annotations

import builtins
import functools
import io
import json
import re
import socket
import tarfile
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from mlenv import validate
from mlenv.boxes.model import (
    ACTIVITY_DIR,
    BOX_DIR,
    KEEPALIVE_DIR,
    LABEL_BOX,
    LABEL_LOCK,
    LABEL_OWNER,
    LABEL_PROJECT,
    LABEL_TARGET,
    SSHRC,
    WATCHDOG_LOG,
    WATCHDOG_PATH,
    WATCHDOG_STATE,
    Box,
    Orphan,
    Progress,
    UpRequest,
    current_owner,
    format_duration,
    validate_box_name,
)
from mlenv.errors import MlenvError, ToolMissingError, UsageError

if TYPE_CHECKING:
    from mlenv.execute import Executor
    from mlenv.spec import Spec

NAME_PREFIX = "mlenv-box-"  # container "mlenv-box-NAME", workspace volume "mlenv-box-NAME-work"
LABEL_CREATED = "mlenv.created"
LABEL_USER = "mlenv.ssh-user"
LABEL_SETTINGS = "mlenv.watchdog"
# the provider that made a box (the ssh provider runs these containers on a remote engine too)
LABEL_PROVIDER = "mlenv.provider"
SSHD_CONFIG = f"{BOX_DIR}/sshd_config"
# the login user's own file, so `mlenv keys rotate/revoke` can edit it over SSH
AUTHORIZED_KEYS = ".ssh/authorized_keys"
BOOT = f"{BOX_DIR}/boot.sh"
HOST_KEY = "/etc/ssh/ssh_host_ed25519_key.pub"
SSH_READY_TIMEOUT = 60.0
MAX_POLL_S = 30
# engine states -> Box states
STATES = {"created": "pending", "restarting": "pending", "running": "running", "paused": "stopped",
          "exited": "stopped", "dead": "stopped", "removing": "terminated"}
_SKIPPED_ENV = {"HOME", "HOSTNAME", "USER", "TERM"}


@functools.cache
def _client():
    """One engine connection per process (each connect pings the engine)."""
    from mlenv.image.engine import connect

    return connect()


def _engine_call(what: str, call):
    from mlenv.image.engine import engine_call

    return engine_call(what, call)


def container_name(name: str) -> str:
    return f"{NAME_PREFIX}{name}"


def volume_name(name: str) -> str:
    return f"{NAME_PREFIX}{name}-work"


def watchdog_timings(idle_s: int) -> tuple[int, int]:
    """(poll, weak-min-age) for an idle setting: 30 s / 60 s normally, scaled down for short settings
    so a 20 s idle still stops within one poll."""
    poll = max(1, min(MAX_POLL_S, idle_s // 10))
    weak_min_age = max(2, min(60, idle_s // 2))
    return poll, weak_min_age


def _epoch(text: str | None) -> float | None:
    """Seconds since the epoch of an engine timestamp ("2026-11-22T23:01:02.123456789Z")."""
    if not text or text.startswith("0001-"):
        return None
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)?$", text)
    if not match:
        return None
    stamp = datetime.fromisoformat(match.group(1) + (match.group(3) or "Z").replace("Z", "+00:00"))
    return stamp.timestamp() + float(match.group(2) or 0)


def _tar(files: dict[str, tuple[bytes, int]], directories: dict[str, int]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        now = time.time()
        for path, mode in directories.items():
            info = tarfile.TarInfo(path.lstrip("/"))
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, now
            archive.addfile(info)
        for path, (data, mode) in files.items():
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode, info.mtime = len(data), mode, now
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _read_file(container, path: str) -> bytes | None:
    """A file from a container, running or stopped (the engine's archive API), or None."""
    from docker.errors import APIError, NotFound

    try:
        stream, _ = container.get_archive(path)
        raw = b"".join(stream)
    except (NotFound, APIError):
        return None
    with tarfile.open(fileobj=io.BytesIO(raw)) as archive:
        member = archive.next()
        handle = archive.extractfile(member) if member is not None and member.isfile() else None
        return handle.read() if handle else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ssh_banner(port: int, timeout: float = 1.0) -> bool:
    """True once an SSH server answers on 127.0.0.1:port (its identification line)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def authorized_keys_text(lines: list[str]) -> bytes:
    """authorized_keys content: one validated public key per line, nothing else."""
    keys = []
    for line in lines:
        parts = line.strip().split()
        if (len(parts) < 2 or "\n" in line.strip() or not re.fullmatch(r"[a-z0-9@.-]+", parts[0])
                or not re.fullmatch(r"[A-Za-z0-9+/]+={0,2}", parts[1])):
            raise UsageError(f"not an SSH public key line: {line.strip()[:60]!r}")
        comment = parts[2] if len(parts) > 2 and re.fullmatch(r"[A-Za-z0-9@:._-]+", parts[2]) else ""
        keys.append(" ".join(filter(None, (parts[0], parts[1], comment))))
    if not keys:
        raise UsageError("no SSH public key to put on the box")
    return ("\n".join(keys) + "\n").encode()


def session_environment(image_env: list[str]) -> list[tuple[str, str]]:
    """The image's ENV (PATH with the venv first, VIRTUAL_ENV, LANG ...) for SSH sessions, which
    sshd would otherwise start with a bare PATH.  Values that sshd_config cannot hold are left out."""
    pairs = []
    for item in image_env:
        name, sep, value = item.partition("=")
        if not sep or name in _SKIPPED_ENV or not validate.ENV_NAME.fullmatch(name):
            continue
        if not value.isprintable() or '"' in value or "\\" in value:
            continue
        pairs.append((name, f'"{value}"'))
    return pairs


class DockerProvider:
    name = "docker"

    def __init__(self, spec: Spec | None = None) -> None:
        self.spec = spec
        self.owner = current_owner()

    # --- where: the engine, a free port, SSH answering (the ssh provider reaches them through a host) ---

    def _engine(self):
        return _client()

    def _free_port(self) -> int:
        return _free_port()

    def _ssh_banner(self, port: int) -> bool:
        return _ssh_banner(port)

    # --- reading boxes from labels ----------------------------------------------------------------

    def _containers(self, name: str | None = None) -> list:
        client = self._engine()
        labels = [f"{LABEL_OWNER}={self.owner}", f"{LABEL_BOX}={name}" if name else LABEL_BOX]
        found = _engine_call("listing boxes", lambda: client.containers.list(all=True, filters={"label": labels}))
        return [c for c in found if (c.labels or {}).get(LABEL_PROVIDER, "docker") == self.name]

    def _container(self, name: str):
        validate_box_name(name)
        found = [c for c in self._containers(name) if c.name == container_name(name)]
        return found[0] if found else None

    def _box(self, container, *, details: bool = False) -> Box:
        attrs = container.attrs
        labels = attrs.get("Config", {}).get("Labels") or {}
        state = attrs.get("State", {})
        status = state.get("Status", "created")
        bindings = (attrs.get("HostConfig", {}).get("PortBindings") or {}).get("22/tcp") or [{}]
        port = bindings[0].get("HostPort")
        box = Box(
            name=labels.get(LABEL_BOX, ""),
            provider=self.name,
            state=STATES.get(status, "pending"),
            target=labels.get(LABEL_TARGET),
            lock_hash=labels.get(LABEL_LOCK),
            created=(float(labels[LABEL_CREATED]) if labels.get(LABEL_CREATED, "").isdigit()
                     else _epoch(attrs.get("Created"))),
            instance_type="container",
            region="local",
            price_per_hour=0.0,
            ssh_host="127.0.0.1",
            ssh_port=int(port) if port and str(port).isdigit() else None,
            ssh_user=labels.get(LABEL_USER),
            project=labels.get(LABEL_PROJECT),
            owner=labels.get(LABEL_OWNER),
            started=_epoch(state.get("StartedAt")) if status == "running" else None,
            extra={"container": container.name, "volume": volume_name(labels.get(LABEL_BOX, "")),
                   "authorized_keys": f"~/{AUTHORIZED_KEYS}",
                   "image": attrs.get("Config", {}).get("Image"), "watchdog": labels.get(LABEL_SETTINGS, "")},
        )
        if box.ssh_user:
            box.extra["workdir"] = f"/home/{box.ssh_user}/work"  # the workspace volume: where IDEs open
        if status in ("exited", "dead"):
            box.extra["exit_code"] = state.get("ExitCode")
            box.extra["stopped_at"] = _epoch(state.get("FinishedAt"))
        if box.state == "running":
            raw = _read_file(container, WATCHDOG_STATE)
            try:
                report: dict[str, Any] = json.loads(raw) if raw else {}
            except ValueError:
                report = {}
            if report:
                # the numbers are as of the watchdog's last poll: age them to now
                since = max(0.0, time.time() - float(report.get("updated", time.time())))
                box.idle_for_s = float(report.get("idle_for_s", 0)) + since
                box.stop_due_s = max(0.0, float(report.get("stop_due_s", 0)) - since)
                box.extra["stop_reason"] = report.get("reason")
        if details:
            key = _read_file(container, HOST_KEY)
            if key:
                box.host_keys = [" ".join(key.decode("ascii", "replace").split()[:2])]
        return box

    def list(self) -> list[Box]:
        boxes = []
        for container in self._containers():
            name = (container.attrs.get("Config", {}).get("Labels") or {}).get(LABEL_BOX, "")
            if validate.box_name(name) is None and container.name == container_name(name):
                boxes.append(self._box(container))
        return sorted(boxes, key=lambda b: b.name)

    def get(self, name: str) -> Box | None:
        container = self._container(name)
        return self._box(container, details=True) if container is not None else None

    # --- up ------------------------------------------------------------------------------------------

    def _project(self):
        if self.spec is None:
            raise UsageError("creating a box needs a project", hint="run `mlenv up` in a folder with mlenv.toml")
        from mlenv.lock import read_lock

        return self.spec, read_lock(self.spec.root)

    def _target(self, req: UpRequest, spec, lock) -> str:
        from mlenv.image.plan import image_targets

        requested = req.target or spec.devbox.target
        names = image_targets(spec, lock, requested)
        if len(names) > 1:
            raise UsageError("the spec has several linux targets", hint=f"pick one with --target ({', '.join(names)})")
        return names[0]

    def plan(self, req: UpRequest) -> builtins.list[str]:
        spec, lock = self._project()
        target = self._target(req, spec, lock)
        existing = self._container(req.name)
        poll, weak = watchdog_timings(req.idle_s)
        lines = [
            f"box {req.name}: docker container {container_name(req.name)} on the engine at "
            f"{_docker_host()}" + (f" (exists: {existing.status})" if existing is not None else ""),
            f"image: the {target} dev image of {spec.name} (built when its content tag is missing)",
            f"workspace: volume {volume_name(req.name)} at /home/{self._user(spec)}/work",
            "ssh: 127.0.0.1 only, a free port, key-only login for this machine's key",
            f"auto-stop: idle {format_duration(req.idle_s)}, with a connection open "
            f"{format_duration(req.idle_connected_s)}, max lifetime {format_duration(req.max_lifetime_s)} "
            f"(checked every {poll}s)",
            "cost: $0.00/hour (local engine)",
        ]
        return lines

    @staticmethod
    def _user(spec) -> str:
        from mlenv.image.plan import DEFAULT_USER

        user = spec.image.user or DEFAULT_USER
        problem = validate.posix_user(user)
        if problem:
            raise UsageError(f"[image] user: {problem}")
        return user

    def _image(self, spec, lock, target: str, progress: Progress, build: dict) -> str:
        from mlenv.image.build import build_target

        def on_update(report, step) -> None:
            if step is not None and step.done and step.name.startswith("[") and step.key not in seen:
                seen.add(step.key)
                how = "cached" if step.cached else (f"{step.seconds:.1f}s" if step.seconds is not None else "done")
                progress(f"  {how:>7}  {step.name[:100]}")

        seen: set[str] = set()
        outcome = build_target(spec, lock, target, stage="dev", on_update=on_update, **build)
        if outcome.skip_reason is None:
            progress(f"built {outcome.tag}")
        return outcome.tag

    def up(self, req: UpRequest, progress: Progress) -> Box:
        spec, lock = self._project()
        existing = self._container(req.name)
        if existing is not None:
            project = (existing.labels or {}).get(LABEL_PROJECT)
            if project != spec.name:
                raise UsageError(f"box {req.name} belongs to project {project!r}, not {spec.name!r}",
                                 hint="pick another name, or `mlenv down` that box first")
            self._note_lock_drift(existing, spec, lock, progress, req.build_options.get("base_image"))
            if existing.status == "running":
                progress(f"box {req.name} is already running")
                return self._box(existing, details=True)
            return self._start(existing, progress)
        target = self._target(req, spec, lock)
        user = self._user(spec)
        progress(f"dev image for target {target}")
        image_tag = self._image(spec, lock, target, progress, req.build_options)
        return self._create(req, spec, target, user, image_tag, progress)

    @staticmethod
    def _note_lock_drift(container, spec, lock, progress: Progress, base_image: str | None) -> None:
        """An existing box keeps the image it was made from: say so when the lock has moved on."""
        from mlenv.image.plan import plan_image

        labels = container.labels or {}
        target = labels.get(LABEL_TARGET)
        if not target or target not in lock.targets:
            return
        current = plan_image(spec, lock, target, base_image=base_image).lock_hash
        if labels.get(LABEL_LOCK) and labels[LABEL_LOCK] != current:
            name = labels.get(LABEL_BOX, container.name)
            progress(f"note: box {name} runs lock {labels[LABEL_LOCK]}, the project's lock is now {current}; "
                     f"`mlenv doctor --box {name}` shows the drift, `mlenv down {name} && mlenv up {name}` "
                     "recreates it (down deletes its workspace volume)")

    def _create(self, req: UpRequest, spec, target: str, user: str, image_tag: str, progress: Progress) -> Box:
        from docker.errors import APIError

        from mlenv.render import JUPYTER_PORT, render_template, templates_dir

        client = self._engine()
        image = _engine_call("reading the dev image", lambda: client.images.get(image_tag))
        lock_hash = (image.labels or {}).get("io.mlenv.lock-hash", "")
        poll, weak_min_age = watchdog_timings(req.idle_s)
        labels = {
            LABEL_BOX: req.name, LABEL_OWNER: self.owner, LABEL_PROJECT: spec.name, LABEL_LOCK: lock_hash,
            LABEL_PROVIDER: self.name,
            LABEL_TARGET: target, LABEL_CREATED: str(int(time.time())), LABEL_USER: user,
            LABEL_SETTINGS: f"idle={req.idle_s} idle-connected={req.idle_connected_s} "
                            f"max-lifetime={req.max_lifetime_s} poll={poll}",
        }
        workspace = f"/home/{user}/work"
        watchdog_args = req.watchdog_args(action="exit", poll_s=poll) + [
            "--ports", f"22,{JUPYTER_PORT}", "--weak-min-age", str(weak_min_age)]
        boot = render_template(
            "box-boot.sh.j2", user=validate.shell_word(user), workspace=validate.shell_word(workspace),
            ssh_dir=validate.shell_word(f"/home/{user}/.ssh"),
            sshd_config=validate.shell_word(SSHD_CONFIG), python="python3",
            watchdog=validate.shell_word(WATCHDOG_PATH),
            watchdog_args=" ".join(validate.shell_word(arg) for arg in watchdog_args))
        sshd_config = render_template(
            "box-sshd_config.j2", box=req.name, user=user, authorized_keys=AUTHORIZED_KEYS,
            environment=session_environment(image.attrs.get("Config", {}).get("Env") or []))
        payload = _tar(
            {BOOT: (boot.encode(), 0o755), SSHD_CONFIG: (sshd_config.encode(), 0o644),
             f"/home/{user}/{AUTHORIZED_KEYS}": (authorized_keys_text(req.authorized_keys), 0o600),
             WATCHDOG_PATH: ((templates_dir() / "watchdog.py").read_bytes(), 0o644),
             "/etc/ssh/sshrc": (SSHRC.encode(), 0o644)},
            {BOX_DIR: 0o755, ACTIVITY_DIR: 0o1777, KEEPALIVE_DIR: 0o1777},
        )
        made: list = []
        try:
            progress(f"creating container {container_name(req.name)}")
            volume = _engine_call("creating the workspace volume", lambda: client.volumes.create(
                volume_name(req.name), labels={LABEL_BOX: req.name, LABEL_OWNER: self.owner, LABEL_PROJECT: spec.name,
                                             LABEL_PROVIDER: self.name}))
            made.append(volume)
            container = None
            for _attempt in range(3):  # the free port can be taken between choosing and binding it
                port = self._free_port()
                try:
                    container = client.containers.create(
                        image_tag, command=[BOOT], entrypoint=["/bin/sh"], user="0", name=container_name(req.name),
                        hostname=req.name, labels=labels, ports={"22/tcp": ("127.0.0.1", port)},
                        volumes={volume.name: {"bind": workspace, "mode": "rw"}}, working_dir=workspace,
                        stop_signal="SIGTERM", detach=True,
                    )
                except APIError as exc:
                    if exc.status_code == 409:  # another `up` of the same box won the race
                        raise UsageError(f"box {req.name} is being created by another mlenv",
                                         hint="wait for it, then run `mlenv up` again") from None
                    raise MlenvError(f"creating box {req.name} failed: {exc.explanation or exc}") from None
                made.append(container)
                _engine_call("copying the box's boot files", lambda c=container: c.put_archive("/", payload))
                progress("starting the box")
                try:
                    container.start()
                    break
                except APIError as exc:
                    if "port is already allocated" not in str(exc) and "address already in use" not in str(exc):
                        raise MlenvError(f"starting box {req.name} failed: {exc.explanation or exc}") from None
                    container.remove(force=True)
                    made.pop()
            else:
                raise MlenvError(f"could not find a free port for box {req.name}")
            self._wait_for_ssh(container, port, progress)
            container.reload()
        except BaseException:
            # Ctrl-C or a failure: remove what this call made; anything left (a second Ctrl-C) is
            # labelled, so `mlenv ls` / `mlenv gc` show and remove it
            for resource in reversed(made):
                try:
                    resource.remove(force=True)
                except Exception:  # noqa: BLE001 - best effort, gc covers the rest
                    pass
            raise
        return self._box(container, details=True)

    def _wait_for_ssh(self, container, port: int, progress: Progress) -> None:
        deadline = time.monotonic() + SSH_READY_TIMEOUT
        delay = 0.02
        while time.monotonic() < deadline:
            if self._ssh_banner(port):
                progress(f"SSH ready on 127.0.0.1:{port}")
                return
            container.reload()
            if container.status not in ("created", "running"):
                logs = container.logs(tail=15).decode("utf-8", "replace").strip()
                raise MlenvError(f"box {container.name} exited while starting (status {container.status})"
                                 + (":\n    " + "\n    ".join(logs.splitlines()) if logs else ""),
                                 hint="the dev image needs openssh-server and python3 "
                                      "(mlenv's generated Dockerfile has both)")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)
        raise ToolMissingError(f"SSH on box {container.name} did not answer within {SSH_READY_TIMEOUT:.0f}s",
                               hint=f"look at `docker logs {container.name}`")

    # --- lifecycle -----------------------------------------------------------------------------------

    def _require(self, name: str):
        container = self._container(name)
        if container is None:
            raise UsageError(f"no docker box named {name!r}", hint="see `mlenv ls`")
        return container

    def stop(self, name: str) -> None:
        container = self._require(name)
        _engine_call(f"stopping box {name}", lambda: container.stop(timeout=20))

    def start(self, name: str, progress: Progress) -> Box:
        return self._start(self._require(name), progress)

    def _start(self, container, progress: Progress) -> Box:
        name = (container.labels or {}).get(LABEL_BOX, container.name)
        if container.status != "running":
            progress(f"starting box {name}")
            _engine_call(f"starting box {name}", container.start)
        box = self._box(container)
        if box.ssh_port:
            self._wait_for_ssh(container, box.ssh_port, progress)
        container.reload()
        return self._box(container, details=True)

    def down(self, name: str) -> None:
        from docker.errors import NotFound

        container = self._container(name)
        if container is not None:
            _engine_call(f"removing box {name}", lambda: container.remove(force=True))
        client = self._engine()
        try:
            volume = client.volumes.get(volume_name(name))
        except NotFound:
            return
        if (volume.attrs.get("Labels") or {}).get(LABEL_OWNER) == self.owner:
            _engine_call(f"removing the workspace of box {name}", lambda: volume.remove(force=True))

    def orphans(self) -> builtins.list[Orphan]:
        """Labelled volumes whose box has no container (a box interrupted mid-`up`, a container
        removed by hand) and containers that never started."""
        client = self._engine()
        boxes = {c.labels.get(LABEL_BOX) for c in self._containers()}
        found = []
        volumes = _engine_call("listing volumes", lambda: client.volumes.list(
            filters={"label": [f"{LABEL_OWNER}={self.owner}", LABEL_BOX]}))
        for volume in volumes:
            box = (volume.attrs.get("Labels") or {}).get(LABEL_BOX)
            if (volume.attrs.get("Labels") or {}).get(LABEL_PROVIDER, "docker") != self.name:
                continue
            if box not in boxes:
                found.append(Orphan(self.name, "volume", volume.name, box,
                                    "workspace volume of a box that is gone", 0.0))
        for container in self._containers():
            if container.status == "created" and time.time() - (_epoch(container.attrs.get("Created")) or 0) > 120:
                found.append(Orphan(self.name, "container", container.name, container.labels.get(LABEL_BOX),
                                    "created but never started", 0.0))
        return found

    def delete_orphans(self, orphans: builtins.list[Orphan]) -> None:
        from docker.errors import NotFound

        client = self._engine()
        for orphan in orphans:
            try:
                if orphan.kind == "volume":
                    resource = client.volumes.get(orphan.id)
                elif orphan.kind == "container":
                    resource = client.containers.get(orphan.id)
                else:
                    continue
            except NotFound:
                continue
            labels = resource.attrs.get("Labels") or resource.attrs.get("Config", {}).get("Labels") or {}
            if labels.get(LABEL_OWNER) != self.owner:
                continue  # only ever delete what carries our labels
            _engine_call(f"removing {orphan.kind} {orphan.id}", lambda r=resource: r.remove(force=True))

    # --- running things on the box -------------------------------------------------------------------

    def executor(self, box: Box) -> Executor:
        from mlenv.execute import ContainerExecutor

        if box.state != "running":
            raise UsageError(f"box {box.name} is {box.state}", hint=f"start it with `mlenv start {box.name}`")
        return ContainerExecutor(container_name(box.name), user=box.ssh_user,
                                 workdir=f"/home/{box.ssh_user}/work" if box.ssh_user else None,
                                 where=f"box {box.name}")

    def watchdog_log(self, name: str) -> str:
        """The watchdog's decisions (JSON lines), also from a stopped box."""
        raw = _read_file(self._require(name), WATCHDOG_LOG)
        return raw.decode("utf-8", "replace") if raw else ""


def _docker_host() -> str:
    from mlenv.image.engine import docker_host

    return docker_host()
