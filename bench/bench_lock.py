"""`mlenv lock` beside `uv pip compile --universal --generate-hashes`, and `mlenv lock --check`.

A typical ML project (numpy, pandas, scikit-learn, matplotlib, torch, transformers) with two targets:
`cpu` (linux/x86_64) and `cuda` (linux/x86_64, CUDA 13.0).  The PyTorch download indexes are not
reachable on the benchmark machine, so torch is pinned to PyPI in `[sources]` (PyPI's torch is a
CUDA 13 build, which the `cuda` target's check accepts); both targets then share platform and
sources and mlenv resolves them once.

Goals (issues 2 and 9):
- `mlenv lock` with a warm uv cache takes at most 0.8x the wall time of `uv pip compile --universal
  --generate-hashes` on the same requirements (interleaved runs, median; the lock files are deleted
  before every fresh run so mlenv really resolves), and at most 1.5x its CPU time (user + system of
  the process and everything it waited for);
- `mlenv lock` with nothing to do answers in under 150 ms, `mlenv lock --check` in under 100 ms.

Every run uses private uv caches in a temporary folder (deleted afterwards), so the first run of
each tool is a true cold start whose cache size shows what resolution downloads: metadata only
(PEP 658 `.metadata` files and index pages), never the multi-GB wheels.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    Row,
    command_runner,
    in_process,
    interleave,
    print_table,
    python,
    repetitions,
    run_timed,
)

BENCHMARK = "lock"
GOAL_LOCK_RATIO = 0.8
GOAL_CPU_RATIO = 1.5
GOAL_NOTHING_MS = 150.0
GOAL_CHECK_MS = 100.0
MAX_CACHE_MB = 300  # the torch wheel alone is ~900 MB: a cache this small proves no wheel was fetched

OFFLINE_UV = "uv pip compile --universal --generate-hashes --offline"
OFFLINE_MLENV = "mlenv lock with UV_OFFLINE=1 (no lock files)"

DEPENDENCIES = ["numpy", "pandas", "scikit-learn", "matplotlib", "torch", "transformers"]
PYTHON = "3.11"

SPEC = f"""\
[project]
name = "typical-ml"
python = "{PYTHON}"
dependencies = [{", ".join(f'"{d}"' for d in DEPENDENCIES)}]

[[index]]
name = "pypi"
url = "https://pypi.org/simple"
default = true

[sources]
torch = "pypi"

[targets.cpu]
platform = "linux/x86_64"

