"""The CLI shell: fast startup, documented exit codes, no tracebacks for user errors."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import run_mlenv

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
    assert run_mlenv("--version").stdout.strip().startswith("mlenv ")
    bad = run_mlenv("no-such-command")
    assert bad.returncode == 2 and "No such command" in bad.stderr


def test_no_spec_anywhere_says_to_run_init(tmp_path):
    result = run_mlenv("lock", cwd=tmp_path)
    assert result.returncode == 3
    assert "no mlenv.toml" in result.stderr and "mlenv init" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_lock_is_exit_4_with_the_fix(tmp_path):
    (tmp_path / "mlenv.toml").write_text('[project]\nname = "x"\npython = "3.11"\n[targets.cpu]\nplatform = "linux/x86_64"\n')
    for args in (("doctor",), ("sync",), ("lock", "--check")):
        result = run_mlenv(*args, cwd=tmp_path)
        assert result.returncode == 4, args
        assert "run `mlenv lock` first" in result.stderr


def test_doctor_json_is_parseable_when_clean_or_not(tmp_path, local_index):
    from tests.test_lock import write_spec

    write_spec(tmp_path, local_index.url)
    assert run_mlenv("lock", cwd=tmp_path).returncode == 0
    result = run_mlenv("doctor", "--target", "cpu", "--python", sys.executable, "--json", cwd=tmp_path)
    report = json.loads(result.stdout)
    assert result.returncode == 1 and report["clean"] is False
