"""Turn-taking policy: when did the caller start, pause, finish; when is it a barge-in.

Pure logic over (speech probability, time) per VAD frame, so it runs on a scripted timeline in
tests. The end of a turn is not a fixed silence: after a short silence (`check_ms`) the
pipeline asks for a completeness signal — Smart Turn on the audio, vetoed or rescued by the
incremental transcript — and ends the turn at once when it says "complete"; otherwise it
keeps listening up to `max_wait_ms`, so "my ID is … four five six seven" is not cut.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum


@dataclass(frozen=True, slots=True)
class TurnConfig:
    speech_threshold: float = 0.5
    """VAD probability that counts as speech when not already in speech."""
    silence_threshold: float = 0.35
    """Below this, an in-speech frame counts as silence (hysteresis)."""
    start_frames: int = 2
    """Consecutive speech frames that start an utterance (2 × 32 ms)."""
    barge_in_frames: int = 5
    """Consecutive speech frames that interrupt the agent while it talks (stricter)."""
    pause_ms: float = 100.0
    """Silence after which pending audio is worth transcribing in the background."""
    check_ms: float = 160.0
    """Silence after which completeness is checked (decision lands ≤ 250 ms)."""
    complete_threshold: float = 0.5
    """Smart Turn probability at or above which the turn is complete."""
    rescue_threshold: float = 0.1
    """A finished-looking transcript ends the turn if Smart Turn is at least this sure."""
    recheck_ms: float = 400.0
    """When the transcript looks finished but the first acoustic score was low, ask the
    end-of-turn model again at this much silence (its score swings with the exact window)."""
    max_wait_ms: float = 1500.0
    """Longest silence before the turn ends regardless (nothing hangs)."""


class Phase(Enum):
    IDLE = "idle"
    SPEECH = "speech"
    SILENCE = "silence"


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    at: float


@dataclass(frozen=True, slots=True)
class Paused:
    at: float


@dataclass(frozen=True, slots=True)
class CheckCompleteness:
    generation: int
    at: float


@dataclass(frozen=True, slots=True)
class EndOfTurn:
    last_voiced: float
    """Time the caller stopped speaking: every latency figure is measured from here."""
    at: float
    reason: str
    """`complete` (model said so), `transcript` (text rescue) or `timeout` (cap reached)."""


TurnEvent = SpeechStarted | Paused | CheckCompleteness | EndOfTurn

# Words after which an English sentence cannot end: a pause after them is mid-sentence.
_DANGLING = frozenset(
    """a an the and or but so because to of in on at for with from by my your our their his
    her its is are was were am be been being i'm it's that's there's what's which who whose
    if when while than then as like um uh er erm hmm please number id is zero one two three
    four five six seven eight nine""".split()
)
_WORD = re.compile(r"[a-z0-9']+")


def transcript_looks_complete(text: str) -> bool | None:
    """Cheap linguistic completeness: None when there is nothing to judge.

    Whisper punctuates; a trailing "…"/"-" or a dangling function word means the caller is
    mid-sentence. Digits are dangling too ("my ID is 4 5" often continues).
    """
    t = text.strip()
    if not t:
        return None
    if t.endswith(("...", "…", "-", ",")):
        return False
    words = _WORD.findall(t.lower())
    if t[-1].isdigit():
        return False
    if words and words[-1] in _DANGLING:
        return False
    return t[-1] in ".?!"


class TurnTaker:
    """Frame-by-frame turn state for one call."""

    def __init__(
        self, config: TurnConfig | None = None, frame_ms: float = 32.0, *,
        uses_acoustic: bool = True,
    ) -> None:
        self.config = config or TurnConfig()
        self.uses_acoustic = uses_acoustic
        """Whether an end-of-turn model answers `CheckCompleteness` (else text alone)."""
        self._text: str | None = None
        self._text_pending = False
        self._acoustic_pending = False
        self._rechecked = False
        self.frame_ms = frame_ms
        self.phase = Phase.IDLE
        self._run = 0
        self._last_voiced = 0.0
        self._paused = False
        self._checked = False
        self.generation = 0
        self.speech_started_at: float | None = None
        self._acoustic: float | None = None

    def reset(self) -> None:
        self.phase = Phase.IDLE
        self._run = 0
        self.generation += 1
        self.speech_started_at = None

    def on_frame(self, prob: float, now: float, *, agent_speaking: bool = False) -> list[TurnEvent]:
        """Feed one VAD frame ending at `now` (seconds). Returns what happened."""
        cfg = self.config
        events: list[TurnEvent] = []
        if self.phase is Phase.IDLE:
            if prob >= cfg.speech_threshold:
                self._run += 1
                need = cfg.barge_in_frames if agent_speaking else cfg.start_frames
                if self._run >= need:
                    self.phase = Phase.SPEECH
                    self.speech_started_at = now - self._run * self.frame_ms / 1000
                    self._last_voiced = now
                    self._begin_speech()
                    events.append(SpeechStarted(self.speech_started_at))
            else:
                self._run = 0
            return events
        if prob >= cfg.silence_threshold:
            if self.phase is Phase.SILENCE:
                self._begin_speech()  # the caller went on: earlier checks are void
            self.phase = Phase.SPEECH
            self._last_voiced = now
            return events
        self.phase = Phase.SILENCE
        silence_ms = (now - self._last_voiced) * 1000
        if not self._paused and silence_ms >= cfg.pause_ms:
            self._paused = True
            self._text_pending = True
            events.append(Paused(now))
        if not self._checked and silence_ms >= cfg.check_ms:
            self._checked = True
            self._acoustic_pending = True
            events.append(CheckCompleteness(self.generation, now))
        if (
            self._checked
            and not self._rechecked
            and not self._acoustic_pending
            and not self._text_pending
            and silence_ms >= cfg.recheck_ms
            and transcript_looks_complete(self._text or "") is True
        ):
            self._rechecked = True
            self._acoustic_pending = True
            events.append(CheckCompleteness(self.generation, now))
        if silence_ms >= cfg.max_wait_ms:
            events.append(self._end(now, "timeout"))
        return events

    def on_completeness(
        self, generation: int, now: float, *, acoustic: float | None = None,
        text: str | None = None,
    ) -> EndOfTurn | None:
        """Evidence about the current silence: the end-of-turn model's probability
        (`acoustic`) and/or the transcript of everything said up to the pause (`text`).

        Both signals must be in before a turn ends early: the acoustic model alone misjudges
        some fragments (synthetic voices end "my ID is" with a falling, final-sounding tone),
        and the transcript is needed for the reply anyway, so waiting for it costs no
        voice-to-voice time. A transcript ending mid-sentence vetoes; a finished-looking one
        rescues a doubtful acoustic score; the `max_wait_ms` cap still ends every turn.
        """
        if generation != self.generation or self.phase is not Phase.SILENCE:
            return None
        if acoustic is not None:
            self._acoustic = acoustic
            self._acoustic_pending = False
        if text is not None:
            self._text = text
            self._text_pending = False
        if self._text_pending or (self.uses_acoustic and self._acoustic_pending):
            return None
        cfg = self.config
        p = self._acoustic if self.uses_acoustic else None
        lexical = transcript_looks_complete(self._text or "")
        if lexical is False:
            return None
        if lexical is True and (p is None or p >= cfg.rescue_threshold):
            return self._end(now, "complete" if p is None or p >= cfg.complete_threshold
                             else "transcript")
        if lexical is None and p is not None and p >= cfg.complete_threshold:
            return self._end(now, "complete")
        return None

    def _begin_speech(self) -> None:
        self.generation += 1
        self._paused = False
        self._checked = False
        self._rechecked = False
        self._acoustic = None
        self._text = None
        self._text_pending = False
        self._acoustic_pending = False

    def _end(self, now: float, reason: str) -> EndOfTurn:
        ev = EndOfTurn(self._last_voiced, now, reason)
        self.phase = Phase.IDLE
        self._run = 0
        self.generation += 1
        return ev

    @property
    def last_voiced(self) -> float:
        return self._last_voiced
