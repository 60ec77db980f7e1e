"""Smart Turn v3.2 (pipecat, BSD-2): P(the speaker finished their turn) from audio alone.

The model reads the Whisper log-mel features (80 mels x 800 frames) of the last 8 s of
16 kHz audio, zero-padded at the front. Preprocessing follows pipecat's
`local_smart_turn_v3.py`: the 8 s window is normalized to zero mean and unit variance
*before* the spectrogram (transformers' `WhisperFeatureExtractor(do_normalize=True)`), then
a Whisper log-mel with an 8 s chunk. faster-whisper's `FeatureExtractor` computes the same
log-mel as pipecat's vendored numpy copy of transformers' extractor (max abs difference
~4e-6 on speech, identical probabilities to 4 decimals), so neither transformers nor pipecat's
dependencies are needed. The output is already a sigmoid probability.

The model judges prosody as well as words: TTS audio of a fragment that the TTS spoke with a
final fall ("I would like to book an appointment for.") can score as complete, while a
fragment that ends on "and" / "the" scores low. It expects the audio to end shortly after
the speech (pipecat calls it after ~0.2 s of silence).
"""

from __future__ import annotations

import importlib.util

import numpy as np

from callroom.errors import MissingExtra
from callroom.providers import pool
from callroom.providers.base import INPUT_RATE, Float32
from callroom.providers.local import models

__all__ = ["WINDOW_SAMPLES", "SmartTurn", "features"]

WINDOW_S = 8
WINDOW_SAMPLES = WINDOW_S * INPUT_RATE
_NORM_EPS = 1e-7
"""transformers' variance epsilon for `do_normalize`."""

_extractor: object | None = None


def _feature_extractor() -> object:
    global _extractor
    if _extractor is None:  # a race builds two identical extractors: harmless
        from faster_whisper.feature_extractor import FeatureExtractor

        _extractor = FeatureExtractor(feature_size=80, chunk_length=WINDOW_S)
    return _extractor


def features(audio: Float32) -> Float32:
    """Model input `[80, 800]` for the last 8 s of `audio` (16 kHz float32)."""
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)[-WINDOW_SAMPLES:]
    window = np.zeros(WINDOW_SAMPLES, dtype=np.float32)
    window[WINDOW_SAMPLES - len(audio) :] = audio
    window = (window - window.mean()) / np.sqrt(window.var() + _NORM_EPS)
    # padding=0: the window is already exactly 8 s; the extractor drops the last STFT frame.
    mel = _feature_extractor()(window, padding=0)  # type: ignore[operator]
    return np.ascontiguousarray(mel, dtype=np.float32)


class SmartTurn:
    """The `TurnDetector` provider; the model loads on first use (or `models.warm_up()`).

    `threads`: onnxruntime intra-op threads per inference (pipecat's default is 1, which
    leaves the other core to STT / TTS running at the same moment).
    """

    def __init__(self, *, threads: int = 1) -> None:
        if importlib.util.find_spec("onnxruntime") is None:
            raise MissingExtra("onnxruntime", "voice")
        if importlib.util.find_spec("faster_whisper") is None:
            raise MissingExtra("faster-whisper", "voice")
        models.smart_turn_path()  # fail now, not mid-call, if the pipecat-ai wheel is missing
        self.threads = threads

    def predict(self, audio: Float32) -> float:
        """Blocking: run it in the model pool (~10 ms features + ~60-100 ms model)."""
        session = models.smart_turn_session(self.threads)
        (out,) = session.run(None, {"input_features": features(audio)[None]})
        return float(np.asarray(out).reshape(-1)[0])

    async def completion_probability(self, audio: Float32) -> float:
        return await pool.run(self.predict, audio)
