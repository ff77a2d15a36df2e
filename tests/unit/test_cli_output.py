"""Tables printed to a file or a pipe are not cut at 80 columns."""

from __future__ import annotations

import io

from rich.table import Table

from services.cli import output


def test_a_table_sent_to_a_pipe_keeps_its_long_cells(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.setattr("sys.stdout", io.StringIO())
    console = output.stdout_console()
    table = Table()
    table.add_column("id")
    table.add_column("error")
    long_id, long_error = "fu_" + "5" * 60, "webhook answered 500: " + "x" * 80
    table.add_row(long_id, long_error)
    console.print(table)
    printed = console.file.getvalue()
    assert long_id in printed and long_error in printed


def test_columns_still_decides_when_set(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.setattr("sys.stdout", io.StringIO())
    assert output.stdout_console().width == 100
