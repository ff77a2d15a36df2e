"""The console every command prints its tables to."""

from __future__ import annotations

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
