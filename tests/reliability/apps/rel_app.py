"""Agents for the reliability tests (tests/reliability/), all served by one app.

- `Counter` (examples/conformance.py): the core protocol, for fuzzing.
- `Vault` (`/agents/vault/<name>`): per-agent storage behind the app's auth hook, which binds a
  token to exactly one agent name (`Authorization: Bearer <token>` or `?token=`).
- `RelVoice` (`/agents/rel-voice/<name>`): `FakeVoice` plus schedules, a slow turn ("slow"),
  a turn that never ends ("hang") and RPCs that expose its history and call ids.
- `FaultVoice` (`/agents/fault-voice/<mode>-<id>`): speech providers and turns that fail in the
  way `<mode>` names (hang, reset, garbage; STT, TTS, LLM, end-of-turn model), once per call,
  with short per-stage timeouts, so a test sees the failing turn and then a good one.
- `LLMVoice` (`/agents/llm-voice/<name>`): the default LLM turn, for the
  fake OpenAI server (`CALLROOM_LLM=openai`, `OPENAI_BASE_URL`).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from examples.conformance import Counter
from starlette.applications import Starlette
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, Response

from callroom import Agent, Connection, callable
from callroom.config import Settings
from callroom.providers.base import Float32, Int16, VoiceProviders
from callroom.server.app import create_app as _create_app
from callroom.testing import (
    DurationSTT,
    DurationSTTStream,
    EnergyVAD,
    FixedTurnDetector,
    ToneTTS,
)
from callroom.voice.agent import VoiceAgent
from callroom.voice.pipeline import TurnContext
from tests.integration.apps.voice_fake import PROVIDERS, FakeVoice

TOKENS = {"tok-alice-9f8e7d6c5b4a": "alice", "tok-bob-1a2b3c4d5e6f": "bob"}
"""Each token opens exactly one Vault: its name."""

FOREVER = 3600.0


# -- storage isolation + auth -----------------------------------------------------------------
class Vault(Agent):
    async def on_start(self) -> None:
        self.sql("CREATE TABLE IF NOT EXISTS secrets (v TEXT)")

    @callable
    def put(self, value: str) -> int:
        self.sql("INSERT INTO secrets (v) VALUES (?)", value)
        return int(self.sql("SELECT COUNT(*) AS n FROM secrets")[0]["n"])

    @callable
    def read_all(self) -> list[str]:
        return [r["v"] for r in self.sql("SELECT v FROM secrets ORDER BY rowid")]

    @callable
    def databases(self) -> list[str]:
        """Files attached to this agent's SQL connection (only its own)."""
        return [r["file"] for r in self.sql("PRAGMA database_list")]

    @callable
    def whoami(self) -> str:
        return self.name

    @callable
    def connections(self) -> int:
        return len(self.get_connections())

    async def on_message(self, connection: Connection, message: str | bytes) -> None:
        # Relay to every connection of *this* agent: no frame may reach another agent's.
        self.broadcast({"type": "relay", "agent": self.name, "data": str(message)[:200]})


async def bind_token(conn: HTTPConnection, cls: type[Agent], name: str) -> Response | None:
    """The app-level `on_before_connect`: a Vault needs a token, and the token's own name."""
    if cls is not Vault:
        return None
    auth = conn.headers.get("authorization", "")
    token = auth[7:].strip() if auth.lower().startswith("bearer ") else None
    token = token or conn.query_params.get("token")
    if not token:
        return JSONResponse({"error": "token required"}, status_code=401)
    if TOKENS.get(token) != name:
        return JSONResponse({"error": "token not valid for this agent"}, status_code=403)
    return None


# -- voice: crash/restart, drain ---------------------------------------------------------------
class RelVoice(FakeVoice):
    async def on_turn(self, transcript: str, ctx: TurnContext) -> Any:
        if transcript.startswith("slow"):
            await asyncio.sleep(1.5)
            return "Done slowly."
        if transcript.startswith("hang"):
            await asyncio.sleep(FOREVER)
        return await super().on_turn(transcript, ctx)

    @callable
    def call_ids(self) -> list[str]:
        rows = self.sql("SELECT DISTINCT call_id FROM callroom_messages ORDER BY seq")
        return [r["call_id"] for r in rows]

    @callable
    async def schedule_in(self, seconds: float, tag: str) -> float:
        return (await self.schedule(seconds, "fired_callback", {"tag": tag}))["time"]

    @callable
    def schedules(self) -> list[str]:
        return sorted(s["payload"]["tag"] for s in self.get_schedules())

    @callable
    def fired(self) -> list[str]:
        self.sql("CREATE TABLE IF NOT EXISTS fired (tag TEXT)")
        return [r["tag"] for r in self.sql("SELECT tag FROM fired ORDER BY rowid")]

    async def fired_callback(self, payload: dict[str, Any], schedule: Any) -> None:
        self.sql("CREATE TABLE IF NOT EXISTS fired (tag TEXT)")
        self.sql("INSERT INTO fired (tag) VALUES (?)", payload["tag"])


