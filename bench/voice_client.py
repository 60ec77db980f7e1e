"""A reusable voice load client: plays WAV files at real-time pace and times the replies.

    .venv/bin/python bench/voice_client.py ws://127.0.0.1:8787/agents/my-voice/bench \\
        --wav question1.wav --wav question2.wav --turns 10 [--calls 4]

What it measures, per turn: **voice-to-voice latency** = wall time from the end of the last
voiced sample sent to the first reply audio byte received. The client behaves like a
microphone: audio leaves in 20 ms frames on an absolute schedule (frame k is sent when its
last sample would have been captured, `t0 + (k + 1) * 20 ms`; no drift from sleep jitter),
and after the question it keeps sending silence (a real microphone does not stop, and a
server whose turn-taking runs on audio time needs that silence to arrive). The end of speech
is found in the WAV (last 10 ms window louder than -40 dBFS), so

    t_end_of_speech = send_time(frame holding that sample) - (samples after it in the frame) / rate

i.e. the moment that sample was "spoken", not the moment its frame left. Between turns the
client waits until the reply has been *played* (its audio duration, counted from the first
byte, as a gapless player would) plus `--gap`, still sending silence, so the server never
sees a caller talking over its own reply.

The protocol-specific parts (connect, start a call, what a frame means) live in one small
adapter class, `CallroomVoiceProtocol` (callroom / Cloudflare `agents` voice protocol:
`start_call`, `audio_config`, binary PCM16 both ways, JSON events). Another server needs
another adapter with the same five methods; the pacing and timing code stays the same.

Also importable: `VoiceLoadClient(adapter).run_call(questions, turns)` returns `TurnResult`s,
and `run_load(make_adapter, questions, turns, calls)` runs several calls side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import wave
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

RATE = 16_000
FRAME_MS = 20
FRAME_SAMPLES = RATE * FRAME_MS // 1000
VOICED_DBFS = -40.0
"""A 10 ms window louder than this (RMS, re full scale) counts as voiced."""


# -- audio helpers --------------------------------------------------------------------------------
def read_wav(path: Path | str) -> np.ndarray:
    """Mono 16-bit WAV at 16 kHz as int16 (resampled with soxr if it has another rate)."""
    with wave.open(str(path), "rb") as w:
        if w.getnchannels() != 1 or w.getsampwidth() != 2:
            raise ValueError(f"{path}: expected mono 16-bit PCM")
        rate = w.getframerate()
        audio = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16)
    if rate != RATE:
        import soxr

        audio = np.asarray(soxr.resample(audio, rate, RATE), dtype=np.int16)
    return audio


def voiced_bounds(
    audio: np.ndarray, rate: int = RATE, dbfs: float = VOICED_DBFS
) -> tuple[int, int]:
    """(first, last) sample index of the voiced part: 10 ms windows with RMS above `dbfs`.

    `last` is the last sample of the last loud window (exclusive end - 1). Raises if silent.
    """
    x = np.asarray(audio, dtype=np.float32).reshape(-1) / 32768.0
    win = rate // 100
    n = len(x) // win
    if n == 0:
        raise ValueError("audio shorter than 10 ms")
    rms = np.sqrt(np.mean(x[: n * win].reshape(n, win) ** 2, axis=1) + 1e-12)
    loud = np.flatnonzero(20 * np.log10(rms) > dbfs)
    if not len(loud):
        raise ValueError("no voiced audio found")
    return int(loud[0]) * win, int(loud[-1] + 1) * win - 1


# -- protocol adapter -----------------------------------------------------------------------------
@dataclass
class Event:
    """What the client cares about in one incoming frame."""

    kind: str
    """`audio` (reply PCM), `metrics`, `user_transcript`, `reply_done`, `error`, `other`."""
    data: Any = None


class CallroomVoiceProtocol:
    """callroom's voice protocol (wire-compatible with the npm `agents` VoiceClient).

    Five methods are all the load client uses; a different server gets a different adapter.
    """

    def __init__(self, url: str, *, open_timeout: float = 30.0) -> None:
        self.url = url
        self.open_timeout = open_timeout
        self.output_rate = 0

    async def connect(self) -> Any:
        import websockets

        return await websockets.connect(
            self.url, max_size=None, open_timeout=self.open_timeout, compression=None
        )

    async def start_call(self, ws: Any) -> int:
        """Start a call; returns the sample rate of the audio the server will send."""
        timeout = self.open_timeout
        await ws.send(json.dumps({"type": "hello", "protocol_version": 1}))
        await ws.send(json.dumps({"type": "start_call", "preferred_format": "pcm16"}))
        listening = False
        async with asyncio.timeout(timeout):
            while not (self.output_rate and listening):
                frame = await ws.recv()
                if isinstance(frame, bytes):
                    continue
                msg = json.loads(frame)
                if msg.get("type") == "audio_config":
                    if msg.get("format") != "pcm16":
                        raise RuntimeError(f"unsupported output format {msg}")
                    self.output_rate = int(msg["sampleRate"])
                elif msg.get("type") == "status" and msg.get("status") == "listening":
                    listening = bool(self.output_rate)
                elif msg.get("type") == "error":
                    raise RuntimeError(f"start_call failed: {msg}")
        return self.output_rate

    def audio_frame(self, pcm16: bytes) -> bytes:
        """What to send for one 20 ms frame of 16 kHz PCM16 (here: the bytes as they are)."""
        return pcm16

    def parse(self, frame: str | bytes) -> Event:
        if isinstance(frame, bytes):
            return Event("audio", frame)
        msg = json.loads(frame)
        kind = msg.get("type")
        if kind == "metrics":
            return Event("metrics", msg)
        if kind == "transcript" and msg.get("role") == "user":
            return Event("user_transcript", msg.get("text", ""))
        if kind == "transcript_end":
            return Event("reply_done", msg.get("text", ""))
        if kind == "error":
            return Event("error", msg)
        return Event("other", msg)

    async def end_call(self, ws: Any) -> None:
        with contextlib.suppress(Exception):
            await ws.send(json.dumps({"type": "end_call"}))


# -- the client -----------------------------------------------------------------------------------
@dataclass
class TurnResult:
    question: str
    voice_to_voice_ms: float | None
    """End of the last voiced sample sent → first reply audio byte received (None: no audio)."""
    user_transcript: str | None = None
    reply_text: str | None = None
    reply_audio_s: float = 0.0
    server: dict[str, float] = field(default_factory=dict)
    """The server's own landmarks (`metrics.callroom`: eot_ms, stt_ms, … after last voice)."""
    user_turns: int = 0
    """User transcripts the server produced for this question (1 = no premature reply)."""
    errors: list[Any] = field(default_factory=list)
    t_end_of_speech: float | None = None
    """`time.monotonic()` of the end of speech (same clock as other processes on the box)."""
    t_first_audio: float | None = None


