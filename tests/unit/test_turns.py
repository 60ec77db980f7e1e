"""Turn-taking policy on a scripted timeline (no models, no sleeping)."""

from __future__ import annotations

import pytest

from callroom.voice.turns import (
    CheckCompleteness,
    EndOfTurn,
    Paused,
    SpeechStarted,
    TurnConfig,
    TurnTaker,
    transcript_looks_complete,
)

FRAME = 0.032


def feed(tt: TurnTaker, probs: list[float], t0: float = 0.0, **kw: bool) -> tuple[list, float]:
    events = []
    t = t0
    for p in probs:
        t += FRAME
        events.extend(tt.on_frame(p, t, **kw))
    return events, t


def speech(seconds: float) -> list[float]:
    return [0.9] * round(seconds / FRAME)


def silence(seconds: float) -> list[float]:
    return [0.05] * round(seconds / FRAME)


def test_speech_start_needs_consecutive_frames() -> None:
    tt = TurnTaker()
    events, _ = feed(tt, [0.9, 0.1, 0.9, 0.1])
    assert events == []
    events, _ = feed(tt, [0.9, 0.9], 1.0)
    assert len(events) == 1 and isinstance(events[0], SpeechStarted)


def test_barge_in_is_stricter_while_agent_speaks() -> None:
    tt = TurnTaker()
    events, _ = feed(tt, [0.9] * 3, agent_speaking=True)
    assert events == []  # 3 < barge_in_frames
    events, _ = feed(tt, [0.9] * 2, agent_speaking=True)
    assert [type(e) for e in events] == [SpeechStarted]


def test_pause_then_check_then_end_when_both_signals_agree() -> None:
    tt = TurnTaker()
    _, t = feed(tt, speech(1.0))
    events, t = feed(tt, silence(0.2), t)
    kinds = [type(e) for e in events]
    assert kinds == [Paused, CheckCompleteness]
    gen = events[1].generation
    # acoustic says complete, transcript still pending: no decision yet
    assert tt.on_completeness(gen, t, acoustic=0.9) is None
    end = tt.on_completeness(gen, t, text="When is my next appointment?")
    assert isinstance(end, EndOfTurn) and end.reason == "complete"
    assert end.at - end.last_voiced < 0.25


def test_dangling_transcript_vetoes_confident_acoustic_model() -> None:
    tt = TurnTaker()
    _, t = feed(tt, speech(1.0))
    events, t = feed(tt, silence(0.2), t)
    gen = events[-1].generation
    assert tt.on_completeness(gen, t, acoustic=0.95, text="My patient ID is") is None
    # the caller goes on: the old generation is void
    events, t = feed(tt, speech(0.8), t)
    assert tt.on_completeness(gen, t, text="My patient ID is 4567.") is None
    events, t = feed(tt, silence(0.2), t)
    gen2 = next(e for e in events if isinstance(e, CheckCompleteness)).generation
    assert gen2 != gen
    tt.on_completeness(gen2, t, text="My patient ID is 4567.")
    end = tt.on_completeness(gen2, t, acoustic=0.2)
    assert isinstance(end, EndOfTurn) and end.reason == "transcript"


def test_silence_cap_ends_every_turn() -> None:
    tt = TurnTaker(TurnConfig(max_wait_ms=1500))
    _, t = feed(tt, speech(0.5))
    events, _ = feed(tt, silence(1.6), t)
    ends = [e for e in events if isinstance(e, EndOfTurn)]
    assert len(ends) == 1 and ends[0].reason == "timeout"


def test_without_acoustic_model_the_transcript_decides() -> None:
    tt = TurnTaker(uses_acoustic=False)
    _, t = feed(tt, speech(1.0))
    events, t = feed(tt, silence(0.2), t)
    gen = events[-1].generation
    end = tt.on_completeness(gen, t, text="Thanks, goodbye.")
    assert isinstance(end, EndOfTurn)


def test_empty_transcript_leaves_it_to_the_acoustic_model() -> None:
    tt = TurnTaker()
    _, t = feed(tt, speech(0.4))
    events, t = feed(tt, silence(0.2), t)
    gen = events[-1].generation
    assert tt.on_completeness(gen, t, text="") is None
    assert isinstance(tt.on_completeness(gen, t, acoustic=0.8), EndOfTurn)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("When is my next appointment?", True),
        ("Thank you.", True),
        ("My patient ID is", False),
        ("My patient ID is...", False),
        ("four five", False),
        ("4 5 6", False),
        ("I would like to book, and", False),
        ("", None),
    ],
)
def test_transcript_heuristic(text: str, expected: bool | None) -> None:
    assert transcript_looks_complete(text) is expected


def test_finished_transcript_with_low_score_gets_a_second_acoustic_check() -> None:
    tt = TurnTaker()
    _, t = feed(tt, speech(1.0))
    events, t = feed(tt, silence(0.2), t)
    gen = events[-1].generation
    tt.on_completeness(gen, t, text="When is my next appointment?")
    assert tt.on_completeness(gen, t, acoustic=0.05) is None  # below the rescue threshold
    events, t = feed(tt, silence(0.25), t)
    checks = [e for e in events if isinstance(e, CheckCompleteness)]
    assert len(checks) == 1  # asked again once, at ~400 ms of silence
    end = tt.on_completeness(checks[0].generation, t, acoustic=0.6)
    assert isinstance(end, EndOfTurn) and end.reason == "complete"
