"""`Agent.schedule`: delays, datetimes and cron; invalid input is refused with
`ScheduleError`; due schedules fire through the host's alarm loop (also for a hibernated
agent); cron schedules re-arm; failing callbacks do not block the others."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from tests.integration.server import async_wait_until

from callroom import Agent, Connection
from callroom.config import Settings
from callroom.errors import ScheduleError
from callroom.host import AgentHost


class Planner(Agent):
    fired: ClassVar[list[tuple[str, Any, str, int]]] = []
    errors: ClassVar[list[str]] = []
    not_a_method: ClassVar[int] = 3

    async def ring(self, payload: Any, schedule: Any) -> None:
        Planner.fired.append((self.name, payload, schedule["type"], id(self)))

    def sync_ring(self, payload: Any, schedule: Any) -> None:
        Planner.fired.append((self.name, payload, "sync", id(self)))

    async def explode(self, payload: Any, schedule: Any) -> None:
        raise RuntimeError("schedule callback failed")

    def _hidden(self, payload: Any, schedule: Any) -> None:
        raise AssertionError("private methods must never be scheduled")

    @property
    def prop(self) -> int:
        return 1

    async def on_error(self, error: BaseException, connection: Connection | None = None) -> None:
        Planner.errors.append(str(error))


@pytest.fixture
async def host(tmp_path: Path) -> AsyncIterator[AgentHost]:
    Planner.fired.clear()
    Planner.errors.clear()
    h = AgentHost([Planner], Settings(data_dir=tmp_path, idle_seconds=3600))
    await h.start()
    try:
        yield h
    finally:
        await h.stop()


async def test_delay_schedule_is_stored(host: AgentHost) -> None:
    agent = await host.get("planner", "a")
    before = time.time()
    sched = await agent.schedule(600, "ring", {"x": [1, "two"]})
    assert sched["type"] == "delayed"
    assert sched["delay"] == 600.0
    assert before + 600 <= sched["time"] <= time.time() + 600
    assert agent.get_schedule(sched["id"]) == sched
    assert agent.get_schedules() == [sched]


async def test_datetime_schedule_naive_is_utc(host: AgentHost) -> None:
    agent = await host.get("planner", "a")
    naive = await agent.schedule(dt.datetime(2099, 1, 2, 3, 4, 5), "ring")
    aware = await agent.schedule(
        dt.datetime(2099, 1, 2, 5, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=2))), "ring"
    )
    expected = dt.datetime(2099, 1, 2, 3, 4, 5, tzinfo=dt.UTC).timestamp()
    assert naive["type"] == aware["type"] == "scheduled"
    assert naive["time"] == aware["time"] == expected
    assert naive["delay"] is None


async def test_cron_schedule_next_time(host: AgentHost) -> None:
    agent = await host.get("planner", "a")
    now = time.time()
    sched = await agent.schedule("*/5 * * * *", "ring")
    assert sched["type"] == "cron"
    assert sched["cron"] == "*/5 * * * *"
    assert now < sched["time"] <= now + 300
    assert int(sched["time"]) % 300 == 0


async def test_schedules_sorted_and_cancel(host: AgentHost) -> None:
    agent = await host.get("planner", "a")
    late = await agent.schedule(900, "ring", "late")
    early = await agent.schedule(300, "ring", "early")
    assert [s["payload"] for s in agent.get_schedules()] == ["early", "late"]
    assert agent.cancel_schedule(early["id"]) is True
    assert agent.cancel_schedule(early["id"]) is False
    assert agent.cancel_schedule("no-such-id") is False
    assert agent.get_schedule(early["id"]) is None
    assert [s["id"] for s in agent.get_schedules()] == [late["id"]]


@pytest.mark.parametrize(
    ("when", "callback", "message"),
    [
        (-1, "ring", "delay must be >= 0"),
        (True, "ring", "when must be"),
        (None, "ring", "when must be"),
        ([1], "ring", "when must be"),
        ("not a cron", "ring", "invalid cron expression"),
        ("* * *", "ring", "invalid cron expression"),
        ("61 * * * *", "ring", "invalid cron expression"),
        (1, "missing", "is not a public method"),
        (1, "_hidden", "is not a public method"),
        (1, "__init__", "is not a public method"),
        (1, "not_a_method", "is not a public method"),
        (1, "prop", "is not a public method"),
        (1, "name", "is not a public method"),
    ],
)
async def test_invalid_schedules_refused(
    host: AgentHost, when: Any, callback: str, message: str
) -> None:
    agent = await host.get("planner", "a")
    with pytest.raises(ScheduleError, match=message):
        await agent.schedule(when, callback)
    assert agent.get_schedules() == []


async def test_due_schedules_fire_in_order_once(host: AgentHost) -> None:
    agent = await host.get("planner", "a")
    await agent.schedule(0, "ring", "first")
    await agent.schedule(dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5), "ring", "past")
    await agent.schedule(0, "sync_ring", "sync")
    await async_wait_until(lambda: len(Planner.fired) >= 3, limit=10, what="3 schedules")
    assert sorted(p for _, p, _, _ in Planner.fired) == ["first", "past", "sync"]
    assert Planner.fired[0][1] == "past"  # earliest time first
    await async_wait_until(lambda: agent.get_schedules() == [], limit=10, what="rows gone")
    assert len(Planner.fired) == 3


async def test_failing_callback_reported_and_others_still_fire(host: AgentHost) -> None:
    agent = await host.get("planner", "a")
    await agent.schedule(0, "explode")
    await agent.schedule(0, "ring", "after")
    await async_wait_until(lambda: Planner.fired, limit=10, what="second schedule")
    assert Planner.errors == ["schedule callback failed"]
    await async_wait_until(lambda: agent.get_schedules() == [], limit=10, what="rows gone")


async def test_cron_rearms_after_firing(host: AgentHost) -> None:
    agent = await host.get("planner", "a")
    sched = await agent.schedule("* * * * *", "ring", "tick")
    # pretend the minute has come (no sleeping): move the row into the past
    agent.sql("UPDATE callroom_schedules SET time = ? WHERE id = ?", time.time() - 1, sched["id"])
    agent._sync_alarm()
    await async_wait_until(lambda: Planner.fired, limit=10, what="cron fire")
    assert Planner.fired[0][1:3] == ("tick", "cron")
    [row] = agent.get_schedules()
    assert row["id"] == sched["id"]
    assert row["time"] > time.time()


async def test_schedule_wakes_hibernated_agent(host: AgentHost) -> None:
    agent = await host.get("planner", "sleepy")
    first_instance = id(agent)
    await agent.schedule(0.3, "ring", "wake")
    assert await host.hibernate_idle_async(now=time.monotonic() + 1e6) == 1
    assert not host.is_live("planner", "sleepy")
    del agent
    await async_wait_until(lambda: Planner.fired, limit=10, what="alarm on hibernated agent")
    name, payload, _, instance = Planner.fired[0]
    assert (name, payload) == ("sleepy", "wake")
    assert instance != first_instance  # a new instance was woken from storage
    assert host.is_live("planner", "sleepy")


async def test_schedules_survive_a_new_host(tmp_path: Path) -> None:
    """Stop the host with a schedule pending; a new host on the same data dir fires it."""
    Planner.fired.clear()
    first = AgentHost([Planner], Settings(data_dir=tmp_path, idle_seconds=3600))
    await first.start()
    agent = await first.get("planner", "durable")
    await agent.schedule(0.2, "ring", "later")
    await first.stop()
    assert Planner.fired == []
    second = AgentHost([Planner], Settings(data_dir=tmp_path, idle_seconds=3600))
    await second.start()
    try:
        await async_wait_until(lambda: Planner.fired, limit=10, what="fire after restart")
        assert Planner.fired[0][:2] == ("durable", "later")
    finally:
        await second.stop()
