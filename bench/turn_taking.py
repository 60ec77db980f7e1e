"""Turn-taking benchmark: premature replies vs. end-of-turn delay; callroom vs. fixed silence.

    .venv/bin/python bench/turn_taking.py [--repeat 3] [--name turn_taking]

Inputs: spoken fixtures made with Piper (`tests/fixtures/speech.py`, cached), each padded with
0.5 s of silence before and 2.0 s after:

- **pause cases**: one question spoken in two parts with a 0.4–0.9 s pause between them,
  mostly after a word a sentence cannot end on ("is", "and", "the", "my", a digit), a few
  between two sentences that belong together. Answering at the pause is a premature reply.
- **complete cases**: single complete sentences and questions. Here only the delay counts.

Method: the real models on the real code path, in **simulated real time**. Frames of 512
samples (32 ms) go through Silero VAD (one streaming state per case) and
`callroom.voice.turns.TurnTaker` on *audio time*, exactly like `Call._on_frame`: pre-roll,
`Paused` → the WhisperStream settle path (transcribe everything since the utterance started,
one job at a time, later pauses folded into the next job), `CheckCompleteness` → Smart Turn
v3.2 on the utterance's audio (last 8 s), results fed back through
`TurnTaker.on_completeness`. Model results are not instantaneous: each model call is really
run and timed (median of `--repeat` runs, on this machine, sequentially), and its result is
delivered at *event time + measured latency* in the simulated timeline (Whisper and Smart
Turn each modelled as one worker, as on the 2-core pool). So the decision times below include
model latency honestly; they do not include contention between the two models running at
the same moment on 2 cores (the server can be slower than this), nor network or frame
buffering (the client's 20 ms frames).

Delay = decision time − end of the last VAD-voiced frame of the final utterance (the origin
of the pipeline's own `eot_ms`); also reported from the acoustic end of speech (last 10 ms
window above -40 dBFS). A case is **premature** when any end of turn is decided before the
caller's final words have been spoken.

Policies, side by side: callroom's `TurnTaker` with the default `TurnConfig`; fixed silence
of 500 ms and 800 ms (same VAD and hysteresis, no model); and candidate fixes (subclasses here,
`turns.py` is not edited) — see `POLICIES`.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import common  # noqa: E402
from voice_client import voiced_bounds  # noqa: E402

from callroom.voice import turns as tt  # noqa: E402

RATE = 16_000
FRAME = 512
FRAME_S = FRAME / RATE
PREROLL_FRAMES = 10
SMART_TURN_FRAMES = int(8.0 / FRAME_S)
LEAD_S = 0.5
TAIL_S = 2.0


# -- fixtures -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    name: str
    parts: tuple[str, ...]
    pause_s: float = 0.0
    note: str = ""
    anchor: str | None = None
    """Regex matching (Whisper's spelling of) the first word of the last part: where a
    spliced rendering is cut. None: the parts are only synthesized separately."""

    @property
    def text(self) -> str:
        return " … ".join(self.parts)


MID_SENTENCE = [
    Case("patient-id", ("My patient ID is", "four five six seven."), 0.7, "after 'is'", "4|four"),
    Case(
        "book-for",
        ("I would like to book an appointment for", "next Tuesday morning."),
        0.6,
        "after 'for'",
        "next",
    ),
    Case(
        "check-and",
        ("Can you check my prescription and", "tell me when it is ready?"),
        0.5,
        "after 'and'",
        "tell",
    ),
    Case(
        "phone-digits",
        ("The number is five five five", "one two three four."),
        0.8,
        "between digit groups",
        "-?1|one",
    ),
    Case(
        "about-the", ("I'm calling about the", "bill I got last week."), 0.5, "after 'the'", "bill"
    ),
    Case(
        "cancel-my", ("I want to cancel my", "dentist appointment."), 0.4, "after 'my'", "dentist"
    ),
    Case(
        "possible-to", ("Is it possible to", "speak with Doctor Patel?"), 0.9, "after 'to'", "speak"
    ),
    Case("address-twelve", ("My address is twelve", "Oak Street."), 0.5, "after a number", "oak"),
    Case(
        "refill-my",
        ("I need a refill on my", "blood pressure medication."),
        0.8,
        "after 'my'",
        "blood",
    ),
    Case("okay-so", ("Okay so", "what time do you open on Saturday?"), 0.6, "after 'so'", "what"),
    Case(
        "email-is",
        ("Please send the results to my email, which is", "john at example dot com."),
        0.7,
        "after 'is'",
        "john",
    ),
    Case(
        "dob-march",
        ("My date of birth is March", "third, nineteen eighty."),
        0.6,
        "after a month name",
        "3|third",
    ),
]
TWO_SENTENCES = [
    Case(
        "insurance",
        ("I have a question about my insurance.", "Do you accept Blue Cross?"),
        0.7,
        "two sentences",
    ),
    Case(
        "confirm",
        ("Hi, this is John Smith.", "I'm calling to confirm my appointment."),
        0.6,
        "two sentences",
    ),
    Case(
        "cleaning",
        ("I'd like to book a cleaning.", "Do you have anything on Monday?"),
        0.5,
        "two sentences",
    ),
]
COMPLETE = [
    Case("next-appointment", ("When is my next appointment?",)),
    Case("cancel", ("I'd like to cancel my appointment.",)),
    Case("opening-hours", ("What are your opening hours?",)),
    Case("nurse", ("Can I speak to a nurse?",)),
    Case("id-full", ("My patient ID is four five six seven.",)),
    Case("thanks", ("Thank you, that's all.",)),
    Case("walk-ins", ("Do you take walk-ins?",)),
    Case("reschedule", ("Please reschedule it to Friday afternoon.",)),
    Case("cleaning-cost", ("How much does a cleaning cost?",)),
    Case("yes", ("Yes.",)),
    Case("no-fine", ("No, that's fine.",)),
    Case("location", ("Where is the clinic located?",)),
    Case("move-friday", ("Can I move it to Friday afternoon?",)),
    Case("patel-next-week", ("Is Doctor Patel available next week?",)),
    Case("bring-anything", ("Do I need to bring anything with me?",)),
    Case("saturday-hours", ("What are your opening hours on Saturday?",)),
]

GROUPS = {
    "mid-sentence, spliced": "one sentence rendered whole, silence inserted at the word boundary: "
    "the first part keeps the prosody of a sentence that goes on",
    "mid-sentence, fragments": "each part rendered on its own (tests/fixtures/speech.py "
    "`concat_with_pause`): Piper ends every fragment with a final fall (worst case)",
    "two sentences": "two sentences of one request, rendered separately",
    "complete": "one complete sentence or question",
}


@dataclass
class Fixture:
    case: Case
    group: str
    audio: np.ndarray  # float32 16 kHz, padded
    speech_end_s: float  # acoustic end of the final words
    final_start_s: float  # acoustic start of the final part
    probs: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    @property
    def name(self) -> str:
        return f"{self.case.name}/{self.group.split(',')[-1].strip()}"

    @property
    def multi(self) -> bool:
        return len(self.case.parts) > 1


def _fixture(case: Case, group: str, first: np.ndarray, last: np.ndarray) -> Fixture:
    from tests.fixtures.speech import silence, to_float32

    parts = [silence(LEAD_S), first] if len(first) else [silence(LEAD_S)]
    if len(first):
        parts.append(silence(case.pause_s))
    start_last = sum(len(p) for p in parts)
    audio = np.concatenate([*parts, last, silence(TAIL_S)])
    first_v, last_v = voiced_bounds(last)
    return Fixture(
        case,
        group,
        to_float32(audio),
        (start_last + last_v + 1) / RATE,
        (start_last + first_v) / RATE,
    )


def fragments_fixture(case: Case, group: str) -> Fixture:
    from tests.fixtures.speech import concat_with_pause, speech

    last = speech(case.parts[-1])
    if len(case.parts) == 1:
        return _fixture(case, group, np.zeros(0, np.int16), last)
    first = concat_with_pause(list(case.parts[:-1]), case.pause_s)
    return _fixture(case, group, first, last)


_SPLICE_CACHE = ROOT / "tests" / ".cache" / "splices.json"


def spliced_fixture(case: Case, models: Models) -> Fixture:
    """The whole sentence from Piper, cut at the boundary before the last part's first word
    and padded with `pause_s` of silence there.

    Finding the cut: Whisper's word timestamps give the anchor word's rough start; every local
    energy minimum (10 ms RMS) from 250 ms before to 50 ms after it is a candidate, and the
    one whose two halves Whisper transcribes closest to the two parts wins (cached in
    tests/.cache/splices.json, keyed by the text)."""
    import hashlib
    import json

    from tests.fixtures.speech import speech

    assert case.anchor is not None and len(case.parts) == 2
    whole = speech(" ".join(case.parts))
    key = hashlib.sha256(f"v1\n{' '.join(case.parts)}\n{case.anchor}".encode()).hexdigest()[:24]
    cache = json.loads(_SPLICE_CACHE.read_text()) if _SPLICE_CACHE.is_file() else {}
    cut = cache.get(key)
    if cut is None:
        cut = models.find_cut(whole, case)
        cache[key] = cut
        _SPLICE_CACHE.parent.mkdir(parents=True, exist_ok=True)
        _SPLICE_CACHE.write_text(json.dumps(cache, indent=1))
    return _fixture(case, "mid-sentence, spliced", whole[:cut], whole[cut:])


_NUMBER_WORDS = {
    w: str(i)
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve".split()
    )
}


def _norm_words(text: str) -> list[str]:
    out: list[str] = []
    for tok in re.findall(r"[a-z']+|\d+", text.lower().replace("-", " ")):
        tok = _NUMBER_WORDS.get(tok, tok)
        out.extend(list(tok) if tok.isdigit() else [tok])
    return out


def word_errors(ref: str, hyp: str) -> int:
    r, h = _norm_words(ref), _norm_words(hyp)
    row = list(range(len(h) + 1))
    for i, a in enumerate(r, 1):
        prev, row[0] = row[0], i
        for j, b in enumerate(h, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (a != b))
    return row[-1]


# -- models (really run, timed, cached) -----------------------------------------------------------
def models_module() -> Any:
    from callroom.providers.local import models

    return models


class Models:
    """Whisper (the `transcribe_blocking` the stream's jobs call) and Smart Turn, each call run
    `repeat` times; the median wall time is the latency, cached per (case, span)."""

    def __init__(self, repeat: int) -> None:
        from callroom.providers.local.silero import SileroVAD
        from callroom.providers.local.smart_turn import SmartTurn
        from callroom.providers.local.whisper import WhisperSTT

        models_module().warm_up("tiny.en", tts=False)
        self.repeat = repeat
        self.vad = SileroVAD()
        self.stt = WhisperSTT("tiny.en")
        self.turn = SmartTurn()
        self._stt: dict[tuple[str, int, int], tuple[str, float]] = {}
        self._turn: dict[tuple[str, int, int], tuple[float, float]] = {}
        self.stt_ms: list[float] = []
        self.turn_ms: list[float] = []
        self.vad_frame_ms: list[float] = []

    def _timed(self, fn: Callable[[], Any]) -> tuple[Any, float]:
        out, times = None, []
        for _ in range(self.repeat):
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
        return out, statistics.median(times)

    def transcribe(self, fx: Fixture, start: int, end: int) -> tuple[str, float]:
        key = (fx.name, start, end)
        if key not in self._stt:
            text, s = self._timed(lambda: self.stt.transcribe_blocking(fx.audio[start:end]))
            self._stt[key] = (text, s)
            self.stt_ms.append(s * 1000)
        return self._stt[key]

    def completion(self, fx: Fixture, start: int, end: int) -> tuple[float, float]:
        key = (fx.name, start, end)
        if key not in self._turn:
            p, s = self._timed(lambda: self.turn.predict(fx.audio[start:end]))
            self._turn[key] = (p, s)
            self.turn_ms.append(s * 1000)
        return self._turn[key]

    def find_cut(self, whole: np.ndarray, case: Case) -> int:
        """Sample index where `whole` (int16) splits into the case's two parts (see
        `spliced_fixture`)."""
        from tests.fixtures.speech import to_float32

        audio = to_float32(whole)
        model = models_module().whisper_model("tiny.en")
        segments, _ = model.transcribe(
            audio,
            language="en",
            word_timestamps=True,
            beam_size=1,
            condition_on_previous_text=False,
            vad_filter=False,
        )
        words = [w for seg in segments for w in (seg.words or [])]
        assert case.anchor is not None
        hits = [w for w in words if re.match(case.anchor, w.word.strip().lower())]
        if not hits:
            raise RuntimeError(f"{case.name}: anchor {case.anchor!r} not in {words}")
        t = int(hits[0].start * RATE)
        win, hop = RATE // 100, RATE // 200
        idx = np.arange(max(0, t - RATE // 4), min(len(audio) - win, t + RATE // 20), hop)
        energy = np.array([np.sqrt(np.mean(audio[i : i + win] ** 2)) for i in idx])
        minima = [
            j
            for j in range(1, len(energy) - 1)
            if energy[j] <= energy[j - 1] and energy[j] <= energy[j + 1]
        ]
        minima = sorted(minima, key=lambda j: energy[j])[:8]
        pad = np.zeros(RATE // 4, np.float32)
        best: tuple[tuple[int, float], int] | None = None
        for j in minima:
            cut = int(idx[j]) + win // 2
            t1 = self.stt.transcribe_blocking(np.concatenate([pad, audio[:cut], pad]))
            t2 = self.stt.transcribe_blocking(np.concatenate([pad, audio[cut:], pad]))
            score = (
                word_errors(case.parts[0], t1) + word_errors(case.parts[1], t2),
                float(energy[j]),
            )
            if best is None or score < best[0]:
                best = (score, cut)
        if best is None:
            raise RuntimeError(f"{case.name}: no cut candidates")
        print(
            f"  splice {case.name}: cut at {best[1] / RATE:.3f} s, word errors {best[0][0]}",
            file=sys.stderr,
        )
        return best[1]

    def vad_probs(self, fx: Fixture) -> np.ndarray:
        stream = self.vad.stream()
        n = len(fx.audio) // FRAME
        out = np.zeros(n, np.float32)
        t0 = time.perf_counter()
        for k in range(n):
            out[k] = stream.process(fx.audio[k * FRAME : (k + 1) * FRAME])
        self.vad_frame_ms.append((time.perf_counter() - t0) * 1000 / max(n, 1))
        return out


# -- policies -------------------------------------------------------------------------------------
_WORD = re.compile(r"[a-z0-9']+")
_SHIPPED_LEXICAL = tt.transcript_looks_complete


def looks_complete_digits_dangle(text: str) -> bool | None:
    """`turns.transcript_looks_complete`, except that a final number is dangling even with a
    full stop after it: "My address is 12." usually goes on, and Whisper's full stop after
    digits says little (it writes "The number is 555." for a caller who is not done)."""
    verdict = _SHIPPED_LEXICAL(text)
    words = _WORD.findall(text.lower())
    if verdict and words and (words[-1].isdigit() or words[-1] in _NUMBER_WORDS):
        return False
    return verdict


class CustomLexical(tt.TurnTaker):
    """`TurnTaker` exactly as in turns.py, with another transcript-completeness function
    (swapped in for the duration of `on_completeness`; the bench is single-threaded)."""

    def __init__(self, config: tt.TurnConfig, lexical: Callable[[str], bool | None]) -> None:
        super().__init__(config, FRAME_S * 1000)
        self.lexical_fn = lexical

    def on_completeness(self, *args: Any, **kwargs: Any) -> tt.EndOfTurn | None:
        saved = tt.transcript_looks_complete
        tt.transcript_looks_complete = self.lexical_fn  # type: ignore[assignment]
        try:
            return super().on_completeness(*args, **kwargs)
        finally:
            tt.transcript_looks_complete = saved  # type: ignore[assignment]


class BeforeFix(tt.TurnTaker):
    """The policy before commit 9139ec1 ("end early only when the acoustic model and the
    transcript agree"), for comparison: each answer was judged alone as it arrived, so the
    transcript's veto was forgotten when Smart Turn answered after it, a confident acoustic
    score ended the turn without a transcript, and a finished-looking transcript ended it
    without Smart Turn. Its word regex skipped digits ("… is 4567." ended on "is")."""

    _OLD_WORD = re.compile(r"[a-z']+")

    def __init__(self, config: tt.TurnConfig) -> None:
        super().__init__(config, FRAME_S * 1000)
        self._old_acoustic: float | None = None
        self._old_gen = -1

    @classmethod
    def old_lexical(cls, text: str) -> bool | None:
        t = text.strip()
        if not t:
            return None
        if t.endswith(("...", "…", "-", ",")):
            return False
        words = cls._OLD_WORD.findall(t.lower())
        if t[-1].isdigit():
            return False
        if words and words[-1] in tt._DANGLING:
            return False
        return t[-1] in ".?!"

    def on_completeness(
        self,
        generation: int,
        now: float,
        *,
        acoustic: float | None = None,
        text: str | None = None,
    ) -> tt.EndOfTurn | None:
        if generation != self.generation or self.phase is not tt.Phase.SILENCE:
            return None
        if self._old_gen != generation:
            self._old_gen, self._old_acoustic = generation, None
        if acoustic is not None:
            self._old_acoustic = acoustic
        p = self._old_acoustic
        lexical = self.old_lexical(text) if text is not None else None
        cfg = self.config
        if lexical is False:
            return None
        if p is not None and p >= cfg.complete_threshold:
            return self._end(now, "complete")
        if lexical is True and (p is None or p >= cfg.rescue_threshold):
            return self._end(now, "transcript")
        return None


class Recheck(tt.TurnTaker):
    """Proposal: when the transcript looks finished but Smart Turn was doubtful (below
    `complete_threshold`), run Smart Turn once more at `recheck_ms` of silence instead of
    waiting for `max_wait_ms`. Its score swings with the exact window (e.g. 0.30 → 0.75 →
    0.43 → 0.85 for "Can I move it to Friday afternoon?" as the silence grows by 50 ms), so
    one check at a fixed point sends some complete questions to the 1.5 s cap."""

    def __init__(self, config: tt.TurnConfig, recheck_ms: float) -> None:
        super().__init__(config, FRAME_S * 1000)
        self.recheck_ms = recheck_ms
        self._rechecked = False

    def on_frame(self, prob: float, now: float, **kw: Any) -> list[tt.TurnEvent]:
        events = super().on_frame(prob, now, **kw)
        if (
            self.phase is tt.Phase.SILENCE
            and self._checked
            and not self._rechecked
            and not self._acoustic_pending
            and not self._text_pending
            and self._acoustic is not None
            and self._acoustic < self.config.complete_threshold
            and tt.transcript_looks_complete(self._text or "") is True
            and (now - self._last_voiced) * 1000 >= self.recheck_ms
        ):
            self._rechecked = True
            self._acoustic_pending = True
            events.append(tt.CheckCompleteness(self.generation, now))
        return events

    def _begin_speech(self) -> None:
        super()._begin_speech()
        self._rechecked = False


class FixedSilence(tt.TurnTaker):
    """End of turn after `ms` of VAD silence, no model (the classic fixed-silence endpointer)."""

    def __init__(self, ms: float) -> None:
        super().__init__(tt.TurnConfig(pause_ms=1e9, check_ms=1e9, max_wait_ms=ms), FRAME_S * 1000)


@dataclass(frozen=True)
class Policy:
    name: str
    make: Callable[[], tt.TurnTaker]
    models: bool = True
    note: str = ""


def _policies(grid: bool) -> list[Policy]:
    default = tt.TurnConfig()

    def ours(cfg: tt.TurnConfig = default) -> Callable[[], tt.TurnTaker]:
        return lambda: tt.TurnTaker(cfg, FRAME_S * 1000)

    def dangle(cfg: tt.TurnConfig = default) -> Callable[[], tt.TurnTaker]:
        return lambda: CustomLexical(cfg, looks_complete_digits_dangle)

    out = [
        Policy("callroom (turns.py, default TurnConfig)", ours(), note="as in the tree"),
        Policy("fixed silence 500 ms", lambda: FixedSilence(500), models=False),
        Policy("fixed silence 800 ms", lambda: FixedSilence(800), models=False),
        Policy(
            "before 9139ec1 (answers judged one at a time)",
            lambda: BeforeFix(default),
            note="for comparison",
        ),
    ]
    if not grid:
        return out
    out += [
        Policy(
            "callroom, check_ms=100",
            ours(replace(default, check_ms=100.0)),
            note="Smart Turn starts with the settle transcript",
        ),
        Policy(
            "callroom, pause_ms=64, check_ms=96",
            ours(replace(default, pause_ms=64.0, check_ms=96.0)),
            note="both checks ~2 frames earlier",
        ),
        Policy("callroom, max_wait_ms=1000", ours(replace(default, max_wait_ms=1000.0))),
        Policy("callroom, complete_threshold=0.8", ours(replace(default, complete_threshold=0.8))),
        Policy(
            "proposal: re-check Smart Turn at 400 ms",
            lambda: Recheck(default, 400.0),
            note="only when the transcript looks finished and Smart Turn was doubtful",
        ),
        Policy("proposal: re-check Smart Turn at 600 ms", lambda: Recheck(default, 600.0)),
        Policy(
            "proposal: a final number is dangling",
            dangle(),
            note="'… is 12.' / '… is 555.' wait (a lexical rule, not a TurnConfig field)",
        ),
        Policy("proposal + max_wait_ms=1000", dangle(replace(default, max_wait_ms=1000.0))),
    ]
    return out


# -- simulation -----------------------------------------------------------------------------------
@dataclass
class Decision:
    at: float  # simulated time the decision was made (s, audio timeline)
    last_voiced: float
    reason: str
    text: str | None = None


@dataclass
class CaseResult:
    case: str
    group: str
    decisions: list[Decision]
    premature: bool
    """An end of turn was decided before the final words were spoken."""
    premature_heard: bool
    """… and its reply's audio would have started before the caller went on."""
    delay_ms: float | None  # after the last VAD-voiced frame of the final utterance
    delay_from_speech_end_ms: float | None
    final_reason: str | None
    transcripts: list[str]


class Sim:
    """One fixture through VAD → TurnTaker → (Whisper settle, Smart Turn) on a simulated clock."""

    def __init__(self, fx: Fixture, policy: Policy, models: Models) -> None:
        self.fx, self.policy, self.models = fx, policy, models
        self.turns = policy.make()
        self.events: list[tuple[float, int, Callable[[float], None]]] = []
        self.seq = itertools.count()
        self.decisions: list[Decision] = []
        self.speech_starts: list[float] = []  # when the VAD/TurnTaker saw speech start
        # the utterance's audio, as absolute sample ranges into fx.audio
        self.utt_start: int | None = None  # first sample pushed to the STT stream
        self.recent_start: int | None = None  # first sample of Smart Turn's window
        self.stt_gen = 0
        self.stt_free_at = 0.0
        self.stt_job: tuple[int, float] | None = None  # (end sample, done time)
        self.stt_want = 0
        self.stt_covered = 0
        self.stt_text = ""
        self.settle_waiters: list[tuple[int, int]] = []  # (turn generation, target sample)
        self.turn_free_at = 0.0

    def at(self, t: float, fn: Callable[[float], None]) -> None:
        heapq.heappush(self.events, (t, next(self.seq), fn))

    def run(self) -> list[Decision]:
        """All end-of-turn decisions; `speech_starts` holds when each utterance was detected."""
        probs = self.fx.probs
        for k, prob in enumerate(probs):
            now = (k + 1) * FRAME_S
            while self.events and self.events[0][0] <= now:
                t, _, fn = heapq.heappop(self.events)
                fn(t)
            self.frame(k, float(prob), now)
        while self.events:
            t, _, fn = heapq.heappop(self.events)
            fn(t)
        return self.decisions

    # the pipeline's _on_frame, on sample indices instead of arrays
    def frame(self, k: int, prob: float, now: float) -> None:
        start = k * FRAME
        evs = self.turns.on_frame(prob, now)
        for ev in evs:
            if isinstance(ev, tt.SpeechStarted):
                self.speech_starts.append(now)
                # pipeline: this frame and the 9 before it sit in the pre-roll (the phase was
                # IDLE when they arrived); all of it is pushed to STT and Smart Turn's window.
                first = max(0, k + 1 - PREROLL_FRAMES) * FRAME
                self.utt_start = self.recent_start = first
            elif isinstance(ev, tt.Paused) and self.policy.models:
                self.stt_pause(start + FRAME, now)
            elif isinstance(ev, tt.CheckCompleteness) and self.policy.models:
                self.smart_turn(ev.generation, start + FRAME, now)
            elif isinstance(ev, tt.EndOfTurn):
                self.end_of_turn(ev, now)

    # WhisperStream: one background job at a time over [utt_start, want)
    def stt_pause(self, end: int, now: float) -> None:
        self.stt_want = end
        self.settle_waiters.append((self.turns.generation, end))
        self.stt_kick(now)

    def stt_kick(self, now: float) -> None:
        if self.stt_job is not None or self.utt_start is None:
            return
        if self.stt_want <= self.stt_covered:
            self.settle(now)
            return
        start, end, gen = self.utt_start, self.stt_want, self.stt_gen
        text, seconds = self.models.transcribe(self.fx, start, end)
        begin = max(now, self.stt_free_at)
        done = begin + seconds
        self.stt_free_at = done
        self.stt_job = (end, done)

        def finished(t: float) -> None:
            self.stt_free_at = max(self.stt_free_at, t)
            if gen != self.stt_gen:
                return
            self.stt_job = None
            self.stt_covered, self.stt_text = end, text
            self.settle(t)
            self.stt_kick(t)

        self.at(done, finished)

    def settle(self, t: float) -> None:
        ready = [w for w in self.settle_waiters if w[1] <= self.stt_covered]
        self.settle_waiters = [w for w in self.settle_waiters if w[1] > self.stt_covered]
        for gen, _ in ready:
            ev = self.turns.on_completeness(gen, t, acoustic=None, text=self.stt_text)
            if ev is not None:
                self.end_of_turn(ev, t, self.stt_text)

    def smart_turn(self, gen: int, end: int, now: float) -> None:
        assert self.recent_start is not None
        start = max(self.recent_start, end - SMART_TURN_FRAMES * FRAME)
        p, seconds = self.models.completion(self.fx, start, end)
        begin = max(now, self.turn_free_at)
        done = begin + seconds
        self.turn_free_at = done

        def finished(t: float) -> None:
            ev = self.turns.on_completeness(gen, t, acoustic=p, text=None)
            if ev is not None:
                self.end_of_turn(ev, t, None)

        self.at(done, finished)

    def end_of_turn(self, ev: tt.EndOfTurn, t: float, text: str | None = None) -> None:
        # text: the transcript that decided; otherwise the latest settled one, for the record
        self.decisions.append(Decision(t, ev.last_voiced, ev.reason, text or self.stt_text or None))
        # a new STT stream and an empty Smart Turn window for the next utterance
        self.stt_gen += 1
        self.utt_start = self.recent_start = None
        self.stt_job, self.stt_want, self.stt_covered, self.stt_text = None, 0, 0, ""
        self.settle_waiters = []


def evaluate(fx: Fixture, policy: Policy, models: Models, reply_ms: float) -> CaseResult:
    sim = Sim(fx, policy, models)
    decisions = sim.run()
    early = [d for d in decisions if d.at < fx.speech_end_s - 0.05]
    final = [d for d in decisions if d.at >= fx.speech_end_s - 0.05]
    last = final[0] if final else None

    def heard(d: Decision) -> bool:
        # The pipeline drops a reply whose audio has not started when the caller goes on
        # (`Call._on_speech_started`); it is heard if its first audio beats the next start.
        resumed = [t for t in sim.speech_starts if t > d.at]
        return not resumed or resumed[0] >= d.at + reply_ms / 1000

    return CaseResult(
        fx.name,
        fx.group,
        decisions,
        bool(early),
        any(heard(d) for d in early),
        None if last is None else (last.at - last.last_voiced) * 1000,
        None if last is None else (last.at - fx.speech_end_s) * 1000,
        None if last is None else last.reason,
        [d.text for d in decisions if d.text],
    )


# -- report ---------------------------------------------------------------------------------------
def _stats(values: list[float]) -> dict[str, float]:
    s = common.percentiles(values, (50, 90))
    return {k: round(v, 1) for k, v in s.items()}


def summarize(policy: Policy, results: list[CaseResult]) -> dict[str, Any]:
    def rate(rs: list[CaseResult]) -> float:
        return round(100.0 * sum(r.premature for r in rs) / max(1, len(rs)), 1)

    def delays(rs: list[CaseResult], attr: str = "delay_ms") -> list[float]:
        return [getattr(r, attr) for r in rs if getattr(r, attr) is not None]

    def rate_heard(rs: list[CaseResult]) -> float:
        return round(100.0 * sum(r.premature_heard for r in rs) / max(1, len(rs)), 1)

    reasons: dict[str, int] = {}
    for r in results:
        reasons[r.final_reason or "none"] = reasons.get(r.final_reason or "none", 0) + 1
    by_group = {g: [r for r in results if r.group == g] for g in GROUPS}
    multi = [r for r in results if r.group != "complete"]
    return {
        "policy": policy.name,
        "note": policy.note,
        "premature_pct": {g: rate(rs) for g, rs in by_group.items()},
        "premature_pct_multi_part": rate(multi),
        "premature_heard_pct": {g: rate_heard(rs) for g, rs in by_group.items()},
        "delay_ms_all": _stats(delays(results)),
        "delay_ms": {g: _stats(delays(rs)) for g, rs in by_group.items()},
        "delay_from_speech_end_ms_all": _stats(delays(results, "delay_from_speech_end_ms")),
        "final_reasons": reasons,
        "premature_cases": [r.case for r in results if r.premature],
        "cases": [
            {
                "case": r.case,
                "group": r.group,
                "premature": r.premature,
                "premature_heard": r.premature_heard,
                "delay_ms": None if r.delay_ms is None else round(r.delay_ms, 1),
                "reason": r.final_reason,
                "decisions": [
                    {
                        "at_s": round(d.at, 3),
                        "last_voiced_s": round(d.last_voiced, 3),
                        "reason": d.reason,
                        "text": d.text,
                    }
                    for d in r.decisions
                ],
            }
            for r in results
        ],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repeat", type=int, default=3, help="runs per model call (median is used)")
    p.add_argument("--name", default="turn_taking")
    p.add_argument("--no-grid", action="store_true", help="skip the TurnConfig variants")
    p.add_argument(
        "--reply-ms",
        type=float,
        default=None,
        help="end-of-turn decision → first reply audio (default: from "
        "results/voice_latency.json, else 300)",
    )
    args = p.parse_args(argv)
    reply_ms = args.reply_ms if args.reply_ms is not None else _reply_ms_from_results()

    info = common.machine_info(
        (*common.DEFAULT_PACKAGES, "onnxruntime", "faster-whisper", "ctranslate2", "piper-tts")
    )
    load_before = common.load_average()
    t_start = time.perf_counter()
    models = Models(args.repeat)
    print("building fixtures (Piper and splice points are cached) …", file=sys.stderr)
    fixtures = (
        [spliced_fixture(c, models) for c in MID_SENTENCE]
        + [fragments_fixture(c, "mid-sentence, fragments") for c in MID_SENTENCE]
        + [fragments_fixture(c, "two sentences") for c in TWO_SENTENCES]
        + [fragments_fixture(c, "complete") for c in COMPLETE]
    )
    for fx in fixtures:
        fx.probs = models.vad_probs(fx)

    summaries = []
    for policy in _policies(grid=not args.no_grid):
        results = [evaluate(fx, policy, models, reply_ms) for fx in fixtures]
        s = summarize(policy, results)
        summaries.append(s)
        pp = s["premature_pct"]
        print(
            f"{policy.name:42s} premature spliced {pp['mid-sentence, spliced']:5.1f}% "
            f"fragments {pp['mid-sentence, fragments']:5.1f}% 2-sent "
            f"{pp['two sentences']:5.1f}% complete {pp['complete']:5.1f}% | delay p50 "
            f"{s['delay_ms_all'].get('p50', float('nan')):6.0f} p90 "
            f"{s['delay_ms_all'].get('p90', float('nan')):6.0f} ms  {s['final_reasons']}",
            file=sys.stderr,
        )

    model_lat = {
        "whisper_settle_ms": _stats(models.stt_ms),
        "smart_turn_ms": _stats(models.turn_ms),
        "silero_per_frame_ms": _stats(models.vad_frame_ms),
    }
    load_after = common.load_average()
    data = {
        "machine": info,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "seconds": round(time.perf_counter() - t_start, 1),
        "repeat": args.repeat,
        "reply_ms": reply_ms,
        "groups": GROUPS,
        "cases": [
            {
                "name": fx.name,
                "group": fx.group,
                "text": fx.case.text,
                "pause_s": fx.case.pause_s if fx.multi else None,
                "note": fx.case.note,
                "speech_end_s": round(fx.speech_end_s, 3),
            }
            for fx in fixtures
        ],
        "model_latency": model_lat,
        "policies": summaries,
    }

    table = common.markdown_table(
        (
            "policy",
            "premature: mid-sentence spliced",
            "mid-sentence fragments",
            "two sentences",
            "complete",
            "delay p50 / p90 (all)",
            "delay p50 / p90 (complete)",
            "final decisions",
        ),
        [
            (
                s["policy"],
                *(
                    f"{s['premature_pct'][g]:.0f} % ({s['premature_heard_pct'][g]:.0f} %)"
                    for g in GROUPS
                ),
                _pair(s["delay_ms_all"]),
                _pair(s["delay_ms"]["complete"]),
                ", ".join(f"{k} {v}" for k, v in sorted(s["final_reasons"].items())),
            )
            for s in summaries
        ],
    )
    premature_md = "\n".join(
        f"- **{s['policy']}**: {', '.join(s['premature_cases']) or '—'}" for s in summaries
    )
    base = summaries[0]
    rows = [
        common.Row(
            "premature replies, mid-sentence pauses, spliced (callroom)",
            base["premature_pct"]["mid-sentence, spliced"],
            "%",
            "0 %",
        ),
        common.Row(
            "premature replies, mid-sentence pauses, fragments (callroom)",
            base["premature_pct"]["mid-sentence, fragments"],
            "%",
            "0 %",
        ),
        common.Row(
            "end-of-turn delay p50, all cases (callroom)",
            base["delay_ms_all"].get("p50"),
            "ms",
            "≤ 250 ms",
            base["delay_ms_all"].get("p50", 1e9) <= 250,
        ),
        common.Row(
            "end-of-turn delay p90, all cases (callroom)", base["delay_ms_all"].get("p90"), "ms"
        ),
        common.Row(
            "Whisper settle latency p50",
            model_lat["whisper_settle_ms"].get("p50"),
            "ms",
            note="measured, one at a time",
        ),
        common.Row(
            "Smart Turn latency p50",
            model_lat["smart_turn_ms"].get("p50"),
            "ms",
            note="measured, one at a time",
        ),
    ]
    cases_md = common.markdown_table(
        ("case", "text", "pause", "note"),
        [
            (c.name, c.text, f"{c.pause_s:g} s" if len(c.parts) > 1 else "", c.note)
            for c in MID_SENTENCE + TWO_SENTENCES + COMPLETE
        ],
    )
    notes = [
        f"{len(fixtures)} fixtures: "
        + "; ".join(
            f"{g} ({sum(fx.group == g for fx in fixtures)}): {d}" for g, d in GROUPS.items()
        )
        + f". Piper voice, {LEAD_S} s of silence before and {TAIL_S} s after each.",
        "Simulated real time: frames in audio time, model results delivered at event time + "
        f"measured latency (median of {args.repeat} runs per call). Contention between "
        "Whisper and Smart Turn on 2 cores is not simulated, nor the client's 20 ms framing.",
        f"Load average before/after: {load_before} / {load_after}: other work ran on this "
        "2-core machine at the same time, so model latencies (and thus delays) are noisy.",
        "Delay is measured from the end of the last VAD-voiced frame (the pipeline's origin); "
        "'premature' means an end of turn was decided before the final words were spoken; "
        f"in brackets: premature *and heard*, i.e. the reply's first audio ({reply_ms:.0f} ms "
        "after the decision, from results/voice_latency.json when present) would have started "
        "before the caller's next words were detected; otherwise the pipeline drops the reply "
        "unheard and joins the two parts into one user turn.",
    ]
    extra = "\n".join(
        [
            "## Policies side by side",
            "",
            table,
            "",
            "### Premature cases",
            "",
            premature_md,
            "",
            "## Model latency (ms)",
            "",
            common.markdown_table(
                ("model", "p50", "p90", "max", "n"),
                [
                    (k, v.get("p50"), v.get("p90"), v.get("max"), v.get("n"))
                    for k, v in model_lat.items()
                ],
            ),
            "",
            "## Cases",
            "",
            cases_md,
        ]
    )
    json_path, md_path = common.write_results(
        args.name,
        data,
        rows,
        title="Turn taking: premature replies vs. end-of-turn delay",
        notes=notes,
        extra_md=extra,
    )
    print(table)
    print(f"wrote {json_path} and {md_path}", file=sys.stderr)
    return 0


def _reply_ms_from_results() -> float:
    """Median (first audio − end-of-turn decision) of the last voice_latency run, if any."""
    import json

    path = common.RESULTS_DIR / "voice_latency.json"
    try:
        value = json.loads(path.read_text())["decision_to_first_audio_ms"]["p50"]
        return float(value)
    except (OSError, KeyError, TypeError, ValueError):
        return 300.0


def _pair(s: dict[str, float]) -> str:
    if "p50" not in s:
        return "—"
    return f"{s['p50']:.0f} / {s['p90']:.0f} ms"


if __name__ == "__main__":
    sys.exit(main())
