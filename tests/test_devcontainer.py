"""Generated devcontainer.json: valid against the official schema, and run by the official CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CPU_TARGET, REPO, make_notebook, parse_jsonc, require, run_mlenv

SCHEMA = Path(__file__).parent / "data" / "devContainer.base.schema.json"
DEVCONTAINER_CLI_VERSION = "0.89.0"


def validate(config: dict) -> None:
    import jsonschema

    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_generated_configs_match_the_official_schema(locked_project):
    targets = CPU_TARGET + '\n[targets.gpu]\nplatform = "linux/x86_64"\ncuda = "12.8"\ngpu = "l4"\n'
    root = locked_project("p", targets=targets)
    result = run_mlenv("gen", "devcontainer", "--no-resolve-digest", "--ca-bundle", str(SCHEMA), cwd=root)
    assert result.returncode == 0, result.stderr
    configs = sorted((root / ".devcontainer").glob("*/devcontainer.json"))
    assert [p.parent.name for p in configs] == ["cpu", "gpu"]
    for path in configs:
        validate(parse_jsonc(path))


def test_schema_rejects_a_broken_config():
    """The validator is live: a config the spec forbids fails."""
    with pytest.raises(AssertionError):
        validate({"name": "x", "build": {"dockerfile": 3}, "forwardPorts": "8888"})


# Runs doctor and `lock --check` through the full CLI (not the console script's stdlib-only fast path)
# in one interpreter, then prints the distributions of every third-party module they imported.
_IMPORTED_DISTRIBUTIONS = """
import sys
startup = set(sys.modules)  # .pth files import things at startup (setuptools' hack, CA bundles)
from importlib import metadata
from mlenv.cli import main
for argv in (["doctor"], ["lock", "--check"]):
    try:
        main(argv)
    except BaseException:
        pass
owners = metadata.packages_distributions()
imported = {module.partition(".")[0] for module in set(sys.modules) - startup}
print("IMPORTED:", " ".join(sorted({dist for module in imported for dist in owners.get(module, [])})))
"""


# sitecustomize for every Python the sweep starts (its workers fork, its kernels inherit the environment):
# modules of installed distributions outside MLENV_TOOL_VENV_ONLY cannot be imported, as in the tool venv
_TOOL_VENV_ONLY = """
import os, re, sys
from importlib import metadata

_allowed = set(os.environ["MLENV_TOOL_VENV_ONLY"].split())
_blocked = {module for module, dists in metadata.packages_distributions().items()
            if not any(re.sub(r"[-_.]+", "-", dist).lower() in _allowed for dist in dists)}

class _ToolVenvOnly:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in _blocked:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _ToolVenvOnly())
"""


def _closure(names) -> set[str]:
    """The distributions ``names`` bring along when installed (their requirements, transitively)."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    found: set[str] = set()
    todo = [canonicalize_name(name) for name in names]
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.add(name)
        for line in metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(requirement.name))
    return found


