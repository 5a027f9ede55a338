"""Run records, the summary table, and the files a sweep leaves: results.csv, results.json, report.html."""

from __future__ import annotations

import csv
import html
import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mlenv.errors import UsageError, did_you_mean

FAILED_STATUSES = ("failed", "timeout", "died", "stopped", "start-failed", "error")


@dataclass
class RunRecord:
    run_id: str
    parameters: dict[str, Any]
    status: str = "not-run"
    metrics: dict[str, Any] = field(default_factory=dict)
    duration: float | None = None
    attempts: int = 0
    error: dict[str, Any] | None = None
    output: str | None = None
    resumed: bool = False

    @property
    def failed(self) -> bool:
        return self.status in FAILED_STATUSES

    def error_text(self) -> str:
        if not self.error:
            return ""
        where = ""
        if self.error.get("cell") is not None:
            where = f"cell {self.error['cell']}"
            if self.error.get("execution_count") is not None:
                where += f" (In [{self.error['execution_count']}])"
            where += ": "
        message = str(self.error.get("evalue") or "").strip().splitlines()
        return f"{where}{self.error.get('ename', 'Error')}: {message[0] if message else ''}".rstrip(": ")


@dataclass(frozen=True)
class SortKey:
    metric: str
    descending: bool = False

    def __str__(self) -> str:
        return f"{self.metric}:{'desc' if self.descending else 'asc'}"


def parse_sort(text: str | None) -> SortKey | None:
    """``accuracy`` (ascending), ``accuracy:desc`` / ``accuracy:max`` or ``-accuracy`` (descending)."""
    if not text:
        return None
    text = text.strip()
    descending = text.startswith("-")
    name, _, direction = text.lstrip("-").partition(":")
    if direction:
        if direction not in ("asc", "desc", "min", "max"):
            raise UsageError(f"--sort {text}: unknown direction {direction!r}", hint="use METRIC:asc or METRIC:desc")
        descending = direction in ("desc", "max")
    if not name:
        raise UsageError("--sort needs a metric name", hint="e.g. --sort accuracy:desc")
    return SortKey(name, descending)


def sort_problem(key: SortKey | None, known_columns: list[str]) -> str | None:
    """Why ``--sort`` cannot order these runs (no run recorded that name), with a hint; None when it can."""
    if key is None or key.metric in known_columns:
        return None
    hint = did_you_mean(key.metric, known_columns) or (
        f"known: {', '.join(known_columns)}" if known_columns else "record one with mlenv.record(name, value)")
    return f"--sort {key.metric}: no run recorded a metric or parameter of that name ({hint}); runs are in plan order"


def sort_records(records: list[RunRecord], key: SortKey | None, known_columns: list[str]) -> list[RunRecord]:
    """Runs ordered by ``key``; in plan order when no run has it (see sort_problem)."""
    if key is None or sort_problem(key, known_columns):
        return list(records)

    def value(record: RunRecord):
        raw = record.metrics.get(key.metric, record.parameters.get(key.metric))
        return raw if isinstance(raw, (int, float)) and not isinstance(raw, bool) else None

    present = [record for record in records if value(record) is not None]
    missing = [record for record in records if value(record) is None]
    # stable: ties keep the plan's order; runs without the value go last either way
    present.sort(key=lambda record: value(record), reverse=key.descending)
    return present + missing


