"""Speech and language providers that hang, reset or answer garbage: the turn fails with a
spoken apology (or, for the end-of-turn model, falls back to the transcript), the call goes on.

`FaultVoice` (apps/rel_app.py) fails once per call in the way its name says, with per-stage
timeouts of 1-1.5 s (`stt_timeout`, `tts_timeout`, `llm_first_token_timeout`,
`llm_stall_timeout`, `end_of_turn_timeout`); all modes run as concurrent calls on one server.
`LLMVoice` runs the default LLM turn against the local fake OpenAI server (HTTP 500, a stream
cut mid-way, a first token that never comes in time).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from callroom.providers.llm.fake_server import FakeLLMServer, FakeReply
from callroom.testing import silence, to_pcm16, tone
from tests.integration.server import ServerProcess
from tests.integration.voice_client import VoiceTestClient
from tests.reliability.conftest import REL_APP, assert_no_leak, health, wait_quiet

APOLOGY = "Sorry, I ran into a problem. Could you say that again?"
API_KEY = "sk-test-SECRET-5f4e3d2c1b0a"

# mode → (how the failing turn is triggered, its expected outcome)
MODES: dict[str, tuple[str, str]] = {
    "stthang": ("speech", "error"),
    "sttreset": ("speech", "error"),
    "sttgarbage": ("speech", "error"),
    "turnhang": ("speech", "completed"),  # end-of-turn model: the transcript decides alone
    "turngarbage": ("speech", "completed"),
    "ttshang": ("text", "tts_error"),
    "ttsstall": ("text", "tts_error"),
    "ttsreset": ("text", "tts_error"),
    "ttsgarbage": ("text", "tts_error"),
    "llmhang": ("text", "error"),
    "llmstall": ("text", "error"),
    "llmreset": ("text", "error"),
    "llmslowcall": ("text", "error"),
    "llmgarbage": ("text", "no_output"),  # nothing speakable came back: no_output, no apology
}


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeLLMServer]:
    server = FakeLLMServer(ttft_ms=20, token_ms=2, api_key=API_KEY)
    server.start(host="127.0.0.1")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def fault_server(
    llm: FakeLLMServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("faults")
    env = {
        "CALLROOM_LLM": "openai",
        "OPENAI_BASE_URL": llm.base_url,
        "OPENAI_API_KEY": API_KEY,
        "CALLROOM_LLM_MODEL": "fake-llm",
        "CALLROOM_IDLE_SECONDS": "2",
    }
    with ServerProcess(REL_APP, base / "data", env=env) as srv:
        yield srv


async def start_call(c: VoiceTestClient) -> None:
    await c.wait_type("status", status="idle")
    await c.send({"type": "start_call", "preferred_format": "pcm16"})
    await c.wait_type("status", status="listening")


async def run_mode(srv: ServerProcess, mode: str) -> dict[str, Any]:
    trigger, outcome = MODES[mode]
    name = f"{mode}-{uuid.uuid4().hex[:6]}"
    async with VoiceTestClient(srv.ws_url("fault-voice", name)) as c:
        await start_call(c)
        mark = len(c.messages)
        if trigger == "speech":
            # a mic never stops: silence keeps coming (past max_wait_ms, the turn ends anyway)
            await c.stream_audio(to_pcm16(np.concatenate([tone(0.8), silence(2.0)])), realtime=1.0)
        else:
            await c.send({"type": "text_message", "text": "hello there"})
        try:
            tm = await c.wait_type("turn_metrics", start=mark)
        except TimeoutError:
            raise AssertionError(f"{mode}: no turn ended; got {c.types(mark)}") from None
        assert tm["outcome"] == outcome, (mode, tm, c.types(mark))
        await c.wait_type("status", status="listening", start=mark)
        failed = c.messages[mark:]
        if outcome in ("error", "tts_error"):
            err = next(m for m in failed if m["type"] == "error")
            assert err["message"] == APOLOGY
            stage = {"stt": "stt", "tts": "tts", "llm": "llm"}[mode[:3]]
            assert err["stage"] == stage, (mode, err)
            ends = [m["text"] for m in failed if m["type"] == "transcript_end"]
            assert ends and ends[-1] == APOLOGY, (mode, ends)
        audio_before = len(c.audio)
        # the call goes on: the next turn is an ordinary one
        mark = len(c.messages)
        await c.send({"type": "text_message", "text": "are you still there"})
        end = await c.wait_type("transcript_end", start=mark)
        assert end["text"] == "You said: are you still there", (mode, end)
        tm2 = await c.wait_type("turn_metrics", start=mark)
        assert tm2["outcome"] == "completed"
        await c.wait_type("status", status="listening", start=mark)
        assert len(c.audio) > audio_before  # and it is spoken
        tasks = await c.rpc("tasks")
        return {"mode": mode, "tasks": tasks, "apology_audio": audio_before > 0}


async def test_every_provider_fault_fails_one_turn_not_the_call(
    fault_server: ServerProcess,
) -> None:
    before = await asyncio.to_thread(wait_quiet, fault_server)
    results = await asyncio.gather(*(run_mode(fault_server, m) for m in MODES))
    for r in results:
        # nothing left running from the failed turn: the input loop (and a settle check)
        assert r["tasks"] <= 3, r
        if MODES[r["mode"]][1] in ("error", "tts_error"):
            assert r["apology_audio"], r  # the apology was spoken, not only shown
    await asyncio.to_thread(assert_no_leak, fault_server, before)
    assert "Exception in ASGI application" not in fault_server.log()


async def test_llm_http_errors_cut_streams_and_slow_tokens(
    llm: FakeLLMServer, fault_server: ServerProcess
) -> None:
    llm.add(
        FakeReply(status=500, error_message="upstream exploded"),
        "Recovered one.",
        FakeReply(text="This answer will be cut off in the middle", drop_after=3),
        "Recovered two.",
        FakeReply(text="Too late.", ttft_ms=5000),  # llm_first_token_timeout is 2 s
        "Recovered three.",
    )
    name = f"llm-{uuid.uuid4().hex[:6]}"
    async with VoiceTestClient(fault_server.ws_url("llm-voice", name)) as c:
        await start_call(c)
        for recovered in ("Recovered one.", "Recovered two.", "Recovered three."):
            mark = len(c.messages)
            await c.send({"type": "text_message", "text": "question"})
            tm = await c.wait_type("turn_metrics", start=mark)
            assert tm["outcome"] == "error", c.types(mark)
            err = next(m for m in c.messages[mark:] if m["type"] == "error")
            assert err["message"] == APOLOGY
            await c.wait_type("status", status="listening", start=mark)
            mark = len(c.messages)
            await c.send({"type": "text_message", "text": "again"})
            end = await c.wait_type("transcript_end", start=mark)
            assert end["text"] == recovered
            await c.wait_type("status", status="listening", start=mark)
        history = await c.rpc("history")
    spoken = [m["content"] for m in history if m["role"] == "assistant"]
    assert spoken[-1] == "Recovered three."
    log = fault_server.log()
    assert API_KEY not in log  # the key never reaches the log, even on provider errors
    assert health(fault_server)["ok"]
