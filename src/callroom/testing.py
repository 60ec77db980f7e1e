"""Deterministic stand-ins for the speech models, for unit tests of voice agents.

They follow the provider protocols exactly, so a test drives the real pipeline with scripted
audio: a tone is "speech" (energy VAD), the STT answers from a script, the TTS makes a tone
whose length follows the text. Use real models for end-to-end tests.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Iterable

import numpy as np

from callroom.providers.base import Float32, Int16, VoiceProviders

RATE = 16_000


def tone(seconds: float, rate: int = RATE, amplitude: float = 0.3) -> Float32:
    """A 220 Hz tone: what the energy VAD below hears as speech."""
    t = np.arange(int(seconds * rate), dtype=np.float32) / rate
    return (amplitude * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def silence(seconds: float, rate: int = RATE) -> Float32:
    return np.zeros(int(seconds * rate), dtype=np.float32)


def to_pcm16(audio: Float32) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


class EnergyVADStream:
    frame_samples = 512

    def process(self, frame: Float32) -> float:
        rms = float(np.sqrt(np.mean(np.square(frame)))) if len(frame) else 0.0
        return min(1.0, rms / 0.05)

    def reset(self) -> None: ...


class EnergyVAD:
    def stream(self) -> EnergyVADStream:
        return EnergyVADStream()


class ScriptedSTTStream:
    def __init__(self, owner: ScriptedSTT) -> None:
        self._owner = owner
        self.samples = 0

    def push(self, audio: Float32) -> None:
        self.samples += len(audio)

    def pause(self) -> None: ...

    def interim(self) -> str:
        return ""

    async def settled(self) -> str:
        return ""

    async def finish(self) -> str:
        if self._owner.delay:
            await asyncio.sleep(self._owner.delay)
        self._owner.heard_samples.append(self.samples)
        return self._owner.script.popleft() if self._owner.script else ""

    def reset(self) -> None:
        self.samples = 0


class ScriptedSTT:
    """Each finished utterance gets the next line of `script`."""

    def __init__(self, script: Iterable[str], delay: float = 0.0) -> None:
        self.script: deque[str] = deque(script)
        self.delay = delay
        self.heard_samples: list[int] = []

    async def transcribe(self, audio: Float32) -> str:
        return self.script.popleft() if self.script else ""

    def stream(self) -> ScriptedSTTStream:
        return ScriptedSTTStream(self)


class ToneTTS:
    """`seconds_per_word` of tone per word, in two chunks, after `delay` seconds."""

    def __init__(
        self, sample_rate: int = RATE, seconds_per_word: float = 0.2, delay: float = 0.0
    ) -> None:
        self.sample_rate = sample_rate
        self.seconds_per_word = seconds_per_word
        self.delay = delay
        self.spoken: list[str] = []

    async def synthesize(self, text: str) -> AsyncIterator[Int16]:
        self.spoken.append(text)
        if self.delay:
            await asyncio.sleep(self.delay)
        n = int(max(1, len(text.split())) * self.seconds_per_word * self.sample_rate)
        audio = (tone(n / self.sample_rate, self.sample_rate) * 32767).astype(np.int16)
        half = max(1, n // 2)
        yield audio[:half]
        await asyncio.sleep(0)
        if n > half:
            yield audio[half:]


class FixedTurnDetector:
    def __init__(self, probability: float = 0.9) -> None:
        self.probability = probability

    async def completion_probability(self, audio: Float32) -> float:
        return self.probability


def fake_providers(
    script: Iterable[str] = (), *, tts: ToneTTS | None = None, turn_probability: float = 0.9
) -> VoiceProviders:
    return VoiceProviders(
        vad=EnergyVAD(),
        stt=ScriptedSTT(script),
        tts=tts or ToneTTS(),
        turn=FixedTurnDetector(turn_probability),
    )


class DurationSTTStream(ScriptedSTTStream):
    async def finish(self) -> str:
        seconds = self.samples / RATE
        self.samples = 0
        return f"I spoke for {seconds:.1f} seconds."


class DurationSTT:
    """Transcribes an utterance as its duration: deterministic without a script, and it lets
    a test see how much audio (pre-roll, merged pauses) reached the STT."""

    def __init__(self) -> None:
        self.script: deque[str] = deque()
        self.delay = 0.0
        self.heard_samples: list[int] = []

    async def transcribe(self, audio: Float32) -> str:
        return f"I spoke for {len(audio) / RATE:.1f} seconds."

    def stream(self) -> DurationSTTStream:
        return DurationSTTStream(self)  # type: ignore[arg-type]
