"""Security (CONTRACT.md sections 2 and 7): every route isolates workspaces, tokens are stored
hashed, size caps apply before a body is read, and no secret reaches a log."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import typing
import warnings

import asyncpg
import msgspec
import pytest

from services.api.app import create_app
from services.runtime import nats_auth
from tests.integration.test_nats_producers import create_producer
from tests.support import ADMIN_TOKEN, event

PUBLIC = ("/v1/health", "/docs")


def sample(annotation: typing.Any) -> typing.Any:
    """A plausible JSON value for a handler's ``data`` type, so the body passes validation and
    the answer shows what the access check decided."""
    info = msgspec.inspect.type_info(annotation)

    def value(t: msgspec.inspect.Type) -> typing.Any:
        if isinstance(t, msgspec.inspect.StructType):
            return {f.encode_name: value(f.type) for f in t.fields if f.required}
        if isinstance(t, msgspec.inspect.UnionType):
            return value(next(x for x in t.types if not isinstance(x, msgspec.inspect.NoneType)))
        if isinstance(t, (msgspec.inspect.ListType, msgspec.inspect.SetType)):
            return [value(t.item_type)]
        if isinstance(t, msgspec.inspect.DictType):
            return {}
        if isinstance(t, msgspec.inspect.IntType):
            return 1
        if isinstance(t, msgspec.inspect.FloatType):
            return 1.0
        if isinstance(t, msgspec.inspect.BoolType):
            return True
        if isinstance(t, msgspec.inspect.LiteralType):
            return t.values[0]
        return "read" if isinstance(t, msgspec.inspect.StrType) else None

    return value(info)


def every_route() -> list[tuple[str, str, typing.Any]]:
    """(method, path template, sample body) of every route the app serves, found at run time."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Litestar's deprecation notes about parameter styles
        app = create_app(lambda: None)
    found = []
    for route in app.routes:
        if route.path.startswith(PUBLIC):
            continue
        for handler in route.route_handlers:
            for method in sorted(handler.http_methods - {"OPTIONS", "HEAD"}):
                data = handler.parsed_fn_signature.parameters.get("data")
                found.append((method, route.path, sample(data.annotation) if data is not None else None))
    # In a fixed order: a route's handlers come in no stable one, and pytest-xdist's workers must
    # collect the same tests.
    return sorted(found, key=lambda route: (route[1], route[0]))


def fill(template: str, ws: str) -> str:
    path = template
    for name, value in (("ws", ws), ("contact", "c1"), ("path", "c1"), ("token_id", "0" * 12)):
        path = path.replace(f"{{{name}:str}}", value)
    assert "{" not in path, f"a path parameter this test does not know: {template}"
    return path


def test_the_walk_covers_the_api():
    routes = {(method, path) for method, path, _ in every_route()}
    assert ("POST", "/v1/workspaces/{ws:str}/events") in routes
    assert ("GET", "/v1/workspaces/{ws:str}/contacts/{contact:str}") in routes
    assert ("GET", "/v1/status") in routes
    assert len(routes) >= 15


