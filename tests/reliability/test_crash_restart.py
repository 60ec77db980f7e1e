"""Crash and restart of a server in the middle of a voice call, and graceful shutdown.

- SIGKILL mid-turn: every turn that completed before the crash is in the history, schedules
  survive (the missed one fires after the restart), the database passes
  `PRAGMA integrity_check`; a client reconnecting with the same `_pk` and re-sending
  `start_call` (what the npm `VoiceClient` does) resumes the same call: same call id, same
  history, no second greeting.
- SIGTERM mid-turn: the turn in flight finishes and is recorded before the socket closes with
  1001; a turn that would outlive `CALLROOM_SHUTDOWN_GRACE_SECONDS` does not hold the process.
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import numpy as np

from callroom.testing import silence, to_pcm16, tone
from tests.integration.server import ServerProcess
from tests.integration.voice_client import VoiceTestClient
from tests.reliability.conftest import agent_db, read_db

GREETING = "Hello, this is the test line."


async def start_call(c: VoiceTestClient) -> None:
    await c.wait_type("status", status="idle")
    await c.send({"type": "start_call", "preferred_format": "pcm16"})
    await c.wait_type("audio_config")
    await c.wait_type("status", status="listening")


async def text_turn(c: VoiceTestClient, text: str) -> dict[str, Any]:
    """One text turn; returns its `turn_metrics` once `status: listening` follows it."""
    mark = len(c.messages)
    await c.send({"type": "text_message", "text": text})
    tm = await c.wait_type("turn_metrics", start=mark)
    await c.wait_type("status", status="listening", start=mark)
    return tm


async def wait_closed(c: VoiceTestClient, within: float = 15.0) -> tuple[int, str]:
    async with asyncio.timeout(within):
        while c.closed is None:
            c._changed.clear()
            await c._changed.wait()
    return c.closed


def messages(srv: ServerProcess, name: str) -> list[tuple[str, str, str]]:
    return [
        (r[0], r[1], r[2])
        for r in read_db(
            agent_db(srv, "rel-voice", name),
            "SELECT call_id, role, content FROM callroom_messages ORDER BY seq",
        )
    ]


async def test_sigkill_mid_turn_then_resume_the_call(
    rel_server_factory: Any, agent_name: str
) -> None:
    srv: ServerProcess = rel_server_factory()
    url = srv.ws_url("rel-voice", agent_name, "_pk=caller-7")
    async with VoiceTestClient(url) as c:
        await start_call(c)
        await c.wait_type("transcript_end", text=GREETING)
        # let the greeting play out (speaking over it would be a barge-in that cuts it)
        await asyncio.sleep(sum(len(a) for a in c.audio) / 32_000 + 0.3)
        # turn 1: spoken (tone → "I spoke for N seconds."), turn 2: typed
        mark = len(c.messages)
        await c.stream_audio(to_pcm16(np.concatenate([tone(0.8), silence(1.0)])), realtime=1.0)
        first = await c.wait_type("transcript", start=mark, role="user")
        await c.wait_type("turn_metrics", start=mark)
        await c.wait_type("status", status="listening", start=mark)
        assert (await text_turn(c, "second question"))["outcome"] == "completed"
        soon = await c.rpc("schedule_in", 1.0, "soon")
        await c.rpc("schedule_in", 3600, "later")
        # turn 3 is in flight ("slow" sleeps before answering) when the process dies
        mark = len(c.messages)
        await c.send({"type": "text_message", "text": "slow one please"})
        await c.wait_type("status", status="thinking", start=mark)
        srv.kill()
        assert (await wait_closed(c))[0] == 1006  # the process died: no close frame

    db = agent_db(srv, "rel-voice", agent_name)
    assert read_db(db, "PRAGMA integrity_check") == [("ok",)]
    before = messages(srv, agent_name)
    call_ids = {m[0] for m in before}
    assert len(call_ids) == 1, before
    assert [(role, text) for _, role, text in before] == [
        ("assistant", GREETING),
        ("user", first["text"]),
        ("assistant", f"You said: {first['text']}"),
        ("user", "second question"),
        ("assistant", "You said: second question"),
        ("user", "slow one please"),  # asked, never answered: the crash came first
    ]
    pending = read_db(db, "SELECT callback, payload FROM callroom_schedules ORDER BY time")
    assert [p[0] for p in pending] == ["fired_callback", "fired_callback"]
    await asyncio.sleep(max(0.0, soon - time.time()) + 0.1)  # "soon" falls due while down

    srv.start()
    async with VoiceTestClient(url) as c:  # same _pk: the npm client's reconnect
        await start_call(c)
        tm = await text_turn(c, "are you back")
        assert tm["outcome"] == "completed"
        history = await c.rpc("history")
        assert await c.rpc("schedules") == ["later"]
        fired = await _wait_rpc(c, "fired", lambda v: v == ["soon"])
    assert fired == ["soon"]
    after = messages(srv, agent_name)
    assert after[: len(before)] == before  # nothing lost, nothing rewritten
    assert [m[1:] for m in after[len(before) :]] == [
        ("user", "are you back"),
        ("assistant", "You said: are you back"),
    ]
    assert {m[0] for m in after} == call_ids  # the same call, resumed
    assert sum(1 for m in history if m["content"] == GREETING) == 1  # not greeted again
    assert read_db(db, "PRAGMA integrity_check") == [("ok",)]


async def _wait_rpc(c: VoiceTestClient, method: str, ok: Any, limit: float = 10.0) -> Any:
    deadline = time.monotonic() + limit
    while True:
        value = await c.rpc(method)
        if ok(value) or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.1)


async def test_sigterm_lets_the_turn_in_flight_finish(
    rel_server_factory: Any, agent_name: str
) -> None:
    srv: ServerProcess = rel_server_factory(env={"CALLROOM_SHUTDOWN_GRACE_SECONDS": "8"})
    url = srv.ws_url("rel-voice", agent_name, "_pk=caller-9")
    async with VoiceTestClient(url) as c:
        await start_call(c)
        await c.wait_type("transcript_end", text=GREETING)
        mark = len(c.messages)
        await c.send({"type": "text_message", "text": "slow goodbye"})
        await c.wait_type("status", status="thinking", start=mark)
        srv.terminate_nowait()
        end = await c.wait_type("transcript_end", start=mark)
        assert end["text"] == "Done slowly."  # the reply still went out whole
        assert (await wait_closed(c))[0] == 1001  # "going away": clients reconnect
    assert await asyncio.to_thread(srv.wait, 20) in (0, -signal.SIGTERM)
    assert [m[1:] for m in messages(srv, agent_name)[-2:]] == [
        ("user", "slow goodbye"),
        ("assistant", "Done slowly."),
    ]


async def test_sigterm_does_not_wait_past_the_grace_period(
    rel_server_factory: Any, agent_name: str
) -> None:
    srv: ServerProcess = rel_server_factory(env={"CALLROOM_SHUTDOWN_GRACE_SECONDS": "1"})
    url = srv.ws_url("rel-voice", agent_name, "_pk=caller-11")
    async with VoiceTestClient(url) as c:
        await start_call(c)
        await c.wait_type("transcript_end", text=GREETING)
        mark = len(c.messages)
        await c.send({"type": "text_message", "text": "hang on forever"})
        await c.wait_type("status", status="thinking", start=mark)
        srv.terminate_nowait()
        assert (await wait_closed(c))[0] == 1001
    # a turn that never ends cannot hold the process: it exits (20 s is a liveness bound,
    # far above the 1 s grace; the point is that it does not wait for the turn)
    assert await asyncio.to_thread(srv.wait, 20) in (0, -signal.SIGTERM)
    rows = messages(srv, agent_name)
    assert rows[-1][1:] == ("user", "hang on forever")  # asked; nothing was said in reply
    srv.start()
    async with VoiceTestClient(url) as c:  # and the call resumes after the restart
        await start_call(c)
        assert (await text_turn(c, "hello again"))["outcome"] == "completed"
    assert {m[0] for m in messages(srv, agent_name)} == {rows[0][0]}
