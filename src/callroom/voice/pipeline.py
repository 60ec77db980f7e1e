"""One voice call: audio in → VAD → STT → end of turn → `on_turn` → chunker → TTS → audio out.

Stages are explicit tasks joined by bounded queues; the call owns every task it starts and
cancels them when it ends. A reply (one turn of the agent) runs in its own task so a barge-in
cancels the LLM, the TTS and the queued audio in one step, from the input loop, within the
frame that detected the caller's voice.

Timeline: turn-taking runs on *audio time* (samples received / 16 kHz), so bursts or jitter do
not distort silence lengths; latency figures are wall-clock, measured from the arrival of the
last voiced frame (the moment the caller stopped speaking, as far as the server can know).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from callroom.errors import ProviderError, ProviderTimeout
from callroom.protocol import voice as vp
from callroom.providers.base import INPUT_RATE, Float32, Int16, STTStream, VoiceProviders
from callroom.voice import turns as tt
from callroom.voice.audio import FrameSplitter, Resampler, pcm16_bytes_to_float32
from callroom.voice.chunker import ClauseChunker
from callroom.voice.metrics import Clock, RealClock, TurnTimings, count_turn, observe

if TYPE_CHECKING:
    from callroom.connection import Connection
    from callroom.voice.agent import VoiceAgent

log = logging.getLogger("callroom.voice")

FRAME_SAMPLES = 512  # Silero's frame at 16 kHz: 32 ms
FRAME_S = FRAME_SAMPLES / INPUT_RATE
PREROLL_FRAMES = 10  # 320 ms kept before speech start so the first word is not clipped
SMART_TURN_SECONDS = 8.0
MAX_OUT_CHUNK_S = 0.5  # audio frames sent to the client are at most this long


@dataclass
class TurnContext:
    """What `on_turn` gets besides the transcript."""

    connection: Connection
    messages: list[dict[str, Any]]
    """Prior conversation (OpenAI chat form), oldest first, bounded by `history_limit`."""
    cancelled: asyncio.Event
    """Set when the turn is interrupted; long work should stop early."""
    call_id: str | None
    source: str
    record: Callable[[dict[str, Any]], None] = field(repr=False, default=lambda m: None)
    """Persist an intermediate message (tool call / tool result) into history."""
    speak_filler: Callable[[str], None] = field(repr=False, default=lambda t: None)
    """Say something now (e.g. "One moment…") while a slow tool runs."""


TurnResult = str | AsyncIterator[str] | None


@runtime_checkable
class PlaybackCursor(Protocol):
    """A connection that knows how much of the audio sent to it has been played.

    Twilio echoes our `mark`s as it plays, so its connection can tell; a browser client
    cannot, and there the playback position is a wall-clock estimate from the first audio
    sent. Positions are in samples at the call's output rate.
    """

    def samples_sent(self) -> int:
        """Samples accepted by `send` so far (including audio not yet on the wire)."""
        ...

    def samples_played(self, now: float) -> float:
        """Samples played by `now`, on the connection's own count (≤ `samples_sent()`)."""
        ...


class _Playback:
    """What was sent for one reply, to tell which part the caller actually heard."""

    def __init__(self, rate: int, cursor: PlaybackCursor | None = None) -> None:
        self.rate = rate
        self.cursor = cursor
        self.pieces: list[tuple[str, int]] = []  # (clause text, samples) in send order
        self.started_at: float | None = None
        self.total = 0
        self._origin = 0  # the cursor's position where this reply's audio starts

    def add(self, text: str, samples: int, now: float) -> None:
        """Record audio just handed to the connection (call right after `conn.send`)."""
        if self.started_at is None and samples:
            self.started_at = now
            if self.cursor is not None:
                self._origin = self.cursor.samples_sent() - samples
        self.total += samples
        if self.pieces and self.pieces[-1][0] == text:
            self.pieces[-1] = (text, self.pieces[-1][1] + samples)
        else:
            self.pieces.append((text, samples))

    def played(self, now: float) -> float:
        """Samples of this reply the caller has heard by `now`."""
        if self.started_at is None:
            return 0.0
        if self.cursor is not None:
            return max(0.0, self.cursor.samples_played(now) - self._origin)
        return (now - self.started_at) * self.rate  # gapless playback from the first send

    def playing(self, now: float) -> bool:
        """Is the caller still hearing this reply?"""
        return self.started_at is not None and self.played(now) < self.total

    def heard_text(self, now: float) -> str:
        """Text whose audio has been played by `now`, cut at a word boundary."""
        if self.started_at is None:
            return ""
        played = self.played(now)
        out: list[str] = []
        for text, samples in self.pieces:
            if played >= samples:
                out.append(text)
                played -= samples
                continue
            words = text.split()
            n = int(len(words) * max(0.0, played) / max(samples, 1))
            if n:
                out.append(" ".join(words[:n]))
            break
        return " ".join(out).strip()


