"""How the CLI prints: tables not cut at 80 columns when piped, times, progress rates."""

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


def test_times_are_shown_in_utc_to_the_second_saying_so():
    import datetime as dt

    paris = dt.timezone(dt.timedelta(hours=1))
    assert output.shown_time(dt.datetime(2026, 11, 23, 17, 36, 44, 483125, tzinfo=paris)) == "2026-11-23 16:36:44 UTC"
    assert output.shown_time(None) == "-"


def test_a_finished_progress_reports_its_average_rate_not_zero():
    from rich.progress import Progress

    from services.cli.output import RateColumn

    progress = Progress(console=output.stdout_console())
    task_id = progress.add_task("rebuilding", total=1000)
    progress.update(task_id, completed=1000)  # one jump: rich has no speed sample for it
    task = progress.tasks[0]
    assert task.finished and task.speed is None
    rate = float(RateColumn().render(task).plain.split()[0].replace(",", ""))
    assert rate == round(1000 / task.finished_time)


def test_the_audit_table_shows_amounts_exactly_as_stored():
    from events.upcasting import decode_exact
    from services.cli.audit import shown_data

    envelope = '{"type": "touchline.sales.deal.won", "data": {"deal_id": "o1", "amount": 123456789012345.6789, "currency": "EUR"}}'
    assert shown_data(decode_exact(envelope)["data"]) == '{"deal_id":"o1","amount":123456789012345.6789,"currency":"EUR"}'


def test_the_progress_bar_fits_80_columns_without_cutting_a_figure():
    """Its rate wrapped onto a second line, and a count was cut to "1538/1…", at 80 columns."""
    from rich.console import Console

    from services.cli.output import progress_bar

    bar = progress_bar()
    task = bar.add_task("sending to workspace demo", total=100_000)
    bar.update(task, completed=54_321)
    console = Console(width=80, record=True)
    console.print(bar.make_tasks_table(bar.tasks))
    [line] = console.export_text().strip().splitlines()
    assert "54321/100000" in line and "events/s" in line and "…" not in line
    assert "ETA " in line


def test_a_finished_bar_says_how_long_it_took_once():
    """It showed "ETA 0:00:00 0:00:42": the time taken beside an estimate, unnamed."""
    from rich.console import Console

    from services.cli.output import progress_bar

    bar = progress_bar()
    task = bar.add_task("replaying", total=10)
    bar.start_task(task)
    bar.update(task, completed=10)
    console = Console(width=100, record=True)
    console.print(bar.make_tasks_table(bar.tasks))
    [line] = console.export_text().strip().splitlines()
    assert "took 0:00:0" in line and "ETA" not in line, line


def test_every_command_in_a_list_of_commands_has_a_one_line_summary():
    """typer kept the line breaks of a help's first paragraph in the lists of commands (and only
    there): `touchline --help` and `touchline token --help` were ragged."""
    from services.cli.main import app

    def commands(typer_app):
        yield from typer_app.registered_commands
        for group in typer_app.registered_groups:
            yield from commands(group.typer_instance)

    for command in commands(app):
        assert command.short_help and "\n" not in command.short_help, command.name or command.callback.__name__
