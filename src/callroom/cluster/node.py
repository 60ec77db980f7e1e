"""A host process's part in the cluster: register and heartbeat, follow membership, tell the
storage backend which alarms are ours (hashing), and hand over agents that hash elsewhere
after a membership change (close their clients with 1012 so they reconnect to the owner,
then release the agent's fence)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette

from callroom.cluster.membership import Membership, Registration
from callroom.host import AgentHost

log = logging.getLogger("callroom.cluster")

STABLE_SECONDS = 2.0
"""Membership must be unchanged this long before agents are handed over (no flapping)."""


class ClusterNode:
    def __init__(
        self,
        host: AgentHost,
        storage_url: str,
        host_id: str,
        url: str,
        *,
        meta: dict[str, Any] | None = None,
        rebalance: bool = True,
    ) -> None:
        self.host = host
        self.host_id = host_id
        self.url = url
        self.membership = Membership(storage_url)
        self.registration = Registration(storage_url, host_id, url, meta=meta)
        self.rebalance = rebalance
        self._tasks: list[asyncio.Task[None]] = []
        self._view: tuple[str, ...] = ()
        self._view_since = time.monotonic()
        self.handed_over = 0

    def owns(self, agent: str, name: str) -> bool:
        """Whether this host is the agent's owner in its current view (itself included)."""
        ids = {h.id for h in self.membership.live()} | {self.host_id}
        from callroom.cluster.hashing import owner

        return owner(ids, agent, name) == self.host_id

    async def start(self) -> None:
        backend = self.host.backend
        if not backend.shared:
            raise RuntimeError(
                "a cluster host needs a shared store: set CALLROOM_STORAGE=postgresql://…"
            )
        await self.registration.register()
        await self.membership.refresh()
        backend.owns = self.owns
        self._tasks = [
            asyncio.create_task(self.registration.run(), name="callroom-heartbeat"),
            asyncio.create_task(self.membership.run(), name="callroom-membership"),
        ]
        if self.rebalance:
            self._tasks.append(
                asyncio.create_task(self._rebalance_loop(), name="callroom-rebalance")
            )

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.registration.leave()
        await self.membership.close()

    async def _rebalance_loop(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            view = tuple(sorted(h.id for h in self.membership.live()))
            now = time.monotonic()
            if view != self._view:
                self._view, self._view_since = view, now
                continue
            if now - self._view_since < STABLE_SECONDS or not self.host.accepting:
                continue
            try:
                await self.hand_over_strays()
            except Exception:
                log.exception("rebalancing failed")

    async def hand_over_strays(self) -> int:
        """Release every agent (live or just connected) that hashes to another host."""
        strays = [key for key in list(self.host._slots) if not self.owns(*key)]
        done = 0
        for segment, name in strays:
            if await self.host.release(segment, name, reason="agent moved to another host"):
                done += 1
                log.info("handed %s/%s over to its owner", segment, name)
        self.handed_over += done
        return done


def attach(app: Starlette, node_factory: Callable[[AgentHost], ClusterNode]) -> None:
    """Run a ClusterNode inside the app's lifespan (after the AgentHost started, before it
    stops)."""
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: Starlette) -> AsyncIterator[Any]:
        async with inner(a) as state:
            node = node_factory(a.state.host)
            await node.start()
            a.state.cluster_node = node
            try:
                yield state
            finally:
                with contextlib.suppress(Exception):
                    await node.stop()

    app.router.lifespan_context = lifespan
