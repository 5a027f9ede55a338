"""`mlenv ci init`: writing, re-checking and rendering the workflow of a two-target project.

The lock job of every generated workflow runs `mlenv ci init --check`, so its time is paid on each
CI run; `mlenv --help` is the baseline (the cost of starting mlenv at all).  The project has no
dependencies (locking it needs no network) and two targets, cpu and cuda 12.4, with a notebook.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    Row,
    command_runner,
    in_process,
    interleave,
    print_table,
    python,
    repetitions,
)

BENCHMARK = "ci"
SPEC = """[project]
name = "bench"
python = "3.11"
dependencies = []

[targets.cpu]
platform = "linux/x86_64"

[targets.gpu]
platform = "linux/x86_64"
cuda = "12.4"

[ci]
notebooks = ["train.ipynb"]
"""


def main() -> list[Row]:
    repeat = repetitions(7, 3)
    with tempfile.TemporaryDirectory(prefix="mlenv-bench-ci-") as tmp:
        root = Path(tmp)
        (root / "mlenv.toml").write_text(SPEC)
        (root / "train.ipynb").write_text("{}")
        mlenv = [python(), "-m", "mlenv"]
        command_runner([*mlenv, "lock"], cwd=root)()
        workflow = root / ".github" / "workflows" / "mlenv.yml"
        samples = interleave({
            "mlenv --help (baseline)": command_runner([*mlenv, "--help"], cwd=root),
            "mlenv ci init, writing the workflow": command_runner(
                [*mlenv, "ci", "init"], cwd=root, before=lambda: workflow.unlink(missing_ok=True)),
            "mlenv ci init --check, up to date": command_runner([*mlenv, "ci", "init", "--check"], cwd=root),
        }, repeat=repeat, warmup=1)

        from mlenv import ci
        from mlenv.lock import read_lock
        from mlenv.spec import load_spec

        spec = load_spec(root)
        lock = read_lock(root)
        render = in_process(lambda: ci.render_github(spec, lock), repeat=repeat * 3)

    rows = [Row(BENCHMARK, name, times) for name, times in samples.items()]
    baseline = rows[0].median
    for row in rows[1:]:
        row.ratio = row.median / baseline
    rows.append(Row(BENCHMARK, "render_github in process (spec and lock loaded)", render))
    print_table("mlenv ci init (wall time, interleaved)", rows, caption="ratio = median / median of mlenv --help")
    return rows


if __name__ == "__main__":
    main()
