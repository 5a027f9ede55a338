"""The CLI shell: fast startup, documented exit codes, no tracebacks for user errors."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import MINIMAL_SPEC, run_mlenv

HEAVY = ("boto3", "botocore", "docker", "paramiko", "papermill", "jinja2", "nbformat", "uv")


def test_help_imports_no_heavy_library():
    code = (
        "import sys, runpy\n"
        "sys.argv = ['mlenv', '--help']\n"
        "try:\n    runpy.run_module('mlenv', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        f"print('LOADED=' + ','.join(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "Usage" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "LOADED="
    for command in ("lock", "sync", "doctor", "init", "sweep", "build", "gen"):
        assert command in result.stdout


def test_version_and_usage_errors():
    from mlenv import __version__

    assert run_mlenv("--version").stdout.strip() == f"mlenv {__version__}"
    bad = run_mlenv("no-such-command")
    assert bad.returncode == 2 and "No such command" in bad.stderr


def test_no_spec_anywhere_says_to_run_init(tmp_path):
    result = run_mlenv("lock", cwd=tmp_path)
    assert result.returncode == 3
    assert "no mlenv.toml" in result.stderr and "mlenv init" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_lock_is_exit_4_with_the_fix(tmp_path):
    (tmp_path / "mlenv.toml").write_text(MINIMAL_SPEC)
    for args in (("doctor",), ("sync",), ("lock", "--check")):
        result = run_mlenv(*args, cwd=tmp_path)
        assert result.returncode == 4, args
        assert "run `mlenv lock` first" in result.stderr


def test_doctor_json_is_parseable_when_clean_or_not(tmp_path, spec_file):
    spec_file(tmp_path)
    assert run_mlenv("lock", cwd=tmp_path).returncode == 0
    drifted = run_mlenv("doctor", "--target", "cpu", "--python", sys.executable, "--json", cwd=tmp_path)
    report = json.loads(drifted.stdout)
    assert drifted.returncode == 1 and report["clean"] is False and report["findings"]
    assert run_mlenv("sync", "--target", "cpu", cwd=tmp_path).returncode == 0
    clean = run_mlenv("doctor", "--target", "cpu", "--python", str(tmp_path / ".venv"), "--json", cwd=tmp_path)
    report = json.loads(clean.stdout)
    assert clean.returncode == 0 and report["clean"] is True, clean.stdout + clean.stderr


def _commands(group=None, path=()):
    """Every leaf command of the real CLI as (argv path, click command)."""
    from typer.main import get_command

    from mlenv.cli import app

    group = group or get_command(app)
    for name, command in getattr(group, "commands", {}).items():
        if getattr(command, "commands", None):
            yield from _commands(command, path + (name,))
        else:
            yield path + (name,), command


def test_exit_code_table_in_readme_is_the_enum():
    import re

    from mlenv.errors import ExitCode
    from tests.conftest import REPO

    readme = (REPO / "README.md").read_text()
    section = readme.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", section, flags=re.M)}
    assert documented == {int(code) for code in ExitCode}


def test_every_option_says_what_it_does_in_help():
    """`mlenv CMD --help` is where a user checks the README: no option is listed without a line."""
    silent = [(path, param.opts) for path, command in _commands() for param in command.params
              if getattr(param, "param_type_name", "") == "option" and not getattr(param, "hidden", False)
              and not getattr(param, "help", None)]
    assert silent == []
    stop = run_mlenv("stop", "--help", env={"COLUMNS": "200"})
    assert "Look only with this provider" in stop.stdout


def test_every_json_command_prints_one_json_object_on_failure(tmp_path):
    with_json = [path for path, command in _commands()
                 if any("--json" in getattr(param, "opts", ()) for param in command.params)]
    assert ("lock",) in with_json and ("doctor",) in with_json and ("build",) in with_json
    for path in with_json:
        # no mlenv.toml anywhere: each command fails (or, if it needs none, still prints JSON)
        result = run_mlenv(*path, "--json", cwd=tmp_path, env={"MLENV_HOME": str(tmp_path / "home")}, timeout=120)
        data = json.loads(result.stdout)  # exactly one JSON document
        if result.returncode:
            assert data["error"]["code"] == result.returncode, path
            assert data["error"]["message"] and "hint" in data["error"], path
    missing = run_mlenv("lock", "--json", cwd=tmp_path)
    assert json.loads(missing.stdout)["error"] == {
        "code": 3, "message": f"no mlenv.toml in {tmp_path.resolve()} or any parent folder",
        "hint": "run `mlenv init` to create one"}
    bad_option = run_mlenv("lock", "--json", "--no-such-option", cwd=tmp_path)
    assert bad_option.returncode == 2 and json.loads(bad_option.stdout)["error"]["code"] == 2


def test_debug_is_accepted_after_the_subcommand(tmp_path):
    for args in (("lock", "--debug"), ("--debug", "lock"), ("gen", "all", "--debug")):
        result = run_mlenv(*args, cwd=tmp_path)
        assert result.returncode == 3, args
        assert "Traceback" in result.stderr and "no mlenv.toml" in result.stderr, args
    assert "Traceback" not in run_mlenv("lock", cwd=tmp_path).stderr


def test_user_text_is_printed_literally_not_as_emoji_or_markup(tmp_path):
    (tmp_path / "mlenv.toml").write_text(
        '[project]\nname = "x"\npython = "3.11"\n'
        '[targets.gpu]\nplatform = "linux/x86_64"\ncuda = "12.4"\ngpu = "h100:-1:[bold]x[/bold]"\n')
    result = run_mlenv("lock", cwd=tmp_path)
    assert result.returncode == 3
    assert "'h100:-1:[bold]x[/bold]'" in result.stderr
    assert "\N{THUMBS DOWN SIGN}" not in result.stderr


def _start_blocked_doctor(folder, spec_file):
    """`mlenv doctor` waiting on an interpreter that never answers, ready for a signal."""
    import os
    import time

    spec_file(folder)
    assert run_mlenv("lock", cwd=folder).returncode == 0
    slow = folder / "slowpython"
    slow.write_text("#!/bin/sh\nexec sleep 60\n")
    slow.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "MLENV_DEBUG"}
    process = subprocess.Popen([sys.executable, "-m", "mlenv", "doctor", "--target", "cpu", "--python", str(slow)],
                               cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # wait until the probe runs (the sleep is mlenv's child)
        children = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout
        if children.strip():
            return process
        time.sleep(0.1)
    process.kill()
    raise AssertionError("doctor never started its probe")


def test_ctrl_c_prints_one_line_and_exits_130(tmp_path, spec_file):
    import signal

    process = _start_blocked_doctor(tmp_path, spec_file)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 130
    assert stderr.strip() == "error: interrupted"


def test_sigterm_exits_143(tmp_path, spec_file):
    import signal

    process = _start_blocked_doctor(tmp_path, spec_file)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 143
    assert stderr.strip() == "error: terminated (SIGTERM)"


def test_import_arrows_point_down():
    """Domain packages never import the CLI or the console (they warn through callbacks), and the
    hardware facts need nothing from the spec."""
    import ast

    from tests.conftest import REPO

    def imports(path):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                yield node.module
                yield from (f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                yield from (alias.name for alias in node.names)

    package = REPO / "mlenv"
    wrong = []
    for path in package.rglob("*.py"):
        relative = path.relative_to(package).as_posix()
        # the entry point and the typer-free command shell (mlenv/application.py) are CLI too
        if relative.startswith("cli/") or relative in ("_entry.py", "application.py", "lock_command.py"):
            continue
        for name in imports(path):
            if name in ("mlenv.cli", "mlenv.console") or name.startswith("mlenv.cli."):
                wrong.append(f"{relative} imports {name}")
            if relative.startswith("hardware/") and (name == "mlenv.spec" or name.startswith("mlenv.spec.")):
                wrong.append(f"{relative} imports {name}")
    assert wrong == []


def test_spec_option_is_common_to_the_commands(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "mlenv.toml").write_text(MINIMAL_SPEC)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for args in (("lock", "--check"), ("doctor",), ("gen", "all"), ("build",), ("sync",)):
        # found through --spec (the folder or the file), it then misses the lock: exit 4, not 3
        for spec in (project, project / "mlenv.toml"):
            result = run_mlenv(*args, "--spec", str(spec), cwd=elsewhere)
            assert result.returncode == 4 and "run `mlenv lock` first" in result.stderr, (args, result.stderr)
    assert "--spec" not in run_mlenv("init", "--help").stdout


def test_lock_check_counts_in_words(locked_project, tmp_path):
    """"(1 target)", not "(1 targets)": on the standard-library fast path and in the full CLI."""
    root = locked_project()
    for args in (("lock", "--check"), ("lock", "--check", "--spec", str(root))):
        result = run_mlenv(*args, cwd=root)
        assert result.returncode == 0 and "mlenv.lock is up to date (1 target)\n" in result.stderr, (args, result)
    home = {"HOME": str(tmp_path / "home"), "MLENV_HOME": str(tmp_path / "mlenv-home")}
    assert run_mlenv("ssh-config", cwd=tmp_path, env=home).stderr.endswith("config: 0 boxes\n")  # not "box(es)"


def test_a_port_out_of_range_is_refused_before_anything_starts(tmp_path):
    """`jupyter --port 70000` was a traceback from bind(), after the server had been started on the box."""
    home = {"HOME": str(tmp_path / "home"), "MLENV_HOME": str(tmp_path / "mlenv-home")}
    result = run_mlenv("jupyter", "gpu1", "--port", "70000", cwd=tmp_path, env=home)
    assert result.returncode == 2 and "Invalid value for '--port'" in result.stderr, result.stderr
