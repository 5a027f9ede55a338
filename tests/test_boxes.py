"""Dev boxes: the provider-independent model, and the docker provider end to end on the real engine."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid

import pytest

from mlenv.boxes import Box, UpRequest, format_duration, parse_duration, provider, validate_box_name
from mlenv.errors import UsageError
from tests.conftest import BOX_SPEC, MINIMAL_SPEC, fresh_box, make_box_project, remove_project_images, run_mlenv, up


@pytest.mark.parametrize("name", ["a", "gpu1", "my-box-2", "a" * 31])
def test_valid_box_names(name):
    assert validate_box_name(name) == name


@pytest.mark.parametrize("name", ["", "1box", "Box", "a_b", "a.b", "a b", "a" * 32, "a\n", "-a", "a;rm", "ä"])
def test_invalid_box_names_are_usage_errors(name):
    with pytest.raises(UsageError):
        validate_box_name(name)
    with pytest.raises(UsageError):
        UpRequest(name)


def test_durations():
    assert [parse_duration(t) for t in ("45s", "30m", "2h", "1d", 20)] == [45, 1800, 7200, 86400, 20]
    for bad in ("", "30", "1h30m", "-5m", "0s", "2 h"):
        with pytest.raises(UsageError):
            parse_duration(bad)
    assert [format_duration(s) for s in (None, 5, 65, 3725, 90000)] == ["-", "5s", "1m05s", "1h02m", "1d01h"]


def test_cost_so_far_counts_running_time_only():
    box = Box("b", "aws", "running", price_per_hour=0.5, started=1000.0)
    assert box.cost_so_far(now=1000.0 + 7200) == 1.0
    assert box.to_json(now=1000.0 + 3600)["uptime_s"] == 3600
    stopped = Box("b", "aws", "stopped", price_per_hour=0.5, started=1000.0)
    assert stopped.uptime_s(now=5000.0) is None and stopped.cost_so_far(now=5000.0) == 0.0


def test_unknown_provider_is_a_usage_error_with_a_suggestion():
    with pytest.raises(UsageError, match="unknown box provider") as info:
        provider("dokcer")
    assert "docker" in (info.value.hint or "")


# --- the docker provider, end to end on the real engine -----------------------------------------------
# One dev image for the module (box_project, in conftest); each test makes its own box (seconds) and
# removes it.


def listed(project) -> dict:
    result = project.mlenv("ls", "--json")
    assert result.returncode == 0, result.stderr
    return {box["name"]: box for box in json.loads(result.stdout)}


def wait_state(project, name, state, within: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < within:
        if listed(project).get(name, {}).get("state") == state:
            return time.monotonic() - started
        time.sleep(1)
    raise AssertionError(f"box {name} not {state} within {within}s: {listed(project).get(name)}")


@pytest.mark.docker
@pytest.mark.network  # the dev image's tools stage installs uv from PyPI
def test_up_ssh_doctor_idle_stop_and_down(box_project, box, docker_client):
    project = box_project
    first = up(project, box, "--idle", "20s")
    assert "SSH ready" in first.stderr
    boxes = listed(project)
    assert boxes[box]["provider"] == "docker" and boxes[box]["state"] == "running"

    ssh = subprocess.run(project.ssh(box) + ["python -c 'import sys; print(sys.prefix)'"],
                         capture_output=True, text=True, timeout=60)
    assert ssh.returncode == 0 and ssh.stdout.strip() == "/opt/venv", ssh.stderr
    # options after NAME are mlenv's, the words after -- the box's, even one that looks like an ssh option
    assert project.mlenv("ssh", box, "--provider", "docker", "--", "sh", "-c", "echo out; exit 3").returncode == 3
    dashed = project.mlenv("ssh", box, "--", "-V")
    assert dashed.returncode != 0 and "OpenSSH_" not in dashed.stdout + dashed.stderr, dashed.stderr
    assert project.mlenv("ssh", box, "--", "echo out; exit 3").stdout == "out\n"

    # up again: the same box, found by its labels
    again = up(project, box, "--idle", "20s")
    assert "already running" in again.stderr
    assert "note:" not in again.stderr  # the box runs the project's current lock: no drift note
    assert len(docker_client.containers.list(all=True, filters={"label": f"mlenv.box={box}"})) == 1

    assert project.mlenv("ssh", box, "--", "echo kept > work/notes.txt").returncode == 0
    if os.environ.get("SKIP_DOCTOR") is None:
        doctor = project.mlenv("doctor", "--box", box)
        assert doctor.returncode == 0, doctor.stdout + doctor.stderr

    # nobody uses it: it stops by itself, within a poll of the idle setting, and stays stopped
    wait_state(project, box, "stopped", 45)
    logs = project.mlenv("logs", box, "--json")
    decisions = [json.loads(line) for line in logs.stdout.splitlines()]
    assert decisions[-1]["event"] == "stop" and decisions[-1]["reason"] == "idle", decisions[-3:]
    assert any(d["event"] == "warn" for d in decisions)
    assert "stop" in project.mlenv("logs", box).stdout
    container = docker_client.containers.get(f"mlenv-box-{box}")
    assert container.attrs["HostConfig"]["RestartPolicy"]["Name"] in ("", "no")  # so it stays stopped
    assert listed(project)[box]["state"] == "stopped"

    # start brings it back (same workspace volume), down removes everything
    started = project.mlenv("start", box)
    assert started.returncode == 0, started.stderr
    assert listed(project)[box]["state"] == "running"
    assert project.mlenv("ssh", box, "--", "cat work/notes.txt").stdout == "kept\n"
    down = project.mlenv("down", box)
    assert down.returncode == 2 and "--yes" in down.stderr  # no terminal to confirm on
    assert project.mlenv("down", box, "--yes").returncode == 0
    assert box not in listed(project)
    assert not docker_client.volumes.list(filters={"label": f"mlenv.box={box}"})


def last_decision(project, name) -> dict:
    result = project.mlenv("logs", name, "--json", "--tail", "1")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def decisions(project, name) -> list[dict]:
    """Every line the box's watchdog logged, oldest first (its start, then one per poll)."""
    result = project.mlenv("logs", name, "--json", "--tail", "0")
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def wait_decision(project, name, wanted, within: float) -> dict:
    """The first poll of the box's watchdog whose decision ``wanted`` accepts.  The watchdog logs what
    it saw and decided at every poll: waiting for that, not for the clock, holds on a loaded machine."""
    deadline = time.monotonic() + within
    while True:
        logged = decisions(project, name)
        found = [d for d in logged if "signals" in d and wanted(d)]
        if found:
            return found[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"no such decision of box {name} within {within}s: {logged[-2:]}")
        time.sleep(0.5)


