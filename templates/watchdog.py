#!/usr/bin/env python3
"""mlenv's idle watchdog: stops a dev box nobody uses, and never one somebody does.

Runs on the box (a systemd service on VMs, the container's main process in the docker provider)
with the standard library of any Python 3.6+.  Every ``--poll`` seconds it reads the signals below;
each answers active, idle or unknown, and **unknown counts as active**: a box stopped mid-training
because a probe failed is worse than one that runs an hour too long (``--max-lifetime`` bounds that).

Strong signals (any of them resets the idle clock):
  keepalive  a file in --keepalive-dir whose content is an expiry epoch still in the future
             (`mlenv keepalive`, a running `mlenv sweep --on`)
  jupyter    a busy kernel on a local Jupyter server (the jpserver-*.json files in every user's runtime
             folder, looked up each poll; GET /api/kernels with no_track_activity=1 so asking does not
             count as activity; files of servers that are gone, or whose pid was reused, are skipped)
  gpu        utilization.gpu >= --gpu-percent on any GPU (nvidia-smi, with a timeout)
  cpu        busy CPU time >= --cpu-cores cores over the last --poll seconds or more (the container's
             cgroup when in one, /proc/stat deltas otherwise: load average counts processes waiting on
             disk); unknown until the first window has passed
  terminal   input on a terminal: the newest access time of /dev/pts/N (reads move it; the
             kernel updates it about every 8 s; output moves only the modification time)
  login      the newest file in --activity-dir: an SSH login touches one (/etc/ssh/sshrc), so a
             user running short commands over ssh counts as present; other tools may touch one too
Weak signal:
  connection an ESTABLISHED TCP connection to --ports (sshd, Jupyter) older than --weak-min-age
             (an IDE window or a tunnel: open, but maybe nobody behind it)

Rule: stop when nothing strong happened for --idle seconds and no connection is open, or for
--idle-connected seconds when one is (an IDE left open over lunch survives, overnight it does not).
Logged-in terminals get a warning --warn-ahead seconds before (default 5 min, scaled down for short
settings), also when a poll comes late (the stop then waits that long); activity in between cancels
the stop.  --max-lifetime stops the box at that age regardless (a late warning is a shorter one).
Every poll is one JSON line in --log; --state holds the latest numbers for `mlenv ls`.
"""

import argparse
import glob
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time

ACTIVE, IDLE, UNKNOWN = "active", "idle", "unknown"
TCP_ESTABLISHED = "01"
LOG_MAX_BYTES = 1 << 20
DEFAULT_WARN_AHEAD = 300.0
WARNING_DELIVERY_S = 5.0


class Reading(object):
    """One signal's answer; ``at`` is when the activity happened when the signal knows (terminals)."""

    def __init__(self, state, detail="", at=None):
        self.state, self.detail, self.at = state, detail, at

    def as_dict(self):
        data = {"state": self.state}
        if self.detail:
            data["detail"] = self.detail
        return data

    def __repr__(self):
        return "Reading(%r, %r)" % (self.state, self.detail)


def _short(exc):
    text = str(exc).strip() or type(exc).__name__
    return text[:200]


# --- keep-alives -----------------------------------------------------------------------------------


def probe_keepalive(directory, now):
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return Reading(IDLE, "no keep-alive")
    except OSError as exc:
        return Reading(UNKNOWN, "cannot list %s: %s" % (directory, _short(exc)))
    held, unreadable = [], []
    for name in names:
        if name.startswith("."):  # a keep-alive being written (write_file renames it into place)
            continue
        try:
            with open(os.path.join(directory, name)) as handle:
                expiry = float(handle.read().strip())
        except (OSError, ValueError):
            unreadable.append(name)
            continue
        if expiry > now:
            held.append("%s for %ds" % (name, expiry - now))
    if held:
        return Reading(ACTIVE, ", ".join(held))
    if unreadable:
        return Reading(UNKNOWN, "unreadable keep-alive " + ", ".join(unreadable))
    return Reading(IDLE, "no keep-alive held")


# --- Jupyter ---------------------------------------------------------------------------------------


HOMES = ("/home/*", "/root")  # users' home folders


