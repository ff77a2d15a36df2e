"""NATS producers (CONTRACT.md sections 3 and 7): credentials from `touchline token create --nats`
publish only to their own workspace's inbox subject; nothing else gets in."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import time

import nats
import pytest
from nats.js.errors import NoStreamResponseError

from events.log import INBOX_STREAM, LOG_STREAM, inbox_subject, log_subject
from tests.support import event, touchline_cli, wait_for
from services.nats_io import connect_client


def create_producer(servers, workspace: str) -> dict:
    # The embedded NATS is found in the data dir.
    done = touchline_cli("token", "create", "--workspace", workspace, "--scope", "ingest", "--nats",
                         "--data-dir", str(servers.root), env={"TOUCHLINE_DATABASE_URL": servers.database_url})
    assert done.returncode == 0, done.stderr + done.stdout
    return json.loads(done.stdout)


def test_a_producer_for_an_external_cluster_gets_its_servers_as_a_list_and_the_entry_to_add(stack):
    """nats-py cannot read the comma-separated `url` of a cluster (an outside audit: "Port could not
    be cast"): `servers` is the list its connect() takes. An external NATS is not changed: the
    operator adds `server_config` on every server and reloads each one."""
    ws, _ = stack.new_workspace()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOUCHLINE_")}
    env["TOUCHLINE_DATABASE_URL"] = stack.servers.database_url
    env["TOUCHLINE_NATS_URL"] = "tls://touchline:secret@n1.example:4222, tls://n2.example:4222"
    done = subprocess.run([sys.executable, "-m", "services.cli.main", "token", "create", "--workspace", ws,
                           "--scope", "ingest", "--nats"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    creds = json.loads(done.stdout)
    assert creds["servers"] == ["tls://n1.example:4222", "tls://n2.example:4222"]
    assert "secret" not in done.stdout and creds["user"] in creds["server_config"]
    assert "on every server of the cluster" in done.stderr and "--signal reload=PID" in done.stderr


async def last_stored(url: str, subjects: tuple[str, ...]) -> dict[str, int]:
    """The sequence of the last message stored on each subject (0: none). Per subject: the stack is
    shared with the tests before, whose follow-ups may still be going into the log (a stalled
    offer's timer, say), and a count of the whole log took those for a refused publish stored."""
    nc = await connect_client(url)
    js = nc.jetstream()
    last = {}
    for subject in subjects:
        stream = LOG_STREAM if subject.startswith("touchline.log.") else INBOX_STREAM
        try:
            last[subject] = (await js.get_last_msg(stream, subject)).seq
        except nats.js.errors.NotFoundError:
            last[subject] = 0
    await nc.close()
    return last


def test_producer_publishes_only_to_its_own_workspace(stack):
    ws, auth = stack.new_workspace()
    other, other_auth = stack.new_workspace()
    creds = create_producer(stack.servers, ws)
    assert creds["url"] == stack.servers.nats.url and "@" not in creds["url"]
    assert creds["servers"] == [creds["url"]]
    assert creds["subject"] == inbox_subject(ws) and creds["inbox_prefix"] == f"_INBOX_{creds['user']}"
    # Only the bcrypt hash is kept, in files only the owner can read.
    root = stack.servers.nats.root
    for name in ("producers.json", "auth.conf", "internal.json", "url"):
        assert stat.S_IMODE((root / name).stat().st_mode) == 0o600, name
    assert creds["password"] not in (root / "producers.json").read_text() + (root / "auth.conf").read_text()

    errors: list = []

    async def on_error(err: Exception) -> None:
        errors.append(err)

    async def producer() -> nats.NATS:
        return await connect_client(creds["url"], user=creds["user"], password=creds["password"],
                                  inbox_prefix=creds["inbox_prefix"], error_cb=on_error)

    async def publish_own() -> None:
        nc = await producer()
        ack = await nc.jetstream().publish(
            inbox_subject(ws), json.dumps(event("marketing.engaged", "zoe", channel="ads", action="click")).encode())
        assert ack.stream == INBOX_STREAM
        await nc.close()

    asyncio.run(publish_own())
    # Generous: the inbox subscriber sometimes sits ~20 s on a lone message (see docs/reliability.md).
    contact = wait_for(lambda: stack.get(f"/v1/workspaces/{ws}/contacts/zoe", auth).json().get("touches"), 90)
    assert contact["total"] == 1
    refused = (inbox_subject(other), log_subject(ws), log_subject(other), "$JS.API.STREAM.LIST")

    async def publish_elsewhere() -> tuple:
        nc = await producer()
        js = nc.jetstream()
        before = await last_stored(stack.servers.nats_url, refused[:3])
        for subject in refused:
            with pytest.raises((nats.errors.TimeoutError, NoStreamResponseError)):
                await js.publish(subject, json.dumps(event("sales.lead.qualified", "zoe")).encode(), timeout=1)
        # Nor may it listen to the log or to another producer's acks.
        for subject in (log_subject(ws), "_INBOX.>", "touchline.in.*"):
            await nc.subscribe(subject)
        await nc.flush()
        await asyncio.sleep(0.3)
        await nc.close()
        return before, await last_stored(stack.servers.nats_url, refused[:3])

    before, after = asyncio.run(publish_elsewhere())
    assert after == before, "a refused publish was stored"
    violations = " ".join(str(e) for e in errors).lower()  # nats-py lower-cases server errors
    for subject in refused:
        assert f'permissions violation for publish to "{subject.lower()}"' in violations
    for subject in (log_subject(ws), "_INBOX.>", "touchline.in.*"):
        assert f'permissions violation for subscription to "{subject.lower()}"' in violations
    assert stack.get(f"/v1/workspaces/{other}/contacts/zoe", other_auth).status_code == 404


def test_a_producer_cannot_have_another_workspaces_events_dropped_as_duplicates(stack):
    """One inbox holds every workspace's producers, and JetStream drops a message whose
    Nats-Msg-Id it saw within the stream's window: with two minutes, a producer of one workspace
    published another's guessable ids first, and that workspace's events were acked as duplicates
    and stored nowhere (an outside audit). The window is now the server's least, 100 ms."""
    ws, auth = stack.new_workspace()
    victim, victim_auth = stack.new_workspace()
    attacker, owner = create_producer(stack.servers, ws), create_producer(stack.servers, victim)

    async def publish(creds: dict, workspace: str, contact: str) -> bool:
        nc = await connect_client(creds["url"], user=creds["user"], password=creds["password"],
                                  inbox_prefix=creds["inbox_prefix"])
        body = json.dumps(event("marketing.engaged", contact, channel="shop", action="click")).encode()
        ack = await nc.jetstream().publish(inbox_subject(workspace), body, headers={"Nats-Msg-Id": "/shop:order-1001"})
        await nc.close()
        return bool(ack.duplicate)

    assert asyncio.run(publish(attacker, ws, "mallory")) is False
    time.sleep(0.5)  # past the window (and the server's purge, at most 50 ms behind it)
    assert asyncio.run(publish(owner, victim, "buyer")) is False
    contact = wait_for(lambda: stack.get(f"/v1/workspaces/{victim}/contacts/buyer", victim_auth).json().get("touches"), 90)
    assert contact["total"] == 1


def test_unauthenticated_and_wrong_password_are_refused(stack):
    ws, _ = stack.new_workspace()
    creds = create_producer(stack.servers, ws)

    async def attempt(**kwargs) -> None:
        async def quiet(_err: Exception) -> None:
            pass

        await connect_client(stack.servers.nats.url, allow_reconnect=False, max_reconnect_attempts=0,
                           error_cb=quiet, **kwargs)

    for kwargs in ({}, {"user": creds["user"], "password": creds["password"] + "x"},
                   {"user": "touchline", "password": creds["password"]}):
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            asyncio.run(attempt(**kwargs))


def test_producer_of_unknown_workspace_is_refused(stack):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOUCHLINE_")}
    env["TOUCHLINE_DATABASE_URL"] = stack.servers.database_url
    done = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "token", "create", "--workspace", "no-such-ws",
         "--scope", "ingest", "--nats", "--data-dir", str(stack.servers.root)],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2 and "unknown workspace" in done.stderr


def test_reply_subjects_cannot_smuggle_acks_into_the_log(stack):
    """Reply subjects are not permission-checked: in one account, a producer naming touchline.log.X
    as its reply would have JetStream store the ack in the log. The PRODUCERS account prevents it."""
    ws, auth = stack.new_workspace()
    other, other_auth = stack.new_workspace()
    creds = create_producer(stack.servers, ws)

    watched = (log_subject(ws), log_subject(other), inbox_subject(other))

    async def smuggle() -> tuple[dict[str, int], int]:
        log_before = await last_stored(stack.servers.nats_url, watched)
        nc = await connect_client(creds["url"], user=creds["user"], password=creds["password"],
                                inbox_prefix=creds["inbox_prefix"])
        for reply in (log_subject(ws), log_subject(other), inbox_subject(other)):
            await nc.publish(inbox_subject(ws), b'{"not": "an event"}', reply=reply)
        await nc.flush()
        await nc.close()
        return log_before, 3

    log_before, sent = asyncio.run(smuggle())
    rejected = wait_for(lambda: len(stack.get(f"/v1/workspaces/{ws}/rejected", auth).json()["rejected"]) >= sent, 90)
    assert rejected, stack.get(f"/v1/workspaces/{ws}/rejected", auth).json()
    time.sleep(0.5)
    assert asyncio.run(last_stored(stack.servers.nats_url, watched)) == log_before
    assert stack.get(f"/v1/workspaces/{other}/rejected", other_auth).json()["rejected"] == []
