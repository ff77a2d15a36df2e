"""structlog: JSON lines in production, a readable console when on a terminal."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
from typing import TextIO

import structlog


class DroppingWriter:
    """Where log lines go: a line that cannot be written (stderr sent to a file on a disk that is
    full) is dropped and counted, not raised. Raised, it stopped `touchline up` and with it the
    whole stack, ingest included (an outside audit filled the disk under `up > up.log`). The next
    line that can be written is preceded by one saying how many were lost. Lines go straight to the
    file descriptor, each in one write: through Python's buffer, a line that failed stayed in it and
    came out later, with every notice that failed too (a review)."""

    def __init__(self, fd: int, service: str) -> None:
        self.fd = fd
        self.service = service
        self.dropped = 0
        self.cut = False  # a line was written in part: the next starts on a line of its own

    def write(self, text: str) -> None:
        data = text.encode("utf-8", "backslashreplace")
        if self.dropped:
            notice = {"event": "logs.dropped", "lines": self.dropped, "service": self.service, "level": "warning",
                      "timestamp": dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")}
            data = json.dumps(notice).encode() + b"\n" + data
        if self.cut:
            data = b"\n" + data
        written = 0
        try:
            while written < len(data):
                written += os.write(self.fd, data[written:])
        except OSError:
            self.dropped += 1
            self.cut = 0 < written
            return
        self.dropped, self.cut = 0, False

    def flush(self) -> None:
        """Nothing to flush: ``write`` writes each line whole, or drops it."""


def configure(service: str) -> None:
    """Every line of this process, the libraries' included, names its ``service``."""
    renderer = (
        structlog.dev.ConsoleRenderer() if sys.stderr.isatty() else structlog.processors.JSONRenderer()
    )
    stamped = [structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso", utc=True)]
    try:
        output: DroppingWriter | TextIO = DroppingWriter(sys.stderr.fileno(), service)
    except (AttributeError, OSError, ValueError):  # a stderr with no descriptor (replaced in-process)
        output = sys.stderr
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, *stamped, structlog.processors.format_exc_info, renderer],
        # One write a line (print() writes the line and its newline apart): the services of `up`
        # share one stderr, and two lines could run into one (an outside audit found four).
        logger_factory=structlog.WriteLoggerFactory(file=output),  # type: ignore[arg-type]
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        cache_logger_on_first_use=True,
    )
    # The libraries' own warnings (asyncpg's pool, asyncio) as the same lines, not bare tracebacks
    # among the JSON: the standard library's records go through the same renderer.
    handler = logging.StreamHandler(output)  # type: ignore[arg-type]
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.contextvars.merge_contextvars, structlog.stdlib.add_logger_name, *stamped],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    ))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("asyncio").addFilter(_without_tls_eof_noise)
    if service == "cli":
        # A command says in one line that PostgreSQL went away (``attach.connection_lost``); asyncpg's
        # pool meanwhile logged a traceback each time it failed to reconnect.
        logging.getLogger("asyncpg.pool").setLevel(logging.ERROR)
    # In the context every task of the process starts from (each copies it when it is created).
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(service=service)


def _without_tls_eof_noise(record: logging.LogRecord) -> bool:
    """asyncio warns "returning true from eof_received() has no effect when using ssl" whenever
    a TLS connection of nats-py's ends (every CLI command against a TLS cluster): nothing to act on."""
    return "eof_received() has no effect" not in record.getMessage()