[targets.cuda]
platform = "linux/x86_64"
cuda = "13.0"
"""


def cpu_runner(cmd, *, cwd: Path, env: dict, before=None):
    """Like ``command_runner`` but returns the CPU seconds (user + system) of the command and its children."""
    import resource
    import subprocess

    def run() -> float:
        if before is not None:
            before()
        start = resource.getrusage(resource.RUSAGE_CHILDREN)
        result = subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True)
        end = resource.getrusage(resource.RUSAGE_CHILDREN)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(map(str, cmd))} exited {result.returncode}: {result.stderr[-400:]}")
        return (end.ru_utime - start.ru_utime) + (end.ru_stime - start.ru_stime)

    return run


def mlenv_command() -> list[str]:
    script = Path(sys.executable).parent / "mlenv"
    return [python(), str(script)] if script.is_file() else [python(), "-m", "mlenv"]


def uv_binary() -> str:
    from uv import find_uv_bin

    return find_uv_bin()


def python_env(pycache: Path) -> dict[str, str]:
    """The environment every Python subprocess runs in: bytecode cached (in ``pycache``, outside the
    repository), as in an installed mlenv, whose wheel install compiled it.  With
    PYTHONDONTWRITEBYTECODE set (as on the team's machines) an editable mlenv would recompile each of
    its modules on every run: tens of milliseconds that no user pays."""
    env = {**os.environ, "PYTHONPYCACHEPREFIX": str(pycache)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def tool_env(cache: Path, pycache: Path) -> dict[str, str]:
    env = {**python_env(pycache), "UV_CACHE_DIR": str(cache), "NO_COLOR": "1", "UV_NO_PROGRESS": "1"}
    env.pop("VIRTUAL_ENV", None)
    return env


def dir_size(path: Path) -> tuple[int, int]:
    """(total bytes, largest file bytes) under ``path``."""
    total = largest = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                size = os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
            total += size
            largest = max(largest, size)
    return total, largest


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def remove_lock_files(project: Path) -> None:
    (project / "mlenv.lock").unlink(missing_ok=True)
    for pylock in project.glob("pylock.*.toml"):
        pylock.unlink()


def lock_breakdown(project: Path, cache: Path, rounds: int) -> list[Row]:
    """Where `mlenv lock` spends its time: each uv pass per target, timed inside one process."""
    from mlenv.lock import lock_project
    from mlenv.lock import resolve as resolve_module
    from mlenv.spec import load_spec

    original = resolve_module._run_uv
    spans: list[tuple[str, str, float, float]] = []
    lock = threading.Lock()

    def timed_run_uv(args, cwd, target, *rest):
        which = "pass 1 (pylock, hashes)" if "pylock.toml" in args else "pass 2 (annotations)"
        start = time.perf_counter()
        try:
            return original(args, cwd, target, *rest)
        finally:
            with lock:
                spans.append((target, which, start, time.perf_counter()))

    # Looking uv up once here initialises sysconfig before the worker threads do it concurrently
    # (uv.find_uv_bin() racing in two threads can read an empty config var; see bench/README.md).
    resolve_module.uv_binary()
    old_cache = os.environ.get("UV_CACHE_DIR")
    os.environ["UV_CACHE_DIR"] = str(cache)
    resolve_module._run_uv = timed_run_uv
    per_case: dict[str, list[float]] = {}
    uv_runs: list[int] = []
    try:
        spec = load_spec(project / "mlenv.toml")
        for _ in range(rounds):
            remove_lock_files(project)
            spans.clear()
            start = time.perf_counter()
            lock_project(spec)
            total = time.perf_counter() - start
            uv_runs.append(len(spans))
            for target, which, begin, end in sorted(spans):
                per_case.setdefault(f"{target}: uv {which}", []).append(end - begin)
            # the targets run in parallel threads; the passes inside one target run in sequence
            critical = max(
                sum(end - begin for t, _w, begin, end in spans if t == target) for target in {s[0] for s in spans}
            )
            per_case.setdefault("sum of all uv passes (if run one after another)", []).append(
                sum(end - begin for *_x, begin, end in spans))
            per_case.setdefault("longest target (pass 1 + pass 2)", []).append(critical)
            per_case.setdefault("lock_project() total, in process", []).append(total)
            per_case.setdefault("mlenv's own Python work (total - longest target)", []).append(total - critical)
    finally:
        resolve_module._run_uv = original
        if old_cache is None:
            os.environ.pop("UV_CACHE_DIR", None)
        else:
            os.environ["UV_CACHE_DIR"] = old_cache
    rows = [Row("lock-breakdown", name, times) for name, times in per_case.items()]
    # issue 9: targets that share a platform and sources are resolved once (cpu and cuda here)
    total_row = next(row for row in rows if row.case.startswith("lock_project() total"))
    total_row.note = f"uv runs per lock: {sorted(set(uv_runs))} for {len(spec.targets)} targets"
    total_row.goal = "1 uv run (shared platform and sources)"
    total_row.met = set(uv_runs) == {1}
    return rows


def single_target_uv(project: Path, cache: Path, rounds: int) -> list[Row]:
    """uv alone for one platform (what pass 1 does, without mlenv), online and offline, for scale."""
    uv = uv_binary()
    work = project / "single"
    work.mkdir(exist_ok=True)
    (work / "requirements.in").write_text("\n".join(DEPENDENCIES) + "\n")
    out = work / "out.txt"
    env = tool_env(cache, project / "pycache")

    def clean():
        out.unlink(missing_ok=True)

    base = [uv, "pip", "compile", "requirements.in", "--python-version", PYTHON, "-q", "-o", "out.txt"]
    cases = {
        "uv pip compile, one platform (x86_64-manylinux_2_28)": command_runner(
            [*base, "--python-platform", "x86_64-manylinux_2_28"], cwd=work, env=env, before=clean),
        "same, --offline (no revalidation: pure resolver time)": command_runner(
            [*base, "--python-platform", "x86_64-manylinux_2_28", "--offline"], cwd=work, env=env, before=clean),
    }
    samples = interleave(cases, repeat=rounds, warmup=1)
    return [Row("lock-breakdown", name, times) for name, times in samples.items()]


def main() -> list[Row]:
    repeat = repetitions(7, 3)
    check_repeat = repetitions(21, 9)
    mlenv = mlenv_command()
    uv = uv_binary()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="mlenv-bench-lock-") as tmp:
        tmp_path = Path(tmp)
        project = tmp_path / "project"
        project.mkdir()
        (project / "mlenv.toml").write_text(SPEC)
        compile_dir = tmp_path / "uv-compile"
        compile_dir.mkdir()
        (compile_dir / "requirements.in").write_text("\n".join(DEPENDENCIES) + "\n")
        mlenv_cache, uv_cache = tmp_path / "cache-mlenv", tmp_path / "cache-uv"
        pycache = tmp_path / "pycache"
        mlenv_env, uv_env = tool_env(mlenv_cache, pycache), tool_env(uv_cache, pycache)

        uv_compile = [uv, "pip", "compile", "requirements.in", "--universal", "--generate-hashes",
                      "--python-version", PYTHON, "-q", "-o", "requirements.txt"]
        compiled = compile_dir / "requirements.txt"

        # Cold: empty private caches.  Their size afterwards shows that only metadata was fetched.
        cold_mlenv = run_timed([*mlenv, "lock"], cwd=project, env=mlenv_env)
        cold_uv = run_timed(uv_compile, cwd=compile_dir, env=uv_env)
        mlenv_bytes, mlenv_largest = dir_size(mlenv_cache)
        uv_bytes, uv_largest = dir_size(uv_cache)
        rows.append(Row(BENCHMARK, "cold cache: mlenv lock", [cold_mlenv],
                        note=f"uv cache after: {_mb(mlenv_bytes)}, largest file {_mb(mlenv_largest)}",
                        goal=f"cache < {MAX_CACHE_MB} MB (metadata only)", met=mlenv_bytes < MAX_CACHE_MB * 1e6))
        rows.append(Row(BENCHMARK, "cold cache: uv pip compile --universal --generate-hashes", [cold_uv],
                        note=f"uv cache after: {_mb(uv_bytes)}, largest file {_mb(uv_largest)}",
                        goal=f"cache < {MAX_CACHE_MB} MB (metadata only)", met=uv_bytes < MAX_CACHE_MB * 1e6))

        def fresh_project():
            remove_lock_files(project)

        def fresh_compile():
            compiled.unlink(missing_ok=True)

        cases = {
            "uv pip compile --universal --generate-hashes": command_runner(
                uv_compile, cwd=compile_dir, env=uv_env, before=fresh_compile),
            "mlenv lock (no lock files: full resolve)": command_runner(
                [*mlenv, "lock"], cwd=project, env=mlenv_env, before=fresh_project),
            "mlenv lock (nothing changed)": command_runner([*mlenv, "lock"], cwd=project, env=mlenv_env),
            "uv pip compile, output exists (uv's re-lock)": command_runner(uv_compile, cwd=compile_dir, env=uv_env),
            # With every cached response still fresh (no revalidation round trips) only the resolver
            # and process costs remain: what a re-lock costs where the index sends Cache-Control.
            OFFLINE_UV: command_runner([*uv_compile, "--offline"], cwd=compile_dir, env=uv_env, before=fresh_compile),
            OFFLINE_MLENV: command_runner([*mlenv, "lock"], cwd=project, env={**mlenv_env, "UV_OFFLINE": "1"},
                                          before=fresh_project),
        }
        samples = interleave(cases, repeat=repeat, warmup=1)
        warm = [Row(BENCHMARK, f"warm: {name}", times) for name, times in samples.items()]
        by_case = {row.case: row for row in warm}
        uv_median = by_case["warm: uv pip compile --universal --generate-hashes"].median
        offline_uv_median = by_case[f"warm: {OFFLINE_UV}"].median
        for row in warm:
            if row.case == f"warm: {OFFLINE_MLENV}":
                row.ratio = row.median / offline_uv_median
                row.note = "ratio against uv --offline"
            elif row.case.startswith("warm: mlenv"):
                row.ratio = row.median / uv_median
        full = by_case["warm: mlenv lock (no lock files: full resolve)"]
        full.goal = f"<= {GOAL_LOCK_RATIO}x uv"
        full.met = full.ratio <= GOAL_LOCK_RATIO
        nothing = by_case["warm: mlenv lock (nothing changed)"]
        nothing.goal = f"< {GOAL_NOTHING_MS:.0f} ms"
        nothing.met = nothing.median * 1000 < GOAL_NOTHING_MS
        rows += warm

        # CPU time (user + system, children included), the same runs side by side
        cpu_cases = {
            "cpu: uv pip compile --universal --generate-hashes": cpu_runner(
                uv_compile, cwd=compile_dir, env=uv_env, before=fresh_compile),
            "cpu: mlenv lock (no lock files: full resolve)": cpu_runner(
                [*mlenv, "lock"], cwd=project, env=mlenv_env, before=fresh_project),
        }
        cpu_samples = interleave(cpu_cases, repeat=repeat, warmup=0)
        cpu_rows = [Row(BENCHMARK, name, times, note="CPU seconds, not wall") for name, times in cpu_samples.items()]
        cpu_rows[1].ratio = cpu_rows[1].median / cpu_rows[0].median
        cpu_rows[1].goal = f"<= {GOAL_CPU_RATIO}x uv CPU"
        cpu_rows[1].met = cpu_rows[1].ratio <= GOAL_CPU_RATIO
        rows += cpu_rows
        print_table(
            "mlenv lock vs uv pip compile (typical ML project, 2 targets cpu + cuda13.0, uv "
            f"{_uv_version(uv)})",
            rows,
            caption="ratio = median / median of warm `uv pip compile --universal --generate-hashes`; "
                    "warm runs interleaved",
        )

        try:
            breakdown = lock_breakdown(project, mlenv_cache, rounds=repetitions(3, 1))
        except AttributeError as exc:  # it hooks a private function of the resolver, which may move
            print(f"lock breakdown unavailable ({exc}); update lock_breakdown() in bench/bench_lock.py")
            breakdown = []
            remove_lock_files(project)
            run_timed([*mlenv, "lock"], cwd=project, env=mlenv_env)
        breakdown += single_target_uv(tmp_path, mlenv_cache, rounds=repetitions(3, 1))
        print_table("Where mlenv lock's time goes (in process, warm cache; targets resolve in parallel threads)",
                    breakdown)
        rows += breakdown

        # the project is locked now (the breakdown left fresh lock files)
        check_rows = check_benchmark(project, mlenv, check_repeat, python_env(pycache))
        rows += check_rows
    return rows


FAST_PATH_PROBE = """\
from mlenv.spec import load_spec
from mlenv.lock import check_lock, read_lock
spec = load_spec(None)
changes = check_lock(spec, read_lock(spec.root))
print("stale" if changes else "mlenv.lock is up to date")
"""


def check_benchmark(project: Path, mlenv: list[str], repeat: int, env: dict[str, str]) -> list[Row]:
    from mlenv.lock import check_lock, read_lock
    from mlenv.spec import load_spec

    cases = {
        "python -c pass (interpreter floor)": command_runner([python(), "-c", "pass"], cwd=project, env=env),
        'python -c "import typer"': command_runner([python(), "-c", "import typer"], cwd=project, env=env),
        "mlenv --version (typer app, no command run)": command_runner([*mlenv, "--version"], cwd=project, env=env),
        "python -c: load_spec + read_lock + check_lock (no typer)": command_runner(
            [python(), "-c", FAST_PATH_PROBE], cwd=project, env=env),
        "mlenv lock --check": command_runner([*mlenv, "lock", "--check"], cwd=project, env=env),
    }
    samples = interleave(cases, repeat=repeat, warmup=2)
    rows = [Row("lock-check", name, times) for name, times in samples.items()]
    cli = rows[-1]
    cli.goal = f"< {GOAL_CHECK_MS:.0f} ms"
    cli.met = cli.median * 1000 < GOAL_CHECK_MS

    spec = load_spec(project / "mlenv.toml")
    lock = read_lock(spec.root)
    assert not check_lock(spec, lock), "the benchmark project should be freshly locked"
    rows.append(Row("lock-check", "in process: check_lock(spec, lock)",
                    in_process(lambda: check_lock(spec, lock), 200)))
    rows.append(Row("lock-check", "in process: load_spec + read_lock + check_lock", in_process(
        lambda: check_lock(load_spec(project / "mlenv.toml"), read_lock(project)), 50)))
    print_table("mlenv lock --check (fresh lock, no network)", rows,
                caption="subprocess rows: wall time, interleaved; in-process rows: per call after a warm-up call")
    return rows


def _uv_version(uv: str) -> str:
    import subprocess

    return subprocess.run([uv, "--version"], capture_output=True, text=True).stdout.split()[1]


if __name__ == "__main__":
    main()
