"""connect (#11): pinned host keys, mlenv's ssh config, paramiko sessions, forwards, IDE links, keys.

Real parts: an OpenSSH server on loopback (started here, as ENVIRONMENT.md shows) and the real
OpenSSH client reading the config mlenv writes.  HOME and MLENV_HOME point at a temporary folder in
every test, so the real ~/.ssh is never read or written.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import secrets
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.conftest import require, run_mlenv, up

SSHD = "/usr/sbin/sshd"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    port: int
    base: Path
    user: str  # an ordinary account whose ~/.ssh/authorized_keys mlenv manages
    home: Path
    host_public: str  # "ssh-ed25519 AAAA..." of the server's host key
    root_keys: Path  # authorized keys of root (kept out of /root/.ssh)

    @property
    def user_keys(self) -> Path:
        return self.home / ".ssh" / "authorized_keys"

    def authorize_root(self, line: str) -> None:
        with open(self.root_keys, "a") as handle:
            handle.write(line + "\n")

    def authorize_user(self, line: str) -> None:
        self.user_keys.parent.mkdir(exist_ok=True, mode=0o700)
        with open(self.user_keys, "a") as handle:
            handle.write(line + "\n")
        for path in (self.user_keys.parent, self.user_keys):  # as the user would have them
            shutil.chown(path, self.user, self.user)


@pytest.fixture(scope="module")
def sshd():
    """A real sshd on 127.0.0.1 with a throwaway user account (removed afterwards)."""
    require(Path(SSHD).exists() and shutil.which("ssh") is not None, "OpenSSH (apt-get install openssh-server)")
    require(os.geteuid() == 0, "root, to start sshd and add a throwaway user")
    base = Path(tempfile.mkdtemp(prefix="mlenv-connect-"))
    base.chmod(0o755)
    user = "mlc" + secrets.token_hex(4)
    home = base / "home"
    subprocess.run(["useradd", "-m", "-d", str(home), "-s", "/bin/sh", user], check=True)
    subprocess.run(["usermod", "-p", "*", user], check=True)  # no password, but not "locked" for sshd
    Path("/run/sshd").mkdir(exist_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(base / "hostkey")], check=True)
    port = _free_port()
    (base / "root_keys").touch(mode=0o600)
    (base / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {base}/hostkey\nPidFile {base}/sshd.pid\n"
        "AuthorizedKeysFile .ssh/authorized_keys\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "StrictModes no\nUsePAM no\nAllowTcpForwarding yes\nLogLevel VERBOSE\n"
        f"Match User root\n    AuthorizedKeysFile {base}/root_keys\n")
    subprocess.run([SSHD, "-f", str(base / "sshd_config"), "-E", str(base / "sshd.log")], check=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    host_public = " ".join((base / "hostkey.pub").read_text().split()[:2])
    try:
        yield Server(port, base, user, home, host_public, base / "root_keys")
    finally:
        pid = (base / "sshd.pid").read_text().strip() if (base / "sshd.pid").exists() else ""
        if pid:
            os.kill(int(pid), 15)
        subprocess.run(["pkill", "-u", user], check=False)  # sessions the tests left (a jupyter server)
        subprocess.run(["userdel", "-r", "-f", user], check=False, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fake home (HOME) and mlenv data folder (MLENV_HOME): the real ~/.ssh is never touched."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLENV_HOME", str(tmp_path / "data"))
    (tmp_path / "home").mkdir()
    return tmp_path / "home"


def _box(server: Server, name: str = "t1", *, user: str = "root", trusted: bool = True):
    from mlenv.boxes.model import Box

    return Box(name=name, provider="ssh", state="running", ssh_host="127.0.0.1", ssh_port=server.port,
               ssh_user=user, host_keys=[server.host_public] if trusted else [])


def _ssh(home: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """The real OpenSSH client with the user's config file (HOME is fake; ssh reads ~ from passwd)."""
    return subprocess.run(["ssh", "-F", str(home / ".ssh" / "config"), "-o", "BatchMode=yes", *args],
                          capture_output=True, text=True, timeout=timeout, check=False)


# --- keys ---------------------------------------------------------------------------------------------

