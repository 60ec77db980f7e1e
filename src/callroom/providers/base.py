"""One protocol per provider role. Providers never import the server.

Audio inside callroom is numpy: `float32` in [-1, 1] at 16 kHz mono for input (VAD, STT,
end of turn), `int16` at the provider's own rate for TTS output (the pipeline resamples).
Blocking model work must run in the shared worker pool (`callroom.providers.pool`), never on
the event loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

Float32 = npt.NDArray[np.float32]
Int16 = npt.NDArray[np.int16]

INPUT_RATE = 16_000
"""Sample rate of everything on the input side (VAD, STT, end of turn)."""


# -- VAD ----------------------------------------------------------------------------------------
@runtime_checkable
class VADStream(Protocol):
    """Per-call VAD state (recurrent models keep hidden state between frames)."""

    frame_samples: int
    """Samples per frame the model wants (512 at 16 kHz for Silero = 32 ms)."""

    def process(self, frame: Float32) -> float:
        """Speech probability of one frame of exactly `frame_samples` samples."""
        ...

    def reset(self) -> None: ...


@runtime_checkable
class VAD(Protocol):
    def stream(self) -> VADStream: ...


# -- STT ----------------------------------------------------------------------------------------
@runtime_checkable
class STTStream(Protocol):
    """Incremental transcription of one utterance.

    The pipeline pushes audio as it arrives and calls `pause()` when the VAD sees a short
    pause, a good moment to transcribe what is pending in the background; `finish()` then only
    has to transcribe the tail. `interim()` never waits for model work.
    """

    def push(self, audio: Float32) -> None: ...

    def pause(self) -> None: ...

    def interim(self) -> str: ...

    async def settled(self) -> str:
        """Wait for background work started by `pause()`; the text of all audio pushed before
        that pause (used as a completeness signal for the end of the turn)."""
        ...

    async def finish(self) -> str:
        """The transcript of everything pushed since the last reset; then resets."""
        ...

    def reset(self) -> None:
        """Drop everything (and cancel pending work) without a result."""
        ...


@runtime_checkable
class STT(Protocol):
    async def transcribe(self, audio: Float32) -> str:
        """Transcribe a whole utterance (16 kHz float32)."""
        ...

    def stream(self) -> STTStream: ...


# -- end of turn --------------------------------------------------------------------------------
@runtime_checkable
class TurnDetector(Protocol):
    async def completion_probability(self, audio: Float32) -> float:
        """P(the speaker finished their turn) given up to the last 8 s of 16 kHz audio."""
        ...


# -- TTS ----------------------------------------------------------------------------------------
@runtime_checkable
class TTS(Protocol):
    sample_rate: int

    def synthesize(self, text: str) -> AsyncIterator[Int16]:
        """Stream PCM16 chunks of `text` at `sample_rate`; first chunk as early as possible."""
        ...


# -- LLM ----------------------------------------------------------------------------------------
Message = dict[str, Any]
"""A chat message in OpenAI chat-completions form (role, content, tool_calls, tool_call_id).
Providers with another wire format convert at their edge."""


@dataclass(frozen=True, slots=True)
class ToolSpec:
    name: str
    description: str
    parameters: dict[str, Any]
    """JSON schema of the arguments object."""


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str
    """Raw JSON text as the model produced it; validated by the tool layer, not the provider."""


@dataclass(frozen=True, slots=True)
class LLMEvent:
    """One streamed item: a piece of text, a complete tool call, or the end."""

    kind: Literal["text", "tool_call", "done"]
    text: str = ""
    tool_call: ToolCall | None = None
    finish_reason: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class LLM(Protocol):
    def stream(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[LLMEvent]:
        """Stream one completion. Cancelling the iteration cancels the request."""
        ...


# -- a call's speech models ---------------------------------------------------------------------
@dataclass
class VoiceProviders:
    """The speech models of a call. `turn` (end-of-turn model) and `tts` are optional."""

    vad: VAD
    stt: STT
    tts: TTS | None = None
    turn: TurnDetector | None = None
