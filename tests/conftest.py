"""Shared fixtures: real callroom servers (subprocesses) and unique agent names.

Servers that tests only talk to are session-scoped (one start per run); tests that stop,
kill or restart a server get their own from `server_factory`. A failing test gets the log of
every server it used attached to its report.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.integration.server import CONFORMANCE_APP, FEATURES_APP, ServerProcess

ServerFactory = Callable[..., ServerProcess]

# Small enough that tests can exceed it cheaply; uvicorn itself allows 1 KiB more.
MAX_MESSAGE_BYTES = 4096


@pytest.fixture(scope="session")
def conformance_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """examples/conformance.py (`Counter`), shared by every test that only talks to it."""
    base = tmp_path_factory.mktemp("conformance")
    with ServerProcess(CONFORMANCE_APP, base / "data") as srv:
        yield srv


@pytest.fixture(scope="session")
def features_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """tests/integration/apps/features.py with a small message limit."""
    base = tmp_path_factory.mktemp("features")
    env = {"CALLROOM_MAX_MESSAGE_BYTES": str(MAX_MESSAGE_BYTES)}
    with ServerProcess(FEATURES_APP, base / "data", env=env) as srv:
        yield srv


@pytest.fixture
def server_factory(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ServerFactory]:
    """Start private servers (to stop, kill or restart); all are closed at teardown."""
    made: list[ServerProcess] = []
    request.node._callroom_servers = made  # read by the report hook below

    def make(
        app: Path = FEATURES_APP,
        *,
        env: Mapping[str, str] | None = None,
        data_dir: Path | None = None,
        start: bool = True,
    ) -> ServerProcess:
        srv = ServerProcess(app, data_dir or tmp_path / f"data{len(made)}", env=env)
        made.append(srv)
        if start:
            srv.start()
        return srv

    yield make
    for srv in made:
        srv.close()


@pytest.fixture
def agent_name(request: pytest.FixtureRequest) -> str:
    """A fresh, valid agent name per test so tests sharing a server never share an agent."""
    base = re.sub(r"[^A-Za-z0-9_-]", "-", request.node.name)[:80].strip("-") or "t"
    return f"{base}-{uuid.uuid4().hex[:8]}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        funcargs: dict[str, Any] = getattr(item, "funcargs", {})
        for name, value in funcargs.items():
            if isinstance(value, ServerProcess):
                report.sections.append((f"server log ({name})", value.log()))
        for value in getattr(item, "_callroom_servers", []):
            report.sections.append(("server log (factory)", value.log()))
