"""The fake-model voice agent behind the Twilio routes, for telephony tests.

`PhoneVoice` is `FakeVoice` (energy VAD, "I spoke for N.N seconds." STT, tone TTS at 0.25 s per
word) plus key handling: `9` is answered by `on_dtmf` itself; other keys fall back to the text
turn "The caller pressed N", which `on_turn` maps to a long story (`1`) or a goodbye that hangs
up (`0`). A call from +15550000000 is refused by `before_call_start`.

With `CALLROOM_TEST_REAL_MODELS=1` the app also serves `RealVoice` (the embedded models, see
voice_real.py) behind the same routes, for the 8 kHz end-to-end test.
"""

from __future__ import annotations

import os
from typing import Any

from starlette.applications import Starlette

from callroom.agent import Agent
from callroom.config import Settings
from callroom.connection import Connection
from callroom.server.app import create_app as _create_app
from callroom.voice.pipeline import TurnContext
from tests.integration.apps.voice_fake import LONG, FakeVoice

REFUSED_CALLER = "+15550000000"


class PhoneVoice(FakeVoice):
    """`/twilio/voice/phone-voice` (and `/agents/phone-voice/<CallSid>` for RPC)."""

    async def on_dtmf(self, digit: str, connection: Connection) -> bool | None:
        if digit == "9":
            self.speak("You pressed nine.", connection)
            return True
        return None

    async def before_call_start(self, connection: Connection) -> bool:
        return connection.query.get("From") != REFUSED_CALLER

    async def on_turn(self, transcript: str, ctx: TurnContext) -> Any:
        if transcript == "The caller pressed 1":
            return self._stream(LONG)
        if transcript == "The caller pressed 0":
            self.end_call(ctx.connection)
            return "Goodbye!"
        return await super().on_turn(transcript, ctx)


def create_app(settings: Settings) -> Starlette:
    agents: list[type[Agent]] = [PhoneVoice]
    if os.environ.get("CALLROOM_TEST_REAL_MODELS") == "1":
        from tests.integration.apps.voice_real import RealVoice  # loads + warms the models

        agents.append(RealVoice)
    return _create_app(agents, settings)  # voice agents get the Twilio routes by default