@dataclass
class Summary:
    notebook: str
    kernel: str
    mode: str
    output: str
    parameter_names: list[str]
    records: list[RunRecord]
    sort: SortKey | None = None
    # what the runs ran in, for results.json and the report: lock hash, target, interpreter (when locked)
    environment: dict[str, str] = field(default_factory=dict)

    @property
    def metric_names(self) -> list[str]:
        names: dict[str, None] = {}
        for record in self.records:
            names.update(dict.fromkeys(record.metrics))
        return sorted(names)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for record in self.records:
            counts[record.status] = counts.get(record.status, 0) + 1
        return dict(sorted(counts.items()))

    @property
    def failed(self) -> list[RunRecord]:
        return [record for record in self.records if record.failed]

    def sorted_records(self) -> list[RunRecord]:
        return sort_records(self.records, self.sort, self.metric_names + self.parameter_names)

    def location(self, name: str) -> str:
        """Where the results folder's file ``name`` is (a path or a URL)."""
        return f"{self.output.rstrip('/')}/{name}"

    def warnings(self) -> list[str]:
        return [problem for problem in [self.sort_problem()] if problem]

    def sort_problem(self) -> str | None:
        return sort_problem(self.sort, self.metric_names + self.parameter_names)

    def best(self) -> RunRecord | None:
        """The first run by ``--sort`` that has the sort value (None without --sort or without such runs)."""
        if self.sort is None or self.sort_problem():
            return None
        for record in self.sorted_records():
            value = record.metrics.get(self.sort.metric, record.parameters.get(self.sort.metric))
            if _number(value) is not None:
                return record
        return None

    def to_json(self) -> str:
        best = self.best()
        data = {
            "notebook": self.notebook,
            "kernel": self.kernel,
            "mode": self.mode,
            "sort": str(self.sort) if self.sort else None,
            "best": best.run_id if best is not None else None,
            "warnings": self.warnings(),
            "environment": self.environment,
            "parameters": self.parameter_names,
            "metrics": self.metric_names,
            "counts": self.counts(),
            "runs": [asdict(record) for record in self.sorted_records()],
        }
        return json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        metrics = self.metric_names
        writer.writerow(["run_id", "status", *self.parameter_names, *metrics,
                         "duration_s", "attempts", "error", "output"])
        for record in self.sorted_records():
            writer.writerow([
                record.run_id, record.status,
                *(_cell(record.parameters.get(name)) for name in self.parameter_names),
                *(_cell(record.metrics.get(name)) for name in metrics),
                "" if record.duration is None else f"{record.duration:.3f}",
                record.attempts, record.error_text(), record.output or "",
            ])
        return buffer.getvalue()

    def plot_metric(self) -> str | None:
        """The metric the report plots against each parameter first: --sort's, else the first numeric one."""
        numeric = [name for name in self.metric_names if _numeric_metric(self.records, name)]
        if self.sort and self.sort.metric in numeric:
            return self.sort.metric
        return numeric[0] if numeric else None

    def to_html(self) -> str:
        from jinja2 import Environment, FileSystemLoader, StrictUndefined

        from mlenv.render import templates_dir

        # HTML: autoescaped, unlike the shared environment for Dockerfiles and JSON
        env = Environment(loader=FileSystemLoader(str(templates_dir())), autoescape=True,
                          undefined=StrictUndefined, keep_trailing_newline=True)
        best = self.best()
        swept = [name for name in self.parameter_names  # a parameter with one value explains nothing
                 if len({_cell(record.parameters.get(name)) for record in self.records}) > 1]
        metrics = [name for name in self.metric_names if _numeric_metric(self.records, name)]
        first = self.plot_metric()
        metrics = ([first] if first else []) + [name for name in metrics if name != first]
        plots = [{"metric": metric, "parameter": parameter,
                  "svg": scatter_svg(self.records, parameter, metric, self.parameter_names, best)}
                 for metric in metrics for parameter in swept]
        parallel = parallel_svg(self.records, swept, first, self.parameter_names, best) \
            if first and len(swept) >= 3 else None
        return env.get_template("report.html.j2").render(
            summary=self, records=self.sorted_records(), metrics=self.metric_names, plots=plots, best=best,
            parallel=parallel, plot_metric=first, fmt=_cell, sort_value=_sort_value,
            output_name=lambda record: Path(record.output).name if record.output else "",
        )


def _sort_value(value: Any) -> str:
    """What the report's table sorts a cell by (data-v): numbers as numbers, the rest as text."""
    number = _number(value)
    return repr(number) if number is not None else _cell(value)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _numeric_metric(records: list[RunRecord], metric: str) -> bool:
    return any(_number(record.metrics.get(metric)) is not None for record in records)


# --- inline SVG plots: no CDN, readable offline; hovering a mark shows its <title> ----------------

WIDTH, HEIGHT, PAD_L, PAD_R, PAD_T, PAD_B = 360, 250, 56, 16, 24, 54
FAILED_BAND = 14  # failed runs have no metric: they sit in a band under the plot, at their parameter value
BEST_COLOR, RUN_COLOR, FAILED_COLOR = "#d97706", "#2f6db5", "#b3261e"


def _describe(record: RunRecord, parameter_names: list[str], metric: str | None) -> str:
    """The hover text of a mark: run id, its parameter values, the metric (or why it has none)."""
    values = ", ".join(f"{name}={_cell(record.parameters.get(name))}" for name in parameter_names)
    if record.failed or record.status != "completed":
        outcome = f"{record.status}: {record.error_text()}" if record.error else record.status
    else:
        outcome = f"{metric}={_cell(record.metrics.get(metric))}" if metric else record.status
    return f"{record.run_id}\n{values}\n{outcome}"


def _axis_positions(values: list[Any]) -> tuple[list[float], list[str], bool]:
    """Where values sit on an axis: numbers (log-scaled over two decades or more), or categories."""
    numeric = bool(values) and all(_number(value) is not None for value in values)
    if numeric:
        log = min(values) > 0 and max(values) / min(values) >= 100
        return [math.log10(value) if log else float(value) for value in values], [], log
    categories = sorted({_cell(value) for value in values}, key=lambda text: (len(text), text))
    return [float(categories.index(_cell(value))) for value in values], categories, False


