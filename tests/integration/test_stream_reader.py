"""The ordered consumer on a real server: every message once and in order, from any start, through
flow control, and again after its consumer vanished under it."""

from __future__ import annotations

import asyncio
import uuid

from nats.js.api import StorageType, StreamConfig

from services.nats_io import connect_client
from services.stream_reader import OrderedConsumer


async def scratch_stream(js, count: int) -> tuple[str, str]:
    tag = uuid.uuid4().hex[:8]
    name, subject = f"TEST_READER_{tag}", f"reader{tag}.>"
    await js.add_stream(StreamConfig(name=name, subjects=[subject], storage=StorageType.FILE))
    for start in range(0, count, 1000):
        acks = [await js.publish_async(f"reader{tag}.ws{n % 3}", b"%d" % n + b"x" * 300,
                                       headers={"Touchline-Received-At": f"t{n}", "Nats-Msg-Id": f"m{n}"})
                for n in range(start, min(count, start + 1000))]
        await asyncio.gather(*acks)
    return name, subject


async def read_all(reader: OrderedConsumer, until: int, batch: int, within: float = 20.0) -> list:
    out: list = []
    deadline = asyncio.get_running_loop().time() + within
    while not out or out[-1].seq < until:
        assert asyncio.get_running_loop().time() < deadline, f"stopped after {len(out)} messages"
        out += await reader.next_batch(batch, 0.5)
    return out


def test_reads_everything_in_order_from_any_start(servers) -> None:
    async def main() -> None:
        nc = await connect_client(servers.nats_url)
        js = nc.jetstream()
        stream, subject = await scratch_stream(js, 30_000)  # several flow-control windows
        try:
            reader = await OrderedConsumer(js, stream, subject, 1).start()
            got = await read_all(reader, 30_000, 4_000)
            await reader.unsubscribe()
            assert [m.seq for m in got] == list(range(1, 30_001))
            assert got[7].data.startswith(b"7x") and got[7].headers.get("Touchline-Received-At") == "t7"
            assert got[7].subject.endswith(".ws1")

            only = subject.replace(">", "ws2")
            reader = await OrderedConsumer(js, stream, only, 25_001).start()
            got = await read_all(reader, 29_999, 500)
            await reader.unsubscribe()
            assert [m.seq for m in got] == [n + 1 for n in range(25_000, 30_000) if n % 3 == 2]
        finally:
            await js.delete_stream(stream)
            await nc.close()

    asyncio.run(main())


def test_recreated_when_its_consumer_is_deleted(servers) -> None:
    async def main() -> None:
        nc = await connect_client(servers.nats_url)
        js = nc.jetstream()
        stream, subject = await scratch_stream(js, 3_000)
        try:
            reader = await OrderedConsumer(js, stream, subject, 1, heartbeat=0.2).start()
            first: list = []
            for _ in range(50):  # a batch is what has arrived: the first hundred may come in parts
                first += await reader.next_batch(100 - len(first), 1.0)
                if len(first) == 100:
                    break
            assert [m.seq for m in first] == list(range(1, 101))
            await js.delete_consumer(stream, reader._consumer)
            await asyncio.sleep(0.2)
            reader._items.clear()  # what the deleted consumer had sent ahead is lost, as on a broken link
            rest = await read_all(reader, 3_000, 1_000)
            assert [m.seq for m in first + rest] == list(range(1, 3_001))
            await reader.unsubscribe()
        finally:
            await js.delete_stream(stream)
            await nc.close()

    asyncio.run(main())


def test_says_when_it_has_handed_out_all_the_stream_held(servers) -> None:
    """The rules worker's goal tick waits until its reader has caught up; silence alone never came
    while a steady trickle of events went on (the last re-check audit)."""
    async def main() -> None:
        nc = await connect_client(servers.nats_url)
        js = nc.jetstream()
        stream, subject = await scratch_stream(js, 10)
        try:
            reader = await OrderedConsumer(js, stream, subject, 1).start()
            assert not reader.drained
            first = await read_all(reader, 4, 4)
            assert len(first) == 4 and reader.pending == 6 and not reader.drained
            rest = await read_all(reader, 10, 100)
            assert [m.seq for m in rest] == list(range(5, 11)) and reader.pending == 0 and reader.drained
            await js.publish(subject.replace(">", "ws0"), b"one more")
            assert [m.seq for m in await read_all(reader, 11, 100)] == [11] and reader.drained
            await reader.unsubscribe()
        finally:
            await js.delete_stream(stream)
            await nc.close()

    asyncio.run(main())
