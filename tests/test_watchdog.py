"""The idle watchdog (templates/watchdog.py): its signal parsers on recorded outputs, its probes
against real processes (fake nvidia-smi on PATH, a Jupyter-shaped HTTP server on loopback, real
ptys), and its decisions with a controlled clock.  The end-to-end runs in a box are in test_boxes.py.
"""

from __future__ import annotations

import http.server
import importlib.util
import json
import os
import socketserver
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest

from tests.conftest import REPO

WATCHDOG = REPO / "templates" / "watchdog.py"


def _load():
    spec = importlib.util.spec_from_file_location("mlenv_watchdog", WATCHDOG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


wd = _load()

# /proc/net/tcp of a box with sshd listening, one ssh session, an outgoing connection and a
# connection to a port nobody watches (recorded, inode numbers kept)
PROC_NET_TCP = (REPO / "tests" / "data" / "proc" / "net_tcp").read_text()
PROC_NET_TCP6 = (REPO / "tests" / "data" / "proc" / "net_tcp6").read_text()

# two /proc/stat readings 10 s apart on a 2-CPU machine (USER_HZ 100): 1.5 busy cores, then 0.02
PROC_STAT_1 = """\
cpu  25818 0 9209 61858 1111 0 246 164 0 0
cpu0 10978 0 4015 33874 199 0 70 85 0 0
cpu1 14839 0 5193 27984 911 0 176 79 0 0
intr 3489001 0 9 0 0 0 0 0 0 0 0 0 0
ctxt 6122931
"""
PROC_STAT_2 = """\
cpu  26818 0 9709 62358 1111 0 246 164 0 0
cpu0 11478 0 4265 34124 199 0 70 85 0 0
cpu1 15339 0 5443 28234 911 0 176 79 0 0
intr 3499001 0 9 0 0 0 0 0 0 0 0 0 0
ctxt 6132931
"""
PROC_STAT_3 = """\
cpu  26819 0 9710 64356 1112 0 246 164 0 0
cpu0 11478 0 4265 35124 199 0 70 85 0 0
cpu1 15340 0 5444 29232 912 0 176 79 0 0
"""
# the first poll at boot, 20 ms after the watchdog's start reading: 23 ticks of work (boot's, the
# watchdog's own start-up) in those 20 ms would read as 11.50 busy cores
PROC_STAT_BOOT = PROC_STAT_1.replace("cpu  25818 ", "cpu  25841 ")
CGROUP_CPU_STAT = "usage_usec 8123456\nuser_usec 6000000\nsystem_usec 2123456\nnr_periods 0\n"

# GET /api/kernels?no_track_activity=1 of jupyter_server 2.x: one kernel running a cell, one idle
KERNELS_BUSY = [
    {"id": "6f0c2a4e-9a5d-4f57-8d8b-1f0c8b1e2a11", "name": "python3", "last_activity": "2026-11-22T21:03:11.52Z",
     "execution_state": "busy", "connections": 1},
    {"id": "0b7d93d5-2f6e-41c8-a1d0-c6e2f7b8a4d2", "name": "python3", "last_activity": "2026-11-22T20:41:09.01Z",
     "execution_state": "idle", "connections": 0},
]
KERNELS_IDLE = [dict(KERNELS_BUSY[0], execution_state="idle")]


# --- parsers on recorded outputs -------------------------------------------------------------------


def test_proc_net_tcp_keeps_established_only():
    assert wd.parse_proc_net_tcp(PROC_NET_TCP) == [(22, "010011AC:D1A2", "44012"), (40000, "0100007F:1F90", "44101")]
    assert wd.parse_proc_net_tcp(PROC_NET_TCP6) == [(8888, "0000000000000000FFFF0000010011AC:E0F2", "45188")]


def test_connections_count_once_older_than_the_minimum_age(tmp_path):
    tcp, tcp6 = tmp_path / "tcp", tmp_path / "tcp6"
    tcp.write_text(PROC_NET_TCP)
    tcp6.write_text(PROC_NET_TCP6)
    tracker = wd.ConnectionTracker([22, 8888], min_age=60, files=(str(tcp), str(tcp6), str(tmp_path / "none")))
    first = tracker.probe(1000.0)
    assert first.state == wd.IDLE and "2 new" in first.detail  # the port-40000 one is not watched
    later = tracker.probe(1061.0)
    assert later.state == wd.ACTIVE and "22,8888" in later.detail
    tcp.write_text(PROC_NET_TCP.splitlines()[0] + "\n")
    tcp6.write_text(PROC_NET_TCP6.splitlines()[0] + "\n")
    assert tracker.probe(1062.0).state == wd.IDLE
    # a new connection starts its own clock
    tcp.write_text(PROC_NET_TCP)
    assert tracker.probe(1063.0).state == wd.IDLE


def test_unreadable_connection_table_is_unknown(tmp_path):
    (tmp_path / "tcp").mkdir()  # reading a directory fails
    assert wd.ConnectionTracker([22], 60, files=(str(tmp_path / "tcp"),)).probe(1.0).state == wd.UNKNOWN


def test_cpu_from_proc_stat_deltas(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text(PROC_STAT_1)
    busy, cpus = wd.parse_proc_stat(PROC_STAT_1)
    assert cpus == 2 and busy == pytest.approx((25818 + 9209 + 246 + 164) / os.sysconf("SC_CLK_TCK"))
    meter = wd.CpuMeter("proc", proc_stat=str(stat), threshold=0.5)
    assert meter.probe(100.0).state == wd.UNKNOWN  # no window yet
    stat.write_text(PROC_STAT_2)
    busy_reading = meter.probe(110.0)
    assert busy_reading.state == wd.ACTIVE and busy_reading.detail.startswith("1.50 busy cores")
    stat.write_text(PROC_STAT_3)
    idle_reading = meter.probe(120.0)
    assert idle_reading.state == wd.IDLE and idle_reading.detail.startswith("0.00 busy cores")


def test_cpu_is_measured_over_at_least_a_poll_interval(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text(PROC_STAT_1)
    meter = wd.CpuMeter("proc", proc_stat=str(stat), threshold=0.5, window=10)
    meter.probe(100.0)  # the watchdog's start
    stat.write_text(PROC_STAT_BOOT)
    first = meter.probe(100.02)  # its first poll: too short a window to say anything
    assert first.state == wd.UNKNOWN and first.detail == "measuring (first 10s)", first
    stat.write_text(PROC_STAT_2)
    assert meter.probe(110.0).detail.startswith("1.50 busy cores")  # since the start, 10 s back
    # a poll 2 s after the last (woken early for a warning) averages over the whole window before it:
    # 14.77 s of CPU since the boot reading 11.98 s ago, not 0 s in the last 2
    soon = meter.probe(112.0)
    assert soon.state == wd.ACTIVE and soon.detail.startswith("1.23 busy cores"), soon
    stat.write_text(PROC_STAT_3)
    later = meter.probe(122.0)  # from the newest reading at least 10 s old (112)
    assert later.state == wd.IDLE and later.detail.startswith("0.00 busy cores"), later


def test_cpu_from_cgroup_usage(tmp_path):
    stat = tmp_path / "cpu.stat"
    stat.write_text(CGROUP_CPU_STAT)
    assert wd.parse_cgroup_cpu_stat(CGROUP_CPU_STAT) == pytest.approx(8.123456)
    meter = wd.CpuMeter("cgroup", cgroup_stat=str(stat), threshold=0.5)
    meter.probe(0.0)
    stat.write_text(CGROUP_CPU_STAT.replace("8123456", "14123456"))
    assert meter.probe(10.0).state == wd.ACTIVE  # 6 s of CPU in 10 s
    assert meter.probe(20.0).state == wd.IDLE
    stat.write_text("garbage\n")
    assert meter.probe(30.0).state == wd.UNKNOWN


def test_cpu_from_cgroup_v1_usage(tmp_path):
    usage = tmp_path / "cpuacct.usage"
    usage.write_text("29404590\n")
    meter = wd.CpuMeter("cgroup", cgroup_stat=str(usage), threshold=0.5)
    meter.probe(0.0)
    usage.write_text(f"{29404590 + 8 * 10**9}\n")
    reading = meter.probe(10.0)
    assert reading.state == wd.ACTIVE and reading.detail.startswith("0.80 busy cores")


def test_nvidia_smi_parser():
    assert wd.parse_nvidia_smi("87\n3\n") == [87, 3]
    with pytest.raises(ValueError):
        wd.parse_nvidia_smi("[N/A]\n")


# --- nvidia-smi: a fake program on PATH, behaving in each of the ways the real one does ----------


@pytest.fixture
def fake_nvidia_smi(tmp_path, monkeypatch):
    folder = tmp_path / "bin"
    folder.mkdir()
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")

    def install(body: str) -> None:
        script = folder / "nvidia-smi"
        script.write_text("#!/bin/sh\n" + body + "\n")
        script.chmod(0o755)

    return install


def test_gpu_busy_idle_and_absent(fake_nvidia_smi):
    assert wd.probe_gpu("nvidia-smi", 10, 5).state == wd.IDLE  # no nvidia-smi: no GPU, not unknown
    fake_nvidia_smi('[ "$1" = "--query-gpu=utilization.gpu" ] || exit 3\nprintf "87\\n3\\n"')
    busy = wd.probe_gpu("nvidia-smi", 10, 5)
    assert busy.state == wd.ACTIVE and "87,3" in busy.detail
    fake_nvidia_smi('printf "4\\n0\\n"')
    assert wd.probe_gpu("nvidia-smi", 10, 5).state == wd.IDLE


def test_gpu_failing_or_hanging_nvidia_smi_keeps_the_box_up(fake_nvidia_smi):
    fake_nvidia_smi('echo "NVIDIA-SMI has failed because it couldn\'t communicate with the NVIDIA driver." >&2\nexit 9')
    failed = wd.probe_gpu("nvidia-smi", 10, 5)
    assert failed.state == wd.UNKNOWN and "exited 9" in failed.detail
    fake_nvidia_smi('printf "[N/A]\\n"')
    assert wd.probe_gpu("nvidia-smi", 10, 5).state == wd.UNKNOWN
    fake_nvidia_smi("exec sleep 30")
    hung = wd.probe_gpu("nvidia-smi", 10, 1)  # given up on after its timeout, not waited for
    assert hung.state == wd.UNKNOWN and hung.detail == "nvidia-smi did not answer within 1s"


# --- Jupyter: a real HTTP server on loopback answering like jupyter_server --------------------------


class _Jupyter:
    """Answers GET /api/kernels like jupyter_server; on loopback TCP, or on a unix socket (``--sock``)."""

    def __init__(self, kernels, status=200, unix_socket=None):
        self.kernels, self.status, self.requests = kernels, status, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                server.requests.append((self.path, self.headers.get("Authorization")))
                body = json.dumps(server.kernels).encode() if server.status == 200 else b"oops"
                self.send_response(server.status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        if unix_socket:
            self.httpd = socketserver.ThreadingUnixStreamServer(unix_socket, Handler)
            self.port = 0
        else:
            self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
            self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def jupyter(tmp_path):
    server = _Jupyter(KERNELS_BUSY)
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    (runtime / f"jpserver-{os.getpid()}.json").write_text(json.dumps({
        "base_url": "/lab-base/", "hostname": "localhost", "password": False, "pid": os.getpid(), "port": server.port,
        "root_dir": "/home/app", "secure": False, "sock": "", "token": "tok3n", "url": f"http://box:{server.port}/lab-base/",
        "version": "2.14.2"}))
    yield server, runtime
    server.close()


def test_jupyter_busy_kernel_is_active_and_asking_does_not_count_as_activity(jupyter):
    server, runtime = jupyter
    reading = wd.probe_jupyter([str(runtime)])
    assert reading.state == wd.ACTIVE and "python3 (6f0c2a4e)" in reading.detail
    assert server.requests == [("/lab-base/api/kernels?no_track_activity=1", "token tok3n")]
    server.kernels = KERNELS_IDLE
    assert wd.probe_jupyter([str(runtime)]).state == wd.IDLE


def test_jupyter_errors_are_unknown_and_dead_servers_are_ignored(jupyter, tmp_path):
    server, runtime = jupyter
    server.status = 500
    assert wd.probe_jupyter([str(runtime)]).state == wd.UNKNOWN
    server.close()
    assert wd.probe_jupyter([str(runtime)]).state == wd.UNKNOWN  # refused: cannot tell
    # the file of a server whose process is gone
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / "jpserver-1.json").write_text(json.dumps({"pid": int(dead.stdout), "port": 1, "token": "x"}))
    assert wd.probe_jupyter([str(stale)]).state == wd.IDLE
    assert wd.probe_jupyter([str(tmp_path / "nothing")]).state == wd.IDLE


def test_jupyter_on_a_unix_socket_or_every_interface_is_asked_where_it_listens(tmp_path):
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    sock = tmp_path / "jupyter.sock"
    server = _Jupyter(KERNELS_BUSY, unix_socket=str(sock))
    try:  # `jupyter server --sock PATH`: port 0, no TCP at all
        (runtime / f"jpserver-{os.getpid()}.json").write_text(json.dumps({
            "base_url": "/", "hostname": "", "pid": os.getpid(), "port": 0, "secure": False, "sock": str(sock),
            "token": "t0k"}))
        reading = wd.probe_jupyter([str(runtime)])
        assert reading.state == wd.ACTIVE, reading
        assert server.requests == [("/api/kernels?no_track_activity=1", "token t0k")]
    finally:
        server.close()
    server = _Jupyter(KERNELS_IDLE)
    try:  # `--ip=0.0.0.0`: reached on loopback
        (runtime / f"jpserver-{os.getpid()}.json").write_text(json.dumps({
            "base_url": "/", "hostname": "0.0.0.0", "pid": os.getpid(), "port": server.port, "secure": False,
            "sock": "", "token": "t0k"}))
        assert wd.probe_jupyter([str(runtime)]).state == wd.IDLE
    finally:
        server.close()


def test_a_runtime_file_older_than_the_process_holding_its_pid_is_stale(jupyter):
    """After a box restarts, the file of the server that ran before is still on disk, and its small pid
    may belong to another process now (sshd, a shell): that file must not be asked (a refusal, or a
    new server on the same port rejecting the old token, would hold the box up forever)."""
    server, runtime = jupyter
    (path,) = runtime.glob("jpserver-*.json")
    assert wd.probe_jupyter([str(runtime)]).state == wd.ACTIVE  # written after this process started
    os.utime(path, (1000.0, 1000.0))  # written in 1970: long before this process (its pid) started
    stale = wd.probe_jupyter([str(runtime)])
    assert stale.state == wd.IDLE and stale.detail == "no live Jupyter server", stale
    assert len(server.requests) == 1


def test_process_start_time_from_proc():
    before = time.time()
    child = subprocess.Popen(["sleep", "5"])
    try:
        started = wd.process_start_time(child.pid)
    finally:
        child.kill()
        child.wait()
    assert before - 2 <= started <= time.time() + 1, (before, started)
    assert wd.process_start_time(child.pid) is None  # gone


def test_a_jupyter_server_started_after_the_watchdog_is_found(jupyter, tmp_path, monkeypatch):
    """The box's user starts Jupyter (`mlenv jupyter`) long after the watchdog: the runtime folder in
    their home does not exist when the watchdog starts, and must be looked for again on every poll."""
    server, runtime = jupyter
    monkeypatch.setattr(wd, "HOMES", (str(tmp_path / "home" / "*"),))
    monkeypatch.setenv("HOME", str(tmp_path / "watchdog-home"))
    monkeypatch.delenv("JUPYTER_RUNTIME_DIR", raising=False)
    args = wd.parse_args(["--log", str(tmp_path / "log.jsonl"), "--keepalive-dir", str(tmp_path / "ka"),
                          "--activity-dir", str(tmp_path / "act"), "--dev-pts", str(tmp_path), "--action", "exit"])
    dog = wd.Watchdog(args, act=lambda reason: None)
    assert dog.step()["signals"]["jupyter"]["state"] == wd.IDLE
    later = tmp_path / "home" / "app" / ".local" / "share" / "jupyter" / "runtime"
    later.parent.mkdir(parents=True)
    runtime.rename(later)
    record = dog.step()["signals"]["jupyter"]
    assert record["state"] == wd.ACTIVE and "python3 (6f0c2a4e)" in record["detail"], record


# --- keep-alives and terminals ---------------------------------------------------------------------


def test_keepalive_files(tmp_path):
    folder = tmp_path / "keepalive"
    assert wd.probe_keepalive(str(folder), 1000.0).state == wd.IDLE
    folder.mkdir()
    (folder / "cli").write_text("1500\n")
    held = wd.probe_keepalive(str(folder), 1000.0)
    assert held.state == wd.ACTIVE and "cli for 500s" in held.detail
    assert wd.probe_keepalive(str(folder), 1600.0).state == wd.IDLE  # expired
    (folder / ".cli.tmp").write_text("")  # being written: ignored
    (folder / "sweep").write_text("soon")
    assert wd.probe_keepalive(str(folder), 1600.0).state == wd.UNKNOWN


def test_terminal_input_time_from_access_times(tmp_path):
    pts = tmp_path / "pts"
    pts.mkdir()
    assert wd.probe_terminals(str(pts), 1000.0, 30).state == wd.IDLE
    for name, atime in (("0", 900.0), ("3", 990.0), ("ptmx", 999.0)):
        (pts / name).write_text("")
        os.utime(pts / name, (atime, 100.0))
    reading = wd.probe_terminals(str(pts), 1000.0, 30)
    assert reading.state == wd.ACTIVE and reading.at == 990.0  # ptmx is not a terminal
    assert wd.probe_terminals(str(pts), 1100.0, 30).state == wd.IDLE


def test_login_marks(tmp_path):
    marks = tmp_path / "activity"
    assert wd.probe_activity(str(marks), 1000.0, 30).state == wd.IDLE
    marks.mkdir()
    (marks / "ssh-1000").write_text("")
    os.utime(marks / "ssh-1000", (1.0, 985.0))
    reading = wd.probe_activity(str(marks), 1000.0, 30)
    assert reading.state == wd.ACTIVE and reading.at == 985.0 and "ssh-1000" in reading.detail
    assert wd.probe_activity(str(marks), 1100.0, 30).state == wd.IDLE


def test_warning_reaches_a_real_terminal(tmp_path):
    master, slave = os.openpty()
    try:
        pts = tmp_path / "pts"
        pts.mkdir()
        (pts / "7").symlink_to(os.ttyname(slave))
        assert wd.warn_terminals("box stops in 60s", str(pts)) == 1
        assert b"box stops in 60s" in os.read(master, 1024)
    finally:
        os.close(master)
        os.close(slave)


# --- decisions, with a controlled clock --------------------------------------------------------------


class Clock:
    def __init__(self):
        self.now = 10_000.0

    def __call__(self):
        return self.now


def make_watchdog(tmp_path, *, idle=100, idle_connected=1000, max_lifetime=10_000, warn_ahead=None):
    clock = Clock()
    signals = {name: wd.Reading(wd.IDLE) for name in ("keepalive", "jupyter", "gpu", "cpu", "terminal", "login",
                                                      "connection")}
    probes = {name: (lambda now, name=name: signals[name]) for name in signals}
    args = SimpleNamespace(idle=idle, idle_connected=idle_connected, max_lifetime=max_lifetime, poll=10,
                           warn_ahead=warn_ahead, log=str(tmp_path / "log.jsonl"), state=str(tmp_path / "state.json"),
                           dev_pts=str(tmp_path), action="exit")
    stops, warnings = [], []
    dog = wd.Watchdog(args, clock=clock, probes=probes, act=stops.append,
                      warn=lambda message, dev_pts: warnings.append(message) or 1)
    return dog, clock, signals, stops, warnings


def run_until(dog, clock, seconds, step=10):
    """Poll as the script's loop does: every ``step`` (its --poll) seconds, sooner when the watchdog
    wants to wake for a warning or a stop."""
    end = clock.now + seconds
    records = []
    while clock.now < end and not dog.stopped:
        clock.now += min(step, getattr(dog, "next_poll_in", step))
        records.append(dog.step())
    return records


def test_idle_box_is_warned_then_stopped_and_every_decision_is_logged(tmp_path):
    dog, clock, signals, stops, warnings = make_watchdog(tmp_path)
    records = run_until(dog, clock, 200)
    assert stops == ["idle"] and clock.now == 10_100
    events = [r["event"] for r in records]
    assert events.count("warn") == 1 and events[-1] == "stop"
    assert records[events.index("warn")]["stop_due_s"] <= 25  # a quarter of a short idle setting
    assert "stops in" in warnings[0]
    logged = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["event"] for r in logged] == events
    assert logged[0]["signals"]["gpu"] == {"state": "idle"}
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["event"] == "stop" and state["stop_due_s"] == 0


def test_activity_after_the_warning_cancels_the_stop(tmp_path):
    dog, clock, signals, stops, warnings = make_watchdog(tmp_path)
    run_until(dog, clock, 80)
    assert len(warnings) == 1 and not stops
    signals["jupyter"] = wd.Reading(wd.ACTIVE, "busy kernel")
    record = run_until(dog, clock, 10)[-1]
    assert record["event"] == "cancel" and record["idle_for_s"] == 0
    signals["jupyter"] = wd.Reading(wd.IDLE)
    run_until(dog, clock, 300)
    assert stops == ["idle"] and len(warnings) == 2 and clock.now == record["t"] + 100  # idle after the activity


@pytest.mark.parametrize("late", [30, 500])
def test_a_late_poll_warns_first_and_the_stop_waits_the_warning_time(tmp_path, late):
    """The poll that should warn can come late: a probe that took its whole timeout, a disk that
    stalled the log, a loaded machine.  Then the stop is announced with the full warning time,
    never made unannounced (nor so soon that the warning is still on its way to the terminal)."""
    dog, clock, signals, stops, warnings = make_watchdog(tmp_path)  # idle 100: warned 25 s ahead
    run_until(dog, clock, 60)
    assert not warnings
    clock.now += late  # past the warning time (30), or long past the stop itself (500)
    late_poll = dog.step()
    assert late_poll["event"] == "warn" and late_poll["stop_due_s"] == 25 and not stops
    assert warnings == ["mlenv: this box stops in 25s (idle). Press a key in a terminal or run `mlenv keepalive` "
                        "to keep it."]
    run_until(dog, clock, 60)
    assert stops == ["idle"] and clock.now == late_poll["t"] + 25 and len(warnings) == 1


@pytest.mark.parametrize("signal", ["keepalive", "jupyter", "gpu", "cpu"])
@pytest.mark.parametrize("state", [wd.ACTIVE, wd.UNKNOWN])
def test_strong_signals_and_unknowns_keep_the_box_up(tmp_path, signal, state):
    dog, clock, signals, stops, _ = make_watchdog(tmp_path)
    signals[signal] = wd.Reading(state, "x")
    run_until(dog, clock, 500)
    assert not stops
    signals[signal] = wd.Reading(wd.IDLE)
    run_until(dog, clock, 500)
    assert stops == ["idle"]


def test_a_probe_that_raises_counts_as_active(tmp_path):
    dog, clock, signals, stops, _ = make_watchdog(tmp_path)

    def broken(now):
        raise RuntimeError("boom")

    dog.strong["gpu"] = broken
    records = run_until(dog, clock, 500)
    assert not stops and records[-1]["signals"]["gpu"]["state"] == "unknown"


def test_terminal_input_counts_from_when_it_happened(tmp_path):
    dog, clock, signals, stops, _ = make_watchdog(tmp_path)
    signals["terminal"] = wd.Reading(wd.ACTIVE, "input", at=clock.now + 55)
    run_until(dog, clock, 60)
    assert dog.last_strong == 10_055
    run_until(dog, clock, 500)
    assert stops == ["idle"] and clock.now == 10_155  # idle after the input, not after the poll that saw it


def test_open_connection_alone_gets_the_longer_window_not_forever(tmp_path):
    dog, clock, signals, stops, _ = make_watchdog(tmp_path)
    signals["connection"] = wd.Reading(wd.ACTIVE, "1 connection(s) to port 22")
    run_until(dog, clock, 900)
    assert not stops
    run_until(dog, clock, 200)
    assert stops == ["idle-connected"] and clock.now == 11_000


def test_max_lifetime_stops_regardless(tmp_path):
    dog, clock, signals, stops, warnings = make_watchdog(tmp_path, max_lifetime=400)
    signals["keepalive"] = wd.Reading(wd.ACTIVE, "cli for 9999s")
    run_until(dog, clock, 1000)
    assert stops == ["max-lifetime"] and clock.now == 10_400
    assert any("max lifetime" in w for w in warnings)


@pytest.mark.parametrize(("released", "poll_at", "stop_at"), [
    (False, 10_380, 10_400),  # late for the warning (due at 10_300): a shorter warning, the stop on time
    (False, 10_450, 10_455),  # after the stop itself: warned, then stopped once the warning has reached the terminals
    (True, 10_390, 10_400),  # an idle stop announced late is not pushed past the max lifetime either
])
def test_max_lifetime_is_a_hard_stop_also_when_a_poll_comes_late(tmp_path, released, poll_at, stop_at):
    """`up --max-lifetime 12h` stops the box at 12 h, not 12 h and the warning time."""
    dog, clock, signals, stops, warnings = make_watchdog(tmp_path, max_lifetime=400)  # warned 100 s ahead
    signals["keepalive"] = wd.Reading(wd.ACTIVE, "cli for 9999s")
    run_until(dog, clock, 250)
    if released:
        signals["keepalive"] = wd.Reading(wd.IDLE)
    clock.now = poll_at
    late_poll = dog.step()
    assert late_poll["event"] == "warn" and late_poll["stop_due_s"] == stop_at - poll_at and not stops, late_poll
    assert f"this box stops in {stop_at - poll_at}s" in warnings[0]
    run_until(dog, clock, 100)
    assert stops and clock.now == stop_at and len(warnings) == 1


def test_a_max_lifetime_shorter_than_the_warning_time_is_warned_a_quarter_of_it_ahead(tmp_path):
    dog, clock, signals, stops, warnings = make_watchdog(tmp_path, max_lifetime=60)  # the warning is 300 s
    signals["keepalive"] = wd.Reading(wd.ACTIVE, "cli for 9999s")
    records = [dog.step()] + run_until(dog, clock, 100)  # the first poll comes at the start
    assert [(r["t"], r["event"]) for r in records if r["event"] != "poll"] == [(10_045, "warn"), (10_060, "stop")]
    assert records[0]["stop_due_s"] == 60 and stops == ["max-lifetime"] and "stops in 15s" in warnings[0]


# --- the script itself, as the box runs it -----------------------------------------------------------


def test_script_exits_on_its_own_when_idle(tmp_path):
    """The real process with real probes (pointed at empty places), ``--action exit``."""
    empty = tmp_path / "empty"
    empty.mkdir()
    log = tmp_path / "log.jsonl"
    result = subprocess.run(
        [sys.executable, str(WATCHDOG), "--idle", "2", "--idle-connected", "60", "--max-lifetime", "60", "--poll", "1",
         "--log", str(log), "--state", str(tmp_path / "state.json"), "--keepalive-dir", str(tmp_path / "ka"),
         "--action", "exit", "--dev-pts", str(empty), "--activity-dir", str(tmp_path / "marks"),
         "--jupyter-runtime-dir", str(empty), "--ports", "1",
         "--cpu-cores", "64", "--nvidia-smi", "no-such-nvidia-smi"],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in log.read_text().splitlines()]
    events = [record["event"] for record in records]
    assert events[0] == "start" and "warn" in events and events[-1] == "stop"
    # CPU is measured over a poll interval or more: unknown on the first poll only (boot once read 11.46 cores)
    cpu = [record["signals"]["cpu"] for record in records[1:]]
    assert cpu[0] == {"state": "unknown", "detail": "measuring (first 1s)"}, cpu
    assert all("busy cores" in reading["detail"] for reading in cpu[1:]), cpu
    # idle for the whole --idle, by the script's own clock (a loaded machine may poll it late)
    assert records[-1]["reason"] == "idle" and records[-1]["idle_for_s"] >= 2
    expected = 0o1777 if os.geteuid() == 0 else 0o777 & ~_umask()
    assert (tmp_path / "ka").stat().st_mode & 0o7777 == expected


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def test_script_rejects_bad_settings():
    result = subprocess.run([sys.executable, str(WATCHDOG), "--idle", "0"], capture_output=True, text=True)
    assert result.returncode == 2 and "--idle must be positive" in result.stderr


def test_script_is_stdlib_only():
    """It runs on boxes with nothing installed: only standard-library imports."""
    import ast

    tree = ast.parse(WATCHDOG.read_text())
    imported = {alias.name.split(".")[0]
                for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names)
