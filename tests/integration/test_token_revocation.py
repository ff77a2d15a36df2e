"""Revoking what lets others in: a workspace's bearer tokens (HTTP and CLI) and its NATS producers.
A leaked token must stop working everywhere, and the record of it must stay."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time

import nats

from events.log import inbox_subject
from services.nats_io import connect_client
from tests.integration.test_nats_producers import create_producer
from tests.support import event, touchline_cli

TOKEN_CACHE_SECONDS = 5.0  # services.api.auth.TokenBook's ttl: how long an API process may still accept it


def new_token(stack, workspace: str, scopes: list[str]) -> dict:
    answer = stack.http.post(f"/v1/workspaces/{workspace}/tokens", json={"scopes": scopes}, headers=stack.admin())
    assert answer.status_code == 201, answer.text
    return answer.json()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def refused_within(stack, path: str, headers: dict[str, str], seconds: float) -> float:
    started = time.monotonic()
    while stack.get(path, headers).status_code != 401:
        assert time.monotonic() - started < seconds, f"{path} still accepts the revoked token"
        time.sleep(0.1)
    return time.monotonic() - started


def test_a_revoked_token_is_refused_and_its_record_stays(stack):
    ws, _ = stack.new_workspace()
    made = new_token(stack, ws, ["ingest", "read"])
    kept = new_token(stack, ws, ["read"])
    assert len(made["id"]) == 12 and made["id"] != kept["id"]
    funnel = f"/v1/workspaces/{ws}/funnel"
    assert stack.get(funnel, bearer(made["token"])).status_code == 200  # now in the API's cache

    listed = stack.get(f"/v1/workspaces/{ws}/tokens", stack.admin()).json()["tokens"][1:]  # after new_workspace's
    assert [(t["id"], t["scopes"], t["revoked_at"]) for t in listed] == [
        (made["id"], ["ingest", "read"], None), (kept["id"], ["read"], None)]
    assert made["token"] not in json.dumps(listed)

    revoked = stack.http.delete(f"/v1/workspaces/{ws}/tokens/{made['id']}", headers=stack.admin())
    assert revoked.status_code == 200, revoked.text
    record = revoked.json()
    assert record["id"] == made["id"] and record["revoked_at"] is not None
    # The API process that revoked it refuses it at once (the test stack has one; it accepted the
    # token for up to TOKEN_CACHE_SECONDS more, as every other process may: an outside audit).
    assert stack.get(funnel, bearer(made["token"])).status_code == 401
    refused_within(stack, funnel, bearer(made["token"]), TOKEN_CACHE_SECONDS + 5)
    sent = stack.send(ws, bearer(made["token"]), event("marketing.engaged", "zoe", channel="ads", action="click"))
    assert sent.status_code == 401
    assert stack.get(funnel, bearer(kept["token"])).status_code == 200

    # Revoking again changes nothing; the list keeps both, the revoked one with its time.
    again = stack.http.delete(f"/v1/workspaces/{ws}/tokens/{made['id']}", headers=stack.admin())
    assert again.status_code == 200 and again.json() == record
    listed = stack.get(f"/v1/workspaces/{ws}/tokens", stack.admin()).json()["tokens"][1:]
    assert [(t["id"], t["revoked_at"]) for t in listed] == [(made["id"], record["revoked_at"]), (kept["id"], None)]


def test_only_the_workspace_admin_lists_and_revokes_its_own_tokens(stack):
    ws, reader = stack.new_workspace(("read",))
    other, _ = stack.new_workspace()
    admin = bearer(new_token(stack, ws, ["admin"])["token"])
    theirs = new_token(stack, other, ["read"])
    assert stack.get(f"/v1/workspaces/{ws}/tokens", reader).status_code == 403
    assert stack.http.delete(f"/v1/workspaces/{ws}/tokens/{theirs['id']}", headers=reader).status_code == 403
    assert stack.get(f"/v1/workspaces/{ws}/tokens", admin).status_code == 200
    # Another workspace's token is not found here, and stays valid.
    answer = stack.http.delete(f"/v1/workspaces/{ws}/tokens/{theirs['id']}", headers=admin)
    assert (answer.status_code, answer.json()) == (404, {"error": f"no token {theirs['id']!r} in workspace {ws!r}"})
    assert stack.get(f"/v1/workspaces/{other}/funnel", bearer(theirs["token"])).status_code == 200
    answer = stack.http.delete(f"/v1/workspaces/{ws}/tokens/{theirs['token']}", headers=admin)
    assert answer.status_code == 400 and answer.json()["error"].startswith("token_id: expected the 12 hex digits")
    assert theirs["token"] not in answer.text and "got a token, not its id" in answer.text  # never echoed


def cli(servers, *args: str) -> subprocess.CompletedProcess:
    # The embedded NATS is found in the data dir.
    return touchline_cli(*args, "--data-dir", str(servers.root), env={"TOUCHLINE_DATABASE_URL": servers.database_url})


def test_the_cli_lists_and_revokes_a_token_by_its_id_or_by_the_token_itself(stack):
    ws, _ = stack.new_workspace()
    made = cli(stack.servers, "token", "create", "--workspace", ws, "--scope", "read")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    second = new_token(stack, ws, ["ingest"])
    listed = cli(stack.servers, "token", "list", "--workspace", ws, "--json")
    assert listed.returncode == 0, listed.stderr
    ids = [t["id"] for t in json.loads(listed.stdout)["tokens"]][1:]  # after new_workspace's
    assert len(ids) == 2 and ids[1] == second["id"]

    by_token = cli(stack.servers, "token", "revoke", "--workspace", ws, token)
    assert by_token.returncode == 0, by_token.stderr
    assert f"revoked token {ids[0]} (read) of {ws}" in by_token.stdout
    by_id = cli(stack.servers, "token", "revoke", "--workspace", ws, second["id"])
    assert by_id.returncode == 0, by_id.stderr
    again = cli(stack.servers, "token", "revoke", "--workspace", ws, second["id"])
    assert again.returncode == 0 and f"token {second['id']} of {ws} was already revoked, at" in again.stdout
    refused_within(stack, f"/v1/workspaces/{ws}/funnel", bearer(token), TOKEN_CACHE_SECONDS + 5)
    table = cli(stack.servers, "token", "list", "--workspace", ws)
    assert table.stdout.count("UTC") == 5, table.stdout  # three made, two of them revoked

    unknown = cli(stack.servers, "token", "revoke", "--workspace", ws, "000000000000")
    assert unknown.returncode == 1 and f"no token '000000000000' in workspace {ws!r}" in unknown.stderr
    malformed = cli(stack.servers, "token", "revoke", "--workspace", ws, "nope")
    assert malformed.returncode == 2 and "token list" in malformed.stderr


def test_a_revoked_nats_producer_is_disconnected_and_refused(stack):
    ws, _ = stack.new_workspace()
    creds = create_producer(stack.servers, ws)
    listed = cli(stack.servers, "token", "list", "--workspace", ws, "--nats", "--json")
    assert json.loads(listed.stdout) == {"workspace": ws, "producers": [{"user": creds["user"], "revoked_at": None}]}

    async def connect(**kwargs) -> nats.NATS:
        async def quiet(_err: Exception) -> None:
            pass

        return await connect_client(creds["url"], user=creds["user"], password=creds["password"],
                                    inbox_prefix=creds["inbox_prefix"], error_cb=quiet, **kwargs)

    async def scenario() -> None:
        closed = asyncio.Event()

        async def on_closed() -> None:
            closed.set()

        nc = await connect(closed_cb=on_closed, max_reconnect_attempts=3, reconnect_time_wait=0.2)
        body = json.dumps(event("marketing.engaged", "zoe", channel="ads", action="click")).encode()
        await nc.jetstream().publish(inbox_subject(ws), body)
        revoked = await asyncio.to_thread(cli, stack.servers, "token", "revoke", "--workspace", ws, "--nats",
                                          creds["user"])
        assert revoked.returncode == 0, revoked.stderr
        await asyncio.wait_for(closed.wait(), 15)  # the reload closed it, and it may not come back
        try:
            await connect(allow_reconnect=False, max_reconnect_attempts=0)
        except nats.errors.Error as err:
            assert "authorization violation" in str(err).lower()
        else:
            raise AssertionError("the revoked producer connected again")

    asyncio.run(scenario())
    # Kept on record with its time, as a revoked token is; revoking it again changes nothing.
    (listed,) = json.loads(cli(stack.servers, "token", "list", "--workspace", ws, "--nats", "--json").stdout)["producers"]
    assert listed["user"] == creds["user"] and listed["revoked_at"]
    again = cli(stack.servers, "token", "revoke", "--workspace", ws, "--nats", creds["user"])
    assert again.returncode == 0 and "was already revoked, at" in again.stdout, again.stdout + again.stderr
    unknown = cli(stack.servers, "token", "revoke", "--workspace", ws, "--nats", "producer-nobody")
    assert unknown.returncode == 1 and "no NATS producer" in unknown.stderr