def test_local_key_is_an_openssh_ed25519_key_named_after_the_machine(home):
    from mlenv.connect.keys import local_key, machine_key_name

    key = local_key()
    assert stat.S_IMODE(key.private_path.stat().st_mode) == 0o600
    assert key.private_path.is_relative_to(Path(os.environ["MLENV_HOME"]))
    assert key.name == machine_key_name() and key.public_line.endswith(f" mlenv:{key.name}")
    # the real ssh-keygen reads the private file and derives the same public key
    derived = subprocess.run(["ssh-keygen", "-y", "-f", str(key.private_path)], capture_output=True, text=True,
                             check=True).stdout.split()[:2]
    assert derived == key.public_line.split()[:2] and derived[0] == "ssh-ed25519"
    assert local_key() == key  # created once, then reused
    assert machine_key_name("Alice's MacBook.local") == "alice-s-macbook"


def test_keys_ls_names_the_public_key_file_to_authorize(home):
    """The README's ssh provider setup: `mlenv keys ls` creates this machine's key and names the .pub
    file that `ssh-copy-id -i FILE user@host` lets in."""
    listed = run_mlenv("keys", "ls", env={"COLUMNS": "400"})
    assert listed.returncode == 0, listed.stderr
    public = Path(json.loads(run_mlenv("keys", "ls", "--json").stdout)["this_machine"]["public_key"])
    assert f"public key {public}" in listed.stderr
    assert public.suffix == ".pub" and public.is_relative_to(Path(os.environ["MLENV_HOME"]))
    # ssh-keygen derives the file's key from the private key mlenv logs in with
    private = subprocess.run(["ssh-keygen", "-y", "-f", str(public.with_suffix(""))], capture_output=True,
                             text=True, check=True).stdout.split()[:2]
    assert public.read_text().split()[:2] == private

# --- ssh config + host keys, checked by the real OpenSSH client ---------------------------------------

def test_registered_box_works_with_the_users_own_ssh_and_strict_checking(home, sshd):
    from mlenv import connect
    from mlenv.connect.keys import local_key

    sshd.authorize_root(local_key().public_line)
    result = connect.register(_box(sshd), assume_yes=False)
    assert result.pinned_by == "provider" and result.include.status == "added"
    options = dict(line.split(" ", 1) for line in _ssh(home, "-G", "mlenv-t1").stdout.splitlines() if " " in line)
    assert options["hostname"] == "127.0.0.1" and options["port"] == str(sshd.port) and options["user"] == "root"
    assert options["stricthostkeychecking"] == "true"
    assert options["userknownhostsfile"] == str(home / ".ssh" / "mlenv" / "known_hosts")
    assert options["identityfile"] == str(local_key().private_path)
    assert options["identitiesonly"] == "yes" and options["hostkeyalias"] == "mlenv-t1"
    assert options["serveraliveinterval"] == "30"
    done = _ssh(home, "mlenv-t1", "echo", "hello-from-box")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "hello-from-box"


def test_a_home_with_percent_and_spaces_still_gives_ssh_the_key_and_pins(tmp_path, monkeypatch, sshd):
    """ssh expands %-tokens in IdentityFile and UserKnownHostsFile (``%d`` is the home folder), splits
    on spaces and unescapes backslashes, and globs the Include path: a home like ``/home/Ana 100%``
    must still lead the user's own ssh to the key and pinned known_hosts mlenv wrote there."""
    from mlenv import connect
    from mlenv.connect.keys import local_key

    home = tmp_path / "Ana's 100%d [x]* a\\b $x"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for variable in ("MLENV_HOME", "XDG_DATA_HOME"):  # the key in its default place, under that home
        monkeypatch.delenv(variable, raising=False)
    sshd.authorize_root(local_key().public_line)
    assert local_key().private_path.is_relative_to(home)
    connect.register(_box(sshd), assume_yes=False)
    shown = _ssh(home, "-G", "mlenv-t1")
    options = dict(line.split(" ", 1) for line in shown.stdout.splitlines() if " " in line)
    assert options["hostname"] == "127.0.0.1", shown.stderr  # ~/.ssh/config's Include found mlenv's config
    assert options["userknownhostsfile"] == str(home / ".ssh" / "mlenv" / "known_hosts")
    done = _ssh(home, "-v", "mlenv-t1", "echo", "hello-from-box")
    assert f"Server accepts key: {local_key().private_path}" in done.stderr.replace("\\\\", "\\"), done.stderr
    assert done.returncode == 0 and done.stdout.strip() == "hello-from-box"
    connect.register(_box(sshd, "t2"), assume_yes=True)  # the escaped Include line is recognised: still one
    assert (home / ".ssh" / "config").read_text().count("Include ") == 1


