"""Isolation between agents, the auth hook, and what reaches the server log.

- Storage: each agent's SQL runs on its own file (`PRAGMA database_list`); one agent never
  sees another's rows, on the server or on disk.
- Connections: a frame or broadcast of one agent reaches only its own connections, even when
  clients reuse each other's `_pk`.
- Auth: the app's `on_before_connect` binds a token to one agent name — a missing token is
  401, a wrong one or another agent's is 403, over WebSocket and HTTP; a refused client never
  creates the agent.
- Logs: tokens (bearer header or query string), an API key, the caller's words and the
  assistant's reply never appear; each voice turn logs one structured line with the call id
  and stage timings.
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import websockets

from callroom.testing import silence, to_pcm16, tone
from tests.integration.server import ServerProcess
from tests.integration.voice_client import VoiceTestClient
from tests.reliability.apps.rel_app import TOKENS
from tests.reliability.conftest import REL_APP, read_db

ALICE, BOB = "tok-alice-9f8e7d6c5b4a", "tok-bob-1a2b3c4d5e6f"
API_KEY = "sk-live-NEVER-LOG-ME-77aa88bb"
CARD = "4111 1111 1111 1111"


@pytest.fixture(scope="module")
def iso_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("isolation")
    env = {"OPENAI_API_KEY": API_KEY}  # default log level (INFO), as in production
    with ServerProcess(REL_APP, base / "data", env=env) as srv:
        yield srv


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def connect(
    srv: ServerProcess, name: str, headers: dict[str, str] | None = None, query: str = ""
) -> websockets.ClientConnection:
    return await websockets.connect(
        srv.ws_url("vault", name, query), additional_headers=headers or {}, max_size=None
    )


async def rpc(ws: websockets.ClientConnection, method: str, *args: Any) -> Any:
    rid = f"r-{method}-{id(args)}"
    await ws.send(json.dumps({"type": "rpc", "id": rid, "method": method, "args": list(args)}))
    async with asyncio.timeout(10):
        while True:
            msg = json.loads(await ws.recv())
            if msg.get("type") == "rpc" and msg.get("id") == rid:
                assert msg["success"], msg
                return msg["result"]


def http_status(srv: ServerProcess, path: str, headers: dict[str, str]) -> int:
    req = urllib.request.Request(f"{srv.http_url}{path}", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


# -- storage & connections ---------------------------------------------------------------------
async def test_agents_see_only_their_own_storage_and_connections(
    iso_server: ServerProcess,
) -> None:
    srv = iso_server
    a1 = await connect(srv, "alice", bearer(ALICE), "_pk=shared-pk")
    a2 = await connect(srv, "alice", query=f"token={ALICE}")
    b1 = await connect(srv, "bob", bearer(BOB), "_pk=shared-pk")  # same _pk, other agent
    try:
        assert await rpc(a1, "put", "alice's secret") == 1
        assert await rpc(b1, "put", "bob's secret") == 1
        assert await rpc(a2, "read_all") == ["alice's secret"]
        assert await rpc(b1, "read_all") == ["bob's secret"]
        [alice_db] = await rpc(a1, "databases")
        [bob_db] = await rpc(b1, "databases")
        assert alice_db.endswith("/vault/alice.db") and bob_db.endswith("/vault/bob.db")
        assert await rpc(a1, "connections") == 2 and await rpc(b1, "connections") == 1
        # a plain frame is relayed to alice's connections only
        await a1.send("hello from alice")
        for ws in (a1, a2):
            while True:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if msg.get("type") == "relay":
                    assert msg == {"type": "relay", "agent": "alice", "data": "hello from alice"}
                    break
        # bob saw none of it: everything he receives up to his next reply is his own
        rid = "bob-check"
        await b1.send(json.dumps({"type": "rpc", "id": rid, "method": "whoami", "args": []}))
        async with asyncio.timeout(10):
            while True:
                msg = json.loads(await b1.recv())
                assert msg.get("type") != "relay", msg
                if msg.get("id") == rid:
                    assert msg["result"] == "bob"
                    break
    finally:
        for ws in (a1, a2, b1):
            await ws.close()
    on_disk = {r[0] for r in read_db(srv.data_dir / "vault" / "alice.db", "SELECT v FROM secrets")}
    assert on_disk == {"alice's secret"}


# -- auth hook ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "headers", "query", "status"),
    [
        ("alice", {}, "", 401),  # no token
        ("alice", bearer("tok-wrong"), "", 403),  # unknown token
        ("bob", bearer(ALICE), "", 403),  # alice's token on bob's agent
        ("alice", {}, f"token={BOB}", 403),  # bob's token, in the query
        ("mallory", bearer(ALICE), "", 403),  # a name no token opens
    ],
)
async def test_token_opens_only_its_own_agent(
    iso_server: ServerProcess, name: str, headers: dict[str, str], query: str, status: int
) -> None:
    with pytest.raises(websockets.InvalidStatus) as refused:
        await connect(iso_server, name, headers, query)
    assert refused.value.response.status_code == status
    suffix = f"?{query}" if query else ""
    assert http_status(iso_server, f"/agents/vault/{name}{suffix}", headers) == status
    assert not (iso_server.data_dir / "vault" / "mallory.db").exists()


async def test_right_token_gets_in(iso_server: ServerProcess) -> None:
    for token, name in TOKENS.items():
        ws = await connect(iso_server, name, bearer(token))
        try:
            assert await rpc(ws, "whoami") == name
        finally:
            await ws.close()


# -- logs ----------------------------------------------------------------------------------------
async def test_logs_hold_no_secrets_and_one_line_per_turn(
    iso_server: ServerProcess, agent_name: str
) -> None:
    srv = iso_server
    url = srv.ws_url("rel-voice", agent_name, f"token={ALICE}&apikey={API_KEY}")
    async with VoiceTestClient(url) as c:
        await c.send({"type": "start_call"})
        await c.wait_type("transcript_end")  # greeting: a `speak`, not a turn
        await asyncio.sleep(sum(len(a) for a in c.audio) / 32_000)
        turns = 0
        for text in (f"my card is {CARD}", "and my password is hunter2"):
            mark = len(c.messages)
            await c.send({"type": "text_message", "text": text})
            await c.wait_type("turn_metrics", start=mark)
            await c.wait_type("status", status="listening", start=mark)
            turns += 1
        mark = len(c.messages)
        await c.stream_audio(to_pcm16(np.concatenate([tone(0.8), silence(1.0)])), realtime=1.0)
        await c.wait_type("turn_metrics", start=mark)
        await c.wait_type("status", status="listening", start=mark)
        turns += 1
        [call_id] = await c.rpc("call_ids")
    # the bearer header and a query token on the agent protocol, and on HTTP
    http_status(srv, f"/agents/vault/alice?token={ALICE}", bearer(BOB))
    ws = await connect(srv, "alice", bearer(ALICE))
    await ws.close()
    log = await asyncio.to_thread(srv.log)
    for secret in (ALICE, BOB, API_KEY, CARD, "hunter2", "You said"):
        assert secret not in log, f"{secret!r} leaked into the log"
    assert "token=***" in log  # the request line is still there, masked
    lines = [ln for ln in log.splitlines() if f"turn call={call_id} " in ln]
    assert len(lines) == turns, lines
    for line in lines:
        fields = dict(kv.split("=", 1) for kv in line.split("turn ", 1)[1].split())
        assert fields["call"] == call_id
        assert re.fullmatch(r"turn_\d+", fields["turn"])
        assert fields["source"] in ("text", "speech") and fields["outcome"] == "completed"
        timings = {
            k: v for k, v in fields.items() if k not in ("call", "turn", "source", "outcome")
        }
        assert timings and all(re.fullmatch(r"\d+", v) for v in timings.values()), line
    assert max(len(ln) for ln in log.splitlines()) < 1000  # no audio or payloads dumped
