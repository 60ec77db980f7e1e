"""Voice protocol v1 of the npm `agents` package (`agents/voice`) as plain data.

Inbound JSON is classified into typed messages; anything that is not a voice message is left
for `on_message`, as the npm server does. Outbound messages are dict builders. No I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

PROTOCOL_VERSION = 1

Status = Literal["idle", "listening", "thinking", "speaking"]
AudioFormat = Literal["mp3", "pcm16", "wav", "opus"]
TurnOutcome = Literal[
    "completed", "no_output", "output_limit", "content_filtered", "model_error",
    "tts_error", "aborted", "skipped", "error",
]

VOICE_TYPES = frozenset(
    {"hello", "start_call", "end_call", "start_of_speech", "end_of_speech", "interrupt",
     "text_message"}
)


@dataclass(frozen=True, slots=True)
class Hello:
    protocol_version: int | None = None


@dataclass(frozen=True, slots=True)
class StartCall:
    preferred_format: str | None = None


@dataclass(frozen=True, slots=True)
class EndCall:
    pass


@dataclass(frozen=True, slots=True)
class SpeechHint:
    """Client-side VAD hint (`start_of_speech` / `end_of_speech`); advisory only."""

    started: bool


@dataclass(frozen=True, slots=True)
class Interrupt:
    pass


@dataclass(frozen=True, slots=True)
class TextMessage:
    text: str


@dataclass(frozen=True, slots=True)
class Invalid:
    """A voice message with the wrong shape: answer with an error, keep the call."""

    type: str
    reason: str


VoiceMessage = Hello | StartCall | EndCall | SpeechHint | Interrupt | TextMessage | Invalid

MAX_TEXT_CHARS = 8_000


def parse(obj: Any) -> VoiceMessage | None:
    """Classify parsed JSON; `None` means "not a voice message" (goes to `on_message`)."""
    if not isinstance(obj, dict):
        return None
    kind = obj.get("type")
    if not isinstance(kind, str) or kind not in VOICE_TYPES:
        return None
    if kind == "hello":
        v = obj.get("protocol_version")
        return Hello(v if isinstance(v, int) and not isinstance(v, bool) else None)
    if kind == "start_call":
        fmt = obj.get("preferred_format")
        return StartCall(fmt if isinstance(fmt, str) else None)
    if kind == "end_call":
        return EndCall()
    if kind in ("start_of_speech", "end_of_speech"):
        return SpeechHint(kind == "start_of_speech")
    if kind == "interrupt":
        return Interrupt()
    text = obj.get("text")
    if not isinstance(text, str):
        return Invalid(kind, "text_message needs a string field 'text'")
    if len(text) > MAX_TEXT_CHARS:
        return Invalid(kind, f"text_message longer than {MAX_TEXT_CHARS} characters")
    return TextMessage(text)


def parse_text(data: str) -> VoiceMessage | None:
    try:
        return parse(json.loads(data))
    except (ValueError, RecursionError):
        return None


# -- server → client ------------------------------------------------------------------------
def welcome() -> dict[str, Any]:
    return {"type": "welcome", "protocol_version": PROTOCOL_VERSION}


def status(value: Status) -> dict[str, Any]:
    return {"type": "status", "status": value}


def audio_config(fmt: AudioFormat, sample_rate: int) -> dict[str, Any]:
    return {"type": "audio_config", "format": fmt, "sampleRate": sample_rate}


def transcript_interim(text: str) -> dict[str, Any]:
    return {"type": "transcript_interim", "text": text}


def transcript(role: Literal["user", "assistant"], text: str, **extra: Any) -> dict[str, Any]:
    return {"type": "transcript", "role": role, "text": text, **extra}


def transcript_start() -> dict[str, Any]:
    return {"type": "transcript_start", "role": "assistant"}


def transcript_delta(text: str) -> dict[str, Any]:
    return {"type": "transcript_delta", "text": text}


def transcript_end(text: str, **extra: Any) -> dict[str, Any]:
    return {"type": "transcript_end", "text": text, **extra}


def playback_interrupt() -> dict[str, Any]:
    return {"type": "playback_interrupt"}


def completion_outcome(
    code: str, partial_output: str, finish_reason: str | None = None
) -> dict[str, Any]:
    msg: dict[str, Any] = {
        "type": "completion_outcome", "code": code, "stage": "llm", "partialOutput": partial_output
    }
    if finish_reason is not None:
        msg["finishReason"] = finish_reason
    return msg


def error(
    message: str, *, code: str | None = None, stage: str | None = None,
    retryable: bool | None = None,
) -> dict[str, Any]:
    msg: dict[str, Any] = {"type": "error", "message": message}
    if code is not None:
        msg["code"] = code
    if stage is not None:
        msg["stage"] = stage
    if retryable is not None:
        msg["retryable"] = retryable
    return msg
