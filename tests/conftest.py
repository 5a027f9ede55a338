"""Shared test plumbing.

Tests use real parts (a local package index over loopback HTTP, a real Docker Engine, papermill
kernels, ...).  A test that needs a service asks for it with ``require``: on a developer machine a
missing service skips the test with the reason, in CI (``CI=true``) it fails the run instead.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tomllib
import uuid
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REPO = Path(__file__).resolve().parents[1]

pytest_plugins = ["tests.pkgindex", "tests.docker_services", "tests.fake_ec2"]


def pytest_configure(config) -> None:
    # A run started in the background by a script (`pytest &`) ignores SIGINT, and every mlenv the tests
    # start inherits that: the tests that press Ctrl-C on mlenv need it delivered as in a terminal.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(items) -> None:
    """`-m "not network"` runs offline: a test that installs mlenv's wheel (built with hatchling from
    PyPI, into an image whose tools come from PyPI) or builds a box's dev image (its tool venv's packages
    come from PyPI) must carry the network marker."""
    needs_network = {"mlenv_wheel", "box_project", "jupyter_project", "container_box"}
    unmarked = [item.nodeid for item in items if needs_network & set(getattr(item, "fixturenames", ()))
                and item.get_closest_marker("network") is None]
    if unmarked:
        raise pytest.UsageError("mark these @pytest.mark.network (they build or install mlenv's wheel, or a "
                                "box's dev image):\n  "
                                + "\n  ".join(unmarked))


def require(ok: bool, what: str) -> None:
    """Skip (locally) or fail (in CI) when a needed service or tool is missing."""
    if ok:
        return
    if IN_CI:
        pytest.fail(f"required for this test but missing in CI: {what}", pytrace=False)
    pytest.skip(f"missing: {what}")


def run_mlenv(*args: str, cwd: Path | None = None, env: dict | None = None, check: bool = False,
              timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the real `mlenv` CLI in a subprocess, as a user would."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("MLENV_DEBUG", None)
    result = subprocess.run(
        [sys.executable, "-m", "mlenv", *args],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"mlenv {' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


# --- git repositories: tests/test_lock_git.py, tests/test_init.py ---------------------------------

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.invalid", "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"}


class GitRepo:
    """A repository holding the package ``gitpkg`` (module ``gitpkg``, ``__version__`` set)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True)
        self.git("init", "--quiet", "--initial-branch", "main")
        (path / "pyproject.toml").write_text(
            '[build-system]\nrequires = ["uv_build>=0.9,<1"]\nbuild-backend = "uv_build"\n\n'
            '[project]\nname = "gitpkg"\nversion = "1.0"\nrequires-python = ">=3.8"\n')

    def git(self, *args: str) -> str:
        return subprocess.run(["git", *args], cwd=self.path, env={**os.environ, **GIT_ENV}, check=True,
                              capture_output=True, text=True).stdout.strip()

    def commit(self, text: str) -> str:
        """Commit a new ``gitpkg/__init__.py`` (``MARK = text``); returns the commit id."""
        module = self.path / "src" / "gitpkg"
        module.mkdir(parents=True, exist_ok=True)
        (module / "__init__.py").write_text(f"MARK = {text!r}\n")
        self.git("add", "-A")
        self.git("commit", "--quiet", "-m", text)
        return self.git("rev-parse", "HEAD")

    @property
    def url(self) -> str:
        return f"git+file://{self.path}"


@pytest.fixture
def git_repo(tmp_path) -> GitRepo:
    """Two commits on main, the first tagged v1."""
    require(shutil.which("git") is not None, "git (scripts/test.sh installs it)")
    repo = GitRepo(tmp_path / "gitpkg-repo")
    repo.first = repo.commit("first")
    repo.git("tag", "v1")
    repo.second = repo.commit("second")
    return repo


# --- projects: helpers shared by the test files, and fixtures over them -----------------------------

def lock(folder: Path, *args: str, expect: int = 0, env: dict | None = None) -> subprocess.CompletedProcess:
    """`mlenv lock` in ``folder``, which must exit with ``expect``."""
    result = run_mlenv("lock", *args, cwd=folder, env=env)
    assert result.returncode == expect, result.stdout + result.stderr
    return result


def read(folder: Path, name: str) -> dict:
    """A TOML file of the project (mlenv.lock, pylock.TARGET.toml), parsed."""
    return tomllib.loads((folder / name).read_text())


