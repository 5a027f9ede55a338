"""`mlenv init`: importing requirements files, pyproject.toml and environment.yml, proposing targets.

User-level behaviour goes through the real CLI in a subprocess (`run_mlenv`); the parsers are also
tested directly.  Every written mlenv.toml is loaded back with `mlenv.spec.load_spec`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlenv.errors import SpecError, UsageError
from mlenv.hardware.detect import MachineInfo
from mlenv.importers import choose_python, conda_to_pip, group_for_file, import_project, logical_lines
from mlenv.init import parse_target_option, plan_init
from mlenv.spec import load_spec
from tests.conftest import gpu_env, run_mlenv

DATA = Path(__file__).parent / "data" / "init"
PY = "{}.{}".format(*sys.version_info[:2])
WIDE = {"COLUMNS": "250"}  # rich tables wrap at 80 columns otherwise


def no_gpu_env(tmp_path: Path) -> dict[str, str]:
    """This machine as it is (no GPU), made explicit so a GPU host runs the same tests."""
    return {**gpu_env(tmp_path, None), **WIDE}


def init(folder: Path, *args: str, env: dict | None = None, expect: int = 0) -> subprocess.CompletedProcess:
    result = run_mlenv("init", "--path", str(folder), *args, env={**WIDE, **(env or {})})
    assert result.returncode == expect, result.stdout + result.stderr
    return result


def copy_fixture(name: str, tmp_path: Path) -> Path:
    folder = tmp_path / name
    shutil.copytree(DATA / name, folder)
    return folder


MACHINE = MachineInfo(platform="linux/x86_64", system="Linux", machine="x86_64", python="3.11.7", cpus=8, ram_gb=32)


# --- user level: the CLI ------------------------------------------------------------------------------

def test_empty_folder_gets_a_minimal_working_project(tmp_path):
    folder = tmp_path / "my-project"
    folder.mkdir()
    result = init(folder, "--yes", env=no_gpu_env(tmp_path))
    spec = load_spec(folder / "mlenv.toml")
    assert spec.name == "my-project"
    assert spec.python == PY
    assert spec.dependencies == () and spec.groups == {} and spec.indexes == ()
    assert list(spec.targets) == ["cpu"] and spec.targets["cpu"].platform == "linux/x86_64"
    assert "wrote" in result.stderr and "empty dependencies" in result.stdout
    assert not [p.name for p in folder.iterdir() if p.name != "mlenv.toml"]  # no temp files left


def test_output_is_deterministic(tmp_path):
    folder = copy_fixture("pip", tmp_path)
    init(folder, "--yes")
    first = (folder / "mlenv.toml").read_bytes()
    init(folder, "--yes", "--force")
    assert (folder / "mlenv.toml").read_bytes() == first


def test_never_overwrites_without_force(tmp_path):
    (tmp_path / "mlenv.toml").write_text("# mine\n")
    (tmp_path / "requirements.txt").write_text("tinylib\n")
    result = init(tmp_path, "--yes", expect=2)
    assert "already exists" in result.stderr and "--force" in result.stderr
    assert "Traceback" not in result.stderr
    assert (tmp_path / "mlenv.toml").read_text() == "# mine\n"
    init(tmp_path, "--yes", "--force")
    assert load_spec(tmp_path).dependencies == ("tinylib",)


def test_not_a_tty_behaves_like_yes(tmp_path):
    (tmp_path / "requirements.txt").write_text("tinylib>=1.0\n")
    init(tmp_path)  # run_mlenv gives no terminal on stdin
    assert load_spec(tmp_path).dependencies == ("tinylib>=1.0",)


def test_dry_run_prints_the_spec_and_writes_nothing(tmp_path):
    (tmp_path / "requirements.txt").write_text("numpy>=1.26\n")
    result = init(tmp_path, "--dry-run")
    assert not (tmp_path / "mlenv.toml").exists()
    assert '"numpy>=1.26"' in result.stdout and "[targets.cpu]" in result.stdout
    assert "Imported" in result.stderr  # the summary goes to stderr, so stdout is the spec alone


def test_requirements_with_every_pip_syntax(tmp_path):
    folder = copy_fixture("pip", tmp_path)
    result = init(folder, "--yes", env=no_gpu_env(tmp_path))
    spec = load_spec(folder)
    assert spec.dependencies == (
        "requests>=2.31,<3",          # requirements/base.txt, through -r
        "PyYAML==6.0.2",
        "torch==2.5.1",               # +cu124 moved to the CUDA target's index pin
        "torchvision==0.20.1",
        "numpy<2,>=1.26",             # constraints.txt numpy<2 merged into the direct dependency
        "pandas[performance]==2.2.3",
        'uvloop>=0.19 ; sys_platform != "win32"',
        "tokenizers @ https://files.pythonhosted.org/packages/tokenizers-0.20.3-cp39-abi3-manylinux_2_17_x86_64.whl",
    )
    assert spec.groups == {"dev": ("pytest>=8.0", "ruff==0.7.1"), "notebook": ("jupyterlab>=4.2,<5", "ipywidgets")}
    assert [(i.name, i.url, i.explicit) for i in spec.indexes] == [
        ("pytorch-cu124", "https://download.pytorch.org/whl/cu124", True)]
    assert set(spec.targets) == {"cpu", "cuda"}
    cuda = spec.targets["cuda"]
    assert (cuda.platform, cuda.cuda, cuda.gpu) == ("linux/x86_64", "12.4", None)
    assert cuda.sources == {"torch": "pytorch-cu124", "torchvision": "pytorch-cu124"}
    assert spec.targets["cpu"].sources == {}
    out = result.stdout
    for reported in ("requirements.txt:5", "--find-links", "requirements.txt:17", "-e ./libs/featurizer",
                     "2 --hash options dropped", "constraints.txt:3", "urllib3<2.3", "--trusted-host",
                     "requirements.txt:9 (torch==2.5.1+cu124)"):
        assert reported in out, reported
    text = (folder / "mlenv.toml").read_text()
    spec_part, imported_part = text.split("[imported.files]")
    assert "sha256" not in spec_part and "# Not imported" in imported_part  # --hash values are not carried
    assert "requirements.txt" in spec.imported and "requirements-dev.txt" in spec.imported


def test_pyproject_with_extras_groups_and_uv_sources(tmp_path):
    folder = copy_fixture("pyproject", tmp_path)
    init(folder, "--yes", env=no_gpu_env(tmp_path))
    spec = load_spec(folder)
    assert spec.name == "vision-trainer"
    assert spec.python == PY  # the running Python satisfies >=3.10,<3.13
    assert spec.dependencies == ("torch>=2.4", "torchvision", "numpy>=1.26,<2", "pillow>=10")
    assert spec.groups["tracking"] == ("mlflow>=2.16",)
    assert set(spec.groups["all"]) == {"mlflow>=2.16", "fastapi>=0.110", "uvicorn[standard]>=0.30"}
    assert spec.groups["dev"] == ("ipython", "pytest>=8", "pytest-cov", "ruff>=0.6")  # include-group expanded
    assert spec.targets["cuda"].cuda == "12.1"
    assert spec.targets["cuda"].sources == {"torch": "pytorch-cu121", "torchvision": "pytorch-cu121"}


def test_conda_environment(tmp_path):
    folder = copy_fixture("conda", tmp_path)
    result = init(folder, "--yes", env=no_gpu_env(tmp_path))
    spec = load_spec(folder)
    assert spec.python == "3.10"
    assert spec.dependencies == (
        "numpy==1.26.*", "pandas>=2.1,<2.3", "scikit-learn==1.5.2", "torch==2.3.1.*", "torchvision==0.18.1.*",
        "matplotlib==3.8.4.*", "transformers==4.44.0", "wandb>=0.17",
    )
    assert spec.targets["cuda"].cuda == "12.1"
    assert spec.targets["cuda"].sources == {"torch": "pytorch-cu121", "torchvision": "pytorch-cu121"}
    for unmapped in ("environment.yml:14", "cudnn", "mkl", "libgcc-ng>=12", "ffmpeg", "py310hff3b4d5_0",
                     "pytorch -> torch", "5 not mapped", "pip not imported"):
        assert unmapped in result.stdout, unmapped


def test_targets_python_and_name_from_the_command_line(tmp_path):
    (tmp_path / "requirements.txt").write_text("torch==2.5.1+cu124\n")
    init(tmp_path, "--yes", "--name", "trainer", "--python", "3.12",
         "--target", "ci=linux/x86_64", "--target", "mac=darwin/arm64",
         "--target", "big=linux/amd64:cuda=12.6,gpu=h100,gpu-count=8,ram-min=512")
    spec = load_spec(tmp_path)
    assert (spec.name, spec.python) == ("trainer", "3.12")
    assert list(spec.targets) == ["ci", "mac", "big"]
    big = spec.targets["big"]
    assert (big.platform, big.cuda, big.gpu, big.gpu_count, big.ram_min) == ("linux/x86_64", "12.6", "h100", 8, 512)
    # torch follows the CUDA target onto the index of *its* CUDA, not the +cu124 of the input
    assert big.sources == {"torch": "pytorch-cu126"}
    assert [i.name for i in spec.indexes] == ["pytorch-cu126"]
    assert spec.targets["mac"].platform == "macos/arm64" and spec.targets["mac"].sources == {}


@pytest.mark.parametrize("value, message", [
    ("gpu", "expected NAME=PLATFORM"),
    ("gpu=linux/sparc", "unknown platform"),
    ("gpu=linux/x86_64:cuda=12.3", "unknown CUDA version"),
    ("gpu=linux/x86_64:gpu=a10g", "a GPU needs a CUDA version"),
    ("gpu=linux/x86_64:cuda=12.4,gpus=2", "unknown key 'gpus'"),
    ("gpu=macos/arm64:cuda=12.4", "CUDA is not available on macos/arm64"),
    ("gpu=linux/x86_64:cuda=13.0,gpu=v100", "does not support v100"),
    ("gpu=linux/x86_64:cuda=12.4,gpu-count=two", "positive integer"),
])
def test_bad_target_option_is_a_usage_error(tmp_path, value, message):
    result = init(tmp_path, "--yes", "--target", value, expect=2)
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "mlenv.toml").exists()


def test_malformed_requirement_line_points_at_file_and_line(tmp_path):
    (tmp_path / "requirements").mkdir()
    (tmp_path / "requirements.txt").write_text("numpy\n-r requirements/ml.txt\n")
    (tmp_path / "requirements" / "ml.txt").write_text("# models\n\ntorch>=2.4\nscikit-learn=>1.5\n")
    result = init(tmp_path, "--yes", expect=3)
    assert "requirements/ml.txt:4" in result.stderr and "scikit-learn=>1.5" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "mlenv.toml").exists()


def test_missing_included_file(tmp_path):
    (tmp_path / "requirements.txt").write_text("numpy\n\n-r requirements-base.txt\n")
    result = init(tmp_path, "--yes", expect=3)
    assert "requirements.txt:3" in result.stderr and "no such file" in result.stderr
    assert not (tmp_path / "mlenv.toml").exists()


def test_malformed_environment_yml(tmp_path):
    (tmp_path / "environment.yml").write_text("name: x\ndependencies:\n  - numpy\n  - pip:\n    - [unclosed\n")
    result = init(tmp_path, "--yes", expect=3)
    assert "environment.yml:" in result.stderr and "malformed YAML" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "mlenv.toml").exists()


def test_malformed_pyproject(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\ndependencies = ["numpy"\n')
    result = init(tmp_path, "--yes", expect=3)
    assert "pyproject.toml:" in result.stderr and "malformed TOML" in result.stderr


def test_fake_gpu_machine_proposes_a_cuda_target(tmp_path):
    (tmp_path / "requirements.txt").write_text("torch>=2.3\nnumpy\n")
    result = init(tmp_path, "--yes", env=gpu_env(tmp_path, "a10g"))
    spec = load_spec(tmp_path)
    cuda = spec.targets["cuda"]
    # driver 535.183.01 runs CUDA 12.1 at most (12.4 needs 550.54.14)
    assert (cuda.platform, cuda.cuda, cuda.gpu, cuda.gpu_count) == ("linux/x86_64", "12.1", "a10g", 1)
    assert cuda.sources == {"torch": "pytorch-cu121"}
    assert "NVIDIA A10G, driver 535.183.01" in result.stdout


def test_eight_h100_machine(tmp_path):
    init(tmp_path, "--yes", env=gpu_env(tmp_path, "8xh100"))
    cuda = load_spec(tmp_path).targets["cuda"]
    assert (cuda.cuda, cuda.gpu, cuda.gpu_count) == ("12.6", "h100", 8)


def test_old_driver_gets_compat_cuda_and_a_warning(tmp_path):
    result = init(tmp_path, "--yes", env=gpu_env(tmp_path, "old-470"))
    cuda = load_spec(tmp_path).targets["cuda"]
    assert (cuda.cuda, cuda.gpu, cuda.gpu_count) == ("11.8", "v100", 4)
    assert "minor-version compatibility" in result.stdout and "470.256.02" in result.stdout


def test_failing_nvidia_smi_proposes_only_this_machine(tmp_path):
    result = init(tmp_path, "--yes", env=gpu_env(tmp_path, "failing"))
    assert list(load_spec(tmp_path).targets) == ["cpu"]
    assert "couldn't communicate with the NVIDIA driver" in result.stdout


def test_cuda_build_of_torch_in_the_project_venv(tmp_path):
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / ".venv")], check=True)
    site = next((tmp_path / ".venv" / "lib").glob("python3*/site-packages"))
    info = site / "torch-2.4.1+cu118.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: torch\nVersion: 2.4.1+cu118\n")
    result = init(tmp_path, "--yes", env=no_gpu_env(tmp_path))
    assert load_spec(tmp_path).targets["cuda"].cuda == "11.8"
    assert "torch 2.4.1+cu118 is installed" in result.stdout


def test_init_then_lock_against_a_real_index(tmp_path, local_index):
    (tmp_path / "requirements.txt").write_text(f"--index-url {local_index.url}\ntinylib>=1.0  # the library\n")
    (tmp_path / "requirements-dev.txt").write_text("-r requirements.txt\ndevtool==0.5\n")
    init(tmp_path, "--yes", "--python", "3.11", "--target", "cpu=linux/x86_64", env=no_gpu_env(tmp_path))
    spec = load_spec(tmp_path)
    assert spec.default_index().url == local_index.url.rstrip("/")
    result = run_mlenv("lock", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    lock_text = (tmp_path / "mlenv.lock").read_text()
    assert "tinylib" in lock_text and "tinydep" in lock_text and "devtool" in lock_text



GIT_LINES = """\
numpy
git+https://github.com/org/repo.git@v1#egg=repo
-e git+https://github.com/org/edit.git@main#egg=edit-lib[fast,cli]&subdirectory=python/lib
git+ssh://git@github.com/org/tool.git@0123abc#egg=tool ; python_version >= "3.9"
git+https://github.com/org/nameless.git@v2
"""


def test_pip_git_lines_become_direct_references(tmp_path):
    """pip's `git+URL@ref#egg=name` lines (also after -e) reach mlenv.toml as `name @ git+URL@ref`;
    a line without #egg= is skipped with the spelling that imports it."""
    (tmp_path / "requirements.txt").write_text(GIT_LINES)
    result = init(tmp_path, "--yes", "--target", "cpu=linux/x86_64", env=no_gpu_env(tmp_path))
    assert load_spec(tmp_path).dependencies == (
        "numpy",
        "repo @ git+https://github.com/org/repo.git@v1",
        "edit-lib[cli,fast] @ git+https://github.com/org/edit.git@main#subdirectory=python/lib",
        'tool @ git+ssh://git@github.com/org/tool.git@0123abc ; python_version >= "3.9"',
    )
    out = " ".join(result.stdout.split())  # rich wraps the report's cells
    assert "requirements.txt:3 │ -e git+https://github.com/org/edit.git" in out and "not editable" in out
    assert ("git+https://github.com/org/nameless.git@v2 not imported: no package name (pip reads it from "
            "`#egg=name`); write it as `name @ git+https://github.com/org/nameless.git@v2`") in out