class Call:
    """A voice call on one connection."""

    def __init__(
        self,
        agent: VoiceAgent,
        conn: Connection,
        providers: VoiceProviders | None,
        *,
        call_id: str,
        output_rate: int,
        turn_config: tt.TurnConfig,
        clock: Clock | None = None,
    ) -> None:
        self.agent = agent
        self.conn = conn
        self.providers = providers
        self.call_id = call_id
        self.output_rate = output_rate
        self.clock: Clock = clock or RealClock()
        self.turns = tt.TurnTaker(
            turn_config, frame_ms=FRAME_S * 1000,
            uses_acoustic=providers is not None and providers.turn is not None,
        )
        self._cursor = conn if isinstance(conn, PlaybackCursor) else None
        self.text_only = providers is None
        self.providers = providers or VoiceProviders(vad=None, stt=None)  # type: ignore[arg-type]
        self._vad = providers.vad.stream() if providers else None
        self._stt = providers.stt.stream() if providers else _NullSTTStream()
        self._splitter = FrameSplitter(FRAME_SAMPLES)
        self._inbox: asyncio.Queue[tuple[Float32, float] | None] = asyncio.Queue(256)
        self._preroll: collections.deque[Float32] = collections.deque(maxlen=PREROLL_FRAMES)
        self._recent: collections.deque[Float32] = collections.deque(
            maxlen=int(SMART_TURN_SECONDS / FRAME_S)
        )
        self._audio_t = 0.0
        self._last_voiced_wall = 0.0
        self._speech_start_wall: float | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reply: asyncio.Task[None] | None = None
        self._reply_cancel: asyncio.Event | None = None
        self._reply_lock = asyncio.Lock()
        self._playback: _Playback | None = None
        self._reply_text: list[str] = []
        self._pending_user: str = ""
        self._speaking = False
        self._turn_seq = 0
        self._dropped_frames = 0
        self.closed = False
        self._input_task: asyncio.Task[None] | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        if self.text_only:
            return
        self._input_task = self._spawn(self._input_loop(), "input")

    async def close(self) -> None:
        """Stop everything this call started; the reply in flight is recorded as heard."""
        if self.closed:
            return
        self.closed = True
        self._cancel_reply(record=True)
        if self._finalizing is not None:
            await asyncio.wait({self._finalizing})
        self._stt.reset()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(f"call-{self.call_id}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("call %s: task %s failed", self.call_id, task.get_name(), exc_info=exc)

    @property
    def task_count(self) -> int:
        return len(self._tasks)

    # -- input side ---------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """PCM16 LE 16 kHz mono from the client. Never blocks; on overload the oldest audio
        is dropped (counted), because late audio is worth less than fresh audio."""
        samples = pcm16_bytes_to_float32(data)
        item = (samples, self.clock.now())
        if self._inbox.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self._inbox.get_nowait()
                self._dropped_frames += 1
        self._inbox.put_nowait(item)

    async def _input_loop(self) -> None:
        while True:
            item = await self._inbox.get()
            if item is None:
                return
            samples, arrival = item
            for frame in self._splitter.push(samples):
                self._on_frame(frame, arrival)

    def _on_frame(self, frame: Float32, arrival: float) -> None:
        assert self._vad is not None
        prob = self._vad.process(frame)
        self._audio_t += FRAME_S
        in_utterance = self.turns.phase is not tt.Phase.IDLE
        if in_utterance:
            self._stt.push(frame)
            self._recent.append(frame)
        else:
            self._preroll.append(frame)
        events = self.turns.on_frame(prob, self._audio_t, agent_speaking=self._playing(arrival))
        if self.turns.phase is tt.Phase.SPEECH:
            self._last_voiced_wall = arrival
        for ev in events:
            if isinstance(ev, tt.SpeechStarted):
                self._on_speech_started(arrival)
            elif isinstance(ev, tt.Paused):
                self._stt.pause()
                self._spawn(self._settle_check(self.turns.generation, self._stt), "settle")
            elif isinstance(ev, tt.CheckCompleteness):
                self._spawn(self._acoustic_check(ev.generation), "smart-turn")
            elif isinstance(ev, tt.EndOfTurn):
                self._on_end_of_turn(ev, arrival)

    def _playing(self, now: float) -> bool:
        """Is the caller (probably) hearing us: a reply with audio out, or its tail still
        playing at the client after the reply task is done."""
        if self._speaking:
            return True
        done = self._played
        return done is not None and done[0].playing(now)

    def _on_speech_started(self, arrival: float) -> None:
        self._speech_start_wall = arrival
        if self._played is not None and (self._reply is None or self._reply.done()):
            if self._playing(arrival):
                self._barge_in_tail(arrival)
            self._played = None
        if self._reply is not None and not self._reply.done():
            if self._speaking or (self._playback and self._playback.started_at is not None):
                self._barge_in()
            else:
                # The caller went on before we said anything: drop the premature reply and
                # treat what they said before as the start of this utterance.
                self._pending_user = self._current_user_text
                self._cancel_reply(record=False, discard_user=True)
        self._recent.clear()
        for f in self._preroll:
            self._stt.push(f)
            self._recent.append(f)
        self._preroll.clear()

    def _barge_in_tail(self, now: float) -> None:
        """Barge-in on a reply whose text is complete but whose audio is still playing: the
        saved message is cut back to what was heard."""
        self._cut_history_to_heard(now)
        self.conn.send_json(vp.playback_interrupt())
        self.conn.send_json(vp.status("listening"))
        self.agent._fire_hook(self.agent.on_interrupt(self.conn), self.conn)

    def _cut_history_to_heard(self, now: float) -> None:
        """The last reply was saved whole; the caller stopped it at `now`: keep the heard part."""
        assert self._played is not None
        playback, seq = self._played
        self.conn.discard_pending_audio()
        heard = playback.heard_text(now)
        row = self.agent.sql("SELECT content FROM callroom_messages WHERE seq = ?", seq)
        if row:
            meta = json.dumps({"interrupted": True, "full": row[0]["content"]})
            self.agent.sql(
                "UPDATE callroom_messages SET content = ?, meta = ? WHERE seq = ?", heard, meta, seq
            )

    _played: tuple[_Playback, int] | None = None

    def playback_end(self) -> float | None:
        """When the client will have finished playing the last reply (None: nothing queued)."""
        if self._played is None:
            return None
        playback = self._played[0]
        now = self.clock.now()
        return now + max(0.0, playback.total - playback.played(now)) / playback.rate

    def _barge_in(self) -> None:
        self._cancel_reply(record=True)
        self.conn.send_json(vp.playback_interrupt())
        self.conn.send_json(vp.status("listening"))
        self.agent._fire_hook(self.agent.on_interrupt(self.conn), self.conn)

    async def _settle_check(self, generation: int, stt: STTStream) -> None:
        try:
            text = await _bounded(stt.settled(), self.agent.stt_timeout, "stt",
                                  "incremental transcription")
            if not isinstance(text, str):
                raise ProviderError(f"STT returned {type(text).__name__}, not text", stage="stt")
        except Exception:
            log.exception("incremental transcription failed; the final pass will redo it")
            text = ""
        if text:
            self.conn.send_json(vp.transcript_interim(_join(self._pending_user, text)))
        ev = self.turns.on_completeness(generation, self._audio_t, acoustic=None, text=text)
        if ev is not None:
            self._on_end_of_turn(ev, self.clock.now())

    async def _acoustic_check(self, generation: int) -> None:
        detector = self.providers.turn
        if detector is None:
            return
        audio = np.concatenate(list(self._recent)) if self._recent else np.zeros(0, np.float32)
        try:
            p = await _bounded(detector.completion_probability(audio),
                               self.agent.end_of_turn_timeout, "turn", "end-of-turn model")
            p = float(p)
            if not 0.0 <= p <= 1.0:  # NaN included
                raise ProviderError(f"end-of-turn model returned {p}")
        except Exception:
            log.exception("end-of-turn model failed; the transcript alone decides")
            p = self.turns.config.rescue_threshold
        ev = self.turns.on_completeness(generation, self._audio_t, acoustic=p, text=None)
        if ev is not None:
            self._on_end_of_turn(ev, self.clock.now())

    def _on_end_of_turn(self, ev: tt.EndOfTurn, now: float) -> None:
        t0 = self._last_voiced_wall or now
        timings = TurnTimings.start(self.clock, origin=t0)
        timings.mark("eot")
        if self.turns.speech_started_at is not None:
            timings.speech_ms = max(0.0, (ev.last_voiced - self.turns.speech_started_at) * 1000)
        self._recent.clear()
        self.conn.send_json(vp.transcript_interim(""))
        prefix, self._pending_user = self._pending_user, ""
        stt = self._stt
        self._stt: STTStream = self.providers.stt.stream()  # the next utterance may start at once

        async def transcript() -> str:
            try:
                text = await _bounded(stt.finish(), self.agent.stt_timeout, "stt",
                                      "speech recognition")
            except BaseException:
                stt.reset()  # drop whatever the provider still has pending
                raise
            if not isinstance(text, str):
                raise ProviderError(f"STT returned {type(text).__name__}, not text", stage="stt")
            timings.mark("stt")
            return _join(prefix, text)

        self._start_reply(transcript(), "speech", t0, timings, ev.reason)

    # -- replies ------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self._reply is not None and not self._reply.done()

    def _start_reply(
        self,
        user_text: Awaitable[str] | None,
        source: str,
        t0: float,
        timings: TurnTimings,
        reason: str = "",
        *,
        fixed_reply: str | None = None,
        audio: bool = True,
        after: asyncio.Task[None] | None = None,
    ) -> asyncio.Task[None]:
        if after is None:
            self._cancel_reply(record=True)
        cancel = asyncio.Event()
        self._reply_cancel = cancel
        self._turn_seq += 1
        turn_id = f"turn_{self._turn_seq}"
        task = self._spawn(
            self._run_reply(
                user_text, source, t0, timings, cancel, turn_id, fixed_reply, audio, after,
                self._finalizing,
            ),
            turn_id,
        )
        self._reply = task
        return task

    _current_user_text: str = ""

    def _cancel_reply(self, *, record: bool, discard_user: bool = False) -> None:
        """Stop the reply now (LLM, TTS and queued audio, synchronously); its history is
        settled once the task has unwound, so tool results it records while cancelling land
        before the interrupted text, in an order providers accept."""
        task = self._reply
        if task is None or task.done():
            return
        if self._reply_cancel is not None:
            self._reply_cancel.set()
        task.cancel()
        self.conn.discard_pending_audio()
        self._speaking = False
        heard = self._playback.heard_text(self.clock.now()) if self._playback else ""
        full = "".join(self._reply_text)
        user_seq = self._user_seq
        self._reply = None
        self._reply_text = []
        self._playback = None
        self._user_seq = None
        previous = self._finalizing

        async def settle() -> None:
            if previous is not None:
                await asyncio.wait({previous})
            await asyncio.wait({task})
            history = self.agent._history()
            if discard_user and user_seq is not None:
                self.agent.sql("DELETE FROM callroom_messages WHERE seq >= ?", user_seq)
            elif record and (heard or full):
                history.append(
                    {"role": "assistant", "content": heard, "interrupted": True, "full": full},
                    call_id=self.call_id,
                )

        self._finalizing = asyncio.ensure_future(settle())

    _finalizing: asyncio.Future[None] | None = None
    _user_seq: int | None = None

    async def _run_reply(
        self,
        user_text_aw: Awaitable[str] | None,
        source: str,
        t0: float,
        timings: TurnTimings,
        cancel: asyncio.Event,
        turn_id: str,
        fixed_reply: str | None,
        audio: bool,
        after: asyncio.Task[None] | None = None,
        settling: asyncio.Future[None] | None = None,
    ) -> None:
        if after is not None:
            try:
                await asyncio.wait({after})
            except asyncio.CancelledError:
                after.cancel()
                raise
        if settling is not None:
            await asyncio.wait({settling})
        agent, conn = self.agent, self.conn
        outcome = "completed"
        stage = "stt" if source == "speech" else "pipeline"  # for the error frame, if any
        self._reply_text = []
        self._current_user_text = ""
        playback = _Playback(self.output_rate, self._cursor)
        self._playback = playback
        try:
            result: TurnResult
            if user_text_aw is not None:
                raw = await user_text_aw
                stage = "pipeline"
                text = await agent._after_transcribe(raw, conn) if source == "speech" else raw
                if not text or not text.strip():
                    outcome = "skipped"
                    conn.send_json(vp.status("listening"))
                    return
                text = text.strip()
                self._current_user_text = text
                prior = agent._history().messages(limit_turns=agent.history_limit)
                self._user_seq = agent._history().append(
                    {"role": "user", "content": text}, call_id=self.call_id
                )
                if source == "text":  # the npm server's order for text turns
                    conn.send_json(vp.status("thinking"))
                    conn.send_json(vp.transcript("user", text))
                else:
                    conn.send_json(vp.transcript("user", text))
                    conn.send_json(vp.status("thinking"))
                ctx = TurnContext(
                    connection=conn,
                    messages=prior,
                    cancelled=cancel,
                    call_id=self.call_id,
                    source=source,
                    record=lambda m: agent._history().append(m, call_id=self.call_id),
                    speak_filler=self._speak_filler,
                )
                timings.mark("llm_start")
                stage = "llm"  # on_turn and its text stream; a TTS failure says "tts" itself
                first_by = asyncio.get_running_loop().time() + agent.llm_first_token_timeout
                result = await _bounded(
                    agent._call_on_turn(text, ctx), agent.llm_first_token_timeout, "llm",
                    "the reply (on_turn)",
                )
            else:
                timings.mark("llm_start")
                result = fixed_reply
                first_by = None
            reply = await self._speak_result(result, timings, playback, audio, first_by)
            self._user_seq = None
            if not reply.strip():
                outcome = "no_output"
                conn.send_json(vp.completion_outcome("no_output", ""))
            else:
                seq = agent._history().append(
                    {"role": "assistant", "content": reply}, call_id=self.call_id
                )
                if playback.started_at is not None:
                    self._played = (playback, seq)
            self._reply_text = []
            timings.mark("total")
            if outcome == "completed" and source != "speak":
                conn.send_json(timings.metrics_message())
                observe(timings)
        except asyncio.CancelledError:
            outcome = "aborted"
            raise
        except Exception as exc:
            stage = getattr(exc, "stage", None) or stage
            outcome = "tts_error" if stage == "tts" else "error"
            await agent.on_error(exc, conn)
            conn.send_json(vp.error(agent.apology_text, stage=stage))
            self._reply_text = []  # the apology is a reply of its own, not a continuation
            with contextlib.suppress(Exception):
                await self._speak_result(
                    agent.apology_text, timings, _Playback(self.output_rate, self._cursor), audio
                )
        finally:
            self._speaking = False
            timings.mark("end")
            if source != "speak":
                count_turn(source, outcome)
                # One structured line per turn: ids and timings only, never audio or text.
                log.info(
                    "turn call=%s turn=%s source=%s outcome=%s %s",
                    self.call_id, turn_id, source, outcome,
                    " ".join(f"{k}={v:.0f}" for k, v in timings.stages().items()),
                )
                with contextlib.suppress(Exception):
                    conn.send_json(timings.turn_metrics_message(turn_id, source, outcome))
            if outcome != "aborted":
                conn.send_json(vp.status("listening" if self.in_call else "idle"))
                if self._reply is asyncio.current_task():
                    self._reply = None
                    self._playback = None

    @property
    def in_call(self) -> bool:
        return not self.closed and not self.text_only

    async def _speak_result(
        self,
        result: TurnResult,
        timings: TurnTimings,
        playback: _Playback,
        audio: bool,
        first_by: float | None = None,
    ) -> str:
        """Stream `result` to the client as transcript deltas and (if `audio`) speech.

        The text must start by `first_by` (loop time; default: `llm_first_token_timeout`
        from now) and never pause longer than `llm_stall_timeout` (a filler resets it)."""
        conn = self.conn
        tts = self.providers.tts if audio else None
        clauses: asyncio.Queue[str | None] = asyncio.Queue()
        speaker = self._spawn(self._tts_loop(clauses, timings, playback), "tts") if tts else None
        chunker = ClauseChunker()
        started = False
        loop = asyncio.get_running_loop()
        stall = self.agent.llm_stall_timeout
        watch: asyncio.Timeout | None = None

        def emit(delta: str) -> None:
            nonlocal started
            if watch is not None and not watch.expired():
                watch.reschedule(loop.time() + stall)  # progress (a filler too)
            if not started:
                started = True
                timings.mark("llm")
                conn.send_json(vp.transcript_start())
            self._reply_text.append(delta)
            conn.send_json(vp.transcript_delta(delta))
            if speaker is not None:
                for clause in chunker.push(delta):
                    clauses.put_nowait(clause)

        def filler(text: str) -> None:
            # Said while a slow tool runs: whatever the model said before goes out first.
            if speaker is not None:
                for clause in chunker.flush():
                    clauses.put_nowait(clause)
            emit(text if text.endswith(" ") else text + " ")
            if speaker is not None:
                for clause in chunker.flush():
                    clauses.put_nowait(clause)

        self._filler = filler
        deltas = _deltas(result)
        deadline = first_by if first_by is not None else (
            loop.time() + self.agent.llm_first_token_timeout
        )
        try:
            while True:
                watch = asyncio.timeout_at(deadline if not started else loop.time() + stall)
                try:
                    async with watch:
                        delta = await anext(deltas)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    if not watch.expired():
                        raise
                    what = "its next words" if started else "its first words"
                    raise ProviderTimeout("llm", f"the reply gave no {what} in time") from None
                finally:
                    watch = None
                if delta:
                    emit(delta)
            timings.mark("llm_done")
            if speaker is not None:
                for clause in chunker.flush():
                    clauses.put_nowait(clause)
                clauses.put_nowait(None)
                await speaker
            full = "".join(self._reply_text)
            if started:
                conn.send_json(vp.transcript_end(full))
            return full
        finally:
            self._filler = None
            with contextlib.suppress(Exception):
                await deltas.aclose()  # close the model's stream (and its HTTP response)
            if speaker is not None and not speaker.done():
                speaker.cancel()
                with contextlib.suppress(BaseException):
                    await speaker

    _filler: Callable[[str], None] | None = None

    def _speak_filler(self, text: str) -> None:
        if self._filler is not None:
            self._filler(text)

    async def _tts_loop(
        self,
        clauses: asyncio.Queue[str | None],
        timings: TurnTimings,
        playback: _Playback,
    ) -> None:
        tts = self.providers.tts
        assert tts is not None
        agent, conn = self.agent, self.conn
        resampler = Resampler(tts.sample_rate, self.output_rate)
        max_samples = int(self.output_rate * MAX_OUT_CHUNK_S)
        while True:
            clause = await clauses.get()
            if clause is None:
                return
            text = await agent._before_synthesize(clause, conn)
            if not text or not any(ch.isalnum() for ch in text):
                continue  # nothing speakable (e.g. a trailing "...")
            timings.mark("tts_start")
            synth_start = self.clock.now()
            chunks = aiter(tts.synthesize(text))
            try:
                while True:
                    pcm = await _bounded(
                        anext(chunks, _END), agent.tts_timeout, "tts", "speech synthesis"
                    )
                    if pcm is _END:
                        break
                    await self._send_speech(
                        _check_pcm(pcm), text, resampler, timings, playback, max_samples
                    )
            except ProviderError as exc:
                exc.stage = exc.stage or "tts"
                raise
            except Exception as exc:  # a reset connection, a crash inside the model, ...
                msg = f"TTS failed: {type(exc).__name__}: {exc}"
                raise ProviderError(msg, stage="tts") from exc
            finally:
                aclose = getattr(chunks, "aclose", None)
                if aclose is not None:
                    with contextlib.suppress(Exception):
                        await aclose()
            tail = resampler.process(np.zeros(0, np.int16), last=True)
            if len(tail):
                conn.send(np.ascontiguousarray(tail, dtype="<i2").tobytes())
                playback.add(text, len(tail), self.clock.now())
            timings.add_tts_work((self.clock.now() - synth_start) * 1000)
            resampler = Resampler(tts.sample_rate, self.output_rate)

    async def _send_speech(
        self,
        pcm: Any,
        text: str,
        resampler: Resampler,
        timings: TurnTimings,
        playback: _Playback,
        max_samples: int,
    ) -> None:
        """One synthesized chunk: resample, `after_synthesize`, send in bounded frames."""
        agent, conn = self.agent, self.conn
        timings.mark("tts")
        out = resampler.process(pcm)
        out = await agent._after_synthesize(out, text, conn)
        if out is None or not len(out):
            return
        for start in range(0, len(out), max_samples):
            piece = out[start : start + max_samples]
            if not self._speaking:
                self._speaking = True
                conn.send_json(vp.status("speaking"))
            await conn.wait_drained()  # TTS outruns real time: pace to what the client takes
            conn.send(np.ascontiguousarray(piece, dtype="<i2").tobytes())
            playback.add(text, len(piece), self.clock.now())
            timings.mark("first_audio")

    # -- other entry points -------------------------------------------------------------------
    def interrupt(self) -> bool:
        """Client `interrupt`: abort the reply, keep what was heard (also when the reply was
        fully sent and only its tail was still playing at the client)."""
        was_busy = self.busy
        now = self.clock.now()
        if not was_busy and self._played is not None and self._playing(now):
            self._cut_history_to_heard(now)
            self._played = None
            return True
        self._cancel_reply(record=True)
        return was_busy

    def barge_in(self) -> bool:
        """Stop what the caller hears now, as if they had spoken over it (a key press on a
        phone): `playback_interrupt`, history cut back to what was heard. False if silent."""
        now = self.clock.now()
        playback = self._playback
        if self.busy and (self._speaking or (playback and playback.started_at is not None)):
            self._barge_in()
            return True
        if self._played is not None and self._playing(now):
            self._barge_in_tail(now)
            self._played = None
            return True
        return False

    def text_turn(self, text: str, *, audio: bool) -> asyncio.Task[None]:
        now = self.clock.now()

        async def given() -> str:
            return text

        timings = TurnTimings.start(self.clock, origin=now)
        return self._start_reply(given(), "text", now, timings, audio=audio)

    def speak(self, text: str) -> asyncio.Task[None]:
        """Say `text` after whatever the agent is saying now (not a barge-in of itself)."""
        after = self._reply if self.busy else None
        now = self.clock.now()
        return self._start_reply(
            None, "speak", now, TurnTimings.start(self.clock, origin=now), fixed_reply=text,
            after=after,
        )


async def _deltas(result: TurnResult) -> AsyncIterator[str]:
    if result is None:
        return
    if isinstance(result, str):
        yield result
        return
    async for piece in result:
        if isinstance(piece, str):
            yield piece


class _NullSTTStream:
    """Stands in for STT on a text-only call."""

    def push(self, audio: Float32) -> None: ...
    def pause(self) -> None: ...
    def interim(self) -> str:
        return ""

    async def settled(self) -> str:
        return ""

    async def finish(self) -> str:
        return ""

    def reset(self) -> None: ...


def _join(prefix: str, text: str) -> str:
    return f"{prefix} {text}".strip() if prefix else text


_END: Any = object()


async def _bounded(aw: Awaitable[Any], limit: float, stage: str, what: str) -> Any:
    """Await provider work for at most `limit` seconds (`ProviderTimeout` past it)."""
    timer = asyncio.timeout(limit)
    try:
        async with timer:
            return await aw
    except TimeoutError:
        if timer.expired():
            raise ProviderTimeout(stage, f"{what} gave no answer within {limit:g} s") from None
        raise


def _check_pcm(pcm: Any) -> Int16:
    """A TTS chunk must be int16 samples; anything else fails the clause (not the call)."""
    arr = pcm if isinstance(pcm, np.ndarray) else np.asarray(pcm)
    if arr.dtype != np.int16:
        raise ProviderError(f"TTS returned {arr.dtype} audio, not int16", stage="tts")
    return arr.reshape(-1) if arr.ndim != 1 else arr
