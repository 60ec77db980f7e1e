"""Agents on both backends through a real `AgentHost`: state, schedules (delays, cron, cancel,
hibernated agents, a new host), voice history; and, on the shared Postgres store, two hosts
polling the same alarms fire every schedule exactly once, and an agent live on one host is
fenced from the other."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from callroom import Agent
from callroom.config import Settings
from callroom.host import AgentHost
from callroom.storage import AgentLocked
from callroom.voice.history import History
from tests.integration.server import async_wait_until


class Planner(Agent):
    initial_state: ClassVar[Any] = {"n": 0}
    fired: ClassVar[list[tuple[str, Any, str]]] = []
    hosts: ClassVar[list[int]] = []

    async def ring(self, payload: Any, schedule: Any) -> None:
        Planner.fired.append((self.name, payload, schedule["type"]))
        Planner.hosts.append(id(self._host))


def make_host(tmp_path: Path, url: str, **settings: Any) -> AgentHost:
    settings.setdefault("idle_seconds", 3600)
    return AgentHost([Planner], Settings(data_dir=tmp_path / "data", storage=url, **settings))


@pytest.fixture
async def host(tmp_path: Path, backend_url: str) -> AsyncIterator[AgentHost]:
    Planner.fired.clear()
    Planner.hosts.clear()
    h = make_host(tmp_path, backend_url)
    await h.start()
    try:
        yield h
    finally:
        await h.stop()


async def test_state_survives_a_new_host(tmp_path: Path, backend_url: str) -> None:
    h = make_host(tmp_path, backend_url)
    await h.start()
    agent = await h.get("planner", "s")
    assert agent.state == {"n": 0}
    agent.set_state({"n": 5, "name": "é"})
    await async_wait_until(lambda: not h._slots[("planner", "s")].tasks, what="state hook")
    await h.stop()
    h2 = make_host(tmp_path, backend_url)
    await h2.start()
    try:
        assert (await h2.get("planner", "s")).state == {"n": 5, "name": "é"}
    finally:
        await h2.stop()


async def test_schedule_fires_once_and_is_removed(host: AgentHost) -> None:
    agent = await host.get("planner", "a")
    kept = await agent.schedule(3600, "ring", "later")
    await agent.schedule(0.05, "ring", {"x": [1, "two"]})
    await async_wait_until(lambda: Planner.fired, limit=10, what="schedule fired")
    await asyncio.sleep(0.3)
    assert Planner.fired == [("a", {"x": [1, "two"]}, "delayed")]
    assert agent.get_schedules() == [kept]


async def test_schedules_sorted_get_and_cancel(host: AgentHost) -> None:
    agent = await host.get("planner", "a")
    s2 = await agent.schedule(200, "ring", 2)
    s1 = await agent.schedule(100, "ring", 1)
    c = await agent.schedule("*/5 * * * *", "ring", "cron")
    order = [s["id"] for s in agent.get_schedules()]
    assert order.index(s1["id"]) < order.index(s2["id"])
    assert agent.get_schedule(c["id"]) == c
    assert agent.cancel_schedule(s1["id"]) is True
    assert agent.cancel_schedule(s1["id"]) is False
    assert {s["id"] for s in agent.get_schedules()} == {s2["id"], c["id"]}


async def test_cron_rearms(host: AgentHost) -> None:
    agent = await host.get("planner", "c")
    sched = await agent.schedule("* * * * *", "ring", "tick")
    # make it due now, as the alarm loop would find it a minute later
    agent.sql("UPDATE callroom_schedules SET time = ? WHERE id = ?", time.time() - 1, sched["id"])
    assert await agent._run_due_schedules() == 1
    after = agent.get_schedule(sched["id"])
    assert after is not None and after["time"] > time.time()
    assert Planner.fired == [("c", "tick", "cron")]


async def test_schedule_wakes_a_hibernated_agent(host: AgentHost) -> None:
    agent = await host.get("planner", "h")
    await agent.schedule(0.3, "ring", "wake")
    assert await host.hibernate_idle_async(now=time.monotonic() + 10_000) == 1
    assert not host.is_live("planner", "h")
    await async_wait_until(lambda: Planner.fired, limit=10, what="hibernated agent woken")
    assert Planner.fired == [("h", "wake", "delayed")]


async def test_schedules_survive_a_new_host(tmp_path: Path, backend_url: str) -> None:
    Planner.fired.clear()
    h = make_host(tmp_path, backend_url)
    await h.start()
    agent = await h.get("planner", "n")
    await agent.schedule(0.5, "ring", "after restart")
    await h.stop()
    assert Planner.fired == []
    h2 = make_host(tmp_path, backend_url)
    await h2.start()
    try:
        await async_wait_until(lambda: Planner.fired, limit=10, what="missed alarm fired")
        assert Planner.fired == [("n", "after restart", "delayed")]
    finally:
        await h2.stop()


async def test_history(host: AgentHost) -> None:
    agent = await host.get("planner", "talk")
    history = History(agent._storage, max_messages=6)
    assert history.messages() == []
    seqs = [
        history.append({"role": "user", "content": "hi"}, call_id="c1"),
        history.append(
            {"role": "assistant", "content": None, "tool_calls": [{"id": "t1"}]}, call_id="c1"
        ),
        history.append({"role": "tool", "content": "42", "tool_call_id": "t1"}),
        history.append({"role": "assistant", "content": "It is 42.", "interrupted": True}),
        history.append({"role": "user", "content": "thanks"}),
        history.append({"role": "assistant", "content": "bye"}),
    ]
    assert seqs == sorted(seqs) and len(set(seqs)) == 6
    msgs = history.messages()
    assert msgs[1] == {"role": "assistant", "content": "null", "tool_calls": [{"id": "t1"}]}
    assert msgs[3] == {"role": "assistant", "content": "It is 42.", "interrupted": True}
    assert [m["content"] for m in history.messages(limit_turns=1)] == ["thanks", "bye"]
    assert len(history.messages(limit_turns=2)) == 6
    for i in range(4):
        history.append({"role": "user", "content": f"more {i}"})
    history.trim()
    assert [m["content"] for m in history.messages()][-1] == "more 3"
    assert len(history.messages()) == 6
    history.clear()
    assert history.messages() == []


# -- shared store: several hosts -------------------------------------------------------------
async def test_two_hosts_fire_each_schedule_exactly_once(tmp_path: Path, postgres_url: str) -> None:
    Planner.fired.clear()
    Planner.hosts.clear()
    names = [f"p{i}" for i in range(12)]
    setup = make_host(tmp_path, postgres_url)
    await setup.start()
    expected = []
    for i, name in enumerate(names):
        agent = await setup.get("planner", name)
        for k in range(3):
            await agent.schedule(1.0 + 0.05 * k + 0.01 * i, "ring", f"{name}-{k}")
            expected.append((name, f"{name}-{k}", "delayed"))
    await setup.stop()  # hibernates nothing: stop() evicts every agent, releasing its fence

    hosts = [make_host(tmp_path / f"h{i}", postgres_url) for i in range(2)]
    for h in hosts:
        await h.start()
    try:
        await async_wait_until(
            lambda: len(Planner.fired) >= len(expected), limit=30, what="all schedules fired"
        )
        await asyncio.sleep(1.5)  # a duplicate would show up in this window
        assert sorted(Planner.fired) == sorted(expected)
        for h in hosts:  # every schedule row is gone
            for name in names:
                if h.is_live("planner", name):
                    assert (await h.get("planner", name)).get_schedules() == []
    finally:
        for h in hosts:
            await h.stop()


async def test_live_agent_is_fenced_from_another_host(tmp_path: Path, postgres_url: str) -> None:
    a = make_host(tmp_path / "a", postgres_url)
    b = make_host(tmp_path / "b", postgres_url)
    await a.start()
    await b.start()
    try:
        agent = await a.get("planner", "solo")
        agent.set_state({"n": 1})
        with pytest.raises(AgentLocked):
            await b.get("planner", "solo")
        await async_wait_until(lambda: not a._slots[("planner", "solo")].tasks, what="hook")
        assert await a.hibernate_idle_async(now=time.monotonic() + 10_000) == 1
        moved = await b.get("planner", "solo")  # released with the hibernation
        assert moved.state == {"n": 1}
        with pytest.raises(AgentLocked):
            await a.get("planner", "solo")
    finally:
        await a.stop()
        await b.stop()


async def test_owns_filter_leaves_other_agents_alarms(tmp_path: Path, postgres_url: str) -> None:
    Planner.fired.clear()
    h = make_host(tmp_path, postgres_url)
    await h.start()
    try:
        h.backend.owns = lambda agent, name: name != "not-mine"
        for name in ("mine", "not-mine"):
            agent = await h.get("planner", name)
            await agent.schedule(0.05, "ring", name)
        await h.hibernate_idle_async(now=time.monotonic() + 10_000)
        await async_wait_until(lambda: Planner.fired, limit=10, what="owned alarm fired")
        await asyncio.sleep(0.5)
        assert Planner.fired == [("mine", "mine", "delayed")]
        assert [a for a, n in h.backend.alarm_index().due(time.time() + 1)] == []
    finally:
        await h.stop()
