"""The ``ssh`` provider: a machine the user already has (on-prem GPU server, lab workstation).

``[devbox] host / user / port`` name it.  ``mlenv up`` sets a box up there over SSH (paramiko,
through ``mlenv.execute.SSHExecutor``) as the login user, without root:

    ~/.mlenv/boxes/NAME/box.json        what the box is (the host is the source of truth, not this laptop)
    ~/.mlenv/boxes/NAME/venv            the lock synced with uv (uv from the host, else this machine's
                                        uv binary when the platforms match, else pip)
    ~/.mlenv/boxes/NAME/watchdog.py     the idle watchdog, a user-level process (``--action exit``)
    ~/.mlenv/boxes/NAME/keepalive/      keep-alives (``mlenv keepalive``, ``mlenv sweep --on``)

When the watchdog decides the box is idle it exits, and its supervisor stops what mlenv started:
the processes running from the box's venv.  The machine itself stays up (it is not mlenv's to
power off).  ``stop``/``start`` stop and restart the watchdog; ``down`` removes the folder.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import time

from mlenv import validate
from mlenv.boxes.model import Box, Orphan, Progress, UpRequest, current_owner, validate_box_name
from mlenv.errors import MlenvError, UsageError
from mlenv.spec import DevboxSettings

BOXES_DIR = ".mlenv/boxes"  # under the login user's home on the host
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


class VenvExecutor:
    """Commands on the host with the box's venv first on PATH (as an activated venv would), so
    ``python`` is the locked environment's: the doctor's probe, sweeps, ``mlenv ssh`` commands."""

    def __init__(self, inner, venv: str, keepalive_dir: str, where: str) -> None:
        self.inner, self.venv, self.keepalive_dir, self.where = inner, venv, keepalive_dir, where

    def run(self, argv, *, input=None, env=None, timeout=None):
        wrapped = ["sh", "-c", 'export VIRTUAL_ENV="$0" PATH="$0/bin:$PATH"; exec "$@"', self.venv, *argv]
        return self.inner.run(wrapped, input=input, env=env, timeout=timeout)


class SSHProvider:
    name = "ssh"

    def __init__(self, spec=None) -> None:
        self.spec = spec
        self.devbox = spec.devbox if spec is not None else DevboxSettings()
        self._home: str | None = None
        self._executor = None

    # --- where -----------------------------------------------------------------------------------

    @property
    def configured(self) -> bool:
        return bool(self.devbox.host)

    def _endpoint(self) -> tuple[str, int, str]:
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

    def _box(self, name: str, state: str = "running", record: dict | None = None) -> Box:
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
            host_keys=_trusted_host_keys(host, port),
            extra={"folder": self._folder(name) if self._home else None, "mode": record.get("mode")},
            project=record.get("project"), owner=record.get("owner"),
            started=record.get("started") if state == "running" else None,
        )

    def _ssh(self, box: Box | None = None):
        if self._executor is None:
            from mlenv.execute import SSHExecutor

            self._executor = SSHExecutor(box or self._box(HOST_SESSION),
                                         where=f"{self._endpoint()[2]}@{self._endpoint()[0]}")
        return self._executor

    def _run(self, argv: list[str], what: str, *, input: bytes | None = None, timeout: float | None = None) -> str:
        return self._ssh().run(argv, input=input, timeout=timeout).check(what).text

    def _folder(self, name: str) -> str:
        return f"{self._home}/{BOXES_DIR}/{validate_box_name(name)}"

    def _connect(self, box: Box) -> None:
        """Open the SSH connection (host key checked) and learn the login user's home folder."""
        from mlenv.execute import SSHExecutor

        self._executor = SSHExecutor(box, where=f"{box.ssh_user}@{box.ssh_host}")
        home = self._run(["sh", "-c", 'printf %s "$HOME"'], "reading the home folder").strip()
        if not home.startswith("/") or any(c in home for c in "\n\r"):
            raise MlenvError(f"the login user's home on {box.ssh_host} is {home!r}")
        self._home = home

    def _records(self) -> list[dict]:
        from mlenv.execute import run_python

        if self._home is None:
            self._connect(self._box(HOST_SESSION))
        text = run_python(self._ssh(), _LIST_BOXES.replace("sys.argv[1]", repr(f"{self._home}/{BOXES_DIR}")),
                          python="python3")
        return json.loads(text)

    # --- reading ---------------------------------------------------------------------------------

    def list(self) -> list[Box]:
        if not self.configured or not _trusted_host_keys(*self._endpoint()[:2]):
            # a machine this laptop trusts no key of holds no box made from here (up pins the key)
            return []
        boxes = []
        for record in self._records():
            if record.get("broken") or not validate.BOX_NAME.fullmatch(str(record.get("name", ""))):
                continue
            if self.spec is not None and record.get("project") not in (None, self.spec.name):
                continue
            boxes.append(self._box(record["name"], "running" if record["running"] else "stopped", record))
        return boxes

    def get(self, name: str) -> Box | None:
        validate_box_name(name)
        return next((box for box in self.list() if box.name == name), None)

    # --- planning and creating -------------------------------------------------------------------

    def _target(self, req: UpRequest):
        if self.spec is None:
            raise UsageError("creating a box needs a project", hint="run `mlenv up` in a folder with mlenv.toml")
        name = req.target or self.devbox.target
        if name is None:
            linux = [t for t in self.spec.targets.values() if t.platform.startswith("linux/")]
            if not linux:
                raise UsageError("no linux target in mlenv.toml", hint="add one, or pass --target")
            name = linux[0].name
        return self.spec.target(name)

    def plan(self, req: UpRequest) -> list[str]:
        host, port, user = self._endpoint()
        target = self._target(req)
        known = _trusted_host_keys(host, port)
        trust = ("host key already trusted" if known
                 else "host key not in your known_hosts: --yes pins the one it offers")
        return [
            f"host: {user}@{host}:{port} ({trust})",
            f"environment: target {target.name} synced with uv into ~/{BOXES_DIR}/{req.name}/venv",
            (f"watchdog: a user-level process; after {req.idle_s // 60} min idle it stops the processes started "
             "from the box's venv (the machine stays up)"),
        ]

    def _trust(self, box: Box, req: UpRequest, progress: Progress) -> None:
        """The host key: the user's own known_hosts, what mlenv pinned before, or (with --yes) the one
        the host offers, shown as its fingerprint."""
        from mlenv.connect import hostkeys, session

        if box.host_keys or hostkeys.pinned(box.name):
            return
        offered = session.scan_host_key(box.ssh_host, box.ssh_port)
        if not req.assume_yes:
            raise UsageError(
                f"{box.ssh_host}:{box.ssh_port} is not in your known_hosts; "
                f"it offers {offered.type} {offered.fingerprint}",
                hint=f"check that fingerprint, then run again with --yes (or `ssh -p {box.ssh_port} "
                     f"{box.ssh_user}@{box.ssh_host}` once to trust it in your own known_hosts)")
        progress(f"pinning the host key {offered.type} {offered.fingerprint} (--yes)")
        box.host_keys = [offered.line(comment=False)]

    def up(self, req: UpRequest, progress: Progress) -> Box:
        from mlenv.lock.model import lock_path, read_lock

        target = self._target(req)
        box = self._box(req.name)
        self._trust(box, req, progress)
        progress(f"connecting to {box.ssh_user}@{box.ssh_host}:{box.ssh_port}")
        self._connect(box)
        existing = next((r for r in self._records() if r.get("name") == req.name), None)
        if existing is not None:
            if existing.get("project") not in (None, self.spec.name):
                raise UsageError(f"box {req.name!r} on {box.ssh_host} belongs to project {existing.get('project')!r}",
                                 hint="pick another name")
            if existing["running"]:
                progress(f"box {req.name} is already running on {box.ssh_host}")
                return self._with_keys(self._box(req.name, "running", existing), box)
            progress(f"box {req.name} exists on {box.ssh_host}: starting its watchdog")
            self._start_watchdog(req.name, existing)
            return self._with_keys(self._box(req.name, "running", self._record(req.name)), box)
        if not lock_path(self.spec.root).is_file():
            raise UsageError("mlenv.lock is missing", hint="run `mlenv lock`")
        lock = read_lock(self.spec.root)
        locked = lock.target(target.name)
        pylock = self.spec.root / locked.pylock_path
        if not pylock.is_file():
            raise UsageError(f"{locked.pylock_path} is missing", hint="run `mlenv lock`")
        folder = self._folder(req.name)
        record = {
            "name": req.name, "project": self.spec.name, "owner": current_owner(), "target": target.name,
            "lock": locked.input_hash.split(":")[-1][:16], "created": time.time(), "mode": "venv",
            "watchdog_args": req.watchdog_args(action="exit", poll_s=WATCHDOG_POLL_S),
        }
        # connections to this machine's sshd are the weak "someone is connected" signal
        record["watchdog_args"] = _box_paths(record["watchdog_args"], folder) + ["--ports", f"{box.ssh_port},8888"]
        from mlenv.boxes.cloudinit import watchdog_source
        from mlenv.execute import write_file

        try:
            progress(f"preparing {folder}")
            self._run(["mkdir", "-p", f"{folder}/keepalive"], "creating the box folder")
            write_file(self._ssh(), f"{folder}/watchdog.py", watchdog_source(), mode=0o755)
            write_file(self._ssh(), f"{folder}/{locked.pylock_path}", pylock.read_bytes())
            uv = self._uv(progress)
            progress(f"syncing target {target.name} into {folder}/venv (uv)")
            self._run([uv, "venv", "--quiet", "--allow-existing", "--python", lock.python_version, f"{folder}/venv"],
                      f"creating the venv on {box.ssh_host} (is Python {lock.python_version} there?)", timeout=600)
            groups = sorted({g for p in lock.packages_for(locked.name) for g in p.groups} - {"main"})
            sync = [uv, "pip", "sync", "--quiet", "--python", f"{folder}/venv/bin/python"]
            for group in groups:
                sync += ["--group", group]
            self._run([*sync, f"{folder}/{locked.pylock_path}"], f"installing {locked.pylock_path} on {box.ssh_host}",
                      timeout=3600)
            # box.json last: a folder without it is an unfinished `up` (shown by `gc`)
            write_file(self._ssh(), f"{folder}/box.json", json.dumps(record, indent=2).encode())
            self._start_watchdog(req.name, record)
        except BaseException:
            progress("up failed: removing what it made on the host")
            try:
                self._run(["rm", "-rf", "--", folder], "cleaning up")
            except MlenvError:
                pass
            raise
        progress(f"box {req.name} is running on {box.ssh_host}")
        return self._with_keys(self._box(req.name, "running", self._record(req.name)), box)

    def _with_keys(self, found: Box, connected: Box) -> Box:
        found.host_keys = connected.host_keys
        return found

    def _record(self, name: str) -> dict:
        return next((r for r in self._records() if r.get("name") == name), {})

    def _uv(self, progress: Progress) -> str:
        """A uv binary on the host: its own, mlenv's earlier copy, ours (same platform), or from PyPI."""
        found = self._ssh().run(["sh", "-c", f'command -v uv || ls "$HOME/{TOOL_DIR}/uv"'])
        if found.returncode == 0 and found.text.strip():
            return found.text.strip().splitlines()[0]
        target = f"{self._home}/{TOOL_DIR}/uv"
        machine = self._run(["uname", "-sm"], "reading the host's platform").split()
        if platform.system() == "Linux" and machine == ["Linux", platform.machine()]:
            from uv import find_uv_bin

            from mlenv.execute import write_file

            progress("copying uv to the host")
            with open(find_uv_bin(), "rb") as handle:
                write_file(self._ssh(), target, handle.read(), mode=0o755)
            return target
        progress("installing uv on the host (pip)")
        from mlenv import render

        install = (f'python3 -m venv "$HOME/.mlenv/tool" && "$HOME/.mlenv/tool/bin/pip" install --quiet '
                   f'{shlex.quote("uv==" + render.UV_VERSION)} && mkdir -p "$HOME/{TOOL_DIR}" && '
                   f'ln -sf "$HOME/.mlenv/tool/bin/uv" "$HOME/{TOOL_DIR}/uv"')
        self._run(["sh", "-c", install], "installing uv on the host", timeout=600)
        return target

    def _start_watchdog(self, name: str, record: dict) -> None:
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

    # --- stop / start / down ---------------------------------------------------------------------

    def _need(self, name: str) -> dict:
        validate_box_name(name)
        record = self._record(name)
        if not record:
            raise UsageError(f"no ssh box named {name!r} on {self._endpoint()[0]}", hint="`mlenv ls` lists the boxes")
        return record

    def stop(self, name: str) -> None:
        record = self._need(name)
        folder = self._folder(name)
        if record.get("running"):
            self._run(["python3", "-c", _STOP_WATCHDOG, f"{folder}/watchdog.pid"], "stopping the watchdog")
        self._run(["python3", "-c", _STOP_VENV_PROCESSES, f"{folder}/venv"], "stopping the box's processes")
        self._run(["rm", "-f", f"{folder}/watchdog.pid"], "recording the stop")

    def start(self, name: str, progress: Progress) -> Box:
        record = self._need(name)
        if not record.get("running"):
            progress(f"starting the watchdog of {name}")
            self._start_watchdog(name, record)
        return self._box(name, "running", self._record(name))

    def down(self, name: str) -> None:
        self._need(name)
        self.stop(name)
        self._run(["rm", "-rf", "--", self._folder(name)], f"deleting box {name}")

    def orphans(self) -> list[Orphan]:
        """Box folders without a box.json: an ``up`` killed before it finished."""
        if not self.configured or not _trusted_host_keys(*self._endpoint()[:2]):
            return []
        return [Orphan(self.name, "folder", f"~/{BOXES_DIR}/{r['folder']}", r["folder"] if
                       validate.BOX_NAME.fullmatch(r["folder"]) else None, "an unfinished `mlenv up`", 0.0)
                for r in self._records() if r.get("broken")]

    def delete_orphans(self, orphans: list[Orphan]) -> None:
        for orphan in orphans:
            folder = orphan.id.removeprefix(f"~/{BOXES_DIR}/")
            if validate.BOX_NAME.fullmatch(folder):
                self._run(["rm", "-rf", "--", self._folder(folder)], f"deleting {orphan.id}")

    def executor(self, box: Box):
        from mlenv.execute import SSHExecutor

        if self._home is None:
            self._connect(box)
        folder = self._folder(box.name)
        return VenvExecutor(SSHExecutor(box), f"{folder}/venv", f"{folder}/keepalive", where=f"box {box.name}")

    def watchdog_log(self, name: str) -> str:
        self._need(name)
        result = self._ssh().run(["cat", f"{self._folder(name)}/watchdog.jsonl"])
        return result.text if result.returncode == 0 else ""



def _box_paths(args: list[str], folder: str) -> list[str]:
    """The watchdog's file arguments moved into the box's folder (no root: /var/lib is not ours)."""
    moved = {"--log": f"{folder}/watchdog.jsonl", "--state": f"{folder}/watchdog-state.json",
             "--keepalive-dir": f"{folder}/keepalive"}
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
    except (OSError, paramiko.SSHException):
        return []
    entry = known.lookup(host if port == 22 else f"[{host}]:{port}") or {}
    return [f"{key.get_name()} {key.get_base64()}" for key in entry.values()]


def _trusted_host_keys(host: str, port: int) -> list[str]:
    """Keys this machine already trusts for host:port: the user's known_hosts, and what mlenv pinned
    for other boxes on the same machine."""
    from mlenv.connect import hostkeys, registry

    keys = _known_host_keys(host, port)
    for record in registry.load().values():
        if record.host == host and int(record.port) == port:
            keys += [key.line(comment=False) for key in hostkeys.pinned(record.name)]
    return list(dict.fromkeys(keys))