def default_jupyter_dirs():
    """Where Jupyter servers write their jpserver-PID.json: every user's default runtime folder, and
    the platformdirs one (JUPYTER_PLATFORM_DIRS=1).  Looked up on every poll: a user's folder appears
    when their first server starts, long after the watchdog did."""
    # the watchdog's own home too: a user's watchdog (ssh provider) may live outside /home
    homes = {home for pattern in HOMES for home in glob.glob(pattern)} | {os.path.expanduser("~")}
    dirs = [os.environ.get("JUPYTER_RUNTIME_DIR", "")]
    dirs += [os.path.join(home, ".local/share/jupyter/runtime") for home in sorted(homes)]
    dirs += glob.glob("/run/user/*/jupyter")
    return [d for d in dirs if d and os.path.isdir(d)]


def _pid_alive(pid):
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError):
        return True
    return True


def process_start_time(pid, proc="/proc"):
    """When process ``pid`` started (epoch seconds), or None when /proc cannot tell."""
    try:
        with open(os.path.join(proc, str(int(pid)), "stat")) as handle:
            fields = handle.read().rsplit(")", 1)[1].split()  # the name in (...) may hold spaces
        ticks = int(fields[19])  # field 22, starttime: clock ticks after boot (fields[0] is field 3)
        with open(os.path.join(proc, "stat")) as handle:
            boot = next(float(line.split()[1]) for line in handle if line.startswith("btime "))
    except (OSError, ValueError, IndexError, TypeError, StopIteration):
        return None
    return boot + ticks / float(os.sysconf("SC_CLK_TCK"))


def server_gone(info, path):
    """True for the runtime file of a server that no longer runs: its process is gone, or its pid
    now belongs to a process that started after the file was written (a restarted box or
    container hands out the same small pids again, and the file survived on its disk)."""
    if "pid" not in info:
        return False
    if not _pid_alive(info["pid"]):
        return True
    started = process_start_time(info["pid"])
    try:
        written = os.stat(path).st_mtime
    except OSError:
        return True
    return started is not None and started > written + 2  # btime is whole seconds