def test_a_damaged_known_hosts_is_one_clear_message_and_its_hint_works(home, sshd):
    """mlenv's pinned host keys damaged by a copy or an editor (not UTF-8): the commands that read the
    pins name the file and the way out instead of a traceback, and the way out works."""
    from mlenv import connect
    from mlenv.connect.keys import local_key
    from mlenv.errors import SpecError

    sshd.authorize_root(local_key().public_line)
    connect.register(_box(sshd), assume_yes=True)
    known_hosts = home / ".ssh" / "mlenv" / "known_hosts"
    damaged = known_hosts.read_bytes().replace(b"AAAA", b"AA\xff\xfe", 1)
    known_hosts.write_bytes(damaged)
    result = run_mlenv("keys", "pin", "t1", "--yes")
    assert result.returncode == 3 and "Traceback" not in result.stderr, result.stderr
    assert f"{known_hosts} is corrupt (not UTF-8 text)" in result.stderr and "hint: move it aside" in result.stderr
    assert known_hosts.read_bytes() == damaged  # left for the user to look at
    known_hosts.rename(known_hosts.with_name("known_hosts.bad"))  # the hint, followed
    run_mlenv("keys", "pin", "t1", "--yes", check=True)
    done = _ssh(home, "mlenv-t1", "echo", "hello-from-box")
    assert done.returncode == 0 and done.stdout.strip() == "hello-from-box", done.stderr
    known_hosts.write_bytes(damaged)
    with pytest.raises(SpecError, match="not UTF-8"):  # `down` once the box is gone: its entry goes all the same
        connect.forget("t1")
    assert "mlenv-t1" not in (home / ".ssh" / "mlenv" / "config").read_text()


def test_changed_host_key_is_refused_by_ssh_and_by_mlenv(home, sshd):
    from mlenv import connect
    from mlenv.connect import hostkeys, session
    from mlenv.connect.keys import generate, local_key

    sshd.authorize_root(local_key().public_line)
    connect.register(_box(sshd), assume_yes=True)
    impostor = generate("impostor").public  # the box "was re-created": another host key is pinned
    hostkeys.pin("t1", [impostor])
    refused = _ssh(home, "mlenv-t1", "true")
    assert refused.returncode == 255 and "REMOTE HOST IDENTIFICATION HAS CHANGED" in refused.stderr
    with pytest.raises(hostkeys.HostKeyChanged) as raised:
        session.Session(connect.endpoint(_box(sshd, trusted=False))[0])
    assert raised.value.exit_code == 6 and "mlenv keys pin t1" in raised.value.hint
    with pytest.raises(hostkeys.HostKeyChanged):  # registering again never re-pins silently
        connect.register(_box(sshd, trusted=False), assume_yes=True)
    assert [key.line(comment=False) for key in hostkeys.pinned("t1")] == [impostor.line(comment=False)]
    # the way out the message names, as a user runs it
    repinned = run_mlenv("keys", "pin", "t1", "--yes")
    assert repinned.returncode == 0, repinned.stderr
    assert _ssh(home, "mlenv-t1", "true").returncode == 0


def test_unknown_host_key_is_pinned_only_after_confirmation(home, sshd):
    from mlenv import connect
    from mlenv.connect import hostkeys

    shown = []
    with pytest.raises(connect.HostKeyNotConfirmed):
        connect.register(_box(sshd, trusted=False), confirm=lambda question: shown.append(question) or False)
    assert hostkeys.pinned("t1") == []
    expected = subprocess.run(["ssh-keygen", "-lf", str(sshd.base / "hostkey.pub")], capture_output=True,
                              text=True, check=True).stdout.split()[1]
    assert expected in shown[0]  # the fingerprint ssh-keygen prints for the server's key
    registered = connect.register(_box(sshd, trusted=False), confirm=lambda question: True)
    assert registered.pinned_by == "confirmed"
    assert [key.line() for key in hostkeys.pinned("t1")] == [sshd.host_public]


