"""Anthropic Messages API, streamed over httpx (no SDK).

History stays in OpenAI chat form everywhere else in callroom; this module converts at the
edge. The Messages API is stricter than chat completions — one `system` string, strictly
alternating user/assistant turns, tool results inside a *user* turn right after the
`tool_use`, no empty text blocks — so the conversion also repairs shapes that OpenAI accepts.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from typing import Any

import httpx

from callroom.errors import ProviderError
from callroom.providers.base import LLMEvent, Message, ToolCall, ToolSpec
from callroom.providers.llm.openai_compat import (
    PooledHTTP,
    Sleep,
    map_finish_reason,
    open_sse,
    pair_tool_results,
)
from callroom.tools import redact_text

__all__ = ["DEFAULT_MODEL", "AnthropicLLM", "to_anthropic"]

log = logging.getLogger("callroom.llm")

DEFAULT_MODEL = "claude-haiku-4-5"
API_VERSION = "2023-06-01"
OPENING_TURN = "(The call has started.)"
"""Placed before a history that opens with the assistant (a spoken greeting): the Messages
API wants the first turn to be the user's."""


def _text_of(content: Any) -> str:
    """Text of an OpenAI `content` (a string, or a list of parts of which text is kept)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [
            p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
        ]
        return "".join(parts)
    return str(content)


def _tool_input(arguments: Any) -> dict[str, Any]:
    """`tool_use.input` must be an object; arguments the model got wrong become `{}` (the
    matching tool_result already tells the model what was wrong)."""
    if isinstance(arguments, dict):
        return arguments
    try:
        value = json.loads(arguments) if arguments else {}
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _is_error_result(content: str) -> bool:
    try:
        value = json.loads(content)
    except ValueError:
        return False
    return isinstance(value, dict) and set(value) <= {"error", "message"} and "error" in value


def to_anthropic(messages: Sequence[Message]) -> tuple[str | None, list[dict[str, Any]]]:
    """OpenAI-form history → (`system`, Messages API `messages`)."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})

    for m in pair_tool_results(messages):
        role = m.get("role")
        if role in ("system", "developer"):
            text = _text_of(m.get("content"))
            if text.strip():
                system.append(text)
        elif role == "user":
            text = _text_of(m.get("content"))
            add("user", [{"type": "text", "text": text}] if text.strip() else [])
        elif role == "assistant":
            blocks: list[dict[str, Any]] = []
            text = _text_of(m.get("content"))
            if text.strip():
                blocks.append({"type": "text", "text": text})
            for call in m.get("tool_calls") or ():
                fn = call.get("function") or {}
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": call.get("id", ""),
                        "name": fn.get("name", ""),
                        "input": _tool_input(fn.get("arguments")),
                    }
                )
            add("assistant", blocks)
        elif role == "tool":
            content = _text_of(m.get("content"))
            block: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": m.get("tool_call_id", ""),
                "content": content,
            }
            if _is_error_result(content):
                block["is_error"] = True
            add("user", [block])
    for turn in turns:
        if turn["role"] == "user":
            # tool_result blocks must come first in their user turn
            turn["content"].sort(key=lambda b: b["type"] != "tool_result")
    if turns and turns[0]["role"] != "user":
        turns.insert(0, {"role": "user", "content": [{"type": "text", "text": OPENING_TURN}]})
    return ("\n\n".join(system) or None), turns


