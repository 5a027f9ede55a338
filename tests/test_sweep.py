"""`mlenv sweep`: search spaces, real papermill + ipykernel runs, failures, resume, report."""

from __future__ import annotations

import itertools
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import MINIMAL_SPEC, NOTEBOOKS, make_notebook, require, run_mlenv


def results(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


def by_id(data: dict) -> dict[str, dict]:
    return {run["run_id"]: run for run in data["runs"]}


# --- search spaces, typing, ids (no kernels) -----------------------------------------------------

def test_grid_zip_random_and_stable_ids():
    from mlenv.sweep.space import expand, parse_cli_parameter, run_id

    axes = [parse_cli_parameter("lr=0.1,0.01"), parse_cli_parameter("epochs=1,3")]
    grid = expand(axes, "grid", typer_fn=lambda name, value: float(value) if name == "lr" else int(value))
    assert [run.parameters for run in grid] == [
        {"lr": 0.1, "epochs": 1}, {"lr": 0.1, "epochs": 3}, {"lr": 0.01, "epochs": 1}, {"lr": 0.01, "epochs": 3}]
    # the id depends on the parameters only, not on their order or on the invocation
    assert run_id({"lr": 0.1, "epochs": 1}) == run_id({"epochs": 1, "lr": 0.1}) == grid[0].run_id
    assert len({run.run_id for run in grid}) == 4
    assert [run.parameters for run in expand(axes, "zip")] == [{"lr": "0.1", "epochs": "1"},
                                                               {"lr": "0.01", "epochs": "3"}]

    space = [parse_cli_parameter("lr=loguniform:1e-4:1e-1"), parse_cli_parameter("n=int:1:3"),
             parse_cli_parameter("opt=choice:adam,sgd")]
    first = expand(space, "random", samples=20, seed=7)
    assert [run.run_id for run in first] == [run.run_id for run in expand(space, "random", samples=20, seed=7)]
    assert [run.run_id for run in first] != [run.run_id for run in expand(space, "random", samples=20, seed=8)]
    for run in first:
        assert 1e-4 <= run.parameters["lr"] <= 1e-1
        assert run.parameters["n"] in (1, 2, 3)
        assert run.parameters["opt"] in ("adam", "sgd")


@given(st.dictionaries(st.text(min_size=1, max_size=12),
                       st.one_of(st.integers(), st.floats(allow_nan=False), st.text(max_size=20), st.booleans()),
                       max_size=6))
def test_run_ids_are_safe_file_names_and_tell_parameters_apart(parameters):
    from mlenv.sweep.space import run_id

    identifier = run_id(parameters)
    assert re.fullmatch(r"[A-Za-z0-9.=+_-]{1,69}", identifier), identifier
    assert identifier == run_id(dict(reversed(list(parameters.items()))))
    if parameters:
        changed = dict(parameters)
        key = next(iter(changed))
        changed[key] = [changed[key]]
        assert run_id(changed) != identifier


@pytest.mark.parametrize("text, message", [
    ("lr", "expected NAME=VALUES"),
    ("=1,2", "expected NAME=VALUES"),
    ("lr=", "no value"),
    ("lr=1,,2", "empty value"),
    ("2lr=1", "not a parameter name"),
    ("lr=loguniform:0:1", "must be positive"),
    ("lr=uniform:1", "low and a high bound"),
    ("lr=uniform:2:1", "low bound is above"),
    ("lr=uniform:a:1", "not a number"),
    ("n=int:1.5:3", "whole numbers"),
])
def test_malformed_parameters(text, message):
    from mlenv.errors import UsageError
    from mlenv.sweep.space import parse_cli_parameter

    with pytest.raises(UsageError, match=message):
        parse_cli_parameter(text)


def test_zip_needs_equal_lengths_and_ranges_need_random():
    from mlenv.errors import UsageError
    from mlenv.sweep.space import expand, parse_cli_parameter

    with pytest.raises(UsageError, match="same number of values"):
        expand([parse_cli_parameter("a=1,2"), parse_cli_parameter("b=1")], "zip")
    with pytest.raises(UsageError, match="range can only be sampled"):
        expand([parse_cli_parameter("a=uniform:0:1")], "grid")


def test_values_are_typed_from_the_notebook_defaults():
    from mlenv.errors import UsageError
    from mlenv.sweep.notebook import coerce, load_notebook

    info = load_notebook(NOTEBOOKS / "good.ipynb")
    types = {name: parameter.type_name for name, parameter in info.parameters.items()}
    assert types == {"lr": "float", "epochs": "int", "optimizer": "str", "use_bias": "bool"}
    lr = coerce(info.parameters["lr"], "1", name="lr")
    assert lr == 1.0 and isinstance(lr, float)
    assert coerce(info.parameters["epochs"], "3", name="epochs") == 3
    assert coerce(info.parameters["use_bias"], "false", name="use_bias") is False
    assert coerce(info.parameters["optimizer"], "1e-3", name="optimizer") == "1e-3"
    with pytest.raises(UsageError, match="not a valid int"):
        coerce(info.parameters["epochs"], "2.5", name="epochs")


def test_record_outside_a_kernel_and_reading_metrics_back():
    import mlenv
    from mlenv.sweep import metrics

    mlenv.record("accuracy", 0.5)
    assert metrics.recorded["accuracy"] == 0.5
    with pytest.raises(TypeError):
        mlenv.record("bad", object())
    nb = {"cells": [{"outputs": [
        {"output_type": "display_data", "data": {metrics.METRIC_MIME: {"name": "acc", "value": 0.9}}},
        {"output_type": "display_data", "data": {"application/scrapbook.scrap.json+json":
                                                  {"name": "loss", "data": 0.1, "encoder": "json", "version": 1}}},
        {"output_type": "display_data", "data": {metrics.METRIC_MIME: {"name": "acc", "value": 0.95}}},
    ]}]}
    assert metrics.extract_metrics(nb) == {"acc": 0.95, "loss": 0.1}


def test_importing_mlenv_stays_light():
    code = ("import sys, mlenv; mlenv.record('x', 1); "
            "heavy = [m for m in ('papermill', 'nbformat', 'jupyter_client', 'rich', 'typer', 'IPython') "
            "if m in sys.modules]; "
            "print(heavy)")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"


def test_sort_and_report_are_self_contained():
    from mlenv.errors import UsageError
    from mlenv.sweep.results import RunRecord, Summary, parse_sort

    records = [RunRecord("a", {"lr": 0.1, "opt": "adam"}, "completed", {"acc": 0.5}),
               RunRecord("b", {"lr": 0.001, "opt": "<sgd>"}, "completed", {"acc": 0.9}),
               RunRecord("c", {"lr": 0.01, "opt": "adam"}, "failed", {}, error={"ename": "ValueError", "evalue": "x"})]
    summary = Summary("nb.ipynb", "python3", "grid", "out", ["lr", "opt"], records, parse_sort("acc:desc"))
    assert [record.run_id for record in summary.sorted_records()] == ["b", "a", "c"]
    assert parse_sort("-acc") == parse_sort("acc:max")
    assert summary.best().run_id == "b"
    mistyped = Summary("nb", "k", "grid", "o", ["lr"], records, parse_sort("accc"))
    assert [record.run_id for record in mistyped.sorted_records()] == ["a", "b", "c"]  # plan order, no error
    assert "did you mean 'acc'" in mistyped.sort_problem() and mistyped.best() is None
    with pytest.raises(UsageError, match="unknown direction"):
        parse_sort("acc:up")
    page = summary.to_html()
    assert page.count("<svg") == 2  # one metric x two parameters
    assert "(log)" in page  # lr spans two decades
    assert "<sgd>" not in page and "&lt;sgd&gt;" in page  # user values are escaped, in tables and plots
    assert summary.to_csv().splitlines()[0] == "run_id,status,lr,opt,acc,duration_s,attempts,error,output"


def _report_case():
    from mlenv.sweep.results import RunRecord, Summary, parse_sort

    records, index = [], 0
    for lr in (0.1, 0.01, 0.001):
        for depth in (1, 2):
            for opt in ("adam", "sgd"):
                index += 1
                parameters = {"lr": lr, "depth": depth, "opt": opt, "seed": 7}
                if index in (3, 8):
                    records.append(RunRecord(f"r{index}", parameters, "failed", {}, 1.0, 1,
                                             {"ename": "ValueError", "evalue": "boom", "cell": 2}))
                else:
                    records.append(RunRecord(f"r{index}", parameters, "completed",
                                             {"acc": round(0.5 + index / 100, 3), "loss": round(0.5 - index / 100, 3)}))
    return Summary("nb.ipynb", "python3", "grid", "out", ["lr", "depth", "opt", "seed"], records,
                   parse_sort("acc:desc"), environment={"lock": "0123abcd", "target": "cpu"})


def test_report_marks_the_best_run_and_failed_runs_everywhere_and_stays_offline():
    summary = _report_case()
    page = summary.to_html()
    best = summary.best()
    assert best.run_id == "r12"
    scatter = page.count('aria-label="acc against') + page.count('aria-label="loss against')
    assert scatter == 2 * 3  # seed has one value: no plot for it
    assert 'aria-label="acc against seed"' not in page
    # the best run: ringed in every plot (and on top of the parallel view), highlighted in the table
    assert page.count('class="run best" data-run="r12"') == scatter + 1
    assert '<tr class="best"><td><span class="best-badge"' in page and "★ best by acc:desc:" in page
    # failed runs: a distinct mark at their parameter values in every plot, dashed in the parallel view
    assert page.count('class="run failed-run" data-run="r3"') == scatter
    assert page.count('stroke-dasharray="4 3" stroke-opacity="0.8" class="run" data-run="r8"') == 1
    # hovering tells the run and its values
    assert "<title>r12\nlr=0.001, depth=2, opt=sgd, seed=7\nacc=0.62</title>" in page
    assert "<title>r3\nlr=0.1, depth=2, opt=adam, seed=7\nfailed: cell 2: ValueError: boom</title>" in page
    # a parallel-coordinates view with three swept parameters, one line per run
    assert page.count("<polyline") == 12 and "All swept parameters against acc" in page
    assert "0123abcd" in page and "cpu" in page  # what the runs ran in
    # one offline file: nothing is fetched
    assert page.count("<script") == 1 and "<script>" in page
    for fetch in ("src=", "@import", "url(", 'href="http', "fetch(", "XMLHttpRequest"):
        assert fetch not in page
    two = _report_case()
    two.parameter_names = ["lr", "depth"]
    assert "<polyline" not in two.to_html()  # fewer than three swept parameters: no parallel view


def test_report_renders_and_sorts_in_a_real_browser(tmp_path):
    import shutil

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    require(browser is not None, "chromium (apt-get install chromium) to render the report")
    (tmp_path / "report.html").write_text(_report_case().to_html())

    def rows(fragment: str) -> list[str]:
        dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                              f"file://{tmp_path / 'report.html'}{fragment}"], capture_output=True, text=True,
                             timeout=120).stdout
        body = dom.split('<table id="runs">')[1].split("</tbody>")[0]
        return re.findall(r"<tr[^>]*><td>(?:<span[^>]*>★ </span>)?(r\d+)</td>", body)

    assert rows("")[0] == "r12"  # as written: by --sort
    by_acc = rows("#sort=acc")  # ascending: the other way round from --sort
    assert by_acc[:2] == ["r1", "r2"] and by_acc[-2:] in (["r3", "r8"], ["r8", "r3"])  # no value: last
    assert sorted(rows("#sort=-lr")[:4]) == ["r1", "r2", "r3", "r4"]  # lr 0.1 first
    shot = tmp_path / "report.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,1600",
                    f"--screenshot={shot}", f"file://{tmp_path / 'report.html'}"], capture_output=True, timeout=120)
    assert shot.stat().st_size > 20_000  # a page with plots, not a blank one


