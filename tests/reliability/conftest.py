"""Helpers for the reliability tests: the app, process figures, read-only database access,
and a summary of the figures (inputs fuzzed, soak numbers) printed at the end of the run."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
import urllib.request
from collections import Counter as Tally
from pathlib import Path
from typing import Any

import pytest

from tests.integration.server import ServerProcess

REL_APP = Path(__file__).resolve().parent / "apps" / "rel_app.py"

FIGURES: dict[str, Any] = {}
"""Numbers worth reporting (inputs tried, soak results); printed in the terminal summary."""
FUZZ_INPUTS: Tally[str] = Tally()


def health(srv: ServerProcess, timeout: float = 10.0) -> dict[str, Any]:
    """`/healthz?verbose=1`: tasks, open fds, RSS, live agents, connections, active calls."""
    url = f"{srv.http_url}/healthz?verbose=1"
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        data: dict[str, Any] = json.loads(resp.read())
        return data


def proc_fds(pid: int) -> int:
    """Open file descriptors of a process, read from outside (/proc/<pid>/fd)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def proc_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def wait_quiet(srv: ServerProcess, *, connections: int = 0, limit: float = 30.0) -> dict[str, Any]:
    """Wait until no agent is live (all hibernated), no call is active and only
    `connections` sockets are open; returns the health figures at that moment."""
    deadline = time.monotonic() + limit
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        last = health(srv)
        if (
            last["live_agents"] == 0
            and last["active_calls"] == 0
            and last["connections"] == connections
        ):
            return last
        time.sleep(0.1)
    raise AssertionError(f"server never went quiet within {limit}s: {last}")


def assert_no_leak(
    srv: ServerProcess,
    before: dict[str, Any],
    *,
    connections: int = 0,
    slack_fds: int = 3,
    slack_tasks: int = 3,
    limit: float = 30.0,
) -> dict[str, Any]:
    """After the load is gone, tasks and fds come back to (about) where they were.

    Polls: a closed socket's clean-up, hibernation and WAL checkpoints finish asynchronously.
    """
    deadline = time.monotonic() + limit
    after: dict[str, Any] = {}
    while time.monotonic() < deadline:
        after = wait_quiet(srv, connections=connections, limit=limit)
        if (
            after["open_fds"] <= before["open_fds"] + slack_fds
            and after["tasks"] <= before["tasks"] + slack_tasks
        ):
            return after
        time.sleep(0.2)
    raise AssertionError(f"leak: before {before}, after {after}")


def read_db(path: Path, query: str, *params: Any) -> list[tuple[Any, ...]]:
    """Read an agent's database from outside the server (read-only, no WAL writes)."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return list(db.execute(query, params))


def agent_db(srv: ServerProcess, segment: str, name: str) -> Path:
    return srv.data_dir / segment / f"{name}.db"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FUZZ_INPUTS:
        FIGURES["fuzz_inputs"] = dict(FUZZ_INPUTS)
        FIGURES["fuzz_inputs_total"] = sum(FUZZ_INPUTS.values())
    if FIGURES:
        terminalreporter.section("reliability figures")
        for key, value in FIGURES.items():
            terminalreporter.write_line(f"{key}: {json.dumps(value, default=str)}")


@pytest.fixture
def rel_server_factory(server_factory: Any) -> Any:
    """`server_factory` (tests/conftest.py) on the reliability app."""

    def make(**kwargs: Any) -> ServerProcess:
        return server_factory(REL_APP, **kwargs)  # type: ignore[no-any-return]

    return make
