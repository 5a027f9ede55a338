"""The ``ssh`` provider: a machine the user already has (on-prem GPU server, lab workstation).

``[devbox] host / user / port`` name it.  ``mlenv up`` sets a box up there over SSH (paramiko,
through ``mlenv.execute.SSHExecutor``, the machine's host key pinned), in one of two modes:

- **docker** (when ``docker version`` answers for the login user there; ``[devbox] docker`` = true
  requires it, false never uses it): the box is a container of the locked dev image on the
  machine's engine, made as the docker provider makes one (``mlenv.boxes.ssh_docker``), reached
  through the machine as a jump host.
- **venv** (otherwise), as the login user, without root:

    ~/.mlenv/boxes/NAME/box.json        what the box is (the host is the source of truth, not this laptop)
    ~/.mlenv/boxes/NAME/venv            the lock synced with uv (uv from the host, else this machine's
                                        uv binary when the platforms match, else pip)
    ~/.mlenv/boxes/NAME/watchdog.py     the idle watchdog, a user-level process (``--action exit``)
    ~/.mlenv/boxes/NAME/keepalive/      keep-alives (``mlenv keepalive``, ``mlenv sweep --on``)

  SSH logins count as activity as on every box: ``/etc/ssh/sshrc`` touches a file the watchdog
  reads, installed when the user can (root, or ``sudo -n``), else (or when the user has one: sshd
  then skips ``/etc/ssh/sshrc`` for them) the user's own ``~/.ssh/rc``.
  When the watchdog decides the box is idle it exits, and its supervisor stops what mlenv started:
  the processes running from the box's venv.  The machine itself stays up (it is not mlenv's to
  power off).  ``stop``/``start`` stop and restart the watchdog; ``down`` removes the folder.
"""

from __future__ import annotations

import builtins
import json
import os
import platform
import re
import shlex
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mlenv import validate
from mlenv.boxes.model import (
    ACTIVITY_DIR,
    BOX_DIR,
    Box,
    Orphan,
    Progress,
    UpRequest,
    current_owner,
    sshrc,
    validate_box_name,
)
from mlenv.errors import LockError, MlenvError, UsageError
from mlenv.spec import DevboxSettings

if TYPE_CHECKING:
    from mlenv.boxes.ssh_docker import RemoteDockerBoxes
    from mlenv.execute import Completed, Executor, SSHExecutor
    from mlenv.spec import Spec, Target

BOXES_DIR = ".mlenv/boxes"  # under the login user's home on the host
USER_ACTIVITY_DIR = ".mlenv/activity"  # where ~/.ssh/rc records logins when /etc/ssh/sshrc is not ours
SYSTEM_SSHRC = "/etc/ssh/sshrc"
# /etc/ssh/sshrc is the machine's, shared by every user's boxes: one empty file USER.NAME here per box that
# relies on mlenv's block there, so the block goes only with the last of them (a user's own `down` sees
# only their own boxes)
SYSTEM_SSHRC_BOXES = f"{BOX_DIR}/sshrc-boxes"
TOOL_DIR = ".mlenv/bin"
WATCHDOG_POLL_S = 30
HOST_SESSION = "ssh-provider-host"  # the connection that lists boxes is not one box's
_SAFE = re.compile(r"[A-Za-z0-9_.,/:=-]+")  # watchdog arguments read back from box.json

# Runs on the host (python3, stdlib): every box of this user as JSON, with its watchdog's state.
_LIST_BOXES = r"""
import json, os, sys
root = os.path.expanduser(sys.argv[1])
out = []
for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
    folder = os.path.join(root, name)
    try:
        with open(os.path.join(folder, "box.json")) as handle:
            box = json.load(handle)
    except (OSError, ValueError):
        out.append({"folder": name, "broken": True})
        continue
    pid, alive = None, False
    try:
        pid = int(open(os.path.join(folder, "watchdog.pid")).read().strip())
        alive = (folder + "/watchdog.py").encode() in open("/proc/%d/cmdline" % pid, "rb").read()
    except (OSError, ValueError):
        pass
    try:
        box["watchdog"] = json.load(open(os.path.join(folder, "watchdog-state.json")))
    except (OSError, ValueError):
        box["watchdog"] = {}
    try:
        box["started"] = float(open(os.path.join(folder, "started")).read().strip())
    except (OSError, ValueError):
        pass
    box["running"], box["folder"] = alive, name
    out.append(box)
print(json.dumps(out))
"""

