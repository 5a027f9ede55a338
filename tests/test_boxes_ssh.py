"""The ssh provider against a real OpenSSH server on loopback, logging in as a real non-root user.

The fixture starts Debian's sshd as root on a free port (key-only auth) and creates a throwaway user
whose home is the "lab machine"; the user authorizes mlenv's key the way the README says
(ssh-copy-id).  Everything the provider does goes over SSH.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import BOX_SPEC, locked_template, make_box_project, remove_project_images, require, run_mlenv
from tests.docker_services import DOCKER_HOST


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _processes_of(uid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


@pytest.fixture(scope="module")
def lab_machine():
    """(host, port, user, home, authorized_keys path) of a real sshd on 127.0.0.1."""
    require(os.path.exists("/usr/sbin/sshd"), "/usr/sbin/sshd (apt-get install openssh-server)")
    require(os.geteuid() == 0, "root, to run sshd and create a test user")
    folder = Path(tempfile.mkdtemp(prefix="mlenv-ssh-"))
    folder.chmod(0o755)
    user = f"mlenv-t{os.getpid() % 100000}"
    home = folder / "home"
    # "*": no password, but not a locked account (sshd without PAM refuses locked ones)
    subprocess.run(["useradd", "-m", "-d", str(home), "-s", "/bin/sh", "-p", "*", user], check=True)
    # a second user whose docker answers, as on a GPU server: in the docker group, the docker CLI's
    # context (its own ~/.docker, like any user of a non-default engine) naming the engine's socket
    docker_user, docker_home = f"mlenv-d{os.getpid() % 100000}", folder / "docker-home"
    subprocess.run(["useradd", "-m", "-d", str(docker_home), "-s", "/bin/sh", "-p", "*", "-G", "docker",
                    docker_user], check=True)
    as_docker_user = ["runuser", "-u", docker_user, "--", "env", f"HOME={docker_home}", "docker", "context"]
    subprocess.run([*as_docker_user, "create", "lab", "--docker", f"host={DOCKER_HOST}"], check=True,
                   capture_output=True)
    subprocess.run([*as_docker_user, "use", "lab"], check=True, capture_output=True)
    port = _free_port()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / "hostkey")], check=True)
    authorized = folder / "authorized_keys"
    authorized.write_text("")
    (folder / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {folder / 'hostkey'}\nAuthorizedKeysFile {authorized}\n"
        f"PasswordAuthentication no\nKbdInteractiveAuthentication no\nStrictModes no\nPidFile {folder / 'pid'}\n"
        f"AllowUsers {user} {docker_user}\nLogLevel INFO\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)
    subprocess.run(["/usr/sbin/sshd", "-f", str(folder / "sshd_config"), "-E", str(folder / "log")], check=True)
    deadline = time.monotonic() + 20
    while not (folder / "pid").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        yield {"host": "127.0.0.1", "port": port, "user": user, "home": home, "authorized_keys": authorized,
               "host_key": (folder / "hostkey.pub").read_text().split()[:2], "docker_user": docker_user,
               "docker_home": docker_home}
    finally:
        os.kill(int((folder / "pid").read_text()), signal.SIGTERM)
        for name in (user, docker_user):
            uid = pwd.getpwnam(name).pw_uid
            for pid in _processes_of(uid):  # watchdogs a failed test left behind, by pid
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            deadline = time.monotonic() + 10
            while _processes_of(uid) and time.monotonic() < deadline:
                time.sleep(0.2)
            subprocess.run(["userdel", name], check=False)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def laptop(tmp_path, monkeypatch, lab_machine):
    """This machine's side: its own HOME and mlenv data folder, its key authorized on the lab machine."""
    home = tmp_path / "laptop-home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("MLENV_HOME", str(tmp_path / "mlenv-home"))
    from mlenv.connect.keys import local_key

    # what `ssh-copy-id -i ~/.local/share/mlenv/keys/NAME.pub user@host` does
    lab_machine["authorized_keys"].write_text(local_key().public_line + "\n")
    return home


@pytest.fixture(scope="module")
def template(tmp_path_factory, lab_machine):
    index, folder = locked_template(tmp_path_factory, (
        f'[devbox]\nprovider = "ssh"\nhost = "{lab_machine["host"]}"\nport = {lab_machine["port"]}\n'
        f'user = "{lab_machine["user"]}"\n'))
    yield folder
    index.close()


@pytest.fixture
def project(tmp_path, template):
    folder = tmp_path / "proj"
    shutil.copytree(template, folder)
    return folder


