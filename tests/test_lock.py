"""`mlenv lock` against real package indexes served over loopback HTTP (and once against PyPI)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import IN_CI, gpu_env, lock, read, run_mlenv, write_spec

LINUX_WHEEL = "cp311-cp311-manylinux_2_17_x86_64"
MAC_WHEEL = "cp311-cp311-macosx_11_0_arm64"


def versions(folder: Path, target: str) -> dict[str, str]:
    return {p["name"]: p["version"] for p in read(folder, f"pylock.{target}.toml")["packages"]}


def test_lock_pins_every_target_with_hashes_of_its_own_artifacts(tmp_path, local_index):
    local_index.add("fastlib", "2.0", tag=LINUX_WHEEL)
    local_index.add("fastlib", "2.0", tag=MAC_WHEEL)
    write_spec(tmp_path, local_index.url, dependencies=("tinylib", "fastlib"),
               targets='[targets.cpu]\nplatform = "linux/x86_64"\n\n[targets.mac]\nplatform = "macos/arm64"\n')
    lock(tmp_path)

    data = read(tmp_path, "mlenv.lock")
    assert data["python"] == {"requires": "==3.11.*", "version": "3.11"}
    assert [t["name"] for t in data["target"]] == ["cpu", "mac"]
    packages = {p["name"]: p for p in data["package"]}
    assert packages["tinydep"]["version"] == "1.1"
    assert packages["devtool"]["groups"] == ["dev"] and packages["tinylib"]["groups"] == ["main"]
    assert all(len(a["sha256"]) == 64 for p in data["package"] for a in p["artifacts"])

    for target, wheel_tag, other in (("cpu", "manylinux", "macosx"), ("mac", "macosx", "manylinux")):
        pylock = read(tmp_path, f"pylock.{target}.toml")
        fastlib = next(p for p in pylock["packages"] if p["name"] == "fastlib")
        urls = [w["url"] for w in fastlib["wheels"]]
        assert len(urls) == 1 and wheel_tag in urls[0] and other not in urls[0]
        assert all("sha256" in w["hashes"] for p in pylock["packages"] for w in p["wheels"])
        devtool = next(p for p in pylock["packages"] if p["name"] == "devtool")
        assert devtool["marker"] == "'dev' in dependency_groups"
        assert pylock["dependency-groups"] == ["dev"]


def test_lock_is_deterministic(tmp_path, local_index):
    first, second = tmp_path / "a", tmp_path / "b"
    for folder in (first, second):
        folder.mkdir()
        write_spec(folder, local_index.url)
        lock(folder)
    for name in ("mlenv.lock", "pylock.cpu.toml"):
        assert (first / name).read_bytes() == (second / name).read_bytes()
    before = (first / "mlenv.lock").stat().st_mtime_ns
    lock(first)  # nothing changed: nothing rewritten
    assert (first / "mlenv.lock").stat().st_mtime_ns == before


def test_per_target_index_pinning_locks_cpu_and_cuda_builds_from_a_laptop(tmp_path, local_index, index_server):
    cpu_index, cuda_index = index_server("torch-cpu"), index_server("torch-cu124")
    cpu_index.add("torchy", "2.5.1+cpu", requires=["tinydep"])
    cuda_index.add("torchy", "2.5.1+cu124", requires=["tinydep"])
    extra = (
        f'[[index]]\nname = "torch-cpu"\nurl = "{cpu_index.url}"\nexplicit = true\n\n'
        f'[[index]]\nname = "torch-cu124"\nurl = "{cuda_index.url}"\nexplicit = true\n\n'
        '[sources]\ntorchy = "torch-cpu"\n'
    )
    targets = (
        '[targets.cpu]\nplatform = "linux/x86_64"\n\n'
        '[targets.gpu]\nplatform = "linux/x86_64"\ncuda = "12.4"\ngpu = "a10g"\nsources = { torchy = "torch-cu124" }\n'
    )
    write_spec(tmp_path, local_index.url, dependencies=("torchy==2.5.1",), extra=extra, targets=targets)
    lock(tmp_path)  # this machine has no GPU: locking the CUDA target must still work

    assert versions(tmp_path, "cpu")["torchy"] == "2.5.1+cpu"
    assert versions(tmp_path, "gpu")["torchy"] == "2.5.1+cu124"
    data = read(tmp_path, "mlenv.lock")
    torchy = sorted((p["version"], p["index"], p["targets"]) for p in data["package"] if p["name"] == "torchy")
    assert torchy == [("2.5.1+cpu", "torch-cpu", ["cpu"]), ("2.5.1+cu124", "torch-cu124", ["gpu"])]
    tinydep = [p for p in data["package"] if p["name"] == "tinydep"]
    assert len(tinydep) == 1 and tinydep[0]["targets"] == ["cpu", "gpu"] and tinydep[0]["index"] == "local"
    gpu = next(t for t in data["target"] if t["name"] == "gpu")
    assert gpu["cuda"] == "12.4" and gpu["accelerator"] == "cuda12.4"
    assert (gpu["driver-min"], gpu["driver-min-compat"]) == ("550.54.14", "525.60.13")
    assert gpu["sm-range"] == ["5.0", "9.0"] and gpu["gpu"] == "a10g"
    pylock_gpu = read(tmp_path, "pylock.gpu.toml")
    assert next(p for p in pylock_gpu["packages"] if p["name"] == "torchy")["index"] == cuda_index.url


def test_pins_survive_relocks_until_upgraded(tmp_path, local_index):
    spec = write_spec(tmp_path, local_index.url)
    lock(tmp_path)
    assert versions(tmp_path, "cpu")["tinydep"] == "1.1"

    local_index.add("tinydep", "1.2")
    local_index.add("devtool", "0.6")
    spec.write_text(spec.read_text().replace('["tinylib"]', '["tinylib", "tinyextra"]'))
    local_index.add("tinyextra", "0.1")
    result = lock(tmp_path, "--json")
    assert json.loads(result.stdout)["resolved"] == ["cpu"]
    assert versions(tmp_path, "cpu")["tinydep"] == "1.1", "a re-lock must not move existing pins"
    assert versions(tmp_path, "cpu")["tinyextra"] == "0.1"

    result = lock(tmp_path, "--upgrade-package", "tinydep", "-P", "tiny-dep2", "--json")
    assert {"target": "cpu", "package": "tinydep", "old": "1.1", "new": "1.2"} in json.loads(result.stdout)["updates"]
    # a typo is said, not passed by in silence (uv upgrades nothing for it)
    assert result.stderr.count("--upgrade-package") == 1, result.stderr
    assert "warning: --upgrade-package tiny-dep2: no target locks tiny-dep2, so nothing was upgraded" in result.stderr
    assert versions(tmp_path, "cpu")["devtool"] == "0.5"

    lock(tmp_path, "--upgrade")
    assert versions(tmp_path, "cpu")["devtool"] == "0.6"


def test_changing_one_target_reresolves_only_that_target(tmp_path, local_index):
    targets = '[targets.cpu]\nplatform = "linux/x86_64"\n\n[targets.gpu]\nplatform = "linux/x86_64"\ncuda = "12.4"\n'
    spec = write_spec(tmp_path, local_index.url, targets=targets)
    lock(tmp_path)
    cpu_pylock = (tmp_path / "pylock.cpu.toml").read_bytes()
    spec.write_text(spec.read_text().replace('cuda = "12.4"', 'cuda = "12.6"'))

    check = lock(tmp_path, "--check", expect=1)
    assert "gpu: hardware.cuda: '12.4' -> '12.6'" in check.stderr
    result = lock(tmp_path, "--json")
    assert json.loads(result.stdout) == {"resolved": ["gpu"], "reused": ["cpu"], "updates": []}
    assert (tmp_path / "pylock.cpu.toml").read_bytes() == cpu_pylock
    gpu = next(t for t in read(tmp_path, "mlenv.lock")["target"] if t["name"] == "gpu")
    assert gpu["driver-min"] == "560.28.03"


def test_check_names_target_and_dependency_without_the_network(tmp_path, local_index):
    spec = write_spec(tmp_path, local_index.url)
    lock(tmp_path)
    lock(tmp_path, "--check")
    local_index.close()  # --check must not need the index

    spec.write_text(spec.read_text().replace('["tinylib"]', '["tinylib>=1.0", "numpy"]'))
    result = lock(tmp_path, "--check", expect=1)
    assert "stale for cpu" in result.stderr
    assert "dependencies: added numpy" in result.stderr
    assert "dependencies: tinylib -> tinylib>=1.0" in result.stderr

    as_json = json.loads(lock(tmp_path, "--check", "--json", expect=1).stdout)
    assert as_json["fresh"] is False
    assert {"target": "cpu", "field": "dependencies", "detail": "dependencies: added numpy"} in as_json["changes"]


def test_check_notices_a_hand_edited_pylock(tmp_path, local_index):
    write_spec(tmp_path, local_index.url)
    lock(tmp_path)
    pylock = tmp_path / "pylock.cpu.toml"
    pylock.write_text(pylock.read_text().replace('version = "1.1"', 'version = "1.0"'))
    result = lock(tmp_path, "--check", expect=1)
    assert "pylock.cpu.toml was modified by hand" in result.stderr


def test_failed_resolution_names_the_target_and_keeps_the_previous_lock(tmp_path, local_index):
    spec = write_spec(tmp_path, local_index.url)
    lock(tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in ("mlenv.lock", "pylock.cpu.toml")}

    spec.write_text(spec.read_text().replace('["tinylib"]', '["tinylib", "tinydep>=5"]'))
    result = lock(tmp_path, expect=5)
    assert "could not lock target 'cpu'" in result.stderr
    assert "tinydep" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) <= 6
    assert {name: (tmp_path / name).read_bytes() for name in before} == before


def test_unreachable_index_is_exit_6_naming_the_url(tmp_path):
    write_spec(tmp_path, "http://127.0.0.1:9/simple")
    result = lock(tmp_path, expect=6)
    assert "could not lock target 'cpu': cannot reach http://127.0.0.1:9/simple" in result.stderr
    assert "Connection refused" in result.stderr and "[[index]]" in result.stderr
    assert not (tmp_path / "mlenv.lock").exists()


def test_corrupt_lock_is_reported_with_the_fix(tmp_path, local_index):
    write_spec(tmp_path, local_index.url)
    (tmp_path / "mlenv.lock").write_text("[lock]\nversion = 1\n")
    result = run_mlenv("lock", "--check", cwd=tmp_path)
    assert result.returncode == 4 and "corrupt" in result.stderr and "mlenv lock" in result.stderr
    assert run_mlenv("doctor", cwd=tmp_path).returncode == 4
    lock(tmp_path)  # a plain lock recovers from it
    lock(tmp_path, "--check")


@pytest.mark.network
def test_lock_against_the_real_default_index(tmp_path):
    """One resolution through PyPI itself (reachable here and in CI)."""
    (tmp_path / "mlenv.toml").write_text(
        '[project]\nname = "real"\npython = "3.11"\ndependencies = ["six==1.17.0"]\n\n'
        '[targets.cpu]\nplatform = "linux/x86_64"\n'
    )
    result = run_mlenv("lock", cwd=tmp_path)
    if result.returncode != 0 and not IN_CI and "could not lock" in result.stderr:
        pytest.skip("PyPI unreachable from this machine")
    assert result.returncode == 0, result.stderr
    six = next(p for p in read(tmp_path, "mlenv.lock")["package"] if p["name"] == "six")
    assert six["index"] == "pypi"
    wheel = next(a for a in six["artifacts"] if a["url"].endswith(".whl"))
    assert wheel["sha256"] == "4721f391ed90541fddacab5acf947aa0d3dc7d27b2e1e8eda2be8970586c3274"


def test_check_and_plain_lock_run_without_typer(tmp_path, local_index):
    """The fast paths: `lock --check` of a fresh lock (CI hooks) is answered from digests alone, from
    any subfolder; a plain `mlenv lock` runs the lock command without typer."""
    import subprocess
    import sys

    spec = write_spec(tmp_path, local_index.url)
    lock(tmp_path)
    sub = tmp_path / "src" / "pkg"
    sub.mkdir(parents=True)

    def run(*args: str) -> list[str]:
        probe = (
            "import runpy, sys\n"
            f"sys.argv = ['mlenv', {', '.join(map(repr, args))}]\n"
            "try:\n    runpy.run_module('mlenv', run_name='__main__')\n"
            "except SystemExit as exit:\n    code = exit.code\n"
            "print('code', code, 'typer' in sys.modules, 'mlenv.spec' in sys.modules)\n"
        )
        output = subprocess.run([sys.executable, "-c", probe], cwd=sub, capture_output=True, text=True).stdout
        return output.split()[-4:]  # after what the command printed

    assert run("lock", "--check") == ["code", "0", "False", "False"]

    spec.write_text(spec.read_text() + "# a comment changes the digest, not the inputs\n")
    assert run("lock", "--check") == ["code", "0", "True", "True"]  # the full check decides, and finds it fresh
    spec.write_text(spec.read_text().replace('["tinylib"]', '["tinylib", "devtool"]'))
    assert run("lock", "--check") == ["code", "1", "True", "True"]
    # a plain `mlenv lock` with work to do runs the lock command without loading typer (nor pydantic)
    assert run("lock") == ["code", "0", "False", "True"]
    assert run("lock", "--check") == ["code", "0", "False", "False"]


# --- accelerator builds: routing to the right torch index, CUDA checked after resolving ----------------

def torch_spec(folder: Path, index, *, dependencies=("torch==2.5.1", "torchvision"), targets: str, extra: str = "",
               mirrors=("cpu", "cu124")) -> Path:
    """A spec whose PyTorch indexes are mirrors on the test server, declared as the README says."""
    mirror = "".join(f'[[index]]\nname = "pytorch-{b}"\nurl = "{index.build_url(b)}"\nexplicit = true\n\n'
                     for b in mirrors)
    return write_spec(folder, index.url, dependencies=dependencies, extra=mirror + extra, targets=targets)


CPU_GPU_MAC = (
    '[targets.cpu]\nplatform = "linux/x86_64"\n\n'
    '[targets.gpu]\nplatform = "linux/x86_64"\ncuda = "12.4"\n\n'
    '[targets.mac]\nplatform = "macos/arm64"\n'
)


def test_each_target_gets_the_torch_build_of_its_accelerator(tmp_path, torch_index):
    torch_spec(tmp_path, torch_index, targets=CPU_GPU_MAC)
    result = lock(tmp_path)
    assert "warning" not in result.stderr

    cpu, gpu, mac = (versions(tmp_path, t) for t in ("cpu", "gpu", "mac"))
    assert (cpu["torch"], cpu["torchvision"]) == ("2.5.1+cpu", "0.20.1+cpu")
    assert not any(name.startswith("nvidia-") for name in cpu), "a CPU target must not download CUDA wheels"
    assert (gpu["torch"], gpu["torchvision"]) == ("2.5.1+cu124", "0.20.1+cu124")
    assert gpu["nvidia-cuda-runtime-cu12"] == "12.4.127"
    assert mac["torch"] == "2.5.1" and not any(name.startswith("nvidia-") for name in mac)

    data = read(tmp_path, "mlenv.lock")
    torch = {p["version"]: p["index"] for p in data["package"] if p["name"] == "torch"}
    assert torch == {"2.5.1+cpu": "pytorch-cpu", "2.5.1+cu124": "pytorch-cu124", "2.5.1": "local"}
    gpu_target = next(t for t in data["target"] if t["name"] == "gpu")
    assert gpu_target["driver-min"] == "550.54.14"
    assert gpu_target["inputs"]["sources"] == {"torch": "pytorch-cu124", "torchvision": "pytorch-cu124"}
    lock(tmp_path, "--check")


def test_a_pinned_source_wins_and_a_cuda_13_build_fails_the_cuda_12_target(tmp_path, torch_index):
    # torch pinned to the default index on purpose: PyPI's newest torch is a CUDA 13 build
    torch_spec(tmp_path, torch_index, dependencies=("torch",), extra='[sources]\ntorch = "local"\n',
               targets='[targets.gpu]\nplatform = "linux/x86_64"\ncuda = "12.4"\n')
    result = lock(tmp_path, expect=5)
    assert "could not lock target 'gpu'" in result.stderr
    assert "nvidia-cuda-runtime 13.0.96 is a CUDA 13 build; target 'gpu' declares CUDA 12.4" in result.stderr
    assert "nvidia-nccl-cu13 2.27.7 is a CUDA 13 build" in result.stderr
    assert not (tmp_path / "mlenv.lock").exists()


def test_the_driver_floor_is_what_the_resolved_wheels_need(tmp_path, torch_index):
    torch_index.add("nvidia-cuda-nvrtc-cu12", "12.8.93")
    torch_index.add("fastkernels", "1.0", requires=["nvidia-cuda-nvrtc-cu12>=12.8"])
    torch_spec(tmp_path, torch_index, dependencies=("torch==2.5.1", "fastkernels"),
               targets='[targets.gpu]\nplatform = "linux/x86_64"\ncuda = "12.4"\n')
    result = lock(tmp_path)
    assert "nvidia-cuda-nvrtc-cu12 12.8.93 needs the CUDA 12.8 runtime: driver floor raised to 570.26" in result.stderr
    gpu = read(tmp_path, "mlenv.lock")["target"][0]
    assert (gpu["cuda"], gpu["driver-min"]) == ("12.4", "570.26")

    # doctor holds a machine to that floor: driver 550.90.07 runs CUDA 12.4, not these wheels fully
    doctor = run_mlenv("doctor", "--target", "gpu", "--json", cwd=tmp_path, env=gpu_env(tmp_path, "8xa100"))
    findings = json.loads(doctor.stdout)["findings"]
    driver = next(f for f in findings if f["check"] == "driver")
    assert (driver["expected"], driver["found"], driver["severity"]) == (">= 570.26", "550.90.07", "warning")


def test_an_unpublished_torch_and_cuda_pair_is_refused_before_the_network(tmp_path, torch_index):
    torch_spec(tmp_path, torch_index, dependencies=("torch==2.5.1",), mirrors=("cu128",),
               targets='[targets.gpu]\nplatform = "linux/x86_64"\ncuda = "12.8"\n')
    torch_index.close()  # the answer must not need the index
    result = lock(tmp_path, expect=5)
    assert "torch 2.5.1 (dependencies) was never published for CUDA 12.8 (cu128)" in result.stderr
    assert 'set cuda = "12.4" on target \'gpu\'' in result.stderr


def test_an_unreachable_pytorch_index_names_the_url_and_how_to_mirror_it(tmp_path, torch_index):
    write_spec(tmp_path, torch_index.url, dependencies=("torch==2.5.1",))  # no mirror: PyTorch's own index
    result = lock(tmp_path, expect=6)
    assert "cannot reach https://download.pytorch.org/whl/cpu" in result.stderr
    assert 'name = "pytorch-cpu"' in result.stderr and "/whl/cpu" in result.stderr


# --- failure reports, uv's warnings, direct URLs ---------------------------------------------------------

def test_every_failing_target_is_reported_with_the_groups_that_ask(tmp_path, local_index):
    spec = write_spec(tmp_path, local_index.url, dependencies=("tinydep>=1.1",),
                      targets='[targets.cpu]\nplatform = "linux/x86_64"\n\n[targets.mac]\nplatform = "macos/arm64"\n')
    spec.write_text(spec.read_text().replace('dev = ["devtool"]', 'dev = ["devtool", "tinydep<1.1"]'))
    result = lock(tmp_path, expect=5)
    assert "could not lock target 'cpu'" in result.stderr and "could not lock target 'mac'" in result.stderr
    assert "mlenv-lock-root" not in result.stderr
    assert "tinydep is required by dependencies: tinydep>=1.1; group 'dev': tinydep<1.1" in result.stderr
    assert "--debug" not in result.stderr, "nothing was left out, so --debug adds nothing"
    assert "Traceback" not in result.stderr


def test_uv_warnings_reach_the_user(tmp_path, local_index):
    write_spec(tmp_path, local_index.url, dependencies=("tinylib[fast]",))
    result = lock(tmp_path)
    assert "warning: cpu: uv:" in result.stderr and "does not have an extra named `fast`" in result.stderr


def test_a_direct_url_dependency_is_locked_with_its_hash(tmp_path, local_index):
    import hashlib

    wheel = local_index.add("urlpkg", "1.0", requires=["tinydep"])
    url = f"http://127.0.0.1:{local_index.port}/files/{wheel.name}"
    write_spec(tmp_path, local_index.url, dependencies=("tinylib", f"urlpkg @ {url}"))
    lock(tmp_path)
    urlpkg = next(p for p in read(tmp_path, "mlenv.lock")["package"] if p["name"] == "urlpkg")
    assert urlpkg["artifacts"] == [{"url": url, "sha256": hashlib.sha256(wheel.read_bytes()).hexdigest(),
                                    "size": wheel.stat().st_size}] or urlpkg["artifacts"][0]["sha256"] == \
        hashlib.sha256(wheel.read_bytes()).hexdigest()
    entry = next(p for p in read(tmp_path, "pylock.cpu.toml")["packages"] if p["name"] == "urlpkg")
    assert "index" not in entry and entry["wheels"][0]["url"] == url
    lock(tmp_path, "--check")
    lock(tmp_path)  # re-lock with the previous pylock as preferences: same answer


def test_a_mercurial_dependency_is_refused_with_the_reason(tmp_path, local_index):
    """git dependencies are locked by commit (tests/test_lock_git.py); other VCS uv cannot resolve."""
    write_spec(tmp_path, local_index.url, dependencies=("tinylib", "thing @ hg+https://example.invalid/o/thing"))
    result = lock(tmp_path, expect=3)
    assert "is a hg checkout; mlenv locks git repositories only" in result.stderr


def test_the_lock_records_the_digest_of_the_spec_bytes_it_resolved(tmp_path, local_index):
    """An edit made while `mlenv lock` runs must leave the lock stale, not fresh with the old content."""
    from mlenv.lock import lock_project
    from mlenv.spec import load_spec

    spec_file = write_spec(tmp_path, local_index.url)
    spec = load_spec(spec_file)
    spec_file.write_text(spec_file.read_text().replace('["tinylib"]', '["tinylib", "devtool"]'))  # the edit
    lock_project(spec)
    result = lock(tmp_path, "--check", expect=1)
    assert "dependencies: added devtool" in result.stderr


# --- alternatives: exclusive groups and modules two distributions install ----------------------------------

def test_two_distributions_of_one_module_fail_the_target(tmp_path, local_index):
    local_index.add("opencv-python", "4.10.0")
    local_index.add("opencv-python-headless", "4.10.0")
    write_spec(tmp_path, local_index.url, dependencies=("opencv-python", "opencv-python-headless"))
    result = lock(tmp_path, expect=5)
    assert "opencv-python and opencv-python-headless both install the module 'cv2'" in result.stderr


EXCLUSIVE = (
    '[project]\nname = "demo"\npython = "3.11"\ndependencies = ["tinylib"]\n'
    'exclusive-groups = [["tpu", "cpuonly"]]\n\n'
    '[dependency-groups]\ndev = ["devtool"]\ntpu = ["tensorflow"]\ncpuonly = ["tensorflow-cpu"]\n\n'
    '[[index]]\nname = "local"\nurl = "{url}"\ndefault = true\n\n'
    '[targets.cpu]\nplatform = "linux/x86_64"\n'
)


def test_exclusive_groups_are_locked_apart_and_never_installed_together(tmp_path, local_index):
    local_index.add("tensorflow", "2.17.0", requires=["tinydep"])
    local_index.add("tensorflow-cpu", "2.17.0", requires=["tinydep"])
    (tmp_path / "mlenv.toml").write_text(EXCLUSIVE.format(url=local_index.url))
    lock(tmp_path)
    assert versions(tmp_path, "cpu")["tinydep"] == "1.1"

    pylock = read(tmp_path, "pylock.cpu.toml")
    markers = {p["name"]: p.get("marker") for p in pylock["packages"]}
    assert markers["tensorflow"] == "'tpu' in dependency_groups"
    assert markers["tensorflow-cpu"] == "'cpuonly' in dependency_groups"
    assert markers["tinylib"] is None and markers["devtool"] == "'dev' in dependency_groups"

    venv = tmp_path / ".venv"
    both = run_mlenv("sync", "--group", "tpu", "--group", "cpuonly", cwd=tmp_path)
    assert both.returncode == 2 and "'tpu' and 'cpuonly' are alternatives" in both.stderr
    assert not venv.exists()
    doctor = run_mlenv("doctor", "--group", "tpu", "--group", "cpuonly", cwd=tmp_path)
    assert doctor.returncode == 2 and "alternatives" in doctor.stderr
    unknown = run_mlenv("sync", "--group", "tpus", cwd=tmp_path)
    assert unknown.returncode == 2 and "did you mean 'tpu'" in unknown.stderr

    # one alternative at a time: sync takes main, the shared groups and the one asked for
    run_mlenv("sync", "--group", "dev", "--group", "tpu", cwd=tmp_path, check=True)
    installed = sorted(p.name.split("-")[0] for p in venv.glob("lib/python*/site-packages/*.dist-info"))
    assert installed == ["devtool", "tensorflow", "tinydep", "tinylib"]
    run_mlenv("doctor", "--group", "dev", "--group", "tpu", cwd=tmp_path, check=True)
    run_mlenv("sync", cwd=tmp_path, check=True)  # no --group: no alternative
    installed = sorted(p.name.split("-")[0] for p in venv.glob("lib/python*/site-packages/*.dist-info"))
    assert installed == ["devtool", "tinydep", "tinylib"]


def test_an_alternative_that_needs_other_main_pins_says_so(tmp_path, local_index):
    local_index.add("tensorflow", "2.17.0")
    local_index.add("tensorflow-cpu", "2.16.0", requires=["tinydep<1.1"])
    (tmp_path / "mlenv.toml").write_text(EXCLUSIVE.format(url=local_index.url))
    result = lock(tmp_path, expect=5)
    assert "could not lock target 'cpu + group cpuonly'" in result.stderr
    assert "tinydep" in result.stderr and "resolved on top of the pins of the main dependencies" in result.stderr


def test_targets_that_resolve_alike_are_resolved_once_and_each_is_checked(tmp_path, local_index):
    targets = ('[targets.cpu]\nplatform = "linux/x86_64"\n\n[targets.big]\nplatform = "linux/x86_64"\ncpu-min = 16\n\n'
               '[targets.mac]\nplatform = "macos/arm64"\n')
    write_spec(tmp_path, local_index.url, targets=targets)
    result = lock(tmp_path, "--debug")
    assert "pip compile for target 'cpu, big'" in result.stderr or "pip compile for target 'big, cpu'" in result.stderr
    assert "pip compile for target 'cpu'" not in result.stderr and "pip compile for target 'mac'" in result.stderr
    assert versions(tmp_path, "cpu") == versions(tmp_path, "big")

    # nothing to do: answered from digests, without loading the CLI
    again = lock(tmp_path)
    assert "up to date; nothing to resolve" in again.stderr


def test_a_build_failure_shows_its_real_cause_without_debug(tmp_path, local_index):
    """An sdist whose build backend dies: the exception line is the reason, not a cut traceback."""
    import io
    import tarfile

    files = {
        "brokenpkg-1.0/pyproject.toml": '[build-system]\nrequires = []\nbuild-backend = "backend"\n'
                                        'backend-path = ["."]\n\n[project]\nname = "brokenpkg"\nversion = "1.0"\n'
                                        'dynamic = ["dependencies"]\n',  # uv must ask the backend
        "brokenpkg-1.0/backend.py": "import pkg_resources_of_the_past  # a backend that needs a gone module\n",
    }
    sdist = local_index.folder / "brokenpkg-1.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as archive:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    url = f"http://127.0.0.1:{local_index.port}/files/{sdist.name}"
    write_spec(tmp_path, local_index.url, dependencies=("tinylib", f"brokenpkg @ {url}"))
    result = lock(tmp_path, expect=5)
    assert "could not lock target 'cpu'" in result.stderr
    assert "No module named 'pkg_resources_of_the_past'" in result.stderr
    assert 'File "' not in result.stderr, "traceback frames say where, not why"
