"""One client WebSocket as the agent sees it: send, close, a persisted per-connection state.

Outbound frames go through a bounded queue drained by one writer task, so a handler never
blocks on a slow client and a client that stops reading cannot grow server memory without
bound: when the queue holds `max_queue` frames or `max_bytes` bytes the connection is closed
with 1013 and a reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from starlette.websockets import WebSocket, WebSocketState

from callroom.protocol import core

if TYPE_CHECKING:
    from callroom.storage import AgentStorage

log = logging.getLogger("callroom.connection")

CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_OVERLOADED = 1013


class Connection:
    """A client connection. Survives hibernation of its agent (the socket stays open)."""

    def __init__(
        self,
        websocket: WebSocket,
        conn_id: str,
        *,
        readonly: bool = False,
        max_queue: int = 512,
        max_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self.websocket = websocket
        self.id = conn_id
        self.readonly = readonly
        self.query: dict[str, str] = dict(websocket.query_params)
        self._queue: asyncio.Queue[str | bytes | None] = asyncio.Queue(max_queue)
        self._max_bytes = max_bytes
        self._queued_bytes = 0
        self._drained = asyncio.Event()
        self._drained.set()
        self._stalled = False
        self._writer: asyncio.Task[None] | None = None
        self._storage: AgentStorage | None = None
        self._state_cache: Any = None
        self._state_loaded = False
        self.closed = False
        self.keep_attachment = False
        self.close_code: int | None = None

    # -- lifecycle (owned by the server) ------------------------------------------------------
    def start(self) -> None:
        self._writer = asyncio.create_task(self._write_loop(), name=f"ws-writer-{self.id}")

    async def _write_loop(self) -> None:
        ws = self.websocket
        try:
            while True:
                item = await self._queue.get()
                if item is None:
                    return
                self._dequeued(item)
                if isinstance(item, bytes):
                    await ws.send_bytes(item)
                else:
                    await ws.send_text(item)
        except Exception:  # the socket went away; the reader notices and cleans up
            self.closed = True
        finally:
            self._drained.set()  # nobody waits for a writer that is gone

    def _dequeued(self, item: Any) -> None:
        self._queued_bytes -= _size(item)
        if not self._drained.is_set() and not self.congested:
            self._drained.set()

    @property
    def congested(self) -> bool:
        """Half of the send queue's bound (frames or bytes) is waiting to be written."""
        q = self._queue
        return q.qsize() * 2 >= q.maxsize or self._queued_bytes * 2 >= self._max_bytes

    async def wait_drained(self, limit: float = 10.0) -> None:
        """Pace bulk output (speech audio, produced faster than real time): wait while the
        send queue is half full, so a slow but reading client is paced instead of overflowing.
        A client that takes nothing for `limit` seconds is not reading: waits stop for good,
        and the overflow closes it (1013)."""
        if self.closed or self._stalled or not self.congested:
            return
        self._drained.clear()
        try:
            async with asyncio.timeout(limit):
                await self._drained.wait()
        except TimeoutError:
            self._stalled = True
            log.warning("connection %s: client read nothing for %gs", self.id, limit)

    async def aclose_writer(self) -> None:
        """Flush what is queued (bounded) and stop the writer task."""
        if self._writer is None:
            return
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)
        try:
            await asyncio.wait_for(asyncio.shield(self._writer), 2.0)
        except (TimeoutError, asyncio.CancelledError):
            self._writer.cancel()
        self._writer = None

    def bind_storage(self, storage: AgentStorage | None) -> None:
        """Point the connection at its agent's (re)opened storage; drop cached state."""
        self._storage = storage
        self._state_loaded = False
        self._state_cache = None

    # -- what agents use ----------------------------------------------------------------------
    def send(self, data: str | bytes) -> None:
        """Queue one frame. Never blocks; closes a connection that stopped reading."""
        if self.closed:
            return
        size = _size(data)
        try:
            if self._queued_bytes + size > self._max_bytes and not self._queue.empty():
                raise asyncio.QueueFull
            self._queue.put_nowait(data)
            self._queued_bytes += size
        except asyncio.QueueFull:
            log.warning("connection %s: send queue full, closing", self.id)
            self.closed = True
            self._drain_queue()
            asyncio.get_running_loop().create_task(
                self._close_now(CLOSE_OVERLOADED, "send queue overflow: client not reading")
            )

    def discard_pending_audio(self) -> int:
        """Drop binary frames queued but not yet written (barge-in: stop audio now)."""
        kept: list[str | bytes | None] = []
        dropped = 0
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if isinstance(item, bytes):
                dropped += 1
            else:
                kept.append(item)
        for item in kept:
            self._queue.put_nowait(item)
        self._queued_bytes = sum(_size(i) for i in kept)
        if not self.congested:
            self._drained.set()
        return dropped

    def send_json(self, message: dict[str, Any]) -> None:
        self.send(core.dumps(message))

    def _drain_queue(self) -> None:
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queued_bytes = 0

    async def _close_now(self, code: int, reason: str) -> None:
        self._drained.set()
        if self._writer is not None:
            self._writer.cancel()
        with contextlib.suppress(Exception):
            if self.websocket.application_state == WebSocketState.CONNECTED:
                await self.websocket.close(code, reason[:120])

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close after what is already queued has been sent."""
        if self.close_code is None:
            self.close_code = code
        await self.aclose_writer()
        self.closed = True
        with contextlib.suppress(Exception):
            if self.websocket.application_state == WebSocketState.CONNECTED:
                await self.websocket.close(code, reason[:120])

    @property
    def state(self) -> Any:
        """Per-connection state (Cloudflare's `connection.state`), persisted with the agent."""
        if not self._state_loaded and self._storage is not None:
            self._state_cache = self._storage.get_attachment(self.id)
            self._state_loaded = True
        return self._state_cache

    def set_state(self, value: Any) -> None:
        if self._storage is not None:
            self._storage.put_attachment(self.id, value)
        self._state_cache = value
        self._state_loaded = True

    def __repr__(self) -> str:
        return f"<Connection {self.id}>"


def _size(item: Any) -> int:
    """Approximate bytes of one queued item (a frame, or a batch of frames on Twilio)."""
    if item is None:
        return 0
    if isinstance(item, str | bytes):
        return len(item)
    return sum(len(x) for x in item)
