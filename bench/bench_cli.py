"""CLI startup: `mlenv --help` and `mlenv --version` beside a bare typer hello-world app.

Goal (issue 2): `mlenv --help` takes at most 1.3x the wall time of a one-command typer app's
`--help`, run by the same interpreter in the same session (interleaved repetitions, median).
`python -c pass` and `python -c "import typer"` show the floor every Python CLI pays here.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Row, command_runner, interleave, print_table, python, repetitions  # noqa: E402

BENCHMARK = "cli"
GOAL_RATIO = 1.3

HELLO_APP = '''\
import typer

app = typer.Typer()


@app.command()
def hello(name: str = "world") -> None:
    """Say hello."""
    print(f"hello {name}")


if __name__ == "__main__":
    app()
'''


def mlenv_command() -> list[str]:
    """The installed console script run by this interpreter (no PATH shim in between), else -m."""
    script = Path(sys.executable).parent / "mlenv"
    if script.is_file():
        return [python(), str(script)]
    return [python(), "-m", "mlenv"]


def main() -> list[Row]:
    repeat = repetitions(15, 7)
    with tempfile.TemporaryDirectory(prefix="mlenv-bench-cli-") as tmp:
        hello = Path(tmp) / "hello.py"
        hello.write_text(HELLO_APP)
        mlenv = mlenv_command()
        cases = {
            "python -c pass": command_runner([python(), "-c", "pass"]),
            'python -c "import typer"': command_runner([python(), "-c", "import typer"]),
            "hello.py --help (typer baseline)": command_runner([python(), str(hello), "--help"]),
            "hello.py --name x (typer runs a command)": command_runner([python(), str(hello), "--name", "x"]),
            "mlenv --help": command_runner([*mlenv, "--help"]),
            "mlenv --version": command_runner([*mlenv, "--version"]),
            "mlenv lock --help": command_runner([*mlenv, "lock", "--help"]),
        }
        samples = interleave(cases, repeat=repeat, warmup=2)

    rows = [Row(BENCHMARK, name, times) for name, times in samples.items()]
    by_case = {row.case: row for row in rows}
    baseline = by_case["hello.py --help (typer baseline)"].median
    for name in ("mlenv --help", "mlenv --version", "mlenv lock --help"):
        row = by_case[name]
        row.ratio = row.median / baseline
        if name == "mlenv --help":
            row.goal = f"<= {GOAL_RATIO}x hello --help"
            row.met = row.ratio <= GOAL_RATIO
    print_table(
        "mlenv CLI startup (wall time of a subprocess, interleaved, same interpreter)",
        rows,
        caption="ratio = median / median of the typer hello-world app's --help; mlenv runs as "
        + " ".join(Path(part).name for part in mlenv) + " (the console script run directly, no PATH shim)",
    )
    return rows


if __name__ == "__main__":
    main()
