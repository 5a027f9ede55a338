"""The one seam for running a command somewhere: this machine, a container, an image, a box.

Doctor's probe, ``sync``, the box watchdog install, ``sweep --on`` and CI steps all need "run this
argv there and give me its output and exit code".  Each place is one ``Executor`` class; callers
never ask where they run.  The contract every executor keeps:

- ``run`` never raises for a non-zero exit: the code is in ``Completed.returncode``;
- a program that does not exist there is returncode 127 (what a shell reports), so fallbacks such
  as "python, else python3" work the same everywhere;
- a place that cannot be reached at all (no engine, no image, SSH down) is a ``ToolMissingError``
  (exit 6), never a "drift" exit code.

File helpers (``write_file``, ``copy_tree_from``) are built on ``run`` with ``sh`` and ``tar``, which
every image and box mlenv makes has, so a new executor only implements ``run``.
"""

from __future__ import annotations

import io
import os
import shlex
import subprocess
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from mlenv.errors import MlenvError, ToolMissingError

NOT_FOUND = 127  # the shell's "command not found"; every executor reports missing programs this way
THROWAWAY_LABEL = "io.mlenv.throwaway"  # on containers ImageExecutor creates (and removes) per command


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", "replace")

    @property
    def error_text(self) -> str:
        return self.stderr.decode("utf-8", "replace")

    def check(self, what: str) -> Completed:
        """``self`` when the command succeeded, else an ``MlenvError`` quoting the end of stderr."""
        if self.returncode == 0:
            return self
        tail = [line for line in self.error_text.strip().splitlines() if line.strip()][-5:]
        detail = ("\n    " + "\n    ".join(tail)) if tail else ""
        raise MlenvError(f"{what} failed (exit {self.returncode}){detail}")


