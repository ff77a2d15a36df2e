from __future__ import annotations

from pathlib import Path

import pytest
import structlog

from tests.support import Servers, Stack

# Projectors and replays run in the tests' own process log through structlog's defaults, whose
# rich traceback shows every local variable of every frame: a second or two an event on this
# machine, so a projector parking sixty events outran the test's timeout under load. Plain
# tracebacks say what failed just as well.
structlog.configure(processors=[*structlog.get_config()["processors"][:-1],
                                structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)])


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory):
    root = Path(tmp_path_factory.mktemp("servers"))
    started = Servers(root)
    yield started
    started.stop()


@pytest.fixture(scope="session")
def stack(servers: Servers, tmp_path_factory: pytest.TempPathFactory):
    running = Stack(servers, Path(tmp_path_factory.mktemp("logs")))
    yield running
    running.stop()