# The supervisor: runs the watchdog; when it exits (idle, max lifetime, or `mlenv stop`), stops the
# processes started in the box's environment (what mlenv started): those run from the venv or with it
# as their VIRTUAL_ENV (every command mlenv runs there has it), by pid, read from /proc.
_STOP_VENV_PROCESSES = r"""
import os, signal, sys
venv, me = sys.argv[1].rstrip("/"), os.getuid()
marker = ("VIRTUAL_ENV=" + venv).encode()
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        if os.stat("/proc/" + pid).st_uid != me or int(pid) == os.getpid():
            continue
        args = open("/proc/%s/cmdline" % pid, "rb").read().decode(errors="replace").split("\0")
        environ = open("/proc/%s/environ" % pid, "rb").read().split(b"\0")
    except OSError:
        continue
    if marker in environ or any(arg.startswith(venv + "/") for arg in args[:2]):
        try:
            os.kill(int(pid), signal.SIGTERM)
        except OSError:
            pass
"""


# `mlenv stop`: the supervisor leads its own session (setsid): TERM the whole group (supervisor and
# watchdog) by its id, and wait until it is gone (KILL after 15 s).
_STOP_WATCHDOG = r"""
import os, signal, sys, time
try:
    group = int(open(sys.argv[1]).read().strip())
    os.killpg(group, signal.SIGTERM)
except (OSError, ValueError):
    sys.exit(0)
def members():
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if int(open("/proc/%s/stat" % pid).read().rsplit(")", 1)[1].split()[2]) == group:
                found.append(int(pid))
        except (OSError, ValueError, IndexError):
            pass
    return found
deadline = time.time() + 15
while members() and time.time() < deadline:
    time.sleep(0.2)
for pid in members():
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
"""


# Adds (or removes) mlenv's block in an sshd rc file (/etc/ssh/sshrc, or ~/.ssh/rc), keeping every other
# line, and makes the activity folder the block touches.  A ~/.ssh/rc mlenv creates also runs
# /etc/ssh/sshrc, which sshd skips for users who have their own rc.  Written atomically.  ``holder``
# (when not empty) is the file that records a box relying on the block: made by "add", removed by
# "remove", which then keeps the block while other boxes' files remain in its folder.
_RC_BLOCK = r"""
import os, sys, tempfile
path, action, holder = sys.argv[1:4]
if holder:
    if action == "add":
        os.makedirs(os.path.dirname(holder), mode=0o755, exist_ok=True)
        open(holder, "a").close()
    else:
        try:
            os.remove(holder)
        except FileNotFoundError:
            pass
        try:
            others = os.listdir(os.path.dirname(holder))
        except FileNotFoundError:  # a box made before mlenv kept these files
            others = []
        if others:
            sys.exit(0)
begin, end = "# >>> mlenv: SSH logins are dev-box activity >>>", "# <<< mlenv <<<"
chain = "[ ! -r /etc/ssh/sshrc ] || . /etc/ssh/sshrc"
try:
    with open(path) as handle:
        lines = handle.read().splitlines()
    mode = os.stat(path).st_mode & 0o7777
except FileNotFoundError:
    lines, mode = None, 0o644
kept, ours, inside = [], [], False
for line in lines or []:
    if line == begin:
        inside = True
    elif inside and line == end:
        inside = False
    else:
        (ours if inside else kept).append(line)
if action == "add":
    activity = sys.argv[5]
    os.makedirs(activity, exist_ok=True)
    if os.geteuid() == 0:
        os.chmod(activity, 0o1777)
    block = sys.argv[4].splitlines()
    if path != "/etc/ssh/sshrc" and (lines is None or chain in ours):
        block.insert(0, chain)
    kept += [begin] + block + [end]
if not any(line.strip() for line in kept):
    if lines is not None:
        os.remove(path)
    sys.exit(0)
folder = os.path.dirname(path)
os.makedirs(folder, mode=0o700, exist_ok=True)
handle, temporary = tempfile.mkstemp(dir=folder, prefix=".mlenv.")
with os.fdopen(handle, "w") as out:
    out.write("\n".join(kept) + "\n")
os.chmod(temporary, mode)
os.replace(temporary, path)
"""


