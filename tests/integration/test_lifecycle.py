"""Hibernation, crash/restart durability, schedules across downtime, graceful shutdown.

Each test owns its server (it stops, kills or restarts it). Waits are bounded polls on an
observable fact (health endpoint, a row in the agent's SQLite file, a frame), never a fixed
sleep standing in for "long enough".
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from callroom import Agent, Connection, callable
from tests.conftest import ServerFactory
from tests.integration.server import (
    CONFORMANCE_APP,
    Client,
    ServerProcess,
    async_wait_until,
    inprocess_server,
    wait_until,
)

IDLE = "0.3"  # CALLROOM_IDLE_SECONDS for tests that want hibernation to happen


def read_agent_db(srv: ServerProcess, agent: str, name: str, query: str) -> list[tuple[Any, ...]]:
    """Read an agent's SQLite file directly (read-only), without waking or touching it."""
    path = srv.data_dir / agent / f"{name}.db"
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return db.execute(query).fetchall()
    except sqlite3.OperationalError:  # table not created yet
        return []
    finally:
        db.close()


async def live_agents(srv: ServerProcess) -> int:
    return int((await asyncio.to_thread(srv.health))["live_agents"])


async def wait_hibernated(srv: ServerProcess, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while await live_agents(srv) != 0:
        if time.monotonic() > deadline:
            raise AssertionError(f"agent still live after {limit}s")
        await asyncio.sleep(0.05)


# -- hibernation ------------------------------------------------------------------------------
async def test_hibernation_keeps_socket_and_state(
    server_factory: ServerFactory, agent_name: str
) -> None:
    srv = server_factory(env={"CALLROOM_IDLE_SECONDS": IDLE})
    url = srv.ws_url("features", agent_name)
    async with Client.connect(url) as a, Client.connect(url) as b:
        assert await a.call("starts") == 1
        await a.send({"type": "cf_agent_state", "state": {"items": ["kept"], "version": 3}})
        assert (await b.recv_json())["state"] == {"items": ["kept"], "version": 3}
        assert await a.call("add_note", "row") == 1

        await wait_hibernated(srv)  # evicted from memory while both sockets stay open

        # the next frame wakes it: on_start ran again, state and rows came back from disk
        assert await a.call("starts") >= 2
        assert await a.call("get_state") == {"items": ["kept"], "version": 3}
        assert await a.call("notes") == ["row"]
        # connections survived: a broadcast after the wake reaches the other socket
        await a.send({"type": "cf_agent_state", "state": {"items": ["after"], "version": 4}})
        assert (await b.recv_json())["state"] == {"items": ["after"], "version": 4}

        await wait_hibernated(srv)
        await b.send("plain frames wake it too")
        assert await b.recv_json() == {"type": "echo", "data": "plain frames wake it too"}
        assert await b.call("starts") >= 3


async def test_hibernation_http_wakes(server_factory: ServerFactory, agent_name: str) -> None:
    srv = server_factory(env={"CALLROOM_IDLE_SECONDS": IDLE})
    async with Client.connect(srv.ws_url("features", agent_name)) as c:
        assert await c.call("add_note", "before") == 1
    await wait_hibernated(srv)
    from tests.integration.test_protocol import http

    status, body = await asyncio.to_thread(http, srv, f"/agents/features/{agent_name}")
    assert status == 200
    assert body["notes"] == ["before"] and body["starts"] >= 2


class Sleeper(Agent):
    """In-process agent for the exact, sleep-free hibernation check."""

    initial_state = {"n": 0}
    starts = 0

    async def on_start(self) -> None:
        Sleeper.starts += 1

    @callable
    def whoami(self) -> list[Any]:
        return [id(self), Sleeper.starts, self.state]

    async def on_message(self, connection: Connection, message: str | bytes) -> None:
        connection.send_json({"type": "pong", "starts": Sleeper.starts})


async def test_hibernation_exact_in_process(tmp_path: Path) -> None:
    """Force a sweep with a far-future clock: exactly one eviction, exactly one wake."""
    Sleeper.starts = 0
    async with inprocess_server([Sleeper], tmp_path, idle_seconds=3600) as srv:
        async with Client.connect(srv.ws_url("sleeper", "s")) as c:
            first_id, starts, _ = await c.call("whoami")
            assert starts == 1
            await c.send({"type": "cf_agent_state", "state": {"n": 5}})
            await c.call("whoami")  # the state frame has been handled
            assert await srv.host.hibernate_idle_async(now=time.monotonic() + 10_000) == 1
            assert not srv.host.is_live("sleeper", "s")
            assert srv.host.live_count == 0
            await c.send("ping")  # socket still open; this frame wakes the agent
            assert await c.recv_json() == {"type": "pong", "starts": 2}
            second_id, starts, state = await c.call("whoami")
            assert (starts, state) == (2, {"n": 5})
            assert second_id != first_id  # a fresh instance, rebuilt from storage
        # the closed socket is forgotten and no task of it outlives it
        await async_wait_until(
            lambda: all(not s.connections and not s.tasks for s in srv.host._slots.values()),
            what="connection clean-up",
        )


async def test_busy_agent_is_not_hibernated(tmp_path: Path) -> None:
    async with inprocess_server([Sleeper], tmp_path, idle_seconds=3600) as srv:
        async with Client.connect(srv.ws_url("sleeper", "busy")):
            agent = await srv.host.get("sleeper", "busy")
            with srv.host.activity(agent):
                assert await srv.host.hibernate_idle_async(now=time.monotonic() + 10_000) == 0
            assert await srv.host.hibernate_idle_async(now=time.monotonic() + 10_000) == 1


# -- restart after a crash --------------------------------------------------------------------
async def test_sigkill_restart_keeps_everything(
    server_factory: ServerFactory, agent_name: str
) -> None:
    srv = server_factory()
    url = srv.ws_url("features", agent_name)
    async with Client.connect(url) as c:
        await c.send({"type": "cf_agent_state", "state": {"items": ["a", "b"], "version": 7}})
        assert await c.call("add_note", "one") == 1
        assert await c.call("add_note", "two") == 2
        await c.call("schedule_in", 3600, "future")
        missed = await c.call("schedule_in", 1.5, "missed")
        # the reply has left the server, so the writes are on disk: crash now
        srv.kill()
        closed = await c.closed()
        assert closed.rcvd is None  # no close frame: the process died (1006)

    # while down: the "missed" schedule is still pending and has not fired
    assert read_agent_db(srv, "features", agent_name, "SELECT tag FROM fired") == []
    pending = read_agent_db(srv, "features", agent_name, "SELECT payload FROM callroom_schedules")
    assert len(pending) == 2
    # let its time pass while the server is down
    await asyncio.sleep(max(0.0, missed["time"] - time.time()) + 0.05)

    srv.start()
    # no client connects: the alarm loop fires the missed schedule on start by itself
    await asyncio.to_thread(
        wait_until,
        lambda: read_agent_db(srv, "features", agent_name, "SELECT tag, at FROM fired"),
        timeout=10,
        what="missed schedule fired after restart",
    )
    [(tag, at)] = read_agent_db(srv, "features", agent_name, "SELECT tag, at FROM fired")
    assert (tag, at) == ("missed", missed["time"])

    async with Client.connect(url, handshake=False) as c:
        frames = await c.read_handshake()
        assert frames[1]["state"] == {"items": ["a", "b"], "version": 7}
        assert await c.call("notes") == ["one", "two"]
        assert await c.call("schedules") == ["future"]
        assert await c.call("fired_tags") == ["missed"]
        assert await c.call("starts") == 2  # created once, woken once after the crash


async def test_conformance_state_survives_sigkill(
    server_factory: ServerFactory, agent_name: str
) -> None:
    srv = server_factory(CONFORMANCE_APP)
    url = srv.ws_url("counter", agent_name)
    async with Client.connect(url) as c:
        assert await c.call("increment", 3, skip_other=True) == 3
    srv.restart(kill=True)
    async with Client.connect(url, handshake=False) as c:
        frames = await c.read_handshake()
        assert frames[1] == {"type": "cf_agent_state", "state": {"count": 3}}
        assert await c.call("increment", skip_other=True) == 4


async def test_schedule_wakes_hibernated_agent(
    server_factory: ServerFactory, agent_name: str
) -> None:
    srv = server_factory(env={"CALLROOM_IDLE_SECONDS": IDLE})
    async with Client.connect(srv.ws_url("features", agent_name)) as c:
        await c.call("schedule_in", 2.0, "wake-up")
        await wait_hibernated(srv)
        fired, _ = await c.recv_until(lambda f: f.get("type") == "fired", limit=15)
        # on_start had run twice when the callback ran: the alarm woke a hibernated agent
        assert fired == {"type": "fired", "tag": "wake-up", "starts": 2}


async def test_schedule_wakes_agent_with_no_connections(
    server_factory: ServerFactory, agent_name: str
) -> None:
    srv = server_factory(env={"CALLROOM_IDLE_SECONDS": IDLE})
    async with Client.connect(srv.ws_url("features", agent_name)) as c:
        await c.call("schedule_in", 1.0, "alone")
    await wait_hibernated(srv)
    await asyncio.to_thread(
        wait_until,
        lambda: read_agent_db(srv, "features", agent_name, "SELECT tag, starts FROM fired"),
        timeout=15,
        what="schedule fired with nobody connected",
    )
    assert read_agent_db(srv, "features", agent_name, "SELECT tag, starts FROM fired") == [
        ("alone", 2)
    ]


async def test_schedule_at_datetime_fires(features_server: ServerProcess, agent_name: str) -> None:
    import datetime as dt

    when = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=0.5)).isoformat()
    async with Client.connect(features_server.ws_url("features", agent_name)) as c:
        await c.call("schedule_at", when, "at-time")
        fired, _ = await c.recv_until(lambda f: f.get("type") == "fired", limit=15)
        assert fired["tag"] == "at-time"
        assert await c.call("schedules") == []


