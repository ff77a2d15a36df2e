"""The admin commands attach to an existing Touchline and never make one (CONTRACT.md section 1).

Run from a directory with no Touchline (no `touchline up` ever ran there, no URL set) they used
to start a new, empty PostgreSQL under ./.touchline and act on it: `workspace create` said
"created", and its token was then refused by the running API. Now they refuse in one line that
names the data dir, and leave the directory as it was."""

from __future__ import annotations

import asyncio
import http.server
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import asyncpg
import httpx
import pytest

from services.runtime.embedded import free_port
from tests.support import touchline_cli

ADMIN_COMMANDS = [
    ("workspace", "create", "zeta"),
    ("token", "create", "--workspace", "zeta", "--scope", "read"),
    ("token", "create", "--workspace", "zeta", "--scope", "ingest", "--nats"),
    ("audit", "--workspace", "zeta", "dana"),
    ("replay", "--workspace", "zeta"),
    ("replay", "--workspace", "zeta", "--verify"),
    ("status",),
    ("status", "--json"),
    ("snapshot", "list", "--workspace", "zeta"),
    ("snapshot", "drop", "s1", "--workspace", "zeta"),
    ("parked", "list"),
    ("parked", "redrive"),
    ("deadletter", "list"),
    ("deadletter", "redrive"),
    ("rules", "reset"),
]