@pytest.mark.parametrize("method,template,body", every_route(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_route_refuses_a_foreign_token(stack, method, template, body):
    victim, victim_auth = stack.new_workspace(("ingest", "read", "admin"))
    stack.ingest(victim, victim_auth, [event("sales.lead.qualified", "c1")])
    _, foreign = stack.new_workspace(("ingest", "read", "admin"))
    path = fill(template, victim)
    content = json.dumps(body if body is not None else {}).encode()
    headers = {"Content-Type": "application/json"}
    if template.endswith("/events"):
        content = json.dumps(event("sales.lead.qualified", "c1")).encode()
        headers = {"Content-Type": "application/cloudevents+json"}
    for auth, expected in ((foreign, 403), ({}, 401), ({"Authorization": "Bearer tl_forged"}, 401)):
        answer = stack.http.request(method, path, content=content, headers={**headers, **auth})
        assert answer.status_code == expected, (method, path, answer.status_code, answer.text[:200])
        assert victim not in answer.text or "workspace" in answer.json().get("error", ""), answer.text[:200]


def test_two_authorization_fields_are_refused_on_every_route(stack):
    """The first one was taken: a proxy in front that checked the last would not see what the API
    saw (an outside audit). RFC 9110 allows one."""
    ws, auth = stack.new_workspace(("ingest", "read", "admin"))
    for method, template, _ in every_route():
        headers = [("Authorization", auth["Authorization"]), ("Authorization", "Bearer tl_other"),
                   ("Content-Type", "application/json")]
        answer = stack.http.request(method, fill(template, ws), content=b"{}", headers=headers)
        assert (answer.status_code, answer.json()) == (400, {"error": "Authorization: given more than once"}), (
            method, template, answer.text[:200])


@pytest.mark.parametrize("method,template,body", every_route(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_route_checks_the_token_before_it_reads_the_body(stack, method, template, body):
    """The routes with a JSON body answered 400 naming a field of it (or "body: 'data'") to a
    request without a valid token."""
    ws, _ = stack.new_workspace()
    for content in (b"", b"{}", b"{not json"):
        for auth in ({}, {"Authorization": "Bearer tl_forged"}):
            answer = stack.http.request(method, fill(template, ws), content=content,
                                        headers={"Content-Type": "application/json", **auth})
            assert answer.status_code == 401, (method, template, content, answer.text[:200])


def test_a_body_that_is_missing_or_names_a_bad_workspace_id_says_so(stack):
    missing = stack.http.post("/v1/workspaces", headers=stack.admin())
    assert missing.status_code == 400 and missing.json()["error"] == "body: required (a JSON object)", missing.text
    # $ matched before a final newline: "acme\n" was a workspace whose every ingest waited 60 s for a 504.
    newline = stack.http.post("/v1/workspaces", json={"id": "acme\n"}, headers=stack.admin())
    assert newline.status_code == 400 and newline.json()["error"].startswith("id: a workspace id is"), newline.text


def test_tokens_are_stored_only_as_hashes(stack):
    ws, auth = stack.new_workspace()
    token = auth["Authorization"].removeprefix("Bearer ")

    async def rows() -> list:
        conn = await asyncpg.connect(stack.servers.database_url)
        try:
            return [dict(r) for r in await conn.fetch("SELECT * FROM tokens WHERE workspace = $1", ws)]
        finally:
            await conn.close()

    stored = asyncio.run(rows())
    assert len(stored) == 1
    assert stored[0]["hash"] == hashlib.sha256(token.encode()).digest()
    assert token not in repr(stored)


def raw_request(port: int, head: str, body: bytes = b"", timeout: float = 5.0) -> tuple[int, float]:
    """Send a request head (and maybe part of a body) without finishing the body; the status line."""
    import time

    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        start = time.monotonic()
        sock.sendall(head.replace("\n", "\r\n").encode() + body)
        reply = sock.recv(65536).decode("latin-1")
        return int(reply.split(" ", 2)[1]), time.monotonic() - start


def test_size_caps_apply_before_the_body_is_read(stack):
    ws, auth = stack.new_workspace()
    for path, content_type in ((f"/v1/workspaces/{ws}/events", "application/cloudevents-batch+json"),
                               ("/v1/workspaces", "application/json")):
        token = auth["Authorization"] if path.endswith("/events") else f"Bearer {ADMIN_TOKEN}"
        # Claims 1 GB and sends 10 bytes: the answer comes without the rest (within the socket's timeout).
        status, took = raw_request(stack.port, (
            f"POST {path} HTTP/1.1\nHost: x\nAuthorization: {token}\nContent-Type: {content_type}\n"
            f"Content-Length: {10**9}\n\n"), b"[" * 10)
        assert status == 413, (path, status, took)  # an answer at all: one waiting for the body never came
    # Past the route's own limit (a TiB), where Litestar refuses to stream the body: kept all the same.
    status, _ = raw_request(stack.port, (
        f"POST /v1/workspaces/{ws}/events HTTP/1.1\nHost: x\nAuthorization: {auth['Authorization']}\n"
        f"Content-Type: application/cloudevents-batch+json\nContent-Length: {2**41}\n\n"), b"[" * 10)
    assert status == 413
    kept = stack.get(f"/v1/workspaces/{ws}/rejected", auth).json()["rejected"]
    assert [item["body"] for item in kept if f"announced {2**41}" in item["reason"]] == ["[" * 10]
    # Without a token nothing is read either.
    status, _ = raw_request(stack.port, (
        f"POST /v1/workspaces/{ws}/events HTTP/1.1\nHost: x\nContent-Type: application/cloudevents+json\n"
        f"Content-Length: {10**9}\n\n"))
    assert status == 401
    # Chunked, with no length announced: cut off once over the cap.
    def chunks():
        for _ in range(6):
            yield b"[" + b"1," * (512 * 1024)
    answer = stack.http.post(f"/v1/workspaces/{ws}/events", content=chunks(),
                             headers={**auth, "Content-Type": "application/cloudevents-batch+json"})
    assert answer.status_code == 413
    assert stack.api.process.poll() is None


def test_no_secret_in_any_log(stack):
    """Runs late in the session: every service log and the NATS log, after all the other tests."""
    ws, auth = stack.new_workspace()
    token = auth["Authorization"].removeprefix("Bearer ")
    stack.send(ws, auth, [event("sales.lead.qualified", "c1"), {"not": "valid"}])
    stack.get(f"/v1/workspaces/{ws}/contacts/c1", {"Authorization": "Bearer tl_wrong-" + token})
    producer = create_producer(stack.servers, ws)
    secrets = {
        "admin token": ADMIN_TOKEN,
        "workspace token": token,
        "internal NATS password": nats_auth.internal_password(stack.servers.nats.root),
        "producer password": producer["password"],
    }
    logs = sorted(stack.log_dir.glob("*.log")) + [stack.servers.nats.root / "nats.log"]
    assert len(logs) >= 5
    for path in logs:
        text = path.read_text(errors="replace")
        for name, secret in secrets.items():
            assert secret not in text, f"the {name} is in {path}"
