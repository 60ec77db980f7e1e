"""Backpressure and limits against a real server.

- A client that stops reading is closed with 1013 and a reason once its bounded send queue
  (`CALLROOM_MAX_SEND_QUEUE_BYTES`, here 1 MiB) is full; the server's memory stays bounded and
  other clients are unaffected.
- A slow but reading client gets a long spoken reply whole: speech audio is paced to what the
  client takes instead of overflowing the queue.
- Rate limit (`CALLROOM_MAX_MESSAGES_PER_SECOND`, here 200/s): microphone audio at 50
  frames/s passes; a flood gets a `rate_limited` error frame, then close 1008 — on the agent
  protocol and on a Twilio stream.
- `CALLROOM_MAX_CALLS` (here 2): one call too many gets a clear `busy` error, the slot frees
  when a call ends.
The per-message size limit has its own tests in tests/integration/test_protocol.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import websockets

from callroom.protocol import twilio as tp
from callroom.testing import silence, to_pcm16, tone
from tests.integration.server import Client, ServerProcess
from tests.integration.voice_client import VoiceTestClient
from tests.reliability.conftest import (
    FIGURES,
    REL_APP,
    assert_no_leak,
    health,
    proc_rss_kb,
    wait_quiet,
)

QUEUE_BYTES = 1024 * 1024
RATE = 200


@pytest.fixture(scope="module")
def limits_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("limits")
    env = {
        "CALLROOM_MAX_SEND_QUEUE_BYTES": str(QUEUE_BYTES),
        "CALLROOM_MAX_MESSAGES_PER_SECOND": str(RATE),
        "CALLROOM_MAX_CALLS": "2",
        "CALLROOM_IDLE_SECONDS": "2",
        "TWILIO_AUTH_TOKEN": "",
        "TWILIO_ACCOUNT_SID": "",
        "TWILIO_PUBLIC_URL": "",
    }
    with ServerProcess(REL_APP, base / "data", env=env) as srv:
        yield srv


async def start_call(c: VoiceTestClient) -> dict[str, Any]:
    mark = len(c.messages)
    await c.send({"type": "start_call"})
    return await c.wait_for(
        lambda m: m.get("type") == "audio_config" or m.get("type") == "error", start=mark
    )


async def sentinel(srv: ServerProcess) -> None:
    async with Client.connect(srv.ws_url("counter", "sentinel")) as c:
        assert await c.call("add", 20, 22) == 42


# -- a client that stops reading -------------------------------------------------------------
async def test_client_that_stops_reading_is_closed_1013_and_memory_stays_bounded(
    limits_server: ServerProcess, agent_name: str
) -> None:
    srv = limits_server
    before = await asyncio.to_thread(wait_quiet, srv)
    rss_before = proc_rss_kb(srv.proc.pid)  # type: ignore[union-attr]
    payload = "x" * (128 * 1024)
    # max_queue=1: the client library buffers one frame, then stops reading the socket
    ws = await websockets.connect(srv.ws_url("counter", agent_name), max_size=None, max_queue=1)
    peak = rss_before
    sent = 0

    async def flood() -> None:
        nonlocal sent
        for i in range(600):  # 75 MiB of replies asked for, far past every buffer on the way
            await ws.send(
                json.dumps({"type": "rpc", "id": f"e{i}", "method": "echo", "args": [payload]})
            )
            sent += 1

    sender = asyncio.create_task(flood())
    try:
        deadline = time.monotonic() + 30
        while "send queue full" not in srv.log():
            assert time.monotonic() < deadline, "the server never gave up on the client"
            peak = max(peak, proc_rss_kb(srv.proc.pid))  # type: ignore[union-attr]
            await asyncio.sleep(0.05)
        peak = max(peak, proc_rss_kb(srv.proc.pid))  # type: ignore[union-attr]
        # the client reads again: what was in flight, then the close with its reason
        with pytest.raises(websockets.ConnectionClosed) as closed:
            async with asyncio.timeout(30):
                while True:
                    await ws.recv()
        assert closed.value.rcvd is not None, closed.value
        assert closed.value.rcvd.code == 1013
        assert "send queue overflow" in closed.value.rcvd.reason
    finally:
        sender.cancel()
        with contextlib.suppress(BaseException):
            await sender
        await ws.close()
    growth_mb = (peak - rss_before) / 1024
    FIGURES["slow_reader"] = {"requests_sent": sent, "rss_growth_mb": round(growth_mb, 1)}
    # bounded: the 1 MiB queue plus one request and reply in flight, not the 75 MiB asked for
    assert growth_mb < 48, FIGURES["slow_reader"]
    await sentinel(srv)
    await asyncio.to_thread(assert_no_leak, srv, before)


async def test_slow_reader_gets_a_long_spoken_reply_whole(
    limits_server: ServerProcess, agent_name: str
) -> None:
    """A 1000-word reply is ~4 min of speech (8 MiB of PCM), synthesized in well under a
    second: eight times the queue bound. A client that reads, but slowly (here ~3 MiB/s, a slow
    link), still gets all of it: the audio is paced to what it takes, not dropped or cut."""
    words = 1000
    url = limits_server.ws_url("rel-voice", agent_name)
    got = 0
    end: dict[str, Any] | None = None
    async with websockets.connect(url, max_size=None, max_queue=4) as ws:
        await ws.send(json.dumps({"type": "start_call"}))
        await ws.send(json.dumps({"type": "text_message", "text": "w " * words}))
        async with asyncio.timeout(90):
            while True:
                frame = await ws.recv()
                if isinstance(frame, bytes):
                    got += len(frame)
                    await asyncio.sleep(0.005)  # a slow link: ~200 frames/s
                    continue
                msg = json.loads(frame)
                if msg["type"] == "transcript_end" and msg["text"].startswith("You said"):
                    end = msg
                if end is not None and msg == {"type": "status", "status": "listening"}:
                    break
    assert end is not None and end["text"].count("w") == words
    assert got > 1.5 * QUEUE_BYTES  # far more than the queue could hold at once


# -- rate limit -------------------------------------------------------------------------------
async def test_microphone_audio_passes_the_rate_limit(
    limits_server: ServerProcess, agent_name: str
) -> None:
    async with VoiceTestClient(limits_server.ws_url("rel-voice", agent_name)) as c:
        assert (await start_call(c))["type"] == "audio_config"
        await c.wait_type("transcript_end")
        await asyncio.sleep(sum(len(a) for a in c.audio) / 32_000)  # let the greeting play
        mark = len(c.messages)
        # 3 s of 20 ms frames at real time (50 frames/s), with RPCs in between
        pcm = to_pcm16(np.concatenate([tone(1.0), silence(2.0)]))
        await c.stream_audio(pcm, chunk_ms=20, realtime=1.0)
        await c.wait_type("turn_metrics", start=mark)
        assert await c.rpc("tasks") >= 1
        assert c.closed is None
        assert not [m for m in c.messages if m.get("code") == "rate_limited"]


async def test_flood_gets_an_error_frame_then_1008(
    limits_server: ServerProcess, agent_name: str
) -> None:
    async with Client.connect(limits_server.ws_url("counter", agent_name)) as c:
        frames: list[Any] = []
        with contextlib.suppress(websockets.ConnectionClosed):
            for i in range(20 * RATE):  # 10x the burst, as fast as the client can
                await c.ws.send(f"ping {i}")
        with pytest.raises(websockets.ConnectionClosed) as closed:
            async with asyncio.timeout(30):
                while True:
                    frames.append(json.loads(await c.ws.recv()))
        errors = [f for f in frames if f.get("type") == "cf_agent_error"]
        assert errors and errors[0]["code"] == "rate_limited", frames[-3:]
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        assert closed.value.rcvd.reason == "rate limit exceeded"
    await sentinel(limits_server)


async def test_twilio_flood_is_closed_1008(limits_server: ServerProcess) -> None:
    url = f"ws://{limits_server.host}/twilio/stream/rel-voice"
    start = tp.Start(
        stream_sid="MZflood",
        call_sid="CAflood",
        custom_parameters={"callroom_agent": "flood-phone"},
    )
    media = tp.dumps(
        {
            "event": "media",
            "streamSid": "MZflood",
            "media": {"track": "inbound", "payload": "/////w=="},
        }
    )
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(tp.dumps(tp.connected_event()))
        await ws.send(tp.dumps(tp.start_event(start)))
        with contextlib.suppress(websockets.ConnectionClosed):
            for _ in range(20 * RATE):
                await ws.send(media)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            async with asyncio.timeout(30):
                while True:
                    await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    await sentinel(limits_server)


# -- concurrent calls -------------------------------------------------------------------------
async def test_one_call_too_many_is_told_busy(
    limits_server: ServerProcess, agent_name: str
) -> None:
    srv = limits_server
    urls = [srv.ws_url("rel-voice", f"{agent_name}-{i}") for i in range(3)]
    async with VoiceTestClient(urls[0]) as a, VoiceTestClient(urls[1]) as b:
        assert (await start_call(a))["type"] == "audio_config"
        assert (await start_call(b))["type"] == "audio_config"
        assert health(srv)["active_calls"] == 2
        async with VoiceTestClient(urls[2]) as c:
            refused = await start_call(c)
            assert refused["type"] == "error" and refused["code"] == "busy", refused
            assert refused["retryable"] is True
            assert "busy" in refused["message"]
            await c.wait_type("status", status="idle")
            assert c.closed is None  # told, not hung up on: it may retry
            mark = len(a.messages)
            await a.send({"type": "end_call"})  # a slot frees up ...
            await a.wait_type("status", status="idle", start=mark)
            assert (await start_call(c))["type"] == "audio_config"  # ... and the retry works
            assert health(srv)["active_calls"] == 2
    await asyncio.to_thread(wait_quiet, srv)  # every call counted out again
