"""The voice protocol end to end over a real server, with deterministic fake speech models."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from callroom.testing import silence, to_pcm16, tone
from tests.integration.server import ServerProcess
from tests.integration.voice_client import VoiceTestClient

APP = Path(__file__).resolve().parent / "apps" / "voice_fake.py"


@pytest.fixture(scope="module")
def voice_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("voice")
    with ServerProcess(APP, base / "data") as srv:
        yield srv


async def _start_call(c: VoiceTestClient) -> None:
    await c.wait_type("welcome")
    await c.wait_type("status", status="idle")
    await c.send({"type": "hello", "protocol_version": 1})
    await c.send({"type": "start_call", "preferred_format": "pcm16"})
    cfg = await c.wait_type("audio_config")
    assert cfg["format"] == "pcm16" and cfg["sampleRate"] == 16000
    await c.wait_type("status", status="listening")


async def test_handshake_greeting_and_spoken_turn(
    voice_server: ServerProcess, agent_name: str
) -> None:
    async with VoiceTestClient(voice_server.ws_url("fake-voice", agent_name)) as c:
        await _start_call(c)
        # greeting is spoken: transcript + audio
        end = await c.wait_type("transcript_end")
        assert end["text"] == "Hello, this is the test line."
        await c.wait_type("status", status="listening", start=c.messages.index(end))
        assert c.audio, "greeting audio expected"
        mark = len(c.messages)
        await c.stream_audio(to_pcm16(np_concat(tone(1.0), silence(1.0))), realtime=1.0)
        user = await c.wait_type("transcript", start=mark, role="user")
        # 1.0 s of speech, plus pre-roll and the silence up to the decision (< 0.5 s)
        assert user["text"] in {f"I spoke for {x} seconds." for x in ("1.1", "1.2", "1.3", "1.4")}
        end = await c.wait_type("transcript_end", start=mark)
        assert end["text"] == f"You said: {user['text']}"
        metrics = await c.wait_type("metrics", start=mark)
        assert {"llm_ms", "tts_ms", "first_audio_ms", "total_ms"} <= metrics.keys()
        tm = await c.wait_type("turn_metrics", start=mark)
        assert tm["outcome"] == "completed" and tm["source"] == "speech"
        types = c.types(mark)
        order = [t for t in types if t in (
            "transcript_interim", "transcript", "status:thinking", "transcript_start",
            "status:speaking", "transcript_end", "metrics", "status:listening")]
        assert order.index("transcript") < order.index("status:thinking") < order.index(
            "transcript_start") < order.index("status:speaking") < order.index(
            "transcript_end") < order.index("metrics")
        history = await c.rpc("history")
        roles = [m["role"] for m in history]
        assert roles == ["assistant", "user", "assistant"]


def np_concat(*parts):  # type: ignore[no-untyped-def]
    import numpy as np

    return np.concatenate(parts)


async def test_audio_before_start_call_is_dropped_with_error(
    voice_server: ServerProcess, agent_name: str
) -> None:
    async with VoiceTestClient(voice_server.ws_url("fake-voice", agent_name)) as c:
        await c.wait_type("status", status="idle")
        await c.send_audio(to_pcm16(tone(0.5)))
        err = await c.wait_type("error")
        assert "before start_call" in err["message"]
        await c.send_audio(b"\x00\x01\x02")  # odd length, still no call: no second error spam
        assert await c.rpc("history") == []
        await _start_call(c)
        mark = len(c.messages)
        await c.send_audio(b"\x00\x01\x02")
        err = await c.wait_type("error", start=mark)
        assert "even number of bytes" in err["message"]


async def test_text_message_without_call_is_text_only(
    voice_server: ServerProcess, agent_name: str
) -> None:
    async with VoiceTestClient(voice_server.ws_url("fake-voice", agent_name)) as c:
        await c.wait_type("status", status="idle")
        await c.send({"type": "text_message", "text": "hi there"})
        end = await c.wait_type("transcript_end")
        assert end["text"] == "You said: hi there"
        await c.wait_type("status", status="idle", start=c.messages.index(end))
        assert not c.audio
        await c.send({"type": "text_message", "text": 42})
        err = await c.wait_type("error")
        assert "text" in err["message"]


async def test_barge_in_keeps_only_what_was_heard(
    voice_server: ServerProcess, agent_name: str
) -> None:
    async with VoiceTestClient(voice_server.ws_url("fake-voice", agent_name)) as c:
        await _start_call(c)
        await c.wait_type("transcript_end")  # greeting
        mark = len(c.messages)
        await c.send({"type": "text_message", "text": "tell me a story"})
        await c.wait_type("status", status="speaking", start=mark)
        await asyncio.sleep(0.6)  # let some of the story "play"
        await c.stream_audio(to_pcm16(tone(0.4)), realtime=1.0)
        await c.wait_type("playback_interrupt", start=mark)
        history = await c.rpc("history")
        story = [m for m in history if m.get("interrupted")]
        assert len(story) == 1
        heard, full = story[0]["content"], story[0]["full"]
        assert heard and len(heard) < len(full) and full.startswith(heard.split()[0])
        # the caller's barge-in utterance then becomes a normal turn
        await c.stream_audio(to_pcm16(silence(1.0)))
        await c.wait_type("transcript", start=mark, role="user")


async def test_client_interrupt_and_end_call(voice_server: ServerProcess, agent_name: str) -> None:
    async with VoiceTestClient(voice_server.ws_url("fake-voice", agent_name)) as c:
        await _start_call(c)
        await c.wait_type("transcript_end")
        mark = len(c.messages)
        await c.send({"type": "text_message", "text": "tell me a story"})
        await c.wait_type("status", status="speaking", start=mark)
        await c.send({"type": "interrupt"})
        await c.wait_type("status", status="listening", start=mark + 1)
        tm = await c.wait_type("turn_metrics", start=mark, outcome="aborted")
        assert tm["source"] == "text"
        await c.send({"type": "end_call"})
        await c.wait_type("status", status="idle", start=mark)
        assert await c.rpc("tasks") == 0


async def test_agent_ends_call_after_goodbye(voice_server: ServerProcess, agent_name: str) -> None:
    async with VoiceTestClient(voice_server.ws_url("fake-voice", agent_name)) as c:
        await _start_call(c)
        await c.wait_type("transcript_end")
        mark = len(c.messages)
        await c.send({"type": "text_message", "text": "ok bye"})
        end = await c.wait_type("transcript_end", start=mark)
        assert end["text"] == "Goodbye!"
        await c.wait_type("status", status="idle", start=mark)


async def test_second_start_call_and_reconnect_do_not_repeat_greeting(
    voice_server: ServerProcess, agent_name: str
) -> None:
    url = voice_server.ws_url("fake-voice", agent_name, "_pk=caller-1")
    async with VoiceTestClient(url) as c:
        await _start_call(c)
        await c.wait_type("transcript_end")
        await c.send({"type": "start_call"})
        await c.wait_type("audio_config", start=len(c.messages) - 1)
    async with VoiceTestClient(url) as c:  # same _pk: the official client's reconnect
        await _start_call(c)
        await c.send({"type": "text_message", "text": "hello again"})
        await c.wait_type("transcript_end")
        history = await c.rpc("history")
    greetings = [m for m in history if m["content"] == "Hello, this is the test line."]
    assert len(greetings) == 1


async def test_failing_turn_apologises_and_call_continues(
    voice_server: ServerProcess, agent_name: str
) -> None:
    async with VoiceTestClient(voice_server.ws_url("fake-voice", agent_name)) as c:
        await _start_call(c)
        await c.wait_type("transcript_end")
        mark = len(c.messages)
        await c.send({"type": "text_message", "text": "please crash"})
        await c.wait_type("error", start=mark)
        await c.wait_type("turn_metrics", start=mark, outcome="error")
        await c.send({"type": "text_message", "text": "still there"})
        end = await c.wait_for(lambda m: m.get("type") == "transcript_end"
                               and m["text"] == "You said: still there", start=mark)
        assert end