def kernels_busy(kernels):
    """Names of busy kernels in an /api/kernels answer."""
    return ["%s (%s)" % (k.get("name", "?"), str(k.get("id", ""))[:8]) for k in kernels
            if isinstance(k, dict) and k.get("execution_state") == "busy"]


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a unix socket: a server started with ``--sock`` has no TCP port."""

    def __init__(self, path, timeout):
        http.client.HTTPConnection.__init__(self, "localhost", timeout=timeout)
        self.socket_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


def _jupyter_host(info):
    """Where to reach a server from the box itself: loopback when it listens on every interface."""
    host = str(info.get("hostname") or "")
    return "127.0.0.1" if host in ("", "0.0.0.0", "*", "::", "localhost") else host


def jupyter_address(info):
    if info.get("sock"):
        return "unix:" + str(info["sock"])
    scheme = "https" if info.get("secure") else "http"
    host = _jupyter_host(info)
    return "%s://%s:%s%s" % (scheme, "[%s]" % host if ":" in host else host, info.get("port"),
                             info.get("base_url") or "/")


def ask_jupyter(info, path, timeout):
    """GET ``base_url + path`` from the server a jpserver-PID.json describes, with its token; the
    decoded JSON answer.  Raises on anything else (the caller counts that as "cannot tell")."""
    if info.get("sock"):
        connection = _UnixHTTPConnection(str(info["sock"]), timeout)
    elif info.get("secure"):  # our own server on this machine: its certificate names some other host
        connection = http.client.HTTPSConnection(_jupyter_host(info), int(info.get("port") or 8888), timeout=timeout,
                                                 context=ssl._create_unverified_context())
    else:
        connection = http.client.HTTPConnection(_jupyter_host(info), int(info.get("port") or 8888), timeout=timeout)
    headers = {"Authorization": "token " + str(info["token"])} if info.get("token") else {}
    try:
        connection.request("GET", (info.get("base_url") or "/") + path, headers=headers)
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    if response.status != 200:
        raise ValueError("HTTP %d %s" % (response.status, response.reason))
    return json.loads(body.decode("utf-8"))


def probe_jupyter(runtime_dirs, timeout=5.0):
    servers = []
    for directory in runtime_dirs:
        servers += glob.glob(os.path.join(directory, "jpserver-*.json"))
        servers += glob.glob(os.path.join(directory, "nbserver-*.json"))
    if not servers:
        return Reading(IDLE, "no Jupyter server")
    busy, problems, asked = [], [], 0
    for path in sorted(set(servers)):
        try:
            with open(path) as handle:
                info = json.load(handle)
        except (OSError, ValueError) as exc:
            problems.append("%s: %s" % (os.path.basename(path), _short(exc)))
            continue
        if server_gone(info, path):
            continue  # a file left behind
        asked += 1
        try:
            kernels = ask_jupyter(info, "api/kernels?no_track_activity=1", timeout)
        except Exception as exc:  # noqa: BLE001 - any failure is "cannot tell", which keeps the box up
            problems.append("%s: %s" % (jupyter_address(info), _short(exc)))
            continue
        if not isinstance(kernels, list):
            problems.append("unexpected answer from %s" % jupyter_address(info))
            continue
        busy += kernels_busy(kernels)
    if busy:
        return Reading(ACTIVE, "busy kernel " + ", ".join(busy))
    if problems:
        return Reading(UNKNOWN, "; ".join(problems))
    return Reading(IDLE, "%d server(s), no busy kernel" % asked if asked else "no live Jupyter server")


# --- GPU -------------------------------------------------------------------------------------------


def parse_nvidia_smi(output):
    """Utilization percentages from ``--query-gpu=utilization.gpu --format=csv,noheader,nounits``."""
    values = []
    for line in output.strip().splitlines():
        line = line.strip().rstrip("%").strip()
        if line:
            values.append(int(float(line)))  # "[N/A]" raises ValueError: the caller says unknown
    return values


def probe_gpu(nvidia_smi, threshold, timeout):
    binary = shutil.which(nvidia_smi)
    if binary is None:
        return Reading(IDLE, "no nvidia-smi (no GPU)")
    try:
        result = subprocess.run([binary, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    except subprocess.TimeoutExpired:
        return Reading(UNKNOWN, "nvidia-smi did not answer within %gs" % timeout)
    except OSError as exc:
        return Reading(UNKNOWN, "nvidia-smi: %s" % _short(exc))
    if result.returncode != 0:
        tail = result.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        return Reading(UNKNOWN, "nvidia-smi exited %d %s" % (result.returncode, tail[0][:120]))
    try:
        values = parse_nvidia_smi(result.stdout.decode("utf-8", "replace"))
    except ValueError:
        return Reading(UNKNOWN, "unreadable nvidia-smi output %r" % result.stdout[:80])
    if not values:
        return Reading(UNKNOWN, "nvidia-smi listed no GPU")
    detail = "utilization %s%%" % ",".join(str(v) for v in values)
    return Reading(ACTIVE if max(values) >= threshold else IDLE, detail)


# --- CPU -------------------------------------------------------------------------------------------


def parse_proc_stat(text):
    """(busy seconds summed over CPUs, number of CPUs) from /proc/stat."""
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    busy, cpus = None, 0
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        if fields[0] == "cpu":
            values = [int(v) for v in fields[1:9]] + [0] * (8 - len(fields[1:9]))
            user, nice, system, idle, iowait, irq, softirq, steal = values
            # guest time is already inside user/nice; idle and iowait are the CPU doing nothing
            busy = user + nice + system + irq + softirq + steal
        elif fields[0].startswith("cpu") and fields[0][3:].isdigit():
            cpus += 1
    if busy is None:
        raise ValueError("no cpu line in /proc/stat")
    return busy / float(ticks), max(cpus, 1)


def parse_cgroup_cpu_stat(text):
    """Busy seconds of a cgroup (v2 cpu.stat usage_usec)."""
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0] == "usage_usec":
            return int(fields[1]) / 1e6
    raise ValueError("no usage_usec in cpu.stat")


def parse_cpuacct_usage(text):
    """Busy seconds of a cgroup v1 (cpuacct.usage, nanoseconds)."""
    return int(text.strip()) / 1e9


def in_container():
    return os.path.exists("/.dockerenv") or os.path.exists("/run/.containerenv")


# A container sees the host's /proc/stat (every neighbour's CPU); its own cgroup counts only its own.
CGROUP_FILES = ("/sys/fs/cgroup/cpu.stat", "/sys/fs/cgroup/cpuacct/cpuacct.usage",
                "/sys/fs/cgroup/cpu,cpuacct/cpuacct.usage")


class CpuMeter(object):
    """Busy cores averaged over at least ``window`` seconds (the poll interval): over a few
    milliseconds one clock tick reads as cores of work (the first poll at boot logged 11.46)."""

    def __init__(self, source="auto", proc_stat="/proc/stat", cgroup_stat=None, threshold=0.5, window=1.0):
        candidates = [cgroup_stat] if cgroup_stat else list(CGROUP_FILES)
        cgroup = next((path for path in candidates if os.path.exists(path)), candidates[0])
        if source == "auto":
            source = "cgroup" if in_container() and os.path.exists(cgroup) else "proc"
        self.source, self.threshold, self.window = source, threshold, window
        self.path = cgroup if source == "cgroup" else proc_stat
        self.readings = []  # (time, busy seconds), oldest first

    def busy_seconds(self):
        with open(self.path) as handle:
            text = handle.read()
        if self.source != "cgroup":
            return parse_proc_stat(text)[0]
        if self.path.endswith("cpuacct.usage"):
            return parse_cpuacct_usage(text)
        return parse_cgroup_cpu_stat(text)

    def probe(self, now):
        try:
            busy = self.busy_seconds()
        except (OSError, ValueError) as exc:
            return Reading(UNKNOWN, "cannot read %s: %s" % (self.path, _short(exc)))
        self.readings = [r for r in self.readings if r[0] < now] + [(now, busy)]
        old = [r for r in self.readings if now - r[0] >= self.window]
        if not old:
            # only in the first window after start: unknown keeps the box up that long, no longer
            return Reading(UNKNOWN, "measuring (first %gs)" % self.window)
        self.readings = self.readings[len(old) - 1:]  # the newest one old enough is the next baseline
        since, before = old[-1]
        cores = (busy - before) / (now - since)
        return Reading(ACTIVE if cores >= self.threshold else IDLE, "%.2f busy cores (%s)" % (cores, self.source))


# --- terminals -------------------------------------------------------------------------------------


def terminals(dev_pts="/dev/pts"):
    return [os.path.join(dev_pts, n) for n in sorted(os.listdir(dev_pts)) if n.isdigit()]


def probe_terminals(dev_pts, now, window):
    """Active when a terminal got input within ``window`` seconds; ``at`` = the newest input time."""
    try:
        paths = terminals(dev_pts)
    except OSError as exc:
        return Reading(UNKNOWN, "cannot list %s: %s" % (dev_pts, _short(exc)))
    newest = None
    for path in paths:
        try:
            atime = os.stat(path).st_atime
        except OSError:
            continue  # closed between listing and stat
        newest = atime if newest is None else max(newest, atime)
    if newest is None:
        return Reading(IDLE, "no terminal")
    ago = now - newest
    state = ACTIVE if ago <= window else IDLE
    return Reading(state, "%d terminal(s), input %ds ago" % (len(paths), max(0, ago)), at=newest)


def probe_activity(directory, now, window):
    """Active when a file in ``directory`` was touched within ``window`` seconds; ``at`` = newest."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return Reading(IDLE, "no activity marks")
    except OSError as exc:
        return Reading(UNKNOWN, "cannot list %s: %s" % (directory, _short(exc)))
    newest, latest = None, ""
    for name in names:
        try:
            mtime = os.stat(os.path.join(directory, name)).st_mtime
        except OSError:
            continue
        if newest is None or mtime > newest:
            newest, latest = mtime, name
    if newest is None:
        return Reading(IDLE, "no activity marks")
    ago = now - newest
    return Reading(ACTIVE if ago <= window else IDLE, "%s %ds ago" % (latest, max(0, ago)), at=newest)