@dataclass
class Question:
    name: str
    audio: np.ndarray
    """16 kHz int16, as it will be streamed (may hold leading/trailing silence)."""
    last_voiced: int = -1

    def __post_init__(self) -> None:
        if self.last_voiced < 0:
            self.last_voiced = voiced_bounds(self.audio)[1]


class VoiceLoadClient:
    """One call at a time on one connection; `run_call` plays questions turn after turn."""

    def __init__(
        self,
        adapter: CallroomVoiceProtocol,
        *,
        gap_s: float = 0.5,
        reply_timeout_s: float = 15.0,
        tail_silence_s: float = 0.3,
    ) -> None:
        self.adapter = adapter
        self.gap_s = gap_s
        self.reply_timeout_s = reply_timeout_s
        self.tail_silence_s = tail_silence_s
        self._silence = bytes(FRAME_SAMPLES * 2)

    async def run_call(self, questions: Sequence[Question], turns: int) -> list[TurnResult]:
        adapter = self.adapter
        ws = await adapter.connect()
        try:
            rate = await adapter.start_call(ws)
            loop = asyncio.get_running_loop()
            self._next = loop.time()  # the send schedule: one frame every 20 ms, absolute
            events: asyncio.Queue[tuple[float, Event]] = asyncio.Queue()
            reader = asyncio.create_task(self._read(ws, events))
            results: list[TurnResult] = []
            try:
                # A little silence first, as a caller's microphone opens before they speak.
                await self._send_silence(ws, 0.3)
                for i in range(turns):
                    q = questions[i % len(questions)]
                    results.append(await self._turn(ws, q, events, rate))
            finally:
                reader.cancel()
                with contextlib.suppress(BaseException):
                    await reader
            await adapter.end_call(ws)
            return results
        finally:
            with contextlib.suppress(Exception):
                await ws.close()

    async def _read(self, ws: Any, out: asyncio.Queue[tuple[float, Event]]) -> None:
        loop = asyncio.get_running_loop()
        async for frame in ws:
            out.put_nowait((loop.time(), self.adapter.parse(frame)))

    async def _send_frame(self, ws: Any, pcm: bytes) -> float:
        """Send one frame at its scheduled time; returns the time it was sent."""
        loop = asyncio.get_running_loop()
        self._next += FRAME_MS / 1000
        delay = self._next - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.2:  # we fell far behind (a stall): restart the schedule, don't burst
            self._next = loop.time()
        await ws.send(self.adapter.audio_frame(pcm))
        return loop.time()

    async def _send_silence(self, ws: Any, seconds: float) -> None:
        for _ in range(max(1, round(seconds * 1000 / FRAME_MS))):
            await self._send_frame(ws, self._silence)

    async def _turn(
        self, ws: Any, q: Question, events: asyncio.Queue[tuple[float, Event]], rate: int
    ) -> TurnResult:
        pcm = np.asarray(q.audio, dtype="<i2").tobytes()
        while not events.empty():  # anything late from the previous turn is not this turn's
            events.get_nowait()
        t_end: float | None = None
        n = len(q.audio)
        for start in range(0, n, FRAME_SAMPLES):
            chunk = pcm[start * 2 : (start + FRAME_SAMPLES) * 2]
            if len(chunk) < FRAME_SAMPLES * 2:
                chunk = chunk + bytes(FRAME_SAMPLES * 2 - len(chunk))
            sent = await self._send_frame(ws, chunk)
            end = start + FRAME_SAMPLES
            if start <= q.last_voiced < end:
                t_end = sent - (end - 1 - q.last_voiced) / RATE
        assert t_end is not None
        result = TurnResult(q.name, None)
        first_audio: float | None = None
        audio_samples = 0
        done = False
        metrics_seen = False
        deadline = t_end + self.reply_timeout_s
        loop = asyncio.get_running_loop()
        # Keep the microphone open (silence) until the reply is complete and has been played.
        while True:
            now = loop.time()
            while not events.empty():
                at, ev = events.get_nowait()
                if ev.kind == "audio":
                    if first_audio is None:
                        first_audio = at
                    audio_samples += len(ev.data) // 2
                elif ev.kind == "user_transcript":
                    result.user_turns += 1
                    result.user_transcript = (
                        ev.data if result.user_transcript is None
                        else f"{result.user_transcript} | {ev.data}"
                    )
                elif ev.kind == "reply_done":
                    result.reply_text = ev.data
                    done = True
                elif ev.kind == "metrics":
                    result.server = dict(ev.data.get("callroom") or {})
                    metrics_seen = True
                elif ev.kind == "error":
                    result.errors.append(ev.data)
            played_until = (
                first_audio + audio_samples / rate + self.gap_s if first_audio is not None else None
            )
            if done and metrics_seen and played_until is not None and now >= played_until:
                break
            if now > deadline and not (first_audio is not None and not done):
                result.errors.append("timeout waiting for the reply")
                break
            if now > deadline + 30:
                result.errors.append("reply never finished")
                break
            await self._send_frame(ws, self._silence)
        result.reply_audio_s = audio_samples / rate if rate else 0.0
        result.t_end_of_speech, result.t_first_audio = t_end, first_audio
        if first_audio is not None:
            result.voice_to_voice_ms = (first_audio - t_end) * 1000
        return result


