"""Fixtures of the storage suite: every test taking `backend_url` runs once per backend —
the embedded SQLite default and Postgres (a throwaway server started for the session, a
fresh database per test)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.storage.pgserver import PostgresServer, Unavailable


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    try:
        server = PostgresServer().start()
    except Unavailable as exc:
        pytest.skip(f"Postgres unavailable: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh database of the session's Postgres server."""
    return postgres_server.new_database()


@pytest.fixture(params=["sqlite", "postgres"])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A storage URL as `CALLROOM_STORAGE` takes it, one per backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'data'}"
    url: str = request.getfixturevalue("postgres_url")
    return url