# --- real runs: papermill + ipykernel ------------------------------------------------------------

def test_good_sweep_writes_outputs_results_and_report_then_resumes(tmp_path):
    out = tmp_path / "out"
    result = run_mlenv("sweep", str(NOTEBOOKS / "good.ipynb"), "-p", "lr=0.1,0.01", "-p", "epochs=1,3",
                       "--sort", "accuracy:desc", "-o", str(out), "--jobs", "2")
    assert result.returncode == 0, result.stderr
    data = results(out)
    assert data["counts"] == {"completed": 4}
    assert data["parameters"] == ["lr", "epochs"] and data["metrics"] == ["accuracy", "loss"]
    accuracies = [run["metrics"]["accuracy"] for run in data["runs"]]
    assert accuracies == sorted(accuracies, reverse=True)
    best = data["runs"][0]
    assert best["parameters"] == {"lr": 0.01, "epochs": 1}  # typed like the defaults: float, int
    assert best["metrics"]["accuracy"] == pytest.approx(1 - 0.04 / 10)
    for run in data["runs"]:
        executed = json.loads((out / run["output"]).read_text())
        assert executed["metadata"]["mlenv"]["status"] == "completed"
        assert executed["metadata"]["papermill"]["parameters"] == run["parameters"]
        assert run["duration"] > 0
    # --jobs 2: runs overlap in time (papermill's own start/end times in the outputs)
    spans = sorted((executed["metadata"]["papermill"]["start_time"], executed["metadata"]["papermill"]["end_time"])
                   for executed in (json.loads((out / run["output"]).read_text()) for run in data["runs"]))
    assert any(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans))
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("run_id,status,lr,epochs,accuracy,loss") and len(csv_lines) == 5
    assert (out / "report.html").read_text().count("<svg") == 4
    assert best["run_id"] in result.stdout
    assert f"best by accuracy:desc: {best['run_id']}" in result.stdout

    again = run_mlenv("sweep", str(NOTEBOOKS / "good.ipynb"), "-p", "epochs=1,3", "-p", "lr=0.1,0.01",
                      "-o", str(out), "--resume", "--json")
    assert again.returncode == 0, again.stderr
    resumed = json.loads(again.stdout)
    assert set(by_id(resumed)) == set(by_id(data))  # stable ids across invocations and -p order
    assert all(run["resumed"] for run in resumed["runs"])
    assert {k: v["metrics"] for k, v in by_id(resumed).items()} == {k: v["metrics"] for k, v in by_id(data).items()}


