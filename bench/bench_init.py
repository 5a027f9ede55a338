"""`mlenv init` on very large requirements files: the time must grow linearly with the lines.

Issue 8 (item 12): de-duplicating with list membership made `init` quadratic (32k lines: 27 s, 100k
lines: never finished).  Goal: a 100k-line requirements file in under 2 s of wall time.  The 10k and
32k cases show the growth: linear means the 100k case takes ~10x the 10k one.

Each case is a fresh folder with one `requirements.txt` of distinct `package-NNNNNN>=X.Y` lines;
`init --yes --force --target cpu=linux/x86_64` (no GPU probing of this machine decides anything).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Row, command_runner, interleave, print_table, python, repetitions  # noqa: E402

BENCHMARK = "init"
GOAL_SECONDS = 2.0
SIZES = (10_000, 32_000, 100_000)


def requirements(lines: int) -> str:
    return "".join(f"package-{number:06d}>={number % 7}.{number % 3}\n" for number in range(lines))


def cpu_seconds(run) -> float:
    """User + system CPU time the child process of ``run()`` used."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    run()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> list[Row]:
    repeat = repetitions(5, 3)
    with tempfile.TemporaryDirectory(prefix="mlenv-bench-init-") as tmp:
        cases = {}
        for size in SIZES:
            folder = Path(tmp) / f"lines-{size}"
            folder.mkdir()
            (folder / "requirements.txt").write_text(requirements(size))
            cases[f"mlenv init, {size:,} requirement lines"] = command_runner(
                [python(), "-m", "mlenv", "init", "--yes", "--force", "--target", "cpu=linux/x86_64",
                 "--path", str(folder)])
        samples = interleave(cases, repeat=repeat, warmup=1)
        # CPU time of one more run each: on a shared machine it says what wall time cannot
        cpu = {name: cpu_seconds(run) for name, run in cases.items()}

    rows = [Row(BENCHMARK, name, times, note=f"CPU {cpu[name]:.2f} s") for name, times in samples.items()]
    smallest = rows[0].median
    for row in rows[1:]:
        row.ratio = row.median / smallest  # linear growth: ~3.2x and ~10x
    rows[-1].goal = f"< {GOAL_SECONDS:g} s"
    rows[-1].met = rows[-1].median < GOAL_SECONDS
    print_table("mlenv init on large requirements files (wall time, interleaved)", rows,
                caption="ratio = median / median of the 10,000-line case (linear growth: 3.2x, 10x)")
    return rows


if __name__ == "__main__":
    main()
