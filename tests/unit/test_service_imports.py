"""The projector, rules worker and dispatcher run from ``services.runtime.serve`` like the API, but
need none of its HTTP side: importing Litestar and uvicorn cost each of them about 0.3 s of start
and 9 MB (docs/performance.md, item 37)."""

from __future__ import annotations

import subprocess
import sys


def test_the_services_module_leaves_the_http_side_to_the_api():
    probe = ("import sys, services.runtime.serve;"
             " print(sorted(m for m in ('litestar', 'uvicorn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
