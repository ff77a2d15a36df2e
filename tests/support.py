"""Test support: real embedded servers, Touchline services as real processes, event builders."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from events.commands import COMMANDS_STREAM
from events.log import LOG_STREAM
from services.nats_io import connect, connect_client, ensure_streams
from services.runtime.embedded import EmbeddedServers, free_port
from services.runtime.processes import ServiceProcess
from services.store.db import create_pool, migrate

ADMIN_TOKEN = "test-admin-token"
_ids = itertools.count(1)


def touchline_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
                  timeout: float = 120) -> subprocess.CompletedProcess:
    """The CLI in a process of its own, as a newcomer runs it: none of this process's TOUCHLINE_*
    variables, only those ``env`` gives; 200 columns unless ``env`` says otherwise."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TOUCHLINE_")}
    return subprocess.run([sys.executable, "-m", "services.cli.main", *args], cwd=cwd,
                          env={**clean, "COLUMNS": "200", **(env or {})}, capture_output=True, text=True, timeout=timeout)


def wait_for(check, timeout: float = 90, what: str = "condition"):
    """``check()``'s first true value, asked every 0.1 s; TimeoutError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")


def event(type_: str, subject: str | None = None, time: str = "2026-11-01T10:00:00Z", *,
          id: str | None = None, source: str = "/test", **data: Any) -> dict:
    """A structured-mode CloudEvent; the type may omit the ``touchline.`` prefix."""
    body: dict[str, Any] = {
        "specversion": "1.0",
        "id": id or f"e{next(_ids)}",
        "source": source,
        "type": type_ if type_.startswith("touchline.") else f"touchline.{type_}",
        "time": time,
        "data": data,
    }
    if subject is not None:
        body["subject"] = subject
    return body


def without_followups(contact: dict) -> dict:
    """A contact view without ``open_followups``: that count comes from the rules worker and the
    dispatcher (CONTRACT.md section 6), later than the events that cause it, so tests of the
    contact fold compare the rest (follow-ups are tested in tests/integration/test_followups.py)."""
    return {name: value for name, value in contact.items() if name != "open_followups"}


# NATS and PostgreSQL, embedded, under one temporary directory.
Servers = EmbeddedServers


@contextlib.asynccontextmanager
async def connected(servers: Servers, name: str):
    """A NATS connection with the streams made and a pool on the migrated database, for a service
    object run inside the test (``RulesWorker(nc.jetstream(), pool)``); closed after."""
    nc = await connect(servers.nats_url, name)
    pool = await create_pool(servers.database_url, max_size=2)
    try:
        await ensure_streams(nc.jetstream())
        await migrate(pool)
        yield nc, pool
    finally:
        try:  # a connection the test left acquired must not hold the suite
            await asyncio.wait_for(pool.close(), 10)
        except asyncio.TimeoutError:
            pool.terminate()
        if not nc.is_closed:
            await nc.close()


async def pipeline_state(stack, ws: str) -> tuple[int, int, int]:
    """(the log's last sequence, the rules worker's position, the workspace's commands not yet done)."""
    nc = await connect_client(stack.servers.nats_url)
    try:
        js = nc.jetstream()
        last = (await js.stream_info(LOG_STREAM)).state.last_seq
        queued = (await js.stream_info(COMMANDS_STREAM, subjects_filter=f"touchline.cmd.{ws}")).state.subjects or {}
        conn = await asyncpg.connect(stack.servers.database_url)
        try:
            position = await conn.fetchval("SELECT position FROM rules_positions WHERE name = 'main'")
        finally:
            await conn.close()
        return last, position, sum(queued.values())
    finally:
        await nc.close()


def settle(stack, ws: str, auth: dict) -> int:
    """Wait until the rules have applied the whole log and the workspace's commands are all done,
    twice in a row with the same log end; then until the read models have applied it. Returns it."""
    previous = None

    def settled():
        nonlocal previous
        last, position, queued = asyncio.run(pipeline_state(stack, ws))
        done = position >= last and queued == 0
        stable = done and previous == last
        previous = last if done else None
        return last if stable else None

    try:
        last = wait_for(settled, what="the rules and dispatchers to settle")
    except TimeoutError:
        raise TimeoutError(f"not settled: (log end, rules position, queued) = {asyncio.run(pipeline_state(stack, ws))}")
    assert stack.get(f"/v1/workspaces/{ws}/followups", auth, min_seq=last, wait_ms=30000).status_code == 200
    return last


class Service(ServiceProcess):
    """One `touchline serve KIND` process, logging to its own file in the test's log dir."""

    def __init__(self, kind: str, env: dict[str, str], log_dir: Path) -> None:
        super().__init__(kind, env, log_dir / f"{kind}-{uuid.uuid4().hex[:6]}.log")

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)


