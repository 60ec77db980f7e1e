"""A VoiceAgent on deterministic fake speech models, for protocol-level voice tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from callroom import callable
from callroom.connection import Connection
from callroom.providers.base import VoiceProviders
from callroom.testing import DurationSTT, EnergyVAD, FixedTurnDetector, ToneTTS
from callroom.voice.agent import VoiceAgent
from callroom.voice.pipeline import TurnContext

PROVIDERS = VoiceProviders(
    vad=EnergyVAD(),
    stt=DurationSTT(),
    tts=ToneTTS(seconds_per_word=0.25),
    turn=FixedTurnDetector(0.9),
)

LONG = (
    "Once upon a time, in a small town by the sea, there lived a dentist. "
    "Every morning she opened her clinic at eight. "
    "Patients came from all over the coast to see her. "
    "She was known for her gentle hands and her terrible jokes. "
    "One day, a pirate walked in with a toothache."
)


class FakeVoice(VoiceAgent):
    """`/agents/fake-voice/<name>`."""

    greeting = "Hello, this is the test line."

    def create_providers(self) -> VoiceProviders:
        return PROVIDERS

    async def on_turn(self, transcript: str, ctx: TurnContext) -> Any:
        if "story" in transcript:
            return self._stream(LONG)
        if "bye" in transcript.lower():
            self.end_call(ctx.connection)
            return "Goodbye!"
        if "empty" in transcript:
            return ""
        if "crash" in transcript:
            raise RuntimeError("scripted failure")
        return f"You said: {transcript}"

    async def _stream(self, text: str) -> AsyncIterator[str]:
        for word in text.split(" "):
            await asyncio.sleep(0.005)
            yield word + " "

    async def after_transcribe(self, transcript: str, connection: Connection) -> str | None:
        return None if "skip" in transcript else transcript

    @callable
    def history(self) -> list[dict[str, Any]]:
        return self.get_conversation_history()

    @callable
    def tasks(self) -> int:
        return sum(c.task_count for c in self._calls.values())
