"""The hot read views, answered beside the web framework.

A GET of one contact is a single indexed row. Answering it through Litestar (routing, parameter
parsing, middleware, a Response object) cost a worker 130-150 µs of CPU a request, over a third
of what the request cost it in all (docs/performance.md, sixth session); the workspace views
(funnel, touches, goals) pay the same. `FastReads` sits in front of the Litestar app and answers
only the plain case in full: GET of one of those views with no query string (every filter at its
default), a bearer token with the read scope on a known workspace, and for a contact, a stored
one. Everything else goes to Litestar untouched, as it arrived (but for the form of a contact's
path, below): every other route, every query parameter, and every error, even one met here (the
request is only a read, so asking again is harmless). So the OpenAPI docs, the parameter
validation and the error answers stay in one place, and each view comes from the same `query` of
its projection that the Litestar route calls.

It also resolves every contact path (services/api/contact_paths.py) before anything else: the
contact comes from the raw path's segment, decoded once, and Litestar is handed that segment still
encoded, so that an id holding `/` (sent as `%2F`) reaches the contact routes.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Any, Awaitable, Callable

import asyncpg
import structlog
from litestar import Litestar

from projections import contacts, funnel, goals, touches
from services.api import contact_paths
from services.api.common import NUL_HOLDER, ApiError, Services, check_access, encode_json
from services.store.db import UNAVAILABLE as DATABASE_UNAVAILABLE

log = structlog.get_logger()

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

# The workspace views' paths, {ws:str} one segment (contacts: contact_paths.parse).
PATH = re.compile(r"/v1/workspaces/([^/]+)/(funnel|touches|goals)")

# Each workspace view with every parameter at the default its Litestar route gives it.
WORKSPACE_VIEWS: dict[str, Callable[[asyncpg.Connection, str], Awaitable[Any]]] = {
    "funnel": funnel.query,
    "touches": touches.query,
    "goals": goals.query,
}


# `?snapshot=` read as the parameter left out answered from the live read models, with a 200, what
# an auditor's `?snapshot=$NAME` of an unset NAME asked of a past (an outside audit): it is kept, and
# the read refuses it after its token's check (``common.wait_applied``).
EMPTY_SNAPSHOT = b"snapshot="


def without_empty_values(query: bytes) -> bytes:
    """The query string without its empty parameters (`limit=`, `stage=`, a bare `&`): an empty value
    is the parameter left out, on every route, whatever its type; but ``snapshot`` (``EMPTY_SNAPSHOT``)."""
    if not query:
        return query
    return b"&".join(part for part in query.split(b"&")
                     if part and (not part.endswith(b"=") or part == EMPTY_SNAPSHOT))


def nul_holder(scope: dict[str, Any]) -> str | None:
    """The query parameter (or "path") whose value holds an encoded NUL, if any."""
    if b"%00" in scope.get("raw_path", b"") or "\x00" in scope["path"]:
        return "path"
    if b"%00" not in scope["query_string"]:
        return None
    for name, value in urllib.parse.parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True):
        if "\x00" in name or "\x00" in value:
            return name.replace("\x00", "") or "query"
    return "query"


def _is_ingest(scope: dict[str, Any]) -> bool:
    """POST /v1/workspaces/{ws}/events."""
    path = scope["path"]
    return scope["method"] == "POST" and path.startswith("/v1/workspaces/") and path.endswith("/events") \
        and path.count("/") == 4


async def _send(send: Send, status: int, body: bytes) -> None:
    """A JSON answer in one body write."""
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class ReadLane:
    """Connections kept out of the pool between reads, handed from read to read.

    asyncpg's pool spends about 60 µs of CPU on an acquire and release (the release runs as a task
    of its own, shielded from cancellation): as much as the contact query itself
    (docs/performance.md, item 31). A read takes an idle connection of the lane, or one from the
    pool when there is none; afterwards the lane keeps it while it holds fewer than ``size`` idle,
    and gives it back otherwise. So reads never wait for the lane, and the lane never keeps more
    than ``size`` of the pool's connections from the other routes. A connection a read failed on,
    or was cancelled in, may be broken or still busy: it is closed and given back to the pool.
    """

    def __init__(self, pool: asyncpg.Pool, size: int) -> None:
        self.pool = pool
        self.size = size
        self.idle: list[asyncpg.Connection] = []

    def connection(self) -> _Lent:
        """``async with lane.connection() as conn``."""
        return _Lent(self)

    async def close(self) -> None:
        """Give the idle connections back, so that the pool can close (at shutdown, after the
        last read)."""
        idle, self.idle = self.idle, []
        for conn in idle:
            await self.pool.release(conn)


class _Lent:
    __slots__ = ("lane", "conn")

    def __init__(self, lane: ReadLane) -> None:
        self.lane = lane

    async def __aenter__(self) -> asyncpg.Connection:
        lane = self.lane
        self.conn = lane.idle.pop() if lane.idle else await lane.pool.acquire()
        return self.conn

    async def __aexit__(self, kind: type[BaseException] | None, *_: Any) -> None:
        lane = self.lane
        if kind is None and len(lane.idle) < lane.size:
            lane.idle.append(self.conn)
            return
        if kind is not None:
            self.conn.terminate()
        await lane.pool.release(self.conn)


def _headers_only(send: Send) -> Send:
    async def send_headers(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            message = {**message, "body": b""}
        await send(message)

    return send_headers


class FastReads:
    """An ASGI app: the Litestar app, with the plain hot reads answered first."""

    def __init__(self, app: Litestar, lane_size: int = 4) -> None:
        self.app = app
        self.lane_size = lane_size
        self.lane: ReadLane | None = None  # made at the first read: the pool opens at start-up

    async def close(self) -> None:
        if self.lane is not None:
            await self.lane.close()

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if scope["method"] == "HEAD":  # RFC 9110 9.3.2: what GET answers, headers only (it was a 405)
                scope, send = {**scope, "method": "GET"}, _headers_only(send)
            scope["query_string"] = without_empty_values(scope["query_string"])
            nul = nul_holder(scope)
            # PostgreSQL's text cannot hold it: refused, named, for every route (ingest reads no query
            # parameter, and refusing one there kept no body: an outside audit), by the route's guard,
            # after the token's check: refused here, it was a 400 where the contract says 401 or 403
            # (an outside fuzz of the API).
            if nul is not None and not (nul != "path" and _is_ingest(scope)):
                scope[NUL_HOLDER] = nul
            view = self._route(scope)
            if view is not None and nul is None and scope["method"] == "GET" and not scope["query_string"]:
                body = await self._answer(scope, *view)
                if body is not None:
                    await _send(send, 200, body)
                    return
        await self.app(scope, receive, send)

    @staticmethod
    def _route(scope: dict[str, Any]) -> tuple[str, str | None, str | None] | None:
        """The hot view the path names, as (workspace, contact, view), or None. A contact path is
        put in the form Litestar routes (``contact_paths.ContactPath.routed``) whatever it asks."""
        contact = contact_paths.parse(scope)
        if contact is not None:
            scope["path"] = contact.routed
            if contact.events or contact.contact is None:
                return None
            return contact.workspace, contact.contact, None
        match = PATH.fullmatch(scope["path"])
        return None if match is None else (match[1], None, match[2])

    async def _answer(self, scope: dict[str, Any], ws: str, contact: str | None, view: str | None) -> bytes | None:
        """The view's JSON, or None for Litestar to answer whatever else this request deserves."""
        services: Services = self.app.state.services
        try:
            await check_access(services, scope, ws, "read")
            if self.lane is None:
                self.lane = ReadLane(services.pool, self.lane_size)
            async with self.lane.connection() as conn:
                answer = await (contacts.query(conn, ws, contact) if contact else WORKSPACE_VIEWS[view](conn, ws))
        except (ApiError, *DATABASE_UNAVAILABLE):  # Litestar's handlers answer them, in one format
            return None
        except Exception as err:  # the same, but written down: a fault of this path's own
            log.warning("api.fast_read_failed", path=scope["path"], error=repr(err), exc_info=err)
            return None
        return None if answer is None else encode_json(answer)