def scatter_svg(records: list[RunRecord], parameter: str, metric: str, parameter_names: list[str] | None = None,
                best: RunRecord | None = None) -> str:
    """``metric`` against ``parameter``: a dot per run, the best run ringed, failed runs as ✕ under the axis."""
    parameter_names = parameter_names or [parameter]
    shown = [record for record in records if record.status != "not-run"]
    points = [(record, value) for record in shown if (value := _number(record.metrics.get(metric))) is not None]
    measured = [record for record, _ in points]
    failed = [record for record in shown if record.failed and _number(record.metrics.get(metric)) is None]
    placed = measured + failed
    positions, categories, log = _axis_positions([record.parameters.get(parameter) for record in placed])
    x_of = {id(record): position for record, position in zip(placed, positions, strict=True)}
    ys = [value for _, value in points]
    x_low, x_high = _span(positions, pad=0.5 if categories else 0.05)
    y_low, y_high = _span(ys, pad=0.08)
    plot_w, plot_h = WIDTH - PAD_L - PAD_R, HEIGHT - PAD_T - PAD_B - (FAILED_BAND if failed else 0)

    def px(value: float) -> float:
        return PAD_L + (value - x_low) / (x_high - x_low) * plot_w

    def py(value: float) -> float:
        return PAD_T + plot_h - (value - y_low) / (y_high - y_low) * plot_h

    esc = html.escape
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{esc(metric)} against {esc(parameter)}">',
             f'<rect x="{PAD_L}" y="{PAD_T}" width="{plot_w}" height="{plot_h}" fill="#fafafa" stroke="#bbb"/>']
    for tick in _ticks(y_low, y_high):
        y = py(tick)
        parts.append(f'<line x1="{PAD_L - 4}" x2="{PAD_L + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e3e3"/>'
                     f'<text x="{PAD_L - 6}" y="{y + 4:.1f}" text-anchor="end">{esc(f"{tick:.4g}")}</text>')
    bottom = PAD_T + plot_h + (FAILED_BAND if failed else 0)
    if failed:
        band_y = PAD_T + plot_h + FAILED_BAND / 2
        parts.append(f'<text x="{PAD_L - 6}" y="{band_y + 4:.1f}" text-anchor="end" class="failed">failed</text>')
    if categories:
        x_labels = [(float(i), label) for i, label in enumerate(categories)]
    else:
        x_labels = [(tick, f"{10 ** tick:.3g}" if log else f"{tick:.4g}") for tick in _ticks(x_low, x_high)]
    for tick, label in x_labels:
        x = px(tick)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{bottom}" y2="{bottom + 4}" stroke="#888"/>'
                     f'<text x="{x:.1f}" y="{bottom + 16}" text-anchor="middle">{esc(label)}</text>')
    for record, value in points:
        x, y = px(x_of[id(record)]), py(value)
        tip = f"<title>{esc(_describe(record, parameter_names, metric))}</title>"
        if record is best:
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="7" fill="none" stroke="{BEST_COLOR}" '
                         f'stroke-width="2.5" class="best-mark"/>'
                         f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4.5" fill="{BEST_COLOR}" '
                         f'class="run best" data-run="{esc(record.run_id)}">{tip}</circle>')
        else:
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{RUN_COLOR}" fill-opacity="0.75" '
                         f'class="run" data-run="{esc(record.run_id)}">{tip}</circle>')
    for record in failed:
        x, y = px(x_of[id(record)]), PAD_T + plot_h + FAILED_BAND / 2
        parts.append(f'<path d="M{x - 4:.1f},{y - 4:.1f} L{x + 4:.1f},{y + 4:.1f} M{x - 4:.1f},{y + 4:.1f} '
                     f'L{x + 4:.1f},{y - 4:.1f}" stroke="{FAILED_COLOR}" stroke-width="2" class="run failed-run" '
                     f'data-run="{esc(record.run_id)}"><title>{esc(_describe(record, parameter_names, metric))}'
                     f'</title></path>')
    parts.append(f'<text x="{PAD_L + plot_w / 2:.0f}" y="{HEIGHT - 6}" text-anchor="middle" class="axis">'
                 f'{esc(parameter)}{" (log)" if log else ""}</text>')
    parts.append(f'<text x="14" y="{PAD_T + plot_h / 2:.0f}" text-anchor="middle" class="axis" '
                 f'transform="rotate(-90 14 {PAD_T + plot_h / 2:.0f})">{esc(metric)}</text>')
    parts.append("</svg>")
    return "".join(parts)