# -- voice: provider faults --------------------------------------------------------------------
class _Once:
    """Fails the first time only, so the next turn of the same call shows recovery."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.armed = True

    def fire(self, *modes: str) -> str | None:
        if self.armed and self.mode in modes:
            self.armed = False
            return self.mode
        return None


class FaultSTTStream(DurationSTTStream):
    def __init__(self, owner: FaultSTT) -> None:
        super().__init__(owner)  # type: ignore[arg-type]
        self.once = owner.once

    async def finish(self) -> str:
        fault = self.once.fire("stthang", "sttreset", "sttgarbage")
        if fault == "stthang":
            await asyncio.sleep(FOREVER)
        if fault == "sttreset":
            raise ConnectionResetError("STT peer reset the connection")
        if fault == "sttgarbage":
            return 12345  # type: ignore[return-value]
        return await super().finish()


class FaultSTT(DurationSTT):
    def __init__(self, once: _Once) -> None:
        super().__init__()
        self.once = once

    def stream(self) -> FaultSTTStream:
        return FaultSTTStream(self)


class FaultTTS(ToneTTS):
    def __init__(self, once: _Once) -> None:
        super().__init__(seconds_per_word=0.05)
        self.once = once

    async def synthesize(self, text: str) -> AsyncIterator[Int16]:
        fault = self.once.fire("ttshang", "ttsstall", "ttsreset", "ttsgarbage")
        if fault == "ttshang":
            await asyncio.sleep(FOREVER)
        if fault == "ttsgarbage":
            yield "not audio"  # type: ignore[misc]
            return
        first = True
        async for chunk in super().synthesize(text):
            yield chunk
            if first and fault == "ttsstall":
                await asyncio.sleep(FOREVER)
            if first and fault == "ttsreset":
                raise ConnectionResetError("TTS peer reset the connection")
            first = False


class FaultTurnDetector(FixedTurnDetector):
    def __init__(self, once: _Once) -> None:
        super().__init__(0.9)
        self.once = once

    async def completion_probability(self, audio: Float32) -> float:
        fault = self.once.fire("turnhang", "turngarbage")
        if fault == "turnhang":
            await asyncio.sleep(FOREVER)
        if fault == "turngarbage":
            return math.nan
        return await super().completion_probability(audio)


class FaultVoice(FakeVoice):
    greeting = None
    stt_timeout = 1.5
    tts_timeout = 1.5
    llm_first_token_timeout = 1.5
    llm_stall_timeout = 1.5
    end_of_turn_timeout = 1.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.once = _Once(self.name.split("-", 1)[0])

    def create_providers(self) -> VoiceProviders:
        self.once = _Once(self.name.split("-", 1)[0])  # re-armed per call
        return VoiceProviders(
            vad=EnergyVAD(),
            stt=FaultSTT(self.once),
            tts=FaultTTS(self.once),
            turn=FaultTurnDetector(self.once),
        )

    async def on_turn(self, transcript: str, ctx: TurnContext) -> Any:
        fault = self.once.fire("llmhang", "llmstall", "llmreset", "llmslowcall", "llmgarbage")
        if fault == "llmslowcall":
            await asyncio.sleep(FOREVER)
        if fault is not None:
            return self._faulty(fault)
        return await super().on_turn(transcript, ctx)

    async def _faulty(self, fault: str) -> AsyncIterator[Any]:
        if fault == "llmhang":
            await asyncio.sleep(FOREVER)
        if fault == "llmgarbage":
            for junk in (None, 42, b"\x00\xff", {"text": "x"}, np.zeros(3)):
                yield junk
            return
        yield "Let me see, "
        if fault == "llmstall":
            await asyncio.sleep(FOREVER)
        raise ConnectionResetError("LLM peer reset the connection")


class LLMVoice(VoiceAgent):
    """The default `on_turn` (LLM from the environment) on fake speech models."""

    agent_name = "llm-voice"
    greeting = None
    llm_first_token_timeout = 2.0
    llm_stall_timeout = 2.0

    def create_providers(self) -> VoiceProviders:
        return PROVIDERS

    @callable
    def history(self) -> list[dict[str, Any]]:
        return self.get_conversation_history()


def create_app(settings: Settings) -> Starlette:
    return _create_app(
        [Counter, Vault, RelVoice, FaultVoice, LLMVoice], settings, on_before_connect=bind_token
    )
