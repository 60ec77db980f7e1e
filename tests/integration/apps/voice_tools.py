"""A VoiceAgent using the default LLM turn (LLM from env) with a tool that returns a secret."""

from __future__ import annotations

import asyncio
from typing import Any

from callroom import callable
from callroom.providers.base import VoiceProviders
from callroom.testing import DurationSTT, EnergyVAD, FixedTurnDetector, ToneTTS
from callroom.tools import tool
from callroom.voice.agent import VoiceAgent

PROVIDERS = VoiceProviders(
    vad=EnergyVAD(), stt=DurationSTT(), tts=ToneTTS(seconds_per_word=0.05),
    turn=FixedTurnDetector(0.9),
)


class ToolVoice(VoiceAgent):
    """`/agents/tool-voice/<name>`."""

    instructions = "You are a test receptionist."
    filler_after_s = 0.2

    def create_providers(self) -> VoiceProviders:
        return PROVIDERS

    @tool
    async def next_appointment(self, patient_id: str) -> dict[str, Any]:
        """Look up the next appointment of a patient."""
        if patient_id == "slow":
            await asyncio.sleep(0.6)
        return {"date": "2030-01-09", "time": "10:30", "api_key": "sk-SECRET-123",
                "note": "Authorization: Bearer abc.def.ghi"}

    @callable
    def history(self) -> list[dict[str, Any]]:
        return self.get_conversation_history()
