"""The summary printed after a sweep (and the plan printed by --dry-run).

The table fits the terminal (80 columns when piped): the run id gives way first (shortened, its hash
kept, so it still names one file), then the duration, other metrics and parameters, in that order;
the status and the sort metric always stay, and a note names what was left out (results.csv has all).
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import JustifyMethod
from rich.markup import escape
from rich.table import Table

from mlenv.sweep.results import Summary, _cell
from mlenv.wording import counted

STATUS_STYLE = {"completed": "green", "not-run": "dim"}
ID_HASH = 9  # "-" and the 8 hex digits that make a run id unique
SHORTEST_ID = ID_HASH + 4  # a few characters of the parameters, "…", the hash


@dataclass
class Column:
    header: str
    cells: list[str]
    justify: JustifyMethod = "right"
    style: str | None = None
    keep: bool = False  # never dropped: status and the sort metric

    @property
    def width(self) -> int:
        return max([len(self.header), *(len(cell) for cell in self.cells)])


def short_id(run_id: str, width: int) -> str:
    if len(run_id) <= width:
        return run_id
    head = max(0, width - ID_HASH - 1)
    return run_id[:head] + "…" + run_id[-ID_HASH:]


def _table_width(columns: list[Column]) -> int:
    return sum(column.width + 3 for column in columns) + 1  # padding 1+1 and a rule per column, the last rule


def fit_columns(summary: Summary, width: int) -> tuple[list[Column], list[str]]:
    """The summary's columns fitted to ``width`` characters, and the names of those left out."""
    records = summary.sorted_records()
    sort_name = summary.sort.metric if summary.sort else None
    ids = [record.run_id for record in records]
    columns = [Column("run", list(ids), justify="left", keep=True),
               Column("status", [record.status for record in records], justify="left", keep=True)]
    for name in summary.parameter_names:
        columns.append(Column(name, [_cell(record.parameters.get(name)) for record in records],
                              keep=name == sort_name))
    for name in summary.metric_names:
        columns.append(Column(name, [_cell(record.metrics.get(name)) for record in records], style="bold",
                              keep=name == sort_name))
    columns.append(Column("s", ["" if record.duration is None else f"{record.duration:.1f}" for record in records]))

    run = columns[0]

    def shorten_ids() -> None:
        room = width - (_table_width(columns) - run.width)
        target = max(SHORTEST_ID, room, len("run"))
        run.cells = [short_id(run_id, target) for run_id in ids]

    hidden: list[str] = []
    if _table_width(columns) > width:
        shorten_ids()
    metric_names = set(summary.metric_names)
    # drop order: duration, metrics other than the sort metric (last first), then parameters (last first)
    droppable = ([columns[-1]] + [c for c in reversed(columns[2:-1]) if c.header in metric_names and not c.keep]
                 + [c for c in reversed(columns[2:-1]) if c.header not in metric_names and not c.keep])
    for column in droppable:
        if _table_width(columns) <= width:
            break
        columns.remove(column)
        hidden.append(column.header)
        run.cells = list(ids)
        shorten_ids()
    return columns, hidden


def print_summary(summary: Summary, console) -> None:
    count = len(summary.records)
    columns, hidden = fit_columns(summary, console.width)
    best = summary.best()
    table = Table(title=f"{summary.notebook}: {counted(count, 'run')}", title_justify="left")
    for column in columns:
        table.add_column(escape(column.header), justify=column.justify, style=column.style, no_wrap=True,
                         min_width=column.width)
    for row, record in enumerate(summary.sorted_records()):
        cells = [escape(column.cells[row]) for column in columns]
        cells[1] = f"[{STATUS_STYLE.get(record.status, 'red')}]{cells[1]}[/]"
        table.add_row(*cells, style="bold" if best is not None and record is best else None)
    console.print(table)
    if hidden:
        console.print(f"{counted(len(hidden), 'column')} not shown at this width "
                      f"({escape(', '.join(hidden))}): see {escape(summary.location('results.csv'))}",
                      highlight=False)
    if best is not None and summary.sort is not None:  # a best run exists only with --sort
        value = best.metrics.get(summary.sort.metric, best.parameters.get(summary.sort.metric))
        console.print(f"best by {escape(str(summary.sort))}: [bold]{escape(best.run_id)}[/] "
                      f"({escape(summary.sort.metric)} = {escape(_cell(value))})", highlight=False)
    for record in summary.failed:
        console.print(f"[red]✗ {escape(record.run_id)}[/] {record.status}: {escape(record.error_text())}",
                      highlight=False)


def print_plan(plan, console, json_out: bool = False) -> None:
    import json
    import sys

    if json_out:
        sys.stdout.write(json.dumps([{"run_id": run.run_id, "parameters": run.parameters} for run in plan.runs],
                                    indent=2, sort_keys=True) + "\n")
        return
    for run in plan.runs:
        params = " ".join(f"{key}={_cell(value)}" for key, value in run.parameters.items())
        console.print(f"{run.run_id}  {params}", highlight=False, markup=False)
