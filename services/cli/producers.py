"""`touchline token create --workspace W --scope ingest --nats`: credentials for a NATS producer.

Embedded NATS (no TOUCHLINE_NATS_URL): the producer is added to the server's configuration under
the data dir and the running server reloads it; the credentials work as soon as this prints.
External NATS: its operator manages who may connect, so nothing is changed; this prints the
credentials together with the ``server_config`` entry to add to the cluster's producers
(infra/nats/production.conf) and reload, and says so on stderr.
"""

from __future__ import annotations

import asyncio
import json
import sys

from services.runtime import nats_auth
from services.settings import Settings


def _answer(url: str | None, producer: nats_auth.Producer, password: str, **extra: str) -> str:
    from services.nats_io import nats_servers

    return json.dumps(
        {
            "workspace": producer.workspace,
            # Both: the nats CLI takes the comma-separated list a cluster's URL is, nats-py's
            # connect(servers=...) a list (given the list as one string, it fails on the comma).
            "url": url,
            "servers": nats_servers(url) if url else [],
            "user": producer.user,
            "password": password,
            "inbox_prefix": producer.inbox_prefix,
            "subject": f"touchline.in.{producer.workspace}",
            **extra,
        },
        indent=2,
    )


def create_producer(settings: Settings, workspace: str) -> int:
    """Print the producer's credentials as JSON (for a workspace the caller found); the exit code."""
    from services.cli.attach import embedded_nats_root

    if settings.nats_url:
        producer, password = nats_auth.new_producer(workspace)
        print(_answer(nats_auth.without_credentials(settings.nats_url), producer, password,
                      server_config=producer.config_entry()))
        print(
            "TOUCHLINE_NATS_URL names an external NATS, whose operator manages credentials: add server_config"
            " to the users of the PRODUCERS account on every server of the cluster (see"
            " infra/nats/production.conf) and reload each one (nats-server --signal reload=PID, its process"
            " id, on each host); until then these credentials are refused.",
            file=sys.stderr,
        )
        return 0
    root = embedded_nats_root(settings)  # never a configuration for a NATS that `up` never ran
    producer, password = nats_auth.add_producer(root, workspace)
    address = root / "address"
    url = address.read_text().strip() if address.exists() else None
    if url and nats_auth.reload_running_server(root):
        if not asyncio.run(nats_auth.wait_until_accepted(url, producer.user, password)):
            print(f"the embedded NATS did not take the new user; see {root / 'nats.log'}", file=sys.stderr)
            return 1
    else:
        print("no embedded NATS runs on this data dir: the credentials work from the next `touchline up`",
              file=sys.stderr)
    print(_answer(url, producer, password))
    return 0


def embedded_producers(settings: Settings, workspace: str) -> list[nats_auth.Producer]:
    """The workspace's producers on the embedded NATS, revoked ones too (an external NATS's operator
    keeps its own)."""
    from services.cli.attach import embedded_nats_root, refuse

    if settings.nats_url:
        refuse("TOUCHLINE_NATS_URL names an external NATS, whose producers its operator keeps (the users of the"
               " PRODUCERS account in its servers' configuration): Touchline has no list of them")
    return [p for p in nats_auth.load_producers(embedded_nats_root(settings)) if p.workspace == workspace]


EXTERNAL_PRODUCERS_REVOKE = (
    "TOUCHLINE_NATS_URL names an external NATS, whose producers its operator keeps: remove the user's entry"
    " from the PRODUCERS account on every server of the cluster and reload each (nats-server --signal reload=PID)"
)


def revoke_producer(settings: Settings, workspace: str, user: str) -> tuple[nats_auth.Producer, bool]:
    """Take the producer out of the embedded NATS's configuration and reload the server, which
    closes the producer's connections: its record, and whether it had been revoked before."""
    from services.cli.attach import embedded_nats_root, refuse

    if settings.nats_url:
        refuse(EXTERNAL_PRODUCERS_REVOKE)
    root = embedded_nats_root(settings)
    record, before = nats_auth.revoke_producer(root, workspace, user)
    if record is None:
        refuse(f"no NATS producer {user!r} in workspace {workspace!r}", 1)
    if not before and not nats_auth.reload_running_server(root):
        print("no embedded NATS runs on this data dir: the next `touchline up` refuses the producer", file=sys.stderr)
    return record, before