def test_a_failing_cell_is_recorded_and_the_other_runs_go_on(tmp_path):
    result = run_mlenv("sweep", str(NOTEBOOKS / "fails.ipynb"), "-p", "x=1,2,3", "-o", str(tmp_path))
    assert result.returncode == 1
    runs = {run["parameters"]["x"]: run for run in results(tmp_path)["runs"]}
    assert runs[1]["status"] == runs[3]["status"] == "completed"
    assert runs[3]["metrics"] == {"value": 30, "after": 3}
    failed = runs[2]
    assert failed["status"] == "failed"
    assert failed["error"]["cell"] == 2 and failed["error"]["ename"] == "ValueError"
    assert failed["error"]["evalue"] == "x=2 is not allowed"
    assert failed["metrics"] == {"value": 20}  # recorded before the failing cell
    assert "cell 2" in result.stdout and "ValueError: x=2 is not allowed" in result.stdout
    assert "1 of 3 runs failed" in result.stderr
    # the failed run's output notebook is kept, with papermill's error banner
    executed = (tmp_path / failed["output"]).read_text()
    assert "papermill-error-cell-tag" in executed


def test_a_dying_kernel_and_a_cell_timeout(tmp_path):
    died = run_mlenv("sweep", str(NOTEBOOKS / "dies.ipynb"), "-o", str(tmp_path / "dies"))
    assert died.returncode == 1
    [run] = results(tmp_path / "dies")["runs"]
    assert run["status"] == "died" and run["error"]["cell"] == 2 and run["attempts"] == 1
    assert "about to die" in (tmp_path / "dies" / run["output"]).read_text()

    started = time.monotonic()
    slow = run_mlenv("sweep", str(NOTEBOOKS / "slow.ipynb"), "-p", "seconds=600", "--timeout", "2",
                     "-o", str(tmp_path / "slow"))
    assert time.monotonic() - started < 300  # the 2 s timeout ended it, not the notebook's 600 s sleep
    assert slow.returncode == 1
    [run] = results(tmp_path / "slow")["runs"]
    assert run["status"] == "timeout" and run["error"]["cell"] == 2
    assert "2 s timeout" in run["error"]["evalue"]