def test_include_line_keeps_the_users_config_byte_for_byte(home, sshd):
    from mlenv import connect
    from mlenv.connect import sshconfig

    user_config = home / ".ssh" / "config"
    user_config.parent.mkdir(mode=0o700)
    original = b"# my config\r\nHost work\n\tHostName 10.0.0.1 # tabs, CRLF, no final newline\n  User me"
    user_config.write_bytes(original)
    user_config.chmod(0o640)
    plan = sshconfig.ensure_include(dry_run=True)
    assert plan.status == "would-add" and "+Include " in plan.diff and user_config.read_bytes() == original
    connect.register(_box(sshd), assume_yes=True)
    data = user_config.read_bytes()
    include = f"Include {home}/.ssh/mlenv/config\n".encode()
    assert data == include + original
    assert stat.S_IMODE(user_config.stat().st_mode) == 0o640
    connect.register(_box(sshd, "t2"), assume_yes=True)  # idempotent: still one line
    assert user_config.read_bytes() == include + original
    assert _ssh(home, "-G", "work").stdout.count("hostname 10.0.0.1") == 1  # the user's host still resolves


def test_read_only_or_symlinked_config_gets_the_line_to_add_by_hand(home, sshd):
    from mlenv import connect

    user_config = home / ".ssh" / "config"
    user_config.parent.mkdir(mode=0o700)
    user_config.write_text("Host *\n    ForwardAgent no\n")
    user_config.chmod(0o444)
    warnings = []
    result = connect.register(_box(sshd), assume_yes=True, warn=warnings.append)
    assert result.include.status == "manual" and "read-only" in warnings[0]
    assert f"Include {home}/.ssh/mlenv/config" in warnings[0]
    assert user_config.read_text() == "Host *\n    ForwardAgent no\n"
    user_config.chmod(0o600)
    user_config.rename(home / "dotfiles-config")
    user_config.symlink_to(home / "dotfiles-config")
    result = connect.register(_box(sshd), assume_yes=True)
    assert result.include.status == "manual" and "symlink" in result.include.reason
    assert user_config.is_symlink()


def test_user_blocks_that_override_mlenv_are_warned_about(home, sshd):
    from mlenv import connect

    user_config = home / ".ssh" / "config"
    user_config.parent.mkdir(mode=0o700)
    user_config.write_text("Host * !mlenv-*\n    ProxyJump ignored\n\nHost *\n    ProxyJump bastion\n")
    warnings = []
    connect.register(_box(sshd), assume_yes=True, warn=warnings.append)
    assert len(warnings) == 1 and "ProxyJump" in warnings[0] and "config:6 (in `Host *` at line 5)" in warnings[0]
    # a block *before* the Include line wins for options mlenv sets too (ssh keeps the first value)
    include = user_config.read_text().splitlines()[0]
    user_config.write_text(f"Match all\n    User someone\n{include}\n")
    assert sshconfig_overrides("t1") and "move the Include line to the top" in sshconfig_overrides("t1")[0]
    assert _ssh(home, "-G", "mlenv-t1").stdout.count("user someone") == 1  # what the warning is about


def sshconfig_overrides(name):
    from mlenv.connect.sshconfig import overrides

    return overrides(name)


@pytest.mark.parametrize("field,value", [
    ("name", "t1\n    ProxyCommand touch /tmp/pwned"),
    ("ssh_host", "127.0.0.1 -oProxyCommand=x"),
    ("ssh_host", "127.0.0.1\nProxyCommand x"),
    ("ssh_user", "root\n    ProxyCommand x"),
    ("ssh_user", "root other"),
])
def test_hostile_values_never_reach_the_ssh_config(home, sshd, field, value):
    from mlenv import connect
    from mlenv.errors import MlenvError

    hostile = _box(sshd)
    setattr(hostile, field, value)
    with pytest.raises(MlenvError):
        connect.register(hostile, assume_yes=True)
    assert not (home / ".ssh" / "mlenv" / "config").exists()


def _valid_or_spiked(valid: st.SearchStrategy) -> st.SearchStrategy:
    """Valid values, valid values with anything appended (newlines, spaces, quotes), and any text."""
    return st.one_of(valid, st.tuples(valid, st.text(max_size=12)).map("".join), st.text(max_size=30))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=_valid_or_spiked(st.from_regex(r"[a-z][a-z0-9-]{0,30}", fullmatch=True)),
       host=_valid_or_spiked(st.one_of(st.ip_addresses().map(str),
                                       st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z]{2,5})?",
                                                     fullmatch=True))),
       user=_valid_or_spiked(st.from_regex(r"[a-z_][a-z0-9_-]{0,12}", fullmatch=True)),
       port=st.integers(min_value=-5, max_value=70000))
