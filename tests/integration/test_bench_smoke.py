"""A short run of `touchline bench` so it cannot rot. Timings are never asserted, only the shape."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

FIGURES = ("ingest_http_eps", "ingest_nats_eps", "raw_publish_eps", "project_eps", "rebuild_eps")
QUERIES = ("contact", "funnel", "touches", "goals")


@pytest.mark.slow
def test_bench_smoke_prints_one_json_object_with_every_figure() -> None:
    # A short temporary directory of its own: PostgreSQL's socket path must stay under 108 bytes.
    tmp_path = Path(tempfile.mkdtemp(prefix="tl-bench-"))
    done = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "bench", "--events", "3000", "--json"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    for key in FIGURES:
        assert isinstance(result[key], (int, float)) and result[key] > 0, key
    for key in ("query_p99_ms", "query_rps", "query_max_ms"):
        assert set(result[key]) == set(QUERIES)
        assert all(value > 0 for value in result[key].values()), result[key]
    for kind in QUERIES:  # the longest answer, beside the p99 that one stall can set
        assert result["query_max_ms"][kind] >= result["details"]["queries"][kind]["p50_ms"], kind
    assert result["rule_p99_ms"] is None or result["rule_p99_ms"] > 0
    assert result["events"] == 3000
    assert result["contacts"] > 0
    assert result["load_generator"]
    assert {"api-0", "projector", "nats-server"} <= set(result["peak_rss_mb"])
    assert len([kind for kind in result["peak_rss_mb"] if kind.startswith("api-")]) == result["api_workers"]
    # Every event sent was stored and projected, and the rebuild read them all back.
    details = result["details"]
    assert details["ingest_http"]["events"] + details["ingest_nats"]["events"] == 3000
    assert details["rebuild"]["events"] == details["project"]["events"]
    # Nothing of its temporary stack is left behind once it has exited.
    assert list(tmp_path.iterdir()) == []
    tmp_path.rmdir()
