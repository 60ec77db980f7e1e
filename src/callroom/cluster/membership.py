"""Cluster membership in the shared store: hosts register and heartbeat in `callroom.hosts`;
gateways and hosts read the live set (heartbeat younger than `ttl`, judged by the database's
own clock, so machines' clocks do not matter) about once a second and hash over it.

A gateway that cannot connect to a host suspects it at once (for `suspect_seconds`, or until
the host re-registers), so clients of a crashed host are re-routed before its heartbeat ages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from callroom.cluster.hashing import owner, ranking

log = logging.getLogger("callroom.cluster")

HEARTBEAT_SECONDS = 1.0
TTL_SECONDS = 4.0


@dataclass(frozen=True)
class HostInfo:
    id: str
    url: str  # http://ip:port of the host's own callroom server
    started: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def ws_url(self) -> str:
        return "ws" + self.url[len("http") :] if self.url.startswith("http") else self.url


async def _connect(url: str) -> Any:
    import psycopg
    from psycopg.rows import dict_row

    return await psycopg.AsyncConnection.connect(
        url, autocommit=True, row_factory=dict_row, connect_timeout=5, prepare_threshold=None
    )


class Membership:
    """The live hosts, refreshed from the store in the background (`run()`)."""

    def __init__(
        self,
        storage_url: str,
        *,
        ttl: float = TTL_SECONDS,
        refresh: float = HEARTBEAT_SECONDS,
        suspect_seconds: float = 5.0,
    ) -> None:
        self.storage_url = storage_url
        self.ttl = ttl
        self.refresh_seconds = refresh
        self.suspect_seconds = suspect_seconds
        self._hosts: dict[str, HostInfo] = {}
        self._suspects: dict[str, tuple[float, float]] = {}  # id → (until, started then)
        self._conn: Any = None
        self.changed = asyncio.Event()
        self.last_refresh = 0.0

    # -- reading ------------------------------------------------------------------------------
    def live(self) -> list[HostInfo]:
        now = time.monotonic()
        out = []
        for h in self._hosts.values():
            sus = self._suspects.get(h.id)
            if sus is not None and now < sus[0] and h.started <= sus[1]:
                continue
            out.append(h)
        return out

    def owner(self, agent: str, name: str) -> HostInfo | None:
        hosts = {h.id: h for h in self.live()}
        oid = owner(hosts, agent, name)
        return None if oid is None else hosts[oid]

    def ranked(self, agent: str, name: str) -> list[HostInfo]:
        hosts = {h.id: h for h in self.live()}
        return [hosts[i] for i in ranking(hosts, agent, name)]

    def suspect(self, host_id: str) -> None:
        """A connection to the host failed: route around it until it re-registers."""
        h = self._hosts.get(host_id)
        started = h.started if h else 0.0
        self._suspects[host_id] = (time.monotonic() + self.suspect_seconds, started)
        self.changed.set()

    # -- refreshing ---------------------------------------------------------------------------
    async def refresh(self) -> None:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = await _connect(self.storage_url)
        cur = await self._conn.execute(
            "SELECT id, url, started, meta FROM callroom.hosts "
            "WHERE heartbeat > now() - make_interval(secs => %s) ORDER BY id",
            [self.ttl],
        )
        rows = await cur.fetchall()
        hosts = {
            r["id"]: HostInfo(r["id"], r["url"], r["started"], json.loads(r["meta"] or "{}"))
            for r in rows
        }
        if hosts != self._hosts:
            log.info("cluster hosts: %s", ", ".join(f"{h.id}={h.url}" for h in hosts.values()))
            self._hosts = hosts
            self.changed.set()
        self.last_refresh = time.monotonic()

    async def run(self) -> None:
        """Refresh forever (cancel to stop); a store outage keeps the last known view."""
        while True:
            try:
                async with asyncio.timeout(max(5.0, self.refresh_seconds * 5)):
                    await self.refresh()
            except Exception as exc:
                log.warning("membership refresh failed: %s", exc)
                if self._conn is not None:
                    with contextlib.suppress(Exception):
                        await self._conn.close()
                    self._conn = None
            await asyncio.sleep(self.refresh_seconds)

    async def wait_for(self, count: int, limit: float = 30.0) -> list[HostInfo]:
        """Refresh until at least `count` hosts are live (bounded)."""
        deadline = time.monotonic() + limit
        while True:
            with contextlib.suppress(Exception):
                await self.refresh()
            hosts = self.live()
            if len(hosts) >= count:
                return hosts
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(hosts)} of {count} cluster hosts after {limit}s")
            await asyncio.sleep(0.2)

    async def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None


class Registration:
    """A host's row in `callroom.hosts`: inserted at start, heartbeat every second, deleted
    on a clean stop (so its agents move at once instead of after `ttl`)."""

    def __init__(
        self,
        storage_url: str,
        host_id: str,
        url: str,
        *,
        meta: dict[str, Any] | None = None,
        interval: float = HEARTBEAT_SECONDS,
    ) -> None:
        self.storage_url = storage_url
        self.host_id = host_id
        self.url = url
        self.meta = meta or {}
        self.interval = interval
        self.started = time.time()
        self._conn: Any = None

    async def _beat(self) -> None:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = await _connect(self.storage_url)
        await self._conn.execute(
            "INSERT INTO callroom.hosts (id, url, started, heartbeat, meta) "
            "VALUES (%s, %s, %s, now(), %s) ON CONFLICT (id) DO UPDATE SET url = excluded.url,"
            " started = excluded.started, heartbeat = now(), meta = excluded.meta",
            [self.host_id, self.url, self.started, json.dumps(self.meta)],
        )

    async def register(self) -> None:
        async with asyncio.timeout(15.0):
            await self._beat()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                async with asyncio.timeout(max(5.0, self.interval * 5)):
                    await self._beat()
            except Exception as exc:
                log.warning("heartbeat of %s failed: %s", self.host_id, exc)
                if self._conn is not None:
                    with contextlib.suppress(Exception):
                        await self._conn.close()
                    self._conn = None

    async def leave(self) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5.0):
                if self._conn is None or self._conn.closed:
                    self._conn = await _connect(self.storage_url)
                await self._conn.execute(
                    "DELETE FROM callroom.hosts WHERE id = %s AND started = %s",
                    [self.host_id, self.started],
                )
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None
