"""Outbound webhooks: per-workspace configuration, signing (Stripe-like) and one delivery attempt.

Each delivery is an HTTP POST of a JSON body with the header

    Touchline-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>

A receiver recomputes the HMAC over the timestamp, a dot and the raw body bytes with the secret it
got when registering the webhook, compares in constant time, and rejects timestamps too far from
its clock (``verify`` below does all three). ``Touchline-Delivery`` carries the follow-up or
alert id: the same for every retry of one item, so receivers can deduplicate.
"""

from __future__ import annotations

import asyncio

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Literal, get_args

import asyncpg
import httpx

SIGNATURE_HEADER = "Touchline-Signature"
DELIVERY_HEADER = "Touchline-Delivery"
TYPE_HEADER = "Touchline-Event-Type"
DEFAULT_TOLERANCE = 300

# What a workspace may set, each an inclusive (least, most): the API refuses the rest, naming it.
MAX_ATTEMPTS = (1, 100)
BACKOFF_SECONDS = (0, 86400)
TIMEOUT_SECONDS = (0.1, 20)


@dataclass(frozen=True)
class Webhook:
    workspace: str
    url: str
    secret: str
    max_attempts: int
    backoff_seconds: tuple[float, ...]
    timeout_seconds: float

    def backoff(self, attempt: int) -> float:
        """The wait after failed attempt number ``attempt`` (1-based); the last step repeats."""
        steps = self.backoff_seconds or (5.0,)
        return steps[min(attempt, len(steps)) - 1]


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(secret: str, header: str, body: bytes, *, tolerance: int = DEFAULT_TOLERANCE, now: float | None = None) -> bool:
    """What a receiver does: check the HMAC of ``t.body`` and that ``t`` is recent."""
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        parts.setdefault(key, []).append(value)
    try:
        t = int(parts["t"][0])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - t) > tolerance:
        return False
    expected = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, candidate) for candidate in parts.get("v1", []))


async def configure(pool: asyncpg.Pool, workspace: str, url: str, *, max_attempts: int, backoff_seconds: list[float],
                    timeout_seconds: float, keep_secret: bool = False) -> tuple[Webhook, bool]:
    """Register (or replace) the workspace's webhook, with a fresh secret unless ``keep_secret`` and
    it has one; and whether the secret is new (a receiver has to be told it)."""
    fresh = new_secret()
    secret = await pool.fetchval(
        "INSERT INTO webhooks (workspace, url, secret, max_attempts, backoff_seconds, timeout_seconds)"
        " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (workspace) DO UPDATE SET url = excluded.url,"
        " secret = CASE WHEN $7 THEN webhooks.secret ELSE excluded.secret END, max_attempts = excluded.max_attempts,"
        " backoff_seconds = excluded.backoff_seconds, timeout_seconds = excluded.timeout_seconds, created_at = now()"
        " RETURNING secret",
        workspace, url, fresh, max_attempts, backoff_seconds, timeout_seconds, keep_secret,
    )
    # As stored (float8[]): the answer to a POST shows 5.0 as a GET does, not the 5 it was sent.
    hook = Webhook(workspace, url, secret, max_attempts, tuple(map(float, backoff_seconds)), float(timeout_seconds))
    return hook, secret == fresh


async def remove(pool: asyncpg.Pool, workspace: str) -> None:
    """No more deliveries: commands from now on are logged without a webhook call."""
    await pool.execute("DELETE FROM webhooks WHERE workspace = $1", workspace)


async def webhook_of(conn: asyncpg.Pool | asyncpg.Connection, workspace: str) -> Webhook | None:
    row = await conn.fetchrow(
        "SELECT url, secret, max_attempts, backoff_seconds, timeout_seconds FROM webhooks WHERE workspace = $1", workspace
    )
    if row is None:
        return None
    return Webhook(workspace, row["url"], row["secret"], row["max_attempts"], tuple(row["backoff_seconds"]),
                   row["timeout_seconds"])


class DeliveryFailed(Exception):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


async def post(client: httpx.AsyncClient, hook: Webhook, body: bytes, *, item_id: str, event_type: str) -> int:
    """One attempt; returns the 2xx status or raises DeliveryFailed (non-2xx, timeout, refused)."""
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(hook.secret, body),
        DELIVERY_HEADER: item_id,
        TYPE_HEADER: event_type,
        "User-Agent": "Touchline-Webhooks/1",
    }
    try:
        # httpx's timeout bounds each read, not the whole request: a receiver that answered and then
        # sent its body a byte every few seconds kept a delivery open as long as it liked (an outside
        # audit); timeout_seconds is the whole attempt's.
        async with asyncio.timeout(hook.timeout_seconds):
            answer = await client.post(hook.url, content=body, headers=headers, timeout=hook.timeout_seconds)
    except (httpx.TimeoutException, TimeoutError) as err:
        raise DeliveryFailed(f"timed out after {hook.timeout_seconds}s: {err!r}") from err
    except httpx.HTTPError as err:
        raise DeliveryFailed(f"request failed: {err!r}") from err
    if not 200 <= answer.status_code < 300:
        raise DeliveryFailed(f"answered {answer.status_code}: {answer.text[:200]}", answer.status_code)
    return answer.status_code


async def record(pool: asyncpg.Pool, workspace: str, item_id: str, status: DeliveryState, *, error: str | None = None,
                 http_status: int | None = None) -> None:
    await pool.execute(
        "INSERT INTO webhook_deliveries AS d (workspace, item_id, status, attempts, last_error, last_status)"
        " VALUES ($1, $2, $3, 1, $4, $5) ON CONFLICT (workspace, item_id) DO UPDATE SET status = excluded.status,"
        " attempts = d.attempts + 1, last_error = excluded.last_error, last_status = excluded.last_status,"
        " updated_at = now()",
        workspace, item_id, status, error, http_status,
    )


DeliveryState = Literal["delivered", "failing", "parked"]  # "failing": a retry is due
DELIVERY_STATES: tuple[str, ...] = get_args(DeliveryState)


async def delivery_counts(pool: asyncpg.Pool, workspace: str) -> dict[str, int]:
    """How many of the workspace's items are in each of ``DELIVERY_STATES``."""
    rows = await pool.fetch("SELECT status, count(*) AS n FROM webhook_deliveries WHERE workspace = $1 GROUP BY status",
                            workspace)
    counted = {row["status"]: row["n"] for row in rows}
    return {state: counted.get(state, 0) for state in DELIVERY_STATES}


async def delivery_status(pool: asyncpg.Pool, workspace: str, item_id: str) -> DeliveryState | None:
    """``delivered``, ``failing`` (a retry is due) or ``parked``; None before the first attempt."""
    return await pool.fetchval(
        "SELECT status FROM webhook_deliveries WHERE workspace = $1 AND item_id = $2", workspace, item_id)
