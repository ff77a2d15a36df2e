"""The embedded NATS comes back on its port, so the URL `token create --nats` gave a producer stays valid."""

from __future__ import annotations

import socket

from services.runtime.embedded import EmbeddedNats


def test_a_restart_keeps_the_port_while_the_last_runs_connections_linger(tmp_path):
    """Connections the server closed sit in TIME_WAIT on its port for a minute; the free-port probe
    bound without SO_REUSEADDR took that for taken, and every quick restart moved to a new port."""
    nats = EmbeddedNats(tmp_path)
    nats.start()
    port = nats.port
    try:
        clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(4)]
        for client in clients:
            assert client.recv(4096).startswith(b"INFO")
        nats.stop()  # the server closes them first: TIME_WAIT is on its side
        for client in clients:
            client.recv(4096)
            client.close()
        nats.start()
        assert nats.port == port
    finally:
        nats.stop()
