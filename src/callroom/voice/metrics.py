"""Per-turn latency: a timing record, a clock, the two client metric messages, Prometheus.

Everything in `TurnTimings` is milliseconds after one origin: the user's last voiced frame for
a spoken turn (what a caller experiences as "I stopped talking"), the arrival of the text for
a text turn. Landmarks are offsets from that origin, not stage durations, because stages
overlap (the LLM streams while TTS speaks) and offsets can be compared with the latency
budget directly.

The `agents` VoiceClient defines two messages with its own, different reference points
(`dist/voice/index.js`, `dist/diagnostics-*.js`, `dist/types-*.d.ts`); `metrics_message()` and
`turn_metrics_message()` derive those exact semantics from the landmarks, and put callroom's
own numbers in an extra `callroom` object the client ignores.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol, TypeAlias, get_args, runtime_checkable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import choose_encoder

__all__ = [
    "REGISTRY",
    "STAGES",
    "Clock",
    "FakeClock",
    "RealClock",
    "TurnTimings",
    "count_turn",
    "metrics_message",
    "observe",
    "render_metrics",
    "turn_metrics_message",
]


# -- clocks ------------------------------------------------------------------------------------
@runtime_checkable
class Clock(Protocol):
    """Monotonic time in seconds. One object per pipeline, so tests can script a timeline."""

    def now(self) -> float: ...


class RealClock:
    """`time.monotonic()`: the clock asyncio's loop uses, so readings compare with loop times."""

    def now(self) -> float:
        return time.monotonic()

    def __call__(self) -> float:
        """Also usable where a plain `Callable[[], float]` clock is expected."""
        return time.monotonic()


class FakeClock:
    """A clock that moves only when told to: tests assert exact milliseconds, never sleep."""

    def __init__(self, start: float = 0.0) -> None:
        self._t = float(start)

    def now(self) -> float:
        return self._t

    def __call__(self) -> float:
        return self._t

    def advance(self, seconds: float) -> float:
        """Move forward by `seconds` and return the new time; monotonic clocks never go back."""
        if seconds < 0:
            raise ValueError(f"a monotonic clock cannot go back ({seconds} s)")
        self._t += seconds
        return self._t


# -- the per-turn record -----------------------------------------------------------------------
Stage: TypeAlias = Literal["eot", "stt", "llm", "tts", "first_audio", "total"]
STAGES: Final[tuple[Stage, ...]] = ("eot", "stt", "llm", "tts", "first_audio", "total")
"""The per-turn landmarks callroom measures, in pipeline order (also Prometheus labels)."""

TurnSource: TypeAlias = Literal["speech", "text"]
TurnOutcome: TypeAlias = Literal[
    "completed",
    "no_output",
    "output_limit",
    "content_filtered",
    "model_error",
    "tts_error",
    "aborted",
    "skipped",
    "error",
]
TURN_SOURCES: Final[frozenset[str]] = frozenset({"speech", "text"})
TURN_OUTCOMES: Final[frozenset[str]] = frozenset(get_args(TurnOutcome))

_MARKS: Final = frozenset(
    {*STAGES, "llm_start", "llm_done", "tts_start", "end"}
)  # names accepted by `TurnTimings.mark`


