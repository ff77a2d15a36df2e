"""`touchline replay`, `touchline audit`, `touchline status` and `touchline snapshot` (audit side of CONTRACT.md).

They talk to NATS and PostgreSQL directly: TOUCHLINE_NATS_URL / TOUCHLINE_DATABASE_URL, else
the embedded servers of the `touchline up` of the data dir (services/cli/attach.py).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
from pathlib import Path
from typing import Optional

import msgspec
import typer
from rich.table import Table

from events.log import MAX_SEQ
from events.upcasting import decode_exact, encode_exact
from services.cli.attach import DataDir, Workspace, backends, refuse, with_workspace
from services.settings import Settings
from services.written_times import read_written_time
from services.cli.output import progress_bar, shown_time, stdout_console

console = stdout_console()


def shown_data(data: object) -> str:
    """An event's data for the audit table: its JSON, numbers exactly as stored."""
    return encode_exact(data).decode()


def parse_until(text: str) -> dt.datetime:
    """RFC 3339 with an offset; a bare date means the end of that UTC day."""
    try:
        moment = read_written_time(text)
        if len(text) == 10:  # a date: the end of that UTC day
            moment = moment.replace(tzinfo=dt.timezone.utc) + dt.timedelta(days=1) - dt.timedelta(microseconds=1)
    except ValueError:
        raise typer.BadParameter("expected RFC 3339 like 2026-11-01T12:00:00Z, or a date", param_hint="--until")
    except OverflowError:  # 9999-12-31 ends past the year 9999
        raise typer.BadParameter("expected a time in the years 1000 to 8999 UTC", param_hint="--until")
    if moment.tzinfo is None:
        raise typer.BadParameter("give a time zone offset, e.g. Z or +01:00", param_hint="--until")
    try:
        moment = moment.astimezone(dt.timezone.utc)
    except OverflowError:  # 0001-01-01T00:30:00+01:00 is before the year 1 in UTC
        moment = None
    if moment is None or not 1000 <= moment.year <= 8999:  # as an event's time: nothing was received outside them
        raise typer.BadParameter("expected a time in the years 1000 to 8999 UTC", param_hint="--until")
    now = dt.datetime.now(dt.timezone.utc)
    if moment > now:  # its snapshot would stop at today's log and stay blind to what arrives until then
        raise typer.BadParameter(f"{shown_time(moment)} has not happened yet (now is {shown_time(now)}):"
                                 " a snapshot is of the past", param_hint="--until")
    return moment


def register(app: typer.Typer) -> None:
    app.command()(replay)
    app.command()(audit)
    app.command()(status)
    snapshot_app = typer.Typer(help="Point-in-time snapshots built by `touchline replay --until` or `--until-seq`.", no_args_is_help=True)
    snapshot_app.command("list")(snapshot_list)
    snapshot_app.command("drop")(snapshot_drop)
    app.add_typer(snapshot_app, name="snapshot")


def _fraction(moment: dt.datetime) -> str:
    """The fraction of a second, if any, as written after the seconds: ".9", ".123456"."""
    return f".{moment.microsecond:06d}".rstrip("0") if moment.microsecond else ""


def _name_time(given: str, moment: dt.datetime) -> str:
    """A snapshot's default name for --until: the day of a date; else the UTC time to the second,
    and its fraction when it has one (two times within one second named the same snapshot, the
    second replacing the first)."""
    if len(given) == 10:  # a date: the end of that day
        return moment.strftime("%Y%m%d")
    return moment.strftime("%Y%m%dt%H%M%S") + _fraction(moment) + "z"


def _shown_until(moment: dt.datetime) -> str:
    """A snapshot's --until as given, to its fraction of a second (the tables' times stop at the second)."""
    return shown_time(moment).replace(" UTC", _fraction(moment) + " UTC")


