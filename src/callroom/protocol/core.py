"""Cloudflare `agents` core protocol (identity, state, RPC) as plain data.

Inbound frames are classified into one of a few typed messages; everything that is not one of
them (including text that is not JSON) is a `PlainMessage` for the agent's `on_message`, exactly
as the npm server does. Outbound messages are built as dicts and serialised by `dumps`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

MCP_EMPTY: dict[str, Any] = {"prompts": [], "resources": [], "servers": {}, "tools": []}


@dataclass(frozen=True, slots=True)
class StateUpdate:
    state: Any


@dataclass(frozen=True, slots=True)
class RpcRequest:
    id: str
    method: str
    args: list[Any]


@dataclass(frozen=True, slots=True)
class PlainMessage:
    """Anything else: delivered unchanged (str or bytes) to `on_message`."""

    data: str | bytes
    parsed: Any = None


CoreMessage = StateUpdate | RpcRequest | PlainMessage


def dumps(message: dict[str, Any]) -> str:
    """Compact JSON; `ensure_ascii=False` keeps transcripts readable and frames small.

    A lone surrogate (legal in JSON and JS strings, e.g. `"\\ud800"` from a client, but not
    encodable as UTF-8) would make the frame unsendable and kill the connection's writer, so
    such a message is escaped to ASCII instead, which JS decodes to the same string."""
    text = json.dumps(message, separators=(",", ":"), ensure_ascii=False, default=_default)
    if not text.isascii() and not utf8_safe(text):
        text = json.dumps(message, separators=(",", ":"), default=_default)
    return text


def utf8_safe(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _default(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def parse(data: str | bytes, *, max_depth: int = 64) -> CoreMessage:
    """Classify one inbound frame. Never raises: bad input is a `PlainMessage`."""
    if isinstance(data, bytes):
        return PlainMessage(data)
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        return PlainMessage(data)
    if not isinstance(obj, dict):
        return PlainMessage(data, obj)
    kind = obj.get("type")
    if kind == "cf_agent_state" and "state" in obj:
        return StateUpdate(obj["state"])
    if (
        kind == "rpc"
        and isinstance(obj.get("id"), str)
        and isinstance(obj.get("method"), str)
        and isinstance(obj.get("args"), list)
    ):
        return RpcRequest(obj["id"], obj["method"], obj["args"])
    return PlainMessage(data, obj)


def identity(name: str, agent: str, *, state_follows: bool) -> dict[str, Any]:
    msg: dict[str, Any] = {"type": "cf_agent_identity", "name": name, "agent": agent}
    if state_follows:
        msg["stateFollows"] = True
    return msg


def state(value: Any) -> dict[str, Any]:
    return {"type": "cf_agent_state", "state": value}


def state_error(error: str) -> dict[str, Any]:
    return {"type": "cf_agent_state_error", "error": error}


def mcp_servers(mcp: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": "cf_agent_mcp_servers", "mcp": mcp if mcp is not None else MCP_EMPTY}


def rpc_result(id: str, result: Any, *, done: bool = True) -> dict[str, Any]:
    return {"type": "rpc", "id": id, "success": True, "result": result, "done": done}


def rpc_error(id: str, error: str) -> dict[str, Any]:
    return {"type": "rpc", "id": id, "success": False, "error": error}


def protocol_error(code: str, message: str) -> dict[str, Any]:
    """callroom's own error frame (ignored by the npm client, readable by humans and tests)."""
    return {"type": "cf_agent_error", "code": code, "error": message}