async def run_load(
    make_adapter: Callable[[int], CallroomVoiceProtocol],
    questions: Sequence[Question],
    turns: int,
    calls: int = 1,
    **client_options: Any,
) -> list[list[TurnResult]]:
    """`calls` calls side by side (call i gets `make_adapter(i)`), `turns` turns each; calls
    start 137 ms apart so their turns do not line up by construction."""

    async def one(i: int) -> list[TurnResult]:
        await asyncio.sleep(i * 0.137)
        rotated = list(questions[i % len(questions) :]) + list(questions[: i % len(questions)])
        return await VoiceLoadClient(make_adapter(i), **client_options).run_call(rotated, turns)

    return list(await asyncio.gather(*(one(i) for i in range(calls))))


def question_from_wav(path: Path | str, *, lead_s: float = 0.0, tail_s: float = 0.0) -> Question:
    audio = read_wav(path)
    pad = [np.zeros(int(lead_s * RATE), np.int16), audio, np.zeros(int(tail_s * RATE), np.int16)]
    return Question(Path(path).stem, np.concatenate(pad))


# -- CLI ------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("url", help="ws://HOST:PORT/agents/<class>/<name> (call i appends -i)")
    p.add_argument("--wav", action="append", required=True, type=Path, help="a question (repeat)")
    p.add_argument("--turns", type=int, default=5, help="turns per call")
    p.add_argument("--calls", type=int, default=1, help="calls side by side")
    p.add_argument("--gap", type=float, default=0.5, help="pause after a reply has played (s)")
    p.add_argument("--json", action="store_true", help="print every turn as JSON")
    args = p.parse_args(argv)
    questions = [question_from_wav(w) for w in args.wav]

    def adapter(i: int) -> CallroomVoiceProtocol:
        return CallroomVoiceProtocol(args.url if args.calls == 1 else f"{args.url}-{i}")

    results = asyncio.run(run_load(adapter, questions, args.turns, args.calls, gap_s=args.gap))
    flat = [r for call in results for r in call]
    if args.json:
        print(json.dumps([asdict(r) for r in flat], indent=2))
    v2v = sorted(r.voice_to_voice_ms for r in flat if r.voice_to_voice_ms is not None)
    for r in flat:
        shown = "-" if r.voice_to_voice_ms is None else f"{r.voice_to_voice_ms:7.1f} ms"
        print(f"{r.question:24s} {shown}  user={r.user_transcript!r} errors={r.errors or ''}")
    if v2v:
        p90 = v2v[min(len(v2v) - 1, round(0.9 * (len(v2v) - 1)))]
        median = statistics.median(v2v)
        print(f"voice-to-voice: n={len(v2v)} median={median:.1f} ms p90≈{p90:.1f} ms")
    return 0 if v2v and len(v2v) == len(flat) else 1


if __name__ == "__main__":
    sys.exit(main())
