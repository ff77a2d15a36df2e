"""A webhook attempt's timeout_seconds bounds the whole request, not each read (httpx's own)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from services import webhooks


async def test_a_receiver_that_trickles_its_answer_is_cut_at_the_timeout():
    """An outside audit's receiver answered at once, then sent its body a byte every few seconds:
    each read came within httpx's timeout, so the delivery stayed open as long as it liked."""

    # The receiver ends once the test has its answer: cancelled by the loop's close instead, its
    # task made Python 3.11's asyncio log a CancelledError traceback after the run's summary.
    test_done, receiver_done = asyncio.Event(), asyncio.Event()

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        for _ in range(100):
            if test_done.is_set():
                break
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.2)
        writer.close()
        receiver_done.set()

    server = await asyncio.start_server(trickle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    hook = webhooks.Webhook("acme", f"http://127.0.0.1:{port}/hook", "whsec_x", 1, (1.0,), 0.5)
    try:
        async with httpx.AsyncClient() as client:
            with pytest.raises(webhooks.DeliveryFailed, match="timed out after 0.5s"):
                await webhooks.post(client, hook, b"{}", item_id="fu_1", event_type="touchline.followup.requested")
    finally:
        test_done.set()
        await asyncio.wait_for(receiver_done.wait(), 5)
        server.close()
