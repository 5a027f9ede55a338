"""paramiko sessions for everything mlenv does itself on a box: wait for SSH, run commands with
streamed output and the remote exit code, forward local ports.

Host keys are checked strictly, always: the key the box offers must be one pinned in mlenv's
known_hosts (or, before the first pin, one the provider learned through a trusted channel).  There
is no "accept whatever comes" mode; paramiko's ``AutoAddPolicy`` is never used.  paramiko is
imported inside the functions so ``mlenv --help`` does not pay for it.
"""

from __future__ import annotations

import os
import select
import shlex
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from mlenv import validate
from mlenv.connect import hostkeys
from mlenv.connect.keys import PublicKey
from mlenv.errors import MlenvError, ToolMissingError

Sink = Callable[[bytes], None]


@dataclass(frozen=True)
class Endpoint:
    """Where a box's sshd answers and who logs in: validated values only (see ``registry``)."""

    name: str
    host: str
    port: int
    user: str
    identity: Path
    # the SSH server this one is reached through (ssh's ProxyJump): a container's sshd published on a
    # machine's loopback only, reached from that machine
    jump: Endpoint | None = None

    @property
    def address(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


def _dial(host: str, port: int, timeout: float) -> socket.socket:
    try:
        return socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise ToolMissingError(f"cannot reach SSH at {host}:{port}: {exc.strerror or exc}",
                               hint="check that the box is running (`mlenv ls`) and reachable from here") from None


def wait_for_ssh(host: str, port: int, *, timeout: float = 300, name: str | None = None,
                 progress: Callable[[str], None] | None = None) -> float:
    """Block until an SSH server answers at host:port (its ``SSH-`` banner), retrying with backoff.
    Returns the seconds waited; raises ``ToolMissingError`` (exit 6) after ``timeout``."""
    started = time.monotonic()
    delay = 0.2
    last_error = "no answer"
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(5.0, max(timeout, 0.5))) as sock:
                sock.settimeout(5.0)
                banner = sock.recv(256)
                if banner.startswith(b"SSH-"):
                    return time.monotonic() - started
                last_error = "the port answered, but not with an SSH banner" if banner else "connection closed"
        except OSError as exc:
            last_error = exc.strerror or str(exc)
        waited = time.monotonic() - started
        if waited >= timeout:
            what = f"box {name!r}" if name else f"{host}:{port}"
            raise ToolMissingError(
                f"{what} did not answer SSH at {host}:{port} within {timeout:.0f}s (last: {last_error})",
                hint="check that it is running (`mlenv ls`) and that a firewall or security group lets this "
                     "machine in; then try again")
        if progress:
            progress(f"waiting for SSH on {host}:{port} ({last_error})")
        time.sleep(min(delay, max(0.0, timeout - waited)))
        delay = min(delay * 2, 5.0)


def _offered(transport) -> PublicKey:
    key = transport.get_remote_server_key()
    return PublicKey(key.get_name(), key.get_base64())


def _start(host: str, port: int, timeout: float, preferred_types: list[str], sock=None):
    import paramiko

    sock = sock if sock is not None else _dial(host, port, timeout)
    transport = paramiko.Transport(sock)
    options = transport.get_security_options()
    wanted = [kind for kind in preferred_types if kind in options.key_types]
    options.key_types = wanted + [kind for kind in options.key_types if kind not in wanted]
    try:
        transport.start_client(timeout=timeout)
    except (paramiko.SSHException, OSError, EOFError) as exc:
        transport.close()
        raise ToolMissingError(f"SSH handshake with {host}:{port} failed: {exc}") from None
    return transport


def scan_host_key(host: str, port: int, *, timeout: float = 15, via: Session | None = None) -> PublicKey:
    """The host key a server offers (ed25519 preferred), reached through ``via`` (a jump host's
    session) when given.  Used only to *show* a fingerprint for the user to confirm; it is not
    trusted by itself."""
    sock = via.open_channel(host, port) if via is not None else None
    transport = _start(host, port, timeout, ["ssh-ed25519"], sock)
    try:
        return _offered(transport)
    finally:
        transport.close()


