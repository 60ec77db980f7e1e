"""Agents on a real two-node Ray cluster on this machine (`ray start --head` + one more node),
through `callroom serve app.py --cluster ADDRESS --hosts 2`: two detached host actors spread
over the nodes, a gateway, a voice call and a stateful agent through the gateway; a host is
killed (SIGKILL) mid-call: the client reconnects and the call resumes on the other host with
its history; Ray restarts the host, the agents move back; schedules fire exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from callroom.cluster.hashing import owner
from tests.cluster.procs import ROOT, Proc
from tests.cluster.raycluster import LocalRay
from tests.cluster.test_gateway import call_until
from tests.integration.server import free_port
from tests.integration.voice_client import VoiceTestClient

pytest.importorskip("ray", reason="needs the ray extra: pip install 'callroom[ray]'")

pytestmark = pytest.mark.timeout(900)

APP = Path(__file__).resolve().parent / "apps" / "ray_app.py"
GREETING = "Hello, this is the test line."


def name_on(host_id: str, agent: str, prefix: str) -> str:
    i = 0
    while owner(["h0", "h1"], agent, f"{prefix}{i}") != host_id:
        i += 1
    return f"{prefix}{i}"


def hosts_of(gateway: Proc) -> dict[str, dict[str, Any]]:
    return {h["id"]: h for h in gateway.health().get("hosts", [])}


def wait_hosts(gateway: Proc, pred: Any, what: str, timeout: float = 180.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError, ValueError):
            hosts = hosts_of(gateway)
            if pred(hosts):
                return hosts
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; gateway sees {hosts_of(gateway)}")
        time.sleep(0.5)


async def start_call(c: VoiceTestClient) -> None:
    await c.wait_type("welcome")
    await c.send({"type": "start_call", "preferred_format": "pcm16"})
    await c.wait_type("audio_config")
    await c.wait_type("status", status="listening")


async def say(c: VoiceTestClient, text: str) -> None:
    mark = len(c.messages)
    await c.send({"type": "text_message", "text": text})
    end = await c.wait_for(
        lambda m: m.get("type") == "transcript_end" and m.get("text") == f"You said: {text}",
        start=mark,
    )
    assert end


@pytest.fixture
def ray_cluster(tmp_path: Path) -> Any:
    cluster = LocalRay(tmp_path)
    try:
        cluster.start(nodes=2)
    except (RuntimeError, OSError) as exc:
        cluster.stop()
        pytest.fail(f"could not start a local Ray cluster: {exc}")
    try:
        yield cluster
    finally:
        # the host actors are detached: stop them explicitly, then the nodes
        code = (
            "from callroom.cluster.ray import connect, stop_hosts;"
            f"connect({cluster.address!r}); stop_hosts(timeout=30)"
        )
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(
                [sys.executable, "-c", code],
                timeout=90,
                check=False,
                capture_output=True,
                env=cluster.env,
            )
        cluster.stop()


def start_gateway(ray_cluster: LocalRay, postgres_url: str, tmp_path: Path) -> Proc:
    """`callroom serve app.py --cluster ADDRESS --hosts 2` (creates the host actors)."""
    port = free_port()
    gateway = Proc([], port, tmp_path / "gateway.log", {})
    log = gateway.log_path.open("ab")
    gateway.proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "callroom.cli",
            "serve",
            str(APP),
            "--cluster",
            ray_cluster.address,
            "--hosts",
            "2",
            "--port",
            str(port),
        ],
        cwd=str(ROOT),
        env={
            **ray_cluster.env,
            "CALLROOM_STORAGE": postgres_url,
            "CALLROOM_DATA_DIR": str(tmp_path / "data"),
        },
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    return gateway


async def test_ray_hosts_gateway_failover_resume_and_schedules(
    ray_cluster: LocalRay, postgres_url: str, tmp_path: Path
) -> None:
    gateway = start_gateway(ray_cluster, postgres_url, tmp_path)
    try:
        await _scenario(gateway, ray_cluster)
    except BaseException:
        print(gateway.log(), "\n", ray_cluster.logs())
        raise
    finally:
        gateway.stop(timeout=20)


async def _scenario(gateway: Proc, ray_cluster: LocalRay) -> None:
    hosts = await asyncio.to_thread(
        wait_hosts, gateway, lambda h: set(h) == {"h0", "h1"}, "two hosts", 300.0
    )
    # two host processes, one per Ray node
    assert len({h["pid"] for h in hosts.values()}) == 2
    assert len({h["node"] for h in hosts.values()}) == 2, hosts

    voice_name = name_on("h1", "cluster-voice", "call")
    room_names = [name_on(h, "room", f"r{h}-") for h in ("h0", "h1")]
    voice_url = gateway.ws_url("cluster-voice", voice_name, "_pk=caller-1")

    # a call on h1 through the gateway
    async with VoiceTestClient(voice_url) as c:
        await start_call(c)
        greet = await c.wait_type("transcript_end")
        assert greet["text"] == GREETING
        await say(c, "first turn")
        assert await c.rpc("pid") == hosts["h1"]["pid"]
        # state and schedules on both hosts
        for name in room_names:
            url = gateway.ws_url("room", name)
            assert await call_until(url, "increment", 3) == 3
            for k in range(3):
                await call_until(url, "plan", 6.0 + k, f"{name}/{k}")
        # crash h1 mid-call
        os.kill(hosts["h1"]["pid"], signal.SIGKILL)
        async with asyncio.timeout(30):
            while c.closed is None:  # noqa: ASYNC110 (bounded poll)
                await asyncio.sleep(0.05)
        assert c.closed[0] == 1012, c.closed

    # the client reconnects (same _pk, start_call again): the call resumes on a live host
    t0 = time.monotonic()
    async with asyncio.timeout(60):
        while True:
            try:
                async with VoiceTestClient(voice_url) as c:
                    await start_call(c)
                    await say(c, "second turn")
                    pid_now = await c.rpc("pid")
                    history = await c.rpc("history")
                    break
            except (OSError, AssertionError, TimeoutError):
                await asyncio.sleep(0.3)
    resumed_after = time.monotonic() - t0
    contents = [m["content"] for m in history]
    assert contents.count(GREETING) == 1, contents  # resumed, not a new call
    assert "first turn" in " ".join(map(str, contents))
    assert "You said: second turn" in contents
    assert pid_now != hosts["h1"]["pid"]
    # state survived on the other host
    for name in room_names:
        assert await call_until(gateway.ws_url("room", name), "increment", 1, limit=60) == 4

    # Ray restarts h1 (same id, new process); its agents are handed back to it
    back = await asyncio.to_thread(
        wait_hosts,
        gateway,
        lambda h: "h1" in h and h["h1"]["pid"] != hosts["h1"]["pid"] and "h0" in h,
        "h1 restarted by Ray",
        180.0,
    )
    new_h1 = back["h1"]["pid"]
    # (probe with another connection id: a call-less close of `caller-1` would end its call)
    probe_url = gateway.ws_url("cluster-voice", voice_name)
    async with asyncio.timeout(60):
        while await call_until(probe_url, "pid", limit=30) != new_h1:  # noqa: ASYNC110
            await asyncio.sleep(0.5)
    async with VoiceTestClient(voice_url) as c:
        await start_call(c)
        await say(c, "third turn")
        history = await c.rpc("history")
    assert [m["content"] for m in history].count(GREETING) == 1

    # every schedule fired exactly once, across the crash and the move back
    expected = Counter(f"{n}/{k}" for n in room_names for k in range(3))
    async with asyncio.timeout(90):
        while True:
            seen: Counter[str] = Counter()
            for name in room_names:
                rows = await call_until(gateway.ws_url("room", name), "fired", limit=30)
                seen.update(r["payload"] for r in rows)
            if sum(seen.values()) >= sum(expected.values()):
                break
            await asyncio.sleep(1.0)
    await asyncio.sleep(3.0)
    seen = Counter()
    for name in room_names:
        rows = await call_until(gateway.ws_url("room", name), "fired", limit=30)
        seen.update(r["payload"] for r in rows)
    assert seen == expected
    print(f"call resumed {resumed_after:.2f}s after the host crash")