def touchline(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    """The CLI as a newcomer runs it, in 80 columns: no TOUCHLINE_* variable unless given."""
    return touchline_cli(*args, cwd=cwd, env={"COLUMNS": "80", **env})


def refused(done: subprocess.CompletedProcess) -> str:
    """The one line a refused command prints (beside structured logs, JSON lines); nothing on stdout."""
    assert done.returncode != 0, done.stdout + done.stderr
    assert done.stdout == ""
    lines = [line for line in done.stderr.strip().splitlines() if not line.startswith("{")]
    assert len(lines) == 1, done.stderr  # one line, not wrapped to the 80 columns, no traceback
    assert lines[0].startswith("touchline: ")
    return lines[0]


@pytest.mark.parametrize("command", ADMIN_COMMANDS, ids=" ".join)
def test_an_admin_command_with_no_touchline_in_the_data_dir_refuses_and_makes_nothing(tmp_path, command):
    done = touchline(*command, cwd=tmp_path)
    line = refused(done)
    assert f"no Touchline in data dir {tmp_path.resolve() / '.touchline'}" in line
    assert "--data-dir" in line and "TOUCHLINE_DATA_DIR" in line and "TOUCHLINE_DATABASE_URL" in line
    assert list(tmp_path.iterdir()) == []  # no PostgreSQL, NATS or runtime dir made


def test_the_data_dir_from_the_environment_is_the_one_named(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    line = refused(touchline("workspace", "create", "zeta", cwd=tmp_path, TOUCHLINE_DATA_DIR=str(elsewhere)))
    assert f"no Touchline in data dir {elsewhere}" in line
    assert not elsewhere.exists()


def test_a_command_that_reads_nats_needs_the_data_dirs_up_running(tmp_path):
    """A data dir of a stopped `up`: its NATS address is on disk, its server gone. Refused before
    anything is started (PostgreSQL included)."""
    data = tmp_path / "data"
    (data / "postgres").mkdir(parents=True)
    (data / "postgres" / "PG_VERSION").write_text("18\n")
    (data / "nats").mkdir()
    (data / "nats" / "url").write_text(f"nats://touchline:pw@127.0.0.1:{free_port()}")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (data / "nats" / "nats.pid").write_text(str(dead.pid))
    before = sorted(p.name for p in data.rglob("*"))
    for command in (("status",), ("replay", "--workspace", "zeta"), ("parked", "list")):
        line = refused(touchline(*command, "--data-dir", str(data)))
        assert f"the NATS of data dir {data.resolve()} is not running" in line
        assert "touchline up --data-dir" in line and "TOUCHLINE_NATS_URL" in line
    assert sorted(p.name for p in data.rglob("*")) == before


def test_commands_attach_to_the_embedded_servers_of_a_data_dir_from_anywhere(stack, tmp_path):
    """The test servers live under one data dir, as `up`'s do; the stack's API uses them. A
    workspace and token made through --data-dir (or TOUCHLINE_DATA_DIR) from another directory
    are the API's."""
    data_dir = str(stack.servers.root)
    workspace = f"ws-{uuid.uuid4().hex[:10]}"
    made = touchline("workspace", "create", workspace, "--data-dir", data_dir, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    token = touchline("token", "create", "--workspace", workspace, "--scope", "read", cwd=tmp_path,
                      TOUCHLINE_DATA_DIR=data_dir)
    assert token.returncode == 0, token.stderr
    answer = stack.get(f"/v1/workspaces/{workspace}/funnel", {"Authorization": f"Bearer {token.stdout.strip()}"})
    assert answer.status_code == 200, answer.text
    status = touchline("status", "--json", "--data-dir", data_dir, cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert '"log_last_seq"' in status.stdout
    assert list(tmp_path.iterdir()) == []


def test_demo_without_an_api_refuses_before_making_anything(tmp_path):
    line = refused(touchline("demo", "--http", f"127.0.0.1:{free_port()}", cwd=tmp_path))
    assert "no Touchline API at http://127.0.0.1:" in line and "--http" in line
    assert list(tmp_path.iterdir()) == []


def test_demo_pointed_at_another_web_server_says_so_in_one_line(tmp_path):
    """It printed a JSONDecodeError traceback."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        line = refused(touchline("demo", "--http", f"127.0.0.1:{server.server_port}", cwd=tmp_path))
    finally:
        server.shutdown()
    assert "is not a Touchline API (GET /v1/health answered 404)" in line
    assert list(tmp_path.iterdir()) == []


def test_demo_names_a_data_dir_that_is_not_the_apis(stack, tmp_path):
    """The API runs on one database, the data dir (here: the URL) names another: the token the
    demo made there is refused, and the demo says why instead of printing a 401 traceback."""
    other = f"other_{uuid.uuid4().hex[:8]}"

    async def create(statement: str, database_url: str = stack.servers.database_url) -> list:
        conn = await asyncpg.connect(database_url)
        try:
            return await conn.fetch(statement)
        finally:
            await conn.close()

    asyncio.run(create(f"CREATE DATABASE {other}"))
    try:
        url = stack.servers.database_url.replace("/postgres?", f"/{other}?")
        assert url != stack.servers.database_url
        line = refused(touchline("demo", "--contacts", "5", "--days", "3", "--http", stack.base.removeprefix("http://"),
                                 cwd=tmp_path, TOUCHLINE_DATABASE_URL=url))
        assert f"the Touchline at {stack.base} does not know the token" in line
        assert "two different Touchlines" in line
        # What it made there is taken back: that Touchline has no demo workspace it never asked for.
        assert asyncio.run(create("SELECT id FROM workspaces UNION ALL SELECT workspace FROM tokens", url)) == []
    finally:
        asyncio.run(create(f"DROP DATABASE {other} WITH (FORCE)"))
    assert httpx.get(f"{stack.base}/v1/health").status_code == 200


def test_every_command_given_an_unknown_workspace_says_so_alike(stack, tmp_path):
    """One line naming it, exit 2, from every command that takes a workspace (token create said so
    with exit 1, and audit answered that the contact had no events)."""
    data_dir = str(stack.servers.root)
    for command in (("token", "create", "--workspace", "no-such-ws", "--scope", "read"),
                    ("token", "create", "--workspace", "no-such-ws", "--scope", "ingest", "--nats"),
                    ("audit", "--workspace", "no-such-ws", "dana"),
                    ("replay", "--workspace", "no-such-ws"),
                    ("snapshot", "list", "--workspace", "no-such-ws"),
                    ("snapshot", "drop", "--workspace", "no-such-ws", "x"),
                    ("deadletter", "list", "--workspace", "no-such-ws"),
                    ("deadletter", "redrive", "--workspace", "no-such-ws")):
        done = touchline(*command, "--data-dir", data_dir, cwd=tmp_path)
        assert (done.returncode, refused(done)) == (2, "touchline: unknown workspace 'no-such-ws'"), command
    done = touchline("parked", "redrive", "--projector", "bogus", "--data-dir", data_dir, cwd=tmp_path)
    assert done.returncode == 2 and refused(done).startswith("touchline: unknown projector 'bogus' (known: "), done.stderr


def test_a_nats_or_postgresql_that_refuses_the_credentials_is_one_line_at_once(stack, tmp_path):
    """A wrong NATS password kept `status` and `replay --verify` trying for minutes on a TLS cluster
    and ended, if ever, in "no servers available", the refusal said nowhere; a missing database was
    tried for a minute (and a wrong PostgreSQL password was a 183-line traceback)."""
    host = stack.servers.nats_url.rsplit("@", 1)[1]
    urls = {"TOUCHLINE_DATABASE_URL": stack.servers.database_url}
    workspace, _ = stack.new_workspace()
    for command in (("status",), ("replay", "--workspace", workspace, "--verify")):
        done = touchline(*command, cwd=tmp_path, TOUCHLINE_NATS_URL=f"nats://touchline:wrong@{host}", **urls)
        assert done.returncode == 1 and refused(done) == (
            "touchline: NATS refused the connection ('Authorization Violation'); check the user and password"
            " of TOUCHLINE_NATS_URL"), command
    nowhere = stack.servers.database_url.replace("/postgres?", "/no_such_database?")
    done = touchline("workspace", "create", "zeta", cwd=tmp_path, TOUCHLINE_DATABASE_URL=nowhere,
                     TOUCHLINE_NATS_URL=stack.servers.nats_url)
    assert done.returncode == 1 and refused(done) == (
        'touchline: PostgreSQL refused the connection (database "no_such_database" does not exist);'
        " check TOUCHLINE_DATABASE_URL"), done.stderr
    assert "postgres.unavailable" not in done.stderr  # at once: it was tried again for 10 s first


@pytest.mark.parametrize("service", ["api", "projector", "rules", "dispatcher"])
def test_a_service_whose_credentials_are_refused_says_so_in_one_line_and_stops(stack, tmp_path, service):
    """`serve` with a wrong NATS password logged "Authorization Violation" twice a second for ever,
    and with a PostgreSQL role refused it printed a 185-line traceback (the API: uvicorn's failed
    start-up; an outside audit). A supervisor restarts a service that stops; one that loops hides
    the mistake."""
    host = stack.servers.nats_url.rsplit("@", 1)[1]
    role_refused = stack.servers.database_url.replace("://postgres", "://nobody", 1)
    for nats_url, database_url, line in (
        (f"nats://touchline:wrong@{host}", stack.servers.database_url,
         "touchline: NATS refused the connection ('Authorization Violation'); check the user and password of"
         " TOUCHLINE_NATS_URL"),
        (stack.servers.nats_url, role_refused,
         'touchline: PostgreSQL refused the connection (role "nobody" does not exist); check TOUCHLINE_DATABASE_URL'),
    ):
        done = touchline_cli("serve", service, cwd=tmp_path, timeout=60, env={
            "COLUMNS": "80", "TOUCHLINE_NATS_URL": nats_url, "TOUCHLINE_DATABASE_URL": database_url,
            "TOUCHLINE_HTTP": f"127.0.0.1:{free_port()}"})
        assert (done.returncode, refused(done)) == (1, line)


def test_a_nats_or_postgresql_that_never_answers_is_named_as_such(stack, tmp_path):
    """Neither ever answered, and the command said it "stopped answering during the command",
    with `touchline status` (the command that had just failed) as the thing to try."""
    nobody = free_port()
    done = touchline("status", cwd=tmp_path, TOUCHLINE_DATABASE_URL=stack.servers.database_url,
                     TOUCHLINE_NATS_URL=f"nats://someone:secret@127.0.0.1:{nobody}")
    assert done.returncode == 1 and refused(done) == (
        f"touchline: no NATS answered at nats://127.0.0.1:{nobody} (no servers available for connection);"
        " check that it runs, and TOUCHLINE_NATS_URL"), done.stderr
    done = touchline("workspace", "create", "zeta", cwd=tmp_path, TOUCHLINE_NATS_URL=stack.servers.nats_url,
                     TOUCHLINE_DATABASE_URL=f"postgresql://someone:secret@127.0.0.1:{nobody}/touchline")
    line = refused(done)
    assert done.returncode == 1 and line.startswith(
        f"touchline: no PostgreSQL answered at postgresql://someone@127.0.0.1:{nobody}/touchline within 10 s ("), line
    assert line.endswith("); check that it runs, and TOUCHLINE_DATABASE_URL") and "secret" not in done.stderr, line


def test_redriving_a_sequence_that_is_not_parked_says_so(stack, tmp_path):
    """A mistyped sequence was "re-drove 0 command(s)" or "0 applied, 0 still parked", exit 0."""
    data_dir = str(stack.servers.root)
    done = touchline("deadletter", "redrive", "987654321", "--data-dir", data_dir, cwd=tmp_path)
    assert done.returncode == 1 and done.stdout.strip() == "re-drove 0 command(s)", done.stdout
    assert done.stderr.strip().endswith("touchline: no dead letter at sequence 987654321 (`touchline deadletter list`)")
    done = touchline("parked", "redrive", "--seq", "987654321", "--data-dir", data_dir, cwd=tmp_path)
    assert done.returncode == 1 and done.stderr.strip().endswith(
        "touchline: no event parked by projector 'main' at sequence 987654321 (`touchline parked list`)"), done.stderr
    done = touchline("parked", "redrive", "--seq", "-3", "--data-dir", data_dir, cwd=tmp_path)
    assert done.returncode == 2 and "--seq" in done.stderr


def test_a_command_whose_postgresql_stops_answering_still_ends(servers, tmp_path):
    """An outside audit stopped the stack under a running `touchline replay`: once in three tries it
    never ended, Ctrl-C included. A pool's close waits for each connection's goodbye; a server that
    does not answer (here its backends are frozen) held the command's end for ever."""
    import signal
    import time

    from services.cli.attach import CLOSE_SECONDS, database
    from services.settings import Settings

    settings = Settings(data_dir=tmp_path, database_url=servers.database_url)

    async def scenario() -> float:
        frozen: list[int] = []
        try:
            async with database(settings) as pool:
                async with pool.acquire() as one, pool.acquire() as two:
                    frozen = [await one.fetchval("SELECT pg_backend_pid()"), await two.fetchval("SELECT pg_backend_pid()")]
                for pid in frozen:
                    os.kill(pid, signal.SIGSTOP)
                started = time.monotonic()
            return time.monotonic() - started
        finally:
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)

    assert asyncio.run(asyncio.wait_for(scenario(), 60)) < CLOSE_SECONDS + 5
