"""Run every benchmark in bench/ and print one table per benchmark.

    python bench/run.py                 # everything (a few minutes on 2 cores)
    python bench/run.py --quick         # fewer repetitions, for a smoke run
    python bench/run.py --only lock     # one benchmark (repeatable: --only cli --only lock)
    python bench/run.py --json out.json # also write every row as JSON
    python bench/run.py --markdown      # also print each table as Markdown (for bench/README.md)

A benchmark is a module ``bench/bench_<name>.py`` with ``main()`` that runs it, prints its own
table and returns its rows.  ``main`` may take a ``quick`` keyword; ``MLENV_BENCH_QUICK`` is set to
1 or 0 either way.  A module that cannot run here says so by raising ``common.Skip`` (or
``sys.exit("reason")``; a missing optional module counts too): it is reported as skipped.  Any
other exception is reported as failed with its reason.  Either way the run goes on; the exit code
is 1 when any module failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import inspect
import json
import os
import sys
import time
import traceback
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import common  # noqa: E402

# the foundation benchmarks first, the slow ones (containers) last
PREFERRED_ORDER = ["cli", "lock", "sweep", "image"]


def discover() -> dict[str, Path]:
    found = {path.stem.removeprefix("bench_"): path for path in sorted(BENCH_DIR.glob("bench_*.py"))}
    order = [name for name in PREFERRED_ORDER if name in found] + sorted(set(found) - set(PREFERRED_ORDER))
    return {name: found[name] for name in order}


def load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def call_main(module, quick: bool):
    main = getattr(module, "main", None)
    if main is None:
        raise RuntimeError(f"{module.__name__} has no main()")
    if "quick" in inspect.signature(main).parameters:
        return main(quick=quick)
    return main()


def row_dict(row) -> dict:
    if hasattr(row, "as_dict"):
        return row.as_dict()
    if dataclasses.is_dataclass(row):
        return dataclasses.asdict(row)
    if isinstance(row, dict):
        return row
    return {"value": repr(row)}


def goals(rows) -> tuple[int, int]:
    """(met, missed) over the rows that carry a goal verdict."""
    verdicts = [row_dict(row).get("met") for row in rows or []]
    return sum(v is True for v in verdicts), sum(v is False for v in verdicts)


def reason(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text if len(text) < 400 else text[:400] + " ..."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="run only this benchmark (cli, lock, sweep, image, ...); repeatable")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write every row to this JSON file")
    parser.add_argument("--markdown", action="store_true", help="also print the tables as Markdown")
    parser.add_argument("--debug", action="store_true", help="print the traceback of a failing module")
    args = parser.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    console = Console() if sys.stdout.isatty() else Console(width=160)
    available = discover()
    wanted = [name.removeprefix("bench_").removesuffix(".py") for name in args.only]
    unknown = [name for name in wanted if name not in available]
    if unknown:
        console.print(f"[red]error:[/] unknown benchmark {', '.join(unknown)}; "
                      f"available: {', '.join(available)}")
        return 2
    selected = {name: path for name, path in available.items() if not wanted or name in wanted}

    os.environ[common.QUICK_ENV] = "1" if args.quick else "0"
    load_before = os.getloadavg()
    console.print(f"[bold]mlenv benchmarks[/]  {datetime.date.today().isoformat()}  "
                  f"{'quick' if args.quick else 'full'} run")
    console.print(f"machine: {common.machine()}")
    console.print(f"load average before: {load_before[0]:.2f} (other work on the machine inflates every "
                  "number; interleaved repetitions keep the comparisons fair)\n")

    summary = []
    all_rows: dict[str, list] = {}
    failed = False
    for name, path in selected.items():
        console.rule(f"bench_{name}")
        start = time.perf_counter()
        status, detail, rows = "ok", "", []
        try:
            module = load(name, path)
            rows = call_main(module, args.quick) or []
        except KeyboardInterrupt:
            console.print("[red]interrupted[/]")
            return 130
        except SystemExit as exc:  # a module that decides it cannot run here
            status, detail = ("ok", "") if exc.code in (0, None) else ("skipped", str(exc.code))
        except (common.Skip, ModuleNotFoundError) as exc:  # missing service or optional dependency
            status, detail = "skipped", reason(exc)
        except BaseException as exc:  # noqa: BLE001 - one broken benchmark must not stop the others
            status, detail, failed = "failed", reason(exc), True
            if args.debug:
                traceback.print_exc()
        elapsed = time.perf_counter() - start
        if status != "ok":
            console.print(f"[yellow]{name}: {status}[/] - {detail}")
        all_rows[name] = [row_dict(row) for row in rows]
        summary.append((name, status, elapsed, goals(rows), detail))
        if args.markdown and rows and all(isinstance(row, common.Row) for row in rows):
            console.print(common.markdown_table(rows), markup=False, highlight=False, soft_wrap=True)
        console.print()

    table = Table(title="Summary", title_justify="left")
    for column in ("benchmark", "status", "seconds", "goals met", "goals missed", "reason"):
        table.add_column(column, justify="right" if column in ("seconds", "goals met", "goals missed") else "left",
                         overflow="fold")
    for name, status, elapsed, (met, missed), detail in summary:
        colour = {"ok": "green", "skipped": "yellow", "failed": "red"}[status]
        table.add_row(name, f"[{colour}]{status}[/]", f"{elapsed:.1f}", str(met),
                      f"[red]{missed}[/]" if missed else "0", detail)
    console.print(table)
    console.print(f"load average after: {os.getloadavg()[0]:.2f}")

    if args.json:
        args.json.write_text(json.dumps({
            "date": datetime.date.today().isoformat(),
            "machine": common.machine(),
            "quick": args.quick,
            "results": all_rows,
        }, indent=2, default=str) + "\n")
        console.print(f"rows written to {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
