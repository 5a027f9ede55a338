"""Dev boxes, docker provider: how fast `mlenv up` gives a box you can SSH into, and how precisely
the watchdog stops an idle one.

Cases:
- `mlenv up NAME` of a new box with the dev image present, to SSH ready (goal < 5 s): the command's
  wall time (it returns when sshd answers), and until a real `ssh mlenv-NAME true` has run;
- `mlenv up NAME` of a stopped box (started again);
- idle to stopped: when the container stopped, against the watchdog's start + the configured idle,
  for two idle settings (goal: late by less than one poll interval).

Needs a Docker Engine (DOCKER_HOST; default the test engine's socket), a BuildKit-capable docker CLI
(MLENV_DOCKER or PATH), the base image (MLENV_BENCH_BASE, default the tests' debootstrap image
``localhost/python:3.11-slim-bookworm``) and an OpenSSH client.  The dev image is built once, untimed
(this checkout's wheel is served on loopback for its mlenv-tool stage).
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, BenchFailed, Row, Skip, print_table, repetitions  # noqa: E402

BENCHMARK = "boxes"
BASE = os.environ.get("MLENV_BENCH_BASE", "localhost/python:3.11-slim-bookworm")
TEST_ENGINE = "unix:///tmp/mlenv-docker/docker.sock"
SPEC = f"""\
[project]
name = "boxbench"
python = "3.11"
dependencies = []

[targets.cpu]
platform = "linux/x86_64"

[image]
base = "{BASE}"
"""


def _env(home: Path) -> dict:
    env = dict(os.environ, HOME=str(home), MLENV_HOME=str(home / "mlenv-data"))
    env.pop("MLENV_DEBUG", None)
    if not env.get("DOCKER_HOST") and Path(TEST_ENGINE.removeprefix("unix://")).exists():
        env["DOCKER_HOST"] = TEST_ENGINE
    if not env.get("MLENV_DOCKER") and Path("/usr/bin/docker").exists():
        env["MLENV_DOCKER"] = "/usr/bin/docker"
    return env


def _client(env: dict):
    import docker

    try:
        client = docker.DockerClient(base_url=env.get("DOCKER_HOST") or "unix:///var/run/docker.sock", timeout=60)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure: no engine here
        raise Skip(f"no Docker engine ({exc})") from None
    try:
        client.images.get(BASE)
    except docker.errors.ImageNotFound:
        raise Skip(f"base image {BASE} missing (the docker tests make it)") from None
    if shutil.which("ssh") is None:
        raise Skip("no OpenSSH client")
    return client


def _serve_wheel(folder: Path) -> tuple[str, http.server.ThreadingHTTPServer]:
    import uv

    built = subprocess.run([uv.find_uv_bin(), "build", "--wheel", "--quiet", "-o", str(folder), str(REPO)],
                           capture_output=True, text=True)
    if built.returncode != 0:
        raise BenchFailed(f"building the mlenv wheel failed: {built.stderr[-500:]}")
    wheel = next(folder.glob("mlenv-*.whl"))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"mlenv @ http://127.0.0.1:{server.server_address[1]}/{wheel.name}", server


def _phases(project: Path, env: dict, build: list[str], made: list[str]) -> list[Row]:
    """Where the time of one `up` goes, measured in a child process calling the provider directly."""
    code = r"""
import json, sys, time
t0 = time.perf_counter()
marks = {}
from mlenv.spec import load_spec
from mlenv.lock import read_lock
from mlenv.boxes import UpRequest
from mlenv.boxes.docker import DockerProvider, _client
from mlenv.connect import local_key
spec = load_spec("."); lock = read_lock(spec.root)
marks["imports, spec, lock, key"] = time.perf_counter() - t0; t = time.perf_counter()
_client()
marks["engine connect (docker SDK import + ping)"] = time.perf_counter() - t; t = time.perf_counter()
provider = DockerProvider(spec)
args = json.loads(sys.argv[1])
tag = provider._image(spec, lock, "cpu", lambda m: None, args)
marks["dev image check (build_target, tag exists)"] = time.perf_counter() - t; t = time.perf_counter()
seen = {}
def progress(message):
    seen[message.split()[0]] = time.perf_counter()
