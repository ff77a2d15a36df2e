"""The console every command prints its tables to."""

from __future__ import annotations

import datetime as dt
import os

from rich.console import Console

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