def warn_terminals(message, dev_pts="/dev/pts"):
    """Write ``message`` to every terminal (writing moves their mtime, never the atime we read)."""
    reached = 0
    try:
        paths = terminals(dev_pts)
    except OSError:
        return 0
    for path in paths:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            os.write(fd, ("\r\n\a*** %s ***\r\n" % message).encode("utf-8"))
            reached += 1
        except OSError:
            pass
        finally:
            os.close(fd)
    return reached


# --- connections -----------------------------------------------------------------------------------


def parse_proc_net_tcp(text):
    """ESTABLISHED connections in /proc/net/tcp or tcp6: list of (local_port, remote, inode)."""
    connections = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[3] != TCP_ESTABLISHED:
            continue
        local, remote, inode = fields[1], fields[2], fields[9]
        connections.append((int(local.rsplit(":", 1)[1], 16), remote, inode))
    return connections


class ConnectionTracker(object):
    """Connections to ``ports`` and since when each has been seen (/proc/net/tcp has no age)."""

    def __init__(self, ports, min_age, files=("/proc/net/tcp", "/proc/net/tcp6")):
        self.ports, self.min_age, self.files = set(ports), min_age, files
        self.first_seen = {}

    def probe(self, now):
        current, problems = set(), []
        for path in self.files:
            try:
                with open(path) as handle:
                    text = handle.read()
            except FileNotFoundError:
                continue  # no IPv6
            except OSError as exc:
                problems.append("%s: %s" % (path, _short(exc)))
                continue
            current |= {c for c in parse_proc_net_tcp(text) if c[0] in self.ports}
        self.first_seen = {c: self.first_seen.get(c, now) for c in current}
        old = [c for c, seen in self.first_seen.items() if now - seen >= self.min_age]
        if problems and not old:
            return Reading(UNKNOWN, "; ".join(problems))
        if old:
            ports = sorted({c[0] for c in old})
            return Reading(ACTIVE, "%d connection(s) to port %s" % (len(old), ",".join(map(str, ports))))
        young = len(current)
        return Reading(IDLE, "%d new connection(s)" % young if young else "no connection")


