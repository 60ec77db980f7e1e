"""`/metrics` exports the per-stage voice histograms in Prometheus text format."""

from __future__ import annotations

import urllib.request

from tests.integration.server import ServerProcess


def test_metrics_endpoint_serves_prometheus_text(conformance_server: ServerProcess) -> None:
    with urllib.request.urlopen(f"{conformance_server.http_url}/metrics", timeout=10) as resp:
        body = resp.read().decode()
        assert resp.status == 200
        assert resp.headers["content-type"].startswith("text/plain")
    assert "callroom_voice_stage_seconds" in body
