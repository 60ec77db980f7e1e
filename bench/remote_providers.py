"""Remote STT and TTS for the density benchmarks: providers, and the fake server they call.

The providers implement callroom's protocols (`callroom.providers.base`) against a remote
speech service over WebSocket, the transport the streaming speech APIs use (Deepgram,
ElevenLabs, Cartesia, …). One process keeps a few persistent connections (`--mux`, default
8) and multiplexes every call's requests over them by request id, so the per-request cost is
one WebSocket message each way, not an HTTP exchange:

- `RemoteSTT` / `RemoteSTTStream`: batch transcription of an utterance (binary
  `[u32 id][0x00][16 kHz PCM16]` → text `{"id", "text"}`). The stream buffers what the
  pipeline pushes; `pause()` sends everything since the start of the utterance in the
  background (one request in flight per call; pauses meanwhile fold into the next one);
  `settled()` waits for it; `finish()` reuses the last result when it covers the utterance
  up to its last pause (the pipeline ends a turn only after silence, so what follows is
  silence), else sends the whole utterance once.
- `RemoteTTS`: streamed synthesis (binary `[u32 id][0x01][utf-8 text]` → binary
  `[u32 id][PCM16 at sample_rate]` chunks, then text `{"id", "done": true}`); `synthesize()`
  yields int16 chunks as they arrive.

Why not HTTP: measured with httpx 0.28 / httpcore 1.0.9 on the 2-core box, one POST costs
~1.4 ms of client CPU with 10 requests in flight, ~4.3 ms with 40 and ~6.2 ms with 150 (the
connection pool rescans every connection and queued request on each event), which would
make the benchmark measure httpx instead of callroom. callroom's own LLM provider is httpx
(`OpenAICompatLLM`) and is used as is: its cost is part of what the density bench measures.

The fake server (`python bench/remote_providers.py --port N`) answers after fixed delays:
`--stt-delay-ms` (default 50) for a transcript (always `--stt-text`); `--tts-delay-ms`
(default 50) before the first audio chunk, then 100 ms chunks every `--tts-chunk-ms`
(default 5 ms, i.e. 20× real time) for `--tts-ms-per-char` (default 65 ms) of audio per
character. `GET /healthz` answers when it is up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import struct
import threading
from collections.abc import AsyncIterator, Sequence
from typing import Any

import numpy as np

from callroom.providers.base import INPUT_RATE, Float32, Int16, VoiceProviders

STT_TEXT = "When is my next appointment?"
TTS_RATE = 22_050
_HEAD = struct.Struct("<IB")
_ID = struct.Struct("<I")
KIND_STT, KIND_TTS = 0, 1


# -- the multiplexed connections (one set per process and event loop) ----------------------------
class _Mux:
    """A few persistent WebSockets to the speech server; requests are matched by id."""

    def __init__(self, url: str, size: int) -> None:
        self.url, self.size = url, size
        self._conns: list[Any] = []
        self._readers: list[asyncio.Task[None]] = []
        self._lock = asyncio.Lock()
        self._ids = itertools.count(1)
        self._rr = itertools.count()
        self._waiters: dict[int, asyncio.Queue[Any]] = {}

    async def _connection(self) -> Any:
        if len(self._conns) < self.size:
            async with self._lock:
                if len(self._conns) < self.size:
                    import websockets

                    ws = await websockets.connect(
                        self.url, max_size=None, compression=None, ping_interval=None
                    )
                    self._conns.append(ws)
                    self._readers.append(asyncio.ensure_future(self._read(ws)))
                    return ws
        return self._conns[next(self._rr) % len(self._conns)]

    async def _read(self, ws: Any) -> None:
        try:
            async for frame in ws:
                if isinstance(frame, bytes):
                    (rid,) = _ID.unpack_from(frame)
                    item: Any = frame[_ID.size :]
                else:
                    item = json.loads(frame)
                    rid = item["id"]
                queue = self._waiters.get(rid)
                if queue is not None:
                    queue.put_nowait(item)
        finally:
            with contextlib.suppress(ValueError):
                self._conns.remove(ws)
            for queue in self._waiters.values():
                queue.put_nowait(ConnectionError("speech server connection closed"))

    async def request(self, kind: int, payload: bytes) -> tuple[int, asyncio.Queue[Any]]:
        rid = next(self._ids)
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self._waiters[rid] = queue
        ws = await self._connection()
        await ws.send(_HEAD.pack(rid, kind) + payload)
        return rid, queue

    def done(self, rid: int) -> None:
        self._waiters.pop(rid, None)


_muxes: dict[tuple[int, str], _Mux] = {}
_mux_lock = threading.Lock()


def _mux(url: str, size: int) -> _Mux:
    key = (id(asyncio.get_running_loop()), url)
    with _mux_lock:
        mux = _muxes.get(key)
        if mux is None:
            mux = _muxes[key] = _Mux(url, size)
        return mux


async def _item(queue: asyncio.Queue[Any]) -> Any:
    item = await queue.get()
    if isinstance(item, Exception):
        raise item
    return item


# -- STT ------------------------------------------------------------------------------------------
class RemoteSTT:
    """The `STT` provider: one utterance per request."""

    sample_rate: int = INPUT_RATE

    def __init__(self, url: str, *, mux: int = 8) -> None:
        self.url, self.mux = url, mux

    async def transcribe(self, audio: Float32) -> str:
        if not len(audio):
            return ""
        pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()
        mux = _mux(self.url, self.mux)
        rid, queue = await mux.request(KIND_STT, pcm)
        try:
            return str((await _item(queue)).get("text", ""))
        finally:
            mux.done(rid)

    def stream(self) -> RemoteSTTStream:
        return RemoteSTTStream(self)


class RemoteSTTStream:
    """One utterance; see the module docstring. All state lives on the event loop."""

    def __init__(self, stt: RemoteSTT) -> None:
        self._stt = stt
        self.reset()

    def push(self, audio: Float32) -> None:
        self._chunks.append(audio)
        self._size += len(audio)

    def _audio(self, end: int) -> Float32:
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)
        if len(self._chunks) > 1:
            self._chunks = [audio]
        return audio[:end]

    def pause(self) -> None:
        self._want = self._size
        self._kick()

    def _kick(self) -> None:
        if self._job is not None or self._want <= max(self._done_end, 0):
            return
        end = self._want
        self._job_end = end
        self._job = asyncio.ensure_future(self._stt.transcribe(self._audio(end)))
        self._job.add_done_callback(self._on_done)

    def _on_done(self, job: asyncio.Task[str]) -> None:
        if job is not self._job:
            return
        self._job = None
        if job.cancelled():
            return
        # A failed request counts as an empty transcript (no retry loop against a dead server).
        self._text = job.result() if job.exception() is None else ""
        self._done_end = self._job_end
        self._kick()

    def interim(self) -> str:
        return self._text

    async def _wait_job(self) -> None:
        job = self._job
        if job is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(job)
            await asyncio.sleep(0)  # let its done callback run first

    async def settled(self) -> str:
        target = self._want
        while self._done_end < target and self._job is not None:
            await self._wait_job()
        return self._text

    async def finish(self) -> str:
        while self._job is not None:
            await self._wait_job()
        if self._done_end <= 0:
            text = await self._stt.transcribe(self._audio(self._size))
        else:
            text = self._text
        self.reset()
        return text

    def reset(self) -> None:
        job = getattr(self, "_job", None)
        if job is not None:
            job.cancel()
        self._job: asyncio.Task[str] | None = None
        self._chunks: list[Float32] = []
        self._size = self._want = self._job_end = 0
        self._done_end = -1
        self._text = ""


# -- TTS ------------------------------------------------------------------------------------------
class RemoteTTS:
    """The `TTS` provider: streamed synthesis (raw PCM16 at `sample_rate`)."""

    def __init__(self, url: str, sample_rate: int = TTS_RATE, *, mux: int = 8) -> None:
        self.url, self.sample_rate, self.mux = url, sample_rate, mux

    async def synthesize(self, text: str) -> AsyncIterator[Int16]:
        mux = _mux(self.url, self.mux)
        rid, queue = await mux.request(KIND_TTS, text.encode())
        try:
            while True:
                item = await _item(queue)
                if isinstance(item, dict):
                    return
                yield np.frombuffer(item, dtype="<i2")
        finally:
            mux.done(rid)


# -- an experiment: Silero behind an energy gate --------------------------------------------------
class GatedVAD:
    """Silero, skipped on frames quieter than `floor_dbfs` (RMS): they get probability 0 and
    the model's state is reset once per quiet run, so speech after it starts from a clean
    state. A proposal measured by `bench/density.py --vad gated`, not callroom's default."""

    def __init__(self, floor_dbfs: float = -60.0) -> None:
        from callroom.providers.local.silero import SileroVAD

        self._silero = SileroVAD()
        self.frame_samples = self._silero.frame_samples
        self._floor = (10 ** (floor_dbfs / 20)) ** 2 * 512  # sum of squares of a 512 frame

    def stream(self) -> GatedStream:
        return GatedStream(self._silero.stream(), self._floor)