def test_notebook_without_parameters_cell(tmp_path):
    refused = run_mlenv("sweep", str(NOTEBOOKS / "noparams.ipynb"), "-p", "x=1", "-o", str(tmp_path))
    assert refused.returncode == 3
    assert "no cell tagged 'parameters'" in refused.stderr and "Traceback" not in refused.stderr
    assert not tmp_path.joinpath("results.json").exists()
    single = run_mlenv("sweep", str(NOTEBOOKS / "noparams.ipynb"), "-o", str(tmp_path))
    assert single.returncode == 0, single.stderr
    assert results(tmp_path)["runs"][0]["metrics"] == {"answer": 42}


@pytest.mark.parametrize("args, code, message", [
    (["good.ipynb", "-p", "lr"], 2, "malformed -p 'lr'"),
    (["good.ipynb", "-p", "lr=abc"], 2, "'abc' is not a valid float"),
    (["good.ipynb", "-p", "epoch=1,2"], 2, "no parameter 'epoch' (known: lr: float = 0.1, epochs: int = 1"),
    (["."], 2, "is a folder, not a notebook"),
    (["missing.ipynb"], 2, "does not exist"),
    (["nokernel.ipynb"], 8, "no Jupyter kernel named 'no-such-kernel'"),
    (["good.ipynb", "--kernel", "nope"], 8, "no Jupyter kernel named 'nope'"),
    (["good.ipynb", "--on", "box1", "--cluster", "tcp://127.0.0.1:1"], 2, "--on and --cluster exclude each other"),
    (["good.ipynb", "--zip", "--random", "3"], 2, "exclude each other"),
    (["good.ipynb", "-p", "lr=uniform:0:1"], 2, "add --random N"),
    (["good.ipynb", "--sort", "acc:sideways"], 2, "unknown direction"),
])
def test_bad_input_is_one_clear_error_before_any_run(tmp_path, args, code, message):
    result = run_mlenv("sweep", *args, "-o", str(tmp_path / "out"), cwd=NOTEBOOKS)
    assert result.returncode == code, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_sweep_settings_from_files(tmp_path):
    (tmp_path / "mlenv.toml").write_text(
        MINIMAL_SPEC
        + f'[sweep]\nnotebook = "{NOTEBOOKS / "good.ipynb"}"\nparameters = {{ lr = [0.1, 0.2], epochs = 2 }}\n')
    planned = run_mlenv("sweep", "--dry-run", "--json", cwd=tmp_path)
    assert planned.returncode == 0, planned.stderr
    assert [run["parameters"] for run in json.loads(planned.stdout)] == [{"lr": 0.1, "epochs": 2},
                                                                         {"lr": 0.2, "epochs": 2}]
    # the command line overrides one parameter, and -f sweep.toml the file
    (tmp_path / "sweep.toml").write_text(
        '[sweep]\nmode = "random"\nsamples = 5\nseed = 3\n'
        '[sweep.parameters]\nlr = "loguniform:1e-4:1e-2"\nepochs = { distribution = "int", low = 1, high = 4 }\n')
    sampled = run_mlenv("sweep", "-f", "sweep.toml", "--dry-run", "--json", cwd=tmp_path)
    assert sampled.returncode == 0, sampled.stderr
    runs = json.loads(sampled.stdout)
    assert len(runs) == 5 and all(1e-4 <= run["parameters"]["lr"] <= 1e-2 for run in runs)
    assert runs == json.loads(run_mlenv("sweep", "-f", "sweep.toml", "--dry-run", "--json", cwd=tmp_path).stdout)
    # [sweep] of mlenv.toml describes its notebook only
    other = run_mlenv("sweep", str(NOTEBOOKS / "trivial.ipynb"), "--dry-run", "--json", cwd=tmp_path)
    assert other.returncode == 0, other.stderr
    assert [run["parameters"] for run in json.loads(other.stdout)] == [{}]
    (tmp_path / "bad.toml").write_text('jobs = 2\nnotebok = "x.ipynb"\n')
    bad = run_mlenv("sweep", "-f", "bad.toml", cwd=tmp_path)
    assert bad.returncode == 3, bad.stderr
    assert "bad.toml:2:1: unknown key 'notebok'" in bad.stderr and "did you mean 'notebook'" in bad.stderr


