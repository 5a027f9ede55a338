"""`mlenv sweep` as papermill users expect it (issue 13 items 1-8, issue 8 sweep items): real kernels."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import NOTEBOOKS, REPO, make_notebook, require, run_mlenv


def results(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


# --- item 4 (lists, dicts, commas, None), 5 (kernel "python"), 6 (parameters papermill cannot parse) ---

VALUES_PARAMETERS = 'layers = [4]\ncfg = {"a": 1}\nnote = "x"\nn = 1\nd = n == 3\n'
VALUES_BODY = ("import mlenv\n"
               "for name in ('layers', 'cfg', 'note', 'n', 'd'):\n"
               "    mlenv.record(name, globals()[name])\n")


def test_every_kind_of_value_reaches_the_notebook(tmp_path):
    # kernel "python": Jupyter's alias of the native kernel; `d = n == 3` is beyond papermill's parser
    notebook = make_notebook(tmp_path / "values.ipynb", VALUES_PARAMETERS, VALUES_BODY, kernel="python")
    result = run_mlenv("sweep", str(notebook), "-p", "layers=[8, 16]", "-y", "cfg: {b: [1, 2]}", "-r", "note=a,b",
                       "-p", "n=None", "-p", "d=True", "-o", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert "Unable to parse" not in result.stdout + result.stderr  # papermill's log line stays out
    [run] = results(tmp_path / "out")["runs"]
    expected = {"layers": [8, 16], "cfg": {"b": [1, 2]}, "note": "a,b", "n": None, "d": True}
    assert run["metrics"] == expected and run["parameters"] == expected
    assert results(tmp_path / "out")["kernel"] == "python3"

    # several list values: one -p with YAML flow values, or repeated options (which add values)
    planned = run_mlenv("sweep", str(notebook), "-p", "layers=[8, 16], [32]", "-y", "note: plain", "-r", "note=a,b",
                        "--dry-run", "--json")
    assert planned.returncode == 0, planned.stderr
    assert sorted((run["parameters"]["layers"], run["parameters"]["note"]) for run in json.loads(planned.stdout)) == [
        ([8, 16], "a,b"), ([8, 16], "plain"), ([32], "a,b"), ([32], "plain")]

    # the untyped name is known, and says why it is untyped
    unknown = run_mlenv("sweep", str(notebook), "-p", "e=1", "--dry-run")
    assert unknown.returncode == 2
    assert "d: any = n == 3 (papermill could not read its default)" in unknown.stderr
    assert "Unable to parse" not in unknown.stderr


@pytest.mark.parametrize("args, message, hint", [
    (["-p", "n=[1"], "not a YAML list or dict", "-y 'n: [8, 16]'"),
    (["-p", "layers=8,16"], "'8' is not a valid list", "-y 'layers: [8, 16]'"),
    (["-p", "n=a,b"], "'a' is not a valid int", "-r 'n=a,b'"),
    (["-y", "layers"], "expected NAME: VALUE", "-y 'layers: [8, 16]'"),
    (["-y", "2x: 1"], "is not a parameter name", "Python identifiers"),
    (["-r", "note"], "expected NAME=TEXT", "-r 'note=a, b and c'"),
])
def test_how_to_pass_a_value_is_in_the_error(tmp_path, args, message, hint):
    notebook = make_notebook(tmp_path / "values.ipynb", VALUES_PARAMETERS, VALUES_BODY)
    result = run_mlenv("sweep", str(notebook), *args, "--dry-run")
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and hint in result.stderr and "Traceback" not in result.stderr


# --- item 7 (the error's message), 8 (sys.exit), banners for timeout / died / stopped --------------

def test_errors_keep_their_message_and_an_early_exit_is_not_completed(tmp_path):
    magic = make_notebook(tmp_path / "magic.ipynb", "x = 1", "%no_such_magic 1", "print('after')")
    stops = make_notebook(tmp_path / "stops.ipynb", "x = 1", "import sys\nif x == 1:\n    sys.exit()",
                          "import mlenv\nmlenv.record('x', x)")
    failed = run_mlenv("sweep", str(magic), "-o", str(tmp_path / "magic"))
    assert failed.returncode == 1
    [run] = results(tmp_path / "magic")["runs"]
    assert run["status"] == "failed" and run["error"]["cell"] == 1
    assert run["error"]["ename"] == "UsageError"
    assert run["error"]["evalue"] == "Line magic function `%no_such_magic` not found."
    assert "UsageError: Line magic function `%no_such_magic` not found." in failed.stdout

    stopped = run_mlenv("sweep", str(stops), "-p", "x=1,2", "-o", str(tmp_path / "stops"))
    assert stopped.returncode == 1
    runs = {run["parameters"]["x"]: run for run in results(tmp_path / "stops")["runs"]}
    assert runs[2]["status"] == "completed" and runs[2]["metrics"] == {"x": 2}
    assert runs[1]["status"] == "stopped" and runs[1]["error"]["cell"] == 1
    assert "sys.exit() in cell 1; 1 later cell did not run" in runs[1]["error"]["evalue"]
    assert results(tmp_path / "stops")["counts"] == {"completed": 1, "stopped": 1}
    executed = json.loads((tmp_path / "stops" / runs[1]["output"]).read_text())
    banner = [cell for cell in executed["cells"] if "papermill-error-cell-tag" in cell["metadata"].get("tags", [])]
    assert len(banner) == 2 and "stopped itself" in "".join(banner[0]["source"])
    # resume runs it again: it did not complete
    again = run_mlenv("sweep", str(stops), "-p", "x=1,2", "-o", str(tmp_path / "stops"), "--resume", "--json")
    assert sorted(run["resumed"] for run in json.loads(again.stdout)["runs"]) == [False, True]


def test_timed_out_and_dead_runs_carry_the_banner_in_their_notebook(tmp_path):
    slow = run_mlenv("sweep", str(NOTEBOOKS / "slow.ipynb"), "--timeout", "1", "-o", str(tmp_path / "slow"))
    died = run_mlenv("sweep", str(NOTEBOOKS / "dies.ipynb"), "-o", str(tmp_path / "dies"))
    assert slow.returncode == died.returncode == 1
    for folder, words, status, source in ((tmp_path / "slow", "timed out", "timeout", "time.sleep(seconds)"),
                                          (tmp_path / "dies", "kernel died", "died", "os._exit(1)")):
        [run] = results(folder)["runs"]
        assert run["status"] == status
        cells = json.loads((folder / run["output"]).read_text())["cells"]
        assert words in "".join(cells[0]["source"]) and "papermill-error-cell" in "".join(cells[0]["source"])
        anchor = next(i for i, cell in enumerate(cells) if 'id="papermill-error-cell"' in "".join(cell["source"]))
        # the anchor sits just before the cell that was running (the user's cell, after the injected one)
        assert source in "".join(cells[anchor + 1]["source"])


# --- item 3: --sort ----------------------------------------------------------------------------

def test_a_mistyped_sort_still_writes_the_results_and_hints(tmp_path):
    bad = run_mlenv("sweep", str(NOTEBOOKS / "good.ipynb"), "--sort", "accuracy:up", "-o", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "unknown direction 'up'" in bad.stderr
    assert not (tmp_path / "bad").exists()  # checked before any run
    typo = run_mlenv("sweep", str(NOTEBOOKS / "good.ipynb"), "-p", "lr=0.1,0.01", "--sort", "acuracy:desc",
                     "-o", str(tmp_path / "typo"))
    assert typo.returncode == 0, typo.stderr
    assert "did you mean 'accuracy'" in typo.stderr
    for name in ("results.csv", "results.json", "report.html"):
        assert (tmp_path / "typo" / name).is_file()
    data = results(tmp_path / "typo")
    assert data["best"] is None and "did you mean 'accuracy'" in data["warnings"][0]


# --- item 1: the summary table at any width ------------------------------------------------------

def test_the_summary_fits_narrow_terminals_and_pipes(tmp_path):
    import io

    from rich.console import Console

    from mlenv.sweep.config import resolve_options
    from mlenv.sweep.core import run_sweep
    from mlenv.sweep.summary_view import print_summary

    parameters = ["lr=0.1,0.01", "epochs=1,3", "optimizer=rmsprop_with_a_long_name"]
    piped = run_mlenv("sweep", str(NOTEBOOKS / "good.ipynb"), *(arg for p in parameters for arg in ("-p", p)),
                      "--sort", "accuracy:desc", "-o", str(tmp_path), "--jobs", "2", env={"COLUMNS": ""})
    assert piped.returncode == 0, piped.stderr
    data = results(tmp_path)
    best = data["runs"][0]
    summary = run_sweep(resolve_options(str(NOTEBOOKS / "good.ipynb"), parameters, sort="accuracy:desc",
                                        output=str(tmp_path), resume=True), live=False).summary
    for columns, output in [(80, piped.stdout)] + [(width, None) for width in (50, 100, 200)]:
        if output is None:
            console = Console(file=io.StringIO(), width=columns, soft_wrap=True)  # as mlenv.console
            print_summary(summary, console)
            output = console.file.getvalue()
        table = [line for line in output.splitlines() if line[:1] in "┏┃┡│└"]
        assert max(len(line) for line in table) <= columns, output
        assert "…" not in "".join(line for line in table if "status" in line)  # headers are never cut
        for run in data["runs"]:
            row = next(line for line in table if run["run_id"][-8:] in line)  # the id's hash is always there
            assert "completed" in row and f"{run['metrics']['accuracy']:.6g}" in row
        if columns >= 200:
            assert best["run_id"] in output and "not shown" not in output
        if columns <= 80:  # not every column fits: the note says which are left out and where they are
            assert "not shown at this width (s" in output
            assert "see " + str(tmp_path / "results.csv") in output
        assert f"best by accuracy:desc: {best['run_id']}" in output


# --- issue 8: SIGTERM, bad notebooks, read-only outputs, --cluster without distributed -------------

def test_sigterm_stops_cleanly_keeps_finished_runs_and_writes_results(tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "mlenv", "sweep", str(NOTEBOOKS / "napping.ipynb"), "-p", "i=1,2,3,4,5,6",
               "--jobs", "2", "-o", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.monotonic() + 60
    while not list(out.glob("*.ipynb")) and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr
    assert "sweep stopped by SIGTERM" in stderr and "--resume" in stderr
    data = results(out)
    done = [run for run in data["runs"] if run["status"] == "completed"]
    assert done and {run["status"] for run in data["runs"]} <= {"completed", "not-run"}
    assert (out / "results.csv").is_file() and (out / "report.html").is_file()
    assert sorted(path.name for path in out.glob("*.ipynb")) == sorted(run["output"] for run in done)


@pytest.mark.parametrize("content, message", [
    ('{"foo": 1}', "the file is JSON but has no cells"),
    ("[]", "the file is JSON but has no cells"),
    ('{"cells": [{"cell_type": "code"}], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}', "not a valid notebook"),
    ('{"cells": "x", "metadata": {}, "nbformat": 4, "nbformat_minor": 5}', "not a valid notebook"),
    ('{"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [{"cell_type": "code", "source": "x=1", '
     '"metadata": {}, "outputs": 3, "execution_count": null}]}', "not a valid notebook"),
    ("{not json", "not JSON"),
])
def test_a_json_file_that_is_not_a_notebook_is_one_clear_error(tmp_path, content, message):
    (tmp_path / "bad.ipynb").write_text(content)
    result = run_mlenv("sweep", str(tmp_path / "bad.ipynb"), "-o", str(tmp_path / "out"))
    assert result.returncode == 3, result.stderr
    assert message in result.stderr and "bad.ipynb" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) <= 3
    assert not (tmp_path / "out").exists()


def _read_only_run(folder: Path, *args: str) -> subprocess.CompletedProcess:
    """`mlenv sweep` with ``folder`` read-only: a read-only bind mount as root (root ignores modes)."""
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "mlenv", "sweep", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    unshare = shutil.which("unshare")
    require(unshare is not None, "unshare (util-linux) for a read-only bind mount")
    script = ('mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" "$0" || exit 99; exec "$@"')
    result = subprocess.run([unshare, "-m", "sh", "-c", script, str(folder), *command], capture_output=True,
                            text=True, env=env, timeout=120)
    require(result.returncode != 99, "permission to make a read-only bind mount")
    return result


def test_a_read_only_output_folder_is_a_clear_error(tmp_path):
    result = _read_only_run(tmp_path / "ro", str(NOTEBOOKS / "trivial.ipynb"), "-o", str(tmp_path / "ro" / "out"))
    assert result.returncode == 3, result.stderr  # a file mlenv must write cannot be used (README: exit codes)
    assert f"cannot write the results to {tmp_path / 'ro' / 'out'}" in result.stderr
    assert "-o/--output" in result.stderr and "Traceback" not in result.stderr


def test_cluster_without_distributed_names_the_install_command(tmp_path):
    # an environment without dask's distributed: a package of that name that cannot be imported
    shadow = tmp_path / "shadow" / "distributed"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError(\"No module named 'distributed'\")\n")
    result = run_mlenv("sweep", str(NOTEBOOKS / "trivial.ipynb"), "--cluster", "tcp://127.0.0.1:1",
                       "-o", str(tmp_path / "out"), env={"PYTHONPATH": f"{tmp_path / 'shadow'}:{REPO}"})
    assert result.returncode == 6, result.stderr
    assert "pip install 'distributed'" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


# --- item 11: sweeps run in the locked environment ------------------------------------------------

WHERE_BODY = "import sys, mlenv\nmlenv.record('python', sys.executable)\nmlenv.record('x', x)"


@pytest.mark.network
def test_a_locked_project_sweeps_in_its_synced_venv_or_stops_on_drift(tmp_path):
    # A real project locked against PyPI: its only dependency is what a kernel needs (ipykernel).
    project = tmp_path / "project"
    project.mkdir()
    (project / "mlenv.toml").write_text('[project]\nname = "demo"\npython = "3.11"\ndependencies = ["ipykernel"]\n\n'
                                        '[targets.cpu]\nplatform = "linux/x86_64"\n')
    locked = run_mlenv("lock", cwd=project)
    require(locked.returncode == 0, f"locking ipykernel from PyPI: {locked.stderr[-300:]}")
    notebook = make_notebook(project / "where.ipynb", "x = 1", WHERE_BODY)
    user_kernels = subprocess.run([sys.executable, "-m", "jupyter", "kernelspec", "list", "--json"],
                                  capture_output=True, text=True, check=True).stdout

    # no .venv yet: the notebook's kernel (python3, this interpreter) is checked and does not match
    drift = run_mlenv("sweep", str(notebook), "-o", str(tmp_path / "drift"), cwd=project)
    assert drift.returncode == 1, drift.stderr
    assert "does not match mlenv.lock target 'cpu'" in drift.stderr
    assert "the lock pins" in drift.stderr and "--allow-drift" in drift.stderr and "more" in drift.stderr
    assert not (tmp_path / "drift").exists()  # before any run
    allowed = run_mlenv("sweep", str(notebook), "-o", str(tmp_path / "drift"), "--allow-drift", cwd=project)
    assert allowed.returncode == 0, allowed.stderr
    assert "--allow-drift" in allowed.stderr
    environment = results(tmp_path / "drift")["environment"]
    assert environment["target"] == "cpu" and "findings: " in environment["drift"]
    assert environment["interpreter"] == sys.executable

    # synced: the sweep runs its kernels from the project's .venv, through a throwaway kernelspec
    synced = run_mlenv("sync", cwd=project)
    assert synced.returncode == 0, synced.stderr
    result = run_mlenv("sweep", str(notebook), "-p", "x=1,2", "-o", str(tmp_path / "venv"), cwd=project)
    assert result.returncode == 0, result.stderr
    data = results(tmp_path / "venv")
    assert {run["metrics"]["python"] for run in data["runs"]} == {str(project / ".venv" / "bin" / "python")}
    import hashlib

    lock_hash = hashlib.sha256((project / "mlenv.lock").read_bytes()).hexdigest()[:16]
    assert data["environment"]["lock"] == lock_hash and data["environment"]["target"] == "cpu"
    assert data["environment"]["kernel"] == "mlenv-venv-python3" and "drift" not in data["environment"]
    report = (tmp_path / "venv" / "report.html").read_text()
    assert lock_hash in report and "cpu" in report
    # nothing was added to the user's Jupyter folders
    assert subprocess.run([sys.executable, "-m", "jupyter", "kernelspec", "list", "--json"],
                          capture_output=True, text=True, check=True).stdout == user_kernels