@dataclass
class TurnTimings:
    """Landmarks of one turn, in ms after its origin (see the module docstring); None = not
    reached. Set fields directly, or attach a clock (`TurnTimings.start`) and call `mark()`.
    """

    eot_ms: float | None = None
    """End-of-turn decision made."""
    stt_ms: float | None = None
    """Final transcript ready (the client's "final input")."""
    llm_ms: float | None = None
    """First non-empty text from the LLM (or `on_turn`)."""
    tts_ms: float | None = None
    """First audio out of the synthesizer."""
    first_audio_ms: float | None = None
    """First audio byte queued to the client."""
    total_ms: float | None = None
    """Reply fully produced: model stream consumed and TTS drained."""

    # Further landmarks, needed to give the client's messages their exact meaning.
    speech_ms: float | None = None
    """How long the user spoke (first to last voiced frame): speech start is at -speech_ms."""
    llm_start_ms: float | None = None
    """`on_turn` invoked (the model started)."""
    llm_done_ms: float | None = None
    """Model stream fully consumed."""
    tts_start_ms: float | None = None
    """First TTS provider call."""
    tts_work_ms: float = 0.0
    """Sum of per-clause synthesis durations (they may overlap each other and the LLM)."""
    end_ms: float | None = None
    """Turn over, whatever the outcome (the client's terminal summary)."""

    origin: float | None = field(default=None, compare=False)
    """Clock reading (s) of the origin, when recording live with `mark()`."""
    clock: Clock | None = field(default=None, repr=False, compare=False)

    @classmethod
    def start(cls, clock: Clock, origin: float | None = None) -> TurnTimings:
        """A record that measures itself: `origin` defaults to now; pass the time of the last
        voiced frame, which the VAD only recognises as last some frames later."""
        return cls(origin=clock.now() if origin is None else origin, clock=clock)

    def elapsed_ms(self) -> float:
        """Milliseconds from the origin to now (needs an attached clock)."""
        if self.clock is None or self.origin is None:
            raise RuntimeError("TurnTimings has no clock: create it with TurnTimings.start()")
        return (self.clock.now() - self.origin) * 1000.0

    def mark(self, name: str) -> float:
        """Record landmark `name` (e.g. "stt", "first_audio", "llm_start") as now, once.

        The first mark wins, so "first audio" stays first however often the caller marks it;
        returns the recorded value.
        """
        if name not in _MARKS:
            raise ValueError(f"unknown landmark {name!r}; expected one of {sorted(_MARKS)}")
        attr = f"{name}_ms"
        value: float | None = getattr(self, attr)
        if value is None:
            value = self.elapsed_ms()
            setattr(self, attr, value)
        return value

    def add_tts_work(self, ms: float) -> None:
        """Add one clause's synthesis time to `tts_work_ms`."""
        self.tts_work_ms += max(0.0, ms)

    def stages(self) -> dict[str, float]:
        """The `STAGES` landmarks reached, as `{"eot_ms": ..., ...}` (for logs and benches)."""
        out: dict[str, float] = {}
        for stage in STAGES:
            value = getattr(self, f"{stage}_ms")
            if value is not None:
                out[f"{stage}_ms"] = round(float(value), 1)
        return out

    # -- the client's messages ----------------------------------------------------------------
    def _final_input_ms(self, source: str | None) -> float | None:
        """Where the client's "pipeline start" / "final input" lies on our timeline."""
        if source == "text" or (source is None and self.eot_ms is None):
            return 0.0 if self.stt_ms is None else self.stt_ms
        return self.stt_ms

    def metrics_message(self) -> dict[str, Any]:
        """The `metrics` message, with the meanings `agents` gives its fields.

        llm_ms: model start → stream consumed; tts_ms: summed clause synthesis work;
        first_audio_ms: final input → first audio sent (0: no audio); total_ms: final input →
        reply produced. Our offsets from the end of speech ride along under `callroom`.
        """
        start = self._final_input_ms(None) or 0.0
        return metrics_message(
            llm_ms=_span(self.llm_start_ms, self.llm_done_ms) or 0,
            tts_ms=_ms(self.tts_work_ms),
            first_audio_ms=_span(start, self.first_audio_ms) or 0,
            total_ms=_span(start, self.total_ms) or 0,
            callroom=self.stages(),
        )

    def turn_metrics_message(
        self,
        turn_id: str,
        source: str,
        outcome: str,
        *,
        turn_total_ms: float | None = None,
    ) -> dict[str, Any]:
        """The `turn_metrics` message (the client's `VoiceTurnMetrics`) for this turn.

        turnTotalMs runs from the turn's allocation (speech start for a spoken turn, arrival
        for a text one) to its end: `turn_total_ms` if given, else `end_ms`, else now when a
        clock is attached, else the latest landmark. Optional timings whose landmarks were
        not reached are left out, as the client expects.
        """
        if turn_total_ms is None:
            end = self.end_ms
            if end is None and self.clock is not None and self.origin is not None:
                end = self.elapsed_ms()
            if end is None:
                reached = [v for v in (*self.stages().values(), self.llm_done_ms) if v is not None]
                end = max(reached, default=0.0)
            allocated = -self.speech_ms if source == "speech" and self.speech_ms else 0.0
            turn_total_ms = end - allocated
        final_input = self._final_input_ms(source)
        speech_to_final = (
            None
            if source != "speech" or self.speech_ms is None or self.stt_ms is None
            else self.speech_ms + self.stt_ms
        )
        return turn_metrics_message(
            turn_id,
            source,
            outcome,
            turn_total_ms=turn_total_ms,
            speech_start_to_final_ms=speech_to_final,
            model_to_first_text_ms=_span(self.llm_start_ms, self.llm_ms),
            model_stream_consumption_ms=_span(self.llm_start_ms, self.llm_done_ms),
            final_input_to_first_audio_ms=_span(final_input, self.first_audio_ms),
            tts_to_first_audio_ms=_span(self.tts_start_ms, self.first_audio_ms),
            tts_work_ms=self.tts_work_ms if self.tts_start_ms is not None else None,
        )


def _ms(value: float) -> int:
    """The client's durations are whole, non-negative milliseconds (`Date.now()` deltas)."""
    return max(0, round(value))