def write_spec(folder: Path, index_url: str, *, dependencies=("tinylib",), extra: str = "",
               targets: str | None = None) -> Path:
    deps = ", ".join(f'"{d}"' for d in dependencies)
    targets = targets or '[targets.cpu]\nplatform = "linux/x86_64"\n'
    (folder / "mlenv.toml").write_text(
        f'[project]\nname = "demo"\npython = "3.11"\ndependencies = [{deps}]\n\n'
        f'[dependency-groups]\ndev = ["devtool"]\n\n'
        f'[[index]]\nname = "local"\nurl = "{index_url}"\ndefault = true\n\n{extra}\n{targets}'
    )
    return folder / "mlenv.toml"


CPU_TARGET = '[targets.cpu]\nplatform = "linux/x86_64"\n'
# a project with no dependencies and one linux target: enough for commands that fail before any lock
MINIMAL_SPEC = '[project]\nname = "demo"\npython = "3.11"\n' + CPU_TARGET


def make_project(root: Path, index_url: str, *, targets: str = CPU_TARGET, dependencies=("tinylib",),
                 dev=("devtool",), image: str = "", extra: str = "") -> Path:
    """A project locked against ``index_url`` (the loopback test index), with one source file."""
    root.mkdir(parents=True, exist_ok=True)
    groups = f"\n[dependency-groups]\ndev = {json.dumps(list(dev))}\n" if dev else ""
    (root / "mlenv.toml").write_text(
        f'[project]\nname = "demo"\npython = "3.11"\ndependencies = {json.dumps(list(dependencies))}\n'
        f"{groups}\n"
        f'[[index]]\nname = "local"\nurl = "{index_url}"\ndefault = true\n\n'
        f"{targets}\n{image}\n{extra}"
    )
    (root / "app.py").write_text('print("hello from demo")\n')
    result = run_mlenv("lock", cwd=root)
    assert result.returncode == 0, result.stderr
    return root


NOTEBOOKS = REPO / "tests" / "notebooks"


