"""Long-running processes run on uvloop (services.runtime.loop): uvicorn's own loop setting
does not apply when it is served inside a running loop, as `touchline serve` does."""

from __future__ import annotations

import asyncio
import sys

import pytest

from services.runtime import loop


@pytest.mark.skipif(sys.platform == "win32", reason="uvloop is not installed on Windows")
def test_services_run_on_uvloop():
    async def which() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert loop.run(which()).startswith("uvloop")