class VenvExecutor:
    """Commands on the host with the box's venv first on PATH (as an activated venv would), so
    ``python`` is the locked environment's: the doctor's probe, sweeps, ``mlenv ssh`` commands."""

    def __init__(self, inner: Executor, venv: str, keepalive_dir: str, where: str) -> None:
        self.inner, self.venv, self.keepalive_dir, self.where = inner, venv, keepalive_dir, where

    def run(self, argv: Sequence[str], *, input: bytes | None = None, env: Mapping[str, str] | None = None,
            timeout: float | None = None) -> Completed:
        wrapped = ["sh", "-c", 'export VIRTUAL_ENV="$0" PATH="$0/bin:$PATH"; exec "$@"', self.venv, *argv]
        return self.inner.run(wrapped, input=input, env=env, timeout=timeout)


class SSHProvider:
    name = "ssh"

    def __init__(self, spec: Spec | None = None) -> None:
        self.spec = spec
        self.devbox = spec.devbox if spec is not None else DevboxSettings()
        self._home: str | None = None
        self._machine_executor: SSHExecutor | None = None
        self._host_keys: builtins.list[str] | None = None  # the machine's keys this run trusts
        self._docker: RemoteDockerBoxes | None = None
        self._docker_checked = False
        self._registered: tuple[str, int, str] | None = None  # the machine of a registered box (see _find_machine)

    # --- where -----------------------------------------------------------------------------------

    @property
    def configured(self) -> bool:
        return bool(self.devbox.host) or self._registered is not None

    def _find_machine(self, name: str) -> None:
        """Outside the project (``mlenv ssh --stdio`` run by an IDE, ``--provider ssh`` elsewhere) the
        machine of a box this laptop registered: its ssh entry says where it is (the jump host of a
        container box)."""
        if self.devbox.host or self._registered is not None:
            return
        from mlenv.connect import registry

        record = registry.get(name)
        if record is not None and record.provider == self.name:
            jump = record.jump
            self._registered = (jump.host, jump.port, jump.user) if jump else (record.host, record.port, record.user)

    def _endpoint(self) -> tuple[str, int, str]:
        if self._registered is not None and not self.devbox.host:
            return self._registered
        host = self.devbox.host
        if not host:
            raise UsageError("the ssh provider needs a machine", hint='set [devbox] host = "gpu-server.lab" '
                             '(and user, port) in mlenv.toml')
        problem = validate.hostname(host)
        if problem:
            raise UsageError(f"[devbox] host: {problem}")
        user = self.devbox.user or _local_user()
        if not validate.POSIX_USER.fullmatch(user):
            raise UsageError(f"[devbox] user {user!r} is not a user name")
        port = int(self.devbox.port or 22)
        if not 0 < port < 65536:
            raise UsageError(f"[devbox] port {port} is not a TCP port")
        return host, port, user

    def _trusted(self) -> builtins.list[str]:
        if self._host_keys is None:
            self._host_keys = _trusted_host_keys(*self._endpoint()[:2])
        return self._host_keys

    def _box(self, name: str, state: str = "running", record: dict[str, Any] | None = None) -> Box:
        """A venv-mode box (or, named HOST_SESSION, the machine itself): its SSH address is the machine's."""
        host, port, user = self._endpoint()
        record = record or {}
        watchdog = record.get("watchdog") or {}
        return Box(
            name=name, provider=self.name, state=state, target=record.get("target"),
            lock_hash=record.get("lock"), created=record.get("created"), instance_type=None,
            region=host, price_per_hour=None,
            idle_for_s=watchdog.get("idle_for_s") if state == "running" else None,
            stop_due_s=watchdog.get("stop_due_s") if state == "running" else None,
            ssh_host=host, ssh_port=port, ssh_user=user,
            host_keys=list(self._trusted()),
            extra={"folder": self._folder(name) if self._home else None, "mode": record.get("mode"),
                   "identity": _machine_identity(host, port)},
            project=record.get("project"), owner=record.get("owner"),
            started=record.get("started") if state == "running" else None,
        )

    def _machine(self) -> SSHExecutor:
        """The connection to the machine itself (host key checked), opened once; learns the login
        user's home folder."""
        if self._machine_executor is None:
            from mlenv.execute import SSHExecutor

            host, _, user = self._endpoint()
            self._machine_executor = SSHExecutor(self._box(HOST_SESSION), where=f"{user}@{host}")
            home = self._machine_executor.run(["sh", "-c", 'printf %s "$HOME"']).check("reading the home folder").text
            if not home.startswith("/") or any(c in home for c in "\n\r"):
                raise MlenvError(f"the login user's home on {host} is {home!r}")
            self._home = home
        return self._machine_executor

    def _run(self, argv: builtins.list[str], what: str, *, input: bytes | None = None,
             timeout: float | None = None) -> str:
        return self._machine().run(argv, input=input, timeout=timeout).check(what).text

    def _folder(self, name: str) -> str:
        return f"{self._home}/{BOXES_DIR}/{validate_box_name(name)}"

    def _records(self) -> builtins.list[dict[str, Any]]:
        from mlenv.execute import run_python

        machine = self._machine()
        text = run_python(machine, _LIST_BOXES.replace("sys.argv[1]", repr(f"{self._home}/{BOXES_DIR}")),
                          python="python3")
        records: builtins.list[dict[str, Any]] = json.loads(text)
        return records

    def _docker_boxes(self) -> RemoteDockerBoxes | None:
        """The machine's docker, when it answers for the login user (``docker version``), else None."""
        if not self._docker_checked:
            self._docker_checked = True
            found = self._machine().run(["docker", "version", "--format", "{{.Server.Version}}"], timeout=60)
            if found.returncode == 0 and found.text.strip():
                from mlenv.boxes.ssh_docker import RemoteDockerBoxes

                host, port, user = self._endpoint()
                jump = {"host": host, "port": port, "user": user, "host_keys": list(self._trusted())}
                self._docker = RemoteDockerBoxes(self.spec, host=self._machine(), host_box=self._box(HOST_SESSION),
                                                 jump=jump)
            elif self.devbox.docker:
                detail = (found.error_text or found.text).strip().splitlines()[-1:] or [f"exit {found.returncode}"]
                host, _, user = self._endpoint()
                raise UsageError(f"[devbox] docker = true, but docker does not answer for {user} on {host}: "
                                 f"{detail[0]}", hint="add the user to the machine's docker group (or set "
                                 "[devbox] docker = false for a venv)")
        return self._docker

    # --- reading ---------------------------------------------------------------------------------

    def list(self) -> builtins.list[Box]:
        if not self.configured or not self._trusted():
            # a machine this laptop trusts no key of holds no box made from here (up pins the key)
            return []
        boxes = []
        for record in self._records():
            if record.get("broken") or not validate.BOX_NAME.fullmatch(str(record.get("name", ""))):
                continue
            if self.spec is not None and record.get("project") not in (None, self.spec.name):
                continue
            boxes.append(self._box(record["name"], "running" if record["running"] else "stopped", record))
        docker = self._docker_boxes()
        return boxes + (docker.list() if docker is not None else [])

    def get(self, name: str) -> Box | None:
        validate_box_name(name)
        self._find_machine(name)
        if not self.configured or not self._trusted():
            return None
        record = self._record(name)
        if record:
            return self._box(name, "running" if record["running"] else "stopped", record)
        docker = self._docker_boxes()
        return docker.get(name) if docker is not None else None

    # --- planning and creating -------------------------------------------------------------------

    def _target(self, req: UpRequest) -> Target:
        if self.spec is None:
            raise UsageError("creating a box needs a project", hint="run `mlenv up` in a folder with mlenv.toml")
        name = req.target or self.devbox.target
        if name is None:
            linux = [t for t in self.spec.targets.values() if t.platform.startswith("linux/")]
            if not linux:
                raise UsageError("no linux target in mlenv.toml", hint="add one, or pass --target")
            name = linux[0].name
        return self.spec.target(name)

    def plan(self, req: UpRequest) -> builtins.list[str]:
        host, port, user = self._endpoint()
        target = self._target(req)
        known = _trusted_host_keys(host, port)
        venv = f"target {target.name} synced with uv into ~/{BOXES_DIR}/{req.name}/venv"
        trust = ("host key already trusted" if known
                 else "host key not in your known_hosts: --yes pins the one it offers")
        lines = [f"host: {user}@{host}:{port} ({trust})"]
        if self.devbox.docker is False:
            lines.append(f"environment: {venv} ([devbox] docker = false)")
        else:
            image = (f"pulled from {self.spec.image.registry} by digest" if self.spec and self.spec.image.registry
                     else "built here when missing and sent over (docker save | docker load)")
            lines += [
                f"environment: when `docker version` answers for {user} there, container mlenv-box-{req.name} of "
                f"the {target.name} dev image ({image}), workspace volume mlenv-box-{req.name}-work, its sshd on "
                f"the machine's 127.0.0.1 only, reached through {host} (ProxyJump)",
                f"  otherwise{' (never: [devbox] docker = true)' if self.devbox.docker else ''}: {venv}",
            ]
        lines.append(f"watchdog: after {req.idle_s // 60} min idle it stops the container, or the processes "
                     "started from the box's venv (the machine stays up)")
        return lines

    def _trust(self, req: UpRequest, progress: Progress) -> None:
        """The machine's host key: the user's own known_hosts, what mlenv pinned before, or (with --yes)
        the one the machine offers, shown as its fingerprint."""
        from mlenv.connect import session

        if self._trusted():
            return
        host, port, user = self._endpoint()
        offered = session.scan_host_key(host, port)
        if not req.assume_yes:
            raise UsageError(
                f"{host}:{port} is not in your known_hosts; it offers {offered.type} {offered.fingerprint}",
                hint=f"check that fingerprint, then run again with --yes (or `ssh -p {port} "
                     f"{user}@{host}` once to trust it in your own known_hosts)")
        progress(f"pinning the host key {offered.type} {offered.fingerprint} (--yes)")
        self._host_keys = [offered.line(comment=False)]

    def up(self, req: UpRequest, progress: Progress) -> Box:
        target = self._target(req)
        self._trust(req, progress)
        host, port, user = self._endpoint()
        progress(f"connecting to {user}@{host}:{port}")
        self._machine()
        existing = self._record(req.name)
        if existing:
            if self.spec is not None and existing.get("project") not in (None, self.spec.name):
                raise UsageError(f"box {req.name!r} on {host} belongs to project {existing.get('project')!r}",
                                 hint="pick another name")
            if existing["running"]:
                progress(f"box {req.name} is already running on {host}")
                return self._box(req.name, "running", existing)
            progress(f"box {req.name} exists on {host}: starting its watchdog")
            self._start_watchdog(req.name, existing)
            return self._box(req.name, "running", self._record(req.name))
        docker = self._docker_boxes()
        # a container box of that name is started again even when new boxes are venvs ([devbox] docker = false)
        if docker is not None and (self.devbox.docker is not False or docker.get(req.name) is not None):
            progress(f"docker answers on {host}: the box is a container there")
            return docker.up(req, progress)
        return self._up_venv(req, target, progress)

    def _up_venv(self, req: UpRequest, target: Target, progress: Progress) -> Box:
        from mlenv.lock.model import read_lock

        assert self.spec is not None  # _target checked it
        host = self._endpoint()[0]
        lock = read_lock(self.spec.root)  # a missing lock is exit 4, with the fix
        locked = lock.target(target.name)
        pylock = self.spec.root / locked.pylock_path
        if not pylock.is_file():
            raise LockError(f"{locked.pylock_path} is missing", hint="run `mlenv lock`")
        folder = self._folder(req.name)
        record: dict[str, Any] = {
            "name": req.name, "project": self.spec.name, "owner": current_owner(), "target": target.name,
            "lock": locked.input_hash.split(":")[-1][:16], "created": time.time(), "mode": "venv",
        }
        from mlenv.boxes.cloudinit import watchdog_source
        from mlenv.execute import write_file

        try:
            progress(f"preparing {folder}")
            self._run(["mkdir", "-p", f"{folder}/keepalive"], "creating the box folder")
            activity, record["sshrc"] = self._record_logins(req.name, progress)
            # connections to this machine's sshd are the weak "someone is connected" signal
            record["watchdog_args"] = _box_paths(req.watchdog_args(action="exit", poll_s=WATCHDOG_POLL_S), folder,
                                                 activity) + ["--ports", f"{self._endpoint()[1]},8888"]
            write_file(self._machine(), f"{folder}/watchdog.py", watchdog_source(), mode=0o755)
            write_file(self._machine(), f"{folder}/{locked.pylock_path}", pylock.read_bytes())
            uv = self._uv(progress)
            progress(f"syncing target {target.name} into {folder}/venv (uv)")
            self._run([uv, "venv", "--quiet", "--allow-existing", "--python", lock.python_version, f"{folder}/venv"],
                      f"creating the venv on {host} (is Python {lock.python_version} there?)", timeout=600)
            groups = sorted({g for p in lock.packages_for(locked.name) for g in p.groups} - {"main"})
            sync = [uv, "pip", "sync", "--quiet", "--python", f"{folder}/venv/bin/python"]
            for group in groups:
                sync += ["--group", group]
            self._run([*sync, f"{folder}/{locked.pylock_path}"], f"installing {locked.pylock_path} on {host}",
                      timeout=3600)
            # box.json last: a folder without it is an unfinished `up` (shown by `gc`)
            write_file(self._machine(), f"{folder}/box.json", json.dumps(record, indent=2).encode())
            self._start_watchdog(req.name, record)
        except BaseException:
            progress("up failed: removing what it made on the host")
            try:
                self._run(["rm", "-rf", "--", folder], "cleaning up")
                if "sshrc" in record:
                    self._forget_logins(req.name, record["sshrc"])
            except MlenvError:
                pass
            raise
        progress(f"box {req.name} is running on {host}")
        return self._box(req.name, "running", self._record(req.name))

    def _as_root(self) -> builtins.list[str] | None:
        """The prefix that runs a command as root on the machine: none for root, ``sudo -n`` when it
        works without a password, else None (mlenv never asks for one)."""
        if self._run(["id", "-u"], "reading the user id").strip() == "0":
            return []
        return ["sudo", "-n"] if self._machine().run(["sudo", "-n", "true"]).returncode == 0 else None

    def _record_logins(self, name: str, progress: Progress) -> tuple[str, str]:
        """Make SSH logins to the machine activity for the box's watchdog, the way every box does it
        (``sshrc``: a login touches a file in the activity folder): ``/etc/ssh/sshrc`` when the user
        can write it, else the user's own ``~/.ssh/rc`` (which sshd runs instead, so a user who has
        one gets the block there).  Returns (activity folder, rc file)."""
        own_rc = f"{self._home}/.ssh/rc"
        has_own = self._machine().run(["test", "-e", own_rc]).returncode == 0
        root = None if has_own else self._as_root()
        if root is not None:
            progress(f"SSH logins count as activity: {SYSTEM_SSHRC}")
            self._run([*root, "python3", "-c", _RC_BLOCK, SYSTEM_SSHRC, "add", self._holder(name), sshrc(ACTIVITY_DIR),
                       ACTIVITY_DIR], f"writing {SYSTEM_SSHRC}")
            return ACTIVITY_DIR, SYSTEM_SSHRC
        activity = f"{self._home}/{USER_ACTIVITY_DIR}"
        progress(f"SSH logins count as activity: ~/.ssh/rc ({'yours' if has_own else 'no root on the machine'})")
        self._run(["python3", "-c", _RC_BLOCK, own_rc, "add", "", sshrc(activity), activity], "writing ~/.ssh/rc")
        return activity, own_rc

    def _holder(self, name: str) -> str:
        """The file recording that box ``name`` of the login user relies on mlenv's block in /etc/ssh/sshrc."""
        return f"{SYSTEM_SSHRC_BOXES}/{self._endpoint()[2]}.{validate_box_name(name)}"

    def _forget_logins(self, name: str, rc: str) -> None:
        """After box ``name`` is gone: remove mlenv's block from ``rc`` once no box relies on it (no venv
        box of this user for ~/.ssh/rc; no box of any user for /etc/ssh/sshrc)."""
        if rc != SYSTEM_SSHRC:
            if not any(r.get("sshrc") == rc for r in self._records() if not r.get("broken")):
                self._run(["python3", "-c", _RC_BLOCK, rc, "remove", ""], f"updating {rc}")
            return
        root = self._as_root()
        if root is not None:
            self._run([*root, "python3", "-c", _RC_BLOCK, rc, "remove", self._holder(name)], f"updating {rc}")

    def _record(self, name: str) -> dict[str, Any]:
        return next((r for r in self._records() if r.get("name") == name), {})

    def _uv(self, progress: Progress) -> str:
        """A uv binary on the host: its own, mlenv's earlier copy, ours (same platform), or from PyPI."""
        found = self._machine().run(["sh", "-c", f'command -v uv || ls "$HOME/{TOOL_DIR}/uv"'])
        if found.returncode == 0 and found.text.strip():
            return found.text.strip().splitlines()[0]
        target = f"{self._home}/{TOOL_DIR}/uv"
        machine = self._run(["uname", "-sm"], "reading the host's platform").split()
        if platform.system() == "Linux" and machine == ["Linux", platform.machine()]:
            from uv import find_uv_bin

            from mlenv.execute import write_file

            progress("copying uv to the host")
            with open(find_uv_bin(), "rb") as handle:
                write_file(self._machine(), target, handle.read(), mode=0o755)
            return target
        progress("installing uv on the host (pip)")
        from mlenv import render

        install = (f'python3 -m venv "$HOME/.mlenv/tool" && "$HOME/.mlenv/tool/bin/pip" install --quiet '
                   f'{shlex.quote("uv==" + render.UV_VERSION)} && mkdir -p "$HOME/{TOOL_DIR}" && '
                   f'ln -sf "$HOME/.mlenv/tool/bin/uv" "$HOME/{TOOL_DIR}/uv"')
        self._run(["sh", "-c", install], "installing uv on the host", timeout=600)
        return target

    def _start_watchdog(self, name: str, record: dict[str, Any]) -> None:
        """The watchdog under a small supervisor, detached from the SSH session; its pid is recorded."""
        folder = self._folder(name)
        args = [a for a in record.get("watchdog_args", []) if isinstance(a, str)]
        if not all(_SAFE.fullmatch(a) for a in args):
            raise MlenvError(f"box.json of {name} holds unexpected watchdog arguments")
        watchdog = shlex.join(["python3", f"{folder}/watchdog.py", *args])
        stop = shlex.join(["python3", "-c", _STOP_VENV_PROCESSES, f"{folder}/venv"])
        supervisor = f"{watchdog}; {stop}"
        script = (f"cd {shlex.quote(folder)} && date +%s > started && "
                  f"nohup setsid sh -c {shlex.quote(supervisor)} </dev/null >>watchdog.out 2>&1 & "
                  f"echo $! > {shlex.quote(folder)}/watchdog.pid")
        self._run(["sh", "-c", script], "starting the watchdog")

    # --- stop / start / down: venv boxes here, containers through the docker mode ------------------

    def _need(self, name: str) -> dict[str, Any]:
        validate_box_name(name)
        record = self._record(name)
        if not record:
            raise UsageError(f"no ssh box named {name!r} on {self._endpoint()[0]}", hint="`mlenv ls` lists the boxes")
        return record

    def _container_box(self, name: str) -> RemoteDockerBoxes | None:
        """The docker mode, when box ``name`` is not a venv box here (then it may be a container)."""
        validate_box_name(name)
        self._find_machine(name)
        return None if self._record(name) else self._docker_boxes()

    def stop(self, name: str) -> None:
        docker = self._container_box(name)
        if docker is not None:
            return docker.stop(name)
        record = self._need(name)
        folder = self._folder(name)
        if record.get("running"):
            self._run(["python3", "-c", _STOP_WATCHDOG, f"{folder}/watchdog.pid"], "stopping the watchdog")
        self._run(["python3", "-c", _STOP_VENV_PROCESSES, f"{folder}/venv"], "stopping the box's processes")
        self._run(["rm", "-f", f"{folder}/watchdog.pid"], "recording the stop")

    def start(self, name: str, progress: Progress) -> Box:
        docker = self._container_box(name)
        if docker is not None:
            return docker.start(name, progress)
        record = self._need(name)
        if not record.get("running"):
            progress(f"starting the watchdog of {name}")
            self._start_watchdog(name, record)
        return self._box(name, "running", self._record(name))

    def down(self, name: str) -> None:
        docker = self._container_box(name)
        if docker is not None:
            return docker.down(name)
        record = self._need(name)
        self.stop(name)
        self._run(["rm", "-rf", "--", self._folder(name)], f"deleting box {name}")
        if isinstance(record.get("sshrc"), str):
            self._forget_logins(name, record["sshrc"])

    def orphans(self) -> builtins.list[Orphan]:
        """Box folders without a box.json (an ``up`` killed before it finished), and what the docker
        mode leaves (volumes without a container)."""
        if not self.configured or not self._trusted():
            return []
        found = [Orphan(self.name, "folder", f"~/{BOXES_DIR}/{r['folder']}", r["folder"] if
                        validate.BOX_NAME.fullmatch(r["folder"]) else None, "an unfinished `mlenv up`", 0.0)
                 for r in self._records() if r.get("broken")]
        docker = self._docker_boxes()
        return found + (docker.orphans() if docker is not None else [])

    def delete_orphans(self, orphans: builtins.list[Orphan]) -> None:
        folders = [orphan for orphan in orphans if orphan.kind == "folder"]
        for orphan in folders:
            folder = orphan.id.removeprefix(f"~/{BOXES_DIR}/")
            if validate.BOX_NAME.fullmatch(folder):
                self._run(["rm", "-rf", "--", self._folder(folder)], f"deleting {orphan.id}")
        docker = self._docker_boxes() if len(folders) < len(orphans) else None
        if docker is not None:
            docker.delete_orphans([orphan for orphan in orphans if orphan.kind != "folder"])

    def executor(self, box: Box) -> Executor:
        if box.extra.get("mode") == "docker":
            docker = self._docker_boxes()
            if docker is None:
                raise MlenvError(f"docker no longer answers on {self._endpoint()[0]} for box {box.name}")
            return docker.executor(box)
        from mlenv.execute import SSHExecutor

        self._machine()
        folder = self._folder(box.name)
        return VenvExecutor(SSHExecutor(box), f"{folder}/venv", f"{folder}/keepalive", where=f"box {box.name}")

    def watchdog_log(self, name: str) -> str:
        docker = self._container_box(name)
        if docker is not None:
            return docker.watchdog_log(name)
        self._need(name)
        result = self._machine().run(["cat", f"{self._folder(name)}/watchdog.jsonl"])
        return result.text if result.returncode == 0 else ""


