"""The core wire messages: inbound classification never raises, outbound frames have the
exact shape the npm `AgentClient` reads (dist/client-*.js)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from callroom.protocol import core


def test_state_update_parsed() -> None:
    msg = core.parse(json.dumps({"type": "cf_agent_state", "state": {"count": 3}}))
    assert msg == core.StateUpdate({"count": 3})


@pytest.mark.parametrize("state", [None, 0, "", [], {"nested": {"x": [1, 2]}}])
def test_state_update_keeps_any_json_state(state: Any) -> None:
    assert core.parse(json.dumps({"type": "cf_agent_state", "state": state})) == (
        core.StateUpdate(state)
    )


def test_rpc_request_parsed() -> None:
    raw = json.dumps({"type": "rpc", "id": "1", "method": "add", "args": [1, 2]})
    assert core.parse(raw) == core.RpcRequest("1", "add", [1, 2])


@pytest.mark.parametrize(
    "obj",
    [
        {"type": "rpc", "method": "add", "args": []},  # no id
        {"type": "rpc", "id": 1, "method": "add", "args": []},  # id not a string
        {"type": "rpc", "id": "1", "args": []},  # no method
        {"type": "rpc", "id": "1", "method": "add"},  # no args
        {"type": "rpc", "id": "1", "method": "add", "args": {"a": 1}},  # args not a list
        {"type": "cf_agent_state"},  # no state
        {"type": "something_else", "x": 1},
        {"no_type": True},
    ],
)
def test_incomplete_core_messages_are_plain(obj: dict[str, Any]) -> None:
    raw = json.dumps(obj)
    msg = core.parse(raw)
    assert isinstance(msg, core.PlainMessage)
    assert msg.data == raw  # delivered unchanged
    assert msg.parsed == obj


@pytest.mark.parametrize("raw", ["{not json", "", "   ", "[1, 2", "\x00", "NaN-ish"])
def test_invalid_json_is_plain(raw: str) -> None:
    msg = core.parse(raw)
    assert isinstance(msg, core.PlainMessage)
    assert msg.data == raw
    assert msg.parsed is None


@pytest.mark.parametrize(
    ("raw", "parsed"), [("[1,2]", [1, 2]), ("42", 42), ('"s"', "s"), ("null", None), ("true", True)]
)
def test_non_object_json_is_plain(raw: str, parsed: Any) -> None:
    msg = core.parse(raw)
    assert isinstance(msg, core.PlainMessage)
    assert msg.data == raw
    assert msg.parsed == parsed


def test_binary_is_plain_and_untouched() -> None:
    data = b'{"type":"rpc","id":"1","method":"add","args":[]}'
    msg = core.parse(data)
    assert isinstance(msg, core.PlainMessage)
    assert msg.data is data


def test_deeply_nested_json_does_not_raise() -> None:
    raw = "[" * 100_000 + "]" * 100_000
    assert isinstance(core.parse(raw), core.PlainMessage)


def test_identity_frames() -> None:
    assert core.identity("n", "counter", state_follows=True) == {
        "type": "cf_agent_identity",
        "name": "n",
        "agent": "counter",
        "stateFollows": True,
    }
    # stateFollows must be absent (not false) when there is no state
    assert core.identity("n", "counter", state_follows=False) == {
        "type": "cf_agent_identity",
        "name": "n",
        "agent": "counter",
    }


def test_state_and_errors() -> None:
    assert core.state({"a": 1}) == {"type": "cf_agent_state", "state": {"a": 1}}
    assert core.state_error("Connection is readonly") == {
        "type": "cf_agent_state_error",
        "error": "Connection is readonly",
    }


def test_mcp_servers_empty_form() -> None:
    assert core.mcp_servers() == {
        "type": "cf_agent_mcp_servers",
        "mcp": {"prompts": [], "resources": [], "servers": {}, "tools": []},
    }


def test_rpc_results() -> None:
    assert core.rpc_result("7", 5) == {
        "type": "rpc",
        "id": "7",
        "success": True,
        "result": 5,
        "done": True,
    }
    assert core.rpc_result("7", 1, done=False)["done"] is False
    assert core.rpc_error("7", "Method x does not exist") == {
        "type": "rpc",
        "id": "7",
        "success": False,
        "error": "Method x does not exist",
    }


def test_dumps_is_compact_and_keeps_unicode() -> None:
    out = core.dumps({"type": "x", "text": "héllo ✓"})
    assert out == '{"type":"x","text":"héllo ✓"}'


def test_dumps_converts_common_python_values() -> None:
    class Model:
        def model_dump(self, mode: str) -> dict[str, Any]:
            return {"mode": mode}

    out = json.loads(core.dumps({"t": (1, 2), "s": {3}, "b": b"hi", "m": Model(), "o": 1.5}))
    assert out == {"t": [1, 2], "s": [3], "b": "hi", "m": {"mode": "json"}, "o": 1.5}


def test_round_trip_of_outbound_frames() -> None:
    """What we send is what the client (and our own parser) reads back."""
    for frame in (core.rpc_result("1", {"x": [1]}), core.identity("a", "b", state_follows=True)):
        assert json.loads(core.dumps(frame)) == frame
    sent = core.dumps(core.state({"count": 1}))
    assert core.parse(sent) == core.StateUpdate({"count": 1})