def test_spec_names_the_project_whose_lock_and_settings_the_sweep_uses(tmp_path, locked_project):
    # a project locked against the test index (tinylib, devtool): this interpreter does not match it
    project = locked_project()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    notebook = make_notebook(elsewhere / "outside.ipynb", "x = 1", "y = x")
    # without --spec no project is around the notebook or the current folder: nothing to check against
    plain = run_mlenv("sweep", str(notebook), "--dry-run", "--json", cwd=elsewhere)
    assert plain.returncode == 0, plain.stderr
    assert [run["parameters"] for run in json.loads(plain.stdout)] == [{}]
    # --spec (relative to the current folder, like every command's) makes that project's lock the check
    refused = run_mlenv("sweep", str(notebook), "--spec", "../demo/mlenv.toml", "--dry-run", cwd=elsewhere)
    assert refused.returncode == 1, refused.stderr
    assert "does not match mlenv.lock target 'cpu'" in refused.stderr and "tinylib" in refused.stderr
    assert "--allow-drift" in refused.stderr and "Traceback" not in refused.stderr
    as_json = run_mlenv("sweep", str(notebook), "--spec", str(project), "--json", "-o", str(tmp_path / "out"),
                        cwd=elsewhere)
    assert as_json.returncode == 1 and json.loads(as_json.stdout)["error"]["code"] == 1, as_json.stderr
    assert not (tmp_path / "out").exists()  # refused before any run
    # and that project's [sweep] settings apply, not the current folder's
    settings = tmp_path / "settings"
    settings.mkdir()
    (settings / "mlenv.toml").write_text(
        MINIMAL_SPEC + f'[sweep]\nnotebook = "{notebook}"\nparameters = {{ x = [2, 3] }}\n')
    planned = run_mlenv("sweep", "--spec", str(settings / "mlenv.toml"), "--dry-run", "--json", cwd=elsewhere)
    assert planned.returncode == 0, planned.stderr
    assert [run["parameters"] for run in json.loads(planned.stdout)] == [{"x": 2}, {"x": 3}]
    missing = run_mlenv("sweep", str(notebook), "--spec", str(tmp_path / "nothing.toml"), "--dry-run", cwd=elsewhere)
    assert missing.returncode == 3 and "nothing.toml does not exist" in missing.stderr, missing.stderr


