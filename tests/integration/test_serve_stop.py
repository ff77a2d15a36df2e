"""A service asked to stop while it is still starting goes, even if its NATS never answers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from services.runtime.embedded import free_port


def test_an_api_worker_stopped_while_waiting_for_nats_leaves(tmp_path):
    """uvicorn only notes a SIGTERM during start-up, and start-up waits for ever for a NATS that
    is gone (the one of an `up` killed a moment before): the worker stayed, retrying, and its
    socket kept taking connections on the port."""
    log = tmp_path / "api.log"
    env = {**os.environ,
           "TOUCHLINE_NATS_URL": f"nats://127.0.0.1:{free_port()}",  # nothing listens there
           "TOUCHLINE_DATABASE_URL": "postgresql://touchline@127.0.0.1:1/touchline",
           "TOUCHLINE_HTTP": f"127.0.0.1:{free_port()}"}
    worker = subprocess.Popen([sys.executable, "-m", "services.cli.main", "serve", "api"], env=env,
                              stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while b"nats.error" not in log.read_bytes():  # started, and retrying its NATS
            assert worker.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(10) == 0
        assert b"api.stopped_while_starting" in log.read_bytes()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
