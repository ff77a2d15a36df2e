"""`touchline parked list|redrive`: poison events a projector set aside, and re-driving them after a fix."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Optional

import msgspec
import typer
from rich.table import Table

from events.log import MAX_SEQ
from services.cli.attach import DataDir, backends, refuse
from services.cli.audit import console
from services.cli.output import shown_time
from services.settings import Settings

parked_app = typer.Typer(help="Events a projector could not apply, set aside (parked): list them, apply them again."
                              " (Webhooks that kept failing: `touchline deadletter`.)", no_args_is_help=True)


@parked_app.command("list")
def parked_list(
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line"),
    data_dir: Optional[Path] = DataDir,
) -> None:
    """Every parked event: projector, log sequence, workspace, error."""
    from services.parking import waiting

    async def run():
        async with backends(Settings.from_env(data_dir=data_dir)) as (pool, _js):
            return await waiting(pool)

    rows = asyncio.run(run())
    if as_json:
        for row in rows:  # times as the API writes them
            print(msgspec.json.encode(dict(row)).decode())
        return
    table = Table("projector", "seq", "workspace", "attempts", "parked at", "error", title=f"{len(rows)} parked")
    for row in rows:
        table.add_row(row["projector"], str(row["seq"]), row["workspace"], str(row["attempts"]),
                      shown_time(row["parked_at"]), row["error"][:200])
    console.print(table)


@parked_app.command("redrive")
def parked_redrive(
    seq: list[int] = typer.Option(None, "--seq", min=1, max=MAX_SEQ,
                                  help="Only these log sequences (repeat); all by default"),
    projector: str = typer.Option("main", "--projector", help="The projector whose parked events to apply again"),
    data_dir: Optional[Path] = DataDir,
) -> None:
    """Apply parked events again (after a fix); those that still fail stay parked. Exit 1 if any did."""
    from projections.registry import all_projections
    from services.parking import redrive
    from services.rules.worker import PARKED_AS

    if projector == PARKED_AS:
        console.print("events the rules could not judge are re-driven by `touchline rules reset` (after the fix)")
        raise typer.Exit(2)

    async def run():
        async with backends(Settings.from_env(data_dir=data_dir)) as (pool, js):
            known = [row["name"] for row in await pool.fetch("SELECT name FROM projector_positions ORDER BY name")]
            if projector not in known:
                refuse(f"unknown projector {projector!r} (known: {', '.join(known)})")
            return await redrive(pool, js, projector, all_projections(), set(seq) if seq else None)

    outcome = asyncio.run(run())
    for position, error in sorted(outcome.items()):
        console.print(f"seq {position}: " + ("[green]applied[/green]" if error is None else f"[red]still failing[/red] {error}"))
    console.print(f"{sum(e is None for e in outcome.values())} applied, {sum(e is not None for e in outcome.values())} still parked")
    if unknown := sorted(set(seq or ()) - set(outcome)):  # a mistyped sequence was quietly "0 applied", exit 0
        refuse(f"no event parked by projector {projector!r} at sequence {', '.join(map(str, unknown))}"
               " (`touchline parked list`)", 1)
    if any(error is not None for error in outcome.values()):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(parked_app, name="parked")
