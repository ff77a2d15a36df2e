"""Settings of CONTRACT.md section 1: flags win over environment, environment over defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("./.touchline")
    nats_url: str | None = None
    database_url: str | None = None
    http: str = "127.0.0.1:8080"
    admin_token: str | None = None
    # HTTP worker processes sharing the port (SO_REUSEPORT); Python serves one request at a time
    # per process, so one per core lets the API use the machine. TOUCHLINE_API_WORKERS overrides.
    api_workers: int = 0
    # Replicas of each JetStream stream on a cluster (TOUCHLINE_NATS_REPLICAS). None: a new stream
    # gets the server's one, and an existing stream keeps what it has (an operator's `--replicas 3`).
    nats_replicas: int | None = None
    # How long the dispatcher's consumer waits for a command's ack before redelivering it to
    # another dispatcher (TOUCHLINE_DISPATCHER_ACK_WAIT, seconds; read when the consumer is made).
    dispatcher_ack_wait: float = 30.0
    # How often the rules worker checks every goal for goal-at-risk besides when its actual
    # changes (TOUCHLINE_GOAL_CHECK_SECONDS; the contract asks at least hourly).
    goal_check_seconds: float = 600.0

    @classmethod
    def from_env(cls, **flags: object) -> "Settings":
        env = os.environ
        settings = cls(
            data_dir=Path(env.get("TOUCHLINE_DATA_DIR") or cls.data_dir),
            nats_url=env.get("TOUCHLINE_NATS_URL") or None,
            database_url=env.get("TOUCHLINE_DATABASE_URL") or None,
            http=env.get("TOUCHLINE_HTTP") or cls.http,
            admin_token=env.get("TOUCHLINE_ADMIN_TOKEN") or None,
            api_workers=_positive_int(env.get("TOUCHLINE_API_WORKERS"), "TOUCHLINE_API_WORKERS") or default_api_workers(),
            nats_replicas=_positive_int(env.get("TOUCHLINE_NATS_REPLICAS"), "TOUCHLINE_NATS_REPLICAS"),
            dispatcher_ack_wait=_seconds(env.get("TOUCHLINE_DISPATCHER_ACK_WAIT"), "TOUCHLINE_DISPATCHER_ACK_WAIT")
            or cls.dispatcher_ack_wait,
            goal_check_seconds=_seconds(env.get("TOUCHLINE_GOAL_CHECK_SECONDS"), "TOUCHLINE_GOAL_CHECK_SECONDS")
            or cls.goal_check_seconds,
        )
        given = {name: value for name, value in flags.items() if value is not None}
        if "data_dir" in given:
            given["data_dir"] = Path(given["data_dir"])  # type: ignore[arg-type]
        settings = replace(settings, **given)  # type: ignore[arg-type]
        return replace(settings, http=http_address(settings.http))

    @property
    def http_host(self) -> str:
        return self.http.rsplit(":", 1)[0].removeprefix("[").removesuffix("]")

    @property
    def http_port(self) -> int:
        return int(self.http.rsplit(":", 1)[1])

    def child_environment(self) -> dict[str, str]:
        """The environment that hands these settings to a child process."""
        env = dict(os.environ)
        env["TOUCHLINE_DATA_DIR"] = str(self.data_dir)
        env["TOUCHLINE_HTTP"] = self.http
        for name, value in (
            ("TOUCHLINE_NATS_URL", self.nats_url),
            ("TOUCHLINE_DATABASE_URL", self.database_url),
            ("TOUCHLINE_ADMIN_TOKEN", self.admin_token),
        ):
            if value:
                env[name] = value
            else:
                env.pop(name, None)
        return env


def http_address(value: str) -> str:
    """``HOST:PORT`` as given (``:PORT`` is on 127.0.0.1, as before), or one line naming the setting."""
    host, colon, port = value.strip().rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]") and len(host) > 2
    if not bracketed and any(mark in host for mark in ":[]"):
        raise SystemExit(f"touchline: --http (TOUCHLINE_HTTP) takes an IPv6 address in brackets, as in [::1]:8080;"
                         f" got {value!r}")
    if not colon or not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise SystemExit(f"touchline: --http (TOUCHLINE_HTTP) must be HOST:PORT with a port from 1 to 65535,"
                         f" got {value!r}")
    return f"{host or '127.0.0.1'}:{int(port)}"


def default_api_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 4))


def _positive(value: str | None, name: str, kind: type, wanted: str) -> float | int | None:
    """A variable's number above 0 (None when unset), or one line naming it."""
    if not value:
        return None
    try:
        number = kind(value)
    except ValueError:
        number = 0
    if not 0 < number < float("inf"):
        raise SystemExit(f"touchline: {name} must be {wanted}, got {value!r}")
    return number


def _seconds(value: str | None, name: str) -> float | None:
    return _positive(value, name, float, "a number of seconds above 0")


def _positive_int(value: str | None, name: str) -> int | None:
    return _positive(value, name, int, "a whole number of at least 1")