def _span(start: float | None, end: float | None) -> int | None:
    if start is None or end is None:
        return None
    return _ms(end - start)


# -- message builders --------------------------------------------------------------------------
def metrics_message(
    *,
    llm_ms: float,
    tts_ms: float,
    first_audio_ms: float,
    total_ms: float,
    callroom: dict[str, float] | None = None,
) -> dict[str, Any]:
    """`{"type": "metrics", llm_ms, tts_ms, first_audio_ms, total_ms}` (all four required)."""
    msg: dict[str, Any] = {
        "type": "metrics",
        "llm_ms": _ms(llm_ms),
        "tts_ms": _ms(tts_ms),
        "first_audio_ms": _ms(first_audio_ms),
        "total_ms": _ms(total_ms),
    }
    if callroom:
        msg["callroom"] = dict(callroom)
    return msg


def turn_metrics_message(
    turn_id: str,
    source: str,
    outcome: str,
    *,
    turn_total_ms: float,
    speech_start_to_final_ms: float | None = None,
    model_to_first_text_ms: float | None = None,
    model_stream_consumption_ms: float | None = None,
    final_input_to_first_audio_ms: float | None = None,
    tts_to_first_audio_ms: float | None = None,
    tts_work_ms: float | None = None,
) -> dict[str, Any]:
    """`{"type": "turn_metrics", turnId, source, outcome, turnTotalMs, ...optional}`.

    Source and outcome are checked against the client's closed sets, because the client's
    UI switches on them; optional durations are omitted when None, never sent as null.
    """
    if source not in TURN_SOURCES:
        raise ValueError(f"turn source must be one of {sorted(TURN_SOURCES)}, got {source!r}")
    if outcome not in TURN_OUTCOMES:
        raise ValueError(f"turn outcome must be one of {sorted(TURN_OUTCOMES)}, got {outcome!r}")
    msg: dict[str, Any] = {
        "type": "turn_metrics",
        "turnId": turn_id,
        "source": source,
        "outcome": outcome,
        "turnTotalMs": _ms(turn_total_ms),
    }
    optional = {
        "speechStartToFinalMs": speech_start_to_final_ms,
        "modelToFirstTextMs": model_to_first_text_ms,
        "modelStreamConsumptionMs": model_stream_consumption_ms,
        "finalInputToFirstAudioMs": final_input_to_first_audio_ms,
        "ttsToFirstAudioMs": tts_to_first_audio_ms,
        "ttsWorkMs": tts_work_ms,
    }
    for key, value in optional.items():
        if value is not None:
            msg[key] = _ms(value)
    return msg


# -- Prometheus --------------------------------------------------------------------------------
REGISTRY: Final = CollectorRegistry(auto_describe=True)
"""callroom's own registry: `/metrics` shows only callroom series, and tests do not collide
with whatever else the process registered in prometheus_client's global one."""

_BUCKETS: Final = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.8,
    1.0, 1.5, 2.0, 3.0, 5.0, 10.0,
)  # fmt: skip
# Dense around the budget (250 ms end of turn, ~500 ms to first audio), coarse beyond.

STAGE_SECONDS: Final = Histogram(
    "callroom_voice_stage_seconds",
    "Voice turn landmarks in seconds after the user stopped speaking "
    "(after the text arrived, for text turns).",
    ["stage", "source"],
    buckets=_BUCKETS,
    registry=REGISTRY,
)
TURNS: Final = Counter(
    "callroom_voice_turns",
    "Voice turns by source and outcome.",
    ["source", "outcome"],
    registry=REGISTRY,
)
for _source in ("speech", "text"):  # series exist (at zero) before the first turn
    for _stage in STAGES:
        STAGE_SECONDS.labels(_stage, _source)


def observe(timings: TurnTimings, *, source: str | None = None) -> None:
    """Record a turn's landmarks in the stage histograms.

    `source` defaults to "speech" when the turn has an end-of-turn landmark, else "text":
    the two have different origins and must not share a histogram.
    """
    if source is None:
        source = "speech" if timings.eot_ms is not None else "text"
    for stage in STAGES:
        value = getattr(timings, f"{stage}_ms")
        if value is not None:
            STAGE_SECONDS.labels(stage, source).observe(max(0.0, value) / 1000.0)


def count_turn(source: str, outcome: str) -> None:
    """Count a finished turn (every outcome, unlike `observe`, which needs timings)."""
    TURNS.labels(source, outcome).inc()


def render_metrics(accept: str | None = None) -> tuple[bytes, str]:
    """Body and Content-Type for `GET /metrics`, honouring an OpenMetrics `Accept` header."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(REGISTRY), content_type