def _box_paths(args: list[str], folder: str, activity: str) -> list[str]:
    """The watchdog's file arguments moved into the box's folder (no root: /var/lib is not ours), and
    the folder SSH logins are recorded in."""
    moved = {"--log": f"{folder}/watchdog.jsonl", "--state": f"{folder}/watchdog-state.json",
             "--keepalive-dir": f"{folder}/keepalive", "--activity-dir": activity}
    out = list(args)
    for index, arg in enumerate(out[:-1]):
        if arg in moved:
            out[index + 1] = moved[arg]
    return out


def _local_user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name: the host's config must say
        return "root"


def _known_host_keys(host: str, port: int) -> list[str]:
    """The host's keys in the user's own ~/.ssh/known_hosts (hashed entries too): a trust the user
    already established, so mlenv pins those instead of asking again."""
    import paramiko

    path = os.path.expanduser("~/.ssh/known_hosts")
    if not os.path.isfile(path):
        return []
    try:
        known = paramiko.HostKeys(path)
    except (OSError, UnicodeDecodeError, paramiko.SSHException):  # unreadable to paramiko: mlenv asks instead
        return []
    entry = known.lookup(host if port == 22 else f"[{host}]:{port}") or {}
    return [f"{key.get_name()} {key.get_base64()}" for key in entry.values()]


def _machine_identity(host: str, port: int) -> str | None:
    """The key this laptop's boxes on the machine log in with (a container box's jump key stays the one
    the machine authorizes after ``keys rotate``), else None: this laptop's current key."""
    from mlenv.connect import registry

    for record in registry.load().values():
        jump = record.jump
        if jump is not None and (jump.host, jump.port) == (host, port):
            return str(jump.identity)
        if jump is None and (record.host, record.port) == (host, port):
            return record.identity
    return None


def _trusted_host_keys(host: str, port: int) -> list[str]:
    """Keys this machine already trusts for host:port: the user's known_hosts, and what mlenv pinned
    for other boxes on the same machine."""
    from mlenv.connect import hostkeys, registry

    keys = _known_host_keys(host, port)
    for record in registry.load().values():
        if record.jump_host is None and record.host == host and int(record.port) == port:
            keys += [key.line(comment=False) for key in hostkeys.pinned(record.name)]
        elif (record.jump_host, record.jump_port) == (host, port):  # a container box on this machine
            keys += [key.line(comment=False) for key in hostkeys.pinned(hostkeys.jump_name(record.name))]
    return list(dict.fromkeys(keys))