class AnthropicLLM(PooledHTTP):
    """Streams a reply from Anthropic's Messages API."""

    name = "anthropic"

    def __init__(
        self,
        *,
        api_key: str,
        model: str = DEFAULT_MODEL,
        base_url: str = "https://api.anthropic.com",
        max_tokens: int = 1024,
        temperature: float | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        retry_delay: float = 0.25,
        sleep: Sleep = asyncio.sleep,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        """`max_tokens` is required by the API; a voice reply rarely needs more than a few
        hundred."""
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/v1/messages"
        self.model = model
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.retry_delay = retry_delay
        self._sleep = sleep
        self.__api_key = api_key
        self._headers = {
            "x-api-key": api_key,
            "anthropic-version": API_VERSION,
            "accept": "text/event-stream",
        }
        self._client = client
        self._owns_client = client is None

    def __repr__(self) -> str:
        return f"AnthropicLLM(base_url={self.base_url!r}, model={self.model!r})"

    def request_body(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec]
    ) -> dict[str, Any]:
        system, turns = to_anthropic(messages)
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "messages": turns,
            "stream": True,
        }
        if system:
            body["system"] = system
        if tools:
            body["tools"] = [
                {"name": t.name, "description": t.description, "input_schema": t.parameters}
                for t in tools
            ]
        if self.temperature is not None:
            body["temperature"] = self.temperature
        return body

    async def _attempt(self, body: dict[str, Any]) -> AsyncGenerator[LLMEvent, None]:
        blocks: dict[int, dict[str, Any]] = {}
        calls: list[ToolCall] = []
        stop_reason: str | None = None
        stopped = False
        usage: dict[str, Any] = {}
        sse = open_sse(
            self._http(),
            self.url,
            body=body,
            headers=self._headers,
            provider="anthropic",
            secrets=[self.__api_key],
        )
        async with aclosing(sse) as events:
            async for ev in events:
                try:
                    data = json.loads(ev.data)
                except ValueError:
                    continue
                if not isinstance(data, dict):
                    continue
                kind = data.get("type", ev.event)
                if kind == "message_start":
                    usage.update((data.get("message") or {}).get("usage") or {})
                elif kind == "content_block_start":
                    block = dict(data.get("content_block") or {})
                    block["partial_json"] = ""
                    blocks[int(data.get("index", len(blocks)))] = block
                    if block.get("type") == "text" and block.get("text"):
                        yield LLMEvent(kind="text", text=block["text"])
                elif kind == "content_block_delta":
                    delta = data.get("delta") or {}
                    block = blocks.setdefault(int(data.get("index", 0)), {"partial_json": ""})
                    if delta.get("type") == "text_delta" and delta.get("text"):
                        yield LLMEvent(kind="text", text=delta["text"])
                    elif delta.get("type") == "input_json_delta":
                        block["partial_json"] += delta.get("partial_json", "")
                elif kind == "content_block_stop":
                    block = blocks.get(int(data.get("index", -1))) or {}
                    if block.get("type") == "tool_use":
                        args = block["partial_json"] or json.dumps(block.get("input") or {})
                        calls.append(
                            ToolCall(
                                id=block.get("id", ""), name=block.get("name", ""), arguments=args
                            )
                        )
                elif kind == "message_delta":
                    stop_reason = (data.get("delta") or {}).get("stop_reason") or stop_reason
                    usage.update(data.get("usage") or {})
                elif kind == "message_stop":
                    stopped = True
                    break
                elif kind == "error":
                    err = data.get("error") or {}
                    msg = redact_text(str(err.get("message", "")), [self.__api_key])[:200]
                    raise ProviderError(f"anthropic: {err.get('type', 'error')}: {msg}")
                elif kind == "message" and data.get("content") is not None:
                    # A non-streamed answer (a proxy that ignored `stream`): one whole message.
                    for b in data["content"]:
                        if b.get("type") == "text" and b.get("text"):
                            yield LLMEvent(kind="text", text=b["text"])
                        elif b.get("type") == "tool_use":
                            calls.append(
                                ToolCall(
                                    id=b.get("id", ""),
                                    name=b.get("name", ""),
                                    arguments=json.dumps(b.get("input") or {}),
                                )
                            )
                    stop_reason = data.get("stop_reason")
                    usage.update(data.get("usage") or {})
                    stopped = True
        if not stopped:
            # Tool input cut short would run a tool with half its arguments: refuse.
            raise ProviderError("anthropic: stream ended before message_stop")
        for call in calls:
            yield LLMEvent(kind="tool_call", tool_call=call)
        reason = map_finish_reason(stop_reason, has_tool_calls=bool(calls))
        yield LLMEvent(kind="done", finish_reason=reason, usage=usage)
