"""What every route module shares: errors, access checks, JSON answers, the services they use."""

from __future__ import annotations

import contextlib
import datetime as dt
import re
from dataclasses import dataclass
from typing import Annotated, AsyncContextManager, AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import msgspec
import structlog
from litestar import Request, Response
from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler
from litestar.exceptions import HTTPException, SerializationException, ValidationException
from litestar.params import Parameter
from litestar.routes import HTTPRoute
from nats.aio.client import Client as NatsClient

from events.log import MAX_SEQ
from events.validation import type_in_words
from services.api import auth, contact_paths
from services.ingest import Ingestor
from services.store import readiness
from services.written_times import read_written_time

encode_json = msgspec.json.Encoder(decimal_format="string").encode
log = structlog.get_logger()


class ApiError(HTTPException):
    """An error answered as ``{"error": ..., **extra}``."""

    def __init__(self, status_code: int, error: str, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(status_code=status_code, detail=error, headers=headers)
        self.fields = extra


def unexpected_response(request: Request, exc: Exception) -> Response:
    """Anything no other handler answers: a 500 in the API's own shape, and its traceback in the log
    (these were answered in Litestar's shape and logged nowhere)."""
    log.error("api.unexpected_error", method=request.method, path=request.url.path, exc_info=exc)
    return Response(content=encode_json({"error": f"internal error ({type(exc).__name__})"}), status_code=500,
                    media_type="application/json")


def bad_value_response(request: Request, exc: asyncpg.DataError) -> Response:
    """PostgreSQL (or asyncpg, binding it) refused a value a request carried past the checks."""
    log.warning("api.value_refused", method=request.method, path=request.url.path, error=str(exc))
    return Response(content=encode_json({"error": f"a value of the request cannot be used: {exc}"}), status_code=400,
                    media_type="application/json")


def unavailable_response(_: Request, exc: Exception) -> Response:
    """A database or NATS outage is the server's passing trouble, not the client's: 503, retry."""
    return json_response({"error": f"temporarily unavailable: {type(exc).__name__}"}, 503, {"Retry-After": "1"})


def error_response(request: Request, exc: HTTPException) -> Response:
    if isinstance(exc, ValidationException):
        error = validation_error(request, exc)
    elif isinstance(exc.__cause__, SerializationException):
        # Litestar's body decoding says only what msgspec said ("Input data was truncated"): the
        # answer names the body, as ingest's own "the body is not JSON" does (an outside audit).
        error = f"body: not valid JSON ({exc.detail})"
    else:
        error = exc.detail
    body: dict[str, Any] = {"error": error}
    body.update(getattr(exc, "fields", None) or {})
    return Response(content=encode_json(body), status_code=exc.status_code, media_type="application/json", headers=exc.headers)


# Litestar's own parameter and body checks answer "Validation failed for GET <url>" and put what
# failed in `extra`: the answer names the field instead, in the words of the API's other errors.
_EXPECTED = re.compile(r"Expected `([^`]+)`, got `([^`]+)`")
_MISSING = re.compile(r"Object missing required field `([^`]+)`")


def _kind(name: str) -> str:
    return type_in_words(name.removesuffix(" | null"))


def validation_error(request: Request, exc: ValidationException) -> str:
    for item in exc.extra if isinstance(exc.extra, list) else []:
        if not isinstance(item, dict) or not item.get("message"):
            continue
        message, key, source = item["message"], item.get("key"), item.get("source")
        if missing := _MISSING.fullmatch(message):
            return f"{missing[1]}: required field missing"
        name = "body" if source == "body" and key in (None, "data") else key
        if name == "body" and message == "'data'":  # no body at all: Litestar's KeyError, as it was
            return "body: required (a JSON object)"
        if expected := _EXPECTED.fullmatch(message):
            got = repr(request.query_params.get(key)) if source == "query" else _kind(expected[2])
            message = f"expected {_kind(expected[1])}, got {got}"
        return f"{name}: {message}" if name else message
    return exc.detail


# Litestar converts a query value laxly (`1e3` and `5.0` to an integer, `null` to no value at all,
# so `min_seq=null` would skip the wait it asks for) and keeps the last of a repeated parameter.
# Both are a client's mistake better named than guessed at. Nor does it take a leading zero (`05`),
# which was refused in the words of any other mistake ("expected an integer, got '05'").
_INTEGER = re.compile(r"-?(?:0|[1-9][0-9]*)")
_LEADING_ZERO = re.compile(r"-?0[0-9]+")


def query_names(routes: list) -> dict[Any, tuple[frozenset[str], frozenset[str]]]:
    """Each handler's query parameters, and those of them that are integers (``create_app`` keeps
    them in the app's state, as it keeps ``allowed_methods``)."""
    names = {}
    for route in routes:
        for handler in route.route_handlers if isinstance(route, HTTPRoute) else ():
            fields = {  # by the name the query string uses (`from` for `from_`)
                getattr(field.kwarg_definition, "query", None) or name: field
                for name, field in handler.parsed_fn_signature.parameters.items()
            }
            integers = {
                name for name, field in fields.items()
                if any(kind.is_subclass_of(int) for kind in (field.inner_types if field.is_optional else (field,)))
            }
            names[handler] = (frozenset(fields), frozenset(integers))
    return names


async def before_handler(request: Request) -> Response | None:
    """Litestar's ``before_request``: OPTIONS answered here, every other request's query checked."""
    if request.method == "OPTIONS":
        return options_answer(request)
    await strict_query(request)
    return None


def allowed_methods(routes: list) -> dict[str, str]:
    """Each path template's ``Allow`` header: every method its handlers serve, and OPTIONS."""
    return {route.path_format: ", ".join(sorted(set(route.methods) | {"OPTIONS"}))
            for route in routes if isinstance(route, HTTPRoute)}


def options_answer(request: Request) -> Response:
    """204 with every method of the path in ``Allow`` (``create_app`` keeps them in the app's state).
    Litestar 2's own answer names only the methods of the first handler registered on a path
    (litestar#4169, fixed in Litestar 3): `PUT` was missing from the rules' and `GET`, `DELETE` from
    the webhooks'."""
    allow = request.app.state.allowed_methods[request.scope["path_template"]]
    return Response(content=None, status_code=204, headers={"Allow": allow})


async def strict_query(request: Request) -> None:
    """Before every handler: each of its query parameters given once, and an integer one as digits."""
    names, integers = request.app.state.query_names[request.route_handler]
    seen: set[str] = set()
    for name, value in request.query_params.multi_items():
        if name not in names:
            continue
        if name in seen:
            raise ApiError(400, f"{name}: given more than once")
        seen.add(name)
        if name in integers and not _INTEGER.fullmatch(value):
            leading_zero = _LEADING_ZERO.fullmatch(value)
            raise ApiError(400, f"{name}: expected an integer{' without leading zeros' if leading_zero else ''}, got {value!r}")


@dataclass
class Services:
    pool: asyncpg.Pool
    nc: NatsClient
    ingestor: Ingestor
    tokens: auth.TokenBook
    workspaces: auth.KnownWorkspaces | None = None  # None: a cache of this Services' own

    def __post_init__(self) -> None:
        if self.workspaces is None:
            self.workspaces = auth.KnownWorkspaces(self.pool)


async def nothing_to_reset(conn: asyncpg.Connection) -> None:
    """The API pool's ``reset``: the API keeps no session state on its connections (a snapshot's
    search_path is set for its transaction only), so a connection going back to the pool needs no
    reset query (asyncpg's default costs a round trip per request). asyncpg still rolls back an
    open transaction and drops listeners on release."""


def services_of(request: Request) -> Services:
    return request.app.state.services


def json_response(value: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(content=encode_json(value), status_code=status_code, media_type="application/json", headers=headers)


def bearer_token(scope: Any) -> str | None:
    """The request's bearer token, from the raw ASGI headers (names are lower case there): no
    Headers object per request. Two ``Authorization`` fields are refused (RFC 9110 allows one):
    a proxy that checked the other one would not see what Touchline sees."""
    given = [value for name, value in scope["headers"] if name == b"authorization"]
    if len(given) > 1:
        raise ApiError(400, "Authorization: given more than once")
    kind, _, token = (given[0] if given else b"").decode("latin-1").partition(" ")
    token = token.strip()
    return token if kind.lower() == "bearer" and token else None


# Where fast_reads found an encoded NUL (a query parameter's name, or "path"): refused by the
# route's guard once the token is checked.
NUL_HOLDER = "touchline.nul_holder"


async def check_access(services: Services, asgi_scope: Any, workspace: str | None, scope: str) -> None:
    """Raise the ApiError a request deserves unless its token has ``scope`` on ``workspace`` (None:
    the operator's token) and the workspace exists. Litestar's guard and the plain reads' path
    (``fast_reads``) both ask this."""
    token = bearer_token(asgi_scope)
    if token is None:
        raise ApiError(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    grant = await services.tokens.grant_for(token)
    if grant is None:
        raise ApiError(401, "invalid token", headers={"WWW-Authenticate": "Bearer"})
    if workspace is None:
        if grant.workspace != auth.ANY_WORKSPACE or scope not in grant.scopes:
            raise ApiError(403, f"this needs the operator's {scope} token")
        return
    if not grant.allows(workspace, scope):
        raise ApiError(403, f"this token has no {scope} scope on workspace {workspace!r}")
    if not await services.workspaces(workspace):
        raise ApiError(404, f"unknown workspace {workspace!r}")


# The {contact} path parameter of the contact routes, as the OpenAPI document describes it.
ContactSegment = Annotated[str, Parameter(
    description="The contact id as one path segment, percent-encoded (UTF-8): `/` as %2F, `%` as %25,"
                " a space as %20, and the ids `.` and `..` as %2E and %2E%2E",
)]


_OFFSET_SPACE = re.compile(r"(?<=\d) (\d{2}:\d{2})$")


def parse_time(name: str, text: str | None) -> dt.datetime | None:
    """A query parameter's time: RFC 3339, or a date (its UTC midnight); without an offset, UTC.
    None when absent. The one parser of every read's time parameter (funnel ``from``/``to``,
    goals' and follow-ups' ``as_of``)."""
    if text is None or text == "":
        return None
    # A "+" in an unencoded query string arrives as a space (before the offset's hours; a space
    # between date and time is RFC 3339's own); RFC 3339 allows a lower-case t and z.
    text = _OFFSET_SPACE.sub(r"+\1", text.strip())
    try:
        moment = read_written_time(text)
    except ValueError:
        raise ApiError(400, f"{name}: expected an RFC 3339 time or a date, like 2026-11-15T09:30:00Z or 2026-11-15,"
                            f" got {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    try:
        return moment.astimezone(dt.timezone.utc)
    except OverflowError:  # 9999-12-31T23:59-23:59 is in the year 10000 UTC
        raise ApiError(400, f"{name}: expected a time in the years 1 to 9999 UTC, got {text!r}") from None


def choice(allowed: tuple[str, ...], description: str) -> Any:
    """The type of a query parameter that ``one_of`` checks, with its values in the OpenAPI document
    (as documentation: ``one_of`` answers a wrong one, naming it)."""
    return Annotated[str | None, Parameter(description=description, schema_extra={"enum": list(allowed)})]


# The moment a read is judged at (goals' expected pace, follow-ups' overdue): ``parse_time`` reads it.
AsOf = Annotated[str | None, Parameter(description="RFC 3339, or a date (its UTC midnight); default now")]


# A read of a snapshot instead of the live read models (CONTRACT.md section 1, `replay --until`).
Snapshot = Annotated[str | None, Parameter(
    description="The name of a snapshot of this workspace (`touchline replay --until ... --name NAME`): the read"
                " models as of its point of the log, instead of the live ones.")]


def one_of(name: str, value: str | None, allowed: tuple[str, ...]) -> str | None:
    """A query parameter that takes one of a few values, or None when absent or empty (``?status=``
    is no filter, as every empty parameter is the parameter left out): else a 400 naming it."""
    if not value:
        return None
    if value not in allowed:
        raise ApiError(400, f"{name}: expected one of {', '.join(allowed)}, got {value!r}")
    return value


MAX_WAIT_MS = 60_000  # a minute: past that, a client asking again costs less than a request held open


# The query parameters every read takes, with their bounds in the OpenAPI document (the handlers
# check them, with their own words: ``wait_applied``, ``check_limit``).
MinSeq = Annotated[int | None, Parameter(
    description="Answer only once every read model has applied the log up to this sequence (an ingest"
                " answer's `seq` or `last_seq`); 503 `stale` if not within `wait_ms`. With `snapshot`: answered"
                " at once if the snapshot stands at this sequence or later, else 400 (a snapshot never moves)",
    schema_extra={"minimum": 0, "maximum": MAX_SEQ},
)]
WaitMs = Annotated[int, Parameter(description="How long to wait for `min_seq`, in milliseconds",
                                  schema_extra={"minimum": 0, "maximum": MAX_WAIT_MS})]


def page_size(most: int) -> Any:
    """A ``limit`` parameter of 1 to ``most``."""
    return Annotated[int, Parameter(description=f"Page size, 1 to {most}", schema_extra={"minimum": 1, "maximum": most})]


def check_seq(name: str, seq: int | None) -> None:
    """A log sequence (or the id of a rejected entry) in a parameter: 0 to ``MAX_SEQ``, else a 400."""
    if seq is not None and not 0 <= seq <= MAX_SEQ:
        raise ApiError(400, f"{name}: expected a log sequence, 0 to {MAX_SEQ}, got {seq}")


def check_limit(limit: int, most: int) -> None:
    """A page size: 1 to ``most``, else a 400 naming it."""
    if not 1 <= limit <= most:
        raise ApiError(400, f"limit: expected 1 to {most}, got {limit}")


def contact_of(request: Request, routed: str) -> str:
    """The contact a contact route addresses: its path segment as sent, percent-decoded once
    (services/api/contact_paths.py). ``routed``, Litestar's path parameter, is that segment still
    encoded; it is the answer only for a path contact_paths does not read but Litestar routed all
    the same (one under a ``root_path``, say), where it is the server's decoding."""
    found = contact_paths.parse(request.scope)
    if found is None:
        return routed
    if found.contact is None:
        raise ApiError(400, "contact: the path segment is not percent-encoded UTF-8")
    return found.contact


def authorized(scope: str, *, in_workspace: bool = True) -> Callable[[ASGIConnection, BaseRouteHandler], Awaitable[None]]:
    """The guard of every route: its token (and its workspace) checked before Litestar
    reads the query string and the body, so that a request without a valid token is a 401 whatever
    it sent (it was a 400 naming a parameter or a field of the body). Then the handler checks what
    it was sent, and a read only then waits for ``min_seq`` (``wait_applied``): a request that can
    never be answered is a 400 at once, not a 503 "stale" that a client obeying Retry-After asks
    again for ever."""

    async def guard(connection: ASGIConnection, _handler: BaseRouteHandler) -> None:
        workspace = connection.path_params["ws"] if in_workspace else None
        await check_access(connection.app.state.services, connection.scope, workspace, scope)
        if (nul := connection.scope.get(NUL_HOLDER)) is not None:
            raise ApiError(400, f"{nul}: holds the NUL character (%00), which is not allowed")

    return guard


async def wait_applied(request: Request, min_seq: int | None, wait_ms: int, snapshot: str | None = None) -> None:
    """``?min_seq=N&wait_ms=W``: answer once every read model has applied the log up to N, waiting
    up to W ms; else 503 stale with the sequence applied. A read of a ``snapshot`` that does not
    exist is a 404 before the wait, not a stale 503 after it."""
    check_seq("min_seq", min_seq)
    if not 0 <= wait_ms <= MAX_WAIT_MS:
        raise ApiError(400, f"wait_ms: expected 0 to {MAX_WAIT_MS}, got {wait_ms}")
    if snapshot == "":  # kept by fast_reads.without_empty_values, which drops every other empty value
        raise ApiError(400, "snapshot: expected the name of a snapshot, got an empty one"
                            " (leave snapshot out to read the live read models)")
    if snapshot is not None:
        # A snapshot never moves: checked against what it stands at when the read holds it
        # (``_snapshot_connection``), not here, where a replacement could still come in between.
        request.state.snapshot_min_seq = min_seq
        return
    if min_seq is not None:
        applied = await readiness.wait_applied(services_of(request).pool, min_seq, wait_ms / 1000)
        if applied < min_seq:
            raise ApiError(503, "stale", headers={"Retry-After": "1"}, applied_seq=applied)


def read_connection(request: Request, snapshot: str | None = None) -> AsyncContextManager[asyncpg.Connection]:
    """A connection for read-model queries (``async with``). Queries use unqualified table names,
    so a point-in-time snapshot (a schema built by `touchline replay --until`) can be read by
    putting its schema first on the search path."""
    pool = services_of(request).pool
    if snapshot is None:
        return pool.acquire()  # the pool's own context manager: nothing else on the hot path
    return _snapshot_connection(pool, request.path_params.get("ws"), snapshot,
                                request.state.get("snapshot_min_seq"))


@contextlib.asynccontextmanager
async def _snapshot_connection(pool: asyncpg.Pool, workspace: str | None, snapshot: str,
                               min_seq: int | None) -> AsyncIterator[asyncpg.Connection]:
    from services.replay import hold_snapshot, snapshot_row

    async with pool.acquire() as conn:
        async with conn.transaction(readonly=True):
            # Held before its schema is looked up: a drop or a replacement waits for this read.
            await hold_snapshot(conn, workspace, snapshot)  # type: ignore[arg-type]
            row = await snapshot_row(conn, workspace, snapshot)  # type: ignore[arg-type]
            if row is None:
                raise ApiError(404, f"unknown snapshot {snapshot!r}")
            schema, stands_at = row["schema_name"], row["last_seq"]  # every event up to last_seq is in
            if min_seq is not None and min_seq > stands_at:
                raise ApiError(400, f"min_seq: snapshot {snapshot!r} stands at log seq {stands_at} and never moves;"
                                    f" it will never have applied {min_seq}")
            # Tables of the snapshot first; anything it does not hold (not a read model) from public.
            # For this transaction only: nothing of it outlives the request, even a cancelled one.
            await conn.execute("SELECT set_config('search_path', $1, true)", f'"{schema}", public')
            yield conn
