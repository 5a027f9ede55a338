"""Images: `mlenv build` beside the Dockerfile teams write by hand, same packages, same engine, one run.

The hand-written one is the usual three lines (``FROM python:3.11-slim``, ``COPY . .``,
``RUN pip install -r requirements.txt``) with the very same pinned packages.  Cases:

- cold build (build cache and cache mounts pruned first);
- rebuild after a one-line code change (goal: mlenv >= 10x faster than hand-written, and < 10 s);
- rebuild after bumping one package (only mlenv's dependency layer re-runs, fed from the uv cache);
- final image size (goal: mlenv's runtime stage smaller than the hand-written image).

Needs a Docker Engine (DOCKER_HOST; default the test engine's socket), a BuildKit-capable docker CLI
(MLENV_DOCKER or PATH), the base image (MLENV_BENCH_BASE, default the tests' debootstrap image
``localhost/python:3.11-slim-bookworm``, since Docker Hub is unreachable here) and PyPI.  On such a
base the hand-written Dockerfile must create a venv for pip (Debian's python3 has no pip) and mount
the CA bundle as a secret (TLS-intercepting proxy): those are the only departures from the three lines.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BenchFailed, Row, print_table, python  # noqa: E402

BENCHMARK = "image"
BASE = os.environ.get("MLENV_BENCH_BASE", "localhost/python:3.11-slim-bookworm")
TEST_ENGINE = "unix:///tmp/mlenv-docker/docker.sock"
PACKAGES = ["requests==2.32.3", "pandas==2.2.3"]
BUMPED = ("requests==2.32.3", "requests==2.32.4")

HAND_DOCKERFILE = f"""\
FROM {BASE}
WORKDIR /app
COPY . .
RUN --mount=type=secret,id=cacert \\
    if [ -s /run/secrets/cacert ]; then export PIP_CERT=/run/secrets/cacert; fi; \\
    python3 -m venv /venv && /venv/bin/pip install --no-cache-dir -r requirements.txt