def test_init_then_lock_pins_a_pip_git_line_by_commit(tmp_path, local_index, git_repo):
    """The README's way in: a requirements.txt with a git line, `mlenv init`, `mlenv lock`."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "requirements.txt").write_text(
        f"--index-url {local_index.url}\ntinylib\n-e {git_repo.url}@v1#egg=gitpkg\n")
    init(project, "--yes", "--python", "3.11", "--target", "cpu=linux/x86_64", env=no_gpu_env(tmp_path))
    assert load_spec(project).dependencies == ("tinylib", f"gitpkg @ {git_repo.url}@v1")
    result = run_mlenv("lock", cwd=project)
    assert result.returncode == 0, result.stdout + result.stderr
    locked = tomllib.loads((project / "mlenv.lock").read_text())
    gitpkg = next(entry for entry in locked["package"] if entry["name"] == "gitpkg")
    assert gitpkg["vcs"]["commit-id"] == git_repo.first and gitpkg["vcs"]["requested-revision"] == "v1"


# --- the importers, called directly ---------------------------------------------------------------------

def test_logical_lines_follow_pip():
    text = (
        "# a comment\n"
        "numpy>=1.26 \\\n"
        "    ; python_version >= '3.10'  # trailing comment\n"
        "pkg @ https://host/pkg-1.0.tar.gz#sha256=abc\n"
        "# a comment ending in a backslash does not continue \\\n"
        "requests\n"
        "\n"
        "last \\"
    )
    assert list(logical_lines(text)) == [
        (2, "numpy>=1.26     ; python_version >= '3.10'"),
        (4, "pkg @ https://host/pkg-1.0.tar.gz#sha256=abc"),
        (6, "requests"),
        (8, "last"),
    ]


@pytest.mark.parametrize("path, group", [
    ("requirements.txt", "main"), ("requirements.in", "main"), ("requirements/base.txt", "main"),
    ("requirements/prod.txt", "main"), ("requirements-dev.txt", "dev"), ("dev-requirements.txt", "dev"),
    ("requirements_dev.txt", "dev"), ("requirements/dev.txt", "dev"), ("requirements-test.txt", "test"),
    ("test-requirements.txt", "test"), ("requirements-notebook.txt", "notebook"), ("requirements-docs.txt", "docs"),
    ("requirements.gpu.txt", "gpu"), ("README.txt", None), ("constraints.txt", None), ("notes.txt", None),
])
def test_group_for_file(path, group):
    assert group_for_file(path) == group


def _import(tmp_path: Path, files: dict[str, str]):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return import_project(tmp_path, running_python="3.11.7")


def test_include_cycle_is_detected(tmp_path):
    with pytest.raises(SpecError, match=r"cycle: requirements.txt -> a.txt -> b.txt -> a.txt") as info:
        _import(tmp_path, {"requirements.txt": "-r a.txt\n", "a.txt": "numpy\n-r b.txt\n",
                           "b.txt": "--requirement=a.txt\n"})
    assert (info.value.path, info.value.line) == ("b.txt", 1)


def test_diamond_includes_are_not_a_cycle(tmp_path):
    imported = _import(tmp_path, {"requirements.txt": "-r a.txt\n-r b.txt\n", "a.txt": "-r c.txt\n",
                                  "b.txt": "-rc.txt\n", "c.txt": "numpy\n"})
    assert imported.dependencies == ["numpy"]


def test_unknown_option_suggests_the_right_one(tmp_path):
    with pytest.raises(SpecError, match="unknown option '--extra-index'") as info:
        _import(tmp_path, {"requirements.txt": "numpy\n--extra-index https://example.com/simple\n"})
    assert info.value.line == 2 and "--extra-index-url" in info.value.hint


def test_remote_include_is_refused(tmp_path):
    with pytest.raises(SpecError, match="remote requirements files"):
        _import(tmp_path, {"requirements.txt": "-r https://example.com/reqs.txt\n"})


def test_private_index_and_credentials(tmp_path):
    imported = _import(tmp_path, {"requirements.txt": (
        "-i https://deploy:s3cret@pypi.corp.example.com/simple/\n"
        "--extra-index-url https://${ARTIFACTORY_USER}:${ARTIFACTORY_TOKEN}@art.example.com/api/pypi/simple\n"
        "--extra-index-url=https://download.pytorch.org/whl/cpu\n"
        "torch==2.5.1+cpu\n"
        "corp-utils>=3\n"
    )})
    assert [(i.name, i.url, i.default, i.explicit) for i in imported.indexes] == [
        ("pypi-corp-example-com", "https://pypi.corp.example.com/simple", True, False),
        ("art-example-com", "https://${ARTIFACTORY_USER}:${ARTIFACTORY_TOKEN}@art.example.com/api/pypi/simple",
         False, False),
        ("pytorch-cpu", "https://download.pytorch.org/whl/cpu", False, True),
    ]
    assert imported.dependencies == ["torch==2.5.1", "corp-utils>=3"]
    assert imported.cpu_packages == ["torch"] and imported.cuda is None
    assert any(n.kind == "credentials" and "pypi.corp.example.com" in n.text for n in imported.notes)
    assert not any("s3cret" in n.text for n in imported.notes)
    plan = plan_init(tmp_path, machine=MACHINE, torch=None)
    assert "s3cret" not in plan.text
    assert load_spec_text(plan).targets["cpu"].sources == {"torch": "pytorch-cpu"}


def load_spec_text(plan):
    from mlenv.spec import parse_spec

    return parse_spec(plan.text, plan.path)


def test_pip_tools_input_wins_over_its_compiled_output(tmp_path):
    imported = _import(tmp_path, {
        "requirements.in": "numpy>=1.26\n",
        "requirements.txt": "# autogenerated by pip-compile\nnumpy==1.26.4 \\\n    --hash=sha256:abc\n",
    })
    assert imported.dependencies == ["numpy>=1.26"]
    assert any(n.origin == "requirements.txt" and "requirements.in" in n.text for n in imported.notes)


def test_bare_urls_and_local_paths_are_reported(tmp_path):
    imported = _import(tmp_path, {"requirements.txt": (
        "./vendor/tool-1.0-py3-none-any.whl\n"
        "git+https://github.com/org/repo.git@v1#egg=repo\n"
        "local-pkg @ file:///home/me/local_pkg\n"
        "named @ git+https://github.com/org/named.git@v2\n"
    )})
    assert imported.dependencies == ["repo @ git+https://github.com/org/repo.git@v1",
                                     "named @ git+https://github.com/org/named.git@v2"]
    assert [n.origin for n in imported.notes if n.kind == "url"] == [
        "requirements.txt:1", "requirements.txt:2", "requirements.txt:3", "requirements.txt:4"]
    assert "imported as `repo @ git+https://github.com/org/repo.git@v1`" in imported.notes[1].text


def test_dev_file_including_main_does_not_duplicate(tmp_path):
    imported = _import(tmp_path, {"requirements.txt": "numpy\n",
                                  "dev-requirements.txt": "-r requirements.txt\nnumpy\npytest\n"})
    assert imported.dependencies == ["numpy"] and imported.groups == {"dev": ["pytest"]}


@pytest.mark.parametrize("specifier, running, expected", [
    (">=3.10,<3.13", "3.11.7", "3.11"),
    (">=3.12", "3.11.7", "3.12"),
    ("<3.11", "3.11.7", "3.10"),
    ("~=3.9", "3.11.7", "3.11"),
    ("==3.10.*", "3.11.7", "3.10"),
    (">=3.11.9", "3.11.7", "3.11"),
    (">=4", "3.11.7", None),
])
def test_choose_python(specifier, running, expected):
    assert choose_python(specifier, running) == expected


@pytest.mark.parametrize("spec, expected", [
    ("numpy", ("numpy", "", None)),
    ("numpy=1.26", ("numpy", "==1.26.*", None)),
    ("numpy==1.26.4", ("numpy", "==1.26.4", None)),
    ("numpy=1.26.*", ("numpy", "==1.26.*", None)),
    ("numpy>=1.24,<2", ("numpy", ">=1.24,<2", None)),
    ("numpy 1.26.*", ("numpy", "==1.26.*", None)),
    ("conda-forge::numpy=1.26.4=py311h64a7726_0", ("numpy", "==1.26.4.*", "py311h64a7726_0")),
    ("PyTorch", ("pytorch", "", None)),
])
def test_conda_specs(spec, expected):
    assert conda_to_pip(spec) == expected


def test_conda_cuda_outside_the_catalog(tmp_path):
    imported = _import(tmp_path, {"environment.yml": "dependencies:\n  - cudatoolkit=11.3\n  - numpy\n"})
    assert imported.cuda == "11.8"  # no torch to decide: the next release of the same major that mlenv knows
    assert any("11.3" in n.text and "11.8" in n.text for n in imported.notes)


@pytest.mark.parametrize("lines, cuda, note", [
    # torch 1.11 was built for cu102/cu113/cu115 only: no CUDA mlenv knows, so no CUDA target at all
    (["cudatoolkit=11.3", "pytorch=1.11"], None, "published for cu102, cu113, cu115 only"),
    (["pytorch=2.0", "cudatoolkit=11.3"], "11.8", "nearest CUDA with builds of torch 2.0"),
    (["pytorch-cuda=12.4", "pytorch::pytorch=2.3.1"], "12.1", "nearest CUDA with builds of torch 2.3.1"),
    (["pytorch=2.5.1", "pytorch-cuda=12.4"], "12.4", None),
])
def test_conda_cuda_maps_to_a_cuda_that_has_the_requested_torch(tmp_path, lines, cuda, note):
    text = "dependencies:\n" + "".join(f"  - {line}\n" for line in lines)
    imported = _import(tmp_path, {"environment.yml": text})
    assert imported.cuda == cuda
    if note:
        assert any(note in n.text for n in imported.notes), imported.notes


def test_conda_python_patch_becomes_the_minor_and_every_dropped_package_is_reported(tmp_path):
    imported = _import(tmp_path, {"environment.yml": "dependencies:\n  - python=3.8.5\n  - pip=20.3\n  - numpy\n"})
    assert imported.python == "3.8"
    assert any(n.text.startswith("pip=20.3 not imported") for n in imported.notes)
    assert any("Python 3.8" in n.text for n in imported.notes)


def test_conda_oddities_are_errors_or_notes(tmp_path):
    with pytest.raises(SpecError, match="unexpected entry 'conda'") as info:
        _import(tmp_path, {"environment.yml": "dependencies:\n  - numpy\n  - conda: [x]\n"})
    assert info.value.line == 3
    imported = _import(tmp_path / "b",
                       {"environment.yml": "dependencies:\n  - numpy[version='>=1.2']\n  - blas=*=mkl\n"})
    assert imported.dependencies == []
    assert len([n for n in imported.notes if n.kind == "conda"]) == 2


def test_parse_target_option():
    target = parse_target_option("train=linux/arm64:cuda=12.8,gpu=H100,gpu_count=4,cpu-min=32")
    assert (target.name, target.platform, target.cuda, target.gpu, target.gpu_count, target.limits) == (
        "train", "linux/aarch64", "12.8", "h100", 4, (("cpu-min", 32),))
    with pytest.raises(UsageError, match="did you mean"):
        parse_target_option("x=linux/x86_64:cuad=12.4")


def test_machine_on_an_unknown_platform_still_gets_a_spec(tmp_path):
    odd = MachineInfo(platform=None, system="Linux", machine="ppc64le", python="3.11.7", cpus=4, ram_gb=8)
    plan = plan_init(tmp_path, machine=odd, torch=None)
    assert load_spec_text(plan).targets["cpu"].platform == "linux/x86_64"
    assert any("ppc64le" in n.text for n in plan.notes)


def test_python_version_file(tmp_path):
    (tmp_path / ".python-version").write_text("3.12.4\n")
    assert plan_init(tmp_path, machine=MACHINE, torch=None).python == "3.12.4"


# --- no input produces a traceback: only SpecError ---------------------------------------------------------

_line = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40),
    st.sampled_from(["-r", "-c", "-e", "-i", "--hash=sha256:00", "\\", "#", "numpy", "torch==2.5.1+cu124", " @ ",
                     "--extra-index-url", "-r requirements.txt", "[x]", ";", "python_version<'3'", "===", "+cu1",
                     "file:", "https://", "${X}", "--pre", "-f", "--no-index"]),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.lists(_line, max_size=4).map(" ".join), max_size=6))
def test_any_requirements_text_gives_a_spec_or_a_spec_error(tmp_path_factory, lines):
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "requirements.txt").write_text("\n".join(lines), encoding="utf-8")
    try:
        plan = plan_init(folder, machine=MACHINE, torch=None)
    except SpecError as exc:
        assert exc.message
        return
    load_spec_text(plan)


# --- interactive, on a real terminal ------------------------------------------------------------------

def test_interactive_prompts_on_a_terminal(tmp_path):
    import pty

    (tmp_path / "requirements.txt").write_text("numpy\n")
    master, slave = pty.openpty()
    env = no_gpu_env(tmp_path)
    process = subprocess.Popen([sys.executable, "-m", "mlenv", "init", "--path", str(tmp_path)],
                               stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    os.close(slave)
    os.write(master, b"renamed\n3.12\ny\n")  # project name, Python version, confirm
    stdout, stderr = process.communicate(timeout=120)
    os.close(master)
    assert process.returncode == 0, stdout.decode() + stderr.decode()
    spec = load_spec(tmp_path)
    assert (spec.name, spec.python, spec.dependencies) == ("renamed", "3.12", ("numpy",))


def test_interactive_decline_writes_nothing(tmp_path):
    import pty

    master, slave = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "mlenv", "init", "--path", str(tmp_path)],
                               stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=no_gpu_env(tmp_path))
    os.close(slave)
    os.write(master, b"\n\nn\n")
    stdout, stderr = process.communicate(timeout=120)
    os.close(master)
    assert process.returncode == 1 and b"nothing written" in stderr
    assert not (tmp_path / "mlenv.toml").exists()


_yaml_piece = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20),
    st.sampled_from(["dependencies:", "  - ", "- pip:", "    - ", "python=3", "numpy=1.26", "pytorch-cuda=12.1",
                     "cudatoolkit", "[", "{", ":", "name: x", "channels:", "- pytorch", "==", "=*=", "::", "\t"]),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.lists(_yaml_piece, max_size=3).map("".join), max_size=6))
def test_any_environment_yml_gives_a_spec_or_a_spec_error(tmp_path_factory, lines):
    folder = tmp_path_factory.mktemp("fuzzyml")
    (folder / "environment.yml").write_text("\n".join(lines), encoding="utf-8")
    try:
        plan = plan_init(folder, machine=MACHINE, torch=None)
    except SpecError as exc:
        assert exc.message
        return
    load_spec_text(plan)


# --- variants and sources that move on -------------------------------------------------------------------

def test_variant_requirement_files_become_exclusive_groups(tmp_path):
    imported = _import(tmp_path, {
        "requirements-common.txt": "numpy\n",
        "requirements-tpu.txt": "-r requirements-common.txt\ntensorflow==2.17.0\n",
        "requirements-cuda.txt": "-r requirements-common.txt\ntensorflow[and-cuda]==2.17.0\ntorch==2.5.1+cu124\n",
        "requirements-cpu.txt": "-r requirements-common.txt\ntensorflow-cpu==2.17.0\n",
        "requirements-dev.txt": "pytest\n",
        "requirements-legacy.txt": "scipy==1.10.1\n",
        "requirements-modern.txt": "scipy==1.14.1\n",
    })
    assert imported.dependencies == ["numpy"]
    assert sorted(map(sorted, imported.exclusive_groups)) == [["cpu", "cuda", "tpu"], ["legacy", "modern"]]
    notes = [n.text for n in imported.notes if n.kind == "variants"]
    assert any("their names choose an accelerator" in n for n in notes)
    assert any("scipy==1.10.1 vs scipy==1.14.1" in n for n in notes)
    assert imported.cuda == "12.4" and any("`mlenv sync --target cuda --group cuda`" in n for n in notes)


def test_init_records_variants_and_lock_warns_when_an_imported_file_moves_on(tmp_path, local_index):
    """The README flow: init, lock, someone edits requirements.txt, lock --check names it, --refresh."""
    local_index.add("tensorflow", "2.17.0")
    local_index.add("tensorflow-cpu", "2.17.0")
    (tmp_path / "requirements.txt").write_text(f"--index-url {local_index.url}\ntinylib\n")
    (tmp_path / "requirements-gpu.txt").write_text("-r requirements.txt\ntensorflow==2.17.0\n")
    (tmp_path / "requirements-cpu.txt").write_text("-r requirements.txt\ntensorflow-cpu==2.17.0\n")
    init(tmp_path, "--yes", "--target", "cpu=linux/x86_64", env=no_gpu_env(tmp_path))
    spec = load_spec(tmp_path)
    assert spec.exclusive_groups == (("cpu", "gpu"),)
    assert run_mlenv("lock", cwd=tmp_path).returncode == 0

    requirements = tmp_path / "requirements.txt"
    requirements.write_text(requirements.read_text() + "devtool\n")
    check = run_mlenv("lock", "--check", cwd=tmp_path)
    assert check.returncode == 0, check.stderr  # mlenv.toml is the spec: still fresh, but not silently
    assert "requirements.txt changed since `mlenv init` imported it" in check.stderr
    assert "requirements.txt changed" in run_mlenv("lock", cwd=tmp_path).stderr

    (tmp_path / "mlenv.toml").write_text((tmp_path / "mlenv.toml").read_text().replace(
        'platform = "linux/x86_64"', 'platform = "linux/x86_64"\ncpu-min = 4  # kept by --refresh'))
    init(tmp_path, "--refresh")
    refreshed = load_spec(tmp_path)
    assert refreshed.dependencies == ("tinylib", "devtool")
    assert refreshed.targets["cpu"].cpu_min == 4 and "# kept by --refresh" in (tmp_path / "mlenv.toml").read_text()
    assert refreshed.exclusive_groups == (("cpu", "gpu"),)
    check = run_mlenv("lock", "--check", cwd=tmp_path)
    assert check.returncode == 1 and "added devtool" in check.stderr and "changed since" not in check.stderr


def test_init_never_proposes_a_cuda_the_pinned_torch_was_not_built_for(tmp_path):
    # the 8xH100 machine's driver runs CUDA 12.6; torch 2.5.1 was published for cu118/cu121/cu124 only
    (tmp_path / "requirements.txt").write_text("torch==2.5.1\n")
    result = init(tmp_path, "--yes", env=gpu_env(tmp_path, "8xh100"))
    cuda = load_spec(tmp_path).targets["cuda"]
    assert cuda.cuda == "12.4" and cuda.sources == {"torch": "pytorch-cu124"}
    assert "torch 2.5.1 has no CUDA 12.6 build; proposing CUDA 12.4" in result.stdout