def replay_summary(stats, *, rebuilt: bool = False) -> str:
    """What a replay read and applied, what it left out as the live projector leaves it out, and
    where it and the live projector part (a verify's; a rebuild and a snapshot refuse those)."""
    from services.replay import shown_seqs

    summary = (
        f"{stats.read:,} events read, {stats.applied:,} applied, up to log seq {stats.last_seq},"
        f" in {stats.seconds:.2f} s ({stats.events_per_second:,.0f} events/s)"
    )
    for seqs, what in ((stats.undecodable, "this version cannot decode"), (stats.failed, "a read model failed to apply")):
        if seqs:
            summary += (f"; {len(seqs):,} event(s) {what} left out, as the live projector leaves them out"
                        f" (log seq {shown_seqs(seqs)}; `touchline parked list`)")
    if stats.not_parked:
        summary += (f"; yet the live projector applied {len(stats.not_parked):,} of them (log seq"
                    f" {shown_seqs(stats.not_parked)}): this code's read models are not the live projector's")
    if stats.parked_applied:
        done = ("taken off the parked list: the read models hold them now" if rebuilt
                else "`touchline parked redrive` applies them to the live read models")
        summary += (f"; {len(stats.parked_applied):,} event(s) the live projector parked applied here (log seq"
                    f" {shown_seqs(stats.parked_applied)}; {done})")
    return summary


def replay(
    workspace: str = Workspace,
    until: Optional[str] = typer.Option(
        None, "--until", help="State as of TIME: every event received by then (RFC 3339, or a date: its end)"
    ),
    until_seq: Optional[int] = typer.Option(None, "--until-seq", help="State as of log sequence N"),
    name: Optional[str] = typer.Option(None, "--name", help="Snapshot name for --until/--until-seq"),
    verify: bool = typer.Option(False, "--verify", help="Rebuild beside the live read models and compare"),
    data_dir: Optional[Path] = DataDir,
) -> None:
    """Rebuild a workspace's read models from the log; --until builds a snapshot, --verify compares."""
    from services import gc_tuning, replay as replaying
    from services.nats_io import last_log_seq

    if until is not None and until_seq is not None:
        raise typer.BadParameter("give --until or --until-seq, not both")
    if verify and (until is not None or until_seq is not None):
        raise typer.BadParameter("--verify compares with the live read models; it takes no --until")
    until_time = parse_until(until) if until is not None else None
    if until_seq is not None and not 0 <= until_seq <= MAX_SEQ:
        raise typer.BadParameter(f"expected 0 to {MAX_SEQ} (a log sequence)", param_hint="--until-seq")
    snapshot = until_time is not None or until_seq is not None
    if name is not None and not snapshot:  # it rebuilt the live read models, and named nothing
        raise typer.BadParameter("names a snapshot: give --until or --until-seq too", param_hint="--name")
    if snapshot and name is None:
        name = f"seq-{until_seq}" if until_seq is not None else "at-" + _name_time(until, until_time)
    if name is not None and not replaying.SNAPSHOT_NAME.fullmatch(name):
        raise typer.BadParameter("1-64 of a-z 0-9 _ . : -, starting with a letter or digit", param_hint="--name")
    settings = Settings.from_env(data_dir=data_dir)
    label = "verifying" if verify else (f"snapshot {name}" if snapshot else "rebuilding")

    async def run():
        gc_tuning.tune_for_streaming()
        async with backends(settings, workspace) as (pool, js):
            if until_seq is not None and until_seq > (last := await last_log_seq(js)):
                refuse(f"--until-seq: the log ends at seq {last}; a snapshot is of the past")
            with progress_bar() as bar:
                task = bar.add_task(f"{label} {workspace}", total=None)

                def report(done: int, total: int) -> None:
                    bar.update(task, completed=done, total=total)

                if verify:
                    return await replaying.verify(pool, js, workspace, progress=report)
                if snapshot:
                    return await replaying.build_snapshot(
                        pool, js, workspace, name, until_seq=until_seq, until_time=until_time, progress=report
                    )
                return await replaying.rebuild(pool, js, workspace, progress=report)

    try:
        outcome = asyncio.run(run())
    except replaying.UnlikeLive as err:
        refuse(str(err), 1)
    stats, differences = outcome if verify else (outcome, None)
    summary = replay_summary(stats, rebuilt=not (verify or snapshot))
    if verify:
        for difference in differences:
            console.print(difference.describe(), markup=False, highlight=False, soft_wrap=True)
        if differences or stats.not_parked:
            console.print(f"[red]{len(differences)} difference(s)[/red] between the live read models and the log; {summary}")
            raise typer.Exit(1)
        console.print(f"[green]verified[/green]: workspace {workspace}'s read models match its log; {summary}")
    elif snapshot:
        console.print(f"snapshot [bold]{name}[/bold] of {workspace}: {summary}; read it with ?snapshot={name}")
    else:
        repaired = (f"{stats.rows_replaced:,} read-model row(s) differed from the log and were set right"
                    if stats.rows_replaced else "the read models matched the log")
        console.print(f"rebuilt workspace [bold]{workspace}[/bold]: {summary}; {repaired}")