PC_WIDTH, PC_HEIGHT, PC_PAD_X, PC_PAD_T, PC_PAD_B = 760, 300, 60, 30, 40


def parallel_svg(records: list[RunRecord], parameters: list[str], metric: str, parameter_names: list[str],
                 best: RunRecord | None = None) -> str:
    """Parallel coordinates: an axis per swept parameter and one for ``metric``; a line per run,
    coloured by the metric (darker = better by --sort, else higher), the best run on top, failed dashed."""
    esc = html.escape
    shown = [record for record in records if record.status != "not-run"]
    axes = parameters + [metric]
    columns: dict[str, tuple[list[float], list[str], bool]] = {}
    for name in parameters:
        columns[name] = _axis_positions([record.parameters.get(name) for record in shown])
    values = [_number(record.metrics.get(metric)) for record in shown]
    measured = [value for value in values if value is not None]
    step = (PC_WIDTH - 2 * PC_PAD_X) / (len(axes) - 1)
    plot_h = PC_HEIGHT - PC_PAD_T - PC_PAD_B
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{PC_WIDTH}" height="{PC_HEIGHT}" '
             f'viewBox="0 0 {PC_WIDTH} {PC_HEIGHT}" role="img" aria-label="parallel coordinates of the runs">']

    def scale(value: float, low: float, high: float) -> float:
        return PC_PAD_T + plot_h - (value - low) / (high - low) * plot_h

    y_of: dict[str, list[float | None]] = {}
    for name in parameters:
        positions, _, _ = columns[name]
        low, high = _span(positions, pad=0.05)
        y_of[name] = [scale(position, low, high) for position in positions]
    m_low, m_high = _span(measured, pad=0.05)
    y_of[metric] = [scale(value, m_low, m_high) if value is not None else PC_PAD_T + plot_h + 16 for value in values]
    low_is_good = best is not None and best.metrics.get(metric) is not None and measured and \
        _number(best.metrics.get(metric)) == min(measured) and min(measured) != max(measured)
    lines = []
    for index, record in enumerate(shown):
        points = " ".join(f"{PC_PAD_X + position * step:.1f},{y_of[name][index]:.1f}"
                          for position, name in enumerate(axes))
        value = values[index]
        if value is None:
            style = f'stroke="{FAILED_COLOR}" stroke-dasharray="4 3" stroke-opacity="0.8"'
        else:
            share = 0.5 if m_high == m_low else (value - m_low) / (m_high - m_low)
            share = 1 - share if low_is_good else share
            style = f'stroke="{RUN_COLOR}" stroke-opacity="{0.25 + 0.6 * share:.2f}"'
        if record is best:
            style = f'stroke="{BEST_COLOR}" stroke-width="3"'
        line = (f'<polyline points="{points}" fill="none" {style} class="run{" best" if record is best else ""}" '
                f'data-run="{esc(record.run_id)}"><title>{esc(_describe(record, parameter_names, metric))}</title>'
                f'</polyline>')
        lines.append((record is best, line))
    parts.extend(line for _, line in sorted(lines, key=lambda item: item[0]))  # the best run drawn last, on top
    for position, name in enumerate(axes):
        x = PC_PAD_X + position * step
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{PC_PAD_T}" y2="{PC_PAD_T + plot_h}" stroke="#555"/>'
                     f'<text x="{x:.1f}" y="{PC_PAD_T - 10}" text-anchor="middle" class="axis">{esc(name)}</text>')
        if name == metric:
            labels = [(scale(tick, m_low, m_high), f"{tick:.4g}") for tick in _ticks(m_low, m_high)]
        else:
            positions, categories, log = columns[name]
            low, high = _span(positions, pad=0.05)
            if categories:
                labels = [(scale(float(i), low, high), label) for i, label in enumerate(categories)]
            else:
                labels = [(scale(tick, low, high), f"{10 ** tick:.3g}" if log else f"{tick:.4g}")
                          for tick in _ticks(low, high)]
        for y, label in labels:
            if PC_PAD_T - 1 <= y <= PC_PAD_T + plot_h + 1:
                parts.append(f'<text x="{x + 4:.1f}" y="{y + 3:.1f}">{esc(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _span(values: list[float], pad: float) -> tuple[float, float]:
    if not values:
        return 0.0, 1.0
    low, high = min(values), max(values)
    if high == low:
        return low - 1, high + 1
    margin = (high - low) * pad
    return low - margin, high + margin


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    ticks = []
    value = first
    while value <= high + 1e-12:
        ticks.append(round(value, 12))
        value += step
    return ticks