def test_whatever_is_accepted_renders_as_exactly_one_host_block(home, name, host, user, port):
    """Property: any value the registry accepts renders to the fixed set of lines, one keyword and
    one value each; anything that could add a line, a word or an option is refused."""
    from mlenv.connect import sshconfig
    from mlenv.connect.registry import Record
    from mlenv.errors import MlenvError

    try:
        record = Record(name=name, provider="ssh", host=host, port=port, user=user, identity="/k/id")
    except MlenvError:
        event("refused")
        return
    event("accepted")
    lines = sshconfig.render_block(record).splitlines()
    assert lines[0] == f"Host mlenv-{name}" and len(lines[0].split()) == 2
    keywords = [line.split()[0] for line in lines[1:]]
    assert keywords == ["HostName", "Port", "User", "IdentityFile", "IdentitiesOnly", "HostKeyAlias",
                        "UserKnownHostsFile", "StrictHostKeyChecking", "CheckHostIP", "UpdateHostKeys",
                        "ServerAliveInterval", "ServerAliveCountMax"]
    assert all(len(line.split()) == 2 for line in lines)


def test_entry_follows_a_new_address_and_keeps_the_pin(home, sshd):
    """After a stop/start the box answers elsewhere (here: the same sshd, host key and all, on a new
    port): the entry moves, the pinned key stays and is still checked, nothing is asked again."""
    from mlenv import connect
    from mlenv.connect import hostkeys
    from mlenv.connect.keys import local_key

    sshd.authorize_root(local_key().public_line)
    connect.register(_box(sshd, trusted=False), assume_yes=True)
    pinned = hostkeys.pinned("t1")
    new_port = _free_port()
    pid_file = sshd.base / "moved.pid"
    subprocess.run([SSHD, "-f", str(sshd.base / "sshd_config"), "-o", f"Port={new_port}",
                    "-o", f"PidFile={pid_file}"], check=True)
    try:
        moved = _box(sshd, trusted=False)
        moved.ssh_port = new_port
        again = connect.register(moved, confirm=lambda question: pytest.fail("asked again"))
        assert again.pinned_by == "already pinned" and hostkeys.pinned("t1") == pinned
        assert f"Port {new_port}\n" in (home / ".ssh" / "mlenv" / "config").read_text()
        assert _ssh(home, "-G", "mlenv-t1").stdout.count(f"port {new_port}\n") == 1
        assert _ssh(home, "mlenv-t1", "true").returncode == 0
    finally:
        for _ in range(50):
            if pid_file.exists():
                os.kill(int(pid_file.read_text()), 15)
                break
            time.sleep(0.1)


def test_forget_removes_the_entry_and_the_pin(home, sshd):
    from mlenv import connect
    from mlenv.connect import hostkeys

    connect.register(_box(sshd), assume_yes=True)
    connect.register(_box(sshd, "t2"), assume_yes=True)
    assert connect.forget("t1") is True
    config = (home / ".ssh" / "mlenv" / "config").read_text()
    assert "Host mlenv-t1\n" not in config and "Host mlenv-t2\n" in config
    assert hostkeys.pinned("t1") == [] and hostkeys.pinned("t2")
    assert connect.forget("t1") is False


# --- paramiko sessions -----------------------------------------------------------------------------

def test_session_streams_output_and_returns_the_remote_exit_code(home, sshd):
    from mlenv import connect
    from mlenv.connect.keys import local_key

    sshd.authorize_root(local_key().public_line)
    out, err = [], []
    with connect.open_session(_box(sshd)) as ssh:
        code = ssh.run("echo out; echo err >&2; exit 7", stdout=out.append, stderr=err.append)
        assert (code, b"".join(out), b"".join(err)) == (7, b"out\n", b"err\n")
        code, out, _ = ssh.capture("cat; echo \"$GREETING\"", input=b"piped\n", env={"GREETING": "hi there"})
        assert code == 0 and out == b"piped\nhi there\n"
        # streamed: the first line arrives while the command still runs, not when it ends
        arrivals = []
        started = time.monotonic()
        ssh.run("echo first; sleep 2; echo second", stdout=lambda chunk: arrivals.append(time.monotonic()))
        assert arrivals and arrivals[0] - started < time.monotonic() - started - 1.0


