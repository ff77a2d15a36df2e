"""The services' NATS connection (``services.nats_io.connect``)."""

from __future__ import annotations

import asyncio

from structlog.testing import capture_logs

from services.nats_io import connect


def test_closing_the_connection_on_purpose_warns_of_nothing(servers):
    """nats-py reports its own close as a disconnection: `up` printed a `nats.disconnected` warning
    at every start and one per service at every stop. Only a connection lost is a warning."""

    async def run() -> None:
        nc = await connect(servers.nats_url, "test-close")
        await nc.drain()

    with capture_logs() as logged:
        asyncio.run(run())
    assert [entry for entry in logged if entry["log_level"] == "warning"] == []
