"""Settings of CONTRACT.md section 1: flags win over environment, environment over defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.nats_io import nats_servers
from services.settings import Settings


def test_defaults(monkeypatch):
    for name in ("TOUCHLINE_DATA_DIR", "TOUCHLINE_NATS_URL", "TOUCHLINE_DATABASE_URL", "TOUCHLINE_HTTP",
                 "TOUCHLINE_ADMIN_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings.from_env()
    assert settings.data_dir == Path("./.touchline")
    assert (settings.nats_url, settings.database_url, settings.admin_token) == (None, None, None)
    assert (settings.http_host, settings.http_port) == ("127.0.0.1", 8080)


def test_flags_win_over_environment(monkeypatch):
    monkeypatch.setenv("TOUCHLINE_DATA_DIR", "/from/env")
    monkeypatch.setenv("TOUCHLINE_HTTP", "0.0.0.0:9000")
    monkeypatch.setenv("TOUCHLINE_NATS_URL", "nats://env:4222")
    assert Settings.from_env().data_dir == Path("/from/env")
    settings = Settings.from_env(data_dir=Path("/from/flag"), http="127.0.0.1:9999")
    assert settings.data_dir == Path("/from/flag") and settings.http_port == 9999
    assert settings.nats_url == "nats://env:4222"
    assert settings.child_environment()["TOUCHLINE_DATA_DIR"] == "/from/flag"


def test_a_cluster_url_names_several_seed_servers():
    assert nats_servers("nats://a:4222, nats://b:4222,nats://c:4222") == [
        "nats://a:4222", "nats://b:4222", "nats://c:4222"]
    assert nats_servers("nats://user:pw@a:4222") == ["nats://user:pw@a:4222"]


def test_api_workers_default_to_the_cores_and_can_be_set(monkeypatch):
    import os

    import pytest

    monkeypatch.delenv("TOUCHLINE_API_WORKERS", raising=False)
    assert Settings.from_env().api_workers == max(1, min(os.cpu_count() or 1, 4))
    monkeypatch.setenv("TOUCHLINE_API_WORKERS", "3")
    assert Settings.from_env().api_workers == 3
    for wrong in ("0", "two", "-1"):
        monkeypatch.setenv("TOUCHLINE_API_WORKERS", wrong)
        with pytest.raises(SystemExit, match="TOUCHLINE_API_WORKERS must be a whole number of at least 1"):
            Settings.from_env()


@pytest.mark.parametrize("name,field,default", [
    ("TOUCHLINE_DISPATCHER_ACK_WAIT", "dispatcher_ack_wait", 30.0),
    ("TOUCHLINE_GOAL_CHECK_SECONDS", "goal_check_seconds", 600.0),
])
def test_the_services_timings_are_settings_named_in_one_line_when_wrong(monkeypatch, name, field, default):
    """Both were read where they were used (one at import), and a wrong value was a traceback."""
    monkeypatch.delenv(name, raising=False)
    assert getattr(Settings.from_env(), field) == default
    monkeypatch.setenv(name, "2.5")
    assert getattr(Settings.from_env(), field) == 2.5
    for wrong in ("0", "soon", "-1", "inf", "nan"):
        monkeypatch.setenv(name, wrong)
        with pytest.raises(SystemExit, match=f"^touchline: {name} must be a number of seconds above 0, got '{wrong}'$"):
            Settings.from_env()


def test_the_http_address_is_host_and_a_real_port_or_one_line_naming_the_setting(monkeypatch):
    import pytest

    monkeypatch.delenv("TOUCHLINE_HTTP", raising=False)
    assert Settings.from_env(http=":18435").http == "127.0.0.1:18435"  # what the log then names
    assert (Settings.from_env(http="[::1]:8081").http_host, Settings.from_env(http="[::1]:8081").http_port) == ("::1", 8081)
    for wrong in ("nonsense", "127.0.0.1:abc", "127.0.0.1:", "127.0.0.1:99999", "127.0.0.1:-1", "127.0.0.1:0", "h:٣"):
        with pytest.raises(SystemExit, match=r"--http \(TOUCHLINE_HTTP\) must be HOST:PORT .* got "):
            Settings.from_env(http=wrong)
    monkeypatch.setenv("TOUCHLINE_HTTP", "127.0.0.1:70000")
    with pytest.raises(SystemExit, match="70000"):
        Settings.from_env()


def test_a_host_that_does_not_resolve_is_one_line_not_a_lost_database():
    import pytest

    from services.runtime.serve import listen

    with pytest.raises(SystemExit, match=r"^touchline: cannot listen on nohost\.invalid:18439: "):
        listen("nohost.invalid", 18439)


def test_an_ipv6_http_address_goes_in_brackets():
    """`[::1:18435` listened on [::1]:18435 and logged it unbalanced; `::1:18435` logged no URL at all."""
    import pytest

    for wrong in ("[::1:18435", "::1:18435", "[]:80"):
        with pytest.raises(SystemExit, match=r"takes an IPv6 address in brackets, as in \[::1\]:8080"):
            Settings.from_env(http=wrong)
    assert Settings.from_env(http="[::1]:18435").http == "[::1]:18435"


@pytest.mark.parametrize("url, logged", [
    ("postgresql://u:p%40ss@db.example:5432/tl?sslmode=require", "postgresql://u@db.example:5432/tl?sslmode=require"),
    ("postgres://db.example/tl?user=u&password=secret&sslmode=require", "postgres://db.example/tl?user=u&sslmode=require"),
    ("postgresql://postgres:@/postgres?host=/tmp/x/postgres", "postgresql://postgres@/postgres?host=/tmp/x/postgres"),
    ("host=db.example password=secret", "(a connection string)"),
])
def test_up_logs_the_database_it_uses_without_its_password(url, logged):
    from services.store.db import without_password

    assert without_password(url) == logged
