"""Touchline on a NATS cluster (three nodes, as infra/nats/production.conf lays out): a service's
start keeps the replicas an operator gave the streams, and a client whose node dies reconnects to
another with its credentials (an outside audit found both broken: every start scaled the streams
back to one replica, and the dispatcher stopped for good after a node failure)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import subprocess
import time

import pytest

from events.log import LOG_STREAM, log_subject
from services.nats_io import DEFAULT_STREAMS, connect, ensure_streams
from services.runtime.embedded import free_port, kill_process, nats_server_binary, stop_process

PASSWORD = "p@ss/w:rd"  # written percent-encoded in the URL, as a password with these must be


@contextlib.contextmanager
def cluster(root, nodes: int = 3):
    """(client ports, processes) of a JetStream cluster on loopback, with one service user."""
    clients = [free_port() for _ in range(nodes)]
    routes = [free_port() for _ in range(nodes)]
    processes = []
    try:
        for n in range(nodes):
            store = root / f"n{n}"
            store.mkdir()
            peers = ", ".join(f"nats-route://127.0.0.1:{port}" for i, port in enumerate(routes) if i != n)
            config = store / "nats.conf"
            config.write_text(
                f'server_name: n{n}\nlisten: 127.0.0.1:{clients[n]}\n'
                f'jetstream {{ store_dir: "{store}" }}\n'
                f'cluster {{ name: touchline, listen: 127.0.0.1:{routes[n]}, routes: [{peers}] }}\n'
                f'authorization {{ user: svc, password: "{PASSWORD}" }}\n'
            )
            processes.append(subprocess.Popen([nats_server_binary(), "-c", str(config)], stdout=subprocess.DEVNULL,
                                              stderr=(store / "nats.log").open("w")))
        yield clients, processes
    finally:
        for process in processes:
            stop_process(process)


def url_of(port: int) -> str:
    return f"nats://svc:p%40ss%2Fw%3Ard@127.0.0.1:{port}"


async def jetstream_ready(js, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            await js.account_info()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def replicated(js, stream: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        cluster_info = (await js.stream_info(stream)).cluster
        followers = cluster_info.replicas or [] if cluster_info else []
        if cluster_info and cluster_info.leader and len(followers) == 2 and all(peer.current for peer in followers):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{stream} not replicated: {cluster_info}")
        await asyncio.sleep(0.2)


async def replicas(js) -> dict[str, int]:
    return {config.name: (await js.stream_info(config.name)).config.num_replicas for config in DEFAULT_STREAMS}


@pytest.mark.asyncio
async def test_a_start_keeps_the_streams_replicas_and_a_client_outlives_its_node(tmp_path):
    with cluster(tmp_path) as (ports, processes):
        nc = await connect(url_of(ports[0]), name="touchline-test")  # one seed: the others are announced
        try:
            js = nc.jetstream(timeout=10)
            await jetstream_ready(js)
            await ensure_streams(js)
            assert set((await replicas(js)).values()) == {1}

            # The operator raises the log to R3; the next service start must not undo it.
            info = await js.stream_info(LOG_STREAM)
            await js.update_stream(dataclasses.replace(info.config, num_replicas=3))
            await ensure_streams(js)
            assert (await replicas(js))[LOG_STREAM] == 3
            # TOUCHLINE_NATS_REPLICAS sets every stream.
            await ensure_streams(js, replicas=3)
            assert set((await replicas(js)).values()) == {3}

            # The node this client is connected to dies (once the log's new replicas have caught up):
            # it reconnects to one the cluster announced, with the credentials it was given, and the
            # log takes writes again.
            await replicated(js, LOG_STREAM)
            kill_process(processes[0])
            deadline = time.monotonic() + 30
            while True:
                try:
                    ack = await js.publish(log_subject("acme"), b"{}", stream=LOG_STREAM, timeout=2)
                    break
                except Exception as err:
                    if time.monotonic() > deadline:
                        raise AssertionError(f"no write after the node died: {err!r}; connected: {nc.is_connected}")
                    await asyncio.sleep(0.3)
            assert ack.seq >= 1 and nc.connected_url.port in ports[1:]
        finally:
            await nc.close()


@pytest.mark.asyncio
async def test_replicas_a_single_server_cannot_give_are_one_line(tmp_path):
    from services.runtime.embedded import EmbeddedNats

    nats_server = EmbeddedNats(tmp_path)
    nc = await connect(nats_server.start(), name="touchline-test")
    try:
        with pytest.raises(SystemExit, match="TOUCHLINE_NATS_REPLICAS=3: NATS refused it for stream TOUCHLINE_LOG"):
            await ensure_streams(nc.jetstream(), replicas=3)
    finally:
        await nc.close()
        nats_server.stop()
