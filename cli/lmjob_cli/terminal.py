"""What the CLI draws in a terminal: tables and a live progress bar with rich, loss curves
with plotext. In a terminal they are coloured and the progress redraws in place; in a log
file or CI (not a tty) the same tables and curves come out as plain text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TextIO

CURVE_HEIGHT = 16
CURVE_WIDTH = 78


def console(out: TextIO) -> Any:
    """A rich Console on `out`: colours and live redraws only when it is a terminal."""
    from rich.console import Console

    tty = out.isatty()
    return Console(
        file=out, force_terminal=tty, no_color=not tty, highlight=False, width=None if tty else 200
    )


def print_table(out: TextIO, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Columns under a header rule, as rich draws them (left-aligned, no outer box)."""
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    for header in headers:
        table.add_column(header, no_wrap=True)
    for row in rows:
        table.add_row(*row)
    console(out).print(table)


def loss_curve(
    out: TextIO,
    title: str,
    losses: Sequence[tuple[int, float]],
    evals: Sequence[tuple[int, float]] = (),
) -> None:
    """A plotext line of the training loss by step, with the evaluations as crosses."""
    import math

    import plotext as plt

    losses = [(s, v) for s, v in losses if math.isfinite(v)]
    if len(losses) < 2:
        return
    plt.clear_figure()
    plt.plot([s for s, _ in losses], [v for _, v in losses], label="train loss")
    evals = [(s, v) for s, v in evals if math.isfinite(v)]
    if evals:
        plt.scatter([s for s, _ in evals], [v for _, v in evals], label="eval loss", marker="x")
    plt.plotsize(CURVE_WIDTH, CURVE_HEIGHT)
    plt.theme("clear")
    plt.title(title)
    plt.xlabel("step")
    text = plt.build()
    if not out.isatty():
        text = plt.uncolorize(text)
    print(text.rstrip(), file=out)


class LiveProgress:
    """rich's progress bar for a terminal: one task per stage, redrawn in place."""

    def __init__(self, out: TextIO) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]{task.fields[stage]:<8}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[numbers]}"),
            TimeRemainingColumn(),
            console=console(out),
            transient=False,
        )
        self.tasks: dict[str, Any] = {}
        self.waiting = self.progress.add_task("", stage="", numbers="starting workers", total=None)

    def start(self) -> None:
        self.progress.start()

    def stop(self) -> None:
        self.progress.stop()

    def waiting_for(self, text: str) -> None:
        self.progress.update(self.waiting, numbers=text, visible=True)

    def update(self, stage: str, step: int, total: int, numbers: str) -> None:
        self.progress.update(self.waiting, visible=False)
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task("", stage=stage, numbers="", total=total)
        self.progress.update(self.tasks[stage], completed=step, total=total, numbers=numbers)
