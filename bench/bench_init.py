"""`mlenv init` on very large requirements files: linear in the lines, and a 100k-line file in < 2 s.

Issue 8 (item 12): de-duplicating with list membership made `init` quadratic (32k lines: 27 s, 100k
lines: never finished).  Goal: a 100k-line requirements file in under 2 s of wall time.  The 10k and
32k cases show the growth: linear means the 100k case takes ~10x the 10k one.

Three shapes of file, each a fresh folder with one `requirements.txt`, run as
`init --yes --force --target cpu=linux/x86_64` (no GPU probing of this machine decides anything):
- `package-NNNNNN>=X.Y`: distinct names, few distinct version bounds (10k, 32k, 100k lines);
- pip freeze: `package-NNNNNN==A.B.C` with every version distinct, the worst case for any caching;
- pip-compile --generate-hashes: 100k physical lines, each requirement continued over three
  `--hash` lines and followed by a `# via` comment (20k requirements).

``MLENV_BENCH_INIT_BASELINE=/path/to/other/checkout`` also runs every 100k case with that checkout's
mlenv (on PYTHONPATH), interleaved with this one: before/after numbers from one run.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Row, command_runner, interleave, print_table, python, repetitions  # noqa: E402

BENCHMARK = "init"
GOAL_SECONDS = 2.0
SIZES = (10_000, 32_000, 100_000)
HERE = Path(__file__).resolve().parent.parent


def requirements(lines: int) -> str:
    return "".join(f"package-{number:06d}>={number % 7}.{number % 3}\n" for number in range(lines))


def pip_freeze(lines: int) -> str:
    # (n mod 23, n mod 97, n mod 101) differ for every n below 23 * 97 * 101 = 225,331
    return "".join(f"package-{n:06d}=={n % 23}.{n % 97}.{n % 101}\n" for n in range(lines))


def pip_compile_hashes(lines: int) -> str:
    out: list[str] = []
    for n in range(lines // 5):
        out.append(f"package-{n:06d}=={n % 23}.{n % 97}.{n % 101} \\")
        digests = [hashlib.sha256(f"{n}-{k}".encode()).hexdigest() for k in range(3)]
        out += [f"    --hash=sha256:{digest} \\" for digest in digests[:2]] + [f"    --hash=sha256:{digests[2]}"]
        out.append("    # via -r requirements.in")
    return "\n".join(out) + "\n"


def cpu_seconds(run) -> float:
    """User + system CPU time the child process of ``run()`` used."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    run()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> list[Row]:
    repeat = repetitions(5, 3)
    baseline = os.environ.get("MLENV_BENCH_INIT_BASELINE")
    checkouts = {"": str(HERE)}
    if baseline:
        checkouts[f" [baseline {Path(baseline).name}]"] = str(Path(baseline).resolve())
    files = {f"{size:,} lines `name>=X.Y`": requirements(size) for size in SIZES}
    files["100,000 lines pip freeze (every version distinct)"] = pip_freeze(100_000)
    files["100,000 lines pip-compile --generate-hashes (20,000 requirements)"] = pip_compile_hashes(100_000)
    with tempfile.TemporaryDirectory(prefix="mlenv-bench-init-") as tmp:
        cases = {}
        for position, (shape, text) in enumerate(files.items()):
            folder = Path(tmp) / f"case-{position}"
            folder.mkdir()
            (folder / "requirements.txt").write_text(text)
            for label, checkout in checkouts.items():
                if label and not shape.startswith("100,000"):
                    continue
                env = {**os.environ, "PYTHONPATH": checkout}
                # run from the project folder: `python -m` puts the working folder first on sys.path
                cases[f"mlenv init, {shape}{label}"] = command_runner(
                    [python(), "-m", "mlenv", "init", "--yes", "--force", "--target", "cpu=linux/x86_64",
                     "--path", str(folder)], cwd=folder, env=env)
        samples = interleave(cases, repeat=repeat, warmup=1)
        # CPU time of one more run each: on a shared machine it says what wall time cannot
        cpu = {name: cpu_seconds(run) for name, run in cases.items()}

    rows = [Row(BENCHMARK, name, times, note=f"CPU {cpu[name]:.2f} s") for name, times in samples.items()]
    smallest = rows[0].median
    for row in rows[1:3]:
        row.ratio = row.median / smallest  # linear growth: ~3.2x and ~10x
    for row in rows:
        if "100,000" in row.case and "[baseline" not in row.case:
            row.goal = f"< {GOAL_SECONDS:g} s"
            row.met = row.median < GOAL_SECONDS
    print_table("mlenv init on large requirements files (wall time, interleaved)", rows,
                caption="ratio = median / median of the 10,000-line case (linear growth: 3.2x, 10x)")
    return rows


if __name__ == "__main__":
    main()
