"""`mlenv sweep` beyond this process: a real Dask cluster on loopback, and s3:// outputs on moto."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, require, run_mlenv

NOTEBOOKS = REPO / "tests" / "notebooks"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port}")


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def comparable(folder: Path) -> dict:
    data = json.loads((folder / "results.json").read_text())
    return {run["run_id"]: (run["status"], run["parameters"], run["metrics"],
                            (run["error"] or {}).get("ename"), (run["error"] or {}).get("cell"))
            for run in data["runs"]}


@pytest.fixture
def dask_cluster(tmp_path):
    dask = shutil.which("dask")
    require(dask is not None, "the dask CLI (pip install distributed)")
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    workdir = tmp_path / "workers"  # workers do not share the client's folder
    workdir.mkdir()
    log = open(tmp_path / "dask.log", "w")
    processes = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                                  cwd=workdir, stdout=log, stderr=subprocess.STDOUT)]
    try:
        wait_for_port(port)
        for _ in range(2):
            processes.append(subprocess.Popen(
                [dask, "worker", address, "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"],
                cwd=workdir, stdout=log, stderr=subprocess.STDOUT))
        from distributed import Client

        with Client(address, timeout="20s") as client:
            client.wait_for_workers(2, timeout=30)
        yield address
    finally:
        stop(processes[1:])
        stop(processes[:1])
        log.close()


def test_dask_cluster_gives_the_same_results_as_local(tmp_path, dask_cluster):
    args = ["sweep", str(NOTEBOOKS / "fails.ipynb"), "-p", "x=1,2,3,4"]
    local = run_mlenv(*args, "-o", str(tmp_path / "local"), "--jobs", "2")
    remote = run_mlenv(*args, "-o", str(tmp_path / "dask"), "--cluster", dask_cluster)
    assert local.returncode == remote.returncode == 1, remote.stderr
    assert comparable(tmp_path / "dask") == comparable(tmp_path / "local")
    assert sorted(p.name for p in (tmp_path / "dask").iterdir()) == sorted(p.name for p in (tmp_path / "local").iterdir())
    executed = json.loads(next((tmp_path / "dask").glob("x=3-*.ipynb")).read_text())
    assert executed["metadata"]["mlenv"]["status"] == "completed"

    resumed = run_mlenv(*args, "-o", str(tmp_path / "dask"), "--cluster", dask_cluster, "--resume", "--json")
    runs = json.loads(resumed.stdout)["runs"]
    assert sorted(run["resumed"] for run in runs) == [False, True, True, True]  # only the failed run again


def test_unreachable_cluster_or_no_workers_is_a_clear_error(tmp_path):
    dask = shutil.which("dask")
    require(dask is not None, "dask distributed")
    args = ["sweep", str(NOTEBOOKS / "trivial.ipynb"), "-o", str(tmp_path / "out")]
    fast = {"MLENV_DASK_CONNECT_TIMEOUT": "2"}
    result = run_mlenv(*args, "--cluster", f"tcp://127.0.0.1:{free_port()}", env=fast)
    assert result.returncode == 6, result.stderr
    assert "cannot reach the Dask scheduler" in result.stderr and "Traceback" not in result.stderr

    port = free_port()
    scheduler = subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                                 cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        result = run_mlenv(*args, "--cluster", f"tcp://127.0.0.1:{port}", env=fast)
    finally:
        stop([scheduler])
    assert result.returncode == 6, result.stderr
    assert "has no workers" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "results.json").exists()


@pytest.fixture
def moto_s3(tmp_path):
    server = shutil.which("moto_server")
    require(server is not None, "moto_server (pip install 'moto[server]')")
    port = free_port()
    process = subprocess.Popen([server, "-p", str(port)], stdout=open(tmp_path / "moto.log", "w"),
                               stderr=subprocess.STDOUT)
    try:
        wait_for_port(port)
        endpoint = f"http://127.0.0.1:{port}"
        env = {"AWS_ENDPOINT_URL": endpoint, "BOTO3_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
        import boto3

        s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                          region_name="us-east-1")
        s3.create_bucket(Bucket="sweeps")
        yield s3, env
    finally:
        stop([process])


def test_s3_outputs_and_resume(moto_s3):
    s3, env = moto_s3
    args = ["sweep", str(NOTEBOOKS / "good.ipynb"), "-p", "lr=0.1,0.01", "-o", "s3://sweeps/team/good", "--json"]
    first = run_mlenv(*args, env=env)
    assert first.returncode == 0, first.stderr
    keys = sorted(obj["Key"] for obj in s3.list_objects_v2(Bucket="sweeps")["Contents"])
    ids = sorted(run["run_id"] for run in json.loads(first.stdout)["runs"])
    assert keys == sorted([f"team/good/{run_id}.ipynb" for run_id in ids] +
                          ["team/good/report.html", "team/good/results.csv", "team/good/results.json"])
    stored = json.loads(s3.get_object(Bucket="sweeps", Key="team/good/results.json")["Body"].read())
    assert stored["counts"] == {"completed": 2} and stored["metrics"] == ["accuracy", "loss"]

    again = run_mlenv(*args, "--resume", env=env)
    assert again.returncode == 0, again.stderr
    assert all(run["resumed"] for run in json.loads(again.stdout)["runs"])


def test_missing_bucket_is_a_clear_error(moto_s3):
    _, env = moto_s3
    result = run_mlenv("sweep", str(NOTEBOOKS / "trivial.ipynb"), "-o", "s3://no-such-bucket/x", env=env)
    assert result.returncode == 6, result.stderr
    assert "s3://no-such-bucket/x" in result.stderr and "Traceback" not in result.stderr