def test_wait_for_ssh_times_out_with_a_clear_error():
    from mlenv.connect.session import wait_for_ssh
    from mlenv.errors import ToolMissingError

    started = time.monotonic()
    with pytest.raises(ToolMissingError) as raised:
        wait_for_ssh("127.0.0.1", _free_port(), timeout=1.5, name="gone")
    assert time.monotonic() - started < 8
    assert raised.value.exit_code == 6 and "'gone' did not answer SSH" in raised.value.message


def test_port_forward_fetches_a_page_from_the_box_side(home, sshd, tmp_path):
    from mlenv import connect
    from mlenv.connect.keys import local_key

    sshd.authorize_root(local_key().public_line)
    (tmp_path / "index.html").write_text("served on the box")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with connect.open_session(_box(sshd)) as ssh, ssh.forward(server.server_address[1]) as tunnel:
            assert tunnel.local_port != server.server_address[1]
            for _ in range(2):  # two connections through the same tunnel
                with urllib.request.urlopen(f"http://127.0.0.1:{tunnel.local_port}/index.html", timeout=10) as page:
                    assert page.read() == b"served on the box"
    finally:
        server.shutdown()


# --- IDE links -----------------------------------------------------------------------------------------

def test_code_prints_the_remote_ssh_link_when_no_ide_is_installed(home, sshd):
    from mlenv import connect

    connect.register(_box(sshd), assume_yes=True)
    env = {"PATH": "/usr/bin:/bin"}  # no `code` here (and none on test machines)
    shown = run_mlenv("code", "t1", env=env)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == "vscode-remote://ssh-remote+mlenv-t1/root"
    assert "not installed" in shown.stderr
    folder = run_mlenv("code", "t1", "/srv/my project", "--ide", "cursor", "--print", env=env)
    assert folder.stdout.strip() == "vscode-remote://ssh-remote+mlenv-t1/srv/my%20project"
    gateway = run_mlenv("code", "t1", "--ide", "jetbrains", "--print", env=env).stdout.strip()
    assert gateway.startswith("jetbrains-gateway://connect#type=ssh&deploy=false&host=mlenv-t1&")
    assert f"port={sshd.port}" in gateway and "projectPath=%2Froot" in gateway
    unknown = run_mlenv("code", "nope", env=env)
    assert unknown.returncode == 2 and "t1" in unknown.stderr


def test_code_runs_the_ide_cli_with_the_folder_uri(home, sshd, tmp_path):
    from mlenv import connect

    connect.register(_box(sshd), assume_yes=True)
    fake_bin = tmp_path / "bin"  # stands in for VS Code's `code` launcher: records its arguments
    fake_bin.mkdir()
    (fake_bin / "code").write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {tmp_path}/args\n")
    (fake_bin / "code").chmod(0o755)
    opened = run_mlenv("code", "t1", "/work", env={"PATH": f"{fake_bin}:/usr/bin:/bin"})
    assert opened.returncode == 0, opened.stderr
    assert (tmp_path / "args").read_text().split() == ["--folder-uri", "vscode-remote://ssh-remote+mlenv-t1/work"]


# --- keys per laptop ----------------------------------------------------------------------------------

def _user_box(sshd):
    """The throwaway account's box: its ~/.ssh/authorized_keys is what mlenv manages."""
    from mlenv.connect.keys import local_key

    sshd.user_keys.unlink(missing_ok=True)
    sshd.authorize_user(local_key().public_line)
    return _box(sshd, "u1", user=sshd.user)


def _logs_in(home: Path, sshd, key: Path) -> bool:
    """Does this one key (and no other) log in to the box?  ssh without any config file."""
    return subprocess.run(
        ["ssh", "-F", "none", "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
         "-o", "StrictHostKeyChecking=yes", "-o", "HostKeyAlias=mlenv-u1",
         "-o", f"UserKnownHostsFile={home}/.ssh/mlenv/known_hosts", "-p", str(sshd.port),
         f"{sshd.user}@127.0.0.1", "true"], capture_output=True, timeout=30, check=False).returncode == 0