class Executor(Protocol):
    """A place that runs commands.  ``where`` names it in messages and reports."""

    where: str

    def run(
        self,
        argv: Sequence[str],
        *,
        input: bytes | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Completed: ...


# --- this machine ---------------------------------------------------------------------------------


class LocalExecutor:
    """Processes on this machine; ``env`` is added to (not replacing) the current environment."""

    def __init__(self, cwd: str | os.PathLike | None = None, *, where: str = "this machine") -> None:
        self.cwd = cwd
        self.where = where

    def run(self, argv, *, input=None, env=None, timeout=None) -> Completed:
        argv = tuple(os.fspath(part) for part in argv)
        try:
            result = subprocess.run(argv, input=input, capture_output=True, timeout=timeout, cwd=self.cwd,
                                    env={**os.environ, **env} if env else None)
        except FileNotFoundError as exc:
            return Completed(argv, NOT_FOUND, b"", str(exc).encode())
        except PermissionError as exc:
            return Completed(argv, 126, b"", str(exc).encode())
        except subprocess.TimeoutExpired:
            raise ToolMissingError(f"{argv[0]} did not finish within {timeout:.0f}s on {self.where}") from None
        return Completed(argv, result.returncode, result.stdout, result.stderr)


# --- containers (docker SDK) ----------------------------------------------------------------------


def _frames(sock) -> tuple[bytes, bytes]:
    """Read a multiplexed attach/exec stream to its end: (stdout, stderr)."""
    from docker.utils.socket import consume_socket_output, demux_adaptor, frames_iter

    stdout, stderr = consume_socket_output((demux_adaptor(*frame) for frame in frames_iter(sock, tty=False)),
                                           demux=True)
    return stdout or b"", stderr or b""


def _send(sock, data: bytes) -> None:
    """Write stdin and close our half, so the program sees end-of-file."""
    import socket

    raw = getattr(sock, "_sock", sock)
    raw.sendall(data)
    raw.shutdown(socket.SHUT_WR)


def _missing_program(message: str) -> bool:
    lowered = message.lower()
    return "executable file not found" in lowered or "no such file or directory" in lowered


class ContainerExecutor:
    """``docker exec`` in a running container (a dev box, a devcontainer), through the SDK."""

    def __init__(self, container: str, *, user: str | None = None, workdir: str | None = None,
                 where: str | None = None) -> None:
        self.container = container
        self.user = user
        self.workdir = workdir
        self.where = where or f"container {container}"

    def run(self, argv, *, input=None, env=None, timeout=None) -> Completed:
        from mlenv.image.engine import connect, engine_call

        argv = tuple(argv)
        api = connect().api
        created = engine_call(f"docker exec in {self.where}", lambda: api.exec_create(
            self.container, list(argv), stdin=input is not None, user=self.user or "", workdir=self.workdir,
            environment=dict(env) if env else None))
        try:
            sock = engine_call(f"docker exec in {self.where}",
                               lambda: api.exec_start(created["Id"], socket=True, demux=False))
        except MlenvError as exc:
            if _missing_program(exc.message):
                return Completed(argv, NOT_FOUND, b"", exc.message.encode())
            raise
        raw = getattr(sock, "_sock", sock)
        raw.settimeout(timeout)
        try:
            if input is not None:
                _send(sock, input)
            stdout, stderr = _frames(sock)
        except TimeoutError:
            raise ToolMissingError(f"{argv[0]} did not finish within {timeout:.0f}s in {self.where}") from None
        finally:
            sock.close()
        code = api.exec_inspect(created["Id"]).get("ExitCode")
        # the runtime reports a missing program as exit 126 with its message on the stream
        if code in (None, 126) and _missing_program((stdout + stderr).decode("utf-8", "replace")):
            return Completed(argv, NOT_FOUND, b"", stdout + stderr)
        return Completed(argv, 1 if code is None else code, stdout, stderr)


class ImageExecutor:
    """A throwaway container of a local image per command (``doctor --image``); nothing is pulled.

    The container gets no network: a probe reads the image, it has no business talking to anyone.
    """

    def __init__(self, image: str, *, where: str | None = None) -> None:
        self.image = image
        self.where = where or f"image {image}"
        self._checked = False

    def _require_image(self, client) -> None:
        from docker.errors import ImageNotFound

        if self._checked:
            return
        try:
            client.images.get(self.image)
        except ImageNotFound:
            raise ToolMissingError(f"no local image {self.image!r}",
                                   hint="build it with `mlenv build`, or `docker pull` it first") from None
        self._checked = True

    def run(self, argv, *, input=None, env=None, timeout=None) -> Completed:
        from docker.errors import APIError

        from mlenv.image.engine import connect, engine_call

        argv = tuple(argv)
        client = connect()
        self._require_image(client)
        # create/start/remove by hand: `containers.run` leaves the container behind when start fails
        container = engine_call(f"creating a container of {self.image}", lambda: client.containers.create(
            self.image, list(argv), entrypoint=[], network_mode="none", stdin_open=input is not None,
            environment=dict(env) if env else None, labels={THROWAWAY_LABEL: "1"}))
        try:
            sock = None
            if input is not None:
                sock = container.attach_socket(params={"stdin": 1, "stream": 1})
            try:
                container.start()
            except APIError as exc:
                message = str(exc.explanation or exc)
                if _missing_program(message):
                    return Completed(argv, NOT_FOUND, b"", message.encode())
                raise ToolMissingError(f"cannot run a container of {self.image!r}: {message}") from None
            if sock is not None:
                _send(sock, input)
                sock.close()
            try:
                status = container.wait(timeout=timeout).get("StatusCode", 1)
            except Exception as exc:  # noqa: BLE001 - requests' ReadTimeout, engine loss: both are "gone"
                raise ToolMissingError(f"{argv[0]} did not finish in {self.where}: {exc}") from None
            stdout = container.logs(stdout=True, stderr=False)
            stderr = container.logs(stdout=False, stderr=True)
            return Completed(argv, status, stdout, stderr)
        finally:
            try:
                container.remove(force=True)
            except APIError:
                pass


# --- dev boxes over SSH (paramiko) ---------------------------------------------------------------------


class SSHExecutor:
    """Commands on a dev box over SSH (paramiko), the box's host key checked against the pinned one.

    One connection is opened on first use and reused; argv is shell-quoted for the login shell, so
    a missing program is the shell's 127 like everywhere else."""

    def __init__(self, box, *, where: str | None = None) -> None:
        self.box = box
        self.where = where or f"box {box.name}"
        self._session: Any = None  # a connect.Session once the first command runs

    def run(self, argv, *, input=None, env=None, timeout=None) -> Completed:
        from mlenv import connect

        argv = tuple(os.fspath(part) for part in argv)
        if self._session is None or not self._session.transport.is_active():
            self._session = connect.open_session(self.box)
        code, stdout, stderr = self._session.capture(shlex.join(argv), input=input, env=env, timeout=timeout)
        return Completed(argv, code, stdout, stderr)

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None


# --- helpers every executor gets --------------------------------------------------------------------


def run_python(executor: Executor, code: str, *, python: str | None = None, timeout: float | None = 120) -> str:
    """stdout of ``python -c code`` there; without ``python``, ``python`` then ``python3``.

    ``python`` comes first: the PATH of an image or box decides which environment answers, as it
    would for the code that runs there.  Every failure is one ``ToolMissingError`` (exit 6): a place
    whose Python cannot run could not be looked at, which is not drift.
    """
    candidates = (python,) if python else ("python", "python3")
    for interpreter in candidates:
        result = executor.run([interpreter, "-c", code], timeout=timeout)
        if result.returncode == NOT_FOUND and not result.stdout:
            continue
        if result.returncode != 0:
            lines = [line for line in result.error_text.strip().splitlines() if line.strip()]
            raise ToolMissingError(
                f"{interpreter} on {executor.where} exited {result.returncode}" + (f": {lines[-1]}" if lines else ""),
                hint="check that the environment has a working Python")
        return result.text
    if python:
        # a local interpreter's place is named after it ("python /x/bin/python"): say it once
        place = "" if python in executor.where else f" on {executor.where}"
        raise ToolMissingError(f"cannot run Python interpreter {python}: not found{place}",
                               hint="pass the path of a working python executable")
    raise ToolMissingError(f"no python or python3 on {executor.where}", hint="pass the interpreter to use explicitly")


def write_file(executor: Executor, path: str, data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` there atomically (temp file + rename), creating parent folders."""
    quoted = shlex.quote(path)
    script = (f'set -e; d=$(dirname {quoted}); mkdir -p "$d"; t=$(mktemp "$d/.mlenv.XXXXXX"); '
              f'cat > "$t"; chmod {mode:o} "$t"; mv -f "$t" {quoted}')
    executor.run(["sh", "-c", script], input=data).check(f"writing {path} on {executor.where}")


def copy_tree_from(executor: Executor, remote_dir: str, local_dir: str | os.PathLike) -> list[Path]:
    """Copy a folder from there to ``local_dir`` (tar over the executor); returns the files written.

    Members that would land outside ``local_dir`` (absolute names, ``..``, links) are refused: the
    archive comes from a machine mlenv does not fully trust.
    """
    result = executor.run(["tar", "-C", remote_dir, "-cf", "-", "."]).check(
        f"reading {remote_dir} on {executor.where}")
    target = Path(local_dir)
    target.mkdir(parents=True, exist_ok=True)
    written = []
    with tarfile.open(fileobj=io.BytesIO(result.stdout), mode="r:") as archive:
        members = []
        for member in archive.getmembers():
            if not (member.isfile() or member.isdir()):
                continue
            if member.name.startswith("/") or ".." in Path(member.name).parts:
                raise MlenvError(f"refusing {member.name!r} from {executor.where}: it leaves {remote_dir}")
            members.append(member)
        archive.extractall(target, members=members, filter="data")
        written = [target / m.name for m in members if m.isfile()]
    return written
