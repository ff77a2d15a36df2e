"""Every line a service writes is one JSON object, the libraries' own warnings included (asyncpg's
pool printed bare tracebacks among the JSON lines: an outside audit on an external PostgreSQL)."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def test_a_library_warning_with_a_traceback_is_one_json_line():
    code = (
        "import logging\n"
        "from services import logs\n"
        "logs.configure('projector')\n"
        "try:\n    1 / 0\n"
        "except ZeroDivisionError:\n"
        "    logging.getLogger('asyncpg.pool').warning('Failed to restore the pool connection floor', exc_info=True)\n"
        "logging.getLogger('asyncpg.pool').info('below the level: not written')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    [line] = done.stderr.splitlines()
    record = json.loads(line)
    assert (record["event"], record["logger"], record["level"]) == (
        "Failed to restore the pool connection floor", "asyncpg.pool", "warning")
    assert "ZeroDivisionError" in record["exception"]
    assert record["service"] == "projector"


def test_every_line_names_its_service_in_every_task():
    """configure() returned a logger bound with the service that every caller dropped: no line
    said which service wrote it."""
    code = (
        "import asyncio, structlog\n"
        "from services import logs\n"
        "logs.configure('rules')\n"
        "async def task():\n    structlog.get_logger().info('in.a.task', seq=5)\n"
        "async def main():\n    await asyncio.create_task(task())\n"
        "asyncio.run(main())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    [record] = [json.loads(line) for line in done.stderr.splitlines()]
    assert (record["event"], record["service"], record["seq"]) == ("in.a.task", "rules", 5)


def test_asyncios_tls_eof_warning_is_not_written():
    """Every CLI command against a TLS cluster ended with it (an outside audit): nothing to act on."""
    code = (
        "import logging\n"
        "from services import logs\n"
        "logs.configure('cli')\n"
        "logging.getLogger('asyncio').warning('returning true from eof_received() has no effect when using ssl')\n"
        "logging.getLogger('asyncio').warning('Unclosed client session')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert [json.loads(line)["event"] for line in done.stderr.splitlines()] == ["Unclosed client session"]


def test_services_sharing_one_stderr_write_whole_lines(tmp_path):
    """`up`'s services share its stderr. print() wrote a line and its newline apart, and lines from
    two processes ran into one (`…}{…`: 13,947 of 80,000 in a trial of four processes)."""
    code = (
        "import structlog\n"
        "from services import logs\n"
        "logs.configure('rules')\n"
        "for n in range(5000):\n    structlog.get_logger().info('line', n=n, pad='p' * 100)\n"
    )
    shared = tmp_path / "stderr.log"
    with shared.open("ab") as stderr:
        writers = [subprocess.Popen([sys.executable, "-c", code], stderr=stderr) for _ in range(3)]
        for writer in writers:
            assert writer.wait(timeout=60) == 0
    lines = shared.read_text().splitlines()
    assert len(lines) == 15000
    assert all(json.loads(line)["event"] == "line" for line in lines)


def test_a_line_that_cannot_be_written_is_dropped_and_counted_not_raised(monkeypatch):
    """`touchline up > up.log` on a disk that filled: the failed write of a log line stopped `up`,
    and with it the whole stack (an outside audit). /dev/full fails every write with ENOSPC."""
    code = (
        "import logging, structlog\n"
        "from services import logs\n"
        "logs.configure('up')\n"
        "structlog.get_logger().info('first')\n"
        "logging.getLogger('asyncpg.pool').warning('second')\n"
        "print('still here', flush=True)\n"
    )
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=full, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, "still here\n")

    from services import logs

    read, write = os.pipe()
    failing = iter([True, True, True])  # the first three writes fail: the disk is full
    real_write = os.write

    def filling(fd: int, data: bytes) -> int:
        if next(failing, False):
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(logs.os, "write", filling)
    writer = logs.DroppingWriter(write, "up")
    for line in ("a\n", "b\n", "c\n", "d\n", "e\n"):
        writer.write(line)
    os.close(write)
    with os.fdopen(read) as out:
        notice, *lines = out.read().splitlines()
    assert lines == ["d", "e"]  # once each: nothing that failed comes out later
    assert {key: json.loads(notice)[key] for key in ("event", "lines", "service")} == {
        "event": "logs.dropped", "lines": 3, "service": "up"}
