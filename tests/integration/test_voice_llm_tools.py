"""The default turn: a real OpenAI-compatible HTTP LLM (local fake server) with tool calls,
driven over the voice protocol; tool calls land in history, secrets do not."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from callroom.providers.llm.fake_server import FakeLLMServer, FakeReply
from callroom.providers.llm.scripted import tool_call
from tests.integration.server import ServerProcess
from tests.integration.voice_client import VoiceTestClient

APP = Path(__file__).resolve().parent / "apps" / "voice_tools.py"


@pytest.fixture
def llm() -> Iterator[FakeLLMServer]:
    server = FakeLLMServer(ttft_ms=20, token_ms=2)
    server.start(host="127.0.0.1")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def voice_server(llm: FakeLLMServer, tmp_path: Path) -> Iterator[ServerProcess]:
    env = {"CALLROOM_LLM": "openai", "OPENAI_BASE_URL": llm.base_url,
           "CALLROOM_LLM_MODEL": "fake-llm"}
    with ServerProcess(APP, tmp_path / "data", env=env) as srv:
        yield srv


async def _start(c: VoiceTestClient) -> None:
    await c.wait_type("status", status="idle")
    await c.send({"type": "start_call"})
    await c.wait_type("status", status="listening")


async def test_tool_call_round_trip_and_secrets_redacted(
    llm: FakeLLMServer, voice_server: ServerProcess
) -> None:
    llm.add(
        FakeReply(tool_calls=[tool_call("next_appointment", {"patient_id": "4567"}, id="c1")]),
        "Your next appointment is on January ninth at ten thirty.",
    )
    async with VoiceTestClient(voice_server.ws_url("tool-voice", "call-1")) as c:
        await _start(c)
        await c.send({"type": "text_message", "text": "When is my appointment? ID 4567."})
        end = await c.wait_type("transcript_end")
        assert end["text"] == "Your next appointment is on January ninth at ten thirty."
        history = await c.rpc("history")
    roles = [m["role"] for m in history]
    assert roles == ["user", "assistant", "tool", "assistant"]
    assert history[1]["tool_calls"][0]["function"]["name"] == "next_appointment"
    assert history[2]["tool_call_id"] == history[1]["tool_calls"][0]["id"]
    dumped = json.dumps(history)
    assert "sk-SECRET-123" not in dumped and "abc.def.ghi" not in dumped
    # the second LLM request carried the tool result back to the model, redacted too
    second = json.dumps(llm.requests[-1]["messages"])
    assert "2030-01-09" in second and "sk-SECRET-123" not in second


async def test_slow_tool_speaks_filler(llm: FakeLLMServer, voice_server: ServerProcess) -> None:
    llm.add(
        FakeReply(tool_calls=[tool_call("next_appointment", {"patient_id": "slow"}, id="c2")]),
        "It is on January ninth.",
    )
    async with VoiceTestClient(voice_server.ws_url("tool-voice", "call-2")) as c:
        await _start(c)
        await c.send({"type": "text_message", "text": "When is it?"})
        end = await c.wait_type("transcript_end")
        assert end["text"].startswith("One moment")
        assert end["text"].endswith("It is on January ninth.")


async def test_llm_error_apologises_and_call_continues(
    llm: FakeLLMServer, voice_server: ServerProcess
) -> None:
    llm.add(FakeReply(status=500, error_message="boom"), "Back again.")
    async with VoiceTestClient(voice_server.ws_url("tool-voice", "call-3")) as c:
        await _start(c)
        await c.send({"type": "text_message", "text": "hello"})
        await c.wait_type("error")
        apology = await c.wait_type("transcript_end")
        assert apology["text"].startswith("Sorry")
        tm = await c.wait_type("turn_metrics")
        assert tm["outcome"] == "error"
        assert c.audio  # the apology was spoken, not just shown
        mark = len(c.messages)
        await c.send({"type": "text_message", "text": "hello?"})
        end = await c.wait_type("transcript_end", start=mark)
        assert end["text"] == "Back again."
