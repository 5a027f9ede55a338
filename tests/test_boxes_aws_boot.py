"""`mlenv up --provider aws` followed to a box one can `mlenv ssh` into, through the `mlenv` CLI as the
README shows.

The AWS side is moto as an HTTP server behind the fake EC2 of tests/fake_ec2.py: each instance boots in
a container of a fake AMI and runs the real user-data mlenv sent, its console is what that script
printed, and its public IP is a loopback address where its sshd answers.  Nothing in mlenv knows.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import locked_template, require, run_mlenv
from tests.fake_ec2 import AMI_PARAMETER

# a team on AWS: `mlenv ssh NAME` and `mlenv doctor --box NAME` look for NAME there (doctor has no --provider)
DEVBOX = f'[devbox]\nprovider = "aws"\nami-parameter = "{AMI_PARAMETER}"\n'


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    index, folder = locked_template(tmp_path_factory, DEVBOX)
    yield folder
    index.close()


@pytest.fixture
def project(tmp_path, template):
    return Path(shutil.copytree(template, tmp_path / "proj"))


def mlenv(folder: Path, *args: str, expect: int = 0):
    result = run_mlenv(*args, cwd=folder, timeout=500)
    assert result.returncode == expect, f"mlenv {' '.join(args)}: {result.returncode}\n{result.stdout}{result.stderr}"
    return result


def progress(stderr: str) -> list[str]:
    return [line[2:] for line in stderr.splitlines() if line.startswith("• ")]


def pinned_keys(home: Path, name: str) -> list[str]:
    """The host keys mlenv pinned for box ``name`` (its known_hosts lines, by HostKeyAlias)."""
    known_hosts = home / ".ssh" / "mlenv" / "known_hosts"
    return [" ".join(line.split()[1:3]) for line in known_hosts.read_text().splitlines()
            if line.split()[:1] == [f"mlenv-{name}"]]


def instance_tags(instance_id: str) -> dict[str, str]:
    import boto3

    ec2 = boto3.client("ec2", region_name="eu-west-1")
    described = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    return {tag["Key"]: tag["Value"] for tag in described["Tags"]}


def on(instance, command: str) -> str:
    """``command``'s output on the fake instance's machine, as root (through the engine, not SSH)."""
    result = instance.container.exec_run(["sh", "-c", command])
    assert result.exit_code == 0, result.output.decode()
    return result.output.decode()


def console_keys(instance_id: str) -> list[str]:
    """The host keys on the instance's console, read as a user reads it with boto3 (EC2 sends it base64,
    botocore decodes it)."""
    import boto3

    from mlenv.boxes.cloudinit import parse_host_keys

    output = boto3.client("ec2", region_name="eu-west-1").get_console_output(InstanceId=instance_id, Latest=True)
    return parse_host_keys(output["Output"])


@pytest.mark.docker
@pytest.mark.network  # the first-boot script installs uv from PyPI
def test_up_on_aws_waits_for_a_box_that_ssh_and_doctor_reach_and_down_removes(booting_aws, project, fake_ec2):
    require(shutil.which("ssh") is not None, "an OpenSSH client (apt-get install openssh-client)")
    up = mlenv(project, "up", "box1", "--provider", "aws", "--yes")
    (instance,) = fake_ec2.instances.values()

    # up returned once the box was set up: SSH logged in with the pinned key, then the first-boot
    # log followed to its end, its steps shown as they happened
    steps = progress(up.stderr)
    expected = ["host keys read from the console", f"waiting for SSH on {instance.address}",
                f"SSH ready on {instance.address}", "watchdog running", "environment synced into /opt/mlenv/venv",
                "box box1 is ready"]
    assert [step for step in steps if step in expected] == expected and steps[-1] == expected[-1], up.stderr
    assert instance_tags(instance.instance_id)["mlenv:setup"] == "ready"
    again = mlenv(project, "up", "box1", "--provider", "aws", "--yes")  # set up already: reported, no SSH wait
    assert "waiting for SSH" not in again.stderr and "box box1 exists" in again.stderr
    # the keys on the console are the box's own, and the one pinned before the first connection is its
    # ed25519 key
    on_box = sorted(" ".join(line.split()[:2]) for line in on(instance, "cat /etc/ssh/ssh_host_*_key.pub").splitlines())
    assert sorted(console_keys(instance.instance_id)) == on_box
    assert [key for key in pinned_keys(Path(booting_aws["HOME"]), "box1") if key.startswith("ssh-ed25519 ")] \
        == [key for key in on_box if key.startswith("ssh-ed25519 ")]
    # the sshd configuration the script wrote is valid and what sshd now runs with (dead clients dropped)
    assert "clientaliveinterval 30" in on(instance, "sshd -T -C user=ec2-user,host=laptop,addr=127.0.0.1").splitlines()
    listed = json.loads(mlenv(project, "ls", "--json", "--provider", "aws").stdout)
    assert [(b["name"], b["provider"], b["state"], b["ssh_host"]) for b in listed] == \
        [("box1", "aws", "running", instance.address)]

    # a command over SSH runs in the lock synced on the box; its output and exit code come back
    ran = mlenv(project, "ssh", "box1", "--provider", "aws", "--", "python", "-c",
                "'import sys, tinylib, tinydep; print(sys.prefix, tinydep.__version__); sys.exit(3)'", expect=3)
    assert ran.stdout.split() == ["/opt/mlenv/venv", "1.1"]
    # that login ran /etc/ssh/sshrc, which marks it as activity for the idle watchdog
    from mlenv.boxes.model import ACTIVITY_DIR

    on(instance, f"test -e {ACTIVITY_DIR}/ssh-$(id -u ec2-user)")
    mlenv(project, "doctor", "--box", "box1")  # exit 0: the box's environment is the lock's

    mlenv(project, "down", "box1", "--yes")
    import docker

    with pytest.raises(docker.errors.NotFound):
        instance.container.reload()
    assert json.loads(mlenv(project, "ls", "--json", "--provider", "aws").stdout) == []


@pytest.mark.docker
@pytest.mark.network
def test_a_first_boot_setup_that_fails_after_the_keys_is_exit_9_with_its_output_and_the_box_is_kept(
        booting_aws, fake_ec2, tmp_path, index_server):
    """The lock names a wheel its index no longer serves (deleted from the mirror after locking): the box
    boots, prints its keys and lets mlenv in, then `uv pip sync` fails on it."""
    from tests.conftest import make_project
    from tests.pkgindex import add_tiny_packages

    index = add_tiny_packages(index_server("shrinking"))
    wheel = index.add("gonepkg", "1.0")
    folder = make_project(tmp_path / "proj", index.url, dependencies=("tinylib", "gonepkg"),
                          extra=DEVBOX)
    wheel.unlink()

    failed = mlenv(folder, "up", "box2", "--yes", expect=9)
    assert "SSH ready on " in failed.stderr and "box box2 is ready" not in failed.stderr
    message = failed.stderr[failed.stderr.index("error:"):]
    assert "gonepkg" in message and "MLENV BOX SETUP FAILED" in message  # the failing command's own words
    assert "mlenv down box2 --yes" in message and "mlenv ssh box2" in message
    # kept: the box is there to look at; `up` again waits for its setup again (no new instance), then
    # `down` removes it and its machine
    again = mlenv(folder, "up", "box2", "--yes", expect=9)
    assert "SSH ready on " in again.stderr and "gonepkg" in again.stderr
    (instance,) = fake_ec2.instances.values()
    assert [(b["name"], b["state"]) for b in json.loads(mlenv(folder, "ls", "--json", "--provider", "aws").stdout)] \
        == [("box2", "running")]
    assert "mlenv:setup" not in instance_tags(instance.instance_id)
    mlenv(folder, "down", "box2", "--yes")
    assert json.loads(mlenv(folder, "ls", "--json", "--provider", "aws").stdout) == []
    assert instance.instance_id not in fake_ec2.instances
    import docker

    with pytest.raises(docker.errors.NotFound):
        instance.container.reload()


def tag_as_dev_image(project: Path, image: str, base_image: str, monkeypatch) -> list[str]:
    """Put ``image`` in the engine under the tags `mlenv up` computes for the project's dev image (its
    content tag and moving tag, which `up` then finds and pushes instead of building): mlenv's own
    build_target, with the build step (minutes of uv and pip) replaced by tagging ``image``."""
    from mlenv.image import build
    from mlenv.image.engine import local_image
    from mlenv.lock.model import read_lock
    from mlenv.spec import load_spec

    tags: list[str] = []

    def tag_instead_of_building(_builder, request, **_options):
        for tag in request.tags:
            local_image(image).tag(tag)
            tags.append(tag)

    monkeypatch.setattr(build, "find_builder", lambda _docker: None)
    monkeypatch.setattr(build, "run_build", tag_instead_of_building)
    build.build_target(load_spec(project / "mlenv.toml"), read_lock(project), "cpu", stage="dev",
                       base_image=base_image)
    assert tags, "the dev image was already in the engine"
    return tags


@pytest.mark.docker
def test_ssh_on_an_image_box_runs_in_its_container(booting_aws, template, tmp_path, fake_ec2, docker_registry,
                                                   base_image, docker_client, monkeypatch):
    """`[image] registry` set: `up` pushes the dev image, the box pulls it by digest and runs it as its
    container, and `mlenv ssh NAME` (with or without a command) lands in that container, in /workspace,
    where the locked environment is; plain `ssh mlenv-NAME` is the instance itself."""
    import uuid

    from mlenv.boxes.docker import container_name

    project = Path(shutil.copytree(template, tmp_path / "proj"))
    spec = project / "mlenv.toml"
    spec.write_text(spec.read_text() + f'\n[image]\nregistry = "{docker_registry}/box{uuid.uuid4().hex[:8]}"\n')
    tags = tag_as_dev_image(project, base_image, base_image, monkeypatch)
    name = f"img{uuid.uuid4().hex[:8]}"
    made_on_host = [path for path in ("/srv/mlenv", "/var/lib/mlenv") if not Path(path).exists()]
    try:
        up = mlenv(project, "up", name, "--base-image", base_image, "--yes")
        (instance,) = fake_ec2.instances.values()
        pulled = [step for step in progress(up.stderr) if step.startswith("image pulled: ")]
        assert pulled and pulled[0].startswith(f"image pulled: {tags[0]}@sha256:"), up.stderr
        running = docker_client.containers.get(container_name(name))
        assert running.attrs["Config"]["Image"] == pulled[0].removeprefix("image pulled: ")

        # a command: in the container (its PID 1 is the box's `sleep infinity`), in /workspace, its words
        # joined for the container's shell; its output and exit code come back
        ran = mlenv(project, "ssh", name, "--", "pwd;", "tr", "'\\0'", "' '", "</proc/1/cmdline;",
                    "test", "!", "-e", "/var/log/mlenv-setup.log", "&&", "exit", "3", expect=3)
        assert ran.stdout.split() == ["/workspace", "sleep", "infinity"], ran.stdout
        # a shell: the same place, with a terminal (script(1) gives ssh one)
        session = subprocess.run(["script", "-qec", f"{shlex.quote(sys.executable)} -m mlenv ssh {name}", "/dev/null"],
                                 input="pwd; test -t 0 && echo terminal; exit 4\n", capture_output=True,
                                 text=True, cwd=project, timeout=120)
        assert session.returncode == 4 and "/workspace" in session.stdout and "terminal" in session.stdout, \
            session.stdout + session.stderr
        # the instance itself, for admin work
        vm = subprocess.run(["ssh", "-F", str(Path(booting_aws["HOME"]) / ".ssh" / "mlenv" / "config"),
                             f"mlenv-{name}", "test -e /var/log/mlenv-setup.log && echo instance"],
                            capture_output=True, text=True, timeout=60)
        assert vm.stdout.strip() == "instance", vm.stderr
        # the watchdog's decisions come from the instance, where it runs (the container does not see them)
        from mlenv.boxes.model import WATCHDOG_LOG

        decisions = mlenv(project, "logs", name, "--json").stdout.splitlines()
        assert decisions and json.loads(decisions[0])["event"] == "start"
        mlenv(project, "logs", name, "--tail", "-3", expect=2)
        # a log with no decision in it yet (the watchdog now writes to /dev/null): said, and exit 0
        on(instance, f"mv {WATCHDOG_LOG} {WATCHDOG_LOG}.before && ln -s /dev/null {WATCHDOG_LOG}")
        nothing = mlenv(project, "logs", name)
        assert nothing.stdout == "" and f"box {name} has logged no decisions yet" in nothing.stderr
        mlenv(project, "down", name, "--yes")
    finally:
        for container in docker_client.containers.list(all=True, filters={"name": container_name(name)}):
            container.remove(force=True)
        import docker

        for tag in tags:  # untagged by name only: the image is the shared base image
            try:
                docker_client.images.remove(tag)
            except docker.errors.ImageNotFound:
                pass
        for path in made_on_host:
            shutil.rmtree(path, ignore_errors=True)
