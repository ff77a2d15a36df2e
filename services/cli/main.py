"""The `touchline` command (CONTRACT.md section 1)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import AsyncIterator, Optional

import asyncpg
import typer
from rich.console import Console

from events.validation import is_workspace_id
from services.api import auth
from services.settings import Settings
from services.store.db import create_pool, migrate

app = typer.Typer(help="Touchline: every marketing and sales touch, as an immutable event log.", no_args_is_help=True)
workspace_app = typer.Typer(help="Workspaces (one per business).", no_args_is_help=True)
token_app = typer.Typer(help="Bearer tokens.", no_args_is_help=True)
app.add_typer(workspace_app, name="workspace")
app.add_typer(token_app, name="token")
console = Console()
err_console = Console(stderr=True)

@app.callback()
def _logging() -> None:
    """Logs go to stderr (structured), so that what a command prints on stdout stays clean."""
    from services import logs

    logs.configure("cli")


DataDir = typer.Option(None, "--data-dir", help="Where embedded servers keep their data [env TOUCHLINE_DATA_DIR]")


@app.command()
def up(
    data_dir: Optional[Path] = DataDir,
    http: Optional[str] = typer.Option(None, "--http", help="HOST:PORT for the HTTP API [env TOUCHLINE_HTTP]"),
) -> None:
    """Start everything: embedded NATS and PostgreSQL (unless external ones are set), API and projector."""
    from services.runtime.up import up as run_up

    run_up(Settings.from_env(data_dir=data_dir, http=http))


@app.command()
def serve(service: str = typer.Argument(..., help="api | projector | rules | dispatcher")) -> None:
    """Run one service alone, against TOUCHLINE_NATS_URL and TOUCHLINE_DATABASE_URL."""
    from services.runtime import loop
    from services.runtime.serve import SERVICES

    if service not in SERVICES:
        raise typer.BadParameter(f"expected one of {', '.join(SERVICES)}", param_hint="SERVICE")
    try:
        loop.run(SERVICES[service](Settings.from_env()))
    except KeyboardInterrupt:
        pass


@contextlib.asynccontextmanager
async def database(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    """The configured PostgreSQL, or the embedded one under the data dir (reused if `up` runs)."""
    url = settings.database_url
    embedded = None
    if url is None:
        from services.runtime.embedded import EmbeddedPostgres

        embedded = EmbeddedPostgres(settings.data_dir)
        url = embedded.start()
    pool = await create_pool(url, max_size=2)
    try:
        await migrate(pool)
        yield pool
    finally:
        await pool.close()


@workspace_app.command("create")
def workspace_create(workspace: str, data_dir: Optional[Path] = DataDir) -> None:
    """Create a workspace."""
    if not is_workspace_id(workspace):
        raise typer.BadParameter("a workspace id is 1-64 of a-z 0-9 -", param_hint="WORKSPACE")

    async def run() -> bool:
        async with database(Settings.from_env(data_dir=data_dir)) as pool:
            return await auth.create_workspace(pool, workspace)

    if not asyncio.run(run()):
        err_console.print(f"[red]workspace {workspace!r} exists[/red]")
        raise typer.Exit(1)
    console.print(f"created workspace [bold]{workspace}[/bold]")


@token_app.command("create")
def token_create(
    workspace: str = typer.Option(..., "--workspace", "-w"),
    scope: list[str] = typer.Option(..., "--scope", "-s", help="ingest, read or admin; repeat for several"),
    nats: bool = typer.Option(False, "--nats", help="NATS producer credentials instead of a bearer token (--scope ingest)"),
    data_dir: Optional[Path] = DataDir,
) -> None:
    """Create a bearer token for a workspace; it is printed once and only its hash is kept.

    With --nats: a NATS user that may publish only to touchline.in.WORKSPACE; prints its URL,
    user, password and inbox prefix as JSON (the password once; only its bcrypt hash is kept)."""
    unknown = sorted(set(scope) - set(auth.SCOPES))
    if unknown:
        raise typer.BadParameter(f"unknown scope {unknown}; expected {list(auth.SCOPES)}", param_hint="--scope")
    if nats:
        from services.cli.producers import create_producer

        if set(scope) != {"ingest"}:
            raise typer.BadParameter("NATS credentials only ingest: use --scope ingest", param_hint="--scope")
        raise typer.Exit(create_producer(Settings.from_env(data_dir=data_dir), workspace))

    async def run() -> str | None:
        async with database(Settings.from_env(data_dir=data_dir)) as pool:
            if not await auth.workspace_exists(pool, workspace):
                return None
            return await auth.create_token(pool, workspace, scope)

    token = asyncio.run(run())
    if token is None:
        err_console.print(f"[red]unknown workspace {workspace!r}[/red]")
        raise typer.Exit(1)
    print(token)


from services.cli import audit as _audit_commands  # noqa: E402  replay, audit, status, snapshot

_audit_commands.register(app)

from services.cli import demo as _demo_command  # noqa: E402  demo

_demo_command.register(app)

from services import bench as _bench_command  # noqa: E402  bench

_bench_command.register(app)

from services.cli import followups as _followup_commands  # noqa: E402  deadletter, rules, asyncapi

_followup_commands.register(app)


from services.cli import parked as _parked_commands  # noqa: E402  parked list|redrive

_parked_commands.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
