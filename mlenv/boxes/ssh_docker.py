"""The ssh provider's docker mode: on a machine whose docker answers for the login user, the box is a
container of the locked dev image there, set up exactly as the docker provider sets one up locally
(sshd and the watchdog as PID 1, a named workspace volume, SSH published on the machine's 127.0.0.1
only).  Three things differ, and they are all this module does:

- the engine is the machine's: its API is reached through ``docker system dial-stdio`` run over
  mlenv's own SSH session (host key pinned), relayed to a private local socket for the docker SDK;
- the image gets there by a pull from ``[image] registry`` by digest, else streamed from this
  machine's engine (``docker save`` into the machine's ``docker load``) when the machine lacks it;
- the container's sshd is reached through the machine as a jump host (``ProxyJump`` in the ssh
  config, a ``direct-tcpip`` channel for mlenv's own sessions), each hop with its own pinned key.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import tempfile
import threading
from typing import TYPE_CHECKING, Any

from mlenv.boxes.docker import DockerProvider
from mlenv.boxes.model import Box, Progress
from mlenv.errors import ToolMissingError, UsageError

if TYPE_CHECKING:
    import docker

    from mlenv.connect.session import Session
    from mlenv.execute import Executor
    from mlenv.spec import Spec

# runs on the machine: a free port on its loopback for the box's sshd (as the docker provider picks one
# here); the engine publishes it on 127.0.0.1 only
_FREE_PORT = 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'


class RemoteEngine:
    """The machine's Docker Engine for the docker SDK: a unix socket in a private folder here whose
    every connection is one ``docker system dial-stdio`` on the machine, over the pinned session.
    Only this user can reach the socket (the folder is 0700); it goes away with the process."""

    def __init__(self, session: Session) -> None:
        from mlenv.connect.session import pump

        self.session = session
        self._pump = pump
        self._folder = tempfile.mkdtemp(prefix="mlenv-engine-")
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(os.path.join(self._folder, "docker.sock"))
        self._listener.listen(16)
        self._thread = threading.Thread(target=self._accept, name="remote-engine", daemon=True)
        self._thread.start()
        atexit.register(self.close)
        self._client: docker.DockerClient | None = None

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                channel = self.session.transport.open_session(timeout=30)
                channel.exec_command("docker system dial-stdio")
            except Exception:  # noqa: BLE001 - the machine refused this one: the SDK sees a closed connection
                client.close()
                continue
            threading.Thread(target=self._pump, args=(client, channel), daemon=True).start()

    @property
    def client(self) -> docker.DockerClient:
        import docker
        from docker.errors import DockerException

        if self._client is None:
            try:
                self._client = docker.DockerClient(base_url=f"unix://{self._folder}/docker.sock", timeout=600)
            except (DockerException, OSError) as exc:
                raise ToolMissingError(f"cannot reach the Docker Engine on {self.session.endpoint.address} "
                                       f"through `docker system dial-stdio`: {exc}") from None
        return self._client

    def close(self) -> None:
        self._listener.close()
        shutil.rmtree(self._folder, ignore_errors=True)


class RemoteDockerBoxes(DockerProvider):
    """The docker provider's boxes, on the engine of the ssh provider's machine."""

    name = "ssh"

    def __init__(self, spec: Spec | None, *, host: Executor, host_box: Box, jump: dict[str, Any]) -> None:
        super().__init__(spec)
        self.host = host  # commands on the machine itself
        self.host_box = host_box  # the machine as a Box (address, trusted host keys) for SSH sessions
        self.jump = jump  # host, port, user and host_keys of the machine: how the container's sshd is reached
        self._session: Session | None = None
        self._remote: RemoteEngine | None = None

    @property
    def session(self) -> Session:
        """mlenv's own session to the machine, for the engine relay and channels to the box's sshd."""
        if self._session is None:
            from mlenv import connect

            self._session = connect.open_session(self.host_box)
        return self._session

    def _engine(self) -> docker.DockerClient:
        if self._remote is None:
            self._remote = RemoteEngine(self.session)
        return self._remote.client

    def _free_port(self) -> int:
        from mlenv.execute import run_python

        text = run_python(self.host, _FREE_PORT, python="python3").strip()
        if not text.isdigit():
            raise ToolMissingError(f"could not pick a free port on {self.jump['host']} ({text[:60]!r})")
        return int(text)

    def _ssh_banner(self, port: int) -> bool:
        """True once the container's sshd answers on the machine's 127.0.0.1:port (through the jump)."""
        try:
            channel = self.session.open_channel("127.0.0.1", port, timeout=5)
        except ToolMissingError:
            return False
        try:
            channel.settimeout(2.0)
            return bool(channel.recv(64).startswith(b"SSH-"))
        except OSError:
            return False
        finally:
            channel.close()

    def _image(self, spec: Any, lock: Any, target: str, progress: Progress, build: dict[str, Any]) -> str:
        """The dev image on the machine: pulled by digest from [image] registry, else built here (when
        its content tag is missing) and streamed over when the machine does not have it."""
        registry = spec.image.registry
        if registry:
            from mlenv.boxes.aws import registry_image

            return pull_image(registry_image(spec, lock, target, build, progress), self._engine(), progress,
                              where=self.jump["host"])
        tag = super()._image(spec, lock, target, progress, build)
        ship_image(tag, self._engine(), progress, where=self.jump["host"])
        return tag

    def _box(self, container: Any, *, details: bool = False) -> Box:
        box = super()._box(container, details=details)
        box.region = self.jump["host"]
        box.extra.update(mode="docker", jump=self.jump)
        return box

    def executor(self, box: Box) -> Executor:
        """The container's own sshd, through the machine (a Session via the jump host)."""
        from mlenv.execute import SSHExecutor

        if box.state != "running":
            raise UsageError(f"box {box.name} is {box.state}", hint=f"start it with `mlenv start {box.name}`")
        return SSHExecutor(box, where=f"box {box.name}")