def audit(
    contact: str = typer.Argument(..., help="The contact id"),
    workspace: str = Workspace,
    as_json: bool = typer.Option(False, "--json", help="JSON lines, one event each"),
    data_dir: Optional[Path] = DataDir,
) -> None:
    """A contact's whole history: every accepted event about it, in log order."""
    from projections.audit import entry_raw, trail

    async def run(pool):
        async with pool.acquire() as conn:
            return await trail(conn, workspace, contact)

    rows = with_workspace(data_dir, workspace, run)
    if not rows:
        refuse(f"no events about contact {contact!r} in workspace {workspace!r}", 1)
    if as_json:
        out = sys.stdout.buffer
        for row in rows:
            out.write(bytes(entry_raw(row["seq"], row["received_at"], row["envelope"])) + b"\n")
        out.flush()
        return
    table = Table(title=f"{workspace} / {contact}: {len(rows)} events", show_lines=False)
    for column, style in (("seq", "cyan"), ("received", ""), ("time", ""), ("type", "bold"), ("source / id", "dim"), ("data", "")):
        table.add_column(column, style=style or None, overflow="fold")
    for row in rows:
        event = decode_exact(row["envelope"])
        table.add_row(
            str(row["seq"]),
            shown_time(row["received_at"]),
            str(event.get("time", "")),
            str(event.get("type", "")).removeprefix("touchline."),
            f"{event.get('source')} {event.get('id')}",
            shown_data(event.get("data", {})),
        )
    console.print(table)


def status(
    as_json: bool = typer.Option(False, "--json", help="JSON instead of a table"),
    data_dir: Optional[Path] = DataDir,
) -> None:
    """Each projector's applied sequence, lag behind the log, recent rate and writing process; the
    NATS inbox's backlog."""
    from services.status import status_report

    async def run():
        async with backends(Settings.from_env(data_dir=data_dir)) as (pool, js):
            return await status_report(pool, js)

    report = asyncio.run(run())
    if as_json:
        print(msgspec.json.encode(report).decode())  # times as GET /v1/status writes them
        return
    table = Table(title=f"log last seq {report.log_last_seq}")
    for column in ("projector", "applied seq", "lag", "events/s", "parked", "updated", "writer"):
        table.add_column(column)
    for p in report.projectors:
        table.add_row(p.name, str(p.applied_seq), str(p.lag), f"{p.rate_eps:,.1f}", str(p.parked),
                      shown_time(p.updated_at), p.writer or "none running")
    console.print(table)
    inbox = report.inbox
    console.print(f"NATS inbox: {inbox.pending:,} acked and not yet judged (judged up to inbox seq"
                  f" {inbox.judged_seq} of {inbox.last_seq}, {shown_time(inbox.updated_at)})")


def snapshot_list(workspace: str = Workspace, data_dir: Optional[Path] = DataDir) -> None:
    """The workspace's snapshots."""
    async def run(pool):
        return await pool.fetch(
            "SELECT name, until_seq, until_time, last_seq, events, created_at FROM snapshots"
            " WHERE workspace = $1 ORDER BY name",
            workspace,
        )

    table = Table(title=f"snapshots of {workspace}")
    for column in ("name", "until", "last seq", "events", "created"):
        table.add_column(column)
    for r in with_workspace(data_dir, workspace, run):
        until = f"seq {r['until_seq']}" if r["until_seq"] is not None else f"received by {_shown_until(r['until_time'])}"
        table.add_row(r["name"], until, str(r["last_seq"]), str(r["events"]), shown_time(r["created_at"]))
    console.print(table)


def snapshot_drop(name: str = typer.Argument(..., help="The snapshot's name (`touchline snapshot list`)"),
                  workspace: str = Workspace, data_dir: Optional[Path] = DataDir) -> None:
    """Drop a snapshot."""
    from services.replay import drop_snapshot

    if not with_workspace(data_dir, workspace, lambda pool: drop_snapshot(pool, workspace, name)):
        refuse(f"unknown snapshot {name!r} in workspace {workspace!r}", 1)
    console.print(f"dropped snapshot {name}")
