"""The execution seam: the same contract on this machine, in a running container and in an image."""

from __future__ import annotations

import sys
import uuid

import pytest

from mlenv.errors import MlenvError, ToolMissingError
from mlenv.execute import (
    NOT_FOUND,
    THROWAWAY_LABEL,
    ContainerExecutor,
    ImageExecutor,
    LocalExecutor,
    copy_tree_from,
    run_python,
    write_file,
)
from tests.conftest import run_mlenv


def contract(executor) -> None:
    """What every executor promises: output, exit codes, stdin, 127 for a missing program."""
    done = executor.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (done.returncode, done.text, done.error_text) == (3, "out\n", "err\n")
    assert executor.run(["cat"], input=b"through stdin\n").text == "through stdin\n"
    assert executor.run(["mlenv-no-such-program"]).returncode == NOT_FOUND
    assert executor.run(["sh", "-c", 'printf %s "$GREETING"'], env={"GREETING": "hi there"}).text == "hi there"
    with pytest.raises(MlenvError) as error:
        executor.run(["sh", "-c", "echo 'it broke' >&2; exit 2"]).check("the step")
    assert "the step failed (exit 2)" in error.value.message and "it broke" in error.value.message


def test_local_executor_keeps_the_contract(tmp_path):
    contract(LocalExecutor(tmp_path))


def test_run_python_falls_back_and_reports_failures_as_tool_errors(tmp_path, monkeypatch):
    local = LocalExecutor()
    assert run_python(local, "print(6 * 7)", python="python3").strip() == "42"
    with pytest.raises(ToolMissingError) as error:
        run_python(local, "print(1)", python=str(tmp_path / "no-python"))
    assert error.value.message == f"cannot run Python interpreter {tmp_path / 'no-python'}: not found on this machine"
    assert error.value.exit_code == 6
    # `doctor --python PATH` names its place after the interpreter: said once, not "not found on python PATH"
    missing = str(tmp_path / "no-python")
    with pytest.raises(ToolMissingError) as error:
        run_python(LocalExecutor(where=f"python {missing}"), "print(1)", python=missing)
    assert error.value.message == f"cannot run Python interpreter {missing}: not found"
    with pytest.raises(ToolMissingError) as error:
        run_python(local, "import sys; sys.exit('probe failed')", python="python3")
    assert "probe failed" in error.value.message

    # no interpreter named: `python` answers first, else `python3` (all that many images and boxes have)
    bin_folder = tmp_path / "bin"
    bin_folder.mkdir()
    (bin_folder / "python3").symlink_to(sys.executable)
    (bin_folder / "python").write_text("#!/bin/sh\necho from-python\n")
    (bin_folder / "python").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_folder))
    assert run_python(local, "print(6 * 7)").strip() == "from-python"
    (bin_folder / "python").unlink()
    assert run_python(local, "print(6 * 7)").strip() == "42"
    (bin_folder / "python3").unlink()
    with pytest.raises(ToolMissingError) as error:
        run_python(local, "print(6 * 7)")
    assert "no python or python3" in error.value.message and error.value.exit_code == 6


def test_files_travel_both_ways(tmp_path):
    local = LocalExecutor()
    remote = tmp_path / "remote" / "deep" / "notes.txt"
    write_file(local, str(remote), b"first\n", mode=0o600)
    write_file(local, str(remote), b"second\n", mode=0o600)  # replaces atomically
    assert remote.read_bytes() == b"second\n" and remote.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in (tmp_path / "remote" / "deep").iterdir()] == ["notes.txt"]  # no temp left
    back = copy_tree_from(local, str(tmp_path / "remote"), tmp_path / "back")
    assert [p.relative_to(tmp_path / "back").as_posix() for p in back] == ["deep/notes.txt"]
    assert (tmp_path / "back" / "deep" / "notes.txt").read_bytes() == b"second\n"


@pytest.fixture(scope="module")
def running_container(docker_engine, base_image):
    from mlenv.image.engine import connect

    client = connect()
    container = client.containers.run(base_image, ["sleep", "infinity"], detach=True,
                                      name=f"mlenv-test-exec-{uuid.uuid4().hex[:8]}", network_mode="none")
    yield container.name
    container.remove(force=True)


@pytest.mark.docker
def test_container_executor_keeps_the_contract(running_container, tmp_path):
    executor = ContainerExecutor(running_container)
    contract(executor)
    assert run_python(executor, "import sys; print(sys.version_info[0])").strip() == "3"  # python3 fallback
    write_file(executor, "/tmp/out/result.json", b'{"ok": true}\n')
    copy_tree_from(executor, "/tmp/out", tmp_path)
    assert (tmp_path / "result.json").read_text() == '{"ok": true}\n'


@pytest.mark.docker
def test_image_executor_keeps_the_contract_and_leaves_nothing(docker_engine, base_image):
    from mlenv.image.engine import connect

    client = connect()
    contract(ImageExecutor(base_image))
    leftovers = client.containers.list(all=True, filters={"label": THROWAWAY_LABEL, "ancestor": base_image})
    assert leftovers == []  # throwaway means removed
    with pytest.raises(ToolMissingError) as error:
        ImageExecutor("mlenv-test/no-such-image:1").run(["true"])
    assert "no local image" in error.value.message


@pytest.mark.docker
def test_doctor_on_a_missing_image_says_it_could_not_look(tmp_path, locked_project, docker_engine):
    """Exit 6 (could not look), never 1 (drift): scripts tell the two apart by the code alone."""
    project = locked_project("demo")
    result = run_mlenv("doctor", "--image", "mlenv-test/no-such-image:1", "--target", "cpu", cwd=project,
                       env={"DOCKER_HOST": docker_engine})
    assert result.returncode == 6, result.stderr
    assert "no local image 'mlenv-test/no-such-image:1'" in result.stderr
    unreachable = run_mlenv("doctor", "--image", "demo:cpu", "--target", "cpu", cwd=project,
                            env={"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"})
    assert unreachable.returncode == 6 and "cannot reach the Docker Engine" in unreachable.stderr


@pytest.mark.docker
def test_gpus_are_probed_where_the_environment_runs(running_container):
    """`doctor --box` reads the box's GPUs: its nvidia-smi (here a recorded A10G answer), not ours."""
    from pathlib import Path

    from mlenv.hardware.detect import probe_gpus_on

    executor = ContainerExecutor(running_container)
    assert probe_gpus_on(executor).gpus == []  # no nvidia-smi in the container: no GPU, no error
    recorded = (Path(__file__).parent / "data" / "nvidia" / "a10g" / "full.out").read_bytes()
    write_file(executor, "/opt/fake-smi/answer", recorded)
    write_file(executor, "/usr/local/bin/nvidia-smi", b"#!/bin/sh\ncat /opt/fake-smi/answer\n", mode=0o755)
    probe = probe_gpus_on(executor)
    assert [(gpu.model, gpu.compute_cap) for gpu in probe.gpus] == [("a10g", "8.6")]
    assert probe.driver == "535.183.01"
    write_file(executor, "/usr/local/bin/nvidia-smi", b"#!/bin/sh\necho 'NVIDIA-SMI has failed'\nexit 9\n", mode=0o755)
    broken = probe_gpus_on(executor)
    assert broken.gpus == [] and broken.error == "NVIDIA-SMI has failed"
    executor.run(["rm", "/usr/local/bin/nvidia-smi"]).check("removing the fake nvidia-smi")
