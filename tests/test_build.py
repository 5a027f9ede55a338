"""`mlenv build` against a real Docker Engine, BuildKit CLI, base image and registry."""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path

import pytest

from tests.conftest import run_mlenv


@pytest.fixture
def docker_env(docker_engine, build_cli, base_image):
    """What every build needs: the engine, a BuildKit CLI and the local base image."""
    return {"DOCKER_HOST": docker_engine, "MLENV_DOCKER": build_cli}


def build(root, *args, env=None):
    # --network host: RUN steps reach the loopback test index (real users reach PyPI)
    return run_mlenv("build", "--base-image", "localhost/python:3.11-slim-bookworm", "--network", "host", "--json",
                     *args, cwd=root, env=env, timeout=600)


def built(result) -> dict:
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def project(locked_project):
    return locked_project("demo")


@pytest.mark.network  # the tools stage installs uv from PyPI
@pytest.mark.docker
def test_build_run_doctor_and_code_change(project, docker_env, docker_client):
    # what .dockerignore keeps out of the context (and so out of the runtime image)
    for junk in (".venv/bin/python", ".git/HEAD", "sweeps/run-1/out.ipynb", "__pycache__/app.cpython-311.pyc"):
        (project / junk).parent.mkdir(parents=True, exist_ok=True)
        (project / junk).write_text("junk")
    first = built(build(project, env=docker_env))
    assert first["skipped"] is False and first["skip_reason"] is None  # booleans for JSON consumers, never null
    assert first["tag"].startswith("demo:cpu-") and first["moving_tag"] == "demo:cpu"
    assert any("uv pip sync" in step for step in first["steps_run"] + first["steps_cached"])

    image = docker_client.images.get(first["tag"])
    labels = image.labels
    assert labels["io.mlenv.target"] == "cpu" and labels["io.mlenv.stage"] == "runtime"
    assert len(labels["io.mlenv.lock-hash"]) == 12
    assert docker_client.images.get("demo:cpu").id == image.id

    def run(*command: str) -> str:
        return docker_client.containers.run(first["tag"], list(command), remove=True).decode().strip()

    assert run("id", "-u") == "1000"  # non-root
    assert run("python", "/app/app.py") == "hello from demo"
    assert run("python", "-c", "import tinylib, tinydep; print(tinydep.__version__)") == "1.1"
    assert run("ls", "-A", "/app").split() == ["app.py", "mlenv.lock", "mlenv.toml", "pylock.cpu.toml"]

    doctor = run_mlenv("doctor", "--image", first["tag"], "--target", "cpu", cwd=project, env=docker_env)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr

    # same inputs: skipped by tag
    again = built(build(project, env=docker_env))
    assert again["skipped"] is True and again["skip_reason"] == "exists locally" and again["tag"] == first["tag"]

    # a one-line code change: a new content tag, and only the source layer runs again
    (project / "app.py").write_text('print("hello again")\n')
    changed_run = build(project, env=docker_env)
    changed = built(changed_run)
    assert changed["skipped"] is False and changed["tag"] != first["tag"]
    # not a terminal: progress arrives as plain lines, one per finished step, with cache hits marked
    assert re.search(r"^\s+cached\s+\[deps 2/2\] RUN", changed_run.stderr, re.M), changed_run.stderr
    assert re.search(r"^\s+\d+\.\ds\s+\[runtime 3/3\] COPY --from=source /src /app",
                     changed_run.stderr, re.M), changed_run.stderr
    # the source stage takes the context without .mlenv/ (the dev stage's mlenv wheel)
    assert changed["steps_run"] == ["[source 1/2] COPY . /src", "[source 2/2] RUN rm -rf /src/.mlenv",
                                    "[runtime 3/3] COPY --from=source /src /app"], changed["steps_run"]
    assert any("uv pip sync" in step for step in changed["steps_cached"])
    ran = docker_client.containers.run(changed["tag"], ["python", "/app/app.py"], remove=True)
    assert ran.decode().strip() == "hello again"

    # --force rebuilds even when the tag exists (cached layers still count as a build)
    forced = built(build(project, "--force", env=docker_env))
    assert forced["skipped"] is False and forced["tag"] == changed["tag"]


