"""The live view of a sweep: queued / running / done / failed, elapsed and ETA (rich)."""

from __future__ import annotations

import time

from rich.console import Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from mlenv.sweep.execute import COMPLETED, RunOutcome


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class SweepProgress:
    """Counts runs by state; renders live on a terminal, one line per finished run elsewhere."""

    def __init__(self, console, total: int, skipped: int = 0, live: bool | None = None) -> None:
        self.console = console
        self.total = total
        self.skipped = skipped
        self.running: dict[str, float] = {}
        self.done = 0
        self.failed = 0
        self.started_at = time.monotonic()
        self.live_enabled = console.is_terminal if live is None else live
        self._live: Live | None = None

    def __enter__(self) -> SweepProgress:
        if self.live_enabled:
            self._live = Live(self.render(), console=self.console, refresh_per_second=4, transient=True,
                              get_renderable=self.render)
            self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)

    @property
    def queued(self) -> int:
        return self.total - self.done - self.failed - len(self.running)

    def eta(self) -> float | None:
        finished = self.done + self.failed
        if not finished:
            return None
        elapsed = time.monotonic() - self.started_at
        return elapsed / finished * (self.total - finished)

    def handle(self, event: tuple) -> None:
        if event[0] == "started":
            self.running.setdefault(event[1], time.monotonic())
        elif event[0] == "finished":
            outcome: RunOutcome = event[1]
            self.running.pop(outcome.run_id, None)
            if outcome.status == COMPLETED:
                self.done += 1
            else:
                self.failed += 1
            if not self.live_enabled:
                mark = "✓" if outcome.status == COMPLETED else "✗"
                took = f" ({outcome.duration:.1f} s)" if outcome.duration else ""
                self.console.print(f"{mark} {outcome.run_id} {outcome.status}{took}", highlight=False, markup=False)
            elif outcome.status != COMPLETED and self._live is not None:
                self._live.console.print(f"[red]✗[/] {escape(outcome.run_id)} {outcome.status}", highlight=False)

    def render(self):
        elapsed = time.monotonic() - self.started_at
        eta = self.eta()
        line = Text.assemble(
            ("queued ", "dim"), (str(self.queued), "bold"),
            ("  running ", "dim"), (str(len(self.running)), "bold cyan"),
            ("  done ", "dim"), (str(self.done), "bold green"), ("  failed ", "dim"),
            (str(self.failed), "bold red" if self.failed else "bold"),
            ("  elapsed ", "dim"), _clock(elapsed), ("  ETA ", "dim"), _clock(eta) if eta is not None else "--:--",
        )
        if self.skipped:
            line.append(f"  (resumed {self.skipped})", "dim")
        table = Table.grid(padding=(0, 2))
        now = time.monotonic()
        for run_id, since in sorted(self.running.items(), key=lambda item: item[1])[:8]:
            table.add_row(Text("  ▶ " + run_id, "cyan"), Text(_clock(now - since), "dim"))
        return Group(line, table)