def test_kernel_start_failures_are_retried_with_a_fresh_kernel(tmp_path):
    # A real kernelspec whose launcher fails on its first start, then starts ipykernel.
    spec_dir = tmp_path / "jupyter" / "kernels" / "flaky"
    spec_dir.mkdir(parents=True)
    marker = tmp_path / "started-once"
    launcher = tmp_path / "flaky.py"
    launcher.write_text(
        "import os, sys\n"
        f"marker = {str(marker)!r}\n"
        "if not os.path.exists(marker):\n"
        "    open(marker, 'w').close()\n"
        "    sys.exit('flaky kernel: failing on purpose')\n"
        "os.execv(sys.executable, [sys.executable, '-m', 'ipykernel_launcher', '-f', sys.argv[1]])\n")
    (spec_dir / "kernel.json").write_text(json.dumps(
        {"argv": [sys.executable, str(launcher), "{connection_file}"], "display_name": "flaky", "language": "python"}))
    env = {"JUPYTER_PATH": str(tmp_path / "jupyter")}
    ok = run_mlenv("sweep", str(NOTEBOOKS / "trivial.ipynb"), "--kernel", "flaky", "-p", "x=4", "--retries", "1",
                   "-o", str(tmp_path / "ok"), env=env)
    assert ok.returncode == 0, ok.stderr
    [run] = results(tmp_path / "ok")["runs"]
    assert run["attempts"] == 2 and run["metrics"] == {"y": 8}

    marker.unlink()
    refused = run_mlenv("sweep", str(NOTEBOOKS / "trivial.ipynb"), "--kernel", "flaky", "-p", "x=4", "--retries", "0",
                        "-o", str(tmp_path / "no"), env=env)
    assert refused.returncode == 1
    [run] = results(tmp_path / "no")["runs"]
    assert run["status"] == "start-failed" and run["output"] is None
    assert "did not start after 1 attempt" in run["error"]["evalue"]