@pytest.mark.network  # the tools stage installs uv from PyPI
@pytest.mark.docker
def test_ca_bundle_is_a_secret_never_a_layer(project, docker_env, docker_client, tmp_path):
    marker = "MLENV-TEST-CA-MARKER-7f3a9c"
    bundle = tmp_path / "corp-ca.pem"
    # a real bundle (so PyPI works through the proxy) plus a marker line to hunt for in the layers
    import certifi

    system = Path("/etc/ssl/certs/ca-certificates.crt")
    bundle.write_text(f"# {marker}\n" + (system if system.is_file() else Path(certifi.where())).read_text())
    no_ca = {**docker_env, "SSL_CERT_FILE": "", "REQUESTS_CA_BUNDLE": "", "PIP_CERT": ""}
    # --no-cache: the steps that download from PyPI really run, so the secret is what makes them work
    result = built(build(project, "--ca-bundle", str(bundle), "--no-cache", env=no_ca))
    assert any("pip install" in step for step in result["steps_run"])
    image = docker_client.images.get(result["tag"])
    history = json.dumps(docker_client.api.history(image.id))
    assert marker not in history and str(bundle) not in history
    raw = b"".join(image.save(named=False))
    with tarfile.open(fileobj=io.BytesIO(raw)) as outer:
        for member in outer.getmembers():
            if not member.isfile():
                continue
            data = outer.extractfile(member).read()
            assert marker.encode() not in data, member.name
            if member.name.endswith("layer.tar"):
                with tarfile.open(fileobj=io.BytesIO(data)) as layer:
                    for entry in layer.getmembers():
                        assert "secrets/cacert" not in entry.name
                        if entry.isfile() and entry.size < 5_000_000:
                            assert marker.encode() not in layer.extractfile(entry).read(), entry.name


@pytest.mark.network  # the tools stage installs uv from PyPI
@pytest.mark.docker
def test_push_to_registry_and_pull_by_digest(locked_project, docker_env, docker_client, docker_registry):
    root = locked_project("pushed", image=f'[image]\nregistry = "{docker_registry}"\n')
    result = built(build(root, "--push", env=docker_env))
    digest = result["pushed_digest"]
    assert digest and digest.startswith("sha256:")
    repository = f"{docker_registry}/demo"
    assert result["tag"].startswith(f"{repository}:cpu-")

    docker_client.images.remove(result["tag"])
    docker_client.images.remove(f"{repository}:cpu")
    pulled = docker_client.images.pull(f"{repository}@{digest}")
    assert pulled.id == result["image_id"]
    doctor = run_mlenv("doctor", "--image", f"{repository}@{digest}", "--target", "cpu", cwd=root, env=docker_env)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr

    # the content tag is in the registry now: a build is skipped without rebuilding
    again = built(build(root, env=docker_env))
    assert again["skipped"] is True and again["skip_reason"] == "exists in the registry"


@pytest.mark.network  # the tools stage installs uv from PyPI
@pytest.mark.docker
def test_base_image_pinned_by_registry_digest(locked_project, docker_env, docker_client, docker_registry,
                                              base_image):
    mirror = f"{docker_registry}/python:3.11-slim-bookworm"  # a private mirror of the base image
    docker_client.images.get(base_image).tag(mirror)
    for event in docker_client.images.push(mirror, stream=True, decode=True):
        assert "error" not in event, event
    digest = docker_client.images.get_registry_data(mirror).id
    root = locked_project("pinned", image=f'[image]\nbase = "{mirror}"\n')
    result = run_mlenv("gen", "dockerfile", cwd=root, env=docker_env)
    assert result.returncode == 0, result.stderr
    assert f"ARG BASE_IMAGE={mirror}@{digest}\n" in (root / "Dockerfile").read_text()
    lock = (root / "mlenv.lock").read_text()
    assert f'ref = "{mirror}"' in lock and f'digest = "{digest}"' in lock
    assert run_mlenv("lock", "--check", cwd=root).returncode == 0

    outcome = built(run_mlenv("build", "--network", "host", "--json", cwd=root, env=docker_env, timeout=600))
    labels = docker_client.images.get(outcome["tag"]).labels
    assert labels["org.opencontainers.image.base.digest"] == digest
    assert run_mlenv("doctor", "--image", outcome["tag"], "--target", "cpu", cwd=root, env=docker_env).returncode == 0

    # upstream rebuilds the tag: the pin holds until the user asks for the new digest
    container = docker_client.containers.create(base_image, ["true"])
    try:
        repository, tag = mirror.rsplit(":", 1)
        container.commit(repository=repository, tag=tag, changes=["LABEL rebuilt=yes"])
    finally:
        container.remove()
    for event in docker_client.images.push(mirror, stream=True, decode=True):
        assert "error" not in event, event
    new_digest = docker_client.images.get_registry_data(mirror).id
    assert new_digest != digest
    assert run_mlenv("gen", "dockerfile", cwd=root, env=docker_env).returncode == 0
    assert f"@{digest}\n" in (root / "Dockerfile").read_text()
    assert run_mlenv("gen", "dockerfile", "--refresh-base", cwd=root, env=docker_env).returncode == 0
    assert f"ARG BASE_IMAGE={mirror}@{new_digest}\n" in (root / "Dockerfile").read_text()
    assert f'digest = "{new_digest}"' in (root / "mlenv.lock").read_text()


