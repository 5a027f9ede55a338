"""The ``aws`` provider: a dev box is an EC2 instance, found and described by its tags.

boto3 reads the standard AWS configuration (profiles, SSO, ``AWS_PROFILE``, ``AWS_ENDPOINT_URL``);
the region is ``[devbox] region``, else ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` / the profile's.

What ``up`` makes for a box, each resource tagged ``mlenv:box``/``owner``/``project``/``lock`` from
the moment it exists (so ``ls``/``gc`` see it even if ``up`` dies half-way):
- a key pair holding this machine's public key (``mlenv.connect.keys.local_key``);
- a security group allowing SSH only from the caller's address (``/32``);
- the instance: IMDSv2 required, encrypted gp3 root volume, ``InstanceInitiatedShutdownBehavior=stop``
  (the watchdog's poweroff stops the box, never terminates it), user-data from
  ``templates/cloud-init.sh.j2``;
- a CloudWatch alarm that stops the instance when its CPU stays low, should the watchdog die.
Then ``up`` reads the host keys from the console and pins them, logs in over SSH and follows the
first-boot log (``cloudinit.SETUP_LOG``) to its READY marker, and tags the instance ``mlenv:setup=ready``.
A failure or Ctrl-C before the host keys deletes what ``up`` made; after them the box is complete and
kept (a setup failure is exit 9 with the log's end).  A killed process leaves only tagged resources,
which ``mlenv gc`` lists (with their cost) and deletes.
"""

from __future__ import annotations

import builtins
import ipaddress
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

from mlenv.boxes import catalog
from mlenv.boxes.model import (
    BOX_DIR,
    KEEPALIVE_DIR,
    WATCHDOG_LOG,
    WATCHDOG_PATH,
    Box,
    Orphan,
    Progress,
    UpRequest,
    current_owner,
    validate_box_name,
)
from mlenv.errors import BoxSetupError, ExitCode, Interrupted, MlenvError, ToolMissingError, UsageError
from mlenv.spec import DevboxSettings, Spec, Target

if TYPE_CHECKING:
    from mlenv.execute import Completed, Executor, SSHExecutor
    from mlenv.lock.model import Lock, LockedTarget

# What AWS APIs answer (instances, key pairs, groups, alarms, ...): boto3 ships no types, so a
# response is a JSON-shaped dict, read by the keys the API documents.
AwsRecord = dict[str, Any]

TAG_BOX, TAG_OWNER, TAG_PROJECT, TAG_LOCK = "mlenv:box", "mlenv:owner", "mlenv:project", "mlenv:lock"
TAG_TARGET, TAG_USER, TAG_CREATED, TAG_HOST_KEY = "mlenv:target", "mlenv:user", "mlenv:created", "mlenv:host-key"
TAG_SPOT, TAG_DISK, TAG_MODE = "mlenv:spot", "mlenv:disk-gb", "mlenv:mode"
BOX_VENV = "/opt/mlenv/venv"  # the lock synced there when no registry is set
LIVE_STATES = ["pending", "running", "stopping", "stopped", "shutting-down"]
EC2_STATES = {"pending": "pending", "running": "running", "stopping": "stopping", "stopped": "stopped",
              "shutting-down": "stopping", "terminated": "terminated"}
# Public SSM parameters naming the newest AMIs: Ubuntu LTS for CPU targets, the Deep Learning Base
# AMI (NVIDIA driver, CUDA, docker with the NVIDIA runtime) for CUDA targets.
AMI_PARAMETERS = {
    ("cpu", "x86_64"): "/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id",
    ("cpu", "arm64"): "/aws/service/canonical/ubuntu/server/24.04/stable/current/arm64/hvm/ebs-gp3/ami-id",
    ("cuda", "x86_64"): "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id",
    ("cuda", "arm64"): "/aws/service/deeplearning/ami/arm64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id",
}
DEFAULT_DISK_GB = {"cpu": 40, "cuda": 100}
WATCHDOG_POLL_S = 30
ALARM_PERIOD_S = 300
ALARM_CPU_PERCENT = 2.0
ALARM_DESCRIPTION = "mlenv backstop"
BOOT_TIMEOUT_S = 900  # MLENV_BOOT_TIMEOUT: how long `up` waits for the host keys on the console
SETUP_TIMEOUT_S = 1800  # MLENV_SETUP_TIMEOUT: how long `up` then waits for SSH and the first-boot setup
# on the instance once `up` saw its first-boot setup finish: a later `up` then only reports the box
TAG_SETUP, SETUP_READY = "mlenv:setup", "ready"
CALLER_IP_URL = "https://checkip.amazonaws.com"
_AMI_ID = re.compile(r"ami-[0-9a-f]{8,17}")
_SSM_NAME = re.compile(r"/[A-Za-z0-9_.\-/]{1,1000}")


@dataclass
class Plan:
    """Everything ``up`` will create, decided before anything is: what ``--dry-run`` prints."""

    box: str
    target: str
    instance_type: str
    price: float | None
    spot: bool
    ami: str
    ami_source: str
    root_device: str
    disk_gb: int
    user: str
    cidrs: list[str]
    tags: dict[str, str]
    alarm_window_s: int
    image_ref: str | None
    instance_profile: str | None
    user_data: bytes = b""
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        price = f"${self.price:.4f}/hour" if self.price is not None else "price unknown (not in mlenv's catalog)"
        if self.spot:
            price += " on-demand; spot is usually lower"
        row = catalog.lookup(self.instance_type)
        lines = [
            (f"instance type: {row.describe() if row else self.instance_type}, {price} "
             f"(catalog prices of {catalog.prices_date()}, {catalog.prices_region()})"),
            f"market: {'spot (stops on interruption)' if self.spot else 'on-demand'}",
            f"AMI: {self.ami} ({self.ami_source}), login user {self.user}",
            f"disk: {self.disk_gb} GB gp3, encrypted, root {self.root_device}",
            f"security group: SSH (tcp/22) from {', '.join(self.cidrs)} only",
            "metadata: IMDSv2 required; shutdown from the box stops it (never terminates)",
            f"environment: {'image ' + self.image_ref if self.image_ref else 'the lock synced into a venv with uv'}",
            (f"backstop: CloudWatch alarm stops the instance after {self.alarm_window_s // 60} min below "
             f"{ALARM_CPU_PERCENT:g}% CPU"),
            "tags: " + ", ".join(f"{key}={value}" for key, value in self.tags.items()),
        ]
        return lines + self.notes


