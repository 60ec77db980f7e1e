"""`callroom call URL --wav question.wav`: a terminal caller for a voice agent.

Streams a WAV at real-time pace in 20 ms frames over the voice protocol, prints what the
server says (status, transcripts, latency), and saves the agent's reply audio. The latency
printed is the one users feel: end of the caller's audio → first reply audio byte.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np

FRAME_MS = 20
RATE = 16_000


def read_wav_16k(path: Path) -> np.ndarray:
    """Mono int16 at 16 kHz (downmixed and resampled with soxr when needed)."""
    try:
        with wave.open(str(path), "rb") as w:
            if w.getsampwidth() != 2:
                raise SystemExit(f"callroom call: {path} must be 16-bit PCM WAV")
            rate, channels = w.getframerate(), w.getnchannels()
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    except (wave.Error, EOFError) as exc:
        raise SystemExit(f"callroom call: {path} is not a readable WAV file: {exc}") from None
    if channels > 1:
        pcm = pcm.reshape(-1, channels).mean(axis=1).astype(np.int16)
    if rate != RATE:
        import soxr

        pcm = soxr.resample(pcm, rate, RATE).astype(np.int16)
    return pcm


def _say(kind: str, text: str) -> None:
    print(f"{kind:>10}  {text}", flush=True)


async def run_call(
    url: str, wav: Path | None, out: Path | None, texts: list[str], reply_timeout: float
) -> int:
    import websockets

    pcm = read_wav_16k(wav) if wav is not None and not texts else np.zeros(0, np.int16)
    audio: list[bytes] = []
    out_rate = RATE
    first_audio_at: float | None = None
    speech_end_at: float | None = None
    done = asyncio.Event()
    turns_seen = 0
    expected_turns = max(1, len(texts))

    async def reader(ws: Any) -> None:
        nonlocal out_rate, first_audio_at, turns_seen
        async for frame in ws:
            if isinstance(frame, bytes):
                if speech_end_at is not None:
                    audio.append(frame)
                    if first_audio_at is None:
                        first_audio_at = time.monotonic()
                continue
            msg = json.loads(frame)
            kind = msg.get("type")
            if kind == "audio_config":
                out_rate = int(msg.get("sampleRate") or RATE)
            elif kind == "status":
                _say("status", msg["status"])
            elif kind == "transcript":
                _say(msg["role"], msg["text"])
            elif kind == "transcript_end":
                _say("assistant", msg["text"])
            elif kind == "error":
                _say("error", msg.get("message", ""))
            elif kind == "metrics" and speech_end_at is not None:
                stages = msg.get("callroom") or {}
                _say("metrics", " ".join(f"{k}={v}" for k, v in stages.items()))
            elif kind == "turn_metrics" and speech_end_at is not None:
                turns_seen += 1
                if turns_seen >= expected_turns:
                    done.set()

    try:
        async with websockets.connect(url, max_size=None, open_timeout=10) as ws:
            task = asyncio.create_task(reader(ws))
            await ws.send(json.dumps({"type": "hello", "protocol_version": 1}))
            await ws.send(json.dumps({"type": "start_call", "preferred_format": "pcm16"}))
            await asyncio.sleep(1.5)  # let the greeting start; we record replies after speech
            if texts:
                speech_end_at = time.monotonic()
                for text in texts:
                    await ws.send(json.dumps({"type": "text_message", "text": text}))
            else:
                step = RATE * FRAME_MS // 1000
                start = time.monotonic()
                for i, at in enumerate(range(0, len(pcm), step)):
                    await ws.send(pcm[at : at + step].astype("<i2").tobytes())
                    delay = start + (i + 1) * FRAME_MS / 1000 - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                speech_end_at = time.monotonic()
                silence = np.zeros(step, np.int16).tobytes()
                for _ in range(int(3000 / FRAME_MS)):  # trailing silence while we wait
                    if done.is_set():
                        break
                    await ws.send(silence)
                    await asyncio.sleep(FRAME_MS / 1000)
            try:
                await asyncio.wait_for(done.wait(), reply_timeout)
            except TimeoutError:
                _say("error", f"no complete reply within {reply_timeout:.0f} s")
                return 1
            await ws.send(json.dumps({"type": "end_call"}))
            task.cancel()
    except (OSError, websockets.InvalidURI, websockets.InvalidHandshake) as exc:
        print(f"callroom call: cannot connect to {url}: {exc}", file=sys.stderr)
        return 1
    if first_audio_at is not None and speech_end_at is not None:
        _say("latency", f"{(first_audio_at - speech_end_at) * 1000:.0f} ms "
             "(end of your audio → first reply audio)")
    if out is not None:
        with wave.open(str(out), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(out_rate)
            w.writeframes(b"".join(audio))
        _say("saved", f"{out} ({sum(map(len, audio)) / 2 / out_rate:.1f} s at {out_rate} Hz)")
    return 0