@pytest.mark.network  # the tools stage installs uv from PyPI
@pytest.mark.docker
def test_dev_stage_runs_doctor_inside(project, docker_env, docker_client, mlenv_wheel_url):
    result = built(build(project, "--stage", "dev", "--build-arg", f"MLENV_REQUIREMENT={mlenv_wheel_url}",
                         env=docker_env))
    assert result["tag"].startswith("demo:cpu-dev-")
    container_output = docker_client.containers.run(
        result["tag"], ["mlenv", "doctor", "--target", "cpu"], remove=True, working_dir="/work",
        volumes={str(project): {"bind": "/work", "mode": "ro"}},
    ).decode()
    assert "/opt/venv/bin/python" in container_output
    tools = docker_client.containers.run(result["tag"],
                                         ["sh", "-c", "git --version && test -x /usr/sbin/sshd && id -un"],
                                         remove=True).decode()
    assert "git version" in tools and tools.strip().endswith("app")


@pytest.mark.network  # the tools stage installs uv from PyPI
@pytest.mark.docker
def test_stale_lock_is_refused(project, docker_env):
    assert built(build(project, env=docker_env))["skipped"] is False
    spec = project / "mlenv.toml"
    spec.write_text(spec.read_text().replace('dependencies = ["tinylib"]', 'dependencies = ["tinylib", "tinydep<1.1"]'))
    result = build(project, env=docker_env)
    assert result.returncode == 4
    assert "stale" in result.stderr and "mlenv lock" in result.stderr and "Traceback" not in result.stderr
    # --allow-stale builds from the lock as it is: the packages are unchanged, only the source layer runs
    assert built(build(project, "--allow-stale", env=docker_env))["steps_run"] == [
        "[source 1/2] COPY . /src", "[source 2/2] RUN rm -rf /src/.mlenv", "[runtime 3/3] COPY --from=source /src /app"]


@pytest.mark.docker
def test_failed_build_names_the_step_and_its_log(locked_project, docker_env):
    root = locked_project("broken", image='[image]\nsystem-packages = ["mlenv-no-such-package"]\n')
    result = build(root, env=docker_env)
    assert result.returncode == 7, result.stderr
    assert "build failed at [base 2/3] RUN apt-get update" in result.stderr
    assert "mlenv-no-such-package" in result.stderr and "last lines of its log" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.docker
def test_bad_inputs_without_a_build(tmp_path, project, docker_env):
    (tmp_path / "nolock").mkdir()
    (tmp_path / "nolock" / "mlenv.toml").write_text((project / "mlenv.toml").read_text())
    result = build(tmp_path / "nolock", env=docker_env)
    assert result.returncode == 4 and "mlenv lock" in result.stderr

    result = build(project, "--target", "gpu", env=docker_env)
    assert result.returncode == 2 and "cpu" in result.stderr

    (project / "Dockerfile").write_text("FROM scratch\n")  # the team's own: never overwritten by a build
    result = build(project, env=docker_env)
    assert result.returncode == 2 and "not written by mlenv" in result.stderr
    assert (project / "Dockerfile").read_text() == "FROM scratch\n"
    (project / "Dockerfile").unlink()

    result = build(project, env={**docker_env, "MLENV_DOCKER": "/usr/local/bin/docker"})
    if "buildx" not in result.stderr:  # a machine whose 28.x client has the plugin builds fine
        assert result.returncode == 0
    else:
        assert result.returncode == 6 and "install the buildx plugin" in result.stderr