def test_the_dev_image_tool_venv_holds_everything_doctor_and_a_box_sweep_import(locked_project, tmp_path):
    """The dev image's mlenv venv gets only selfwheel.TOOL_REQUIREMENTS: doctor and `lock --check` must
    not import anything else (a missing one breaks every devcontainer's postCreateCommand), and a sweep
    must run with only those installed (the box side of `sweep --on`)."""
    from packaging.utils import canonicalize_name

    from mlenv.selfwheel import TOOL_REQUIREMENTS

    root = locked_project("tools")
    result = subprocess.run([sys.executable, "-c", _IMPORTED_DISTRIBUTIONS], cwd=root, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    listed = result.stdout.rpartition("IMPORTED:")[2].split()
    imported = {canonicalize_name(name) for name in listed} - {"mlenv"}
    assert "typer" in imported and "packaging" in imported  # the probe ran the real commands
    assert imported <= _closure(TOOL_REQUIREMENTS), imported - _closure(TOOL_REQUIREMENTS)

    # `sweep --on BOX` runs `mlenv sweep` there, with a kernel of that same Python (a notebook outside a
    # project): run it here in a Python that can import only what the tool venv would hold
    site = tmp_path / "tool-venv-site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_TOOL_VENV_ONLY)
    notebook = make_notebook(tmp_path / "nb.ipynb", "x = 1", "import mlenv\nmlenv.record('y', x * 2)")
    allowed = " ".join(sorted(_closure(TOOL_REQUIREMENTS) | {"mlenv"}))
    env = {"PYTHONPATH": os.pathsep.join([str(site), str(REPO)]), "MLENV_TOOL_VENV_ONLY": allowed}
    swept = run_mlenv("sweep", str(notebook), "-p", "x=1,2", "-o", str(tmp_path / "out"), cwd=tmp_path, env=env)
    assert swept.returncode == 0, swept.stdout + swept.stderr
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert data["counts"] == {"completed": 2} and {run["metrics"]["y"] for run in data["runs"]} == {2, 4}
    assert (tmp_path / "out" / "report.html").is_file()
    # the blocker is live, and a tool venv of doctor's packages only (as mlenv once built) gets one
    # message that says what is missing and how to fix it, exit 6, no traceback
    env["MLENV_TOOL_VENV_ONLY"] = " ".join(sorted(_closure(("typer", "rich", "packaging", "tomli", "tomli-w"))
                                                  | {"mlenv"}))
    blocked = run_mlenv("sweep", str(notebook), "-p", "x=1", "-o", str(tmp_path / "none"), cwd=tmp_path, env=env)
    assert blocked.returncode == 6, blocked.stdout + blocked.stderr
    assert "cannot run `mlenv sweep`: the Python module 'nbformat' is not installed in" in blocked.stderr
    assert "mlenv up NAME" in blocked.stderr and "Traceback" not in blocked.stderr, blocked.stderr


@pytest.fixture(scope="session")
def devcontainer_cli():
    cli = shutil.which("devcontainer")
    require(cli is not None, f"devcontainer CLI (npm install -g @devcontainers/cli@{DEVCONTAINER_CLI_VERSION})")
    return cli


@pytest.mark.docker
@pytest.mark.network  # the mlenv tool venv installs selfwheel.TOOL_REQUIREMENTS from PyPI
def test_devcontainer_up_then_doctor_inside(locked_project, devcontainer_cli, docker_engine, build_cli,
                                            base_image, docker_client):
    root = locked_project("workspace")
    result = run_mlenv("gen", "all", "--base-image", base_image, cwd=root)
    assert result.returncode == 0, result.stderr
    config_path = root / ".devcontainer" / "devcontainer.json"
    config = parse_jsonc(config_path)
    # test-only build options: the loopback index needs host networking.  No build argument: the
    # image installs the very mlenv that ran `mlenv gen` (its wheel in .mlenv/)
    assert "args" not in config["build"]
    assert (root / ".mlenv" / "mlenv-0.1.0-py3-none-any.whl").is_file()
    config["build"]["options"] = ["--network=host"]
    bundle = os.environ.get("SSL_CERT_FILE")
    if bundle and Path(bundle).is_file():
        config["build"]["options"] += ["--secret", f"id=cacert,src={bundle}"]
    config_path.write_text(json.dumps(config, indent=2))

    env = {**os.environ, "DOCKER_HOST": docker_engine, "DOCKER_BUILDKIT": "1"}
    common = ["--workspace-folder", str(root), "--docker-path", build_cli]
    try:
        up = subprocess.run([devcontainer_cli, "up", *common], capture_output=True, text=True, env=env, timeout=600)
        outcome = json.loads(up.stdout.strip().splitlines()[-1]) if up.stdout.strip() else {}
        assert up.returncode == 0 and outcome.get("outcome") == "success", up.stdout[-3000:] + up.stderr[-3000:]
        # postCreateCommand ran `mlenv doctor`; run it again explicitly and look at what it says
        doctor = subprocess.run([devcontainer_cli, "exec", *common, "mlenv", "doctor", "--target", "cpu"],
                                capture_output=True, text=True, env=env, timeout=300)
        assert doctor.returncode == 0, doctor.stdout + doctor.stderr
        assert "/opt/venv/bin/python" in doctor.stdout and "environment matches the lock" in doctor.stderr
        # ... and that mlenv is this checkout's code, not a release: same wheel bytes
        show_source = "import mlenv.selfwheel, pathlib; print(pathlib.Path(mlenv.selfwheel.__file__).read_text())"
        installed = subprocess.run([devcontainer_cli, "exec", *common, "/opt/mlenv/bin/python", "-c", show_source],
                                   capture_output=True, text=True, env=env, timeout=120)
        assert installed.stdout.strip() == (REPO / "mlenv" / "selfwheel.py").read_text().strip()
        user = subprocess.run([devcontainer_cli, "exec", *common, "id", "-un"], capture_output=True, text=True,
                              env=env, timeout=120)
        assert user.stdout.strip() == "app"
    finally:
        ours = {"label": f"devcontainer.local_folder={root}"}
        for container in docker_client.containers.list(all=True, filters=ours):
            container.remove(force=True)