class AWSProvider:
    name = "aws"

    def __init__(self, spec: Spec | None = None, *, session: Any = None) -> None:
        self.spec = spec
        self.devbox = spec.devbox if spec is not None else DevboxSettings()
        self._session = session
        self._clients: dict[str, Any] = {}  # boto3 clients, by service name
        self._region: str | None = None
        self._live_console = True  # GetConsoleOutput Latest=True, until the instance type refuses it

    # --- AWS plumbing ---------------------------------------------------------------------------

    @property
    def session(self) -> Any:  # boto3.session.Session
        if self._session is None:
            import boto3

            # botocore reads AWS_DEFAULT_REGION and the profile; AWS_REGION is what the other SDKs
            # and the CLI v2 read, and users set it: honour both
            region = self.devbox.region or os.environ.get("AWS_REGION") or None
            self._session = boto3.session.Session(region_name=region)
        return self._session

    @property
    def region(self) -> str:
        if self._region is None:
            region = self.session.region_name
            if not region:
                raise UsageError("no AWS region configured",
                                 hint="set [devbox] region in mlenv.toml, AWS_REGION, or a region in your AWS profile")
            self._region = region
        return self._region

    def client(self, service: str) -> Any:
        if service not in self._clients:
            from botocore.config import Config

            self._clients[service] = self.session.client(
                service, region_name=self.region, config=Config(retries={"mode": "standard", "max_attempts": 5}))
        return self._clients[service]

    def call(self, what: str, service: str, operation: str, **kwargs: Any) -> AwsRecord:
        """One AWS API call; credential and API errors become one clear MlenvError."""
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            NoCredentialsError,
            NoRegionError,
        )

        try:
            return getattr(self.client(service), operation)(**kwargs)
        except NoCredentialsError:
            raise ToolMissingError(
                f"{what}: no AWS credentials found",
                hint="run `aws configure` or `aws sso login`, or set AWS_PROFILE",
            ) from None
        except NoRegionError:
            raise UsageError("no AWS region configured", hint="set [devbox] region, or AWS_REGION") from None
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise AwsError(f"{what}: {error.get('Code', 'error')}: {error.get('Message', exc)}",
                           code=error.get("Code", "")) from None
        except BotoCoreError as exc:
            raise ToolMissingError(f"{what}: {exc}", hint="is the AWS endpoint reachable?") from None

    def _project(self) -> str | None:
        return self.spec.name if self.spec is not None else None

    def resource_name(self, project: str, box: str) -> str:
        return f"mlenv-{project}-{box}"

    # --- finding boxes by their tags ------------------------------------------------------------

    def _filters(self, box: str | None = None, states: builtins.list[str] | None = None) -> builtins.list[AwsRecord]:
        filters: builtins.list[AwsRecord] = [{"Name": "tag-key", "Values": [TAG_BOX]}]
        if box is not None:
            filters.append({"Name": f"tag:{TAG_BOX}", "Values": [box]})
        project = self._project()
        if project:
            filters.append({"Name": f"tag:{TAG_PROJECT}", "Values": [project]})
        if states:
            filters.append({"Name": "instance-state-name", "Values": states})
        return filters

    def _instances(self, box: str | None = None,
                   states: builtins.list[str] | None = None) -> builtins.list[AwsRecord]:
        paginator = self.client("ec2").get_paginator("describe_instances")
        found: builtins.list[AwsRecord] = []
        try:
            for page in paginator.paginate(Filters=self._filters(box, states or LIVE_STATES)):
                for reservation in page["Reservations"]:
                    found.extend(reservation["Instances"])
        except Exception as exc:  # noqa: BLE001 - the paginator raises botocore errors: map them once
            self._raise_mapped("listing EC2 instances", exc)
        return sorted(found, key=lambda inst: (_tags(inst).get(TAG_BOX, ""), inst["InstanceId"]))

    def _raise_mapped(self, what: str, exc: Exception) -> NoReturn:
        from botocore.exceptions import ClientError, NoCredentialsError

        if isinstance(exc, NoCredentialsError):
            raise ToolMissingError(f"{what}: no AWS credentials found",
                                   hint="run `aws configure` or `aws sso login`, or set AWS_PROFILE") from None
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            raise AwsError(f"{what}: {error.get('Code')}: {error.get('Message')}", code=error.get("Code", "")) from None
        raise exc

    def _instance(self, name: str) -> AwsRecord | None:
        instances = self._instances(name)
        projects = {_tags(inst).get(TAG_PROJECT, "?") for inst in instances}
        if len(projects) > 1:
            raise UsageError(f"boxes named {name!r} exist in several projects: {', '.join(sorted(projects))}",
                             hint="run the command inside the project's folder")
        if len(instances) > 1:
            ids = ", ".join(inst["InstanceId"] for inst in instances)
            raise MlenvError(f"box {name!r} has several live instances ({ids})",
                             hint="terminate the extra ones in the EC2 console, or `mlenv down` and `mlenv up` again")
        return instances[0] if instances else None

    def _box(self, inst: AwsRecord) -> Box:
        tags = _tags(inst)
        row = catalog.lookup(inst["InstanceType"])
        state = EC2_STATES.get(inst["State"]["Name"], "pending")
        launched = inst.get("LaunchTime")
        host_key = tags.get(TAG_HOST_KEY)
        return Box(
            name=tags.get(TAG_BOX, "?"),
            provider=self.name,
            state=state,
            target=tags.get(TAG_TARGET),
            lock_hash=tags.get(TAG_LOCK),
            created=_float(tags.get(TAG_CREATED)),
            instance_type=inst["InstanceType"],
            region=self.region,
            price_per_hour=row.price if row else None,
            ssh_host=inst.get("PublicIpAddress") or inst.get("PublicDnsName") or inst.get("PrivateIpAddress") or None,
            ssh_port=22,
            ssh_user=tags.get(TAG_USER),
            host_keys=[host_key] if host_key else [],
            extra={
                # launched, but its keys not read yet: `mlenv up` then defers the ssh entry
                "host_keys_pending": state in ("pending", "running") and not host_key,
                "setup_ready": tags.get(TAG_SETUP) == SETUP_READY,
                "instance_id": inst["InstanceId"],
                "ami": inst.get("ImageId"),
                "spot": tags.get(TAG_SPOT) == "true",
                "disk_gb": _float(tags.get(TAG_DISK)),
                "mode": tags.get(TAG_MODE),
                "availability_zone": inst.get("Placement", {}).get("AvailabilityZone"),
            },
            project=tags.get(TAG_PROJECT),
            owner=tags.get(TAG_OWNER),
            started=launched.timestamp() if launched is not None and state == "running" else None,
        )

    def list(self) -> list[Box]:
        return [self._box(inst) for inst in self._instances()]

    def get(self, name: str) -> Box | None:
        inst = self._instance(validate_box_name(name))
        if inst is None:
            return None
        return self._box(self._look_for_host_keys(inst))

    # --- planning -------------------------------------------------------------------------------

    def _require_spec(self) -> Spec:
        if self.spec is None:
            raise UsageError("creating a box needs a project", hint="run `mlenv up` in a folder with mlenv.toml")
        return self.spec

    def _target(self, req: UpRequest) -> Target:
        spec = self._require_spec()
        name = req.target or self.devbox.target
        if name is None:
            linux = [t for t in spec.targets.values() if t.platform in catalog.EC2_ARCH]
            if not linux:
                raise UsageError("no linux target in mlenv.toml for an EC2 box", hint="add one, or pass --target")
            name = linux[0].name
        return spec.target(name)

    def caller_cidrs(self) -> builtins.list[str]:
        """Where SSH may come from: ``[devbox] ssh-cidrs``, else ``MLENV_CALLER_IP``, else this
        machine's public address as AWS sees it (checkip.amazonaws.com), as a single-address block."""
        configured = self.devbox.ssh_cidrs
        if configured:
            return [_cidr(value, "[devbox] ssh-cidrs") for value in configured]
        address = os.environ.get("MLENV_CALLER_IP")
        if not address:
            import urllib.request

            try:
                with urllib.request.urlopen(CALLER_IP_URL, timeout=10) as response:
                    address = response.read(100).decode().strip()
            except OSError as exc:
                raise ToolMissingError(
                    f"cannot find this machine's public IP address ({CALLER_IP_URL}: {exc})",
                    hint="set [devbox] ssh-cidrs = [\"203.0.113.7/32\"] in mlenv.toml, or MLENV_CALLER_IP",
                ) from None
        network = ipaddress.ip_network(_cidr(address, "the caller's IP address"), strict=False)
        return [str(ipaddress.ip_network(f"{network.network_address}/{network.max_prefixlen}"))]

    def _ami(self, target: Target, arch: str) -> tuple[str, str]:
        """(AMI id, where it came from): [devbox] ami, else the SSM parameter for the target."""
        explicit = self.devbox.ami
        if explicit:
            if not _AMI_ID.fullmatch(explicit):
                raise UsageError(f"[devbox] ami {explicit!r} is not an AMI id", hint="e.g. ami-0abcdef1234567890")
            return explicit, "[devbox] ami"
        parameter = self.devbox.ami_parameter or AMI_PARAMETERS[("cuda" if target.cuda else "cpu", arch)]
        if not _SSM_NAME.fullmatch(parameter):
            raise UsageError(f"[devbox] ami-parameter {parameter!r} is not an SSM parameter name",
                             hint="e.g. /aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/"
                                  "ebs-gp3/ami-id")
        try:
            value = self.call(f"reading SSM parameter {parameter}", "ssm", "get_parameter", Name=parameter)
        except AwsError as exc:
            if exc.code == "ParameterNotFound":
                raise UsageError(f"SSM parameter {parameter} does not exist in {self.region}",
                                 hint="set [devbox] ami-parameter or [devbox] ami in mlenv.toml") from None
            raise
        ami = value["Parameter"]["Value"]
        if not _AMI_ID.fullmatch(ami):
            raise UsageError(f"SSM parameter {parameter} holds {ami!r}, not an AMI id")
        return ami, f"SSM {parameter}"

    def _image(self, ami: str) -> AwsRecord:
        images = self.call(f"describing AMI {ami}", "ec2", "describe_images", ImageIds=[ami])["Images"]
        if not images:
            raise UsageError(f"AMI {ami} does not exist in {self.region}")
        return images[0]

    def plan_up(self, req: UpRequest, *, with_user_data: bool = True, progress: Progress = lambda _line: None) -> Plan:
        spec = self._require_spec()
        target = self._target(req)
        instance_type = req.instance_type or self.devbox.instance_type
        if instance_type:
            row = catalog.check_type_name(instance_type)
        else:
            row = catalog.cheapest(target)
            instance_type = row.name
        arch = row.arch if row else catalog.EC2_ARCH.get(target.platform, "x86_64")
        ami, ami_source = self._ami(target, arch)
        image = self._image(ami)
        if image.get("Architecture") and image["Architecture"] != arch:
            raise UsageError(f"AMI {ami} is for {image['Architecture']} but {instance_type} is {arch}",
                             hint="pick a matching [devbox] ami / ami-parameter or instance type")
        root_device = image.get("RootDeviceName") or "/dev/sda1"
        snapshot_gb = max((m.get("Ebs", {}).get("VolumeSize", 0) for m in image.get("BlockDeviceMappings", [])
                           if m.get("DeviceName") == root_device), default=0)
        disk_gb = max(req.disk_gb or self.devbox.disk_gb or DEFAULT_DISK_GB["cuda" if target.cuda else "cpu"],
                      snapshot_gb)
        user = self.devbox.user or _login_user(image)
        from mlenv import validate

        if not validate.POSIX_USER.fullmatch(user):
            raise UsageError(f"[devbox] user {user!r} is not a user name")
        lock = _read_lock(spec)
        locked = lock.target(target.name) if lock is not None else None
        lock_hash = locked.input_hash.split(":")[-1][:16] if locked is not None else "unlocked"
        tags = {
            TAG_BOX: req.name,
            TAG_OWNER: current_owner(),
            TAG_PROJECT: spec.name,
            TAG_LOCK: lock_hash,
            TAG_TARGET: target.name,
        }
        image_ref = None
        registry = spec.image.registry
        notes = []
        profile = self.devbox.instance_profile
        if registry:
            # the pinned reference exists once `up` has built/pushed it; the plan names where
            image_ref = f"{registry.rstrip('/')}/... (dev image of target {target.name}, built and pushed if missing)"
            from mlenv.image.registry import is_ecr, registry_host

            if is_ecr(registry_host(registry.rstrip("/") + "/x")) and not profile:
                notes.append("note: the box logs in to ECR through its instance role: set [devbox] instance-profile "
                             "to a profile allowed to pull (e.g. with the AmazonEC2ContainerRegistryReadOnly policy)")
        cidrs = self.caller_cidrs()
        if any(ipaddress.ip_network(c).prefixlen == 0 for c in cidrs):
            notes.append("warning: [devbox] ssh-cidrs opens SSH to the whole internet")
        plan = Plan(
            box=req.name, target=target.name, instance_type=instance_type, price=row.price if row else None,
            spot=bool(req.spot or self.devbox.spot), ami=ami, ami_source=ami_source,
            root_device=root_device, disk_gb=int(disk_gb), user=user, cidrs=cidrs, tags=tags,
            alarm_window_s=max(req.idle_s, req.idle_connected_s), image_ref=image_ref, instance_profile=profile,
            notes=notes,
        )
        if with_user_data:
            if registry:
                plan.image_ref = registry_image(spec, lock, target.name, req.build_options, progress)
            plan.user_data = self._user_data(req, plan, spec, lock, locked)
        return plan

    def _user_data(self, req: UpRequest, plan: Plan, spec: Spec, lock: Lock | None,
                   locked: LockedTarget | None) -> bytes:
        from mlenv.boxes import cloudinit

        data = cloudinit.UserData(
            box=req.name,
            project=spec.name,
            user=plan.user,
            watchdog=cloudinit.watchdog_source(),
            watchdog_args=req.watchdog_args(action="poweroff", poll_s=WATCHDOG_POLL_S),
            box_dir=BOX_DIR,
            keepalive_dir=KEEPALIVE_DIR,
            watchdog_path=WATCHDOG_PATH,
            authorized_keys=list(req.authorized_keys),
            image_ref=plan.image_ref,
            ecr_region=ecr_region(plan.image_ref),
            gpu=bool(spec.target(plan.target).cuda),
        )
        if plan.image_ref is None:
            if lock is None or locked is None:
                raise UsageError(f"mlenv.lock has no target {plan.target!r}", hint="run `mlenv lock`")
            pylock = spec.root / locked.pylock_path
            if not pylock.is_file():
                raise UsageError(f"{locked.pylock_path} is missing", hint="run `mlenv lock`")
            data.pylock_name, data.pylock = locked.pylock_path, pylock.read_bytes()
            data.python = lock.python_version
            data.groups = sorted({g for p in lock.packages_for(locked.name) for g in p.groups} - {"main"})
        return cloudinit.pack(cloudinit.render(data))

    def plan(self, req: UpRequest) -> builtins.list[str]:
        existing = self._instance(req.name)
        if existing is not None:
            box = self._box(existing)
            action = "start it" if box.state == "stopped" else "nothing to create"
            return [f"box {req.name} exists ({existing['InstanceId']}, {box.state}): `up` would {action}"]
        return self.plan_up(req, with_user_data=not self._require_spec().image.registry).lines()

    # --- creating -------------------------------------------------------------------------------

    def up(self, req: UpRequest, progress: Progress) -> Box:
        """Launch the box (or start it again), then, unless ``req.wait`` is False, wait for its host
        keys on the console and for its first-boot setup over SSH (``_wait_for_setup``)."""
        existing = self._instance(req.name)
        if existing is not None:
            progress(f"box {req.name} exists ({existing['InstanceId']}, {existing['State']['Name']})")
            inst = self._resume(existing, progress, wait=req.wait)
            if req.wait and _tags(inst).get(TAG_SETUP) != SETUP_READY:
                inst = self._wait_for_setup(self._wait_for_host_keys(inst, progress, just_made=False), progress)
            return self._box(inst)
        plan = self.plan_up(req, progress=progress)
        made: list[tuple[str, str]] = []  # (kind, id), undone in reverse on failure
        try:
            inst = self._create(req, plan, made, progress)
            if not req.wait:
                progress(f"{inst['InstanceId']} launched (--no-wait: its setup is not awaited)")
                return self._box(inst)
            inst = self._wait_for_host_keys(inst, progress, just_made=True)
        except BaseException as exc:
            if not (isinstance(exc, BoxSetupError) and exc.box_kept):
                progress("up failed: deleting what it created")
                self._undo(made)
            raise
        # from here the box is complete (tagged, alarm set, keys pinned): whatever happens, it is kept
        return self._box(self._wait_for_setup(inst, progress))

    def _tag_spec(self, kind: str, tags: dict[str, str], name: str) -> AwsRecord:
        return {"ResourceType": kind,
                "Tags": [{"Key": "Name", "Value": name}] + [{"Key": k, "Value": v} for k, v in tags.items()]}

    def _create(self, req: UpRequest, plan: Plan, made: builtins.list[tuple[str, str]],
                progress: Progress) -> AwsRecord:
        from mlenv.connect.keys import local_key

        name = self.resource_name(plan.tags[TAG_PROJECT], req.name)
        self._clear_leftovers(plan.tags[TAG_PROJECT], req.name)
        key = local_key()
        progress(f"importing key pair {name}")
        self.call("importing the key pair", "ec2", "import_key_pair", KeyName=name,
                         PublicKeyMaterial=key.public_line.encode(),
                         TagSpecifications=[self._tag_spec("key-pair", plan.tags, name)])
        made.append(("key-pair", name))
        progress(f"creating security group {name} (SSH from {', '.join(plan.cidrs)})")
        group = self.call("creating the security group", "ec2", "create_security_group", GroupName=name,
                          Description=f"mlenv dev box {req.name}: SSH from the owner's address only",
                          TagSpecifications=[self._tag_spec("security-group", plan.tags, name)])
        made.append(("security-group", group["GroupId"]))
        self.call("allowing SSH", "ec2", "authorize_security_group_ingress", GroupId=group["GroupId"],
                  IpPermissions=[_ssh_permission(plan.cidrs)])
        instance_tags = {**plan.tags, TAG_USER: plan.user, TAG_CREATED: str(int(time.time())),
                         TAG_SPOT: "true" if plan.spot else "false", TAG_DISK: str(plan.disk_gb),
                         TAG_MODE: "image" if plan.image_ref else "venv"}
        launch: dict[str, Any] = dict(  # noqa: C408 - boto3's parameter names, as keywords
            ImageId=plan.ami,
            InstanceType=plan.instance_type,
            MinCount=1,
            MaxCount=1,
            KeyName=name,
            SecurityGroupIds=[group["GroupId"]],
            UserData=plan.user_data,  # bytes: boto3 base64-encodes them as they are (gzip included)
            MetadataOptions={"HttpTokens": "required", "HttpEndpoint": "enabled",
                             # 2 hops: containers on the box (docker bridge) reach IMDS too
                             "HttpPutResponseHopLimit": 2},
            BlockDeviceMappings=[{"DeviceName": plan.root_device,
                                  "Ebs": {"VolumeSize": plan.disk_gb, "VolumeType": "gp3", "Encrypted": True,
                                          "DeleteOnTermination": True}}],
            InstanceInitiatedShutdownBehavior="stop",
            TagSpecifications=[self._tag_spec("instance", instance_tags, name),
                               self._tag_spec("volume", plan.tags, name)],
        )
        if plan.instance_profile:
            launch["IamInstanceProfile"] = {"Name": plan.instance_profile}
        if plan.spot:
            launch["InstanceMarketOptions"] = {
                "MarketType": "spot",
                "SpotOptions": {"SpotInstanceType": "persistent", "InstanceInterruptionBehavior": "stop"}}
        progress(f"launching {plan.instance_type} from {plan.ami}")
        instance = self.call("launching the instance", "ec2", "run_instances", **launch)["Instances"][0]
        instance_id = instance["InstanceId"]
        made.append(("instance", instance_id))
        if req.wait:
            self._wait(instance_id, "running", progress)
        self._put_alarm(name, instance_id, plan.alarm_window_s, plan.tags)
        made.append(("alarm", f"{name}-idle"))
        return self._describe(instance_id)

    def _put_alarm(self, name: str, instance_id: str, window_s: int, tags: dict[str, str]) -> None:
        periods = min(max(1, math.ceil(window_s / ALARM_PERIOD_S)), 86400 // ALARM_PERIOD_S)
        self.call("creating the idle alarm", "cloudwatch", "put_metric_alarm",
                  AlarmName=f"{name}-idle",
                  AlarmDescription=f"{ALARM_DESCRIPTION}: stop dev box {tags[TAG_BOX]} when its CPU stays idle "
                                   "(the on-box watchdog normally stops it first)",
                  Namespace="AWS/EC2", MetricName="CPUUtilization",
                  Dimensions=[{"Name": "InstanceId", "Value": instance_id}],
                  Statistic="Average", Period=ALARM_PERIOD_S, EvaluationPeriods=periods,
                  Threshold=ALARM_CPU_PERCENT, ComparisonOperator="LessThanThreshold",
                  TreatMissingData="notBreaching",
                  AlarmActions=[f"arn:aws:automate:{self.region}:ec2:stop"],
                  Tags=[{"Key": k, "Value": v} for k, v in tags.items()])

    def _describe(self, instance_id: str) -> AwsRecord:
        reservations = self.call("describing the instance", "ec2", "describe_instances",
                                 InstanceIds=[instance_id])["Reservations"]
        return reservations[0]["Instances"][0]

    def _wait(self, instance_id: str, state: str, progress: Progress, timeout: float = 900) -> AwsRecord:
        """Poll until the instance is in ``state`` (short first delays: a start often takes seconds)."""
        progress(f"waiting for {instance_id} to be {state}")
        deadline, delay = time.monotonic() + timeout, 0.5
        while True:
            inst = self._describe(instance_id)
            current = inst["State"]["Name"]
            if current == state:
                progress(f"{instance_id} is {state}")
                return inst
            if (current == "terminated" and state != "terminated") or time.monotonic() >= deadline:
                reason = inst.get("StateReason", {}).get("Message", "")
                raise MlenvError(f"{instance_id} is {current}, not {state}" + (f": {reason}" if reason else ""),
                                 hint="the EC2 console shows the instance's state reason")
            time.sleep(delay)
            delay = min(delay * 2, 5)

    def _console(self, instance_id: str) -> str:
        """The instance's console output: the live one (Nitro), else what EC2 posted at the last state
        change (older types have no live console)."""
        while True:
            try:
                output = self.call("reading the console", "ec2", "get_console_output", InstanceId=instance_id,
                                   Latest=self._live_console).get("Output") or ""
            except AwsError as exc:
                if not self._live_console or exc.code not in ("UnsupportedOperation", "InvalidParameterCombination"):
                    raise
                self._live_console = False
                continue
            return _console_text(output)

    def _read_host_keys(self, inst: AwsRecord, progress: Progress,
                        timeout: float) -> tuple[builtins.list[str], str]:
        """(host keys, console) once the first-boot script printed its keys on the console, its setup
        failed, or ``timeout`` passed.  Keys found are kept in a tag (the ed25519 one), so another
        machine of the owner can pin them too."""
        from mlenv.boxes import cloudinit

        instance_id = inst["InstanceId"]
        deadline, delay = time.monotonic() + timeout, 1.0
        if timeout > 0:
            progress(f"waiting for the host keys on {instance_id}'s console")
        while True:
            console = self._console(instance_id)
            keys = cloudinit.parse_host_keys(console)
            if keys:
                ed25519 = next((k for k in keys if k.startswith("ssh-ed25519 ")), keys[0])
                self.call("tagging the host key", "ec2", "create_tags", Resources=[instance_id],
                          Tags=[{"Key": TAG_HOST_KEY, "Value": ed25519}])
                progress("host keys read from the console")
                return keys, console
            if cloudinit.setup_state(console) == "failed" or time.monotonic() >= deadline:
                return [], console
            # soon at first (a small AMI prints its keys within seconds), then every 5 s as EC2 suggests
            time.sleep(delay)
            delay = min(delay * 1.5, 5.0)

    def _look_for_host_keys(self, inst: AwsRecord) -> AwsRecord:
        """A running box whose keys are not known yet (launched with ``--no-wait``, or booted since):
        one look at the console, no wait."""
        if inst["State"]["Name"] != "running" or TAG_HOST_KEY in _tags(inst):
            return inst
        keys, _console = self._read_host_keys(inst, _quiet, timeout=0)
        return self._describe(inst["InstanceId"]) if keys else inst

    def _wait_for_host_keys(self, inst: AwsRecord, progress: Progress, *, just_made: bool) -> AwsRecord:
        """The instance once its host keys are read from the console (MLENV_BOOT_TIMEOUT).  A setup
        that failed before printing them deletes a box this ``up`` just made (``just_made``); not
        seeing them in time keeps the box, as its boot may just be slow."""
        from mlenv.boxes import cloudinit

        if TAG_HOST_KEY in _tags(inst):
            return inst
        name = _tags(inst).get(TAG_BOX, "?")
        timeout = _seconds_from_env("MLENV_BOOT_TIMEOUT", BOOT_TIMEOUT_S)
        keys, console = self._read_host_keys(inst, progress, timeout)
        if keys:
            return self._describe(inst["InstanceId"])
        if cloudinit.setup_state(console) == "failed":
            raise BoxSetupError(
                f"the first-boot setup of box {name} failed before it printed its host keys; the end of its "
                f"console:{_indented(cloudinit.last_lines(console))}",
                hint=(f"the box was deleted; fix what the console shows, then `mlenv up {name}` again" if just_made
                      else f"`mlenv down {name} --yes` deletes the box"),
                box_kept=not just_made)
        raise BoxSetupError(
            f"box {name} printed no host keys on its console within {timeout:.0f}s (MLENV_BOOT_TIMEOUT); "
            f"the box is kept (tagged, its idle alarm set){_indented(cloudinit.last_lines(console, 5))}",
            hint=f"`mlenv up {name}` waits again; `mlenv down {name} --yes` deletes it", box_kept=True)

    def _wait_for_setup(self, inst: AwsRecord, progress: Progress) -> AwsRecord:
        """Log in over SSH with the host keys from the console, follow the first-boot log to its READY
        marker (printing the script's progress) and tag the instance ready (MLENV_SETUP_TIMEOUT).  The
        box is complete by now: a setup failure, a timeout or Ctrl-C keeps it."""
        from mlenv import connect
        from mlenv.execute import SSHExecutor

        box = self._box(inst)
        deadline = time.monotonic() + _seconds_from_env("MLENV_SETUP_TIMEOUT", SETUP_TIMEOUT_S)
        # the console is a trusted channel: its keys are pinned (and the ssh entry written) before
        # the first connection, so `mlenv ssh NAME` works on a box kept after a failure too
        connect.register(box, warn=progress)
        ssh = SSHExecutor(box)
        try:
            self._wait_for_login(ssh, box, deadline, progress)
            self._follow_setup_log(ssh, box, deadline, progress)
        except KeyboardInterrupt:
            raise Interrupted(f"interrupted while waiting for the setup of box {box.name}; the box is kept",
                              hint=f"`mlenv up {box.name}` waits again; `mlenv down {box.name} --yes` deletes it"
                              ) from None
        finally:
            ssh.close()
        self.call("tagging the box set up", "ec2", "create_tags", Resources=[inst["InstanceId"]],
                  Tags=[{"Key": TAG_SETUP, "Value": SETUP_READY}])
        progress(f"box {box.name} is ready")
        return self._describe(inst["InstanceId"])

    def _wait_for_login(self, ssh: SSHExecutor, box: Box, deadline: float, progress: Progress) -> None:
        """Until a real login with the pinned keys works (sshd answers before the first boot is over)."""
        from mlenv import connect

        progress(f"waiting for SSH on {box.ssh_host}")
        while True:
            try:
                connect.wait_for_ssh(box, timeout=max(1.0, deadline - time.monotonic()))
                ssh.run(["true"], timeout=60).check(f"logging in to box {box.name}")
                progress(f"SSH ready on {box.ssh_host}")
                return
            except connect.HostKeyChanged:
                raise  # never retried: someone else may be answering
            except MlenvError as exc:
                if time.monotonic() >= deadline:
                    raise BoxSetupError(
                        f"box {box.name} did not let mlenv log in over SSH within MLENV_SETUP_TIMEOUT "
                        f"({exc.message}); the box is kept",
                        hint=f"`mlenv up {box.name}` tries again; `mlenv down {box.name} --yes` deletes it",
                        box_kept=True) from None
                time.sleep(3)

    def _follow_setup_log(self, ssh: SSHExecutor, box: Box, deadline: float, progress: Progress) -> None:
        """Print the first-boot script's progress lines from its log on the box until its READY marker;
        its FAILED marker or the deadline is a ``BoxSetupError`` quoting the log's last lines."""
        from mlenv import connect
        from mlenv.boxes import cloudinit

        log, read = "", 0  # the log so far, and its length in bytes (whole lines only)
        source = cloudinit.SETUP_LOG
        delay = 1.0
        while True:
            try:
                result = ssh.run(["tail", "-c", f"+{read + 1}", cloudinit.SETUP_LOG], timeout=60)
            except connect.HostKeyChanged:
                raise
            except ToolMissingError:  # the connection dropped: the next poll opens another
                result = None
            if result is not None and result.returncode == 0:
                # a line being written is read again once it is whole
                whole = result.stdout[: result.stdout.rfind(b"\n") + 1]
                read += len(whole)
                new = whole.decode("utf-8", "replace")
                log += new
                for line in cloudinit.said(new):
                    progress(line)
            elif result is not None:  # no log: a box made by an older mlenv; its console has the markers
                log, source = self._console(box.extra["instance_id"]), "its console"
            state = cloudinit.setup_state(log)
            if state == "ready":
                return
            if state == "failed" or time.monotonic() >= deadline:
                what = "failed" if state == "failed" else "did not finish within MLENV_SETUP_TIMEOUT"
                # the host keys block is no news by now: the lines after it, when there are any
                since_keys = cloudinit.last_lines(log.rpartition(cloudinit.KEYS_END)[2])
                raise BoxSetupError(
                    f"the first-boot setup of box {box.name} {what}; the box is kept. The end of "
                    f"{source}:{_indented(since_keys or cloudinit.last_lines(log))}",
                    hint=(f"`mlenv ssh {box.name}` to look, `mlenv down {box.name} --yes` to delete it"
                          + ("" if state == "failed" else f", `mlenv up {box.name}` to wait again")),
                    box_kept=True)
            time.sleep(delay)
            delay = min(delay * 1.5, 5.0)

    def _resume(self, inst: AwsRecord, progress: Progress, *, wait: bool = True) -> AwsRecord:
        """The box started again when it is stopped (and running, unless ``wait`` is False)."""
        state = inst["State"]["Name"]
        instance_id = inst["InstanceId"]
        if state == "stopping":
            self._wait(instance_id, "stopped", progress)
            state = "stopped"
        if state == "stopped":
            progress(f"starting {instance_id}")
            self.call("starting the instance", "ec2", "start_instances", InstanceIds=[instance_id])
        if wait and state in ("stopped", "pending"):
            self._wait(instance_id, "running", progress)
        return self._describe(instance_id)

    # --- stop / start / down --------------------------------------------------------------------

    def _need(self, name: str) -> AwsRecord:
        inst = self._instance(validate_box_name(name))
        if inst is None:
            raise UsageError(f"no aws box named {name!r}", hint="`mlenv ls` lists the boxes")
        return inst

    def stop(self, name: str) -> None:
        inst = self._need(name)
        if inst["State"]["Name"] in ("stopped", "stopping"):
            return
        self.call("stopping the instance", "ec2", "stop_instances", InstanceIds=[inst["InstanceId"]])
        self._wait(inst["InstanceId"], "stopped", _quiet)

    def start(self, name: str, progress: Progress) -> Box:
        return self._box(self._look_for_host_keys(self._resume(self._need(name), progress)))

    def down(self, name: str) -> None:
        validate_box_name(name)
        inst = self._instance(name)
        project = _tags(inst).get(TAG_PROJECT) if inst else self._project()
        leftovers = [orphan for _project, orphan in self._resources(project, name)]
        if inst is None and not leftovers:
            raise UsageError(f"no aws box named {name!r}", hint="`mlenv ls` lists the boxes")
        if inst is not None:
            self.call("terminating the instance", "ec2", "terminate_instances", InstanceIds=[inst["InstanceId"]])
            self._wait(inst["InstanceId"], "terminated", _quiet)
            # the root volume goes with the instance (DeleteOnTermination); anything detached stays listed
            leftovers = [orphan for _project, orphan in self._resources(project, name)]
        self.delete_orphans(leftovers)

    # --- keys ---------------------------------------------------------------------------------------

    def revoke_key(self, key_name: str, public_lines: builtins.list[str]) -> builtins.list[str]:
        """Delete every mlenv key pair holding one of ``public_lines`` (``mlenv keys revoke``).

        A box's key pair is what EC2 installs at launch; once the key is revoked it must not come
        back with a box relaunched from it.  Running boxes are not affected (their authorized_keys
        are cleaned over SSH by the caller).  Returns what was deleted, for the user.
        """
        revoked = {" ".join(line.split()[:2]) for line in public_lines if len(line.split()) >= 2}
        deleted = []
        for pair in self._tagged("describe_key_pairs", "KeyPairs", None, None, IncludePublicKey=True):
            if " ".join(pair.get("PublicKey", "").split()[:2]) in revoked:
                self.call("deleting the key pair", "ec2", "delete_key_pair", KeyName=pair["KeyName"])
                deleted.append(f"aws key pair {pair['KeyName']} ({key_name})")
        return deleted

    # --- leftovers and orphans ------------------------------------------------------------------

    def _tagged(self, operation: str, key: str, project: str | None, box: str | None,
                **extra: Any) -> builtins.list[AwsRecord]:
        filters: builtins.list[AwsRecord] = [{"Name": "tag-key", "Values": [TAG_BOX]}]
        if project:
            filters.append({"Name": f"tag:{TAG_PROJECT}", "Values": [project]})
        if box:
            filters.append({"Name": f"tag:{TAG_BOX}", "Values": [box]})
        return self.call(f"listing {key}", "ec2", operation, Filters=filters + extra.pop("filters", []), **extra)[key]

    def _resources(self, project: str | None, box: str | None) -> builtins.list[tuple[str | None, Orphan]]:
        """Every tagged key pair, security group, detached volume and mlenv alarm (of one box), each
        with the project it belongs to."""
        found: builtins.list[tuple[str | None, Orphan]] = []
        for pair in self._tagged("describe_key_pairs", "KeyPairs", project, box):
            tags = _tags(pair)
            found.append((tags.get(TAG_PROJECT), Orphan(self.name, "key-pair", pair["KeyName"], tags.get(TAG_BOX),
                                                        detail=pair.get("KeyPairId", ""), price_per_hour=0.0)))
        for group in self._tagged("describe_security_groups", "SecurityGroups", project, box):
            tags = _tags(group)
            found.append((tags.get(TAG_PROJECT), Orphan(self.name, "security-group", group["GroupId"],
                                                        tags.get(TAG_BOX), detail=group["GroupName"],
                                                        price_per_hour=0.0)))
        for volume in self._tagged("describe_volumes", "Volumes", project, box,
                                   filters=[{"Name": "status", "Values": ["available"]}]):
            tags = _tags(volume)
            found.append((tags.get(TAG_PROJECT), Orphan(
                self.name, "volume", volume["VolumeId"], tags.get(TAG_BOX),
                detail=f"{volume['Size']} GB {volume.get('VolumeType', '')}".strip(),
                price_per_hour=round(volume["Size"] * catalog.gp3_per_gb_hour(), 5))))
        prefix = "mlenv-" + (f"{project}-" if project else "") + (f"{box}-idle" if project and box else "")
        alarms = self.call("listing alarms", "cloudwatch", "describe_alarms", AlarmNamePrefix=prefix)["MetricAlarms"]
        for alarm in alarms:
            if not alarm.get("AlarmDescription", "").startswith(ALARM_DESCRIPTION):
                continue
            # the name prefix also matches other projects' alarms (mlenv-demo- is a prefix of
            # mlenv-demo-2-gpu-idle): the alarm's tags say whose it is
            tags = _tags(self.call("reading the alarm's tags", "cloudwatch", "list_tags_for_resource",
                                   ResourceARN=alarm["AlarmArn"]))
            if (project and tags.get(TAG_PROJECT) != project) or (box and tags.get(TAG_BOX) != box):
                continue
            instance = next((d["Value"] for d in alarm.get("Dimensions", []) if d["Name"] == "InstanceId"), "")
            found.append((tags.get(TAG_PROJECT), Orphan(self.name, "alarm", alarm["AlarmName"], tags.get(TAG_BOX),
                                                        detail=f"instance {instance}",
                                                        price_per_hour=round(catalog.alarm_per_hour(), 5))))
        return found

    def _clear_leftovers(self, project: str, box: str) -> None:
        """Before creating a box, delete what an earlier, killed ``up`` of the same box left behind."""
        leftovers = [orphan for _project, orphan in self._resources(project, box)]
        if leftovers:
            self.delete_orphans(leftovers)

    def orphans(self) -> builtins.list[Orphan]:
        """Tagged resources of no live box: detached volumes, alarms of gone instances, key pairs and
        security groups whose box has no live instance."""
        instances = self._instances()
        live_ids = {inst["InstanceId"] for inst in instances}
        live_boxes = {(_tags(inst).get(TAG_PROJECT), _tags(inst).get(TAG_BOX)) for inst in instances}
        orphans = []
        for project, resource in self._resources(self._project(), None):
            if resource.kind == "alarm":
                gone = resource.detail.removeprefix("instance ") not in live_ids
            elif resource.kind == "volume":
                gone = True  # attached volumes are "in-use"; an available one belongs to no instance
            else:
                gone = (project, resource.box) not in live_boxes
            if gone:
                orphans.append(resource)
        return orphans

    def delete_orphans(self, orphans: builtins.list[Orphan]) -> None:
        order = {"alarm": 0, "volume": 1, "key-pair": 2, "security-group": 3}
        for orphan in sorted(orphans, key=lambda o: order.get(o.kind, 9)):
            if orphan.kind == "alarm":
                self.call("deleting the alarm", "cloudwatch", "delete_alarms", AlarmNames=[orphan.id])
            elif orphan.kind == "volume":
                self.call("deleting the volume", "ec2", "delete_volume", VolumeId=orphan.id)
            elif orphan.kind == "key-pair":
                self.call("deleting the key pair", "ec2", "delete_key_pair", KeyName=orphan.id)
            elif orphan.kind == "security-group":
                self._delete_group(orphan.id)

    def _delete_group(self, group_id: str) -> None:
        # a just-terminated instance holds its group for a little while
        for attempt in range(12):
            try:
                self.call("deleting the security group", "ec2", "delete_security_group", GroupId=group_id)
                return
            except AwsError as exc:
                if exc.code == "InvalidGroup.NotFound":
                    return
                if exc.code != "DependencyViolation" or attempt == 11:
                    raise
                time.sleep(5)

    def _undo(self, made: builtins.list[tuple[str, str]]) -> None:
        """Best-effort rollback of a failed ``up``; whatever survives is tagged and shown by ``gc``."""
        for kind, resource in reversed(made):
            try:
                if kind == "instance":
                    self.call("terminating the instance", "ec2", "terminate_instances", InstanceIds=[resource])
                    self._wait(resource, "terminated", _quiet)
                elif kind == "alarm":
                    self.call("deleting the alarm", "cloudwatch", "delete_alarms", AlarmNames=[resource])
                elif kind == "security-group":
                    self._delete_group(resource)
                elif kind == "key-pair":
                    self.call("deleting the key pair", "ec2", "delete_key_pair", KeyName=resource)
            except MlenvError:
                continue

    def executor(self, box: Box) -> Executor:
        """Commands in the box's environment: inside the image's container (the keep-alive folder is
        mounted there), or on the instance with the synced venv first on PATH."""
        from mlenv.boxes.ssh import VenvExecutor
        from mlenv.execute import SSHExecutor

        ssh = SSHExecutor(box)
        if box.extra.get("mode") == "image":
            from mlenv.boxes.docker import container_name

            return ContainerOverSSH(ssh, container_name(box.name), where=f"box {box.name}")
        return VenvExecutor(ssh, BOX_VENV, KEEPALIVE_DIR, where=f"box {box.name}")

    def watchdog_log(self, name: str) -> str:
        """The watchdog's decisions (JSON lines) from the instance, where the watchdog runs (an image
        box's container does not see them); empty before its first decision."""
        import shlex

        from mlenv.execute import SSHExecutor

        box = self._box(self._need(name))
        if box.state != "running":
            raise UsageError(f"box {name} is {box.state}: its watchdog log is on its disk",
                             hint=f"`mlenv start {name}`, then `mlenv logs {name}`")
        ssh = SSHExecutor(box)
        try:
            log = shlex.quote(WATCHDOG_LOG)
            return ssh.run(["sh", "-c", f"test ! -e {log} || cat {log}"], timeout=60).check(
                f"reading the watchdog log of box {name}").text
        finally:
            ssh.close()

    def ssh_command(self, box: Box, command: Sequence[str]) -> tuple[builtins.list[str], bool]:
        """(remote command, needs a terminal) for `mlenv ssh NAME [-- CMD]`: where the box's environment
        is.  A venv box runs ``command`` (a shell when empty) as any box does; an image box enters its
        container, in /workspace: ``command``'s words joined as ssh joins them, for the container's
        bash, or an interactive bash.  Plain `ssh mlenv-NAME` still reaches the instance itself."""
        import shlex

        if box.extra.get("mode") != "image":
            return builtins.list(command), False
        from mlenv.boxes.docker import container_name

        enter = ["docker", "exec", "-i", "-w", IMAGE_WORKSPACE]
        if command:
            return [shlex.join([*enter, container_name(box.name), "bash", "-c", " ".join(command)])], False
        # a terminal when ssh got one (`ssh -t` without a local terminal gets none; docker exec -t would
        # then fail).  Not a login shell: Debian's /etc/profile resets PATH, dropping the image's venv
        return [shlex.join(enter) + ' $(test -t 0 && echo -t) ' + shlex.join([container_name(box.name), "bash"])], True


# where the first-boot script mounts the box's workspace in an image box's container
IMAGE_WORKSPACE = "/workspace"


class ContainerOverSSH:
    """``docker exec`` into the box's container, over SSH (the login user is in the docker group)."""

    keepalive_dir = KEEPALIVE_DIR

    def __init__(self, inner: Executor, container: str, *, where: str) -> None:
        self.inner, self.container, self.where = inner, container, where

    def run(self, argv: Sequence[str], *, input: bytes | None = None, env: Mapping[str, str] | None = None,
            timeout: float | None = None) -> Completed:
        options = [f"--env={key}={value}" for key, value in (env or {}).items()]
        return self.inner.run(["docker", "exec", "-i", *options, self.container, *argv], input=input,
                              timeout=timeout)


class AwsError(MlenvError):
    """An AWS API refused a call; ``code`` is its error code (``DependencyViolation``, ...)."""

    exit_code = ExitCode.UNAVAILABLE

    def __init__(self, message: str, *, code: str = "", hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.code = code


# --- helpers --------------------------------------------------------------------------------------


def _quiet(_line: str) -> None:
    pass


def _tags(resource: AwsRecord | None) -> dict[str, str]:
    return {tag["Key"]: tag["Value"] for tag in (resource or {}).get("Tags", [])}


def _seconds_from_env(name: str, default: float) -> float:
    """A time limit in seconds from the environment (MLENV_BOOT_TIMEOUT, ...), else ``default``."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds >= 0):
        raise UsageError(f"{name}={text!r} is not a number of seconds", hint=f"e.g. {name}={default:.0f}")
    return seconds


def _indented(lines: list[str]) -> str:
    """Quoted output lines for a message, one per line."""
    return "".join(f"\n    {line}" for line in lines)


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _cidr(value: Any, what: str) -> str:
    try:
        return str(ipaddress.ip_network(str(value).strip(), strict=False))
    except ValueError:
        raise UsageError(f"{what}: {value!r} is not an IP address or CIDR block",
                         hint='e.g. "203.0.113.7/32"') from None


def _ssh_permission(cidrs: list[str]) -> AwsRecord:
    v4 = [{"CidrIp": c, "Description": "mlenv: SSH from the box owner"} for c in cidrs if ":" not in c]
    v6 = [{"CidrIpv6": c, "Description": "mlenv: SSH from the box owner"} for c in cidrs if ":" in c]
    permission: dict[str, Any] = {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22}
    if v4:
        permission["IpRanges"] = v4
    if v6:
        permission["Ipv6Ranges"] = v6
    return permission


def _login_user(image: AwsRecord) -> str:
    """The AMI's default login user, from its name (Ubuntu and the DLAMI: ubuntu; Amazon Linux: ec2-user)."""
    text = f"{image.get('Name', '')} {image.get('Description', '')}".lower()
    if "ubuntu" in text:
        return "ubuntu"
    if "debian" in text:
        return "admin"
    if any(word in text for word in ("amzn", "amazon linux", "al2023")):
        return "ec2-user"
    return "ubuntu"


def ecr_region(image_ref: str | None) -> str | None:
    """The region of the ECR registry holding ``image_ref`` (the box logs in there through its
    instance role); None for any other registry."""
    from mlenv.image.registry import is_ecr, registry_host, split_ref

    host = registry_host(split_ref(image_ref)[0]) if image_ref else None
    return host.split(".")[3] if host is not None and is_ecr(host) else None


def _console_text(output: str) -> str:
    """The console output as text.  EC2 sends it base64-encoded and botocore decodes it already
    (``botocore.handlers.decode_console_output``); an Output still encoded (a client or proxy without
    that handler) is decoded here.  Decoded text has spaces and newlines, so it never passes for base64."""
    import base64
    import binascii

    try:
        return base64.b64decode(output, validate=True).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        return output


def _read_lock(spec: Spec) -> Lock | None:
    from mlenv.lock.model import lock_path, read_lock

    return read_lock(spec.root) if lock_path(spec.root).is_file() else None


def registry_image(spec: Spec, lock: Lock | None, target_name: str, build: Mapping[str, Any],
                   progress: Progress) -> str:
    """The target's dev image in [image] registry, pinned by digest: built and pushed first when
    the registry does not have it yet (``mlenv build --stage dev --push`` with the same build
    options gives the same content tag)."""
    from mlenv.image.build import build_target
    from mlenv.image.registry import registry_digest

    if lock is None:
        raise UsageError("mlenv.lock is missing", hint="run `mlenv lock`")
    progress(f"making sure {spec.image.registry} has the dev image of target {target_name}")
    outcome = build_target(spec, lock, target_name, stage="dev", push_image=True, **build)
    digest = outcome.pushed_digest or registry_digest(outcome.tag)
    if not digest:
        raise ToolMissingError(f"{outcome.tag} is not readable from its registry",
                               hint="check the registry and your login (ECR: AWS credentials)")
    return f"{outcome.tag}@{digest}"
