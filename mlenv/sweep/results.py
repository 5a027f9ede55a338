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
        data = {
            "notebook": self.notebook,
            "kernel": self.kernel,
            "mode": self.mode,
            "sort": str(self.sort) if self.sort else None,
            "best": (self.best().run_id if self.best() else None),
            "warnings": [problem for problem in [self.sort_problem()] if problem],
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
        writer.writerow(["run_id", "status", *self.parameter_names, *metrics, "duration_s", "attempts", "error", "output"])
        for record in self.sorted_records():
            writer.writerow([
                record.run_id, record.status,
                *(_cell(record.parameters.get(name)) for name in self.parameter_names),
                *(_cell(record.metrics.get(name)) for name in metrics),
                "" if record.duration is None else f"{record.duration:.3f}",
                record.attempts, record.error_text(), record.output or "",
            ])
        return buffer.getvalue()

    def to_html(self) -> str:
        from jinja2 import Environment, FileSystemLoader, StrictUndefined

        from mlenv.render import templates_dir

        # HTML: autoescaped, unlike the shared environment for Dockerfiles and JSON
        env = Environment(loader=FileSystemLoader(str(templates_dir())), autoescape=True,
                          undefined=StrictUndefined, keep_trailing_newline=True)
        plots = [
            {"metric": metric, "parameter": parameter, "svg": scatter_svg(self.records, parameter, metric)}
            for metric in self.metric_names if _numeric_metric(self.records, metric)
            for parameter in self.parameter_names
        ]
        return env.get_template("report.html.j2").render(
            summary=self, records=self.sorted_records(), metrics=self.metric_names, plots=plots,
            fmt=_cell, output_name=lambda record: Path(record.output).name if record.output else "",
        )


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


# --- inline SVG plots: no scripts, no CDN, readable offline -------------------------------------

WIDTH, HEIGHT, PAD_L, PAD_R, PAD_T, PAD_B = 360, 240, 56, 16, 24, 44


def scatter_svg(records: list[RunRecord], parameter: str, metric: str) -> str:
    points = [(record.parameters.get(parameter), _number(record.metrics.get(metric)), record.run_id)
              for record in records if _number(record.metrics.get(metric)) is not None]
    xs = [x for x, _, _ in points]
    numeric = all(_number(x) is not None for x in xs)
    log = numeric and xs and min(xs) > 0 and max(xs) / min(xs) >= 100
    if numeric:
        positions = [math.log10(x) if log else float(x) for x in xs]
        categories: list[str] = []
    else:
        categories = sorted({_cell(x) for x in xs}, key=lambda text: (len(text), text))
        positions = [float(categories.index(_cell(x))) for x in xs]
    ys = [y for _, y, _ in points]
    x_low, x_high = _span(positions, pad=0.5 if categories else 0.05)
    y_low, y_high = _span(ys, pad=0.08)
    plot_w, plot_h = WIDTH - PAD_L - PAD_R, HEIGHT - PAD_T - PAD_B

    def px(value: float) -> float:
        return PAD_L + (value - x_low) / (x_high - x_low) * plot_w

    def py(value: float) -> float:
        return PAD_T + plot_h - (value - y_low) / (y_high - y_low) * plot_h

    esc = html.escape
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" '
             f'role="img" aria-label="{esc(metric)} against {esc(parameter)}">',
             f'<rect x="{PAD_L}" y="{PAD_T}" width="{plot_w}" height="{plot_h}" fill="#fafafa" stroke="#bbb"/>']
    for tick in _ticks(y_low, y_high):
        y = py(tick)
        parts.append(f'<line x1="{PAD_L - 4}" x2="{PAD_L + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e3e3"/>'
                     f'<text x="{PAD_L - 6}" y="{y + 4:.1f}" text-anchor="end">{esc(f"{tick:.4g}")}</text>')
    if categories:
        x_labels = [(float(i), label) for i, label in enumerate(categories)]
    else:
        x_labels = [(tick, f"{10 ** tick:.3g}" if log else f"{tick:.4g}") for tick in _ticks(x_low, x_high)]
    for tick, label in x_labels:
        x = px(tick)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{PAD_T + plot_h}" y2="{PAD_T + plot_h + 4}" stroke="#888"/>'
                     f'<text x="{x:.1f}" y="{PAD_T + plot_h + 16}" text-anchor="middle">{esc(label)}</text>')
    for (x_raw, y, run), position in zip(points, positions):
        parts.append(f'<circle cx="{px(position):.1f}" cy="{py(y):.1f}" r="4" fill="#2f6db5" fill-opacity="0.75">'
                     f'<title>{esc(run)}: {esc(parameter)}={esc(_cell(x_raw))}, {esc(metric)}={y:.6g}</title></circle>')
    parts.append(f'<text x="{PAD_L + plot_w / 2:.0f}" y="{HEIGHT - 6}" text-anchor="middle" class="axis">'
                 f'{esc(parameter)}{" (log)" if log else ""}</text>')
    parts.append(f'<text x="14" y="{PAD_T + plot_h / 2:.0f}" text-anchor="middle" class="axis" '
                 f'transform="rotate(-90 14 {PAD_T + plot_h / 2:.0f})">{esc(metric)}</text>')
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