class GatedStream:
    def __init__(self, inner: Any, floor: float) -> None:
        self._inner, self._floor = inner, floor
        self.frame_samples = inner.frame_samples
        self._quiet = False
        self.skipped = 0

    def process(self, frame: Float32) -> float:
        if float(np.dot(frame, frame)) < self._floor:
            if not self._quiet:
                self._quiet = True
                self._inner.reset()
            self.skipped += 1
            return 0.0
        self._quiet = False
        return float(self._inner.process(frame))

    def reset(self) -> None:
        self._inner.reset()
        self._quiet = False


def remote_providers(url: str, *, mux: int = 8, vad: str = "silero") -> VoiceProviders:
    """Silero VAD (embedded: it runs per frame; `vad="gated"`: behind an energy gate) + remote
    STT and TTS at `url` (ws://…/speech); no end-of-turn model (the transcript's completeness
    decides, see callroom.voice.turns)."""
    from callroom.providers.local.silero import SileroVAD

    return VoiceProviders(
        vad=GatedVAD() if vad == "gated" else SileroVAD(),
        stt=RemoteSTT(url, mux=mux),
        tts=RemoteTTS(url, mux=mux),
    )


# -- the fake server ------------------------------------------------------------------------------
def make_app(
    *,
    stt_delay_ms: float,
    stt_text: str,
    tts_delay_ms: float,
    tts_chunk_ms: float,
    tts_ms_per_char: float,
    rate: int = TTS_RATE,
) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    chunk_samples = rate // 10  # 100 ms
    t = np.arange(chunk_samples) / rate
    tone = (0.1 * 32767 * np.sin(2 * np.pi * 220 * t)).astype("<i2").tobytes()
    counts = {"stt": 0, "tts": 0, "connections": 0}

    async def speech(ws: WebSocket) -> None:
        await ws.accept()
        counts["connections"] += 1
        send_lock = asyncio.Lock()
        tasks: set[asyncio.Task[None]] = set()

        async def send_bytes(data: bytes) -> None:
            async with send_lock:
                await ws.send_bytes(data)

        async def send_json(msg: dict[str, Any]) -> None:
            async with send_lock:
                await ws.send_text(json.dumps(msg))

        async def stt(rid: int) -> None:
            await asyncio.sleep(stt_delay_ms / 1000)
            counts["stt"] += 1
            await send_json({"id": rid, "text": stt_text})

        async def tts(rid: int, text: str) -> None:
            counts["tts"] += 1
            chunks = max(1, round(len(text) * tts_ms_per_char / 100))
            await asyncio.sleep(tts_delay_ms / 1000)
            head = _ID.pack(rid)
            for i in range(chunks):
                if i:
                    await asyncio.sleep(tts_chunk_ms / 1000)
                await send_bytes(head + tone)
            await send_json({"id": rid, "done": True})

        try:
            while True:
                data = await ws.receive_bytes()
                rid, kind = _HEAD.unpack_from(data)
                body = data[_HEAD.size :]
                coro = stt(rid) if kind == KIND_STT else tts(rid, body.decode())
                task = asyncio.ensure_future(coro)
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        except WebSocketDisconnect:
            pass
        finally:
            for task in list(tasks):
                task.cancel()

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True, **counts})

    return Starlette(routes=[WebSocketRoute("/speech", speech), Route("/healthz", health)])


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--stt-delay-ms", type=float, default=50.0)
    p.add_argument("--stt-text", default=STT_TEXT)
    p.add_argument("--tts-delay-ms", type=float, default=50.0)
    p.add_argument("--tts-chunk-ms", type=float, default=5.0)
    p.add_argument("--tts-ms-per-char", type=float, default=65.0)
    args = p.parse_args(argv)
    import uvicorn

    app = make_app(
        stt_delay_ms=args.stt_delay_ms,
        stt_text=args.stt_text,
        tts_delay_ms=args.tts_delay_ms,
        tts_chunk_ms=args.tts_chunk_ms,
        tts_ms_per_char=args.tts_ms_per_char,
    )
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        backlog=4096,
        ws_max_size=64 << 20,
        ws_ping_interval=None,
    )


if __name__ == "__main__":
    main()