def test_interrupted_sweep_keeps_finished_outputs_and_resumes(tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "mlenv", "sweep", str(NOTEBOOKS / "napping.ipynb"), "-p", "i=1,2,3,4,5,6",
               "--jobs", "1", "-o", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(out.glob("*.ipynb")) and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "--resume" in stderr
    data = results(out)
    statuses = [run["status"] for run in data["runs"]]
    done = [run for run in data["runs"] if run["status"] == "completed"]
    assert done and "not-run" in statuses and set(statuses) <= {"completed", "not-run"}
    finished_outputs = sorted(path.name for path in out.glob("*.ipynb"))
    assert finished_outputs == sorted(run["output"] for run in done)  # no half-written notebooks
    for name in finished_outputs:
        assert json.loads((out / name).read_text())["metadata"]["mlenv"]["status"] == "completed"

    resumed = run_mlenv("sweep", str(NOTEBOOKS / "napping.ipynb"), "-p", "i=1,2,3,4,5,6", "--jobs", "2",
                        "-o", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    final = results(out)
    assert final["counts"] == {"completed": 6}
    assert {run["run_id"] for run in final["runs"] if run["resumed"]} == {run["run_id"] for run in done}
    assert sorted(run["metrics"]["i"] for run in final["runs"]) == [1, 2, 3, 4, 5, 6]


def test_resume_reruns_outputs_of_a_changed_notebook(tmp_path):
    from mlenv.sweep.config import resolve_options
    from mlenv.sweep.core import run_sweep

    notebook = tmp_path / "trivial.ipynb"
    notebook.write_text((NOTEBOOKS / "trivial.ipynb").read_text())
    options = resolve_options(str(notebook), ["x=1,2"], output=str(tmp_path / "out"), jobs=2, resume=True)
    first = run_sweep(options, live=False)
    assert [record.metrics for record in first.summary.records] == [{"y": 2}, {"y": 4}]
    notebook.write_text(notebook.read_text().replace("x * 2", "x * 3"))
    options = resolve_options(str(notebook), ["x=1,2"], output=str(tmp_path / "out"), jobs=2, resume=True)
    second = run_sweep(options, live=False)
    assert [record.resumed for record in second.summary.records] == [False, False]
    assert [record.metrics for record in second.summary.records] == [{"y": 3}, {"y": 6}]


def test_scrapbook_glue_values_are_metrics(tmp_path):
    import importlib.util

    require(importlib.util.find_spec("scrapbook") is not None and importlib.util.find_spec("six") is not None,
            "scrapbook and six (pip install scrapbook six)")
    from mlenv.sweep.config import resolve_options
    from mlenv.sweep.core import run_sweep

    options = resolve_options(str(NOTEBOOKS / "glue.ipynb"), ["k=2,4"], output=str(tmp_path), jobs=2)
    summary = run_sweep(options, live=False).summary
    assert [record.metrics for record in summary.records] == [{"loss": 0.5, "name": "k2"}, {"loss": 0.25, "name": "k4"}]


def test_a_killed_worker_process_does_not_hang_the_sweep(tmp_path):
    # The kernel's parent is the worker process; killing it is what the OOM killer may do.
    result = run_mlenv("sweep", str(NOTEBOOKS / "killworker.ipynb"), "-p", "kill_worker=true,false", "--jobs", "2",
                       "-o", str(tmp_path), timeout=90)
    assert result.returncode == 1, result.stderr
    runs = {run["parameters"]["kill_worker"]: run for run in results(tmp_path)["runs"]}
    assert runs[False]["status"] == "completed"
    assert runs[True]["status"] == "error" and runs[True]["error"]["ename"] == "WorkerDied"


def test_a_run_knows_its_id(tmp_path):
    from mlenv.sweep.config import resolve_options
    from mlenv.sweep.core import run_sweep

    summary = run_sweep(resolve_options(str(NOTEBOOKS / "runid.ipynb"), [], output=str(tmp_path)), live=False).summary
    [record] = summary.records
    assert record.metrics == {"run": record.run_id}
    # with parameters too, and errors still point at the user's cells
    summary = run_sweep(resolve_options(str(NOTEBOOKS / "fails.ipynb"), ["x=2"], output=str(tmp_path / "p")),
                        live=False).summary
    assert summary.records[0].error["cell"] == 2
