"""The log's all-or-nothing append against a real nats-server: what is stored, and what a
refusal says."""

from __future__ import annotations

import asyncio
import contextlib
import secrets

import pytest
from nats.js.api import StorageType, StreamConfig

from services.atomic_publish import BATCH_ID_HEADER, AtomicBatchError, publish_atomic
from services.nats_io import connect_client


def _messages(prefix: str, count: int, ids: list[str] | None = None):
    ids = ids or [secrets.token_hex(8) for _ in range(count)]
    return [(f"{prefix}.m", f"body {n}".encode(), {"Nats-Msg-Id": ids[n]}) for n in range(count)]


@contextlib.asynccontextmanager
async def _scratch(servers, *, allow_atomic: bool | None = True):
    """A connection and a stream of this test's own (none with ``allow_atomic=None``); after, no
    reply is still awaited on the connection."""
    nc = await connect_client(servers.nats_url)
    name = f"ATOMIC_{secrets.token_hex(4).upper()}"
    prefix = f"atomictest.{name.lower()}"
    try:
        if allow_atomic is not None:
            await nc.jetstream().add_stream(StreamConfig(name=name, subjects=[f"{prefix}.>"], storage=StorageType.MEMORY,
                                                         allow_atomic=allow_atomic, duplicate_window=60))
        yield nc, name, prefix
        assert not nc._resp_map  # every reply's future let go
    finally:
        await nc.close()


async def _stored(nc, name: str) -> int:
    return (await nc.jetstream().stream_info(name)).state.messages


def test_a_batch_is_stored_whole_in_order_with_contiguous_sequences(servers):
    async def scenario():
        async with _scratch(servers) as (nc, name, prefix):
            batches = [_messages(prefix, size) for size in (1, 2, 500, 1000, 3, 700)]
            # Concurrent batches on one connection, as the API's requests share one.
            results = await asyncio.gather(*(publish_atomic(nc, batch, stream=name) for batch in batches))
            js = nc.jetstream()
            for batch, seqs in zip(batches, results):
                assert seqs == list(range(seqs[0], seqs[0] + len(batch)))
                first, last = await js.get_msg(name, seqs[0]), await js.get_msg(name, seqs[-1])
                assert (first.data, last.data) == (batch[0][1], batch[-1][1])
                assert first.headers[BATCH_ID_HEADER] == last.headers[BATCH_ID_HEADER]
            assert await _stored(nc, name) == sum(map(len, batches))
    asyncio.run(scenario())


@pytest.mark.parametrize("size", [1, 2, 50])
def test_a_refusal_says_the_servers_reason_and_stores_nothing(servers, size):
    async def scenario():
        async with _scratch(servers, allow_atomic=False) as (nc, name, prefix):
            with pytest.raises(AtomicBatchError) as refused:
                await publish_atomic(nc, _messages(prefix, size), stream=name)
            # The stream's own reason (atomic publish disabled), not "incomplete batch" (10176).
            assert refused.value.err_code == 10174 and not refused.value.maybe_committed
            assert await _stored(nc, name) == 0
    asyncio.run(scenario())


@pytest.mark.parametrize("size", [1, 40])
def test_no_stream_on_the_subject_is_named(servers, size):
    async def scenario():
        async with _scratch(servers, allow_atomic=None) as (nc, _, _):
            with pytest.raises(AtomicBatchError, match="no stream answered on 'atomictest.nobody.m'") as refused:
                await publish_atomic(nc, _messages("atomictest.nobody", size), stream="NOBODY")
            assert not refused.value.maybe_committed
    asyncio.run(scenario())


def test_a_repeated_dedupe_id_refuses_the_whole_batch(servers):
    async def scenario():
        async with _scratch(servers) as (nc, name, prefix):
            ids = [secrets.token_hex(8) for _ in range(10)]
            await publish_atomic(nc, _messages(prefix, 10, ids), stream=name)
            again = [secrets.token_hex(8) for _ in range(9)] + [ids[3]]
            with pytest.raises(AtomicBatchError) as refused:
                await publish_atomic(nc, _messages(prefix, 10, again), stream=name)
            assert refused.value.err_code == 10201
            assert await _stored(nc, name) == 10
    asyncio.run(scenario())


def test_too_many_batches_in_flight_is_named_so_the_ingestor_can_go_one_by_one(servers):
    # The server holds 50 uncommitted batches a stream; the 51st is refused on its first message,
    # and its commit then only says "incomplete" (10176), which the ingestor answers with a 503.
    async def scenario():
        async with _scratch(servers) as (nc, name, prefix):
            batches = [_messages(prefix, 1000) for _ in range(150)]
            results = await asyncio.gather(*(publish_atomic(nc, batch, stream=name) for batch in batches),
                                           return_exceptions=True)
            refused = [r for r in results if isinstance(r, AtomicBatchError)]
            assert refused and {r.err_code for r in refused} == {10210}, {str(r) for r in refused}
            assert all(isinstance(r, list) for r in results if not isinstance(r, AtomicBatchError))
            assert await _stored(nc, name) == 1000 * (len(batches) - len(refused))
    asyncio.run(scenario())