def state_of(docker_client, name) -> str:
    return docker_client.containers.get(f"mlenv-box-{name}").status


def wait_exited(docker_client, name, within: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < within:
        if state_of(docker_client, name) == "exited":
            return time.monotonic() - started
        time.sleep(0.5)
    raise AssertionError(f"box {name} still {state_of(docker_client, name)} after {within}s")


@pytest.mark.docker
@pytest.mark.network  # the dev image's tools stage installs uv from PyPI
def test_terminal_input_keeps_the_box_up_and_the_warning_lands_in_the_terminal(box_project, box, docker_client):
    project = box_project
    up(project, box, "--idle", "12s", "--idle-connected", "18s")
    terminal = subprocess.Popen(project.ssh(box, "-tt"), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
    try:
        started = time.monotonic()
        while time.monotonic() - started < 24:  # typing, for twice the idle time
            terminal.stdin.write(b"echo tick\n")
            terminal.stdin.flush()
            time.sleep(3)
        assert state_of(docker_client, box) == "running"
        assert last_decision(project, box)["last_activity"] == "terminal"
        # hands off the keyboard: only the open connection is left, which holds the box for the
        # longer idle-connected window, then the terminal is warned and the box stops
        wait_exited(docker_client, box, 40)
        output = terminal.communicate(timeout=30)[0].decode("utf-8", "replace")
    finally:
        terminal.kill()
    assert "tick" in output
    logged = decisions(project, box)
    events = [(d["t"], d["event"], d.get("reason"), d.get("stop_due_s"), d.get("terminals_warned"))
              for d in logged if d["event"] != "poll" or d is logged[-2]]
    assert "this box stops in" in output, (output[-600:], events)
    stop, warned = logged[-1], [d for d in logged if d["event"] == "warn" and d.get("terminals_warned")]
    assert stop["event"] == "stop" and stop["reason"] == "idle-connected" and warned, events
    # the stop came the whole warning time (a quarter of the 18 s) after the warning, however late
    # the watchdog polled on a loaded machine, so the warning was delivered before sshd went down
    assert stop["t"] - warned[-1]["t"] >= 18 / 4 - 0.01, events  # (times rounded to ms)


def free_local_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ssh_banner_through(port: int, within: float = 20) -> bytes:
    """The first bytes an SSH server sends, read through a local forwarded port once it is open."""
    import socket

    deadline = time.monotonic() + within
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                banner = sock.recv(64)
                if banner:
                    return banner
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing answered through 127.0.0.1:{port} within {within}s")
        time.sleep(0.3)


@pytest.mark.docker
@pytest.mark.network  # the dev image's tools stage installs uv from PyPI
@pytest.mark.parametrize("kind", ["ide", "tunnel"])
def test_ide_like_session_or_tunnel_counts_as_weak_activity_not_forever(box_project, box, docker_client, kind):
    """VS Code Remote-SSH's `ssh -T ... sh` (no terminal) and `ssh -N -L` (no session at all, so no
    login mark either): an open connection, maybe nobody behind it."""
    project = box_project
    up(project, box, "--idle", "8s", "--idle-connected", "20s")
    if kind == "tunnel":
        # a tunnel makes no login, so the idle clock runs from the box's start, and a loaded machine can take
        # the whole 8 s to connect: a keep-alive holds the box while the tunnel opens and ages
        assert project.mlenv("keepalive", box, "--for", "1h").returncode == 0
    if kind == "ide":
        argv = project.ssh(box, "-T") + ["sleep 600"]
    else:
        local_port = free_local_port()
        argv = project.ssh(box, "-N", "-L", f"127.0.0.1:{local_port}:127.0.0.1:22")
    connection = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
    try:
        if kind == "tunnel":  # a real tunnel: the box's own sshd answers through it
            assert ssh_banner_through(local_port).startswith(b"SSH-")
        wait_decision(project, box, lambda d: d["signals"]["connection"]["state"] == "active", 40)
        if kind == "tunnel":
            assert project.mlenv("keepalive", box, "--release").returncode == 0
        # past the idle time, only the connection holds the box
        held = wait_decision(project, box, lambda d: d["signals"]["keepalive"]["state"] == "idle"
                             and d["idle_for_s"] > 8, 40)
        assert held["event"] != "stop" and held["reason"] == "idle-connected", held
        assert held["signals"]["connection"]["state"] == "active", held
        if kind == "tunnel":
            assert held["signals"]["login"]["state"] == "idle" and held["signals"]["terminal"]["state"] == "idle"
        wait_exited(docker_client, box, 40)
    finally:
        connection.kill()
    # stopped for the idle-connected window, not forever
    stop = last_decision(project, box)
    assert stop["event"] == "stop" and stop["reason"] == "idle-connected" and stop["idle_for_s"] >= 20, stop


@pytest.mark.docker
@pytest.mark.network  # the dev image's tools stage installs uv from PyPI
def test_keepalive_holds_the_box_until_released(box_project, box, docker_client):
    project = box_project
    up(project, box, "--idle", "8s")
    held = project.mlenv("keepalive", box, "--for", "1h")
    assert held.returncode == 0, held.stderr
    started = decisions(project, box)[0]["t"]  # the watchdog's start
    # a poll well past the idle time since the box started: the keep-alive held the idle clock
    later = wait_decision(project, box, lambda d: d["t"] - started > 8 + 2, 40)
    assert later["signals"]["keepalive"]["state"] == "active" and later["idle_for_s"] < 8, later
    assert state_of(docker_client, box) == "running"
    assert listed(project)[box]["stop_due_s"] > 0
    assert project.mlenv("keepalive", box, "--release").returncode == 0
    wait_exited(docker_client, box, 25)
    assert last_decision(project, box)["reason"] == "idle"


@pytest.mark.docker
@pytest.mark.network  # the dev image's tools stage installs uv from PyPI
def test_max_lifetime_stops_the_box_regardless(box_project, box, docker_client):
    project = box_project
    up(project, box, "--idle", "1h", "--max-lifetime", "15s")
    assert project.mlenv("keepalive", box, "--for", "1h").returncode == 0
    local_port = free_local_port()
    tunnel = subprocess.Popen(project.ssh(box, "-N", "-L", f"127.0.0.1:{local_port}:127.0.0.1:8888"),
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_exited(docker_client, box, 30)
    finally:
        tunnel.kill()
    decision = last_decision(project, box)
    assert decision["event"] == "stop" and decision["reason"] == "max-lifetime", decision
    assert decision["signals"]["keepalive"]["state"] == "active" and decision["idle_for_s"] < 15, decision


@pytest.mark.docker
@pytest.mark.network  # the dev image's tools stage installs uv from PyPI
def test_interrupted_up_leaves_nothing_unlabelled(box_project, box, docker_client):
    project = box_project
    process = subprocess.Popen(
        [sys.executable, "-m", "mlenv", "up", box, "--provider", "docker", "--yes"],
        cwd=project.root, env={**os.environ, **project.env}, stderr=subprocess.PIPE, text=True)
    for line in process.stderr:
        if "creating container" in line:
            process.send_signal(__import__("signal").SIGINT)
            break
    process.communicate(timeout=60)
    assert process.returncode == 130
    containers = docker_client.containers.list(all=True, filters={"name": f"mlenv-box-{box}"})
    volumes = [v for v in docker_client.volumes.list() if v.name.startswith(f"mlenv-box-{box}")]
    # rolled back; anything a second interruption could leave carries the box's labels
    assert all(c.labels.get("mlenv.box") == box for c in containers)
    assert all((v.attrs.get("Labels") or {}).get("mlenv.box") == box for v in volumes)
    assert not containers and not volumes


@pytest.mark.docker
@pytest.mark.network  # the dev image's tools stage installs uv from PyPI
def test_gc_finds_and_removes_a_workspace_whose_box_is_gone(box_project, box, docker_client):
    project = box_project
    up(project, box, "--idle", "1h")
    docker_client.containers.get(f"mlenv-box-{box}").remove(force=True)  # removed by hand
    assert box not in listed(project)
    found = project.mlenv("gc", "--json")
    orphans = [o for o in json.loads(found.stdout) if o["box"] == box]
    assert [(o["kind"], o["id"]) for o in orphans] == [("volume", f"mlenv-box-{box}-work")]
    assert project.mlenv("gc", "--yes").returncode == 0
    assert not [v for v in docker_client.volumes.list() if v.name == f"mlenv-box-{box}-work"]


def test_bad_box_names_never_reach_the_engine(tmp_path):
    (tmp_path / "mlenv.toml").write_text(MINIMAL_SPEC)
    result = run_mlenv("up", "Bad;name", "--provider", "docker", "--dry-run", cwd=tmp_path,
                       env={"DOCKER_HOST": "unix:///nonexistent.sock"})
    assert result.returncode == 2 and "invalid box name" in result.stderr


@pytest.mark.docker
@pytest.mark.network  # box_project's dev image installs its tool venv's packages from PyPI
def test_dry_run_prints_the_plan_and_creates_nothing(box_project, box, docker_client):
    result = box_project.mlenv("up", box, "--provider", "docker", "--dry-run", "--idle", "45m")
    assert result.returncode == 0, result.stderr
    assert f"mlenv-box-{box}" in result.stdout and "127.0.0.1 only" in result.stdout
    assert "idle 45m00s" in result.stdout
    assert not docker_client.containers.list(all=True, filters={"label": f"mlenv.box={box}"})
    assert not [v for v in docker_client.volumes.list() if v.name.startswith(f"mlenv-box-{box}")]


def test_unreachable_engine_is_exit_6(tmp_path):
    (tmp_path / "mlenv.toml").write_text(MINIMAL_SPEC)
    env = {"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock", "HOME": str(tmp_path), "MLENV_HOME": str(tmp_path / "d")}
    stopped = run_mlenv("stop", "gpu1", "--provider", "docker", cwd=tmp_path, env=env)
    assert stopped.returncode == 6 and "Docker Engine" in stopped.stderr, stopped.stderr
    listed_ = run_mlenv("ls", "--json", cwd=tmp_path, env=env)
    assert listed_.returncode == 0 and json.loads(listed_.stdout) == [] and "not listed" in listed_.stderr


# --- a busy Jupyter kernel, end to end ----------------------------------------------------------------
# The README's path: Jupyter in a dependency group of the lock (so the dev image has it), `mlenv up`,
# `mlenv jupyter NAME` (starts the server on the box as the box's user, forwards it here), a notebook
# cell running in a kernel.  Jupyter Server rather than JupyterLab: the same server, fewer megabytes.

JUPYTER_SPEC = BOX_SPEC.replace('name = "boxdemo"', 'name = "boxjupyter"') + """
[dependency-groups]
dev = ["jupyter_server", "ipykernel"]
"""


@pytest.fixture(scope="module")
def jupyter_project(tmp_path_factory, docker_engine, docker_client, build_cli, base_image):
    yield make_box_project(tmp_path_factory, "boxjupyter", JUPYTER_SPEC.format(base=base_image), docker_engine,
                           build_cli)
    remove_project_images(docker_client, "boxjupyter")


@pytest.fixture
def jupyter_box(jupyter_project, docker_client):
    yield from fresh_box(docker_client)


def api(base: str, token: str, path: str, body: dict | None = None):
    """A Jupyter REST call the way a script does it (token header); never counted as activity."""
    import urllib.request

    request = urllib.request.Request(f"{base}{path}?no_track_activity=1", method="POST" if body is not None else "GET",
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Authorization": f"token {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.loads(answer.read())


def start_cell(base: str, token: str, code: str) -> str:
    """Start a kernel and run ``code`` in it over the kernel's websocket, as JupyterLab does; return
    the kernel id once the kernel says it is busy with the cell (the socket is then closed: the
    cell runs on, like a notebook whose browser tab was closed)."""
    from datetime import UTC, datetime

    import websocket  # websocket-client, a dependency of jupyter_server

    kernel = api(base, token, "/api/kernels", {"name": "python3"})
    socket_url = base.replace("http://", "ws://") + f"/api/kernels/{kernel['id']}/channels"
    connection = websocket.create_connection(socket_url, header=[f"Authorization: token {token}"], timeout=120)
    try:
        msg_id = uuid.uuid4().hex
        connection.send(json.dumps({
            "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "test", "version": "5.3",
                       "session": uuid.uuid4().hex, "date": datetime.now(UTC).isoformat()},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True}}))
        while True:
            message = json.loads(connection.recv())
            if (message.get("msg_type") == "execute_input"
                    and message.get("parent_header", {}).get("msg_id") == msg_id):
                return kernel["id"]
    finally:
        connection.close()


def open_jupyter(project, box):
    """`mlenv jupyter NAME --no-browser` running: (process, base URL here, token, how: started/reused)."""
    process = subprocess.Popen([sys.executable, "-m", "mlenv", "jupyter", box, "--no-browser"], cwd=project.root,
                               env={**os.environ, **project.env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    url = process.stdout.readline().strip()
    if not url.startswith("http://127.0.0.1:"):
        process.kill()
        raise AssertionError(f"mlenv jupyter printed {url!r}: {process.communicate(timeout=30)[1]}")
    said = ""
    while "is forwarded" not in said and "Jupyter on" not in said:
        said = process.stderr.readline()
    how = re.search(r"\((started|reused), box port", said)
    return process, url.split("?token=")[0].rstrip("/"), url.split("?token=")[1], how and how.group(1)


def close_jupyter(process) -> None:
    process.send_signal(__import__("signal").SIGINT)  # Ctrl-C: the forwarding ends, the server runs on
    process.communicate(timeout=30)


@pytest.mark.docker
@pytest.mark.network  # Jupyter Server and ipykernel come from PyPI
def test_busy_kernel_keeps_the_box_up_and_an_idle_one_lets_it_stop(jupyter_project, jupyter_box, docker_client):
    project, box = jupyter_project, jupyter_box
    up(project, box, "--idle", "8s")
    jupyter, base, token, how = open_jupyter(project, box)
    try:
        assert how == "started"
        naptime = 22
        start_cell(base, token, f"import time\ntime.sleep({naptime})")
        busy_since = time.time()  # the box's clock is this machine's
        # the watchdog asks the server every poll without moving its activity clock (what Jupyter's
        # own culler and JupyterHub's read)
        before = api(base, token, "/api/status")["last_activity"]
        time.sleep(4)
        assert api(base, token, "/api/status")["last_activity"] == before
    finally:
        close_jupyter(jupyter)  # the laptop goes away: the cell runs on

    # without the kernel the box would stop about 8 s (idle) after the cell started: a poll after that,
    # with no connection and no terminal left, shows only the kernel holding the box
    held = wait_decision(project, box, lambda d: d["t"] > busy_since + 8 + 1
                         and d["signals"]["connection"]["state"] == "idle", naptime + 30)
    assert held["signals"]["jupyter"]["state"] == "active" and held["event"] == "poll", held
    assert "busy kernel python3" in held["signals"]["jupyter"]["detail"]
    assert state_of(docker_client, box) == "running"

    # the cell ends, the kernel is idle (and stays open): the box stops by itself, an idle time later
    wait_exited(docker_client, box, naptime + 30)
    decision = last_decision(project, box)
    assert decision["event"] == "stop" and decision["reason"] == "idle", decision
    assert decision["last_activity"] == "jupyter" and decision["idle_for_s"] >= 8, decision  # idle since the cell
    assert decision["signals"]["jupyter"]["state"] == "idle", decision
    assert "no busy kernel" in decision["signals"]["jupyter"]["detail"]


    # started again (the next morning): the server is gone, its files are not, and its small pid soon
    # belongs to another process of the user's (here a `sleep`, started through the engine: no login, no
    # connection).  Neither the watchdog nor `mlenv jupyter` may take that process for the server.
    assert project.mlenv("start", box).returncode == 0
    container = docker_client.containers.get(f"mlenv-box-{box}")
    (stale,) = container.exec_run(["sh", "-c", "ls /home/*/.local/share/jupyter/runtime/jpserver-*.json"]
                                  ).output.decode().split()
    user, pid = stale.split("/")[2], re.search(r"jpserver-(\d+)\.json", stale).group(1)
    # (the loop returns once a `sleep` holds the pid: waited for, however slowly it forks on a loaded machine)
    holder = container.exec_run(["sh", "-c", f'while :; do sleep 60 >/dev/null 2>&1 & p=$!; [ "$p" -lt {pid} ] '
                                             '|| break; kill "$p"; done; echo "$p"'], user=user)
    assert holder.output.decode().strip() == pid, f"pid {pid} not reused: {holder.output!r}"
    assert container.exec_run(["kill", "-0", pid]).exit_code == 0, f"pid {pid} not reused"
    stopped = project.mlenv("jupyter", box, "--stop")
    assert stopped.returncode == 0 and "no Jupyter server started by mlenv" in stopped.stderr, stopped.stderr
    assert container.exec_run(["kill", "-0", pid]).exit_code == 0, "`mlenv jupyter --stop` killed another process"
    jupyter, base, token, how = open_jupyter(project, box)
    try:
        assert how == "started" and "started" in api(base, token, "/api/status")
    finally:
        close_jupyter(jupyter)
    # the new server is asked, the stale file is not (its port would refuse, or the new server there
    # would refuse the old token: the box would stay up for good)
    wait_exited(docker_client, box, 40)
    decision = last_decision(project, box)
    assert decision["reason"] == "idle", decision
    assert decision["signals"]["jupyter"]["detail"] == "1 server(s), no busy kernel", decision
