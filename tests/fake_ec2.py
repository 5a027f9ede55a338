"""EC2 instances that boot: moto for the API, a container of a "fake AMI" for each instance.

moto answers every AWS call mlenv makes, but its instances never boot: no first-boot script runs,
the console is a fixed recording, the public IP leads nowhere.  ``FakeEC2`` is a small HTTP proxy in
front of the moto server (``AWS_ENDPOINT_URL`` points at it, as it would at a VPC endpoint) that
forwards every request unchanged (all services; moto checks no signatures) and adds the part that
cannot exist here, from real pieces:

- ``RunInstances``: for each instance moto launched, a container of the fake AMI (Debian + OpenSSH +
  sudo) in this machine's network namespace, prepared as cloud-init prepares a real AMI before user
  scripts (the AMI's login user, the launch key pair's public key in its authorized_keys, passwordless
  sudo, host keys generated, sshd running on a loopback address of the box's own, ``127.0.0.N:22``);
  then the request's real user-data runs there as root with bash, in the background, its live
  stdout+stderr collected as the instance's console.
- ``GetConsoleOutput``: that console so far (base64, the last 64 KB, as EC2 returns it).
- every EC2 answer: the booted instance's public IP is its ``127.0.0.N``.
- ``TerminateInstances``: the container goes with the instance.
- ``StopInstances`` / ``StartInstances``: only forwarded; the container keeps running (a stopped
  fake instance is only stopped in moto's records).
Security groups are not enforced (the box's sshd is reached from loopback, not the caller's IP).

The moto server itself and the environment of a user pointed at it (``moto_server``, ``aws``) are here
too, for tests/test_boxes_aws.py (plain moto, instances that never boot) and
tests/test_boxes_aws_boot.py (the fake EC2); conftest.py registers this module's fixtures.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import http.server
import io
import os
import random
import re
import shutil
import socket
import subprocess
import tarfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require
from tests.docker_services import _free_port

CALLER_IP = "198.51.100.23"  # MLENV_CALLER_IP: this machine's public address cannot be learned here
# moto serves Amazon Linux's public parameters only; real users get Ubuntu / the DLAMI by default
AMI_PARAMETER = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
LABEL = "mlenv.test.fake-ec2"  # on every container a FakeEC2 starts: its proxy's id, "PID-..."
FAKE_AMI_REPOSITORY = "localhost/mlenv-test-fake-ami"
CONSOLE_LIMIT = 64 * 1024  # GetConsoleOutput returns the most recent 64 KB
USER_DATA_PATH = "/var/lib/cloud/instance/scripts/part-001"  # where cloud-init keeps a shell user-data
# The fake AMI: what a cloud image has before cloud-init runs (sshd and sudo installed, no keys yet).
# The RUN line is the one the rooted machine of test_boxes_ssh.py starts with: BuildKit shares the layer.
FAKE_AMI_DOCKERFILE = """\
FROM {base}
RUN apt-get update -qq \\
    && apt-get install -y -qq --no-install-recommends openssh-server sudo >/dev/null \\
    && rm -rf /var/lib/apt/lists/*
"""
# cloud-init's work on a real AMI before the user's script (users-groups, ssh, keys-to-console): the
# default user with the key pair's key and passwordless sudo, host keys, sshd.  The password is "*"
# (no password, not "locked"): sshd runs without PAM in a container and refuses locked accounts.
CLOUD_INIT = r"""
set -eu
id -u "$LOGIN_USER" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash --password '*' "$LOGIN_USER"
home=$(getent passwd "$LOGIN_USER" | cut -d: -f6)
install -d -m 700 -o "$LOGIN_USER" -g "$LOGIN_USER" "$home/.ssh"
printf '%s\n' "$PUBLIC_KEY" > "$home/.ssh/authorized_keys"
chown "$LOGIN_USER:" "$home/.ssh/authorized_keys"
chmod 600 "$home/.ssh/authorized_keys"
printf '%s ALL=(ALL) NOPASSWD:ALL\n' "$LOGIN_USER" > /etc/sudoers.d/90-cloud-init-users
chmod 440 /etc/sudoers.d/90-cloud-init-users
ssh-keygen -A >/dev/null
# the Deep Learning AMI's docker: its socket (here this machine's engine's) belongs to group docker
if [ -S /var/run/docker.sock ] && ! getent group docker >/dev/null; then
    groupadd --system --non-unique --gid "$(stat -c %g /var/run/docker.sock)" docker
fi
install -d -m 755 /run/sshd "$(dirname "$USER_DATA")"
/usr/sbin/sshd -o ListenAddress="$LISTEN" -o UsePAM=no
"""
# the default login user of the AMI families a test may launch (as their images come)
AMI_USERS = (("ubuntu", "ubuntu"), ("debian", "admin"), ("al2023", "ec2-user"), ("amzn", "ec2-user"),
             ("amazon linux", "ec2-user"))


def first_boot_mounts() -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """(volumes, environment) a first-boot script needs from this machine, as on the Deep Learning AMI:
    Debian's docker CLI and the engine's socket (image-mode boxes pull and run their container there),
    and this machine's CA bundle, which trusts the TLS-intercepting proxy HTTPS leaves through (the
    test host's, not the script's: pip and uv read it from SSL_CERT_FILE / PIP_CERT)."""
    from tests.docker_services import BUILD_DOCKER, DOCKER_SOCKET

    require(os.path.exists(BUILD_DOCKER), f"{BUILD_DOCKER} (Debian's docker.io client)")
    volumes = {BUILD_DOCKER: {"bind": "/usr/bin/docker", "mode": "ro"},
               str(DOCKER_SOCKET): {"bind": "/var/run/docker.sock", "mode": "rw"}}
    environment: dict[str, str] = {}
    ca = Path("/etc/ssl/certs/ca-certificates.crt")
    if ca.is_file():
        volumes[str(ca)] = {"bind": "/etc/ssl/host-ca.crt", "mode": "ro"}
        environment = {"SSL_CERT_FILE": "/etc/ssl/host-ca.crt", "PIP_CERT": "/etc/ssl/host-ca.crt"}
    return volumes, environment


def fake_ami_image(docker_client, base_image: str, build_cli: str) -> str:
    """The fake AMI's tag, built once: named by a hash of its Dockerfile and base image, so it is
    reused across runs (a ~20 MB layer over the base image) and rebuilt only when either changes."""
    dockerfile = FAKE_AMI_DOCKERFILE.format(base=base_image)
    digest = hashlib.sha256((dockerfile + docker_client.images.get(base_image).id).encode()).hexdigest()[:16]
    tag = f"{FAKE_AMI_REPOSITORY}:{digest}"
    if not docker_client.images.list(name=tag):
        build = subprocess.run([build_cli, "build", "--quiet", "--network", "host", "-t", tag, "-"],
                               input=dockerfile, capture_output=True, text=True,
                               env={**os.environ, "DOCKER_BUILDKIT": "1"}, timeout=600)
        require(build.returncode == 0 or "deb.debian.org" not in build.stderr, "the Debian mirror (sshd and sudo)")
        assert build.returncode == 0, build.stderr
        _remove_stale_images(docker_client, keep=tag)
    return tag


def _remove_stale_images(docker_client, keep: str) -> None:
    """Fake AMIs of an older Dockerfile or base image: the engine's data root outlives the run."""
    import docker

    for image in docker_client.images.list(name=FAKE_AMI_REPOSITORY):
        for tag in image.tags:
            if tag != keep:
                try:
                    docker_client.images.remove(tag)
                except docker.errors.APIError:  # a container of another session still runs from it
                    pass


def _remove_orphaned_containers(docker_client) -> None:
    """Containers of fake instances whose test process is gone (killed by a timeout or Ctrl-C before its
    teardown); those of other live sessions on this machine stay."""
    for container in docker_client.containers.list(all=True, filters={"label": LABEL}):
        pid = int(container.labels[LABEL].split("-")[0])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            container.remove(force=True)


@dataclass
class Instance:
    """One booted instance: its container, loopback address and console."""

    instance_id: str
    address: str  # 127.0.0.N: its "public IP", where its sshd listens
    moto_ip: str  # the public IP moto made up, replaced by ``address`` in every answer
    console: bytearray = field(default_factory=bytearray)
    container: Any = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def say(self, data: bytes) -> None:
        with self.lock:
            self.console += data

    def console_text(self) -> bytes:
        with self.lock:
            return bytes(self.console[-CONSOLE_LIMIT:])


class FakeEC2:
    """The proxy: ``url`` is what AWS_ENDPOINT_URL gets.  ``instances`` are the booted ones."""

    def __init__(self, moto_url: str, docker_client, image: str) -> None:
        self.moto = urllib.parse.urlsplit(moto_url)
        self.docker, self.image = docker_client, image
        self.id = f"{os.getpid()}-{id(self):x}"
        self.instances: dict[str, Instance] = {}
        self._lock = threading.Lock()
        self.volumes, self.environment = first_boot_mounts()
        _remove_orphaned_containers(docker_client)
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_request(self) -> None:
                proxy.handle(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_request

            def log_message(self, *args: object) -> None:  # quiet: pytest shows failures, not traffic
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, name="fake-ec2", daemon=True).start()

    # --- the HTTP side ------------------------------------------------------------------------------

    def forward(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, list, bytes]:
        connection = http.client.HTTPConnection(self.moto.hostname, self.moto.port, timeout=120)
        try:
            connection.request(method, path, body=body, headers={**headers, "Host": self.moto.netloc})
            response = connection.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            connection.close()

    def handle(self, request: http.server.BaseHTTPRequestHandler) -> None:
        body = request.rfile.read(int(request.headers.get("Content-Length") or 0))
        headers = {key: value for key, value in request.headers.items()
                   if key.lower() not in ("host", "connection", "content-length", "accept-encoding")}
        form = _ec2_form(request.headers, body)
        action = form.get("Action", "")
        status, answer_headers, answer = self.forward(request.command, request.path, headers, body)
        if form and status == 200:
            if action == "RunInstances":
                self.launch(form, answer, _region(request.headers))
            elif action == "TerminateInstances":
                self.terminate([value for key, value in form.items() if key.startswith("InstanceId.")])
            elif action == "GetConsoleOutput" and form.get("InstanceId") in self.instances:
                answer = self.console_answer(self.instances[form["InstanceId"]], answer)
            answer = self.with_loopback_ips(answer)
        request.send_response(status)
        for key, value in answer_headers:
            if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                request.send_header(key, value)
        request.send_header("Content-Length", str(len(answer)))
        request.end_headers()
        if request.command != "HEAD":
            request.wfile.write(answer)

    def with_loopback_ips(self, answer: bytes) -> bytes:
        """Every ``<...>PUBLIC-IP</...>`` of a booted instance (ipAddress, publicIp) is its 127.0.0.N."""
        with self._lock:
            pairs = [(inst.moto_ip, inst.address) for inst in self.instances.values()]
        for moto_ip, address in pairs:
            answer = answer.replace(f">{moto_ip}<".encode(), f">{address}<".encode())
        return answer

    def console_answer(self, instance: Instance, answer: bytes) -> bytes:
        """moto's GetConsoleOutput answer (its XML shape) with the instance's own console in ``output``."""
        output = base64.b64encode(instance.console_text())
        return re.sub(rb"<output>.*?</output>|<output/>", lambda _m: b"<output>" + output + b"</output>", answer,
                      count=1, flags=re.S)

    # --- instances ------------------------------------------------------------------------------------

    def launch(self, form: dict[str, str], answer: bytes, region: str) -> None:
        """Give each instance moto launched an address now (the answer carries it) and boot it in the
        background, as EC2 answers RunInstances while the instances are still pending."""
        user_data = base64.b64decode(form.get("UserData", ""))
        for item in re.findall(rb"<instancesSet>(.*)</instancesSet>", answer, flags=re.S)[:1]:
            for instance_id, moto_ip in re.findall(rb"<instanceId>(i-[0-9a-f]+)</instanceId>.*?"
                                                   rb"<ipAddress>([0-9.]+)</ipAddress>", item, flags=re.S):
                instance = Instance(instance_id.decode(), self._free_address(), moto_ip.decode())
                with self._lock:
                    self.instances[instance.instance_id] = instance
                threading.Thread(target=self.boot, args=(instance, form, user_data, region),
                                 name=f"boot-{instance.instance_id}", daemon=True).start()

    def _free_address(self) -> str:
        """A loopback address whose port 22 nobody listens on (other test sessions boot boxes too)."""
        with self._lock:
            taken = {inst.address for inst in self.instances.values()}
        for n in random.sample(range(2, 255), 253):
            address = f"127.0.0.{n}"
            if address in taken:
                continue
            with socket.socket() as sock:
                try:
                    sock.bind((address, 22))
                except OSError:
                    continue
            return address
        raise RuntimeError("no free 127.0.0.N:22 for a fake instance")

    def boot(self, instance: Instance, form: dict[str, str], user_data: bytes, region: str) -> None:
        """The instance's first boot: cloud-init's preparation of the AMI, then the user-data script,
        its output going to the console as it comes.  A failure of the fake itself is on the console too."""
        from mlenv.boxes.cloudinit import unpack

        try:
            ec2 = self.moto_client("ec2", region)
            image = ec2.describe_images(ImageIds=[form["ImageId"]])["Images"][0]
            pair = ec2.describe_key_pairs(KeyNames=[form["KeyName"]], IncludePublicKey=True)["KeyPairs"][0]
            container = self.docker.containers.run(
                self.image, ["sleep", "infinity"], name=f"mlenv-test-fake-ec2-{instance.instance_id}",
                labels={LABEL: self.id}, detach=True, init=True, network_mode="host", volumes=self.volumes)
            instance.container = container
            if instance.instance_id not in self.instances:  # terminated while its container started
                container.remove(force=True)
                return
            prepared = container.exec_run(["bash", "-c", CLOUD_INIT], environment={
                "LOGIN_USER": ami_user(image), "PUBLIC_KEY": pair["PublicKey"], "LISTEN": f"{instance.address}:22",
                "USER_DATA": USER_DATA_PATH})
            instance.say(prepared.output)
            if prepared.exit_code != 0:
                raise RuntimeError(f"preparing the fake AMI failed ({prepared.exit_code})")
            container.put_archive(os.path.dirname(USER_DATA_PATH), _tar(os.path.basename(USER_DATA_PATH),
                                                                        unpack(user_data).encode()))
            run = self.docker.api.exec_create(container.id, ["bash", USER_DATA_PATH], user="root",
                                              environment=self.environment)
            for chunk in self.docker.api.exec_start(run["Id"], stream=True):
                instance.say(chunk)
        except Exception as exc:  # noqa: BLE001 - whatever broke, the test reads it on the console
            if instance.instance_id in self.instances:  # not when terminated mid-boot
                instance.say(f"\nfake-ec2: boot of {instance.instance_id} failed: {exc!r}\n".encode())

    def moto_client(self, service: str, region: str):
        import boto3

        return boto3.client(service, region_name=region, endpoint_url=self.moto.geturl(),
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def terminate(self, instance_ids: list[str]) -> None:
        """The container goes before TerminateInstances answers: terminated means gone."""
        for instance_id in instance_ids:
            with self._lock:
                instance = self.instances.pop(instance_id, None)
            if instance is not None and instance.container is not None:
                instance.container.remove(force=True)

    def remove_all(self) -> None:
        """Every container this proxy started (also of instances never terminated)."""
        with self._lock:
            self.instances.clear()
        for container in self.docker.containers.list(all=True, filters={"label": f"{LABEL}={self.id}"}):
            container.remove(force=True)

    def close(self) -> None:
        self.remove_all()
        self.server.shutdown()
        self.server.server_close()


def ami_user(image: dict) -> str:
    text = f"{image.get('Name', '')} {image.get('Description', '')}".lower()
    return next((user for word, user in AMI_USERS if word in text), "ubuntu")


def _ec2_form(headers, body: bytes) -> dict[str, str]:
    """The parameters of an EC2 query-protocol call (a form-encoded POST signed for service ``ec2``);
    empty for every other request."""
    if "/ec2/aws4_request" not in headers.get("Authorization", "") or \
            not headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
        return {}
    return dict(urllib.parse.parse_qsl(body.decode(), keep_blank_values=True))


def _region(headers) -> str:
    """The region a request is signed for (``Credential=KEY/DATE/REGION/SERVICE/aws4_request``)."""
    found = re.search(r"Credential=[^/]+/[^/]+/([^/]+)/", headers.get("Authorization", ""))
    return found.group(1) if found else "us-east-1"


def _tar(name: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(data), 0o700
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


# --- fixtures (conftest.py registers them) ----------------------------------------------------------


@pytest.fixture(scope="module")
def moto_server(tmp_path_factory):
    """moto as a real HTTP server on a loopback port (one per test module); its URL."""
    binary = shutil.which("moto_server")
    require(binary is not None, "moto_server (pip install 'moto[server]')")
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "log"
    with open(log, "wb") as output:  # the server keeps its own copy of the descriptor
        process = subprocess.Popen([binary, "-H", "127.0.0.1", "-p", str(port)], stdout=output,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            time.sleep(0.2)
    else:
        process.kill()
        pytest.fail(f"moto_server did not start: {log.read_text()[-2000:]}", pytrace=False)
    yield url
    process.terminate()
    process.wait(timeout=20)


@pytest.fixture
def aws(moto_server, tmp_path, monkeypatch):
    """Environment of a user whose AWS config points at moto; fresh moto state for each test."""
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST"), timeout=10)
    env = {
        "AWS_ENDPOINT_URL": moto_server,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "eu-west-1",
        "AWS_CONFIG_FILE": str(tmp_path / "aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "aws-credentials"),
        "MLENV_HOME": str(tmp_path / "mlenv-home"),
        "HOME": str(tmp_path / "home"),
        "MLENV_CALLER_IP": CALLER_IP,
    }
    (tmp_path / "home").mkdir()
    for key in ("AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture(scope="module")
def fake_ec2(moto_server, docker_client, base_image, build_cli):
    """The proxy in front of the module's moto server, booting instances from the fake AMI."""
    proxy = FakeEC2(moto_server, docker_client, fake_ami_image(docker_client, base_image, build_cli))
    yield proxy
    proxy.close()


@pytest.fixture
def booting_aws(aws, fake_ec2, monkeypatch):
    """``aws``, pointed at the fake EC2: instances boot for real, so ``mlenv up`` waits for them as it
    would on AWS (MLENV_BOOT_TIMEOUT and MLENV_SETUP_TIMEOUT at their defaults).  Their containers go
    when the test ends."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", fake_ec2.url)
    for key in ("MLENV_BOOT_TIMEOUT", "MLENV_SETUP_TIMEOUT"):
        monkeypatch.delenv(key, raising=False)
    yield {**aws, "AWS_ENDPOINT_URL": fake_ec2.url}
    fake_ec2.remove_all()
