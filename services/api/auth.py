"""Bearer tokens: scopes bound to one workspace, stored only as SHA-256 hashes."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

import asyncpg
import msgspec

from events.validation import is_workspace_id

SCOPES = ("ingest", "read", "admin")
ANY_WORKSPACE = "*"


@dataclass(frozen=True)
class Grant:
    workspace: str  # ANY_WORKSPACE for the operator's admin token
    scopes: frozenset[str]

    def allows(self, workspace: str, scope: str) -> bool:
        """admin implies every other scope on its workspace."""
        if self.workspace not in (workspace, ANY_WORKSPACE):
            return False
        return scope in self.scopes or "admin" in self.scopes


def invalid_scopes(scopes: list[str]) -> str | None:
    """Why ``scopes`` cannot be a token's, or None (the API and the CLI both ask)."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if not scopes or unknown:
        return f"expected some of {list(SCOPES)}, got {unknown or scopes}"
    return None


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


TOKEN_PREFIX = "tl_"


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


class TokenBook:
    """Resolves tokens to grants; a short cache keeps the database off the hot path, so a token
    revoked in one process is refused by every process within ``ttl`` seconds."""

    def __init__(self, pool: asyncpg.Pool, admin_token: str | None, ttl: float = 5.0) -> None:
        self.pool = pool
        self.admin_hash = token_hash(admin_token) if admin_token else None
        self.ttl = ttl
        self._cache: dict[bytes, tuple[float, Grant | None]] = {}
        self._revoked: dict[str, float] = {}  # token ids this process revoked: until when to distrust a lookup

    async def grant_for(self, token: str) -> Grant | None:
        digest = token_hash(token)
        # Compare digests in constant time; the lookup below is by hash, never by the token.
        if self.admin_hash is not None and hmac.compare_digest(digest, self.admin_hash):
            return Grant(ANY_WORKSPACE, frozenset(SCOPES))
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        row = await self.pool.fetchrow("SELECT workspace, scopes FROM tokens WHERE hash = $1 AND revoked_at IS NULL",
                                       digest)
        grant = Grant(row["workspace"], frozenset(row["scopes"])) if row else None
        if self._revoked and self._revoked.get(digest[:TOKEN_ID_BYTES].hex(), 0.0) > now:
            grant = None
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (now + self.ttl, grant)
        return grant

    def forget(self, token_id: str) -> None:
        """A token this process revoked is refused by it at once (the others within ``ttl``).

        Noted as revoked for ``ttl``, not only dropped from the cache: a lookup that read the
        token's row before the revocation committed would put its grant back (a review)."""
        now = time.monotonic()
        self._revoked = {name: until for name, until in self._revoked.items() if until > now}
        self._revoked[token_id] = now + self.ttl
        for digest in [digest for digest in self._cache if digest[:TOKEN_ID_BYTES].hex() == token_id]:
            del self._cache[digest]


async def create_workspace(pool: asyncpg.Pool, workspace: str) -> bool:
    """True if created, False if it already existed."""
    status = await pool.execute("INSERT INTO workspaces (id) VALUES ($1) ON CONFLICT DO NOTHING", workspace)
    return status.endswith(" 1")


# A token's public name: enough of its hash to tell a workspace's tokens apart, too little to
# help anyone guess the token (which is 256 random bits).
TOKEN_ID_BYTES = 6
TOKEN_ID = re.compile(f"[0-9a-f]{{{2 * TOKEN_ID_BYTES}}}")  # whole: fullmatch


def token_id(token: str) -> str:
    return token_hash(token)[:TOKEN_ID_BYTES].hex()


class TokenRecord(msgspec.Struct):
    """A token as it is listed: never the token itself, which only its creator ever saw."""

    id: str
    workspace: str
    scopes: list[str]
    created_at: dt.datetime
    revoked_at: dt.datetime | None


_RECORD_COLUMNS = (f"encode(substring(hash FROM 1 FOR {TOKEN_ID_BYTES}), 'hex') AS id, workspace, scopes, created_at,"
                   " revoked_at")


def _record(row: asyncpg.Record) -> TokenRecord:
    return TokenRecord(row["id"], row["workspace"], list(row["scopes"]), row["created_at"], row["revoked_at"])


async def create_token(pool: asyncpg.Pool, workspace: str, scopes: list[str]) -> str:
    token = new_token()
    await pool.execute(
        "INSERT INTO tokens (hash, workspace, scopes) VALUES ($1, $2, $3)", token_hash(token), workspace, sorted(set(scopes))
    )
    return token


async def list_tokens(pool: asyncpg.Pool, workspace: str) -> list[TokenRecord]:
    rows = await pool.fetch("SELECT " + _RECORD_COLUMNS + " FROM tokens WHERE workspace = $1 ORDER BY created_at, hash", workspace)
    return [_record(row) for row in rows]


async def revoke_token(pool: asyncpg.Pool, workspace: str, identity: str) -> tuple[TokenRecord | None, bool]:
    """Revoke the workspace's token of this id (``TOKEN_ID``): its record (None if it has none),
    and whether it had been revoked before (then nothing changes: it keeps its first time)."""
    row = await pool.fetchrow(
        # The row as it was, locked, beside the update: RETURNING sees only the new values.
        "WITH target AS (SELECT hash AS target_hash, revoked_at AS revoked_before FROM tokens"
        " WHERE workspace = $1 AND substring(hash FROM 1 FOR $2) = $3 FOR UPDATE)"
        " UPDATE tokens SET revoked_at = coalesce(revoked_at, now()) FROM target WHERE hash = target_hash"
        " RETURNING " + _RECORD_COLUMNS + ", revoked_before IS NOT NULL AS revoked_before",
        workspace, TOKEN_ID_BYTES, bytes.fromhex(identity),
    )
    return (None, False) if row is None else (_record(row), row["revoked_before"])


async def workspace_exists(pool: asyncpg.Pool, workspace: str) -> bool:
    return bool(await pool.fetchval("SELECT 1 FROM workspaces WHERE id = $1", workspace))


class KnownWorkspaces:
    """Whether a workspace exists, for the HTTP routes and the inbox reader of one process.
    Workspaces are never deleted, so one found once is not looked up again."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._known: set[str] = set()

    async def __call__(self, workspace: str) -> bool:
        if workspace in self._known:
            return True
        if not is_workspace_id(workspace) or not await workspace_exists(self.pool, workspace):
            return False
        self._known.add(workspace)
        return True
