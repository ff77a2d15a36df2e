"""The hot reads beside the framework (services/api/fast_reads.py): they answer the plain reads
exactly as the Litestar routes do, and hand every other request to Litestar untouched."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import unquote

from services.api.auth import TokenBook
from services.api.common import Services
from services.api.fast_reads import FastReads
from services.runtime import loop
from services.store.db import create_pool
from tests.support import ADMIN_TOKEN, event


class Framework:
    """Stands in for the Litestar app: records what reaches it."""

    def __init__(self, services: Services) -> None:
        self.state = type("State", (), {"services": services})()
        self.reached: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.reached.append(scope["path"])


def scope(path: str, token: str | None, method: str = "GET", query: bytes = b"") -> dict[str, Any]:
    headers = [(b"host", b"test")] + ([(b"authorization", f"Bearer {token}".encode())] if token else [])
    return {"type": "http", "method": method, "path": path, "query_string": query, "headers": headers}


async def call(app: FastReads, request: dict[str, Any]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(request, receive, send)
    return sent


def comparable(view: dict[str, Any]) -> dict[str, Any]:
    """What two reads of the same data answer alike: open_followups may still grow (the rules
    worker acts on applied events later) and a goals view is as of the moment it is read."""
    return {name: value for name, value in view.items() if name not in ("open_followups", "as_of")}


def test_the_plain_reads_are_answered_beside_litestar_and_everything_else_by_it(stack, servers):
    ws, auth = stack.new_workspace()
    other_ws, other_auth = stack.new_workspace()
    ingest_only = stack.http.post(f"/v1/workspaces/{ws}/tokens", json={"scopes": ["ingest"]}, headers=stack.admin()).json()["token"]
    last = stack.ingest(ws, auth, [
        event("marketing.engaged", "dana", "2026-10-01T10:00:00Z", channel="instagram", action="comment", campaign_id="c1"),
        event("sales.deal.won", "dana", "2026-10-03T10:00:00Z", deal_id="d1", amount="120.50", currency="EUR"),
        event("marketing.engaged", "shop/42", "2026-10-01T10:00:00Z", channel="web", action="view"),
        # A past period: its pacing no longer changes with the moment it is read.
        event("goal.set", time="2026-10-01T00:00:00Z", goal_id="october", metric="revenue", target="1000", currency="EUR",
              period_start="2026-10-01", period_end="2026-11-01"),
    ])
    token = auth["Authorization"].removeprefix("Bearer ")
    paths = [f"/v1/workspaces/{ws}/{view}" for view in ("contacts/dana", "funnel", "touches", "goals")]
    expected = {}
    for path in paths:
        # With a parameter the read goes through Litestar: the reference answer.
        through_litestar = stack.get(path, auth, min_seq=last)
        assert through_litestar.status_code == 200, through_litestar.text
        expected[path] = comparable(through_litestar.json())
        plain = stack.get(path, auth)
        assert plain.status_code == 200
        assert plain.headers["content-type"] == "application/json"
        assert comparable(plain.json()) == expected[path]
    assert expected[paths[-1]]["goals"][0]["actual"] == "120.50"

    async def check() -> None:
        pool = await create_pool(servers.database_url, max_size=2)
        services = Services(pool=pool, nc=None, ingestor=None, tokens=TokenBook(pool, ADMIN_TOKEN))  # type: ignore[arg-type]
        framework = Framework(services)
        fast = FastReads(framework)  # type: ignore[arg-type]

        for path in paths:
            start, body = await call(fast, scope(path, token))
            assert start["status"] == 200
            assert dict(start["headers"])[b"content-length"] == str(len(body["body"])).encode()
            assert comparable(json.loads(body["body"])) == expected[path]
            assert await call(fast, scope(path, ADMIN_TOKEN)) != []  # the operator's token reads too
        assert framework.reached == []

        contact, funnel_path = paths[0], paths[1]
        # HEAD: what GET answers, headers only (RFC 9110 section 9.3.2), on the fast path too.
        start, body = await call(fast, scope(contact, token, method="HEAD"))
        assert start["status"] == 200 and int(dict(start["headers"])[b"content-length"]) > 0 and body["body"] == b""
        assert framework.reached == []
        for request in [
            scope(contact, None),
            scope(contact, "not-a-token"),
            scope(contact, ingest_only),
            scope(funnel_path, other_auth["Authorization"].removeprefix("Bearer ")),
            scope(f"/v1/workspaces/{ws}/contacts/nobody", token),
            scope("/v1/workspaces/ws-unknown/funnel", ADMIN_TOKEN),
            scope(funnel_path, token, query=b"campaign=c1"),
            scope(contact, token, query=b"min_seq=1"),
            scope(f"{contact}/events", token),
            scope(f"{funnel_path}/", token),
            scope(f"/v1/workspaces/{ws}/attribution", token),
        ]:
            framework.reached.clear()
            assert await call(fast, request) == []
            assert framework.reached == [request["path"]], request

        # A contact id holding `/`: the hot path reads it from the raw path's segment, decoded once;
        # what goes on to Litestar keeps that segment encoded, so that it routes as one segment.
        slashed = f"/v1/workspaces/{ws}/contacts/shop%2F42"
        start, body = await call(fast, {**scope(unquote(slashed), token), "raw_path": slashed.encode()})
        assert start["status"] == 200 and json.loads(body["body"])["contact"] == "shop/42"
        for raw in (f"{slashed}/events", f"/v1/workspaces/{ws}/contacts/shop%252F42"):
            framework.reached.clear()
            assert await call(fast, {**scope(unquote(raw), token), "raw_path": raw.encode()}) == []
            assert framework.reached == [raw]

        # The lane's connections cut by the server (a restart, say): the read on one of them is
        # Litestar's to answer; that connection is dropped, and the next read takes a fresh one.
        assert fast.lane is not None and fast.lane.idle
        lent = [conn.get_server_pid() for conn in fast.lane.idle]
        await pool.execute("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", lent)
        framework.reached.clear()
        assert await call(fast, scope(contact, token)) == []
        assert framework.reached == [contact]
        assert await call(fast, scope(contact, token)) != []
        assert framework.reached == [contact]
        assert all(conn.get_server_pid() not in lent for conn in fast.lane.idle)

        await fast.close()  # its connections back in the pool, which then closes at once
        await asyncio.wait_for(pool.close(), 10)

    loop.run(check())
    assert other_ws != ws