def test_unreachable_engine_is_one_line(project):
    for args in (("build",), ("doctor", "--image", "demo:cpu", "--target", "cpu")):
        result = run_mlenv(*args, cwd=project, env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
        assert result.returncode == 6, result.stderr
        # the error in one line, then the fix
        error, hint = result.stderr.strip().splitlines()
        assert error.startswith("error: cannot reach the Docker Engine at DOCKER_HOST=unix:///nonexistent/docker.sock")
        assert hint.strip().startswith("hint: ") and "dockerd" in hint


@pytest.mark.network  # the tools stage installs uv from PyPI
@pytest.mark.docker
def test_without_the_ca_bundle_pypi_fails_behind_the_proxy(project, docker_env):
    """The counter-test of the secret: on this machine HTTPS goes through a TLS-intercepting proxy."""
    no_ca = {**docker_env, "SSL_CERT_FILE": "", "REQUESTS_CA_BUNDLE": "", "PIP_CERT": ""}
    result = build(project, "--no-cache", env=no_ca)
    if result.returncode == 0:
        pytest.skip("PyPI is reachable without an extra CA here (no intercepting proxy)")
    assert result.returncode == 7
    assert "build failed at [tools 1/1]" in result.stderr and "Traceback" not in result.stderr


# --- without an engine: progress parsing, builder discovery, ECR login --------------------------

PLAIN_LOG = """\
#1 [internal] load build definition from Dockerfile
#1 DONE 0.0s
#5 [base 1/2] FROM localhost/python:3.11-slim-bookworm
#5 DONE 0.0s
#6 [deps 2/2] RUN uv pip sync pylock.cpu.toml
#6 CACHED
#9 [runtime 3/3] COPY . /app
#9 DONE 0.1s
#10 [dev 1/5] RUN apt-get install -y nope
#10 0.512 E: Unable to locate package nope
#10 ERROR: executor failed running [/bin/sh -c apt-get install -y nope]: exit code: 100
"""


def test_plain_progress_is_parsed():
    from mlenv.image.buildkit import BuildReport, parse_plain

    report = BuildReport()
    for line in PLAIN_LOG.splitlines():
        parse_plain(line, report)
    assert report.cached() == ["[deps 2/2] RUN uv pip sync pylock.cpu.toml"]
    assert report.ran() == ["[runtime 3/3] COPY . /app"]  # FROM and [internal] are not instructions
    failed = report.failed()
    assert failed.name.startswith("[dev 1/5]") and "exit code: 100" in failed.error
    assert list(failed.logs) == ["E: Unable to locate package nope"]


def test_rawjson_progress_is_parsed():
    """buildx --progress=rawjson: one BuildKit SolveStatus per line, logs base64-encoded."""
    import base64

    from mlenv.image.buildkit import BuildReport, parse_rawjson

    lines = [
        {"vertexes": [{"digest": "sha256:a", "name": "[deps 2/2] RUN uv pip sync", "started": "2026-11-22T06:00:00Z",
                       "completed": "2026-11-22T06:00:00Z", "cached": True}]},
        {"vertexes": [{"digest": "sha256:b", "name": "[runtime 3/3] COPY . /app", "started": "2026-11-22T06:00:01Z"}]},
        {"vertexes": [{"digest": "sha256:b", "name": "[runtime 3/3] COPY . /app", "started": "2026-11-22T06:00:01Z",
                       "completed": "2026-11-22T06:00:02Z"}]},
        {"logs": [{"vertex": "sha256:c", "stream": 2, "data": base64.b64encode(b"E: broken\n").decode()}],
         "vertexes": [{"digest": "sha256:c", "name": "[dev 1/5] RUN false", "error": "exit code: 1"}]},
    ]
    report = BuildReport()
    for line in lines:
        parse_rawjson(json.dumps(line), report)
    parse_rawjson("not json", report)
    assert report.cached() == ["[deps 2/2] RUN uv pip sync"]
    assert report.ran() == ["[runtime 3/3] COPY . /app"]
    assert report.failed().error == "exit code: 1" and list(report.failed().logs) == ["E: broken"]


def test_no_buildkit_cli_is_one_clear_message(tmp_path, monkeypatch):
    from mlenv.errors import ToolMissingError
    from mlenv.image.buildkit import find_builder

    fake = tmp_path / "docker"  # a docker CLI from 23 on without the buildx plugin
    fake.write_text('#!/bin/sh\n[ "$1" = version ] && echo 28.2.2 && exit 0\nexit 1\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("MLENV_DOCKER", raising=False)
    with pytest.raises(ToolMissingError) as error:
        find_builder()
    assert "buildx" in error.value.hint and "28.2" in error.value.message
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ToolMissingError):
        find_builder()


def test_ecr_login_through_boto3(monkeypatch):
    import shutil
    import socket
    import subprocess
    import time

    from tests.conftest import require

    server = shutil.which("moto_server")
    require(server is not None, "moto_server (pip install 'moto[server]')")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen([server, "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        for key, value in {"AWS_ENDPOINT_URL_ECR": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
                           "AWS_SECRET_ACCESS_KEY": "testing"}.items():
            monkeypatch.setenv(key, value)
        from mlenv.image.registry import ecr_login, is_ecr, registry_host

        host = "123456789012.dkr.ecr.eu-west-1.amazonaws.com"
        assert registry_host(f"{host}/demo") == host and is_ecr(host) and not is_ecr("127.0.0.1:5000")
        auth = ecr_login(host)
        assert auth["username"] == "AWS" and auth["password"] and auth["serveraddress"] == f"https://{host}"
    finally:
        process.terminate()
        process.wait(timeout=30)

    from mlenv.errors import MlenvError
    from mlenv.image.registry import ecr_login

    monkeypatch.setenv("AWS_ENDPOINT_URL_ECR", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(MlenvError) as error:
        ecr_login("123456789012.dkr.ecr.eu-west-1.amazonaws.com")
    assert "cannot log in to ECR" in error.value.message and "credentials" in error.value.hint


@pytest.mark.network
@pytest.mark.docker
def test_a_pypi_project_builds_on_the_default_network(tmp_path, docker_env, docker_client):
    """The path real users take: packages from PyPI, default build network, CA from $SSL_CERT_FILE."""
    from tests.conftest import IN_CI

    root = tmp_path / "real"
    root.mkdir()
    (root / "mlenv.toml").write_text(
        '[project]\nname = "real"\npython = "3.11"\ndependencies = ["six==1.17.0"]\n\n'
        '[targets.cpu]\nplatform = "linux/x86_64"\n'
    )
    (root / "app.py").write_text("import six\nprint(six.__version__)\n")
    locked = run_mlenv("lock", cwd=root)
    if locked.returncode != 0 and not IN_CI and "could not lock" in locked.stderr:
        pytest.skip("PyPI unreachable from this machine")
    assert locked.returncode == 0, locked.stderr
    result = built(run_mlenv("build", "--base-image", "localhost/python:3.11-slim-bookworm", "--json",
                             cwd=root, env=docker_env, timeout=600))
    ran = docker_client.containers.run(result["tag"], ["python", "/app/app.py"], remove=True)
    assert ran.decode().strip() == "1.17.0"
    assert run_mlenv("doctor", "--image", result["tag"], "--target", "cpu", cwd=root, env=docker_env).returncode == 0


def test_content_tags_follow_everything_that_shapes_the_image(locked_project):
    from mlenv.image.plan import plan_image
    from mlenv.lock import read_lock
    from mlenv.render import render_dockerfile
    from mlenv.spec import load_spec

    root = locked_project("p")
    spec, lock = load_spec(root), read_lock(root)
    plan = plan_image(spec, lock, "cpu")
    text = render_dockerfile(plan)
    tag, moving = plan.tags("dev", text)
    assert tag.startswith("demo:cpu-dev-") and moving == "demo:cpu-dev"
    assert plan.tags("dev", text) == (tag, moving)  # deterministic
    (root / "mlenv.toml").write_text((root / "mlenv.toml").read_text() + '\n[image]\nsystem-packages = ["libgomp1"]\n')
    other = plan_image(load_spec(root), lock, "cpu")
    assert other.lock_hash == plan.lock_hash  # same packages ...
    assert other.tags("dev", render_dockerfile(other))[0] != tag  # ... but another image
    assert plan.tags("dev", text, "MLENV_REQUIREMENT=x")[0] != tag
    assert plan.tags("runtime", text, "source-a")[0] != plan.tags("runtime", text, "source-b")[0]
