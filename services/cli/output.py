"""The console every command prints its tables to, and the progress bar of long commands."""

from __future__ import annotations

import datetime as dt
import os

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
)
from rich.table import Column
from rich.text import Text

# Written to a file or a pipe, rich would cut a table at 80 columns: ids and errors lost their
# ends (`fu_543b…`). There is no terminal to fit then, so lines may be as long as the table needs.
PIPED_WIDTH = 1000


def stdout_console() -> Console:
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=PIPED_WIDTH)
    return console


def shown_time(moment: dt.datetime | None) -> str:
    """A stored time as every table shows it: in UTC, to the second, saying so."""
    if moment is None:
        return "-"
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


class RateColumn(ProgressColumn):
    def render(self, task) -> Text:
        # rich estimates a speed from the last 30 s of updates, so none after a single jump (a
        # short replay reported "0 events/s"): then, and once done, the average so far.
        speed = task.speed
        if speed is None or task.finished:
            seconds = task.finished_time if task.finished else task.elapsed
            speed = task.completed / seconds if seconds else None
        return Text(f"{speed or 0:,.0f} events/s", style="progress.data.speed")


class TimeColumn(ProgressColumn):
    """"ETA 0:00:07" while it runs, "took 0:00:42" once done: one figure, named (two unnamed times
    side by side read as a puzzle)."""

    def render(self, task) -> Text:
        if task.finished:
            return Text(f"took {_clock(task.finished_time)}", style="progress.elapsed")
        remaining = task.time_remaining
        return Text(f"ETA {_clock(remaining) if remaining is not None else '-:--:--'}", style="progress.remaining")


def _clock(seconds: float | None) -> str:
    return str(dt.timedelta(seconds=int(seconds or 0)))


def progress_bar() -> Progress:
    # Every figure on one line, never cut: on a narrow terminal the bar gives way (it is 40
    # characters wide otherwise), and the description wraps.
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=None, table_column=Column(ratio=1, max_width=40)),
        MofNCompleteColumn(table_column=Column(no_wrap=True)),
        RateColumn(table_column=Column(no_wrap=True)),
        TimeColumn(table_column=Column(no_wrap=True)),
        console=Console(stderr=True),
        transient=False,
    )
