"""The core protocol against a real server process, spoken by the `websockets` client.

Each test uses its own agent name on a session-wide server, so tests never share state.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from typing import Any

import pytest
import websockets

from tests.conftest import MAX_MESSAGE_BYTES
from tests.integration.server import RECV_TIMEOUT, Client, RpcFailed, ServerProcess

MCP_EMPTY = {"prompts": [], "resources": [], "servers": {}, "tools": []}


def http(
    srv: ServerProcess, path: str, *, method: str = "GET", body: bytes | None = None
) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(f"{srv.http_url}{path}", data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=RECV_TIMEOUT) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


# -- handshake --------------------------------------------------------------------------------
async def test_handshake_order_with_state(
    conformance_server: ServerProcess, agent_name: str
) -> None:
    url = conformance_server.ws_url("counter", agent_name, "_pk=abc&extra=ignored")
    async with Client.connect(url, handshake=False) as c:
        frames = [await c.recv_json() for _ in range(3)]
    assert frames == [
        {"type": "cf_agent_identity", "name": agent_name, "agent": "counter", "stateFollows": True},
        {"type": "cf_agent_state", "state": {"count": 0}},
        {"type": "cf_agent_mcp_servers", "mcp": MCP_EMPTY},
    ]


async def test_handshake_without_state(features_server: ServerProcess, agent_name: str) -> None:
    """An agent without state sends no `stateFollows` and no state frame."""
    url = features_server.ws_url("guarded", agent_name, "token=s3cret")
    async with Client.connect(url, handshake=False) as c:
        first = await c.recv_json()
        second = await c.recv_json()
        assert first == {"type": "cf_agent_identity", "name": agent_name, "agent": "guarded"}
        assert second == {"type": "cf_agent_mcp_servers", "mcp": MCP_EMPTY}
        assert await c.call("whoami") == agent_name


async def test_handshake_carries_persisted_state(
    conformance_server: ServerProcess, agent_name: str
) -> None:
    url = conformance_server.ws_url("counter", agent_name)
    async with Client.connect(url) as c:
        assert await c.call("increment", 4, skip_other=True) == 4
        assert c.skipped == [{"type": "cf_agent_state", "state": {"count": 4}}]
    async with Client.connect(url, handshake=False) as c:
        frames = await c.read_handshake()
    assert frames[1] == {"type": "cf_agent_state", "state": {"count": 4}}


# -- RPC --------------------------------------------------------------------------------------
async def test_rpc_success(conformance_server: ServerProcess, agent_name: str) -> None:
    async with Client.connect(conformance_server.ws_url("counter", agent_name)) as c:
        frames = await c.rpc_frames("add", 2, 3)
        assert frames == [
            {"type": "rpc", "id": "req-1", "success": True, "result": 5, "done": True}
        ]
        assert await c.call("echo", {"nested": [1, "two", None]}) == {"nested": [1, "two", None]}
        assert await c.call("add", 0.5, 0.25) == 0.75


async def test_rpc_streaming(conformance_server: ServerProcess, agent_name: str) -> None:
    async with Client.connect(conformance_server.ws_url("counter", agent_name)) as c:
        frames = await c.rpc_frames("count", 4)
        assert [(f["result"], f["done"], f["success"]) for f in frames] == [
            (1, False, True),
            (2, False, True),
            (3, False, True),
            (4, False, True),
            (None, True, True),
        ]
        assert [(f["result"], f["done"]) for f in await c.rpc_frames("count", 0)] == [(None, True)]


async def test_rpc_stream_error(conformance_server: ServerProcess, agent_name: str) -> None:
    async with Client.connect(conformance_server.ws_url("counter", agent_name)) as c:
        frames = await c.rpc_frames("count", -1)
        assert frames == [
            {
                "type": "rpc",
                "id": "req-1",
                "success": False,
                "error": "n must be an integer between 0 and 10000",
            }
        ]


@pytest.mark.parametrize(
    ("method", "args", "error"),
    [
        ("fail", [], "deliberate failure"),
        ("nope", [], "Method nope does not exist"),
        ("_private", [], "Method _private does not exist"),
        ("__init__", [], "Method __init__ does not exist"),
        ("not_exposed", [], "Method not_exposed is not callable"),
        ("set_state", [{"count": 99}], "Method set_state is not callable"),
        ("sql", ["DROP TABLE callroom_kv"], "Method sql is not callable"),
        ("add", [1], "Invalid arguments for add: missing a required argument: 'b'"),
        ("add", [1, 2, 3], "Invalid arguments for add: too many positional arguments"),
        ("add", [1, "x"], "Invalid arguments for add"),
        ("increment", ["many"], "Invalid arguments for increment"),
    ],
)
async def test_rpc_errors(
    conformance_server: ServerProcess, agent_name: str, method: str, args: list[Any], error: str
) -> None:
    async with Client.connect(conformance_server.ws_url("counter", agent_name)) as c:
        [frame] = await c.rpc_frames(method, *args)
        assert frame["success"] is False
        assert set(frame) == {"type", "id", "success", "error"}
        assert frame["error"].startswith(error), frame
        # the connection and the agent are fine afterwards
        assert await c.call("add", 1, 1) == 2
    async with Client.connect(conformance_server.ws_url("counter", agent_name)) as c:
        assert await c.call("echo", "still here") == "still here"


async def test_rpc_frames_of_one_connection_answered_in_order(
    conformance_server: ServerProcess, agent_name: str
) -> None:
    async with Client.connect(conformance_server.ws_url("counter", agent_name)) as c:
        for i in range(20):
            await c.send({"type": "rpc", "id": f"r{i}", "method": "add", "args": [i, 1]})
        replies = [await c.recv_json() for _ in range(20)]
    assert [(r["id"], r["result"]) for r in replies] == [(f"r{i}", i + 1) for i in range(20)]


# -- state ------------------------------------------------------------------------------------
async def test_client_state_broadcast_to_others_not_echoed(
    conformance_server: ServerProcess, agent_name: str
) -> None:
    url = conformance_server.ws_url("counter", agent_name)
    async with Client.connect(url) as a, Client.connect(url) as b, Client.connect(url) as c:
        await a.send({"type": "cf_agent_state", "state": {"count": 41, "by": "a"}})
        assert await b.recv_json() == {"type": "cf_agent_state", "state": {"count": 41, "by": "a"}}
        assert await c.recv_json() == {"type": "cf_agent_state", "state": {"count": 41, "by": "a"}}
        # No echo to the sender: frames of one connection are handled in order, so an echo
        # would arrive before this reply (`call` fails on any frame other than the reply).
        assert await a.call("echo", "after") == "after"
    async with Client.connect(url, handshake=False) as d:  # and it was persisted
        frames = await d.read_handshake()
        assert frames[1]["state"] == {"count": 41, "by": "a"}


async def test_server_set_state_reaches_everyone(
    conformance_server: ServerProcess, agent_name: str
) -> None:
    url = conformance_server.ws_url("counter", agent_name)
    async with Client.connect(url) as a, Client.connect(url) as b:
        rid = a.next_id()
        await a.send({"type": "rpc", "id": rid, "method": "increment", "args": [5]})
        # the caller gets the broadcast first (it was queued before the reply), then the reply
        assert await a.recv_json() == {"type": "cf_agent_state", "state": {"count": 5}}
        reply = await a.recv_json()
        assert (reply["id"], reply["result"]) == (rid, 5)
        assert await b.recv_json() == {"type": "cf_agent_state", "state": {"count": 5}}


async def test_state_validation_rejects(features_server: ServerProcess, agent_name: str) -> None:
    url = features_server.ws_url("features", agent_name)
    async with Client.connect(url) as a, Client.connect(url) as b:
        for bad in ({"forbidden": True}, [1, 2], "a string", None):
            await a.send({"type": "cf_agent_state", "state": bad})
            assert await a.recv_json() == {
                "type": "cf_agent_state_error",
                "error": "State update rejected",
            }
        await a.send({"type": "cf_agent_state", "state": {"items": ["ok"], "version": 1}})
        # b saw only the accepted one
        assert await b.recv_json() == {
            "type": "cf_agent_state",
            "state": {"items": ["ok"], "version": 1},
        }
        assert await a.call("get_state") == {"items": ["ok"], "version": 1}


async def test_readonly_connection(features_server: ServerProcess, agent_name: str) -> None:
    url = features_server.ws_url("features", agent_name)
    ro_url = features_server.ws_url("features", agent_name, "readonly=1")
    async with Client.connect(ro_url) as ro, Client.connect(url) as rw:
        await ro.send({"type": "cf_agent_state", "state": {"items": ["hack"], "version": 9}})
        assert await ro.recv_json() == {
            "type": "cf_agent_state_error",
            "error": "Connection is readonly",
        }
        assert await ro.call("get_state") == {"items": [], "version": 0}
        # readonly still receives broadcasts and may call methods ...
        await rw.send({"type": "cf_agent_state", "state": {"items": ["x"], "version": 1}})
        assert await ro.recv_json() == {
            "type": "cf_agent_state",
            "state": {"items": ["x"], "version": 1},
        }
        assert await ro.call("notes") == []
        # ... but not change state through one (the npm server's `setState` refuses too)
        with pytest.raises(RpcFailed, match=r"^Connection is readonly$"):
            await ro.call("bump")
        assert await rw.call("bump", skip_other=True) == 2
        assert await ro.recv_json() == {
            "type": "cf_agent_state",
            "state": {"items": ["x"], "version": 2},
        }


# -- plain messages ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "raw",
    [
        "{not json",
        "",
        "[1, 2, 3]",
        "42",
        '"just a string"',
        "null",
        '{"type":"chat","text":"hi"}',
        '{"type":"rpc","id":"1","method":"bump"}',  # no args: not an RPC
        '{"type":"rpc","id":7,"method":"bump","args":[]}',  # id not a string
        '{"type":"cf_agent_state"}',  # no state
    ],
)
async def test_non_core_text_goes_to_on_message(
    features_server: ServerProcess, agent_name: str, raw: str
) -> None:
    async with Client.connect(features_server.ws_url("features", agent_name)) as c:
        await c.send(raw)
        assert await c.recv_json() == {"type": "echo", "data": raw}
        assert await c.call("get_state") == {"items": [], "version": 0}  # nothing else happened


async def test_binary_goes_to_on_message(features_server: ServerProcess, agent_name: str) -> None:
    async with Client.connect(features_server.ws_url("features", agent_name)) as c:
        payload = b'\x00\xff{"type":"rpc","id":"1","method":"bump","args":[]}'
        await c.send(payload)
        assert await c.recv_json() == {"type": "echo_bytes", "hex": payload.hex()}
        assert await c.call("bump", skip_other=True) == 1  # the binary "rpc" was not run


async def test_on_message_error_keeps_connection(
    features_server: ServerProcess, agent_name: str
) -> None:
    async with Client.connect(features_server.ws_url("features", agent_name)) as c:
        await c.send("boom")
        await c.send("after")
        assert await c.recv_json() == {"type": "echo", "data": "after"}
        assert await c.call("bump", skip_other=True) == 1


# -- limits -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "payload",
    [
        "x" * (MAX_MESSAGE_BYTES + 1),
        b"\x01" * (MAX_MESSAGE_BYTES + 500),
        # fewer characters than the limit, more bytes: the limit counts bytes
        "\u00e9" * (MAX_MESSAGE_BYTES // 2 + 10),
    ],
    ids=["text", "binary", "multibyte-text"],
)
async def test_oversize_message_gets_error_frame(
    features_server: ServerProcess, agent_name: str, payload: str | bytes
) -> None:
    async with Client.connect(features_server.ws_url("features", agent_name)) as c:
        await c.send(payload)
        frame = await c.recv_json()
        assert frame["type"] == "cf_agent_error"
        assert frame["code"] == "message_too_large"
        # the connection and the agent keep working
        assert await c.call("bump", skip_other=True) == 1
        await c.send("x" * MAX_MESSAGE_BYTES)  # exactly at the limit is fine
        assert (await c.recv_json())["type"] == "echo"


async def test_far_oversize_frame_closes_only_that_connection(
    features_server: ServerProcess, agent_name: str
) -> None:
    """Beyond the transport limit the socket is closed with 1009; the agent is unharmed."""
    url = features_server.ws_url("features", agent_name)
    async with Client.connect(url) as other:
        assert await other.call("bump", skip_other=True) == 1
        async with Client.connect(url) as c:
            await c.send(b"\x00" * (MAX_MESSAGE_BYTES * 4))
            closed = await c.closed()
            assert closed.rcvd is not None and closed.rcvd.code == 1009
        assert await other.call("bump", skip_other=True) == 2
    async with Client.connect(url) as again:
        assert await again.call("get_state") == {"items": [], "version": 2}


# -- addressing -------------------------------------------------------------------------------
BAD_NAMES = [".hidden", "a%20b", "caf%C3%A9", "%2E%2E", "..", ".", "a%00b", "x" * 129, "a%0Ab"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_name_http_400(features_server: ServerProcess, name: str) -> None:
    # http.client sends the path as is (urllib would normalise the dot segments)
    status, body = _raw_http(features_server, f"/agents/features/{name}")
    assert status == 400
    assert body["code"] == "bad_agent_name"


def test_encoded_slash_cannot_smuggle_a_path_into_the_name(
    features_server: ServerProcess, agent_name: str
) -> None:
    """`%2F` is decoded before routing: the segment before it is the name, the rest is the
    sub-path `on_request` sees, so the name is still one validated segment."""
    status, body = _raw_http(features_server, f"/agents/features/{agent_name}%2F..%2F..%2Fx")
    assert status == 200
    assert body["name"] == agent_name
    assert body["path"] == f"/agents/features/{agent_name}/../../x"


def _raw_http(srv: ServerProcess, path: str) -> tuple[int, dict[str, Any]]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=RECV_TIMEOUT)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        raw = resp.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = {"raw": raw.decode(errors="replace")}
        return resp.status, body
    finally:
        conn.close()


@pytest.mark.parametrize("name", BAD_NAMES)
async def test_bad_name_ws_1008(features_server: ServerProcess, name: str) -> None:
    async with Client.connect(features_server.ws_url("features", name), handshake=False) as c:
        closed = await c.closed()
    assert closed.rcvd is not None and closed.rcvd.code == 1008


def test_unknown_class_http_404(features_server: ServerProcess) -> None:
    status, body = http(features_server, "/agents/no-such-agent/default")
    assert status == 404
    assert body["code"] == "unknown_agent"


@pytest.mark.parametrize("path", ["no-such-agent/default", "Features/default", "features"])
async def test_unknown_class_ws_1008(features_server: ServerProcess, path: str) -> None:
    url = f"ws://{features_server.host}/agents/{path}"
    async with Client.connect(url, handshake=False) as c:
        closed = await c.closed()
    assert closed.rcvd is not None and closed.rcvd.code == 1008


def test_no_bad_name_ever_reaches_the_disk(features_server: ServerProcess) -> None:
    names = {p.name for p in (features_server.data_dir / "features").glob("*")}
    assert not any(n.startswith(".") or " " in n or not n.isascii() for n in names), names


# -- auth -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("query", "status"), [("", 401), ("token=wrong", 403)])
async def test_before_connect_refuses_ws_with_http_status(
    features_server: ServerProcess, agent_name: str, query: str, status: int
) -> None:
    url = features_server.ws_url("guarded", agent_name, query)
    with pytest.raises(websockets.InvalidStatus) as info:
        async with asyncio.timeout(RECV_TIMEOUT):
            await websockets.connect(url)
    assert info.value.response.status_code == status


@pytest.mark.parametrize(
    ("query", "status"), [("", 401), ("?token=wrong", 403), ("?token=s3cret", 200)]
)
def test_before_connect_guards_http(
    features_server: ServerProcess, agent_name: str, query: str, status: int
) -> None:
    code, body = http(features_server, f"/agents/guarded/{agent_name}{query}")
    assert code == status
    if status == 200:
        assert body == {"hello": agent_name}


def test_refused_connection_never_creates_the_agent(
    features_server: ServerProcess, agent_name: str
) -> None:
    http(features_server, f"/agents/guarded/{agent_name}")
    assert not (features_server.data_dir / "guarded" / f"{agent_name}.db").exists()


# -- HTTP and SQL -----------------------------------------------------------------------------
def test_on_request_and_sql(features_server: ServerProcess, agent_name: str) -> None:
    status, body = http(features_server, f"/agents/features/{agent_name}")
    assert status == 200
    assert body["name"] == agent_name and body["method"] == "GET" and body["notes"] == []
    evil = "'); DROP TABLE notes; --"
    status, body = http(
        features_server,
        f"/agents/features/{agent_name}/sub/path",
        method="POST",
        body=evil.encode(),
    )
    assert status == 200
    assert body["path"] == f"/agents/features/{agent_name}/sub/path"
    assert body["notes"] == [evil]


async def test_http_and_ws_share_one_agent(features_server: ServerProcess, agent_name: str) -> None:
    async with Client.connect(features_server.ws_url("features", agent_name)) as c:
        assert await c.call("add_note", "from ws") == 1
        await asyncio.to_thread(
            http,
            features_server,
            f"/agents/features/{agent_name}",
            method="POST",
            body=b"from http",
        )
        assert await c.call("notes") == ["from ws", "from http"]


async def test_rpc_failure_is_not_a_crash(features_server: ServerProcess, agent_name: str) -> None:
    async with Client.connect(features_server.ws_url("features", agent_name)) as c:
        with pytest.raises(RpcFailed, match="Invalid arguments for add_note"):
            await c.call("add_note")
        assert await c.call("notes") == []
