"""The contact read beside the framework (services/api/fast_reads.py): it answers the plain read
exactly as the Litestar route does, and hands every other request to Litestar untouched."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from services.api.auth import KnownWorkspaces, TokenBook
from services.api.common import Services
from services.api.fast_reads import FastReads
from services.runtime import loop
from services.store.db import create_pool
from tests.support import ADMIN_TOKEN, event, without_followups


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


def test_the_plain_read_is_answered_beside_litestar_and_everything_else_by_it(stack, servers):
    ws, auth = stack.new_workspace()
    other_ws, other_auth = stack.new_workspace()
    ingest_only = stack.http.post(f"/v1/workspaces/{ws}/tokens", json={"scopes": ["ingest"]}, headers=stack.admin()).json()["token"]
    last = stack.ingest(ws, auth, [
        event("marketing.engaged", "dana", "2026-11-01T10:00:00Z", channel="instagram", action="comment", campaign_id="c1"),
        event("sales.deal.won", "dana", "2026-11-03T10:00:00Z", deal_id="d1", amount="120.50", currency="EUR"),
    ])
    # With a parameter the read goes through Litestar: the reference answer.
    through_litestar = stack.get(f"/v1/workspaces/{ws}/contacts/dana", auth, min_seq=last)
    assert through_litestar.status_code == 200, through_litestar.text
    plain = stack.get(f"/v1/workspaces/{ws}/contacts/dana", auth)
    assert plain.status_code == 200
    # open_followups may still grow: the rules worker acts on these events after they are applied.
    assert without_followups(plain.json()) == without_followups(through_litestar.json())
    assert plain.headers["content-type"] == "application/json"
    token = auth["Authorization"].removeprefix("Bearer ")

    async def check() -> None:
        pool = await create_pool(servers.database_url, max_size=2)
        services = Services(pool=pool, nc=None, ingestor=None, tokens=TokenBook(pool, ADMIN_TOKEN))  # type: ignore[arg-type]
        framework = Framework(services)
        fast = FastReads(framework)  # type: ignore[arg-type]
        path = f"/v1/workspaces/{ws}/contacts/dana"

        start, body = await call(fast, scope(path, token))
        assert framework.reached == []
        assert start["status"] == 200
        assert dict(start["headers"])[b"content-length"] == str(len(body["body"])).encode()
        assert without_followups(json.loads(body["body"])) == without_followups(through_litestar.json())
        assert await call(fast, scope(path, ADMIN_TOKEN)) != []  # the operator's token reads too
        assert framework.reached == []

        for request in [
            scope(path, None),
            scope(path, "not-a-token"),
            scope(path, ingest_only),
            scope(path, other_auth["Authorization"].removeprefix("Bearer ")),
            scope(f"/v1/workspaces/{ws}/contacts/nobody", token),
            scope("/v1/workspaces/ws-unknown/contacts/dana", ADMIN_TOKEN),
            scope(path, token, query=b"min_seq=1"),
            scope(path, token, method="HEAD"),
            scope(f"{path}/events", token),
            scope(f"{path}/", token),
        ]:
            framework.reached.clear()
            assert await call(fast, request) == []
            assert framework.reached == [request["path"]], request

        await pool.close()  # the database gone: Litestar's handlers answer that too
        framework.reached.clear()
        assert await call(fast, scope(path, token)) == []
        assert framework.reached == [path]

    loop.run(check())
    assert other_ws != ws