class Session:
    """An authenticated SSH connection to a box.  Use as a context manager, or ``close()``."""

    def __init__(self, endpoint: Endpoint, *, trusted_keys: list[PublicKey] | None = None,
                 jump_trusted_keys: list[PublicKey] | None = None, timeout: float = 20) -> None:
        import paramiko

        self.endpoint = endpoint
        known = hostkeys.pinned(endpoint.name) or list(trusted_keys or [])
        if not known:
            raise hostkeys.HostKeyUnknown(endpoint.name)
        # through the jump host: its own session (its own pinned key), then a direct-tcpip channel
        self.jump = Session(endpoint.jump, trusted_keys=jump_trusted_keys, timeout=timeout) if endpoint.jump else None
        try:
            sock = self.jump.open_channel(endpoint.host, endpoint.port) if self.jump else None
            transport = _start(endpoint.host, endpoint.port, timeout, [key.type for key in known], sock)
        except BaseException:
            if self.jump:
                self.jump.close()
            raise
        try:
            offered = _offered(transport)
            if not any(key.same_key(offered) for key in known):
                raise hostkeys.HostKeyChanged(endpoint.name, offered, known)
            try:
                pkey = paramiko.PKey.from_path(endpoint.identity)
            except (OSError, paramiko.SSHException) as exc:
                raise MlenvError(f"cannot load the key {endpoint.identity}: {exc}",
                                 hint="`mlenv keys ls` lists this machine's keys") from None
            try:
                transport.auth_publickey(endpoint.user, pkey)
            except paramiko.AuthenticationException:
                raise ToolMissingError(
                    f"box {endpoint.name!r} refused the key {endpoint.identity.name} for user {endpoint.user!r}",
                    hint="the key may have been rotated or revoked: `mlenv keys ls` shows which keys open which "
                         "boxes") from None
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise ToolMissingError(f"SSH login to {endpoint.address} failed: {exc}") from None
        except BaseException:
            transport.close()
            if self.jump:
                self.jump.close()
            raise
        transport.set_keepalive(30)
        self.transport = transport

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.transport.close()
        if self.jump:
            self.jump.close()

    def open_channel(self, host: str, port: int, *, timeout: float = 30):
        """A ``direct-tcpip`` channel to host:port as seen from this box (what ``ssh -W`` opens)."""
        import paramiko

        try:
            return self.transport.open_channel("direct-tcpip", (host, port), ("127.0.0.1", 0), timeout=timeout)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise ToolMissingError(f"{self.endpoint.address} cannot open a connection to {host}:{port}: {exc}",
                                   hint="check that the box is running (`mlenv ls`)") from None

    def run(self, command: str, *, input: bytes | None = None, env: Mapping[str, str] | None = None,
            stdout: Sink | None = None, stderr: Sink | None = None, timeout: float | None = None) -> int:
        """Run ``command`` (a shell line) on the box; output is passed to ``stdout``/``stderr`` as it
        arrives; returns the remote exit code.  ``env`` is exported by the remote shell first (sshd's
        AcceptEnv usually drops variables sent the SSH way)."""
        if env:
            bad = [key for key in env if not validate.ENV_NAME.fullmatch(key)]
            if bad:
                raise MlenvError(f"invalid environment variable name {bad[0]!r}")
            command = "export " + " ".join(f"{key}={shlex.quote(value)}" for key, value in env.items()) + "; " + command
        channel = self.transport.open_session(timeout=30)
        try:
            channel.exec_command(command)
            if input is not None:
                channel.sendall(input)
            channel.shutdown_write()
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                # wakes on stdout data; stderr and the exit status are polled (paramiko signals only stdout)
                select.select([channel], [], [], 0.02)
                while channel.recv_ready():
                    data = channel.recv(65536)
                    if stdout and data:
                        stdout(data)
                while channel.recv_stderr_ready():
                    data = channel.recv_stderr(65536)
                    if stderr and data:
                        stderr(data)
                if channel.exit_status_ready() and not channel.recv_ready() and not channel.recv_stderr_ready() \
                        and (channel.eof_received or channel.closed):
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise ToolMissingError(f"{command.split()[0]} did not finish within {timeout:.0f}s on "
                                           f"box {self.endpoint.name}")
            return channel.recv_exit_status()
        finally:
            channel.close()

    def capture(self, command: str, *, input: bytes | None = None, env: Mapping[str, str] | None = None,
                timeout: float | None = None) -> tuple[int, bytes, bytes]:
        out: list[bytes] = []
        err: list[bytes] = []
        code = self.run(command, input=input, env=env, stdout=out.append, stderr=err.append, timeout=timeout)
        return code, b"".join(out), b"".join(err)

    def forward(self, remote_port: int, *, remote_host: str = "127.0.0.1", local_port: int = 0) -> LocalForward:
        """Listen on 127.0.0.1:``local_port`` (0 = a free port) and tunnel each connection to
        ``remote_host:remote_port`` as seen from the box (``ssh -L``)."""
        return LocalForward(self.transport, remote_host, remote_port, local_port)


