"""`mlenv sweep` beyond this process: a real Dask cluster on loopback, and s3:// outputs on moto."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import NOTEBOOKS, make_notebook, require, run_mlenv


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


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("dask")
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
    def names(folder):
        return sorted(p.name for p in folder.iterdir())

    assert names(tmp_path / "dask") == names(tmp_path / "local")
    executed = json.loads(next((tmp_path / "dask").glob("x=3-*.ipynb")).read_text())
    assert executed["metadata"]["mlenv"]["status"] == "completed"

    resumed = run_mlenv(*args, "-o", str(tmp_path / "dask"), "--cluster", dask_cluster, "--resume", "--json")
    runs = json.loads(resumed.stdout)["runs"]
    assert sorted(run["resumed"] for run in runs) == [False, True, True, True]  # only the failed run again


def test_a_run_rescheduled_after_its_worker_died_counts_its_attempts(tmp_path, dask_cluster):
    # the kernel's parent is the Dask worker: the first attempt kills it, the nanny restarts it and the
    # scheduler runs the task again (on either worker); the second attempt finds the marker and goes on
    notebook = make_notebook(tmp_path / "kills.ipynb", 'marker = ""',
                             "import os, signal, time\n"
                             "if marker and not os.path.exists(marker):\n"
                             "    open(marker, 'w').close()\n"
                             "    os.kill(os.getppid(), signal.SIGKILL)\n"
                             "    time.sleep(30)",
                             "import mlenv\nmlenv.record('survived', True)")
    result = run_mlenv("sweep", str(notebook), "-r", f"marker={tmp_path / 'killed-once'}", "-o", str(tmp_path / "out"),
                       "--cluster", dask_cluster, timeout=180)
    assert result.returncode == 0, result.stderr
    [run] = json.loads((tmp_path / "out" / "results.json").read_text())["runs"]
    assert (tmp_path / "killed-once").exists()
    assert run["status"] == "completed" and run["metrics"] == {"survived": True}
    assert run["attempts"] == 2


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


# --- output places: what papermill's I/O handlers support, and nothing else -------------------------

class PutServer:
    """A real HTTP server on loopback that stores PUT bodies and serves them back (GET)."""

    def __init__(self) -> None:
        import http.server
        import threading

        files: dict[str, bytes] = {}
        self.files = files

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_PUT(self):
                files[self.path] = self.rfile.read(int(self.headers["Content-Length"]))
                self.send_response(201)
                self.end_headers()

            def do_GET(self):
                body = files.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.end_headers()
                self.wfile.write(body or b"not found")

            def do_HEAD(self):
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_http_outputs_and_resume(tmp_path):
    server = PutServer()
    try:
        args = ["sweep", str(NOTEBOOKS / "trivial.ipynb"), "-p", "x=1,2", "-o", f"{server.url}/team/trivial", "--json"]
        first = run_mlenv(*args, cwd=tmp_path)
        assert first.returncode == 0, first.stderr
        ids = sorted(run["run_id"] for run in json.loads(first.stdout)["runs"])
        assert sorted(server.files) == sorted([f"/team/trivial/{run_id}.ipynb" for run_id in ids] + [
            "/team/trivial/report.html", "/team/trivial/results.csv", "/team/trivial/results.json"])
        assert json.loads(server.files["/team/trivial/results.json"])["counts"] == {"completed": 2}
        assert server.files["/team/trivial/results.csv"].decode().startswith("run_id,status,x,y")
        assert b"<svg" in server.files["/team/trivial/report.html"]
        assert list(tmp_path.iterdir()) == []  # nothing written here
        again = run_mlenv(*args, "--resume", cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        assert all(run["resumed"] for run in json.loads(again.stdout)["runs"])
    finally:
        server.close()


@pytest.mark.parametrize("output, code, message", [
    ("ftp://host/out", 2, "papermill cannot write to ftp://"),
    ("file:///tmp/out", 2, "papermill cannot write to file://"),
    ("https://github.com/org/repo/blob/main/out", 2, "papermill cannot write to GitHub"),
    ("gs://bucket/out", 6, "gs://bucket/out"),
    ("abs://account/container/out", 6, "abs://account/container/out"),
])
def test_output_places_papermill_cannot_write_are_refused_before_any_run(tmp_path, output, code, message):
    import importlib.util

    result = run_mlenv("sweep", str(NOTEBOOKS / "trivial.ipynb"), "-o", output, cwd=tmp_path)
    assert result.returncode == code, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    if code == 2:
        assert "use a local path or one of" in result.stderr and "s3://" in result.stderr
    if output.startswith("gs://") and importlib.util.find_spec("gcsfs") is None:
        assert "pip install 'papermill[gcs]'" in result.stderr
    assert list(tmp_path.iterdir()) == []  # no ./gs:/bucket/out, no run


def test_s3_notebook_in_and_out(moto_s3, tmp_path):
    s3, env = moto_s3
    s3.put_object(Bucket="sweeps", Key="notebooks/good.ipynb", Body=(NOTEBOOKS / "good.ipynb").read_bytes())
    result = run_mlenv("sweep", "s3://sweeps/notebooks/good.ipynb", "-p", "epochs=1,2", "--json", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["notebook"] == "good.ipynb" and data["counts"] == {"completed": 2}
    assert (tmp_path / "sweeps" / "good" / "results.json").is_file()  # the default place, named after it
    missing = run_mlenv("sweep", "s3://sweeps/notebooks/nope.ipynb", env=env, cwd=tmp_path)
    assert missing.returncode == 2 and "notebook s3://sweeps/notebooks/nope.ipynb does not exist" in missing.stderr


def test_dask_workers_are_checked_against_the_lock(tmp_path, dask_cluster, spec_file):
    spec_file(tmp_path)  # a project locked to tinylib: the workers' kernels have other packages
    assert run_mlenv("lock", cwd=tmp_path).returncode == 0
    notebook = tmp_path / "trivial.ipynb"
    notebook.write_text((NOTEBOOKS / "trivial.ipynb").read_text())
    args = ["sweep", str(notebook), "-p", "x=1", "--cluster", dask_cluster, "-o", str(tmp_path / "out")]
    refused = run_mlenv(*args, cwd=tmp_path, env={"COLUMNS": "400"})
    assert refused.returncode == 1, refused.stderr
    assert "2 of 2 Dask workers do not match mlenv.lock target 'cpu'" in refused.stderr
    assert "JUPYTER_PATH=DIR/share/jupyter for `dask worker`" in refused.stderr  # the README's fix, not an image
    assert "tinylib" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "out" / "results.json").exists()
    allowed = run_mlenv(*args, "--allow-drift", cwd=tmp_path)
    assert allowed.returncode == 0, allowed.stderr
    environment = json.loads((tmp_path / "out" / "results.json").read_text())["environment"]
    assert environment["target"] == "cpu" and environment["workers"] == "2"
    assert environment["drift"] == "2 of 2 workers drifted"
