"""`touchline deadletter list|redrive`, `touchline rules reset` and `touchline asyncapi` (CONTRACT.md section 6)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from events.log import MAX_SEQ
from services.cli.attach import DataDir, backends, refuse
from services.settings import Settings
from services.cli.output import shown_time, stdout_console

console = stdout_console()

deadletter_app = typer.Typer(help="Follow-up commands (webhooks) that kept failing: list them, put them back on the"
                                  " work queue. (Events a projector could not apply: `touchline parked`.)",
                             no_args_is_help=True)
rules_app = typer.Typer(help="The rules worker.", no_args_is_help=True)


def _shown_header_time(text: str) -> str:
    """A time the dispatcher wrote into a header (ISO 8601), as every table shows times."""
    try:
        return shown_time(dt.datetime.fromisoformat(text))
    except ValueError:  # written by hand, or missing: as it is
        return text


@deadletter_app.command("list")
def deadletter_list(
    workspace: Optional[str] = typer.Option(None, "--workspace", "-w", help="Only this workspace"),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line"),
    data_dir: Optional[Path] = DataDir,
) -> None:
    """Follow-up commands in the dead-letter stream, oldest first, with the error that put them there."""
    from services.dispatcher.deadletter import list_parked

    async def run():
        async with backends(Settings.from_env(data_dir=data_dir), workspace) as (_, js):
            return await list_parked(js, workspace)

    parked = asyncio.run(run())
    if as_json:
        for item in parked:
            print(json.dumps({"seq": item.seq, "workspace": item.workspace, "stage": item.stage, "error": item.error,
                              "attempts": item.attempts, "parked_at": item.parked_at, "command": item.command,
                              "id": item.item_id}))
        return
    table = Table("seq", "workspace", "command", "id", "stage", "attempts", "parked at", "error")
    for item in parked:
        table.add_row(str(item.seq), item.workspace, item.command, item.item_id, item.stage, str(item.attempts),
                      _shown_header_time(item.parked_at), item.error)
    console.print(table if parked else "no dead letters")


@deadletter_app.command("redrive")
def deadletter_redrive(
    seq: list[int] = typer.Argument(None, min=1, max=MAX_SEQ,
                                    help="Dead-letter sequences to re-drive (default: all, or all of --workspace)"),
    workspace: Optional[str] = typer.Option(None, "--workspace", "-w", help="Only this workspace"),
    data_dir: Optional[Path] = DataDir,
) -> None:
    """Put dead-lettered commands back on the work queue (and out of the dead-letter stream)."""
    from services.dispatcher.deadletter import list_parked, redrive
    from services.webhooks import webhook_of

    async def run() -> tuple[int, list[int], list[str]]:
        async with backends(Settings.from_env(data_dir=data_dir), workspace) as (pool, js):
            parked = await list_parked(js, workspace)
            if seq:
                parked = [item for item in parked if item.seq in set(seq)]
            # A delivery re-driven to a workspace without a webhook was taken, and dropped.
            deliveries = {item.workspace for item in parked if item.stage == "webhook"}
            unhooked = sorted({ws for ws in deliveries if await webhook_of(pool, ws) is None})
            redriven = await redrive(js, [item for item in parked
                                          if item.stage != "webhook" or item.workspace not in unhooked])
            return redriven, sorted(set(seq or ()) - {item.seq for item in parked}), unhooked

    redriven, unknown, unhooked = asyncio.run(run())
    console.print(f"re-drove {redriven} command(s)")
    if unknown:  # a mistyped sequence was quietly "0 re-driven", exit 0
        where = f" of workspace {workspace!r}" if workspace else ""
        refuse(f"no dead letter{where} at sequence {', '.join(map(str, unknown))} (`touchline deadletter list`)", 1)
    if unhooked:
        refuse(f"kept the deliveries of {', '.join(map(repr, unhooked))} parked: no webhook is registered there"
               " (POST /v1/workspaces/WS/webhooks, then re-drive them)", 1)


@rules_app.command("reset")
def rules_reset(data_dir: Optional[Path] = DataDir) -> None:
    """Run the rules again from the start of the log (derived ids: no follow-up is made twice)."""
    from services.rules.worker import reset

    async def run() -> None:
        async with backends(Settings.from_env(data_dir=data_dir)) as (pool, _):
            await reset(pool)

    asyncio.run(run())
    console.print("the rules worker starts again from the start of the log")


def asyncapi(
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write here instead of printing"),
    data_dir: Optional[Path] = DataDir,
) -> None:
    """The AsyncAPI description of the NATS side (JSON), with the NATS address producers reach.

    That address is TOUCHLINE_NATS_URL, else the embedded server of a `touchline up` on the data dir,
    else an example address (`faststream docs gen services.dispatcher.app:app` always gives the example)."""
    from services.dispatcher.app import describe

    faststream_app = describe(advertised_nats_url(Settings.from_env(data_dir=data_dir)))
    text = json.dumps(faststream_app.schema.to_specification().to_jsonable(), indent=2)
    if out is None:
        print(text)
    else:
        try:
            out.write_text(text)
        except OSError as err:
            refuse(f"cannot write {out}: {err.strerror or err}", 1)
        console.print(f"wrote {out}")


def advertised_nats_url(settings: Settings) -> str | None:
    """The NATS address for producers, without credentials: TOUCHLINE_NATS_URL, else the one a
    `touchline up` on the data dir wrote for its embedded server; None when neither is known."""
    from services.runtime.nats_auth import without_credentials

    if settings.nats_url:
        return without_credentials(settings.nats_url)
    written = settings.data_dir / "nats" / "address"
    return written.read_text().strip() if written.exists() else None


def register(app: typer.Typer) -> None:
    app.add_typer(deadletter_app, name="deadletter")
    app.add_typer(rules_app, name="rules")
    app.command()(asyncapi)
