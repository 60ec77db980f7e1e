"""`VoiceAgent`: an `Agent` that takes calls over the voice protocol of the npm `agents` package.

A call lives on one connection (the official `VoiceClient` opens one socket per call). While
any call is active the agent does not hibernate. History is the agent's, not the call's: a
caller who reconnects (the client re-sends `start_call`) continues the same conversation.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import threading
import uuid
from typing import Any, ClassVar

from callroom.agent import Agent
from callroom.connection import Connection
from callroom.errors import CallroomError
from callroom.protocol import core
from callroom.protocol import voice as vp
from callroom.providers.base import LLM, Int16, VoiceProviders
from callroom.voice.history import History
from callroom.voice.pipeline import Call, TurnContext, TurnResult
from callroom.voice.turns import TurnConfig

log = logging.getLogger("callroom.voice")

_process_llm: LLM | None = None


class VoiceAgent(Agent):
    """Subclass and override `on_turn` (or give it an LLM, see the README)."""

    __abstract__ = True

    instructions: ClassVar[str] = "You are a helpful voice assistant. Answer briefly."
    greeting: ClassVar[str | None] = None
    """Said when a call starts (not again when the same caller reconnects mid-call)."""
    history_limit: ClassVar[int] = 20
    """User turns of history given to the LLM."""
    max_messages: ClassVar[int] = 1000
    """Messages retained in the agent's SQLite."""
    output_sample_rate: ClassVar[int | None] = None
    """Rate of the PCM16 audio sent to clients; None = the TTS's native rate (no resampling)."""
    turn_config: ClassVar[TurnConfig] = TurnConfig()
    apology_text: ClassVar[str] = "Sorry, I ran into a problem. Could you say that again?"
    max_tool_rounds: ClassVar[int] = 4
    tool_timeout: ClassVar[float] = 10.0
    filler_after_s: ClassVar[float] = 1.0
    """A filler phrase ("One moment…") is spoken when a tool round takes longer than this."""
    # Per-stage bounds on provider work: a provider that hangs fails the turn (the caller
    # hears `apology_text`) instead of the call. Seconds.
    stt_timeout: ClassVar[float] = 15.0
    """Wait for the transcript of a finished utterance (and for background passes)."""
    llm_first_token_timeout: ClassVar[float] = 20.0
    """From the start of `on_turn` to the first text of the reply (tool rounds included)."""
    llm_stall_timeout: ClassVar[float] = 30.0
    """Between two pieces of reply text; keep it above `tool_timeout` (a filler resets it)."""
    tts_timeout: ClassVar[float] = 15.0
    """Wait for each audio chunk of a clause, the first included."""
    end_of_turn_timeout: ClassVar[float] = 5.0
    """Wait for the end-of-turn model; past it the transcript alone decides."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._calls: dict[str, Call] = {}
        self._text_calls: dict[str, Call] = {}
        self._no_call_warned: set[str] = set()

    # -- providers ----------------------------------------------------------------------------
    def create_providers(self) -> VoiceProviders:
        """Speech models for calls. Default: the embedded models, loaded once per process."""
        return _embedded_providers()

    @classmethod
    async def on_host_start(cls) -> None:
        """Load the embedded models before the server says it is ready, so the first caller
        does not wait for them (skipped when a subclass brings its own providers)."""
        if cls.create_providers is VoiceAgent.create_providers:
            await asyncio.to_thread(_embedded_providers)
        if cls.on_turn is VoiceAgent.on_turn and cls.get_llm is VoiceAgent.get_llm:
            llm = _get_process_llm()
            warm = getattr(llm, "warm_up", None)
            if warm is not None:  # the embedded model: load it now, not on the first call
                await warm()

    def get_llm(self) -> LLM:
        """The LLM of the default `on_turn`: from `CALLROOM_LLM` & co., one per process."""
        return _get_process_llm()

    def system_prompt(self) -> str:
        return self.instructions

    # -- hooks (override) ---------------------------------------------------------------------
    async def on_turn(self, transcript: str, ctx: TurnContext) -> TurnResult:
        """Answer one caller turn: a string, or an async iterator of text pieces."""
        from callroom.voice.default_turn import default_on_turn

        return await default_on_turn(self, transcript, ctx)

    async def before_call_start(self, connection: Connection) -> bool:
        """Return False to refuse the call."""
        return True

    async def on_call_start(self, connection: Connection) -> None:
        """The call is up; by default says `greeting` unless this call already greeted."""
        if self.greeting and not self._call_greeted(connection):
            self.speak(self.greeting, connection)

    async def on_call_end(self, connection: Connection) -> None: ...

    async def on_interrupt(self, connection: Connection) -> None: ...

    async def on_dtmf(self, digit: str, connection: Connection) -> bool | None:
        """A key pressed on a phone call (telephony only: `0-9`, `*`, `#`). Return True when
        handled; otherwise the key becomes a text turn ("The caller pressed 5"), so the
        default LLM turn can follow a spoken menu without code."""
        return None

    async def after_transcribe(self, transcript: str, connection: Connection) -> str | None:
        """Edit the caller's words before the turn; None skips the turn."""
        return transcript

    async def before_synthesize(self, text: str, connection: Connection) -> str | None:
        """Edit (or drop, with None) a clause before it is spoken."""
        return text

    async def after_synthesize(
        self, audio: Int16, text: str, connection: Connection
    ) -> Int16 | None:
        """Edit (or drop) synthesized audio before it is sent."""
        return audio

    # -- actions ------------------------------------------------------------------------------
    def speak(self, text: str, connection: Connection | None = None) -> None:
        """Say `text` on one call (or on every active call)."""
        for call in self._target_calls(connection):
            call.speak(text)

    def end_call(self, connection: Connection | None = None) -> None:
        """Hang up (the client sees `status: idle` and ends its call)."""
        for call in self._target_calls(connection):
            self._host.spawn(self, self._end_call(call.conn, after_reply=True), "end_call")

    def _target_calls(self, connection: Connection | None) -> list[Call]:
        if connection is not None:
            call = self._calls.get(connection.id)
            return [call] if call else []
        return list(self._calls.values())

    def is_busy(self) -> bool:
        return bool(self._calls)

    def _in_flight(self) -> bool:
        return any(c.busy for c in (*self._calls.values(), *self._text_calls.values()))

    # -- internals ----------------------------------------------------------------------------
    def _history(self) -> History:
        return History(self._storage, max_messages=self.max_messages)

    def get_conversation_history(self) -> list[dict[str, Any]]:
        return self._history().messages()

    def _call_greeted(self, connection: Connection) -> bool:
        state = connection.state
        return isinstance(state, dict) and bool(state.get("greeted"))

    def _fire_hook(self, value: Any, connection: Connection | None) -> None:
        if inspect.isawaitable(value):
            self._host.spawn(self, _await(value), "hook")

    async def _after_transcribe(self, text: str, conn: Connection) -> str | None:
        return await self.after_transcribe(text, conn)

    async def _before_synthesize(self, text: str, conn: Connection) -> str | None:
        return await self.before_synthesize(text, conn)

    async def _after_synthesize(self, audio: Int16, text: str, conn: Connection) -> Int16 | None:
        return await self.after_synthesize(audio, text, conn)

    async def _call_on_turn(self, text: str, ctx: TurnContext) -> TurnResult:
        result = self.on_turn(text, ctx)
        if inspect.isawaitable(result):
            result = await result
        return result  # type: ignore[no-any-return]

    async def _on_connect_internal(self, connection: Connection) -> None:
        connection.send_json(vp.welcome())
        connection.send_json(vp.status("idle"))

    async def _on_close_internal(self, connection: Connection) -> None:
        call = self._calls.pop(connection.id, None)
        self._no_call_warned.discard(connection.id)
        text_call = self._text_calls.pop(connection.id, None)
        if text_call is not None:
            await text_call.close()
        if call is not None:
            # The socket dropped mid-call: keep the call's attachment so a client that
            # reconnects (same `_pk`, re-sent `start_call`) resumes without a new greeting.
            connection.keep_attachment = True
            self._host.active_calls -= 1
            await call.close()
            await _guarded(self, self.on_call_end(connection), connection)

    async def _handle_plain(self, connection: Connection, message: core.PlainMessage) -> None:
        data = message.data
        if isinstance(data, bytes):
            self._on_audio(connection, data)
            return
        msg = vp.parse(message.parsed) if message.parsed is not None else None
        if msg is None:
            await super()._handle_plain(connection, message)
            return
        if isinstance(msg, vp.StartCall):
            await self._start_call(connection, msg)
        elif isinstance(msg, vp.EndCall):
            await self._end_call(connection, after_reply=False)
        elif isinstance(msg, vp.Interrupt):
            call = self._calls.get(connection.id)
            if call is not None:
                call.interrupt()
                connection.send_json(vp.status("listening"))
                await _guarded(self, self.on_interrupt(connection), connection)
        elif isinstance(msg, vp.TextMessage):
            await self._text_message(connection, msg.text)
        elif isinstance(msg, vp.Invalid):
            connection.send_json(vp.error(msg.reason, stage="protocol"))
        # hello and client speech hints need no answer: turn detection is the server's job.

    def _on_audio(self, connection: Connection, data: bytes) -> None:
        call = self._calls.get(connection.id)
        if call is None:
            if connection.id not in self._no_call_warned:
                self._no_call_warned.add(connection.id)
                connection.send_json(
                    vp.error("audio received before start_call was dropped", stage="protocol")
                )
            return
        try:
            call.feed(data)
        except CallroomError as exc:
            connection.send_json(vp.error(exc.message, stage="protocol"))

    async def _start_call(self, connection: Connection, msg: vp.StartCall) -> None:
        old = self._calls.pop(connection.id, None)
        if old is not None:  # a second start_call restarts the pipeline, keeps history
            self._host.active_calls -= 1
            await old.close()
        try:
            allowed = await self.before_call_start(connection)
        except Exception as exc:
            await self.on_error(exc, connection)
            allowed = False
        if not allowed:
            connection.send_json(vp.error("call refused", stage="call_start"))
            connection.send_json(vp.status("idle"))
            return
        limit = self.env.max_calls
        if self._host.active_calls >= limit:
            connection.send_json(
                vp.error("server busy: too many calls", code="busy", retryable=True)
            )
            connection.send_json(vp.status("idle"))
            return
        try:
            providers = await asyncio.get_running_loop().run_in_executor(
                None, self.create_providers
            )
        except Exception as exc:
            log.exception("voice providers failed to load")
            connection.send_json(
                vp.error(f"speech models failed to load: {exc}", code="stt_startup_failed",
                         stage="stt", retryable=False)
            )
            connection.send_json(vp.status("idle"))
            return
        # A transport with a fixed audio rate (telephony: 8 kHz) says so on its connection;
        # the call then renders speech at that rate directly (one resampling, not two).
        rate = (
            getattr(connection, "output_rate", None)
            or self.output_sample_rate
            or (providers.tts.sample_rate if providers.tts else 16000)
        )
        state = connection.state if isinstance(connection.state, dict) else {}
        call_id = state.get("call_id") or uuid.uuid4().hex[:12]
        call = Call(self, connection, providers, call_id=call_id, output_rate=rate,
                    turn_config=self.turn_config)
        self._calls[connection.id] = call
        self._host.active_calls += 1
        self._no_call_warned.discard(connection.id)
        connection.send_json(vp.audio_config("pcm16", rate))
        call.start()
        connection.send_json(vp.status("listening"))
        await _guarded(self, self.on_call_start(connection), connection)
        connection.set_state({**state, "call_id": call_id, "greeted": True})

    async def _end_call(self, connection: Connection, *, after_reply: bool) -> None:
        call = self._calls.get(connection.id)
        if call is None:
            connection.send_json(vp.status("idle"))
            return
        if after_reply and call._reply is not None and not call._reply.done():
            await asyncio.wait({call._reply})
        if after_reply:
            # Let the last words play out (the client stops playback on `idle`), bounded.
            end = call.playback_end()
            if end is not None:
                await asyncio.sleep(min(10.0, max(0.0, end - call.clock.now())))
        if self._calls.pop(connection.id, None) is not None:
            self._host.active_calls -= 1
        # Mic frames already in flight when the call ends (the client stops its mic only when
        # it sees `status: idle`) are dropped silently, not reported as a protocol error.
        self._no_call_warned.add(connection.id)
        await call.close()
        connection.send_json(vp.status("idle"))
        await _guarded(self, self.on_call_end(connection), connection)

    async def _text_message(self, connection: Connection, text: str) -> None:
        if not text.strip():
            return
        call = self._calls.get(connection.id)
        if call is not None:
            call.text_turn(text.strip(), audio=True)
            return
        # Not in a call: a text-only reply (no speech models needed).
        text_call = self._text_calls.get(connection.id)
        if text_call is None:
            state = connection.state if isinstance(connection.state, dict) else {}
            text_call = Call(self, connection, None, call_id=state.get("call_id") or "text",
                             output_rate=16000, turn_config=self.turn_config)
            self._text_calls[connection.id] = text_call
        text_call.text_turn(text.strip(), audio=False)


def _get_process_llm() -> LLM:
    global _process_llm
    if _process_llm is None:
        from callroom.providers.llm import make_llm

        _process_llm = make_llm()
    return _process_llm


_shared_providers: VoiceProviders | None = None
_providers_lock = threading.Lock()


def _embedded_providers() -> VoiceProviders:
    global _shared_providers
    with _providers_lock:
        if _shared_providers is None:
            from callroom.providers.local import local_voice_providers

            stt = os.environ.get("CALLROOM_STT_MODEL", "tiny.en")
            _shared_providers = local_voice_providers(stt)
        return _shared_providers


async def _await(value: Any) -> Any:
    return await value


async def _guarded(agent: Agent, value: Any, conn: Connection | None) -> None:
    try:
        if inspect.isawaitable(value):
            await value
    except Exception as exc:
        await agent.on_error(exc, conn)

