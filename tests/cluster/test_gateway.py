"""Scale-out without Ray: hosts and gateways as plain processes over one Postgres.

Rendezvous hashing picks the owner; every gateway routes an agent to the same host; two
callers on different gateways share one live agent; HTTP and WebSocket are proxied (bodies,
queries, headers, denials, streaming); a killed host's clients reconnect to a live host and
find their state; when it comes back its agents are handed back; schedules fire exactly once
cluster-wide, also across a host crash."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections import Counter

import httpx
import pytest
import websockets

from callroom.cluster.hashing import owner, ranking
from tests.cluster.procs import Cluster
from tests.integration.server import Client

pytestmark = pytest.mark.timeout(240)


# -- hashing (no processes) -----------------------------------------------------------------
def test_rendezvous_is_deterministic_balanced_and_minimal() -> None:
    hosts = [f"h{i}" for i in range(4)]
    names = [f"agent-{i}" for i in range(4000)]
    first = {n: owner(hosts, "room", n) for n in names}
    assert first == {n: owner(list(reversed(hosts)), "room", n) for n in names}  # order-free
    counts = Counter(first.values())
    assert set(counts) == set(hosts)
    assert min(counts.values()) > 4000 / 4 * 0.85  # roughly even
    # removing h2 moves exactly h2's agents, each to its second choice
    after = {n: owner([h for h in hosts if h != "h2"], "room", n) for n in names}
    moved = {n for n in names if after[n] != first[n]}
    assert moved == {n for n in names if first[n] == "h2"}
    assert all(after[n] == ranking(hosts, "room", n)[1] for n in moved)
    assert owner([], "room", "x") is None
    assert owner(["h0"], "room", "x") == "h0"
    # the class is part of the key
    assert any(owner(hosts, "room", n) != owner(hosts, "hall", n) for n in names[:50])


# -- helpers --------------------------------------------------------------------------------
def names_by_owner(ids: list[str], per_host: int = 1) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {h: [] for h in ids}
    i = 0
    while any(len(v) < per_host for v in out.values()):
        name = f"r{i}"
        h = owner(ids, "room", name)
        assert h is not None
        if len(out[h]) < per_host:
            out[h].append(name)
        i += 1
    return out


async def rpc(url: str, method: str, *args: object) -> object:
    async with Client.connect(url) as c:
        return await c.call(method, *args, skip_other=True)


async def call_until(url: str, method: str, *args: object, limit: float = 20.0) -> object:
    """Call through a gateway, retrying while a host is down or an agent is moving."""
    deadline = time.monotonic() + limit
    while True:
        try:
            return await rpc(url, method, *args)
        except (OSError, websockets.ConnectionClosed, AssertionError, TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def host_pids(cluster: Cluster) -> dict[str, int]:
    return {hid: p.pid for hid, p in cluster.hosts.items()}


# -- routing --------------------------------------------------------------------------------
async def test_every_gateway_routes_an_agent_to_its_owner(cluster: Cluster) -> None:
    cluster.add_host("h0")
    cluster.add_host("h1")
    gw = [cluster.add_gateway(min_hosts=2), cluster.add_gateway(min_hosts=2)]
    for g in gw:
        cluster.wait_hosts(g, {"h0", "h1"})
    pids = host_pids(cluster)
    by_owner = names_by_owner(["h0", "h1"], per_host=3)
    for hid, names in by_owner.items():
        for name in names:
            seen = {await rpc(g.ws_url("room", name), "pid") for g in gw}
            assert seen == {pids[hid]}, (name, hid, seen)


async def test_two_callers_on_two_gateways_share_one_agent(cluster: Cluster) -> None:
    cluster.add_host("h0")
    cluster.add_host("h1")
    g1, g2 = cluster.add_gateway(min_hosts=2), cluster.add_gateway(min_hosts=2)
    name = "shared-room"
    async with (
        Client.connect(g1.ws_url("room", name)) as a,
        Client.connect(g2.ws_url("room", name)) as b,
    ):
        assert await a.call("increment", 5, skip_other=True) == 5
        frame, _ = await b.recv_until(lambda f: f.get("type") == "cf_agent_state")
        assert frame["state"] == {"count": 5}
        assert await b.call("increment", 1, skip_other=True) == 6
        frame, _ = await a.recv_until(lambda f: f.get("type") == "cf_agent_state")
        assert frame["state"] == {"count": 6}
        assert await a.call("pid", skip_other=True) == await b.call("pid", skip_other=True)


async def test_http_and_websocket_details_pass_through(cluster: Cluster) -> None:
    cluster.add_host("h0")
    cluster.add_host("h1")
    g = cluster.add_gateway(min_hosts=2)
    async with httpx.AsyncClient(base_url=g.http_url, timeout=10) as http:
        r = await http.post(
            "/agents/room/web?x=1&y=%C3%A9",
            content=b"hello body",
            headers={"authorization": "Bearer t", "content-type": "text/plain"},
        )
        assert r.status_code == 200
        assert r.headers["x-agent"] == "web"
        data = r.json()
        assert data["method"] == "POST"
        assert data["body"] == "hello body"
        assert data["query"] == "x=1&y=%C3%A9"
        assert data["auth"] == "Bearer t"
        owner_pid = host_pids(cluster)[owner(["h0", "h1"], "room", "web")]  # type: ignore[index]
        assert data["pid"] == owner_pid
        r = await http.get("/agents/room/web/stream")
        assert r.text == "".join(f"chunk {i}\n" for i in range(5))
        r = await http.get("/agents/no-such-class/x")
        assert r.status_code == 404
        r = await http.get("/agents/room/.hidden")
        assert r.status_code == 400
        assert (await http.get("/healthz")).json()["ok"] is True
    # an upgrade refused by the agent (401) stays refused through the gateway
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(g.ws_url("room", "private-1"), open_timeout=10):
            pass
    assert refused.value.response.status_code == 401
    # headers reach the host: the same upgrade with the token is accepted
    async with websockets.connect(
        g.ws_url("room", "private-1"), additional_headers={"authorization": "Bearer ok"}
    ) as ws:
        first = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert first["type"] == "cf_agent_identity"
    # binary frames are relayed untouched, both ways
    async with Client.connect(g.ws_url("room", "bin")) as c:
        payload = bytes(range(256)) * 3
        await c.send(payload)
        assert await c.recv() == payload
    # the client's close code reaches nobody's harm; a bad path is a policy close
    async with websockets.connect(f"ws://127.0.0.1:{g.port}/agents/room/..") as ws:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


# -- failures -------------------------------------------------------------------------------
async def test_killed_host_clients_reconnect_and_agents_return(cluster: Cluster) -> None:
    h0 = cluster.add_host("h0")
    h1 = cluster.add_host("h1")
    g = cluster.add_gateway(min_hosts=2)
    name = names_by_owner(["h0", "h1"])["h1"][0]
    url = g.ws_url("room", name)
    pid_h1 = h1.pid
    async with Client.connect(url) as c:
        assert await c.call("pid") == pid_h1
        assert await c.call("increment", 7, skip_other=True) == 7
        h1.kill()  # crash: no drain, no goodbye
        closed = await c.closed(limit=15)
        assert closed.rcvd is not None and closed.rcvd.code == 1012
    # the client reconnects at once: the gateway routes around the dead host
    t0 = time.monotonic()
    assert await call_until(url, "pid") == h0.pid
    failover = time.monotonic() - t0
    async with Client.connect(url) as c:
        assert (
            await c.call("increment", 1, skip_other=True) == 8
        )  # the state came from the shared store
        # the host comes back (same id, new process): the agent is handed back to it
        h1_again = cluster.add_host("h1", port=h1.port)
        closed = await c.closed(limit=30)
        assert closed.rcvd is not None and closed.rcvd.code == 1012
    assert await call_until(url, "pid") == h1_again.pid
    assert await call_until(url, "increment", 1) == 9
    assert failover < 10, failover


async def test_schedules_fire_exactly_once_cluster_wide(cluster: Cluster) -> None:
    cluster.add_host("h0")
    h1 = cluster.add_host("h1")
    g = cluster.add_gateway(min_hosts=2)
    by_owner = names_by_owner(["h0", "h1"], per_host=4)
    names = [n for ns in by_owner.values() for n in ns]
    for name in names:
        async with Client.connect(g.ws_url("room", name)) as c:
            for k in range(3):
                await c.call("plan", 1.5 + 0.2 * k, f"{name}/{k}")
    # one host crashes before the schedules are due; its agents' alarms go to the other
    h1.kill()
    expected = {f"{n}/{k}" for n in names for k in range(3)}
    deadline = time.monotonic() + 60
    while True:
        seen: list[str] = []
        for name in names:
            rows = await call_until(g.ws_url("room", name), "fired")
            seen += [r["payload"] for r in rows]  # type: ignore[union-attr]
        if set(seen) >= expected or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    await asyncio.sleep(2.0)  # duplicates would show up now
    seen = []
    for name in names:
        rows = await call_until(g.ws_url("room", name), "fired")
        seen += [r["payload"] for r in rows]  # type: ignore[union-attr]
        assert await call_until(g.ws_url("room", name), "pending") == 0
    assert Counter(seen) == Counter(expected)  # every schedule exactly once


def test_gateway_health_without_hosts_is_503(cluster: Cluster, postgres_url: str) -> None:
    cluster.add_host("h0")
    g = cluster.add_gateway(min_hosts=1)
    cluster.hosts["h0"].stop()  # a clean stop deregisters at once
    deadline = time.monotonic() + 15
    while g.health().get("ok") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert g.health().get("ok") is False
    req = urllib.request.Request(f"{g.http_url}/agents/room/x")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 503