# --- the decision ----------------------------------------------------------------------------------


class Watchdog(object):
    """Signals in, decisions out.  ``clock``, the probes and ``act`` are injectable for tests."""

    def __init__(self, args, clock=time.time, probes=None, act=None, warn=warn_terminals):
        self.args, self.clock, self.warn = args, clock, warn
        self.started = clock()
        self.last_strong = self.started
        self.last_strong_reason = "start"
        self.warned_for = None  # the reason a stop was announced for (None: no stop announced)
        self.warned_at = None  # when it was announced (epoch seconds)
        self.stopped = False
        self.act = act or self.stop_box
        if probes is None:
            cpu = CpuMeter(args.cpu_source, threshold=args.cpu_cores, window=args.poll)
            cpu.probe(self.started)
            connections = ConnectionTracker(args.ports, args.weak_min_age)
            probes = {
                "keepalive": lambda now: probe_keepalive(args.keepalive_dir, now),
                "jupyter": lambda now: probe_jupyter(args.jupyter_runtime_dir or default_jupyter_dirs()),
                "gpu": lambda now: probe_gpu(args.nvidia_smi, args.gpu_percent, args.nvidia_smi_timeout),
                "cpu": cpu.probe,
                "terminal": lambda now: probe_terminals(args.dev_pts, now, max(args.poll, 10.0)),
                "login": lambda now: probe_activity(args.activity_dir, now, max(args.poll, 10.0)),
                "connection": connections.probe,
            }
        self.strong = {k: v for k, v in probes.items() if k != "connection"}
        self.weak = probes.get("connection", lambda now: Reading(IDLE))

    def warn_ahead(self, limit):
        return min(self.args.warn_ahead if self.args.warn_ahead is not None else DEFAULT_WARN_AHEAD, limit / 4.0)

    def step(self):
        """One poll: read every signal, decide, log.  Returns the decision record."""
        args, now = self.args, self.clock()
        readings = {}
        for name, probe in self.strong.items():
            try:
                readings[name] = probe(now)
            except Exception as exc:  # noqa: BLE001 - a broken probe is "cannot tell", never "idle"
                readings[name] = Reading(UNKNOWN, "probe failed: %s" % _short(exc))
        try:
            weak = self.weak(now)
        except Exception as exc:  # noqa: BLE001
            weak = Reading(UNKNOWN, "probe failed: %s" % _short(exc))
        for name, reading in readings.items():
            if reading.at is not None:  # the signal knows when (terminal input): no rounding up to now
                if reading.at > self.last_strong:
                    self.last_strong, self.last_strong_reason = min(reading.at, now), name
            elif reading.state in (ACTIVE, UNKNOWN):
                self.last_strong, self.last_strong_reason = now, name
        connected = weak.state in (ACTIVE, UNKNOWN)
        limit = args.idle_connected if connected else args.idle
        idle_for = now - self.last_strong
        age = now - self.started
        idle_left, life_left = limit - idle_for, args.max_lifetime - age
        reason = "max-lifetime" if life_left <= idle_left else ("idle-connected" if connected else "idle")
        due = min(idle_left, life_left)
        ahead = self.warn_ahead(limit if reason != "max-lifetime" else args.max_lifetime)
        event = "poll"
        if due > ahead:
            if self.warned_for is not None:
                event, self.warned_for, self.warned_at = "cancel", None, None
        else:
            if self.warned_for != reason:
                event, self.warned_for, self.warned_at = "warn", reason, now
            # Every stop is announced `ahead` seconds before it happens, also when this poll came
            # after the stop was due (a probe that took its whole timeout, a disk that stalled the
            # log, a loaded or suspended machine): otherwise the box stops unannounced, or the
            # warning is still in the terminal's buffer when sshd is killed with the box.  Max
            # lifetime is a hard stop: a late warning only shortens, and one given after it gets
            # just the moment it needs to reach the terminals.
            due = min(max(due, self.warned_at + ahead - now),
                      max(life_left, self.warned_at + min(ahead, WARNING_DELIVERY_S) - now))
            if due <= 0:
                event = "stop"
        record = {
            "t": round(now, 3), "event": event, "idle_for_s": round(idle_for, 1), "limit_s": limit,
            "stop_due_s": round(max(due, 0.0), 1), "reason": reason, "last_activity": self.last_strong_reason,
            "signals": dict([(k, v.as_dict()) for k, v in readings.items()] + [("connection", weak.as_dict())]),
        }
        self.next_poll_in = min(args.poll, due - ahead if due > ahead else due)
        if event == "warn":
            record["terminals_warned"] = self.warn(
                "mlenv: this box stops in %ds (%s). Press a key in a terminal or run `mlenv keepalive` to keep it."
                % (round(due), reason if reason != "max-lifetime" else "max lifetime reached"), args.dev_pts)
        self.log(record)
        self.write_state(record, now)
        if record["event"] == "stop":
            self.stopped = True
            self.act(reason)
        return record

    def log(self, record):
        path = self.args.log
        line = json.dumps(record, sort_keys=True)
        if not path:
            print(line, flush=True)
            return
        try:
            if os.path.exists(path) and os.path.getsize(path) > LOG_MAX_BYTES:
                os.replace(path, path + ".1")
            with open(path, "a") as handle:
                handle.write(line + "\n")
        except OSError as exc:
            sys.stderr.write("watchdog: cannot write %s: %s\n" % (path, exc))
        if record["event"] != "poll":
            print(line, flush=True)  # the box's console / `docker logs` keep the decisions too

    def write_state(self, record, now):
        if not self.args.state:
            return
        state = {"updated": round(now, 3), "started": round(self.started, 3), "idle_for_s": record["idle_for_s"],
                 "stop_due_s": record["stop_due_s"], "reason": record["reason"], "event": record["event"]}
        tmp = self.args.state + ".tmp"
        try:
            with open(tmp, "w") as handle:
                json.dump(state, handle)
            os.replace(tmp, self.args.state)
        except OSError:
            pass

    def stop_box(self, reason):
        if self.args.action == "poweroff":
            for argv in (["shutdown", "-h", "now"], ["systemctl", "poweroff"], ["poweroff"]):
                try:
                    if subprocess.run(argv).returncode == 0:
                        return
                except OSError:
                    continue
            self.log({"t": round(self.clock(), 3), "event": "error", "detail": "could not power off"})
        # "exit": the process the box lives by ends (PID 1 of the docker provider's container)

    def run(self):
        self.log({"t": round(self.started, 3), "event": "start", "settings": settings(self.args)})
        while not self.stopped:
            self.step()
            _reap_children()
            if not self.stopped:
                # wake for the warning and for the stop itself, so a stop lands on time, not a poll late
                time.sleep(max(0.2, self.next_poll_in + 0.05))
        return 0


