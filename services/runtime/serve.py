"""Running one service: connect to NATS and PostgreSQL, declare what is needed, serve until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass

import asyncpg
import structlog
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from services import logs
from services.ingest import Ingestor
from services.nats_io import NatsRefused, connect, ensure_streams
from projections.registry import all_projections
from services.projector.runner import Projector
from services.runtime.loop import cancel_and_wait
from services.settings import Settings
from services.store import readiness
from services.store.db import Reset, create_pool, migrate, refusal_advice

log = structlog.get_logger()

STOP_WHILE_STARTING_GRACE = 2.0  # seconds an API worker asked to stop may still finish starting
API_WORKER_ENV = "TOUCHLINE_API_WORKER"  # set by `up` (0, 1, …): this process is one of its API workers
HEARTBEAT_PING_SECONDS = 2.0


@dataclass
class Backends:
    nc: NatsClient
    js: JetStreamContext
    pool: asyncpg.Pool

    async def close(self) -> None:
        # A drain waits for every subscription, up to nats-py's 30 s; a service stopping must not.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.nc.drain(), 3)
        with contextlib.suppress(Exception):
            await self.nc.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.pool.close(), 5)
        log.info("service.stopped")  # its connections closed: every service says so as it goes


def require_external(settings: Settings) -> tuple[str, str]:
    if not settings.nats_url or not settings.database_url:
        raise SystemExit(
            "touchline serve needs TOUCHLINE_NATS_URL and TOUCHLINE_DATABASE_URL;"
            " `touchline up` starts embedded servers and sets both for its services"
        )
    return settings.nats_url, settings.database_url


async def open_backends(settings: Settings, name: str, pool_size: int = 8, reset: Reset | None = None) -> Backends:
    nats_url, database_url = require_external(settings)
    try:
        nc = await connect(nats_url, name=f"touchline-{name}")
    except NatsRefused as refusal:
        raise SystemExit(f"touchline: {refusal.advice()}") from None
    js = nc.jetstream(timeout=10)
    try:
        pool = await create_pool(database_url, max_size=pool_size, reset=reset)
    except asyncpg.InvalidAuthorizationSpecificationError as err:  # as a command says it, not a traceback
        await nc.close()
        raise SystemExit(f"touchline: {refusal_advice(err)}") from None
    return Backends(nc, js, pool)


async def prepare(backends: Backends, settings: Settings) -> None:
    """Idempotent set-up: streams and schema. Every service runs it; the first one does the work."""
    await ensure_streams(backends.js, replicas=settings.nats_replicas)
    await migrate(backends.pool)


async def _until_signal(*tasks: asyncio.Task) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    waiter = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
    await cancel_and_wait(*tasks)
    for task in done:
        if task is not waiter and task.exception():
            raise task.exception()


async def serve_projector(settings: Settings) -> None:
    logs.configure("projector")
    # Two for the batches in flight, one for ANALYZE, one for the heartbeat, one holding the lead.
    backends = await open_backends(settings, "projector", pool_size=5)
    await prepare(backends, settings)
    projector = Projector("main", all_projections(), backends.js, backends.pool)
    tasks = [
        asyncio.create_task(projector.run()),
        asyncio.create_task(readiness.heartbeat(backends.pool, "projector")),
    ]
    try:
        await _until_signal(*tasks)
    finally:
        projector.stop()
        await backends.close()


def listen(host: str, port: int, patience: float = 0.0, *, share: bool = False) -> socket.socket:
    """The API's listening socket. ``share``: one of `up`'s API workers, each with a socket of its
    own on the same port (SO_REUSEPORT), so the kernel spreads new connections over the workers
    evenly (one socket handed to all of them let the first awake worker take every connection of
    a burst: the bench's four ingest connections all went to one worker, the other idle). A port
    still held is tried again for ``patience`` seconds: a stack killed just before lets go soon."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as err:  # a host name that does not resolve
        raise SystemExit(f"touchline: cannot listen on {host}:{port}: {err.strerror or err}") from None
    deadline = time.monotonic() + patience
    while True:
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if share:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind(address)
            break
        except OSError as err:
            sock.close()
            if time.monotonic() >= deadline:
                raise SystemExit(f"touchline: cannot listen on {host}:{port}: {err.strerror or err}") from None
            time.sleep(0.2)
    sock.listen(2048)
    return sock


def api_worker() -> int | None:
    """Which of `up`'s API workers this process is, or None when it runs alone."""
    worker = os.environ.get(API_WORKER_ENV)
    return int(worker) if worker else None


async def serve_api(settings: Settings) -> None:
    # Imported here: the other services run from this module too, and the HTTP side (Litestar,
    # uvicorn) would add a quarter of a second to each one's start.
    import uvicorn

    from services.api.app import create_app
    from services.api.auth import KnownWorkspaces, TokenBook
    from services.api.common import Services, nothing_to_reset
    from services.api.fast_reads import FastReads
    from services.inbox import InboxReader, start_inbox
    from services.runtime.http_server import CoalescingHttpToolsProtocol

    logs.configure("api")
    require_external(settings)  # a clean line now, not a traceback out of the app's start-up
    worker = api_worker()
    if worker is not None:  # every line of `up`'s API workers says which one (they share one stderr)
        structlog.contextvars.bind_contextvars(worker=worker)
    opened: list[Backends] = []
    readers: list[InboxReader] = []

    async def services() -> Services:
        try:
            backends = await open_backends(settings, "api", reset=nothing_to_reset)
        except SystemExit as refused:
            # Credentials refused: one line, as the other services say it. Raised, uvicorn would log
            # the traceback of a failed start-up and exit 3; nothing but the listening socket is held.
            print(refused, file=sys.stderr, flush=True)
            os._exit(1)
        opened.append(backends)
        await prepare(backends, settings)
        ingestor = Ingestor(backends.nc, backends.pool)
        workspaces = KnownWorkspaces(backends.pool)
        if not worker:  # alone, or `up`'s first worker
            # The NATS way in runs beside the HTTP one, in the first worker, sharing its ingestor
            # (a reader in every worker would be correct, fenced by its position row, but idle).
            readers.append(start_inbox(ingestor, workspaces))
        return Services(
            pool=backends.pool,
            nc=backends.nc,
            ingestor=ingestor,
            tokens=TokenBook(backends.pool, settings.admin_token),
            workspaces=workspaces,
        )

    async def shutdown() -> None:
        for reader in readers:
            reader.stop()
        await fast.close()  # its connections back in the pool, or the pool's close waits for them
        for backends in opened:
            await backends.close()

    fast = FastReads(create_app(services, on_shutdown=[shutdown]))
    config = uvicorn.Config(
        fast,
        host=settings.http_host,
        port=settings.http_port,
        log_level="warning",
        access_log=False,
        loop="none",  # served inside the process's own loop (services.runtime.loop: uvloop)
        http=CoalescingHttpToolsProtocol,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    listener = listen(settings.http_host, settings.http_port, share=worker is not None)
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    # uvicorn takes SIGINT and SIGTERM from the start but only notes them until its start-up is
    # over, and start-up (the app's lifespan) waits for ever for a NATS that cannot be reached: the
    # one of an `up` killed a moment before, say. Stopped then, the worker would never go, and
    # its socket would keep taking connections on the port. Nothing is served or held before
    # start-up ends, so after a short grace it leaves at once.
    asked_at = None
    while not serving.done() and not server.started:
        await asyncio.wait([serving], timeout=0.2)
        if server.should_exit and not server.started:
            asked_at = asked_at or time.monotonic()
            if time.monotonic() - asked_at > STOP_WHILE_STARTING_GRACE:
                log.warning("api.stopped_while_starting")
                os._exit(0)
    if server.started:  # connected and set up: from now on requests are served
        log.info("api.listening", url=f"http://{settings.http}", docs=f"http://{settings.http}/docs")
    await serving  # started: uvicorn's own graceful stop


async def serve_rules(settings: Settings) -> None:
    """The rules worker (CONTRACT.md section 6): log in, commands and timers out."""
    from services.rules.worker import RulesWorker

    logs.configure("rules")
    # Two for the batches and the timers, one for the goal tick, one for the heartbeat, one holding the lead.
    backends = await open_backends(settings, "rules", pool_size=5)
    await prepare(backends, settings)
    worker = RulesWorker(backends.js, backends.pool, goal_check_seconds=settings.goal_check_seconds)
    tasks = [
        asyncio.create_task(worker.run()),
        asyncio.create_task(readiness.heartbeat(backends.pool, "rules")),
    ]
    try:
        await _until_signal(*tasks)
    finally:
        worker.stop()
        await backends.close()


async def serve_dispatcher(settings: Settings) -> None:
    """The dispatcher: a FastStream subscriber on the work queue; log appends and webhooks."""
    import httpx

    from services.dispatcher.app import CommandsInFlight, Dispatcher, build, update_consumer

    logs.configure("dispatcher")
    backends = await open_backends(settings, "dispatcher", pool_size=4)
    await prepare(backends, settings)
    async with httpx.AsyncClient(follow_redirects=False) as http:
        dispatcher = Dispatcher(backends.pool, Ingestor(backends.nc, backends.pool), http)
        in_flight = CommandsInFlight(settings.dispatcher_ack_wait)
        broker = build(settings.nats_url, dispatcher, ack_wait=settings.dispatcher_ack_wait, in_flight=in_flight).broker
        await update_consumer(backends.js)
        await broker.start()
        log.info("dispatcher.started")
        # Ready while its broker's own connection answers: FastStream gives up reconnecting for good
        # on some refusals, and the process would otherwise look healthy doing nothing.
        tasks = [asyncio.create_task(readiness.heartbeat(backends.pool, "dispatcher",
                                                         alive=lambda: broker.ping(timeout=HEARTBEAT_PING_SECONDS)))]
        try:
            await _until_signal(*tasks)
        finally:
            await in_flight.stop()  # before the broker: their acks and naks go through its connection
            with contextlib.suppress(Exception):
                await broker.stop()
            await backends.close()


SERVICES = {"api": serve_api, "projector": serve_projector, "rules": serve_rules, "dispatcher": serve_dispatcher}
