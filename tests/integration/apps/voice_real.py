"""A VoiceAgent on the REAL embedded speech models with a scripted `on_turn` (no LLM).

Silero VAD, Whisper tiny.en, Smart Turn v3.2 and Piper (22.05 kHz) are the default
`create_providers()`; only the "brain" is fake, so the end-to-end test checks the speech
path exactly as shipped. The models are loaded and run once at import (`warm_up`), before
the server reports healthy, so the first call does not pay for loading them.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

from callroom import callable
from callroom.providers.local import models
from callroom.voice.agent import VoiceAgent
from callroom.voice.pipeline import TurnContext

APPOINTMENT_REPLY = "Your next appointment is on Tuesday at three in the afternoon."
FALLBACK_REPLY = "Sorry, I did not catch that."

models.warm_up("tiny.en")


_DIGITS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine".split())}


def scripted_reply(transcript: str) -> str:
    """The agent's whole 'intelligence': keyword rules over the caller's words."""
    t = transcript.lower()
    if "appointment" in t:
        return APPOINTMENT_REPLY
    if "patient" in t or re.search(r"\bid\b", t):
        digits = [_DIGITS.get(w, w) for w in re.findall(r"\d|[a-z]+", t)]
        digits = [d for d in digits if d.isdigit()]
        return (
            f"Thank you, I have noted the ID {' '.join(digits)}."
            if digits
            else ("Thank you, I have noted your ID.")
        )
    return FALLBACK_REPLY


class RealVoice(VoiceAgent):
    """`/agents/real-voice/<name>`: embedded models, scripted answers, streamed word by word."""

    async def on_turn(self, transcript: str, ctx: TurnContext) -> Any:
        return self._stream(scripted_reply(transcript))

    async def _stream(self, text: str) -> AsyncIterator[str]:
        words = text.split(" ")
        for i, word in enumerate(words):
            await asyncio.sleep(0)
            yield word if i == len(words) - 1 else word + " "

    @callable
    def history(self) -> list[dict[str, Any]]:
        return self.get_conversation_history()
