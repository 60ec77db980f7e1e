"""AgentHost: (class, name) → live agent; hibernation, alarms, owned tasks, drain.

Connections are held here, not in the agent, so an agent can be dropped from memory
(hibernated) while its clients stay connected; the next message rehydrates it from storage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from callroom.agent import Agent
from callroom.config import Settings
from callroom.connection import CLOSE_GOING_AWAY, Connection
from callroom.errors import UnknownAgentClass
from callroom.protocol.names import validate_agent_name
from callroom.storage import AgentStore, AlarmIndex, StorageBackend, open_backend

log = logging.getLogger("callroom.host")

Key = tuple[str, str]


class _Slot:
    """Bookkeeping for one (class, name), alive or hibernated."""

    __slots__ = ("agent", "busy", "connections", "last_active", "tasks", "waking")

    def __init__(self) -> None:
        self.agent: Agent | None = None
        self.connections: dict[str, Connection] = {}
        self.busy = 0
        self.last_active = time.monotonic()
        self.waking: asyncio.Lock = asyncio.Lock()
        self.tasks: set[asyncio.Task[Any]] = set()


class AgentHost:
    """Owns every agent of one process."""

    def __init__(self, classes: Iterable[type[Agent]], settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.classes: dict[str, type[Agent]] = {}
        for cls in classes:
            seg = cls.url_segment()
            if seg in self.classes and self.classes[seg] is not cls:
                raise ValueError(f"two agent classes map to /agents/{seg}")
            self.classes[seg] = cls
        self._slots: dict[Key, _Slot] = {}
        self._backend: StorageBackend | None = None
        self._index: AlarmIndex | None = None
        self._alarm_event = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self.wake_times: list[float] = []
        self.accepting = True
        self.active_calls = 0

    # -- start / stop -------------------------------------------------------------------------
    @property
    def backend(self) -> StorageBackend:
        """The storage backend (`CALLROOM_STORAGE`; SQLite in the data dir by default)."""
        if self._backend is None:
            self._backend = open_backend(self.settings.storage, self.settings.data_dir)
        return self._backend

    async def start(self) -> None:
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self._index = self.backend.alarm_index()
        for cls in self.classes.values():
            await cls.on_host_start()
        self._alarm_event = asyncio.Event()
        self._loops = [
            asyncio.create_task(self._alarm_loop(), name="callroom-alarms"),
            asyncio.create_task(self._idle_loop(), name="callroom-idle"),
        ]

    async def drain(self) -> None:
        """Stop accepting, let in-flight handlers and voice turns finish (bounded by
        `shutdown_grace_seconds`), close clients with 1001."""
        self.accepting = False
        deadline = time.monotonic() + self.settings.shutdown_grace_seconds
        while self._in_flight() and time.monotonic() < deadline:  # noqa: ASYNC110 (bounded poll at shutdown)
            await asyncio.sleep(0.02)
        conns = [c for s in self._slots.values() for c in s.connections.values()]
        await asyncio.gather(
            *(c.close(CLOSE_GOING_AWAY, "server going away") for c in conns),
            return_exceptions=True,
        )

    def _in_flight(self) -> bool:
        return any(
            s.busy or (s.agent is not None and s.agent._in_flight()) for s in self._slots.values()
        )

    async def stop(self) -> None:
        await self.drain()
        for task in self._loops:
            task.cancel()
        for slot in list(self._slots.values()):
            for task in list(slot.tasks):
                task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        storages = [st for key in list(self._slots) if (st := self._evict(key)) is not None]
        _close_all(storages)
        self._index = None
        if self._backend is not None:
            self._backend.close()  # closes its alarm index too
            self._backend = None

    # -- lookup -------------------------------------------------------------------------------
    def resolve(self, segment: str, name: str) -> type[Agent]:
        validate_agent_name(name)
        cls = self.classes.get(segment)
        if cls is None:
            raise UnknownAgentClass(f"no agent class is served at /agents/{segment}")
        return cls

    def _slot(self, key: Key) -> _Slot:
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = _Slot()
        return slot

    async def get(self, segment: str, name: str) -> Agent:
        """The live agent, created or woken (with `on_start`) if needed."""
        cls = self.resolve(segment, name)
        key = (segment, name)
        slot = self._slot(key)
        slot.last_active = time.monotonic()
        if slot.agent is not None:
            return slot.agent
        async with slot.waking:
            if slot.agent is not None:
                return slot.agent
            t0 = time.perf_counter()
            storage = self.backend.open_agent(segment, name)
            agent = cls(name, host=self, storage=storage, env=self.settings)
            agent._key = key  # type: ignore[attr-defined]
            for conn in slot.connections.values():
                conn.bind_storage(storage)
            _forget_departed(storage, slot.connections)
            slot.busy += 1
            try:
                await agent.on_start()
            except BaseException:
                slot.busy -= 1
                storage.close()
                raise
            slot.busy -= 1
            slot.agent = agent
            self.wake_times.append(time.perf_counter() - t0)
            if len(self.wake_times) > 10_000:
                del self.wake_times[:5_000]
            # Missed alarms fire as soon as the agent is back.
            agent._sync_alarm()
            return agent

    def is_live(self, segment: str, name: str) -> bool:
        slot = self._slots.get((segment, name))
        return slot is not None and slot.agent is not None

    async def release(
        self, segment: str, name: str, *, code: int = 1012, reason: str = "", wait: float = 5.0
    ) -> bool:
        """Hand an agent over to another process (cluster rebalancing): close its clients
        with `code` (1012 = service restart: they reconnect, to the new owner), wait for its
        handlers to finish (bounded by `wait`), then evict it and close its storage (which
        releases its fence on a shared store). Returns False if it was still busy."""
        key = (segment, name)
        slot = self._slots.get(key)
        if slot is None:
            return True
        await asyncio.gather(
            *(c.close(code, reason) for c in list(slot.connections.values())),
            return_exceptions=True,
        )
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            slot = self._slots.get(key)
            if slot is None or slot.agent is None:
                return True
            if not (slot.busy or slot.tasks or slot.waking.locked() or slot.agent.is_busy()):
                break
            await asyncio.sleep(0.02)
        else:
            return False
        storage = self._evict(key)
        if storage is not None:
            await asyncio.to_thread(_close_all, [storage])
        return True

    @property
    def live_count(self) -> int:
        return sum(1 for s in self._slots.values() if s.agent is not None)

    @property
    def connection_count(self) -> int:
        return sum(len(s.connections) for s in self._slots.values())

    # -- activity -----------------------------------------------------------------------------
    @contextmanager
    def activity(self, agent: Agent) -> Iterator[None]:
        """Mark the agent busy (no hibernation) while a handler runs."""
        slot = self._slot(agent._key)  # type: ignore[attr-defined]
        slot.busy += 1
        try:
            yield
        finally:
            slot.busy -= 1
            slot.last_active = time.monotonic()

    def spawn(self, agent: Agent, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """A task owned by the agent: tracked, errors reported, cancelled with the host."""
        slot = self._slot(agent._key)  # type: ignore[attr-defined]

        async def run() -> Any:
            with self.activity(agent):
                try:
                    return await coro
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    await agent.on_error(exc)

        task = asyncio.create_task(run(), name=f"{agent.url_segment()}/{agent.name}:{name}")
        slot.tasks.add(task)
        task.add_done_callback(slot.tasks.discard)
        return task

    # -- connections --------------------------------------------------------------------------
    def add_connection(self, segment: str, name: str, conn: Connection) -> None:
        slot = self._slot((segment, name))
        slot.connections[conn.id] = conn
        if slot.agent is not None:
            conn.bind_storage(slot.agent._storage)

    def remove_connection(self, segment: str, name: str, conn: Connection) -> None:
        slot = self._slots.get((segment, name))
        if slot is None:
            return
        slot.connections.pop(conn.id, None)
        if slot.agent is None and not slot.connections and not slot.busy and not slot.tasks:
            del self._slots[(segment, name)]

    def connections_of(self, agent: Agent) -> list[Connection]:
        slot = self._slots.get(agent._key)  # type: ignore[attr-defined]
        return list(slot.connections.values()) if slot else []

    # -- hibernation --------------------------------------------------------------------------
    def _evict(self, key: Key) -> AgentStore | None:
        """Forget the agent; returns its storage for the caller to close (closing may
        checkpoint the WAL with disk syncs, which must not stall the event loop)."""
        slot = self._slots.get(key)
        if slot is None or slot.agent is None:
            return None
        agent = slot.agent
        slot.agent = None
        for conn in slot.connections.values():
            conn.bind_storage(None)
        if not slot.connections and not slot.tasks:
            del self._slots[key]
        return agent._storage

    def hibernate_idle(self, now: float | None = None) -> list[AgentStore]:
        """Drop every idle agent from memory; returns their storages, still to be closed."""
        now = time.monotonic() if now is None else now
        limit = self.settings.idle_seconds
        dropped: list[AgentStore] = []
        for key, slot in list(self._slots.items()):
            agent = slot.agent
            if agent is None or slot.busy or slot.tasks or slot.waking.locked():
                continue
            if now - slot.last_active < limit or agent.is_busy():
                continue
            storage = self._evict(key)
            if storage is not None:
                dropped.append(storage)
        return dropped

    async def hibernate_idle_async(self, now: float | None = None) -> int:
        """One sweep: evict idle agents, close their databases off the loop, give the freed
        memory back to the OS (glibc keeps it otherwise: ~150 KB per agent vs ~8 KB)."""
        storages = self.hibernate_idle(now)
        if storages:
            await asyncio.to_thread(_close_all, storages)
        return len(storages)

    async def _idle_loop(self) -> None:
        period = max(0.05, min(self.settings.idle_seconds / 4, 5.0))
        while True:
            await asyncio.sleep(period)
            try:
                await self.hibernate_idle_async()
            except Exception:
                log.exception("hibernation sweep failed")

    # -- alarms -------------------------------------------------------------------------------
    def set_alarm(self, agent: Agent, at: float | None) -> None:
        if self._index is None:
            return
        segment, name = agent._key  # type: ignore[attr-defined]
        self._index.set(segment, name, at)
        self._alarm_event.set()

    async def _alarm_loop(self) -> None:
        assert self._index is not None
        while True:
            self._alarm_event.clear()
            now = time.time()
            for segment, name in self._index.due(now):
                if segment not in self.classes:
                    log.warning("dropping alarm of unknown agent class %s", segment)
                    self._index.set(segment, name, None)
                    continue
                await self._fire(segment, name)
            nxt = self._index.next_time()
            timeout = 3600.0 if nxt is None else max(0.0, min(nxt - time.time(), 3600.0))
            if nxt is not None and nxt <= time.time():
                await asyncio.sleep(0.01)  # a failing alarm must not spin the loop
                continue
            # `asyncio.timeout`, not `wait_for`: on Python 3.11 `wait_for` swallows a
            # cancel that lands as the event fires, and `stop()` then waits forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._alarm_event.wait()

    async def _fire(self, segment: str, name: str) -> None:
        try:
            agent = await self.get(segment, name)
            with self.activity(agent):
                await agent._run_due_schedules()
        except Exception:
            log.exception("alarm of %s/%s failed", segment, name)
            # push it back so a broken agent does not hot-loop
            assert self._index is not None
            self._index.set(segment, name, time.time() + 5.0)


def _forget_departed(storage: AgentStore, connections: dict[str, Connection]) -> None:
    """Drop attachments of connections that closed while the agent hibernated, except those
    kept on purpose (a voice call cut mid-way, to resume on reconnect)."""
    rows = storage.sql("SELECT id, attachment FROM callroom_connections")
    for row in rows:
        if row["id"] in connections or '"call_id"' in row["attachment"]:
            continue
        storage.drop_attachment(row["id"])


def _close_all(storages: list[AgentStore]) -> None:
    for storage in storages:
        try:
            storage.close()
        except Exception:
            log.exception("closing %s failed", storage.path)
    _malloc_trim()


def _malloc_trim() -> None:
    """Return freed heap to the OS (glibc only; a no-op elsewhere)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
