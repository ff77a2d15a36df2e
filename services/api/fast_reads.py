"""The contact view, the API's hottest read, answered beside the web framework.

A GET of one contact is a single indexed row. Answering it through Litestar (routing, parameter
parsing, middleware, a Response object) cost a worker 130-150 µs of CPU a request, over a third
of what the request cost it in all (docs/performance.md, sixth session). `FastReads` sits in front of the Litestar app and
answers only the plain case in full: GET of a contact, no query string, a bearer token with the
read scope on the workspace, a stored contact. Everything else goes to Litestar untouched, as
it arrived: every other route, every query parameter, and every error, even one met here (the
request is only a read, so asking again is harmless). So the OpenAPI docs, the parameter
validation and the error answers stay in one place, and the view itself comes from the same
`projections.contacts.query` the Litestar route calls.
"""

from __future__ import annotations

import re
from typing import Any, Awaitable, Callable

from litestar import Litestar

from projections import contacts
from services.api.common import Services, bearer_token, encode_json

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

# The route's path with {ws:str} and {contact:str}: one segment each.
CONTACT_PATH = re.compile(r"/v1/workspaces/([^/]+)/contacts/([^/]+)")


class FastReads:
    """An ASGI app: the Litestar app, with the plain contact read answered first."""

    def __init__(self, app: Litestar) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and not scope["query_string"]:
            match = CONTACT_PATH.fullmatch(scope["path"])
            if match is not None:
                body = await self._contact(scope, match[1], match[2])
                if body is not None:
                    await send({"type": "http.response.start", "status": 200, "headers": [
                        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
                    await send({"type": "http.response.body", "body": body})
                    return
        await self.app(scope, receive, send)

    async def _contact(self, scope: dict[str, Any], ws: str, contact: str) -> bytes | None:
        """The view's JSON, or None for Litestar to answer whatever else this request deserves."""
        services: Services = self.app.state.services
        try:
            token = bearer_token(scope)
            if token is None:
                return None
            grant = await services.tokens.grant_for(token)
            # No workspace check: an unknown workspace holds no contact, so it is Litestar's to answer.
            if grant is None or not grant.allows(ws, "read"):
                return None
            async with services.pool.acquire() as conn:
                view = await contacts.query(conn, ws, contact)
        except Exception:  # a database outage, say: Litestar's handlers answer it, in one format
            return None
        return None if view is None else encode_json(view)