req = UpRequest("phases", idle_s=3600, authorized_keys=[local_key().public_line])
provider._create(req, spec, "cpu", "app", tag, progress)
marks["create volume + container, copy boot files"] = seen["starting"] - t
marks["container start -> sshd answers"] = seen["SSH"] - seen["starting"]
print(json.dumps(marks))
"""
    options = {"network": "host", "build_args": {"MLENV_REQUIREMENT": build[1].split("=", 1)[1]}}
    made.append("phases")
    samples: dict[str, list[float]] = {}
    for _ in range(repetitions(3, 2)):
        result = subprocess.run([sys.executable, "-c", code, json.dumps(options)], cwd=project, env=env,
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise BenchFailed(f"phases: {result.stderr[-800:]}")
        for case, seconds in json.loads(result.stdout.strip().splitlines()[-1]).items():
            samples.setdefault(case, []).append(seconds)
        subprocess.run([sys.executable, "-m", "mlenv", "down", "phases", "--yes"], cwd=project, env=env,
                       capture_output=True)
    return [Row(BENCHMARK, f"  phase: {case}", values) for case, values in samples.items()]


def main(quick: bool = False) -> list[Row]:
    work = Path(tempfile.mkdtemp(prefix="mlenv-bench-boxes-"))
    home = work / "home"
    home.mkdir()
    env = _env(home)
    client = _client(env)
    project = work / "boxbench"
    project.mkdir()
    (project / "mlenv.toml").write_text(SPEC)
    mlenv = [sys.executable, "-m", "mlenv"]
    requirement, server = _serve_wheel(work / "wheel")
    build = ["--build-arg", f"MLENV_REQUIREMENT={requirement}", "--network", "host"]
    made: list[str] = []

    def run(*args: str, check: bool = True) -> tuple[float, subprocess.CompletedProcess]:
        started = time.perf_counter()
        result = subprocess.run([*mlenv, *args], cwd=project, env=env, capture_output=True, text=True)
        elapsed = time.perf_counter() - started
        if check and result.returncode != 0:
            raise BenchFailed(f"mlenv {' '.join(args)} exited {result.returncode}: {result.stderr[-800:]}")
        return elapsed, result

    def up(name: str, *args: str) -> float:
        if name not in made:
            made.append(name)
        return run("up", name, "--provider", "docker", "--yes", *args, *build)[0]

    try:
        run("lock")
        up("warm", "--idle", "1h")  # builds the dev image once, untimed
        run("down", "warm", "--yes")
        rows = []
        n = repetitions(5, 3)

        new, to_ssh, restart = [], [], []
        for i in range(n):
            name = f"b{i}"
            new.append(up(name, "--idle", "1h"))
            started = time.perf_counter()
            ssh = subprocess.run(["ssh", "-F", str(home / ".ssh" / "config"), f"mlenv-{name}", "true"],
                                 env=env, capture_output=True, text=True)
            if ssh.returncode != 0:
                raise BenchFailed(f"ssh mlenv-{name} failed: {ssh.stderr[-300:]}")
            to_ssh.append(new[-1] + time.perf_counter() - started)
            run("stop", name)
            restart.append(up(name, "--idle", "1h"))
            run("down", name, "--yes")
        rows.append(Row(BENCHMARK, "up, new box, image present -> SSH ready", new, goal="< 5 s",
                        met=sorted(new)[len(new) // 2] < 5))
        rows.append(Row(BENCHMARK, "up + first `ssh mlenv-NAME true`", to_ssh))
        rows.append(Row(BENCHMARK, "up of a stopped box -> SSH ready", restart))
        rows += _phases(project, env, build, made)

        # idle to stopped, boxes side by side (nothing touches them after up)
        settings = {"i10": 10, "i30": 30}
        for name, idle in settings.items():
            up(name, "--idle", f"{idle}s")
        deadline = time.monotonic() + max(settings.values()) + 60
        pending = set(settings)
        while pending and time.monotonic() < deadline:
            for name in list(pending):
                if client.containers.get(f"mlenv-box-{name}").status == "exited":
                    pending.discard(name)
            time.sleep(0.5)
        if pending:
            raise BenchFailed(f"boxes {sorted(pending)} did not stop")
        from mlenv.boxes.docker import _epoch, watchdog_timings

        for name, idle in settings.items():
            container = client.containers.get(f"mlenv-box-{name}")
            logs = container.logs(stdout=True, stderr=False).decode().splitlines()
            start = next(json.loads(line)["t"] for line in logs if '"event": "start"' in line)
            finished = _epoch(container.attrs["State"]["FinishedAt"])
            late = finished - (start + idle)
            poll = watchdog_timings(idle)[0]
            rows.append(Row(BENCHMARK, f"idle {idle}s: stopped after idle + (poll {poll}s)", [late],
                            goal=f"< {poll} s late", met=0 <= late < poll,
                            note=f"stopped {late:+.2f} s after the idle time"))
            run("down", name, "--yes")
        print_table(BENCHMARK, rows)
        return rows
    finally:
        for name in made:
            subprocess.run([*mlenv, "down", name, "--yes"], cwd=project, env=env, capture_output=True)
        for image in client.images.list(name="boxbench"):
            for tag in image.tags:
                client.images.remove(tag, force=True)
        server.shutdown()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
