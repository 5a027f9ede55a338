"""Jupyter on a box, reached through an SSH tunnel: never a public interface, never an empty token.

``ensure`` reuses a server already running on the box when it listens on loopback only and has a
token; otherwise it starts one bound to 127.0.0.1 with a fresh random token.  The token is handed
over in the environment (``JUPYTER_TOKEN``), not on the command line, so other users of the box do
not see it in ``ps``.  The caller forwards a local port to it and opens the URL with the token.
"""

from __future__ import annotations

import json
import secrets
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass

from mlenv.connect.session import Session
from mlenv.errors import ToolMissingError

LOOPBACK = ("127.0.0.1", "localhost", "::1")
STATE = '"${XDG_STATE_HOME:-$HOME/.local/state}/mlenv"'  # log and pid file of the server mlenv started


@dataclass(frozen=True)
class Server:
    port: int
    token: str
    base_url: str
    pid: int | None
    started: bool  # True when mlenv started it now, False when an existing one was reused

    def url(self, local_port: int) -> str:
        return f"http://127.0.0.1:{local_port}{self.base_url}?token={self.token}"


def _start_command(python: str | None) -> str:
    """The shell line that starts a server with the arguments given after it: ``python -m ...``
    when an interpreter is given, else whatever ``jupyter`` the box's PATH has (JupyterLab when
    installed, else Jupyter Server)."""
    if python:
        py = shlex.quote(python)
        return (f"if {py} -c 'import jupyterlab' 2>/dev/null; then exec {py} -m jupyterlab \"$@\"; "
                f"else exec {py} -m jupyter_server \"$@\"; fi")
    return "if command -v jupyter-lab >/dev/null; then exec jupyter lab \"$@\"; else exec jupyter server \"$@\"; fi"


# Process $p is alive and, where /proc tells, a Jupyter process: a restarted box hands the small pid
# of a server that ran before to other processes, while its files (runtime file, pid file) stay.
_IS_JUPYTER = 'kill -0 "$p" 2>/dev/null && { [ ! -r "/proc/$p/cmdline" ] || grep -qa jupyter "/proc/$p/cmdline"; }'
# What `jupyter server list` reads, without starting Python on the box (seconds on a busy box):
# the jpserver-PID.json files of live processes in Jupyter's runtime folder.
_SEPARATOR = "--- mlenv: next server ---"
_LIST = ('d="${JUPYTER_RUNTIME_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/jupyter/runtime}"; '
         'for f in "$d"/jpserver-*.json; do [ -f "$f" ] || continue; p="${f##*/jpserver-}"; p="${p%.json}"; '
         + _IS_JUPYTER + ' && { cat "$f"; echo; echo "' + _SEPARATOR + '"; }; done; true')


def running(ssh: Session) -> list[dict]:
    """The Jupyter servers the box's user runs, as their runtime files describe them."""
    _code, out, _ = ssh.capture(_LIST, timeout=60)
    servers = []
    for chunk in out.decode("utf-8", "replace").split(_SEPARATOR):
        try:
            item = json.loads(chunk)
        except ValueError:
            continue
        if isinstance(item, dict):
            servers.append(item)
    return servers


def _usable(item: dict) -> bool:
    """A server mlenv may hand out: loopback only, a token, a TCP port (not a unix socket)."""
    return (item.get("hostname") in LOOPBACK and bool(item.get("token")) and not item.get("sock")
            and isinstance(item.get("port"), int) and not item.get("password"))


def ensure(ssh: Session, *, python: str | None = None, workdir: str | None = None, allow_root: bool = False,
           timeout: float = 90, progress: Callable[[str], None] | None = None) -> Server:
    for item in running(ssh):
        if _usable(item):
            return Server(item["port"], item["token"], item.get("base_url") or "/", item.get("pid"), False)
    token = secrets.token_urlsafe(32)
    options = ["--no-browser", "--ip=127.0.0.1", "--port=8888", "--port-retries=50",
               "--ServerApp.allow_remote_access=False"]
    if allow_root:
        options.append("--allow-root")
    start = _start_command(python)
    cd = f"cd {shlex.quote(workdir)}; " if workdir else ""
    # the token arrives on stdin: a command line (ours or jupyter's) is visible to every user in `ps`
    command = (f"set -e; IFS= read -r JUPYTER_TOKEN; export JUPYTER_TOKEN; mkdir -p {STATE}; {cd}"
               f"nohup sh -c {shlex.quote(start)} jupyter {' '.join(options)} "
               f"> {STATE}/jupyter.log 2>&1 < /dev/null & echo $! > {STATE}/jupyter.pid")
    if progress:
        progress(f"starting Jupyter on box {ssh.endpoint.name} (127.0.0.1 only)")
    code, _, err = ssh.capture(command, input=token.encode() + b"\n")
    if code != 0:
        raise ToolMissingError(f"could not start Jupyter on box {ssh.endpoint.name}: "
                               f"{err.decode(errors='replace').strip()}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for item in running(ssh):
            if item.get("token") == token and _usable(item):
                return Server(item["port"], token, item.get("base_url") or "/", item.get("pid"), True)
        alive, _, _ = ssh.capture(f"kill -0 \"$(cat {STATE}/jupyter.pid)\" 2>/dev/null")
        if alive != 0:
            break
        time.sleep(0.5)
    _, log, _ = ssh.capture(f"tail -n 5 {STATE}/jupyter.log")
    raise ToolMissingError(
        f"Jupyter did not come up on box {ssh.endpoint.name}:\n    "
        + "\n    ".join(log.decode(errors="replace").strip().splitlines()),
        hint="install jupyterlab (or jupyter_server) in the box's environment: add it to a dependency group in "
             "mlenv.toml and lock again; or pass --python with the box's interpreter that has it")


def stop(ssh: Session) -> bool:
    """Stop the Jupyter server mlenv started on the box (others are left alone)."""
    code, _, _ = ssh.capture(f"p=$(cat {STATE}/jupyter.pid 2>/dev/null) && {_IS_JUPYTER} && kill \"$p\" "
                             f"&& rm -f {STATE}/jupyter.pid")
    return code == 0