class Stack:
    """The API and a projector as processes against shared servers; HTTP helpers for tests."""

    def __init__(self, servers: Servers, log_dir: Path) -> None:
        self.servers = servers
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {
            # Not the terminal's size: the CLI's tables are read by the tests at touchline_cli's
            # width (pytest-xdist's workers say COLUMNS=80, and a wrapped table hides its words).
            **{name: value for name, value in os.environ.items() if name not in ("COLUMNS", "LINES")},
            "TOUCHLINE_NATS_URL": servers.nats_url,
            "TOUCHLINE_DATABASE_URL": servers.database_url,
            "TOUCHLINE_HTTP": f"127.0.0.1:{self.port}",
            "TOUCHLINE_ADMIN_TOKEN": ADMIN_TOKEN,
            # A dispatcher killed while holding commands: they come back after this many seconds.
            "TOUCHLINE_DISPATCHER_ACK_WAIT": "2",
        }
        self.log_dir = log_dir
        self.api = Service("api", self.env, log_dir).start()
        self.projector = Service("projector", self.env, log_dir).start()
        self.rules = Service("rules", self.env, log_dir).start()
        self.dispatchers = [Service("dispatcher", self.env, log_dir).start()]
        self.http = httpx.Client(base_url=self.base, timeout=90)  # past the longest wait_ms a test asks (60 s)
        self.wait_healthy()

    def wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.http.get("/v1/health").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"not healthy; logs in {self.log_dir}")

    def restart_projector(self, kill: bool = True, wait: bool = True) -> None:
        """``wait``: until the new process writes the read models. A read just after a restart
        waits 5 s at most (``wait_ms``) for a projector that may still be importing on a loaded
        machine (one failed so, made to start 4 s late)."""
        (self.projector.kill if kill else self.projector.stop)()
        self.projector = Service("projector", self.env, self.log_dir).start()
        if wait:
            writer = re.compile(rf"\bpid {self.projector.pid}\b")
            wait_for(lambda: any(p["name"] == "main" and writer.search(p["writer"] or "")
                                 for p in self.get("/v1/status", self.admin()).json()["projectors"]),
                     what=f"the restarted projector writing; its log in {self.log_dir}")

    def restart_rules(self, kill: bool = True) -> None:
        (self.rules.kill if kill else self.rules.stop)()
        self.rules = Service("rules", self.env, self.log_dir).start()

    def restart_dispatchers(self, count: int = 1, kill: bool = True) -> None:
        for dispatcher in self.dispatchers:
            (dispatcher.kill if kill else dispatcher.stop)()
        self.dispatchers = [Service("dispatcher", self.env, self.log_dir).start() for _ in range(count)]

    def stop(self) -> None:
        self.http.close()
        self.api.stop()
        self.projector.stop()
        self.rules.stop()
        for dispatcher in self.dispatchers:
            dispatcher.stop()

    # --- the public API -----------------------------------------------------------------

    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    def new_workspace(self, scopes: tuple[str, ...] = ("ingest", "read")) -> tuple[str, dict[str, str]]:
        workspace = f"ws-{uuid.uuid4().hex[:10]}"
        assert self.http.post("/v1/workspaces", json={"id": workspace}, headers=self.admin()).status_code == 201
        answer = self.http.post(f"/v1/workspaces/{workspace}/tokens", json={"scopes": list(scopes)}, headers=self.admin())
        assert answer.status_code == 201, answer.text
        return workspace, {"Authorization": f"Bearer {answer.json()['token']}"}

    def send(self, workspace: str, headers: dict[str, str], events: list[dict] | dict) -> httpx.Response:
        batch = isinstance(events, list)
        content_type = "application/cloudevents-batch+json" if batch else "application/cloudevents+json"
        return self.http.post(
            f"/v1/workspaces/{workspace}/events",
            content=json.dumps(events),
            headers={**headers, "Content-Type": content_type},
        )

    def ingest(self, workspace: str, headers: dict[str, str], events: list[dict]) -> int:
        """Send in batches of 1000; every event must be accepted or duplicate. Returns last_seq."""
        last = 0
        for start in range(0, len(events), 1000):
            answer = self.send(workspace, headers, events[start : start + 1000])
            assert answer.status_code == 200, answer.text
            body = answer.json()
            bad = [r for r in body["results"] if r["status"] == "rejected"]
            assert not bad, bad[:3]
            last = max(last, body["last_seq"] or 0)
        return last

    def get(self, path: str, headers: dict[str, str], **params: Any) -> httpx.Response:
        return self.http.get(path, headers=headers, params=params)