def _reap_children():
    """As PID 1 of a container, collect the processes orphaned to us (ended ssh sessions ...)."""
    if os.getpid() != 1:
        return
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def settings(args):
    keys = ("idle", "idle_connected", "max_lifetime", "poll", "action", "ports", "weak_min_age", "cpu_cores",
            "gpu_percent", "warn_ahead")
    return dict((k, getattr(args, k)) for k in keys)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Stop this box when nobody uses it (mlenv).")
    parser.add_argument("--idle", type=float, default=1800, help="seconds without strong activity")
    parser.add_argument("--idle-connected", type=float, default=3 * 3600,
                        help="seconds without strong activity while a connection is open")
    parser.add_argument("--max-lifetime", type=float, default=12 * 3600, help="hard stop after this many seconds")
    parser.add_argument("--poll", type=float, default=30)
    parser.add_argument("--log", default="", help="JSON lines of decisions (default: stdout)")
    parser.add_argument("--state", default="", help="latest numbers, for `mlenv ls`")
    parser.add_argument("--keepalive-dir", default="/var/lib/mlenv/keepalive")
    parser.add_argument("--activity-dir", default="/var/lib/mlenv/activity",
                        help="files touched on activity (an SSH login, via /etc/ssh/sshrc)")
    parser.add_argument("--action", choices=("poweroff", "exit"), default="poweroff")
    parser.add_argument("--ports", default="22,8888", help="ports whose connections are weak activity")
    parser.add_argument("--weak-min-age", type=float, default=60)
    parser.add_argument("--cpu-cores", type=float, default=0.5, help="busy cores that count as active")
    parser.add_argument("--cpu-source", choices=("auto", "proc", "cgroup"), default="auto")
    parser.add_argument("--gpu-percent", type=float, default=10)
    parser.add_argument("--nvidia-smi", default="nvidia-smi")
    parser.add_argument("--nvidia-smi-timeout", type=float, default=10)
    parser.add_argument("--jupyter-runtime-dir", action="append", default=[])
    parser.add_argument("--dev-pts", default="/dev/pts")
    parser.add_argument("--warn-ahead", type=float, default=None,
                        help="seconds of warning before a stop (default 300, at most a quarter of the limit)")
    args = parser.parse_args(argv)
    try:
        args.ports = [int(p) for p in str(args.ports).split(",") if p.strip()]
    except ValueError:
        parser.error("--ports: comma-separated port numbers")
    for name in ("idle", "idle_connected", "max_lifetime", "poll"):
        if getattr(args, name) <= 0:
            parser.error("--%s must be positive" % name.replace("_", "-"))
    return args


def main(argv=None):
    args = parse_args(argv)
    for path in (args.keepalive_dir, args.activity_dir):
        try:
            os.makedirs(path, exist_ok=True)
            if os.geteuid() == 0:
                # a system watchdog: any user on the box may write here (sticky: not remove others' files);
                # a user's own watchdog (ssh provider) keeps its folders to itself
                os.chmod(path, 0o1777)
        except OSError:
            pass
    watchdog = Watchdog(args)

    def on_signal(number, frame):
        watchdog.log({"t": round(time.time(), 3), "event": "exit", "detail": "signal %d" % number})
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return watchdog.run()


if __name__ == "__main__":
    sys.exit(main())