CMD ["/venv/bin/python", "app.py"]
"""

APP = 'import pandas, requests\n\nprint("rows:", len(pandas.DataFrame({"a": [1, 2, 3]})))\n'


def _env() -> dict:
    env = dict(os.environ)
    env.setdefault("DOCKER_HOST", TEST_ENGINE if Path(TEST_ENGINE.removeprefix("unix://")).exists() else "")
    if not env["DOCKER_HOST"]:
        env.pop("DOCKER_HOST")
    return env


def _run(cmd, *, cwd=None, env=None) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    result = subprocess.run(list(map(str, cmd)), cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-12:]
        raise BenchFailed(f"{' '.join(map(str, cmd))} exited {result.returncode}: " + " | ".join(tail))
    return elapsed, result


def _preflight(env: dict):
    os.environ.update({k: v for k, v in env.items() if k == "DOCKER_HOST"})
    from mlenv.errors import MlenvError
    from mlenv.image.buildkit import find_builder
    from mlenv.image.engine import connect as engine

    try:
        client = engine()
        builder = find_builder()
    except MlenvError as exc:
        raise SystemExit(f"no Docker setup for the image benchmark: {exc.message}") from None
    from docker.errors import ImageNotFound

    try:
        client.images.get(BASE)
    except ImageNotFound:
        raise SystemExit(f"base image {BASE} is missing (run the docker tests once, or set MLENV_BENCH_BASE)") from None
    return client, builder


def _remove_images(client) -> None:
    for image in client.images.list():
        for tag in image.tags:
            if tag.startswith(("benchimg:", "benchimg-hand:")):
                try:
                    client.images.remove(tag, force=True)
                except Exception:  # noqa: BLE001 - cleanup is best effort
                    pass


def _steps(result: dict) -> str:
    """'deps 2/2, runtime 3/3': brackets dropped, rich would read them as markup."""
    return ", ".join(step.split("]", 1)[0].lstrip("[") for step in result["steps_run"]) or "none"


def main(quick: bool = False) -> list[Row]:
    env = _env()
    client, builder = _preflight(env)
    _remove_images(client)
    docker_cli = builder.argv[0]
    build_env = {**env, **builder.env}
    bundle = next((os.environ[v] for v in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT")
                   if os.environ.get(v) and Path(os.environ[v]).is_file()), None)
    secret = ["--secret", f"id=cacert,src={bundle}"] if bundle else []
    work = Path(tempfile.mkdtemp(prefix="mlenv-bench-image-"))
    mine, hand = work / "mlenv-project", work / "hand-written"
    try:
        mine.mkdir()
        (mine / "mlenv.toml").write_text(
            f'[project]\nname = "benchimg"\npython = "3.11"\ndependencies = {json.dumps(PACKAGES)}\n\n'
            '[targets.cpu]\nplatform = "linux/x86_64"\n'
        )
        (mine / "app.py").write_text(APP)
        mlenv = [python(), "-m", "mlenv"]
        _run([*mlenv, "lock"], cwd=mine, env=env)

        def requirements() -> str:
            from mlenv.lock import read_lock

            lock = read_lock(mine)
            return "".join(f"{p.name}=={p.version}\n" for p in sorted(lock.packages_for("cpu"), key=lambda p: p.name))

        hand.mkdir()
        (hand / "Dockerfile").write_text(HAND_DOCKERFILE)
        (hand / "app.py").write_text(APP)
        (hand / "requirements.txt").write_text(requirements())

        def build_mine(*extra: str) -> tuple[float, dict]:
            # --force: time a build even when an earlier run left an image with the same content tag
            elapsed, result = _run([*mlenv, "build", "--base-image", BASE, "--json", "--force", *extra],
                                   cwd=mine, env=env)
            return elapsed, json.loads(result.stdout)

        def build_hand(*extra: str) -> float:
            cmd = [*builder.argv, "--progress", "plain", *secret, "-t", "benchimg-hand:latest", *extra, str(hand)]
            return _run(cmd, env=build_env)[0]

        def prune() -> None:
            _run([docker_cli, "builder", "prune", "-af"], env=build_env)

        rows: list[Row] = []
        prune()
        cold_mine, first = build_mine("--no-cache")
        prune()
        cold_hand = build_hand("--no-cache")
        rows += [
            Row(BENCHMARK, "cold build: hand-written", [cold_hand], note=f"{' '.join(PACKAGES)}"),
            Row(BENCHMARK, "cold build: mlenv build", [cold_mine], ratio=cold_mine / cold_hand,
                note="includes installing uv from PyPI in the image"),
        ]
        # warm both caches once more, so the code-change case measures a steady state
        build_mine()
        build_hand()

        for path in (mine / "app.py", hand / "app.py"):
            path.write_text(path.read_text() + "print('one more line')\n")
        code_mine, changed = build_mine()
        code_hand = build_hand()
        ratio = code_mine / code_hand
        rows += [
            Row(BENCHMARK, "code change: hand-written", [code_hand], note="COPY . . before pip: full reinstall"),
            Row(BENCHMARK, "code change: mlenv build", [code_mine], ratio=ratio,
                goal=">= 10x faster and < 10 s", met=(code_hand / code_mine >= 10 and code_mine < 10),
                note=f"steps run: {_steps(changed)}"),
        ]

        spec = mine / "mlenv.toml"
        spec.write_text(spec.read_text().replace(*BUMPED))
        _run([*mlenv, "lock"], cwd=mine, env=env)
        (hand / "requirements.txt").write_text(requirements())
        bump_mine, bumped = build_mine()
        bump_hand = build_hand()
        deps_only = all(not step.startswith(("[tools", "[base")) for step in bumped["steps_run"])
        rows += [
            Row(BENCHMARK, "bump one package: hand-written", [bump_hand], note=f"{BUMPED[0]} -> {BUMPED[1]}"),
            Row(BENCHMARK, "bump one package: mlenv build", [bump_mine], ratio=bump_mine / bump_hand,
                goal="only the dependency layer re-runs", met=deps_only,
                note=f"steps run: {_steps(bumped)}"),
        ]

        size_mine = client.images.get(bumped["tag"]).attrs["Size"]
        size_hand = client.images.get("benchimg-hand:latest").attrs["Size"]
        base_size = client.images.get(BASE).attrs["Size"]
        rows.append(Row(BENCHMARK, "image size (not a time)", [0.0], goal="runtime smaller than hand-written",
                        met=size_mine < size_hand,
                        note=f"mlenv runtime {size_mine / 1e6:.0f} MB, hand-written {size_hand / 1e6:.0f} MB, "
                             f"base {base_size / 1e6:.0f} MB"))
        print_table("mlenv build vs a hand-written Dockerfile (one run each, seconds shown as ms)", rows,
                    caption=f"engine {env.get('DOCKER_HOST', 'default')}, builder {builder.describe()}, base {BASE}")
        return rows
    finally:
        _remove_images(client)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
