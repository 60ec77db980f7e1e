"""Cluster fixtures: the session's throwaway Postgres (shared with the storage suite's helper)
and clusters of subprocess hosts and gateways whose logs are attached to failing tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.procs import Cluster
from tests.storage.conftest import postgres_server, postgres_url

__all__ = ["postgres_server", "postgres_url"]


@pytest.fixture
def cluster(postgres_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    c = Cluster(postgres_url, tmp_path)
    request.node._callroom_cluster = c
    try:
        yield c
    finally:
        c.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[object]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    c = getattr(item, "_callroom_cluster", None)
    if report.failed and c is not None:
        report.sections.append(("cluster logs", c.logs()))
