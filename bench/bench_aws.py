"""The aws provider's own overhead, against moto running as a real HTTP server on loopback.

moto answers instantly (instances never boot), so these are mlenv's costs: boto3 start-up, the API
calls `up` makes (SSM, key pair, security group, run, alarm, tags) and the CLI around them.  A real
EC2 `up` adds the instance's boot (~30-90 s) on top.  Needs `moto_server` (the test extra).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from bench_cli import mlenv_command
from common import Row, Skip, print_table, repetitions, run_timed

BENCHMARK = "aws"
SPEC = (
    '[project]\nname = "benchbox"\npython = "3.11"\ndependencies = []\n\n'
    '[targets.cpu]\nplatform = "linux/x86_64"\n\n'
    # moto serves Amazon Linux's public parameters only
    '[devbox]\nami-parameter = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"\n'
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> list[Row]:
    binary = shutil.which("moto_server")
    if binary is None:
        raise Skip("no moto_server (pip install 'moto[server]')")
    repeat = repetitions(5, 2)
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="mlenv-bench-aws-") as tmp:
        folder = Path(tmp)
        server = subprocess.Popen([binary, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=2)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise Skip("moto_server did not start") from None
                    time.sleep(0.2)
            env = {**os.environ, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench",
                   "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1", "MLENV_CALLER_IP": "198.51.100.7",
                   "HOME": str(folder / "home"), "MLENV_HOME": str(folder / "mlenv")}
            env.pop("AWS_PROFILE", None)
            (folder / "home").mkdir()
            project = folder / "project"
            project.mkdir()
            (project / "mlenv.toml").write_text(SPEC)
            mlenv = mlenv_command()
            run_timed([*mlenv, "lock"], cwd=project, env=env)
            samples: dict[str, list[float]] = {"up --dry-run": [], "up (create)": [], "up again (found by tags)": [],
                                               "ls --json": [], "stop": [], "start": [], "down --yes": []}
            for _ in range(repeat):
                samples["up --dry-run"].append(run_timed([*mlenv, "up", "b1", "--provider", "aws", "--dry-run"],
                                                         cwd=project, env=env))
                samples["up (create)"].append(run_timed([*mlenv, "up", "b1", "--provider", "aws", "--yes", "--no-wait"],
                                                        cwd=project, env=env))
                samples["up again (found by tags)"].append(
                    run_timed([*mlenv, "up", "b1", "--provider", "aws", "--yes", "--no-wait"], cwd=project, env=env))
                samples["ls --json"].append(
                    run_timed([*mlenv, "ls", "--json", "--provider", "aws"], cwd=project, env=env))
                samples["stop"].append(run_timed([*mlenv, "stop", "b1", "--provider", "aws"], cwd=project, env=env))
                samples["start"].append(run_timed([*mlenv, "start", "b1", "--provider", "aws"], cwd=project, env=env))
                samples["down --yes"].append(run_timed([*mlenv, "down", "b1", "--yes", "--provider", "aws"],
                                                       cwd=project, env=env))
        finally:
            server.terminate()
            server.wait(timeout=20)
    rows = [Row(BENCHMARK, f"mlenv {case}", times) for case, times in samples.items()]
    print_table("aws provider against moto_server (mlenv's overhead; a real instance adds its boot)", rows,
                caption=f"{repeat} cycles of dry-run, up, up again, ls, stop, start, down; wall time of the CLI")
    return rows


if __name__ == "__main__":
    main()
