"""A contact id in a URL: one path segment, percent-encoded by the client, decoded here exactly once.

A contact id is any 1-128 characters (CONTRACT.md section 3, `subject`): `/`, `%`, spaces,
non-ASCII, `.` and `..` included. The server (uvicorn) percent-decodes the whole path into
``scope["path"]``, so `x%2Fy` arrives there as `x/y`: two segments, which no route matches, and
`x%2Fevents` would read as the audit trail of `x`. So the contact routes are read from
``scope["raw_path"]``, the path as sent: the segment after `contacts/`, percent-decoded once as
UTF-8 (`a%252Fb` is the contact `a%2Fb`, never `a/b`). `FastReads` (services/api/fast_reads.py)
hands Litestar ``routed``, the path with that segment still encoded (it holds no `/`), so that
Litestar routes it to the two contact routes (and the OpenAPI document keeps them), and both the
hot path and the routes' handlers take the contact from ``parse``.

Standard library only: clients (the benchmark) build their URLs with ``segment``.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple
from urllib.parse import quote, unquote

# /v1/workspaces/{ws}/contacts/{contact} and .../{contact}/events, on a path without empty segments.
_CONTACT_PATH = re.compile(r"/v1/workspaces/([^/]+)/contacts/([^/]+)(/events)?")


class ContactPath(NamedTuple):
    workspace: str
    contact: str | None  # None: the segment does not decode to UTF-8, so names no contact
    events: bool  # the audit trail (.../events), else the contact view
    routed: str  # the path for Litestar to route: the contact's segment as sent


def parse(scope: dict[str, Any]) -> ContactPath | None:
    """The contact route a request addresses, or None for any other path."""
    raw = scope.get("raw_path")
    if raw is None:  # a server that gives no raw path: the decoded one is all there is
        path, encoded = scope["path"], False
    else:
        try:
            path, encoded = raw.decode("ascii"), True
        except UnicodeDecodeError:
            return None
    if "/contacts/" not in path:
        return None
    # Empty segments dropped, as Litestar's router drops them (normalize_path, traverse_route_map).
    path = "/" + "/".join(part for part in path.split("/") if part)
    found = _CONTACT_PATH.fullmatch(path)
    if found is None:
        return None
    workspace, raw_contact, events = found.groups()
    contact: str | None = raw_contact
    if encoded:
        workspace = unquote(workspace)
        try:
            contact = unquote(raw_contact, errors="strict")
        except UnicodeDecodeError:
            contact = None
    routed = f"/v1/workspaces/{workspace}/contacts/{raw_contact}{events or ''}"
    return ContactPath(workspace, contact, events is not None, routed)


def segment(contact: str) -> str:
    """The contact id as one URL path segment: every byte of its UTF-8 but the unreserved
    ``A-Z a-z 0-9 - . _ ~`` percent-encoded, and a dot segment (`.`, `..`) as `%2E` / `%2E%2E`,
    which URL libraries would otherwise resolve away."""
    encoded = quote(contact, safe="")
    return encoded.replace(".", "%2E") if encoded in (".", "..") else encoded