def make_notebook(path: Path, parameters: str | None, *cells: str, kernel: str = "python3") -> Path:
    """A notebook of code cells, the first tagged ``parameters`` (papermill's) unless it is None."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": kernel, "display_name": "Python 3", "language": "python"}
    if parameters is not None:
        cell = nbformat.v4.new_code_cell(parameters)
        cell.metadata["tags"] = ["parameters"]
        nb.cells.append(cell)
    nb.cells.extend(nbformat.v4.new_code_cell(source) for source in cells)
    nbformat.write(nb, str(path))
    return path


def locked_template(tmp_path_factory, extra: str = ""):
    """``(index, folder)``: a locked demo project and the package index it locks against, for
    module-scoped fixtures (their tests copy the folder: `mlenv lock` is the slow part).  The caller
    closes the index."""
    from tests.pkgindex import LocalIndex, add_tiny_packages

    index = add_tiny_packages(LocalIndex(tmp_path_factory.mktemp("index")))
    folder = tmp_path_factory.mktemp("template")
    write_spec(folder, index.url, extra=extra)
    result = run_mlenv("lock", cwd=folder)
    assert result.returncode == 0, result.stderr
    return index, folder


def parse_jsonc(path: Path) -> dict:
    """devcontainer.json is JSON with comments; ours has only whole-line // comments."""
    return json.loads("\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("//")))


@pytest.fixture
def spec_file(local_index):
    """``spec_file(folder, **options)``: a small mlenv.toml in ``folder`` (tinylib and devtool from the
    loopback index), unlocked."""
    return lambda folder, **options: write_spec(folder, local_index.url, **options)


@pytest.fixture
def locked_project(tmp_path, local_index):
    """``locked_project(name="demo", **options)``: a project with one source file, locked against the
    loopback index."""
    return lambda name="demo", **options: make_project(tmp_path / name, local_index.url, **options)


# --- dev boxes on the docker provider: one dev image per test module, a fresh box per test ---------------
# Used by test_boxes.py, test_connect.py and test_sweep_box.py (each module builds and removes its own).

BOX_SPEC = """\
[project]
name = "boxdemo"
python = "3.11"
dependencies = []

[targets.cpu]
platform = "linux/x86_64"

[image]
base = "{base}"
"""


def make_box_project(tmp_path_factory, name: str, spec: str, docker_engine, build_cli):
    """A locked project in a fresh folder, with its own HOME (ssh config, keys, mlenv's data).

    `up` gets no build options, as in the README: the dev image's tool venv is the wheel of this
    checkout that `mlenv up` writes to .mlenv/ (with what doctor and the box side of `sweep --on` need),
    its packages from PyPI over the engine's default network."""
    require(bool(shutil.which("ssh")), "an OpenSSH client (apt-get install openssh-client)")
    home = tmp_path_factory.mktemp("home")
    root = tmp_path_factory.mktemp("boxes") / name
    root.mkdir()
    (root / "mlenv.toml").write_text(spec)
    env = {"HOME": str(home), "MLENV_HOME": str(home / "mlenv-data"), "DOCKER_HOST": docker_engine,
           "MLENV_DOCKER": build_cli}
    project = BoxProject(root, env, home)
    locked = project.mlenv("lock")
    require(locked.returncode == 0 or "pypi.org" not in locked.stderr, "PyPI (the project's dependencies)")
    assert locked.returncode == 0, locked.stderr
    return project


def remove_project_images(docker_client, name: str) -> None:
    """Remove every tag of a box project's images (the dev image is per project)."""
    for image in docker_client.images.list(name=name):
        for tag in image.tags:
            docker_client.images.remove(tag, force=True)


@pytest.fixture(scope="module")
def box_project(tmp_path_factory, docker_engine, docker_client, build_cli, base_image):
    """A project whose mlenv.toml names the local base image (as a user behind a mirror would).

    No dependencies: the lock, and so the dev image's layers, stay the same from run to run, and the
    BuildKit cache makes the module's one image build take seconds after the first run."""
    yield make_box_project(tmp_path_factory, "boxdemo", BOX_SPEC.format(base=base_image), docker_engine, build_cli)
    remove_project_images(docker_client, "boxdemo")


class BoxProject:
    """A box test's project: its folder, its own HOME and environment."""

    def __init__(self, root: Path, env: dict, home: Path) -> None:
        self.root, self.env, self.home = root, env, home

    def mlenv(self, *args: str, timeout: float = 600):
        return run_mlenv(*args, cwd=self.root, env=self.env, timeout=timeout)

    def ssh(self, name: str, *args: str, **kwargs):
        """The user's OpenSSH through the config mlenv wrote (its Include line in ~/.ssh/config)."""
        return ["ssh", "-F", str(self.home / ".ssh" / "config"), *args, f"mlenv-{name}"]


@pytest.fixture
def box(box_project, docker_client):
    """A fresh box name; whatever the test made is removed afterwards."""
    yield from fresh_box(docker_client)


def fresh_box(docker_client):
    """Generator body of a box-name fixture: a unique name, and afterwards the removal of its container and
    volumes."""
    name = f"t{uuid.uuid4().hex[:8]}"
    yield name
    for container in docker_client.containers.list(all=True, filters={"label": f"mlenv.box={name}"}):
        container.remove(force=True)
    for volume in docker_client.volumes.list(filters={"label": f"mlenv.box={name}"}):
        volume.remove(force=True)


def up(project, name, *args):
    """`mlenv up NAME --provider docker --yes`, no build options (as the README shows); must succeed."""
    result = project.mlenv("up", name, "--provider", "docker", "--yes", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return result

# --- GPUs: none exists here, so a fake nvidia-smi replays recorded answers -----------------------------

NVIDIA = REPO / "tests" / "data" / "nvidia"
FAKE_SMI = """#!/bin/sh
# replays a recorded nvidia-smi answer: full.* for the query with compute_cap, basic.* without
case "$*" in *compute_cap*) k=full ;; *) k=basic ;; esac
d='{case}'
[ -f "$d/$k.out" ] || k=full
cat "$d/$k.out"
if [ -f "$d/$k.rc" ]; then exit "$(cat "$d/$k.rc")"; fi
exit 0
"""


def gpu_env(tmp_path: Path, case: str | None, *, proc: str | None = None,
            sys_file: str | None = None) -> dict[str, str]:
    """Environment whose PATH holds a fake nvidia-smi replaying ``case`` (None: no nvidia-smi at all).

    The driver files point at recordings or at nothing, so a real GPU host cannot leak into a test.
    """
    folder = tmp_path / f"bin-{case or 'none'}"
    folder.mkdir(parents=True, exist_ok=True)
    if case is not None:
        script = folder / "nvidia-smi"
        script.write_text(FAKE_SMI.format(case=NVIDIA / case))
        script.chmod(0o755)
        path = os.pathsep.join([str(folder), "/usr/bin", "/bin"])
    else:
        path = str(folder)  # an empty folder: nothing named nvidia-smi anywhere
    return {
        **os.environ,
        "PATH": path,
        "MLENV_NVIDIA_PROC_VERSION": str(NVIDIA / "proc" / proc) if proc else str(tmp_path / "no-proc"),
        "MLENV_NVIDIA_SYS_VERSION": str(NVIDIA / "sys" / sys_file) if sys_file else str(tmp_path / "no-sys"),
    }