# -- graceful shutdown ------------------------------------------------------------------------
async def test_sigterm_drains_then_closes_1001(
    server_factory: ServerFactory, agent_name: str
) -> None:
    srv = server_factory()
    url = srv.ws_url("features", agent_name)
    async with Client.connect(url) as busy, Client.connect(url) as idle:
        rid = busy.next_id()
        await busy.send({"type": "rpc", "id": rid, "method": "slow", "args": [1.0]})
        # the handler is running once its state broadcast arrives
        started, _ = await busy.recv_until(lambda f: f.get("type") == "cf_agent_state")
        assert started["state"]["slow"] == "started"
        srv.terminate_nowait()
        # the in-flight call completes before the socket closes ...
        reply, _ = await busy.recv_until(lambda f: f.get("id") == rid, limit=15)
        assert reply["result"] == "finished"
        # ... then every client gets 1001 ("going away": npm clients reconnect)
        for client in (busy, idle):
            closed = await client.closed(limit=15)
            assert closed.rcvd is not None and closed.rcvd.code == 1001, closed
    # uvicorn re-raises the SIGTERM it caught once shutdown is complete
    assert await asyncio.to_thread(srv.wait, 20) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in srv.log()

    srv.start()  # and everything is still there
    async with Client.connect(url) as c:
        state = await c.call("get_state")
        assert state["slow"] == "started"


@pytest.mark.parametrize("cycles", [3])
async def test_repeated_restarts(
    server_factory: ServerFactory, agent_name: str, cycles: int
) -> None:
    srv = server_factory(CONFORMANCE_APP)
    url = srv.ws_url("counter", agent_name)
    for i in range(cycles):
        async with Client.connect(url) as c:
            assert await c.call("increment", skip_other=True) == i + 1
        srv.restart(kill=i % 2 == 0)
    async with Client.connect(url, handshake=False) as c:
        assert (await c.read_handshake())[1]["state"] == {"count": cycles}
