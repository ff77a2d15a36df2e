"""Child processes: one `touchline serve KIND`, started, stopped gently, or killed.

Used by `touchline up`, the bench and the tests, so that all three run services the same way.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil

from services.runtime.embedded import die_with_parent, kill_process, stop_process


class ServiceProcess:
    def __init__(self, kind: str, env: dict[str, str], log_path: Path | None = None) -> None:
        self.kind = kind
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self.started_at = 0.0

    def start(self) -> "ServiceProcess":
        output = open(self.log_path, "ab") if self.log_path else None
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services.cli.main", "serve", self.kind],
            env=self.env,
            stdout=output,
            stderr=subprocess.STDOUT if output else None,
            # A session of its own, as nats-server and every PostgreSQL backend have: with the
            # kernel's autogroup scheduling (on by default) a session is one scheduling group, so
            # services that shared their starter's session split one group's CPU share between
            # them (and with whatever else that session ran, such as a rebuild), against a whole
            # share for each PostgreSQL backend. Contact reads then stalled for up to 1.4 s
            # after a rebuild (docs/performance.md, item 33). Ctrl-C reaches the starter alone,
            # which stops its children (`up`, the bench and the tests all do).
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        self.started_at = time.monotonic()
        return self

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def exited(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def stop(self, timeout: float = 15.0) -> None:
        stop_process(self.process, timeout)

    def kill(self) -> None:
        kill_process(self.process)


def api_workers(env: dict[str, str], count: int, log_dir: Path | None = None) -> list[ServiceProcess]:
    """``count`` API processes (not started) listening on one port; the first also runs the NATS
    way in."""
    from services.runtime.serve import API_WORKER_ENV

    return [
        ServiceProcess("api", {**env, API_WORKER_ENV: str(index)}, log_dir / f"api-{index}.log" if log_dir else None)
        for index in range(count)
    ]


def listens_on(pid: int | None, port: int) -> bool:
    """Whether the process holds a listening TCP socket on ``port``. An API worker that does not
    yet gets no connection: the kernel spreads them only over the sockets already open."""
    if pid is None:
        return False
    try:
        sockets = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.Error:
        return False
    return any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in sockets)
