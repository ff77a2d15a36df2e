"""Bearer tokens: scopes bound to one workspace, stored only as SHA-256 hashes."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

import asyncpg

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


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def new_token() -> str:
    return "tl_" + secrets.token_urlsafe(32)


class TokenBook:
    """Resolves tokens to grants; a short cache keeps the database off the hot path."""

    def __init__(self, pool: asyncpg.Pool, admin_token: str | None, ttl: float = 5.0) -> None:
        self.pool = pool
        self.admin_hash = token_hash(admin_token) if admin_token else None
        self.ttl = ttl
        self._cache: dict[bytes, tuple[float, Grant | None]] = {}

    async def grant_for(self, token: str) -> Grant | None:
        digest = token_hash(token)
        # Compare digests in constant time; the lookup below is by hash, never by the token.
        if self.admin_hash is not None and hmac.compare_digest(digest, self.admin_hash):
            return Grant(ANY_WORKSPACE, frozenset(SCOPES))
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        row = await self.pool.fetchrow("SELECT workspace, scopes FROM tokens WHERE hash = $1", digest)
        grant = Grant(row["workspace"], frozenset(row["scopes"])) if row else None
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (now + self.ttl, grant)
        return grant


async def create_workspace(pool: asyncpg.Pool, workspace: str) -> bool:
    """True if created, False if it already existed."""
    status = await pool.execute("INSERT INTO workspaces (id) VALUES ($1) ON CONFLICT DO NOTHING", workspace)
    return status.endswith(" 1")


async def create_token(pool: asyncpg.Pool, workspace: str, scopes: list[str]) -> str:
    token = new_token()
    await pool.execute(
        "INSERT INTO tokens (hash, workspace, scopes) VALUES ($1, $2, $3)", token_hash(token), workspace, sorted(set(scopes))
    )
    return token


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
