"""Turn timings, clocks, the client's metric messages and Prometheus (`callroom.voice.metrics`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prometheus_client import Histogram

from callroom.voice import metrics as m
from callroom.voice.metrics import (
    REGISTRY,
    STAGES,
    Clock,
    FakeClock,
    RealClock,
    TurnTimings,
    count_turn,
    metrics_message,
    observe,
    render_metrics,
    turn_metrics_message,
)

AGENTS_DIST = Path(__file__).parents[1] / "interop" / "node_modules" / "agents" / "dist"


# -- clocks ------------------------------------------------------------------------------------
def test_fake_clock_moves_only_when_told() -> None:
    clock = FakeClock(10.0)
    assert clock.now() == 10.0
    assert clock.advance(0.25) == 10.25
    assert clock() == 10.25  # also a plain callable, like `time.monotonic`
    with pytest.raises(ValueError):
        clock.advance(-1)


def test_real_clock_is_monotonic_and_a_clock() -> None:
    clock = RealClock()
    a, b = clock.now(), clock()
    assert b >= a
    assert isinstance(clock, Clock)
    assert isinstance(FakeClock(), Clock)


# -- a scripted turn ---------------------------------------------------------------------------
def _spoken_turn() -> tuple[TurnTimings, FakeClock]:
    """A spoken turn on a fake clock: the user speaks 1.2 s, stops at t=100 s."""
    clock = FakeClock(98.8)
    speech_start = clock.now()
    clock.advance(1.2)
    timings = TurnTimings.start(clock)
    timings.speech_ms = (timings.origin - speech_start) * 1000  # type: ignore[operator]
    for name, at_ms in [
        ("eot", 200), ("stt", 300), ("llm_start", 310), ("llm", 450), ("tts_start", 460),
        ("tts", 520), ("first_audio", 530), ("llm_done", 900), ("total", 1500),
    ]:  # fmt: skip
        clock.advance(at_ms / 1000 - (clock.now() - 100.0))
        timings.mark(name)
    timings.add_tts_work(60)
    timings.add_tts_work(250)
    clock.advance(0.02)
    return timings, clock


def test_mark_records_offsets_from_the_origin_once() -> None:
    timings, clock = _spoken_turn()
    assert timings.eot_ms == pytest.approx(200)
    assert timings.first_audio_ms == pytest.approx(530)
    clock.advance(1)
    assert timings.mark("first_audio") == pytest.approx(530)  # the first mark wins
    assert timings.stages() == {
        "eot_ms": 200.0, "stt_ms": 300.0, "llm_ms": 450.0, "tts_ms": 520.0,
        "first_audio_ms": 530.0, "total_ms": 1500.0,
    }  # fmt: skip


def test_origin_can_be_the_past_last_voiced_frame() -> None:
    clock = FakeClock(5.0)
    timings = TurnTimings.start(clock, origin=4.7)  # the VAD knew only 300 ms later
    assert timings.mark("eot") == pytest.approx(300)


def test_mark_needs_a_clock_and_a_known_name() -> None:
    with pytest.raises(RuntimeError, match="no clock"):
        TurnTimings().mark("eot")
    with pytest.raises(ValueError, match="unknown landmark"):
        TurnTimings.start(FakeClock()).mark("llm_first")
    timings = TurnTimings()
    timings.add_tts_work(-5)
    assert timings.tts_work_ms == 0


def test_metrics_message_has_the_clients_meanings() -> None:
    timings, _ = _spoken_turn()
    msg = timings.metrics_message()
    assert msg == {
        "type": "metrics",
        "llm_ms": 590,  # model start → stream consumed
        "tts_ms": 310,  # summed per-clause synthesis work
        "first_audio_ms": 230,  # final transcript → first audio sent
        "total_ms": 1200,  # final transcript → reply produced
        "callroom": timings.stages(),  # ours: from the moment the user stopped speaking
    }
    assert all(type(msg[k]) is int for k in ("llm_ms", "tts_ms", "first_audio_ms", "total_ms"))
    json.dumps(msg)


def test_metrics_message_without_audio_or_landmarks_sends_zeros() -> None:
    msg = TurnTimings(llm_ms=120.4).metrics_message()
    assert msg["first_audio_ms"] == 0  # the client reads 0 as "no audio was sent"
    assert msg["llm_ms"] == 0
    assert msg["total_ms"] == 0
    assert msg["callroom"] == {"llm_ms": 120.4}


def test_turn_metrics_for_a_completed_spoken_turn() -> None:
    timings, _ = _spoken_turn()
    msg = timings.turn_metrics_message("turn_1", "speech", "completed")
    assert msg == {
        "type": "turn_metrics",
        "turnId": "turn_1",
        "source": "speech",
        "outcome": "completed",
        "turnTotalMs": 2720,  # speech start (1200 ms before the origin) → now (1520)
        "speechStartToFinalMs": 1500,
        "modelToFirstTextMs": 140,
        "modelStreamConsumptionMs": 590,
        "finalInputToFirstAudioMs": 230,
        "ttsToFirstAudioMs": 70,
        "ttsWorkMs": 310,
    }


def test_turn_metrics_end_landmark_or_explicit_total_wins() -> None:
    timings, clock = _spoken_turn()
    timings.mark("end")
    clock.advance(5)
    assert timings.turn_metrics_message("t", "speech", "completed")["turnTotalMs"] == 2720
    explicit = timings.turn_metrics_message("t", "speech", "completed", turn_total_ms=42.4)
    assert explicit["turnTotalMs"] == 42


def test_turn_metrics_omit_what_was_not_reached() -> None:
    timings = TurnTimings(eot_ms=180.0, speech_ms=900.0)  # barge-in before the transcript
    msg = timings.turn_metrics_message("turn_2", "speech", "aborted")
    assert msg == {
        "type": "turn_metrics",
        "turnId": "turn_2",
        "source": "speech",
        "outcome": "aborted",
        "turnTotalMs": 1080,
    }
    assert None not in msg.values()


def test_turn_metrics_for_a_text_turn() -> None:
    clock = FakeClock()
    timings = TurnTimings.start(clock)  # origin: the text arrived
    timings.mark("llm_start")
    clock.advance(0.1)
    timings.mark("llm")
    clock.advance(0.05)
    timings.mark("tts_start")
    clock.advance(0.08)
    timings.mark("first_audio")
    msg = timings.turn_metrics_message("turn_3", "text", "completed")
    assert msg["finalInputToFirstAudioMs"] == 230  # final input is the text's arrival
    assert msg["modelToFirstTextMs"] == 100
    assert msg["ttsToFirstAudioMs"] == 80
    assert msg["turnTotalMs"] == 230
    assert "speechStartToFinalMs" not in msg
    assert timings.metrics_message()["first_audio_ms"] == 230


def test_turn_metrics_without_a_clock_end_at_the_last_landmark() -> None:
    timings = TurnTimings(stt_ms=100.0, llm_ms=300.0, total_ms=900.0, speech_ms=500.0)
    assert timings.turn_metrics_message("t", "speech", "completed")["turnTotalMs"] == 1400


@pytest.mark.parametrize(("source", "outcome"), [("speak", "completed"), ("speech", "done")])
def test_turn_metrics_reject_values_the_client_does_not_know(source: str, outcome: str) -> None:
    with pytest.raises(ValueError):
        turn_metrics_message("t", source, outcome, turn_total_ms=1)


def test_builders_round_and_clamp() -> None:
    msg = metrics_message(llm_ms=1.6, tts_ms=-3, first_audio_ms=0.4, total_ms=10.5)
    assert msg == {"type": "metrics", "llm_ms": 2, "tts_ms": 0, "first_audio_ms": 0, "total_ms": 10}
    assert "callroom" not in msg
    tm = turn_metrics_message("t", "text", "skipped", turn_total_ms=-1, tts_work_ms=0.0)
    assert tm["turnTotalMs"] == 0
    assert tm["ttsWorkMs"] == 0


# -- the published client is the judge --------------------------------------------------------
def _client_types() -> str:
    for path in sorted(AGENTS_DIST.glob("types-*.d.ts")):
        text = path.read_text()
        if "interface VoiceTurnMetrics" in text:
            return text
    pytest.skip("npm `agents` package not installed under tests/interop")


def test_field_names_match_the_npm_client() -> None:
    types = _client_types()
    block = re.search(r"interface VoiceTurnMetrics \{(.*?)\n\}", types, re.S)
    assert block is not None
    client_fields = dict(re.findall(r"^\s+(\w+)(\??):", block.group(1), re.M))
    timings, _ = _spoken_turn()
    msg = timings.turn_metrics_message("turn_1", "speech", "completed")
    ours = set(msg) - {"type"}
    assert ours <= set(client_fields)
    assert {k for k, optional in client_fields.items() if not optional} <= ours

    metrics = re.search(r'type: "metrics";(.*?)\}', types, re.S)
    assert metrics is not None
    assert set(re.findall(r"(\w+): number", metrics.group(1))) == {
        "llm_ms", "tts_ms", "first_audio_ms", "total_ms",
    }  # fmt: skip
    assert set(timings.metrics_message()) - {"type", "callroom"} == {
        "llm_ms", "tts_ms", "first_audio_ms", "total_ms",
    }  # fmt: skip

    outcomes = re.search(r"type VoiceTurnOutcome =(.*?);", types, re.S)
    sources = re.search(r"type VoiceTurnSource =(.*?);", types, re.S)
    assert outcomes is not None and sources is not None
    assert set(re.findall(r'"(\w+)"', outcomes.group(1))) == m.TURN_OUTCOMES
    assert set(re.findall(r'"(\w+)"', sources.group(1))) == m.TURN_SOURCES


# -- Prometheus --------------------------------------------------------------------------------
def _sample(name: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_observe_feeds_one_histogram_per_stage() -> None:
    before = {s: _sample("callroom_voice_stage_seconds_count", stage=s, source="speech")
              for s in STAGES}  # fmt: skip
    sum_before = _sample("callroom_voice_stage_seconds_sum", stage="first_audio", source="speech")
    timings = TurnTimings(eot_ms=200.0, stt_ms=300.0, first_audio_ms=530.0)
    observe(timings)
    after = {s: _sample("callroom_voice_stage_seconds_count", stage=s, source="speech")
             for s in STAGES}  # fmt: skip
    assert {s for s in STAGES if after[s] == before[s] + 1} == {"eot", "stt", "first_audio"}
    assert {s for s in STAGES if after[s] == before[s]} == {"llm", "tts", "total"}
    sum_after = _sample("callroom_voice_stage_seconds_sum", stage="first_audio", source="speech")
    assert sum_after - sum_before == pytest.approx(0.53)
    le = _sample("callroom_voice_stage_seconds_bucket", stage="eot", source="speech", le="0.25")
    assert le >= 1


def test_text_turns_are_kept_apart() -> None:
    before = _sample("callroom_voice_stage_seconds_count", stage="llm", source="text")
    observe(TurnTimings(llm_ms=50.0))  # no end-of-turn landmark: a text turn
    assert _sample("callroom_voice_stage_seconds_count", stage="llm", source="text") == before + 1


def test_count_turn_and_render() -> None:
    before = _sample("callroom_voice_turns_total", source="speech", outcome="aborted")
    count_turn("speech", "aborted")
    assert _sample("callroom_voice_turns_total", source="speech", outcome="aborted") == before + 1
    body, content_type = render_metrics()
    text = body.decode()
    assert content_type.startswith("text/plain")
    assert text.count("# TYPE callroom_voice_stage_seconds histogram") == 1
    assert 'callroom_voice_stage_seconds_count{source="text",stage="tts"}' in text  # pre-made
    assert "callroom_voice_turns_total" in text
    assert "python_gc" not in text  # our own registry, not the process-wide default
    body, content_type = render_metrics("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.decode().rstrip().endswith("# EOF")


def test_registry_is_created_once() -> None:
    import importlib

    again = importlib.import_module("callroom.voice.metrics")
    assert again.REGISTRY is REGISTRY
    with pytest.raises(ValueError, match="Duplicated"):
        Histogram("callroom_voice_stage_seconds", "dup", registry=REGISTRY)
