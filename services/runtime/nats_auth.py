"""Who may connect to the embedded NATS: Touchline's own services, and producers.

Everything lives under ``<data dir>/nats`` and is readable by its owner only (0600):

* ``internal.json``: the internal user's password (generated once). Touchline's services connect
  with it; ``url`` holds the URL with these credentials for CLI commands.
* ``producers.json``: one record per producer made by ``touchline token create --nats``: user
  name, workspace, bcrypt hash. The password itself is printed once and never kept.
* ``auth.conf``: the ``authorization`` block that ``nats.conf`` includes, generated from both.
  Adding a producer rewrites it and sends the running server SIGHUP (a config reload: existing
  connections stay up, the new user can connect at once). Revoking one (``touchline token revoke
  --nats``) keeps its record in ``producers.json`` with ``revoked_at``, leaves it out of
  ``auth.conf`` and reloads the server, which closes that user's open connections.

Two accounts. ``TOUCHLINE`` holds JetStream and the internal user, and exports the inbox subjects
``touchline.in.*`` as a service; ``PRODUCERS`` holds the producer users and imports that service.
A producer may publish only to ``touchline.in.{ws}`` of its own workspace and subscribe only to
its own inbox prefix ``_INBOX_<user>.>`` (where its JetStream publish acks arrive): it cannot read
the log, call the JetStream API, or see another producer's acks. The separate account matters:
in a single account a producer could name ``touchline.log.{any ws}`` as the *reply* subject of
its publish (reply subjects are not permission-checked) and JetStream would store its ack
there, in the log; across a service import the reply is remapped and stays in ``PRODUCERS``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import secrets
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import bcrypt
import psutil

from events.log import INBOX_SUBJECTS, inbox_subject

INTERNAL_USER = "touchline"
# bcrypt work factor: the server checks it once per connection (~50 ms at 10 here).
BCRYPT_ROUNDS = 10


def bcrypt_hash(password: str) -> str:
    # nats-server recognises bcrypt by the "$2a$" prefix, which the bcrypt package must be asked for.
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=BCRYPT_ROUNDS, prefix=b"2a")).decode()


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, never visible half-written or world-readable."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def internal_password(root: Path) -> str:
    """The internal user's password, generated on first use and kept in ``internal.json``."""
    path = root / "internal.json"
    try:
        return json.loads(path.read_text())["password"]
    except (OSError, ValueError, KeyError):
        pass
    password = secrets.token_urlsafe(24)
    root.mkdir(parents=True, exist_ok=True)
    _write_private(path, json.dumps({"user": INTERNAL_USER, "password": password}))
    return password


