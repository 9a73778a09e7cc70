"""What `lmjob sweep` draws: the trials as a table (rich), redrawn live in a terminal; in a
log or CI (not a tty), one line per trial that starts or finishes instead."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, TextIO

HEADERS = ("trial", "parameters", "state", "step", "last", "best", "value")


def format_value(value: Any) -> str:
    """A parameter value short enough for a table cell: 3 significant digits for floats."""
    if isinstance(value, float):
        return f"{value:.3g}" if math.isfinite(value) else str(value)
    return str(value)


def format_parameters(parameters: Mapping[str, Any]) -> str:
    """`lr=0.00123 dropout=0.1`: each parameter by the last part of its path."""
    return " ".join(f"{path.split('.')[-1]}={format_value(v)}" for path, v in parameters.items())


def _loss(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def trial_rows(status: Any, step_of: Callable[[str], int] | None = None) -> list[tuple[str, ...]]:
    """One row per trial; `step_of(job)` gives a running trial's live step."""
    rows = []
    for t in status.trials:
        step = step_of(t.name) if step_of is not None and t.state == "Running" else t.step
        rows.append(
            (
                str(t.number),
                format_parameters(t.parameters),
                t.state.value,  # the reason is in sweep.json and the log lines
                str(step or t.step),
                _loss(t.last_value),
                _loss(t.best_value),
                _loss(t.value),
            )
        )
    return rows


def build_table(status: Any, step_of: Callable[[str], int] | None = None) -> Any:
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    for header in HEADERS:
        table.add_column(header, no_wrap=header != "parameters")
    for row in trial_rows(status, step_of):
        table.add_row(*row)
    best = status.best
    table.caption = f"{status.phase.value}: {status.summary or '0'} trials finished" + (
        f", best trial {best.number} ({best.value:.4f})" if best else ""
    )
    return table


class SweepDisplay:
    """The trials table, live in a terminal; event lines elsewhere. `update` is called
    after every step of the sweep."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self._live: Any = None
        self._seen: dict[str, str] = {}
        if out.isatty():
            from rich.live import Live

            from lmjob_cli.terminal import console

            self._live = Live(console=console(out), auto_refresh=False, transient=False)
            self._live.start()

    def update(self, status: Any, trials: Any) -> None:
        if self._live is not None:
            self._live.update(build_table(status, trials.step), refresh=True)
            return
        for t in status.trials:
            if self._seen.get(t.name) == t.state or t.state == "Pending":
                continue
            self._seen[t.name] = t.state
            what = "started" if t.state == "Running" else t.state.value
            line = f"trial {t.number} {what}: {format_parameters(t.parameters)}"
            if t.value is not None:
                line += f"  value {t.value:.4f}"
            elif t.last_value is not None:
                line += f"  last {t.last_value:.4f} at step {t.step}"
            if t.reason:
                line += f"  ({t.reason})"
            print(line, file=self.out, flush=True)

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
