"""Real Docker services for tests: the engine, a locally made base image, a registry, mlenv's wheel.

Nothing here is mocked.  The session starts ``dockerd`` on its own socket (or reuses one already
running there), makes the base image with debootstrap once (cached in the engine's data root across
runs), and starts Debian's ``docker-registry`` on loopback.  A missing piece skips locally and
fails in CI (``require``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, require

DOCKER_ROOT = Path(os.environ.get("MLENV_TEST_DOCKER_ROOT", "/tmp/mlenv-docker"))
DOCKER_SOCKET = DOCKER_ROOT / "docker.sock"
DOCKER_HOST = f"unix://{DOCKER_SOCKET}"
# what generated Dockerfiles get as --base-image: Docker Hub is not reachable from test machines
BASE_IMAGE = "localhost/python:3.11-slim-bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
BUILD_DOCKER = "/usr/bin/docker"  # Debian's 20.10 client: BuildKit built in (the 28.x one has no buildx)
# BuildKit never collects its cache on its own and a full run adds ~2.5 GB of it; the engine's data
# root outlives the run, and 60 GB left by earlier runs once filled a CI machine's disk mid-suite
BUILD_CACHE_KEPT = 3 * 1024**3
# what tests tag: projects "demo"/"real", loopback-registry copies, the CI workflow's ghcr.io name,
# the devcontainer CLI's images
TEST_IMAGE_PREFIXES = ("demo:", "real:", "127.0.0.1:", "ghcr.io/demo-org/", "vsc-workspace-")


def _engine_answers(host: str) -> bool:
    import docker

    try:
        client = docker.DockerClient(base_url=host, timeout=10)
        client.ping()
        client.close()
        return True
    except Exception:  # noqa: BLE001 - any failure means "not running"
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(check, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    pytest.fail(f"{what} did not come up within {seconds:.0f}s", pytrace=False)


@pytest.fixture(scope="session")
def docker_engine():
    """DOCKER_HOST of a running engine (started here unless one answers on our socket already)."""
    if not _engine_answers(DOCKER_HOST):
        require(shutil.which("dockerd") is not None, "dockerd (apt-get install docker.io)")
        require(os.geteuid() == 0, "root, to run dockerd")
        DOCKER_ROOT.mkdir(parents=True, exist_ok=True)
        log = open(DOCKER_ROOT / "log", "ab")
        subprocess.Popen(
            ["dockerd", "--data-root", str(DOCKER_ROOT / "data"), "--exec-root", str(DOCKER_ROOT / "exec"),
             "--pidfile", str(DOCKER_ROOT / "pid"), "-H", DOCKER_HOST],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        _wait(lambda: _engine_answers(DOCKER_HOST), 60, f"dockerd (log: {DOCKER_ROOT / 'log'})")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DOCKER_HOST", DOCKER_HOST)
        yield DOCKER_HOST
    # An engine started here stays up: other test sessions on this machine may be building on it
    # right now (stopping it killed their builds), and the next session reuses it.


def _bound_build_cache(client) -> None:
    import docker

    for _ in range(3):  # a prune racing BuildKit's own lease cleanup fails ("lease ... not found"); again works
        try:
            client.api.prune_builds(keep_storage=BUILD_CACHE_KEPT, all=True)
            return
        except docker.errors.APIError:
            time.sleep(1)


@pytest.fixture(scope="session")
def docker_client(docker_engine):
    import docker

    client = docker.DockerClient(base_url=docker_engine, timeout=300)
    _bound_build_cache(client)
    yield client
    # the images tests built would pile up in the engine's data root run after run; the base image
    # and a bounded build cache stay for speed
    for image in client.images.list():
        for ref in image.tags + image.attrs.get("RepoDigests", []):
            if ref.startswith(TEST_IMAGE_PREFIXES):
                try:
                    client.images.remove(ref, force=True)
                except docker.errors.APIError:
                    pass
    try:
        client.images.prune(filters={"dangling": True})
    except docker.errors.APIError:
        pass
    _bound_build_cache(client)
    client.close()


@pytest.fixture(scope="session")
def build_cli(docker_engine):
    """A BuildKit-capable docker CLI for `mlenv build` (exported as MLENV_DOCKER)."""
    require(os.path.exists(BUILD_DOCKER), f"{BUILD_DOCKER} (Debian's docker.io client, BuildKit built in)")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLENV_DOCKER", BUILD_DOCKER)
        yield BUILD_DOCKER


@pytest.fixture(scope="session")
def base_image(docker_client, tmp_path_factory):
    """``localhost/python:3.11-slim-bookworm`` made from Debian packages (~50 s once, then cached)."""
    from docker.errors import ImageNotFound

    try:
        docker_client.images.get(BASE_IMAGE)
        return BASE_IMAGE
    except ImageNotFound:
        pass
    require(shutil.which("debootstrap") is not None, "debootstrap (apt-get install debootstrap)")
    rootfs = tmp_path_factory.mktemp("rootfs") / "root"
    result = subprocess.run(
        ["debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates", "bookworm",
         str(rootfs), DEBIAN_MIRROR],
        capture_output=True, text=True, timeout=600,
    )
    if result.returncode != 0:
        pytest.fail(f"debootstrap failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}", pytrace=False)
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    # `docker import -c ENV...` from a pipe: the SDK's import_image cannot stream with changes
    imported = subprocess.run(
        [BUILD_DOCKER if os.path.exists(BUILD_DOCKER) else "docker", "import", "-c",
         "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "-", BASE_IMAGE],
        stdin=tar.stdout, capture_output=True, text=True, env={**os.environ, "DOCKER_HOST": DOCKER_HOST},
    )
    tar.wait()
    shutil.rmtree(rootfs, ignore_errors=True)
    if imported.returncode != 0:
        pytest.fail(f"docker import failed: {imported.stderr}", pytrace=False)
    return BASE_IMAGE


@contextlib.contextmanager
def serve_registry(folder: Path, config: str = ""):
    """Debian's docker-registry on a loopback port, storing in ``folder``, with ``config`` (YAML) added
    to its configuration; yields ``127.0.0.1:PORT``."""
    binary = shutil.which("docker-registry")
    require(binary is not None, "docker-registry (apt-get install docker-registry)")
    port = _free_port()
    (folder / "config.yml").write_text(
        "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {folder / 'data'}\nhttp:\n  addr: 127.0.0.1:{port}\n{config}"
    )
    process = subprocess.Popen([binary, "serve", str(folder / "config.yml")], stdout=subprocess.DEVNULL,
                               stderr=open(folder / "log", "wb"), start_new_session=True)

    def answers() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    try:
        _wait(answers, 30, "docker-registry")
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="session")
def docker_registry(tmp_path_factory):
    """Debian's docker-registry on a loopback port; yields ``127.0.0.1:PORT``."""
    with serve_registry(tmp_path_factory.mktemp("registry")) as address:
        yield address


@pytest.fixture(scope="session")
def mlenv_wheel(tmp_path_factory) -> Path:
    """A wheel of this checkout, so images install the mlenv under test (not PyPI's)."""
    out = tmp_path_factory.mktemp("mlenv-wheel")
    import uv

    result = subprocess.run([uv.find_uv_bin(), "build", "--wheel", "--quiet", "-o", str(out), str(REPO)],
                            capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        pytest.fail(f"building the mlenv wheel failed: {result.stderr[-2000:]}", pytrace=False)
    return next(out.glob("mlenv-*.whl"))


@pytest.fixture(scope="session")
def mlenv_wheel_url(mlenv_wheel, tmp_path_factory) -> str:
    """The checkout's wheel served over loopback HTTP, for ``--build-arg MLENV_REQUIREMENT``.

    One URL for the whole session, so the image layer installing mlenv is built once and cached.
    """
    from tests.pkgindex import LocalIndex

    server = LocalIndex(tmp_path_factory.mktemp("mlenv-wheel-index"))
    shutil.copy(mlenv_wheel, server.folder / mlenv_wheel.name)
    yield f"mlenv @ http://127.0.0.1:{server.port}/files/{mlenv_wheel.name}"
    server.close()