def with_credentials(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{parts.hostname}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def without_credentials(url: str) -> str:
    """The seed URLs of TOUCHLINE_NATS_URL as Touchline connects to them, without any
    user:password@ (safe to print or log)."""
    from services.nats_io import nats_connection  # nats-py's import, only for a URL to show

    return ",".join(nats_connection(url)[0])


@dataclass(frozen=True)
class Producer:
    user: str
    workspace: str
    password_hash: str
    revoked_at: str | None = None  # ISO 8601, UTC; a revoked producer stays on record, out of auth.conf

    @property
    def inbox_prefix(self) -> str:
        return f"_INBOX_{self.user}"

    @property
    def revoked_time(self) -> dt.datetime | None:
        return None if self.revoked_at is None else dt.datetime.fromisoformat(self.revoked_at)

    def config_entry(self) -> str:
        """This producer as a user entry of a nats-server ``users`` list."""
        return (
            f'{{user: "{self.user}", password: "{self.password_hash}", permissions: {{'
            f'publish: {{allow: ["{inbox_subject(self.workspace)}"]}}, '
            f'subscribe: {{allow: ["{self.inbox_prefix}.>"]}}}}}}'
        )


def new_producer(workspace: str) -> tuple[Producer, str]:
    """A producer with a fresh random user name and password; returns it and the password."""
    password = secrets.token_urlsafe(24)
    return Producer(f"producer-{secrets.token_hex(6)}", workspace, bcrypt_hash(password)), password


def load_producers(root: Path) -> list[Producer]:
    try:
        records = json.loads((root / "producers.json").read_text())
    except (OSError, ValueError):
        return []
    return [Producer(r["user"], r["workspace"], r["password_hash"], r.get("revoked_at")) for r in records]


def write_auth_config(root: Path, producers: list[Producer] | None = None) -> None:
    """(Re)generate ``auth.conf`` and, when given, ``producers.json``."""
    internal_password(root)
    internal = json.loads((root / "internal.json").read_text())
    if producers is not None:
        _write_private(
            root / "producers.json",
            json.dumps([{"user": p.user, "workspace": p.workspace, "password_hash": p.password_hash,
                         **({"revoked_at": p.revoked_at} if p.revoked_at else {})} for p in producers], indent=1),
        )
    else:
        producers = load_producers(root)
    lines = [
        "# Generated by touchline; producers come from producers.json (touchline token create --nats).",
        "accounts {",
        "  TOUCHLINE {",
        "    jetstream: enabled",
        # In clear, like internal.json beside it (both 0600): a reload re-checks every connection's
        # password, and bcrypt for each of Touchline's own connections stalled the server for seconds.
        f'    users: [{{user: "{INTERNAL_USER}", password: "{internal["password"]}"}}]',
        f'    exports: [{{service: "{INBOX_SUBJECTS}", response_type: singleton}}]',
        "  }",
        "  PRODUCERS {",
        "    users: [",
        *(f"      {producer.config_entry()}" for producer in producers if producer.revoked_at is None),
        "    ]",
        f'    imports: [{{service: {{account: TOUCHLINE, subject: "{INBOX_SUBJECTS}"}}}}]',
        "  }",
        "}",
        "",
    ]
    _write_private(root / "auth.conf", "\n".join(lines))


def add_producer(root: Path, workspace: str) -> tuple[Producer, str]:
    import fcntl

    producer, password = new_producer(workspace)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "producers.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two `token create --nats` (or a revoke) at once: each change is kept
        write_auth_config(root, [*load_producers(root), producer])
    return producer, password


def revoke_producer(root: Path, workspace: str, user: str) -> tuple[Producer | None, bool]:
    """Take the workspace's producer ``user`` out of the server's configuration, keeping its record
    with the time: its record (None if the workspace has no such producer), and whether it had been
    revoked before (then nothing changes)."""
    import fcntl

    with open(root / "producers.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        producers = load_producers(root)
        found = next((p for p in producers if p.user == user and p.workspace == workspace), None)
        if found is None or found.revoked_at is not None:
            return found, found is not None
        revoked = dataclasses.replace(found, revoked_at=dt.datetime.now(dt.timezone.utc).isoformat())
        write_auth_config(root, [revoked if p is found else p for p in producers])
    return revoked, False


def running_server(root: Path) -> psutil.Process | None:
    """The embedded nats-server of this data dir (``<data dir>/nats``, resolved), if one runs:
    the process its pid file names, when that runs our configuration (a pid is reused)."""
    try:
        process = psutil.Process(int((root / "nats.pid").read_text().strip()))
        if str(root / "nats.conf") in " ".join(process.cmdline()) and process.status() != psutil.STATUS_ZOMBIE:
            return process
    except (OSError, ValueError, psutil.Error):
        pass
    return None


def reload_running_server(root: Path) -> bool:
    """SIGHUP the embedded nats-server of this data dir, if it runs. True if signalled."""
    process = running_server(root)
    try:
        if process is not None:
            process.send_signal(signal.SIGHUP)
            return True
    except psutil.Error:
        pass
    return False


async def wait_until_accepted(url: str, user: str, password: str, timeout: float = 10.0) -> bool:
    """After a reload: poll until the server lets these credentials in."""
    import nats

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            nc = await nats.connect(
                url, user=user, password=password, allow_reconnect=False, connect_timeout=2,
                max_reconnect_attempts=0, error_cb=ignore_error,
            )
        except Exception:
            import asyncio

            await asyncio.sleep(0.1)
            continue
        await nc.close()
        return True
    return False


async def ignore_error(_err: Exception) -> None:
    """A nats-py ``error_cb`` for a connection whose failures the caller reports itself."""
    pass


def adopt_global_account_store(store_dir: Path) -> None:
    """Data dirs from before authentication kept their streams in the global account ($G); the
    streams now belong to the TOUCHLINE account, so its store takes that directory over."""
    old, new = store_dir / "jetstream" / "$G", store_dir / "jetstream" / "TOUCHLINE"
    if old.is_dir() and not new.exists():
        old.rename(new)
