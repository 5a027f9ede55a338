"""The summary printed after a sweep (and the plan printed by --dry-run)."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from mlenv.sweep.results import Summary, _cell

STATUS_STYLE = {"completed": "green", "not-run": "dim"}


def print_summary(summary: Summary, console) -> None:
    metrics = summary.metric_names
    table = Table(title=f"{summary.notebook}: {len(summary.records)} run{'s' if len(summary.records) != 1 else ''}", title_justify="left")
    # a run id is a file name users copy: never wrapped or cut, whatever the terminal width
    longest = max((len(record.run_id) for record in summary.records), default=3)
    table.add_column("run", no_wrap=True, min_width=longest)
    table.add_column("status")
    for name in summary.parameter_names:
        table.add_column(name, justify="right")
    for name in metrics:
        table.add_column(escape(name), justify="right", style="bold")
    table.add_column("s", justify="right")
    for record in summary.sorted_records():
        style = STATUS_STYLE.get(record.status, "red")
        table.add_row(escape(record.run_id), f"[{style}]{record.status}[/]",
                      *(escape(_cell(record.parameters.get(name))) for name in summary.parameter_names),
                      *(escape(_cell(record.metrics.get(name))) for name in metrics),
                      "" if record.duration is None else f"{record.duration:.1f}")
    console.print(table)
    ordered = summary.sorted_records()
    if summary.sort and ordered:
        best = ordered[0]
        value = best.metrics.get(summary.sort.metric, best.parameters.get(summary.sort.metric))
        if value is not None:
            console.print(f"best by {escape(str(summary.sort))}: [bold]{escape(best.run_id)}[/] "
                          f"({escape(summary.sort.metric)} = {escape(_cell(value))})", highlight=False)
    for record in summary.failed:
        console.print(f"[red]✗ {escape(record.run_id)}[/] {record.status}: {escape(record.error_text())}", highlight=False)


def print_plan(plan, json_out: bool = False) -> None:
    import json
    import sys

    if json_out:
        sys.stdout.write(json.dumps([{"run_id": run.run_id, "parameters": run.parameters} for run in plan.runs],
                                    indent=2, sort_keys=True) + "\n")
        return
    from mlenv.console import out

    for run in plan.runs:
        params = " ".join(f"{key}={_cell(value)}" for key, value in run.parameters.items())
        out.print(f"{run.run_id}  {params}", highlight=False, markup=False)