def provider(project: Path):
    from mlenv.boxes.ssh import SSHProvider
    from mlenv.spec import load_spec

    return SSHProvider(load_spec(project))


def request(name: str = "lab1", **fields):
    from mlenv.boxes.model import UpRequest

    return UpRequest(name=name, **fields)


def eventually(check, seconds: float = 30) -> bool:
    """Processes started in the background take a moment to appear (or to go): poll for it."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def watchdogs(uid: int) -> list[str]:
    return [line for line in cmdlines(uid) if line.startswith("python3 ") and "watchdog.py" in line]


def cmdlines(uid: int) -> list[str]:
    lines = []
    for pid in _processes_of(uid):
        try:
            lines.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            pass
    return lines


def test_an_unknown_host_key_is_shown_and_needs_yes(laptop, project, lab_machine):
    from mlenv.errors import UsageError

    with pytest.raises(UsageError, match="not in your known_hosts; it offers ssh-ed25519 SHA256:"):
        provider(project).up(request(), lambda line: None)
    assert not (lab_machine["home"] / ".mlenv").exists()  # nothing done before the key is trusted


def test_up_sets_the_box_up_over_ssh_and_the_watchdog_stops_what_mlenv_started(laptop, project, lab_machine):
    from mlenv.execute import run_python

    uid = pwd.getpwnam(lab_machine["user"]).pw_uid
    # the user's own known_hosts already trusts the machine: no question asked
    (laptop / ".ssh").mkdir()
    (laptop / ".ssh" / "known_hosts").write_text(
        f"[127.0.0.1]:{lab_machine['port']} {' '.join(lab_machine['host_key'])}\n")
    ssh_boxes = provider(project)
    box = ssh_boxes.up(request(max_lifetime_s=3600, poll_s=1), lambda line: None)
    assert (box.state, box.ssh_user, box.target) == ("running", lab_machine["user"], "cpu")
    assert box.host_keys == [" ".join(lab_machine["host_key"])]
    folder = lab_machine["home"] / ".mlenv" / "boxes" / "lab1"
    assert json.loads((folder / "box.json").read_text())["project"] == "demo"
    # the locked environment, and commands on the box run in it
    executor = provider(project).executor(box)
    assert run_python(executor, "import sys, tinylib, tinydep; print(sys.prefix, tinydep.__version__)").split() == \
        [str(folder / "venv"), "1.1"]
    # the watchdog: a user-level process with the box's settings, logging decisions in the box's folder
    assert eventually(lambda: len(watchdogs(uid)) == 1)
    running = watchdogs(uid)
    assert len(running) == 1 and "--action exit" in running[0] and f"--keepalive-dir {folder}/keepalive" in running[0]
    deadline = time.monotonic() + 30
    while not (folder / "watchdog.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert provider(project).watchdog_log("lab1").strip()
    # a keep-alive written through the box's executor lands where its watchdog looks
    from mlenv import boxes

    boxes.hold(executor, 60)
    assert float((folder / "keepalive" / "cli").read_text()) > time.time()
    # up again: the same box
    assert [b.name for b in provider(project).list()] == ["lab1"]
    again = provider(project).up(request(), lambda line: None)
    assert again.created == box.created and len(watchdogs(uid)) == 1
    # an SSH login is activity: no root here, so the user's own ~/.ssh/rc (which sshd runs at each login,
    # for commands too) records it where the box's watchdog reads it
    rc = lab_machine["home"] / ".ssh" / "rc"
    assert "--activity-dir " + str(lab_machine["home"] / ".mlenv" / "activity") in watchdogs(uid)[0]
    marker = lab_machine["home"] / ".mlenv" / "activity" / f"ssh-{uid}"
    before = marker.stat().st_mtime if marker.exists() else 0.0
    time.sleep(0.05)
    executor.run(["true"]).check("a login")
    assert marker.stat().st_mtime > before

    def login_seen() -> bool:
        decisions = [json.loads(line) for line in provider(project).watchdog_log("lab1").splitlines()]
        return any(d.get("signals", {}).get("login", {}).get("state") == "active" for d in decisions)
    assert eventually(login_seen, 15)
    provider(project).down("lab1")
    assert not folder.exists() and not watchdogs(uid)
    assert not rc.exists()  # mlenv made it for its last box on the machine: gone with it


@pytest.mark.docker
def test_when_the_watchdog_exits_what_mlenv_started_is_stopped_and_stop_start_down(laptop, project, lab_machine,
                                                                                   docker_client):
    from mlenv.boxes.model import UpRequest

    # the user docker answers for, with [devbox] docker = false (set once, as DevPod users set provider
    # options): a venv box all the same
    spec = project / "mlenv.toml"
    spec.write_text(spec.read_text().replace(f'user = "{lab_machine["user"]}"\n',
                                             f'user = "{lab_machine["docker_user"]}"\ndocker = false\n'))
    uid = pwd.getpwnam(lab_machine["docker_user"]).pw_uid
    ssh_boxes = provider(project)
    box = ssh_boxes.up(UpRequest(name="lab2", poll_s=1, assume_yes=True), lambda line: None)
    assert box.extra["mode"] == "venv" and not docker_client.containers.list(
        all=True, filters={"label": "mlenv.box=lab2"})
    from mlenv import connect

    connect.register(box, assume_yes=True)  # what `mlenv up` does after the provider's up: pins the key
    folder = lab_machine["docker_home"] / ".mlenv" / "boxes" / "lab2"
    executor = provider(project).executor(box)
    # a long job started in the box's environment (like a notebook kernel mlenv would start)
    executor.run(["sh", "-c", "nohup python -c 'import time; time.sleep(600)' >/dev/null 2>&1 &"]).check("job")
    assert eventually(lambda: any(line.startswith("python -c") and "sleep(600)" in line for line in cmdlines(uid)))
    # the watchdog decides to stop (idle, max lifetime: its own tests cover when); here it is told to
    watchdog_pid = next(pid for pid in _processes_of(uid)
                        if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"python3\0")
                        and b"watchdog.py" in Path(f"/proc/{pid}/cmdline").read_bytes())
    os.kill(watchdog_pid, signal.SIGTERM)
    # stopped by the watchdog's supervisor
    assert eventually(lambda: not any("sleep(600)" in line for line in cmdlines(uid)))
    assert provider(project).get("lab2").state == "stopped"
    assert '"event": "exit"' in provider(project).watchdog_log("lab2")
    started = provider(project).start("lab2", lambda line: None)
    assert started.state == "running" and eventually(lambda: len(watchdogs(uid)) == 1)
    provider(project).stop("lab2")
    assert provider(project).get("lab2").state == "stopped" and not watchdogs(uid)
    provider(project).down("lab2")
    assert provider(project).get("lab2") is None and not folder.exists()


def test_docker_required_but_not_answering_is_one_clear_error(laptop, project, lab_machine):
    """[devbox] docker = true: a user docker does not answer for gets the reason and the fix; nothing is made."""
    from mlenv.errors import UsageError

    spec = project / "mlenv.toml"
    spec.write_text(spec.read_text().replace('[devbox]\n', '[devbox]\ndocker = true\n'))
    with pytest.raises(UsageError, match="docker = true, but docker does not answer for") as info:
        provider(project).up(request("lab3", assume_yes=True), lambda line: None)
    assert "docker group" in (info.value.hint or "")
    assert not (lab_machine["home"] / ".mlenv" / "boxes" / "lab3").exists()


def test_a_missing_lock_or_pylock_is_exit_4_and_makes_nothing(laptop, project, lab_machine):
    from mlenv.errors import LockError

    (project / "pylock.cpu.toml").unlink()
    with pytest.raises(LockError, match="pylock.cpu.toml is missing") as info:
        provider(project).up(request("lab4", assume_yes=True), lambda line: None)
    (project / "mlenv.lock").unlink()
    with pytest.raises(LockError, match="no mlenv.lock in") as no_lock:
        provider(project).up(request("lab4", assume_yes=True), lambda line: None)
    assert info.value.exit_code == no_lock.value.exit_code == 4 and no_lock.value.hint == "run `mlenv lock` first"
    assert not (lab_machine["home"] / ".mlenv" / "boxes" / "lab4").exists()


def test_the_cli_as_the_readme_shows(laptop, project, lab_machine):
    """`[devbox] provider = "ssh"`, mlenv's key authorized on the machine, then `mlenv up --yes`,
    `ls`, `ssh -- CMD`, `doctor --box`, `stop`, `start`, `down` as a user types them."""
    def mlenv(*args: str, expect: int = 0):
        result = run_mlenv(*args, cwd=project, env={"HOME": str(laptop)})
        assert result.returncode == expect, result.stdout + result.stderr
        return result

    mlenv("up", "exp1", "--yes", "--idle", "30m")
    listed = json.loads(mlenv("ls", "--json", "--provider", "ssh").stdout)
    assert [(b["name"], b["provider"], b["state"], b["ssh_user"]) for b in listed] == \
        [("exp1", "ssh", "running", lab_machine["user"])]
    # the host key was pinned by `up --yes`: plain ssh through mlenv's entry, strict checking on
    assert mlenv("ssh", "exp1", "--", "echo", "hello from the lab").stdout.strip() == "hello from the lab"
    mlenv("doctor", "--box", "exp1")  # the lock's packages, found in the box's venv: clean
    mlenv("stop", "exp1")
    assert json.loads(mlenv("ls", "--json", "--provider", "ssh").stdout)[0]["state"] == "stopped"
    mlenv("start", "exp1")
    mlenv("down", "exp1", "--yes")
    assert json.loads(mlenv("ls", "--json", "--provider", "ssh").stdout) == []
    assert not (lab_machine["home"] / ".mlenv" / "boxes" / "exp1").exists()


# --- a machine where mlenv has root: /etc/ssh/sshrc is written there --------------------------------
# A container stands in for that machine, so its /etc (not this machine's) is the one changed: Debian's
# sshd and sudo in it, on this machine's network (its loopback port, and the package index the
# template locks against), mlenv logging in as root, as a user with passwordless sudo, and as one who
# also has their own ~/.ssh/rc.

ROOTED_MACHINE_IMAGE = """\
FROM {base}
RUN apt-get update -qq \\
    && apt-get install -y -qq --no-install-recommends openssh-server sudo >/dev/null \\
    && rm -rf /var/lib/apt/lists/*
RUN for user in admin rcuser guest; do useradd --create-home --shell /bin/sh --password '*' "$user"; done \\
    && printf '%s ALL=(ALL) NOPASSWD: ALL\\n' admin rcuser > /etc/sudoers.d/mlenv-test \\
    && chmod 440 /etc/sudoers.d/mlenv-test && mkdir -p /run/sshd
"""
# what the machine's admin already has in /etc/ssh/sshrc, and a user's own ~/.ssh/rc: mlenv keeps both
SITE_SSHRC = '# the site\'s own login hook\ntouch /tmp/site-rc-"$(id -u)"\n'
OWN_RC = '# my own rc\ntouch "$HOME/own-rc-ran"\n'


class RootedMachine:
    def __init__(self, container, port: int) -> None:
        self.container, self.port = container, port

    def sh(self, script: str, user: str = "root") -> str:
        result = self.container.exec_run(["sh", "-c", script], user=user)
        assert result.exit_code == 0, result.output.decode()
        return result.output.decode()

    def read(self, path: str) -> str:
        return self.sh(f"cat {path}")

    def uid(self, user: str) -> int:
        return int(self.sh(f"id -u {user}"))

    def mtime(self, path: str) -> float:
        return float(self.sh(f"stat -c %.9Y {path} 2>/dev/null || echo 0"))

    def login_counted(self, log: str, uid: int, after: float, seconds: float = 20) -> bool:
        """The box's watchdog (its log read through the engine: reading it over SSH would be a login
        itself) reports an SSH login of ``uid`` later than ``after``."""
        def seen() -> bool:
            for line in self.sh(f"cat {log} 2>/dev/null || true").splitlines():
                poll = json.loads(line)
                login = poll.get("signals", {}).get("login", {})
                mark, _, ago = login.get("detail", "").partition(" ")  # "ssh-UID 3s ago"
                if login.get("state") == "active" and mark == f"ssh-{uid}" and \
                        poll["t"] - int(ago.split("s")[0]) >= after:
                    return True
            return False
        return eventually(seen, seconds)


@pytest.fixture(scope="module")
def rooted_machine(docker_client, build_cli, base_image):
    build = subprocess.run([build_cli, "build", "--quiet", "--network", "host", "-t",
                            f"mlenv-sshroot-machine:{os.getpid()}", "-"],
                           input=ROOTED_MACHINE_IMAGE.format(base=base_image), capture_output=True, text=True,
                           env={**os.environ, "DOCKER_BUILDKIT": "1"}, timeout=600)
    require(build.returncode == 0 or "deb.debian.org" not in build.stderr, "the Debian mirror (sshd and sudo)")
    assert build.returncode == 0, build.stderr
    port = _free_port()
    container = docker_client.containers.run(
        f"mlenv-sshroot-machine:{os.getpid()}", name=f"mlenv-sshroot-{os.getpid()}", network_mode="host",
        detach=True, command=["/usr/sbin/sshd", "-D", "-e", "-p", str(port), "-o", "ListenAddress=127.0.0.1",
                              "-o", "AuthorizedKeysFile=/etc/ssh/authorized_keys", "-o", "UsePAM=no",
                              "-o", "PermitRootLogin=prohibit-password", "-o", "PasswordAuthentication=no",
                              "-o", "HostKey=/etc/ssh/ssh_host_ed25519_key"])
    try:
        machine = RootedMachine(container, port)
        machine.sh(f"printf %s {shlex.quote(SITE_SSHRC)} > /etc/ssh/sshrc")
        machine.sh(f"mkdir -p ~/.ssh && printf %s {shlex.quote(OWN_RC)} > ~/.ssh/rc", user="rcuser")
        assert eventually(lambda: _answers_ssh(port), 30), container.logs().decode()[-2000:]
        yield machine
    finally:
        container.remove(force=True)
        docker_client.images.remove(f"mlenv-sshroot-machine:{os.getpid()}", force=True)


def _answers_ssh(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            return sock.recv(4).startswith(b"SSH-")
    except OSError:
        return False


@pytest.fixture
def rooted(laptop, template, tmp_path, rooted_machine):
    """``rooted(user)``: a copy of the project whose [devbox] is ``user`` on the rooted machine, this
    laptop's key authorized there and the machine's host key in the user's own known_hosts."""
    from mlenv.connect.keys import local_key

    rooted_machine.sh(f"printf '%s\\n' {shlex.quote(local_key().public_line)} > /etc/ssh/authorized_keys")
    host_key = rooted_machine.read("/etc/ssh/ssh_host_ed25519_key.pub").split()[:2]
    (laptop / ".ssh").mkdir(exist_ok=True)
    (laptop / ".ssh" / "known_hosts").write_text(f"[127.0.0.1]:{rooted_machine.port} {' '.join(host_key)}\n")

    def project_for(user: str) -> Path:
        folder = tmp_path / f"proj-{user}"
        shutil.copytree(template, folder)
        spec = folder / "mlenv.toml"
        text = re.sub(r"\nport = \d+\nuser = \"[^\"]+\"\n", f'\nport = {rooted_machine.port}\nuser = "{user}"\n',
                      spec.read_text())
        spec.write_text(text)
        return folder
    return project_for


def interrupt_at(step: str):
    """A progress callback that presses Ctrl-C when `up` reports ``step``."""
    def progress(line: str) -> None:
        if line.startswith(step):
            raise KeyboardInterrupt
    return progress


def ssh_login(laptop: Path, port: int, user: str) -> None:
    """A login as ``user`` with OpenSSH, as a person would (not through mlenv)."""
    from mlenv.connect.keys import local_key

    result = subprocess.run(["ssh", "-i", str(local_key().private_path), "-p", str(port), "-o", "BatchMode=yes",
                             "-o", f"UserKnownHostsFile={laptop / '.ssh' / 'known_hosts'}", f"{user}@127.0.0.1",
                             "true"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.mark.docker
@pytest.mark.network
def test_with_root_or_sudo_the_machines_sshrc_counts_logins_until_the_last_box_is_down(
        rooted, laptop, rooted_machine):
    from mlenv.boxes.model import ACTIVITY_DIR

    machine = rooted_machine
    as_root, as_admin = rooted("root"), provider(rooted("admin"))

    def mlenv_as_root(*args: str) -> subprocess.CompletedProcess:
        result = run_mlenv(*args, cwd=as_root, env={"HOME": str(laptop)})
        assert result.returncode == 0, result.stdout + result.stderr
        return result

    # root's box as the README shows (`user = "root"`)
    assert "SSH logins count as activity: /etc/ssh/sshrc" in mlenv_as_root("up", "r1", "--yes").stderr
    # Ctrl-C during admin's first `up`: what it added is taken back, root's box still has the block
    with pytest.raises(KeyboardInterrupt):
        as_admin.up(request("s1", poll_s=1), interrupt_at("syncing target"))
    assert machine.sh("ls /var/lib/mlenv/sshrc-boxes").split() == ["root.r1"]
    said: list[str] = []
    as_admin.up(request("s1", poll_s=1), said.append)
    assert "SSH logins count as activity: /etc/ssh/sshrc" in said
    assert machine.sh("ls /var/lib/mlenv/sshrc-boxes").split() == ["admin.s1", "root.r1"]
    # the machine's file: the site's lines kept, mlenv's block once, touching the shared activity folder
    sshrc = machine.read("/etc/ssh/sshrc")
    assert sshrc.startswith(SITE_SSHRC) and sshrc.count("# >>> mlenv") == 1
    assert f'touch {ACTIVITY_DIR}/"ssh-$(id -u)"' in sshrc
    for user, name in (("root", "r1"), ("admin", "s1")):
        home = machine.sh(f"printf %s ~{user}")
        assert json.loads(machine.read(f"{home}/.mlenv/boxes/{name}/box.json"))["sshrc"] == "/etc/ssh/sshrc"
    # anyone's login (here a user with no rc of their own) marks the folder both boxes' watchdogs read
    # (admin's polls every second: it reports the login), and the site's hook still runs
    watchdogs = [line for line in machine.sh("for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done")
                 .splitlines() if line.startswith("python3 ") and "watchdog.py" in line]
    assert len(watchdogs) == 2 and all(f"--activity-dir {ACTIVITY_DIR} " in line for line in watchdogs)
    guest = machine.uid("guest")
    before = time.time() - 1
    ssh_login(laptop, machine.port, "guest")
    assert machine.mtime(f"{ACTIVITY_DIR}/ssh-{guest}") > before
    assert machine.mtime(f"/tmp/site-rc-{guest}") > before
    assert machine.login_counted("/home/admin/.mlenv/boxes/s1/watchdog.jsonl", guest, before)
    # root's box goes: admin's box still relies on the block
    mlenv_as_root("down", "r1", "--yes")
    assert not machine.sh("ls /root/.mlenv/boxes")
    assert "# >>> mlenv" in machine.read("/etc/ssh/sshrc")
    before = time.time() - 1
    time.sleep(0.05)
    ssh_login(laptop, machine.port, "guest")
    assert machine.login_counted("/home/admin/.mlenv/boxes/s1/watchdog.jsonl", guest, before)
    # the last box on the machine goes: the file is the site's again, byte for byte and mode
    as_admin.down("s1")
    assert machine.read("/etc/ssh/sshrc") == SITE_SSHRC
    assert machine.sh("stat -c %a /etc/ssh/sshrc").strip() == "644"


@pytest.mark.docker
@pytest.mark.network
def test_a_user_with_their_own_ssh_rc_is_counted_through_it(rooted, laptop, rooted_machine):
    """sshd runs ~/.ssh/rc instead of /etc/ssh/sshrc for a user who has one: even with sudo, mlenv's
    block goes there (next to the user's lines), and /etc/ssh/sshrc is left alone."""
    machine = rooted_machine
    boxes = provider(rooted("rcuser"))
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C during the first `up`: the user's rc is theirs again
        boxes.up(request("o1", poll_s=1), interrupt_at("syncing target"))
    assert machine.read("/home/rcuser/.ssh/rc") == OWN_RC
    said: list[str] = []
    boxes.up(request("o1", poll_s=1), said.append)
    assert "SSH logins count as activity: ~/.ssh/rc (yours)" in said
    assert machine.read("/etc/ssh/sshrc") == SITE_SSHRC
    rc = machine.read("/home/rcuser/.ssh/rc")
    assert rc.startswith(OWN_RC) and 'touch /home/rcuser/.mlenv/activity/"ssh-$(id -u)"' in rc
    uid = machine.uid("rcuser")
    before = time.time() - 1
    ssh_login(laptop, machine.port, "rcuser")
    assert machine.mtime("/home/rcuser/own-rc-ran") > before  # their own lines still run
    assert machine.login_counted("/home/rcuser/.mlenv/boxes/o1/watchdog.jsonl", uid, before)
    boxes.down("o1")
    assert machine.read("/home/rcuser/.ssh/rc") == OWN_RC
    assert machine.read("/etc/ssh/sshrc") == SITE_SSHRC


# --- docker mode: the machine's docker answers, so the box is a container there ---------------------
# One box for the module (the dev image build is the slow part: the docker provider's tests' project,
# so the same image); the "machine" is the sshd above, whose docker user's CLI reaches the shared
# engine, and the box's sshd is reached through it (ProxyJump).

DEVBOX = '\n[devbox]\nprovider = "ssh"\nhost = "{host}"\nport = {port}\nuser = "{user}"\n'


@pytest.fixture(scope="module")
def container_box(tmp_path_factory, lab_machine, docker_engine, docker_client, build_cli, base_image):
    """`mlenv up NAME --yes` on the machine, as the README shows; removed (container, volume, image)
    at the end whatever the tests did."""
    project = make_box_project(tmp_path_factory, "boxdemo", BOX_SPEC.format(base=base_image) + DEVBOX.format(
        host=lab_machine["host"], port=lab_machine["port"], user=lab_machine["docker_user"]), docker_engine,
        build_cli)
    from mlenv.connect.keys import local_key

    with pytest.MonkeyPatch.context() as patch:  # mlenv's key of this laptop home, authorized on the machine
        patch.setenv("HOME", project.env["HOME"])
        patch.setenv("MLENV_HOME", project.env["MLENV_HOME"])
        lab_machine["authorized_keys"].write_text(local_key().public_line + "\n")
    name = f"sd{os.getpid() % 100000}"
    up = project.mlenv("up", name, "--yes")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield project, name, up
    finally:
        project.mlenv("down", name, "--yes")
        for container in docker_client.containers.list(all=True, filters={"label": f"mlenv.box={name}"}):
            container.remove(force=True)
        for volume in docker_client.volumes.list(filters={"label": f"mlenv.box={name}"}):
            volume.remove(force=True)
        remove_project_images(docker_client, "boxdemo")


@pytest.mark.docker
@pytest.mark.network
def test_docker_mode_end_to_end_as_the_readme_shows(container_box, docker_client, lab_machine):
    project, name, up = container_box

    def mlenv(*args: str, expect: int = 0):
        result = project.mlenv(*args)
        assert result.returncode == expect, result.stdout + result.stderr
        return result

    assert "docker answers on 127.0.0.1: the box is a container there" in up.stderr
    # the docker provider's box, on the machine's engine: sshd published on its loopback only
    container = docker_client.containers.get(f"mlenv-box-{name}")
    assert container.labels["mlenv.provider"] == "ssh" and container.status == "running"
    assert container.attrs["HostConfig"]["PortBindings"]["22/tcp"][0]["HostIp"] == "127.0.0.1"
    assert docker_client.volumes.get(f"mlenv-box-{name}-work").attrs["Labels"]["mlenv.box"] == name
    # listed once, by the ssh provider: the docker provider (the same engine here) does not claim it
    boxes = [b for b in json.loads(mlenv("ls", "--json").stdout) if b["name"] == name]
    assert [(b["provider"], b["state"], b["region"]) for b in boxes] == [("ssh", "running", "127.0.0.1")]

    # `mlenv ssh NAME -- CMD` runs inside the container (its hostname, the image's venv and lock), with
    # the command's exit code; the login was activity for the box's watchdog (its /etc/ssh/sshrc)
    ran = mlenv("ssh", name, "--", "hostname; python -c 'import sys; print(sys.prefix)'; ls /opt/mlenv-lock; "
                "ls /var/lib/mlenv/activity; exit 3", expect=3)
    assert ran.stdout.split()[:3] == [name, "/opt/venv", "pylock.cpu.toml"], ran.stderr
    assert ran.stdout.split()[3].startswith("ssh-")
    # both hops pinned, the box reached through the machine
    config = (project.home / ".ssh" / "mlenv" / "config").read_text()
    assert f"Host mlenv-{name}.jump" in config and f"ProxyJump mlenv-{name}.jump" in config
    pins = (project.home / ".ssh" / "mlenv" / "known_hosts").read_text()
    assert f"mlenv-{name}.jump {' '.join(lab_machine['host_key'])}" in pins
    box_key = container.exec_run(["cat", "/etc/ssh/ssh_host_ed25519_key.pub"]).output.decode().split()[:2]
    assert f"mlenv-{name} {' '.join(box_key)}" in pins

    # a new key for the box: the container's sshd takes it, the machine keeps the key it authorizes
    mlenv("keys", "rotate", name)
    rotated = (project.home / ".ssh" / "mlenv" / "config").read_text()
    jump_key, new_key = [line.split()[1] for line in rotated.splitlines() if line.strip().startswith("IdentityFile")]
    assert jump_key != new_key and f"IdentityFile {jump_key}" in config

    # the rest of the commands, through the ssh provider (and the new key)
    mlenv("doctor", "--box", name)
    mlenv("keepalive", name, "--for", "10m")
    assert container.exec_run(["ls", "/var/lib/mlenv/keepalive"]).output.split() == [b"cli"]
    assert "start" in mlenv("logs", name).stdout
    mlenv("stop", name)
    container.reload()
    assert container.status == "exited"
    # start on connect: plain ssh (an IDE) brings the stopped box back, from outside the project too,
    # its ProxyCommand relaying through the machine
    mlenv("ssh-config", name, "--start-on-connect")
    resumed = subprocess.run(["ssh", "-F", str(project.home / ".ssh" / "mlenv" / "config"), "-o", "BatchMode=yes",
                              f"mlenv-{name}", "hostname"], capture_output=True, text=True, timeout=300,
                             cwd=project.home, env={**os.environ, **project.env})
    assert resumed.returncode == 0 and resumed.stdout.strip() == name, resumed.stderr
    mlenv("down", name, "--yes")
    assert not docker_client.containers.list(all=True, filters={"label": f"mlenv.box={name}"})
    assert not docker_client.volumes.list(filters={"label": f"mlenv.box={name}"})


@pytest.fixture
def other_engine(tmp_path, docker_engine):
    """A second Docker Engine that has none of this machine's images (images only: its own bridge, no
    iptables, so it touches nothing of the shared engine's), stopped afterwards.  Not --bridge=none:
    dockerd then deletes docker0, the shared engine's bridge (moby's removeDefaultBridgeInterface)."""
    require(bool(shutil.which("dockerd")), "dockerd (apt-get install docker.io)")
    require(bool(shutil.which("ip")), "ip (apt-get install iproute2)")
    import docker

    folder = Path(tempfile.mkdtemp(prefix="mlenv-engine2-"))
    socket_path = folder / "docker.sock"
    log = (folder / "log").open("w")
    bridge = f"mlenv-e{os.getpid() % 100000}"  # interface names have at most 15 characters
    subprocess.run(f"ip link add {bridge} type bridge && ip addr add 10.254.{os.getpid() % 250}.1/30 dev {bridge}",
                   shell=True, check=True)
    engine = subprocess.Popen(["dockerd", "--data-root", str(folder / "data"), "--exec-root", str(folder / "exec"),
                               "--pidfile", str(folder / "pid"), "-H", f"unix://{socket_path}", f"--bridge={bridge}",
                               "--iptables=false", "--ip-masq=false", "--ip-forward=false"],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    client = docker.DockerClient(base_url=f"unix://{socket_path}", version="auto") if eventually(
        socket_path.exists, 30) else None
    try:
        assert client is not None and eventually(lambda: _answers(client), 30), (folder / "log").read_text()[-2000:]
        yield client
    finally:
        engine.terminate()  # the engine this fixture started, by its pid
        try:
            engine.wait(timeout=30)
        except subprocess.TimeoutExpired:
            engine.kill()
            engine.wait()
        log.close()
        shutil.rmtree(folder, ignore_errors=True)
        subprocess.run(["ip", "link", "del", bridge], check=False)


def _answers(client) -> bool:
    try:
        return bool(client.ping())
    except Exception:  # noqa: BLE001 - not up yet
        return False


@pytest.mark.docker
def test_the_image_is_streamed_to_a_machine_that_lacks_it(docker_client, other_engine):
    """No registry: `docker save` here into the machine's `docker load`, once; the same image id there."""
    from mlenv.boxes.ssh_docker import ship_image

    tag = f"mlenv-ship-test:{os.getpid()}"
    docker_client.api.import_image_from_data(_tiny_image(), repository=tag.split(":")[0], tag=tag.split(":")[1])
    try:
        said: list[str] = []
        ship_image(tag, other_engine, said.append, where="the machine")
        assert other_engine.images.get(tag).id == docker_client.images.get(tag).id
        assert said[-1].startswith(f"sending {tag} to the machine")
        ship_image(tag, other_engine, said.append, where="the machine")
        assert said[-1] == f"the machine already has {tag}"  # not sent twice
    finally:
        docker_client.images.remove(tag, force=True)


@pytest.mark.docker
def test_with_a_registry_the_machine_pulls_the_image_by_digest(docker_client, other_engine, docker_registry):
    """[image] registry: the machine's engine pulls the pushed image by its digest, and names it by tag."""
    from mlenv.boxes.ssh_docker import pull_image

    tag = f"{docker_registry}/mlenv-pull-test:{os.getpid()}"
    docker_client.api.import_image_from_data(_tiny_image(), repository=tag.rpartition(":")[0],
                                             tag=tag.rpartition(":")[2])
    try:
        pushed = docker_client.images.push(tag.rpartition(":")[0], tag=tag.rpartition(":")[2], stream=True, decode=True)
        digest = next(line["aux"]["Digest"] for line in pushed if "aux" in line)
        said: list[str] = []
        assert pull_image(f"{tag}@{digest}", other_engine, said.append, where="the machine") == tag
        assert other_engine.images.get(tag).id == docker_client.images.get(tag).id
        assert f"{tag.rpartition(':')[0]}@{digest}" in other_engine.images.get(tag).attrs["RepoDigests"]
        assert said == [f"pulling {tag.rpartition(':')[0]}@{digest} on the machine"]
    finally:
        docker_client.images.remove(tag, force=True)


def _tiny_image() -> bytes:
    """A root filesystem of one file, for `docker import`: an image that takes no time to move."""
    import io
    import tarfile

    payload = io.BytesIO()
    with tarfile.open(fileobj=payload, mode="w") as archive:
        info = tarfile.TarInfo("hello.txt")
        info.size = 6
        archive.addfile(info, io.BytesIO(b"hello\n"))
    return payload.getvalue()