def test_keys_rotate_replaces_the_key_on_the_box(home, sshd):
    from mlenv import connect
    from mlenv.connect.keys import local_key

    connect.register(_user_box(sshd), assume_yes=True)
    old = local_key()
    assert _ssh(home, "mlenv-u1", "true").returncode == 0
    rotated = run_mlenv("keys", "rotate", "u1")
    assert rotated.returncode == 0, rotated.stderr
    new = local_key()
    assert new.private_path != old.private_path and new.name == old.name
    assert _ssh(home, "mlenv-u1", "true").returncode == 0  # the ssh config now names the new key
    assert _logs_in(home, sshd, new.private_path)
    assert not old.private_path.exists()  # no box uses it any more
    assert old.public_line.split()[1] not in sshd.user_keys.read_text()
    listed = run_mlenv("keys", "ls", "--json")
    boxes = {item["box"]: item for item in __import__("json").loads(listed.stdout)["boxes"]}
    assert [key["fingerprint"] for key in boxes["u1"]["keys"]] == [new.fingerprint]


def test_keys_revoke_removes_a_lost_laptops_key_from_every_box(home, sshd, tmp_path):
    from mlenv import connect
    from mlenv.connect import keys

    user_box = _user_box(sshd)
    lost = keys.generate("lost-laptop")  # another machine's key, installed on the box earlier
    sshd.authorize_user('from="127.0.0.1" ' + lost.public_line)  # options before the key are understood
    sshd.authorize_user("# a comment the user wrote")
    connect.register(user_box, assume_yes=True)
    assert _logs_in(home, sshd, lost.private_path)
    listed = run_mlenv("keys", "ls")
    assert "lost-laptop" in listed.stdout and "(this machine)" in listed.stdout
    revoked = run_mlenv("keys", "revoke", "lost-laptop", "--yes")
    assert revoked.returncode == 0, revoked.stderr
    assert not _logs_in(home, sshd, lost.private_path)
    assert _ssh(home, "mlenv-u1", "true").returncode == 0  # this machine still gets in
    assert "# a comment the user wrote" in sshd.user_keys.read_text()
    assert stat.S_IMODE(sshd.user_keys.stat().st_mode) == 0o600
    own = run_mlenv("keys", "revoke", keys.local_key().name, "--yes")
    assert own.returncode == 2 and "lock this machine out" in own.stderr


def _listening(port: int) -> list[str]:
    """The addresses sockets listen on at ``port`` (the kernel's /proc/net/tcp{,6} tables)."""
    import ipaddress

    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A = LISTEN
                raw = bytes.fromhex(address)
                # the kernel prints each 32-bit word in host (little-endian) order
                ordered = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                found.append(str(ipaddress.ip_address(ordered)))
    return found


# --- jupyter -------------------------------------------------------------------------------------------

def test_jupyter_is_forwarded_with_a_token_and_loopback_only(home, sshd):
    import json
    import signal
    import sys

    from mlenv import connect
    from mlenv.connect.keys import local_key

    require(shutil.which("jupyter-server") is not None or __import__("importlib").util.find_spec("jupyter_server"),
            "jupyter_server (pip install -e .[test])")
    sshd.authorize_root(local_key().public_line)
    connect.register(_box(sshd), assume_yes=True)
    argv = [sys.executable, "-m", "mlenv", "jupyter", "t1", "--no-browser", "--python", sys.executable]
    try:
        for attempt in ("started", "reused"):
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                url = proc.stdout.readline().strip()
                assert url.startswith("http://127.0.0.1:") and "?token=" in url, proc.stderr.read()
                token = url.split("?token=")[1]
                assert len(token) >= 32
                base = url.split("?")[0].rstrip("/")
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=20) as answer:
                    assert answer.status == 200 and "started" in json.loads(answer.read())
                with pytest.raises(urllib.error.HTTPError) as refused:  # no token: no access
                    urllib.request.urlopen(f"{base}/api/status", timeout=20)
                assert refused.value.code == 403
            finally:
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout=20)
            if attempt == "started":
                first_token = token
        assert token == first_token  # the second run found the running server
        # on the box: the server has a token and listens on loopback only
        box_home = {**os.environ, "HOME": __import__("pwd").getpwuid(0).pw_dir}  # root's, as sshd sets it
        servers = subprocess.run([sys.executable, "-m", "jupyter_server", "list", "--json"], capture_output=True,
                                 text=True, check=True, env=box_home).stdout.splitlines()
        ours = [item for item in map(json.loads, servers) if item["token"] == token]
        assert len(ours) == 1 and ours[0]["hostname"] == "127.0.0.1"
        assert _listening(ours[0]["port"]) == ["127.0.0.1"]
    finally:
        stopped = run_mlenv("jupyter", "t1", "--stop")
        assert stopped.returncode == 0, stopped.stderr


