"""Embedded (offline, CPU) speech providers: Silero VAD, Whisper STT, Smart Turn, Piper TTS.

Each lives in its own module and imports its optional dependencies only when used, so
`import callroom.providers.local` is free; a missing extra raises `MissingExtra` naming it.
Models load once per process (`models`); call `models.warm_up()` at startup.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from callroom.providers.base import VoiceProviders

if TYPE_CHECKING:
    from callroom.providers.local.piper import PiperTTS
    from callroom.providers.local.silero import SileroStream, SileroVAD
    from callroom.providers.local.smart_turn import SmartTurn
    from callroom.providers.local.whisper import WhisperStream, WhisperSTT

__all__ = [
    "PiperTTS",
    "SileroStream",
    "SileroVAD",
    "SmartTurn",
    "WhisperSTT",
    "WhisperStream",
    "local_voice_providers",
    "warm_up",
]

_HOMES = {
    "PiperTTS": "piper",
    "SileroStream": "silero",
    "SileroVAD": "silero",
    "SmartTurn": "smart_turn",
    "WhisperSTT": "whisper",
    "WhisperStream": "whisper",
    "warm_up": "models",
}


def __getattr__(name: str) -> Any:
    """Import the provider module on first access (PEP 562), not at package import."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{home}"), name)


def local_voice_providers(stt_model: str = "tiny.en") -> VoiceProviders:
    """The embedded speech stack, loaded once per process (blocking: call off the loop).

    Silero VAD, Whisper (tiny.en by default; `CALLROOM_STT_MODEL=base` for Whisper base),
    Smart Turn v3.2 for the end of turn and Piper for speech.
    """
    from callroom.providers.local import models
    from callroom.providers.local.piper import PiperTTS
    from callroom.providers.local.silero import SileroVAD
    from callroom.providers.local.smart_turn import SmartTurn
    from callroom.providers.local.whisper import WhisperSTT

    models.warm_up(stt_model)
    return VoiceProviders(
        vad=SileroVAD(), stt=WhisperSTT(stt_model), tts=PiperTTS(), turn=SmartTurn()
    )
