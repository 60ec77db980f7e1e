"""A small Python voice-protocol client for tests: records every frame, waits with bounds."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import websockets

TIMEOUT = 15.0


class VoiceTestClient:
    def __init__(self, url: str) -> None:
        self.url = url
        self.messages: list[dict[str, Any]] = []
        self.audio: list[bytes] = []
        self.events: list[tuple[str, Any]] = []  # ("json", msg) / ("audio", n_bytes) in order
        self._ws: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self.closed: tuple[int, str] | None = None

    async def __aenter__(self) -> VoiceTestClient:
        self._ws = await websockets.connect(self.url, max_size=None)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._ws.close()
        if self._reader:
            self._reader.cancel()

    async def _read(self) -> None:
        try:
            async for frame in self._ws:
                if isinstance(frame, bytes):
                    self.audio.append(frame)
                    self.events.append(("audio", len(frame)))
                else:
                    msg = json.loads(frame)
                    self.messages.append(msg)
                    self.events.append(("json", msg))
                self._changed.set()
        except websockets.ConnectionClosed as exc:
            self.closed = (exc.code, exc.reason)
        finally:
            if self.closed is None and self._ws.close_code is not None:
                self.closed = (self._ws.close_code, self._ws.close_reason or "")
            self._changed.set()

    async def send(self, msg: dict[str, Any]) -> None:
        await self._ws.send(json.dumps(msg))

    async def send_audio(self, pcm: bytes) -> None:
        await self._ws.send(pcm)

    async def stream_audio(self, pcm: bytes, *, chunk_ms: int = 20, realtime: float = 0.0) -> None:
        """Send PCM16 16 kHz in `chunk_ms` frames; `realtime` = fraction of real-time pacing."""
        step = 16 * chunk_ms * 2
        for i in range(0, len(pcm), step):
            await self._ws.send(pcm[i : i + step])
            if realtime:
                await asyncio.sleep(chunk_ms / 1000 * realtime)

    async def wait_for(
        self, pred: Callable[[dict[str, Any]], bool], *, start: int = 0, within: float = TIMEOUT
    ) -> dict[str, Any]:
        """First message at index ≥ `start` satisfying `pred`."""
        async with asyncio.timeout(within):
            while True:
                for msg in self.messages[start:]:
                    if pred(msg):
                        return msg
                if self.closed is not None:
                    raise AssertionError(f"closed {self.closed} while waiting; got {self.types()}")
                self._changed.clear()
                await self._changed.wait()

    async def wait_type(self, kind: str, *, start: int = 0, **fields: Any) -> dict[str, Any]:
        return await self.wait_for(
            lambda m: m.get("type") == kind and all(m.get(k) == v for k, v in fields.items()),
            start=start,
        )

    async def rpc(self, method: str, *args: Any) -> Any:
        rid = f"r{len(self.messages)}-{method}"
        start = len(self.messages)
        await self.send({"type": "rpc", "id": rid, "method": method, "args": list(args)})
        msg = await self.wait_for(lambda m: m.get("type") == "rpc" and m.get("id") == rid
                                  and m.get("done", True), start=start)
        assert msg["success"], msg
        return msg["result"]

    def types(self, start: int = 0) -> list[str]:
        return [m.get("type", "?") + (f":{m['status']}" if m.get("type") == "status" else "")
                for m in self.messages[start:]]