def test_ssh_executor_keeps_the_executor_contract(home, sshd):
    from mlenv import connect
    from mlenv.connect.keys import local_key
    from mlenv.execute import SSHExecutor, copy_tree_from, run_python, write_file

    sshd.authorize_user(local_key().public_line)
    user_box = _box(sshd, "u1", user=sshd.user)
    connect.register(user_box, assume_yes=True)
    executor = SSHExecutor(user_box)
    try:
        assert executor.where == "box u1"
        done = executor.run(["sh", "-c", 'echo "$1 $GREETING"; echo oops >&2; exit 3', "sh", "it's"],
                            env={"GREETING": "a b"})
        assert (done.returncode, done.text, done.error_text) == (3, "it's a b\n", "oops\n")
        assert executor.run(["no-such-program-here"]).returncode == 127
        assert executor.run(["cat"], input=b"stdin\n").stdout == b"stdin\n"
        assert run_python(executor, "print(6 * 7)", python="/usr/bin/python3").strip() == "42"
        write_file(executor, f"{sshd.home}/sub/file.txt", b"written over ssh")
        copied = copy_tree_from(executor, f"{sshd.home}/sub", home / "copy")
        assert [path.read_bytes() for path in copied] == [b"written over ssh"]
    finally:
        executor.close()


# --- end to end with the docker provider ------------------------------------------------------------------

@pytest.mark.docker
@pytest.mark.network  # the dev image's tools stage installs uv from PyPI
def test_docker_box_plain_ssh_code_link_start_on_connect_rotate_and_down(box_project, box):
    project = box_project
    user_config = project.home / ".ssh" / "config"
    planned = project.mlenv("up", box, "--provider", "docker", "--dry-run")
    assert planned.returncode == 0, planned.stderr
    assert f"+Include {project.home}/.ssh/mlenv/config" in planned.stdout and not user_config.exists()
    up(project, box)  # README: `mlenv up NAME --provider docker --yes` (+ this machine's build options)
    assert user_config.read_text().startswith(f"Include {project.home}/.ssh/mlenv/config\n")

    plain = subprocess.run(["ssh", "-F", str(user_config), "-o", "BatchMode=yes", f"mlenv-{box}", "true"],
                           capture_output=True, text=True, timeout=60, check=False)
    assert plain.returncode == 0, plain.stderr  # pinned through the engine: no question, strict checking
    code = project.mlenv("code", box)
    assert code.returncode == 0, code.stderr
    assert code.stdout.strip().startswith(f"vscode-remote://ssh-remote+mlenv-{box}/home/")
    assert code.stdout.strip().endswith("/work")

    # the box's keys file is the login user's to manage: rotate, and only the new key gets in
    old_key = json.loads(project.mlenv("keys", "ls", "--json").stdout)["this_machine"]["fingerprint"]
    rotated = project.mlenv("keys", "rotate", box)
    assert rotated.returncode == 0, rotated.stderr
    listed = json.loads(project.mlenv("keys", "ls", "--json").stdout)
    ours = next(item for item in listed["boxes"] if item["box"] == box)
    assert [key["fingerprint"] for key in ours["keys"]] == [listed["this_machine"]["fingerprint"]] != [old_key]
    assert subprocess.run(["ssh", "-F", str(user_config), "-o", "BatchMode=yes", f"mlenv-{box}", "true"],
                          capture_output=True, timeout=60, check=False).returncode == 0

    # start on connect: a stopped box comes back when an IDE (here: ssh) connects
    assert project.mlenv("ssh-config", box, "--start-on-connect").returncode == 0
    assert project.mlenv("stop", box).returncode == 0
    resumed = subprocess.run(["ssh", "-F", str(user_config), "-o", "BatchMode=yes", f"mlenv-{box}", "echo", "back"],
                             capture_output=True, text=True, timeout=300, check=False,
                             env={**os.environ, **project.env})
    assert resumed.returncode == 0 and resumed.stdout.strip() == "back", resumed.stderr

    assert project.mlenv("down", box, "--yes").returncode == 0
    assert f"Host mlenv-{box}\n" not in (project.home / ".ssh" / "mlenv" / "config").read_text()
    assert f"mlenv-{box} " not in (project.home / ".ssh" / "mlenv" / "known_hosts").read_text()