def pump(left, right) -> None:
    """Copy bytes both ways between a socket and a paramiko channel until either side closes."""
    try:
        while True:
            ready, _, _ = select.select([left, right], [], [], 1.0)
            if left in ready:
                data = left.recv(65536)
                if not data:
                    break
                right.sendall(data)
            if right in ready:
                data = right.recv(65536)
                if not data:
                    break
                left.sendall(data)
    except OSError:
        pass
    finally:
        right.close()
        left.close()


class LocalForward:
    """A local port tunnelled to the box over an SSH session (``direct-tcpip`` channels)."""

    def __init__(self, transport, remote_host: str, remote_port: int, local_port: int = 0) -> None:
        self.transport = transport
        self.remote = (remote_host, remote_port)
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.listener.bind(("127.0.0.1", local_port))
        except OSError as exc:
            self.listener.close()
            raise MlenvError(f"cannot listen on 127.0.0.1:{local_port}: {exc.strerror}",
                             hint="pick another local port, or leave it out for a free one") from None
        self.listener.listen(16)
        self.local_port = self.listener.getsockname()[1]
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, name=f"forward-{self.local_port}", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, peer = self.listener.accept()
            except OSError:
                return
            try:
                channel = self.transport.open_channel("direct-tcpip", self.remote, peer, timeout=30)
            except Exception:  # noqa: BLE001 - the box refused this one connection: drop it, keep listening
                client.close()
                continue
            threading.Thread(target=pump, args=(client, channel), daemon=True).start()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._closed.set()
        self.listener.close()


def relay_stdio(host: str, port: int, *, timeout: float = 30, via: Session | None = None) -> None:
    """Copy this process's stdin to host:port (as seen from ``via``, a jump host, when given) and the
    answers to stdout until either side closes: what ssh's ``ProxyCommand`` needs (ssh itself speaks
    the protocol and checks the host key)."""
    sock = via.open_channel(host, port) if via is not None else _dial(host, port, timeout)
    sock.settimeout(None)
    stdin, stdout = 0, 1
    try:
        open_stdin = True
        while True:
            watch: list[socket.socket | int] = [sock, stdin] if open_stdin else [sock]
            ready, _, _ = select.select(watch, [], [])
            if stdin in ready:
                data = os.read(stdin, 65536)
                if data:
                    sock.sendall(data)
                else:
                    open_stdin = False
                    sock.shutdown(socket.SHUT_WR)
            if sock in ready:
                data = sock.recv(65536)
                if not data:
                    break
                view = memoryview(data)
                while view:
                    view = view[os.write(stdout, view):]
    finally:
        sock.close()
