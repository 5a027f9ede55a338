"""`mlenv sweep --on BOX`: a real docker-provider dev box (the boxes tests' project and image), made as
the README shows (`mlenv up` with no build options: the box's mlenv is the default tool venv)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import NOTEBOOKS, REPO, make_notebook, up

pytestmark = [pytest.mark.docker, pytest.mark.network]  # the dev image installs uv from PyPI

ON_THE_BOX = ("import os, socket, sys, time, mlenv\n"
              "from mlenv.boxes.model import KEEPALIVE_DIR\n"
              "held = open(os.path.join(KEEPALIVE_DIR, 'sweep')).read()\n"
              "mlenv.record('kept_alive', float(held) > time.time())\n"
              "mlenv.record('host', socket.gethostname())\n"
              "mlenv.record('y', x * 2)")


def test_sweep_on_a_box_holds_it_streams_progress_and_brings_the_results_back(box_project, box, tmp_path,
                                                                               docker_client):
    project = box_project
    up(project, box)
    notebook = make_notebook(tmp_path / "onbox.ipynb", "x = 1", ON_THE_BOX)  # outside the project: no lock
    out = tmp_path / "results"
    result = project.mlenv("sweep", str(notebook), "-p", "x=1,2", "--on", box, "-o", str(out), "--sort", "y:desc",
                           timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"sweep started on box {box}" in result.stderr
    assert "✓ x=2-" in result.stderr and "completed" in result.stderr  # the box's progress lines, streamed
    assert "best by y:desc: x=2-" in result.stdout  # the box's summary
    data = json.loads((out / "results.json").read_text())
    assert data["counts"] == {"completed": 2}
    runs = {run["parameters"]["x"]: run for run in data["runs"]}
    assert runs[2]["metrics"]["y"] == 4 and all(run["metrics"]["kept_alive"] for run in data["runs"])
    container = next(c for c in docker_client.containers.list(filters={"label": f"mlenv.box={box}"}))
    # ... by the box's default mlenv: the wheel `mlenv up` wrote, without the host-side packages
    heavy = container.exec_run(["/opt/mlenv/bin/python", "-c", "import importlib.util as u; print(sorted(m for m in "
                                "('docker', 'boto3', 'paramiko', 'distributed', 'papermill') if u.find_spec(m)))"])
    assert heavy.output.decode().strip() == "['papermill']", heavy.output
    assert {run["metrics"]["host"] for run in data["runs"]} == {container.attrs["Config"]["Hostname"]}
    for run in data["runs"]:
        assert json.loads((out / run["output"]).read_text())["metadata"]["mlenv"]["status"] == "completed"
    assert (out / "report.html").is_file() and (out / "results.csv").is_file()
    # afterwards: the keep-alive is released and the sweep's folder on the box is gone
    from mlenv.boxes.model import KEEPALIVE_DIR

    left = container.exec_run(["sh", "-c", f"ls {KEEPALIVE_DIR}; ls -d /tmp/mlenv-sweep-* 2>/dev/null; true"])
    assert b"sweep" not in left.output, left.output

    # in a locked project the box checks its kernel against the same lock (this lock has no ipykernel)
    locked = make_notebook(project.root / "locked.ipynb", "x = 1", "y = x")
    checked = project.mlenv("sweep", str(locked), "--on", box, "-o", str(tmp_path / "locked"), timeout=300)
    assert checked.returncode in (1, 8), checked.stdout + checked.stderr
    assert "mlenv.lock" in checked.stderr or "ipykernel is not installed" in checked.stderr
    assert not (tmp_path / "locked" / "results.json").exists()
    # --spec names that project for the notebook outside it: the box checks against its lock as well
    named = project.mlenv("sweep", str(notebook), "--spec", str(project.root), "--on", box,
                          "-o", str(tmp_path / "named"), timeout=300)
    assert named.returncode in (1, 8), named.stdout + named.stderr
    assert "mlenv.lock" in named.stderr or "ipykernel is not installed" in named.stderr
    assert not (tmp_path / "named" / "results.json").exists()

    # SIGTERM here stops the sweep there the same way: finished runs kept and brought back, exit 143
    import os
    import signal
    import subprocess
    import sys
    import time

    napping = tmp_path / "napping.ipynb"
    napping.write_text((NOTEBOOKS / "napping.ipynb").read_text())
    stopped = tmp_path / "stopped"
    process = subprocess.Popen(
        [sys.executable, "-m", "mlenv", "sweep", str(napping), "-p", "i=1,2,3,4,5,6,7,8", "-p", "naptime=2",
         "--jobs", "1", "--on", box, "-o", str(stopped)],
        cwd=project.root, env={**os.environ, **project.env, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = ""
    deadline = time.monotonic() + 180
    while "completed" not in seen and time.monotonic() < deadline:  # one run finished on the box
        seen += process.stderr.readline()
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=180)
    assert process.returncode == 143, seen + stderr
    assert "stopping the sweep on box" in stderr and "Traceback" not in stderr
    statuses = [run["status"] for run in json.loads((stopped / "results.json").read_text())["runs"]]
    assert "completed" in statuses and "not-run" in statuses
