from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import Servers, Stack


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