def _engine(what: str, call: Any) -> Any:
    from mlenv.image.engine import engine_call

    return engine_call(what, call)


def ship_image(tag: str, remote: docker.DockerClient, progress: Progress, *, where: str) -> None:
    """Stream the local image ``tag`` into the ``remote`` engine (``docker save | docker load``),
    unless the remote already holds that image (same id, so the same content)."""
    from docker.errors import ImageNotFound

    from mlenv.image.engine import connect

    local = _engine(f"reading {tag}", lambda: connect().images.get(tag))
    try:
        if remote.images.get(tag).id == local.id:
            progress(f"{where} already has {tag}")
            return
    except ImageNotFound:
        pass
    size = (local.attrs.get("Size") or 0) / 1e6
    progress(f"sending {tag} to {where} ({size:.0f} MB, docker save | docker load)")
    _engine(f"loading {tag} on {where}", lambda: remote.images.load(local.save(named=tag)))
    if _engine(f"reading {tag} on {where}", lambda: remote.images.get(tag)).id != local.id:
        raise ToolMissingError(f"{tag} on {where} is not the image sent from here")


def pull_image(ref: str, remote: docker.DockerClient, progress: Progress, *, where: str) -> str:
    """``ref`` (``repository:tag@sha256:...``) pulled by the ``remote`` engine by its digest, then
    tagged ``repository:tag`` there (the name the box's container is created from); returns that name."""
    tag, _, digest = ref.partition("@")
    repository, _, version = tag.rpartition(":")
    if not digest.startswith("sha256:") or not repository:
        raise ToolMissingError(f"{ref!r} is not an image reference pinned by digest")
    progress(f"pulling {repository}@{digest} on {where}")
    image = _engine(f"pulling {repository}@{digest} on {where}", lambda: remote.images.pull(f"{repository}@{digest}"))
    _engine(f"tagging {tag} on {where}", lambda: image.tag(repository, version))
    return tag
