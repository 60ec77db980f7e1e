"""Cloudflare Workers AI over its REST API: `POST /accounts/{id}/ai/run/{model}`, streamed.

Why the native endpoint and not `/ai/v1/chat/completions` through `OpenAICompatLLM`: the
native one is where every text model is served, and it is the one whose streamed tool calls
are used in production by Cloudflare's own `workers-ai-provider`. Its stream mixes two
dialects depending on the model — native chunks `{"response": "...", "tool_calls": [...]}`
and OpenAI chunks `{"choices": [{"delta": ...}]}` — and this module reads both, reusing the
OpenAI fragment assembler. The binding is also stricter than OpenAI about input (no `null`
content; some models only accept 9-character alphanumeric tool-call ids), so history is
normalised on the way out.

Not verified against the live service here (no credentials in CI): the wire shapes follow
Cloudflare's documentation and `workers-ai-provider`; the tests use a fake server.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from typing import Any

import httpx

from callroom.providers.base import LLMEvent, Message, ToolSpec
from callroom.providers.llm.openai_compat import (
    ChatChunkParser,
    PooledHTTP,
    Sleep,
    clean_messages,
    open_sse,
    openai_tools,
)

__all__ = ["API_BASE", "DEFAULT_MODEL", "WorkersAILLM", "to_workers_ai"]

log = logging.getLogger("callroom.llm")

API_BASE = "https://api.cloudflare.com/client/v4"
DEFAULT_MODEL = "@cf/meta/llama-3.3-70b-instruct-fp8-fast"


def _short_id(call_id: str) -> str:
    """A stable 9-character alphanumeric id: the form some Workers AI models validate."""
    if len(call_id) == 9 and call_id.isalnum():
        return call_id
    return hashlib.sha1(call_id.encode()).hexdigest()[:9]


def to_workers_ai(messages: Sequence[Message]) -> list[Message]:
    """History → what `ai/run` accepts: string content, short ids, tool names on results."""
    names: dict[str, str] = {}
    out: list[Message] = []
    for m in clean_messages(messages):
        m = dict(m)
        content = m.get("content")
        if content is None:
            m["content"] = ""
        elif isinstance(content, list):
            m["content"] = "".join(
                p.get("text", "")
                for p in content
                if isinstance(p, dict) and p.get("type") == "text"
            )
        if m.get("tool_calls"):
            calls = []
            for call in m["tool_calls"]:
                call = dict(call)
                short = _short_id(str(call.get("id", "")))
                names[short] = (call.get("function") or {}).get("name", "")
                call["id"] = short
                calls.append(call)
            m["tool_calls"] = calls
        if m.get("role") == "tool":
            short = _short_id(str(m.get("tool_call_id", "")))
            m["tool_call_id"] = short
            if short in names and "name" not in m:
                m["name"] = names[short]
        out.append(m)
    return out


class WorkersAILLM(PooledHTTP):
    """Streams a reply from a Workers AI text-generation model."""

    name = "workers-ai"

    def __init__(
        self,
        *,
        account_id: str,
        api_token: str,
        model: str = DEFAULT_MODEL,
        base_url: str = API_BASE,
        max_tokens: int | None = 512,
        temperature: float | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        retry_delay: float = 0.25,
        sleep: Sleep = asyncio.sleep,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        """`max_tokens` defaults to 512 because the service's own default (256 on many models)
        cuts longer answers mid-sentence."""
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.url = f"{self.base_url}/accounts/{account_id}/ai/run/{model}"
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.retry_delay = retry_delay
        self._sleep = sleep
        self.__api_token = api_token
        self._headers = {"Authorization": f"Bearer {api_token}", "Accept": "text/event-stream"}
        self._client = client
        self._owns_client = client is None

    def __repr__(self) -> str:
        return f"WorkersAILLM(model={self.model!r})"

    def request_body(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec]
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"messages": to_workers_ai(messages), "stream": True}
        if tools:
            body["tools"] = openai_tools(tools)
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        if self.temperature is not None:
            body["temperature"] = self.temperature
        return body

    async def _attempt(self, body: dict[str, Any]) -> AsyncGenerator[LLMEvent, None]:
        parser = ChatChunkParser("workers-ai")
        sse = open_sse(
            self._http(),
            self.url,
            body=body,
            headers=self._headers,
            provider="workers-ai",
            secrets=[self.__api_token],
        )
        async with aclosing(sse) as events:
            async for ev in events:
                data = ev.data.strip()
                if data == "[DONE]":
                    break
                try:
                    chunk = json.loads(data)
                except ValueError:
                    continue
                if not isinstance(chunk, dict):
                    continue
                # A non-streamed answer is wrapped: {"result": {...}, "success": true}
                if isinstance(chunk.get("result"), dict):
                    chunk = chunk["result"]
                for text in parser.feed(chunk):  # OpenAI dialect (choices/usage/error)
                    yield LLMEvent(kind="text", text=text)
                response = chunk.get("response")
                if response is not None and response != "":
                    yield LLMEvent(
                        kind="text",
                        text=response if isinstance(response, str) else json.dumps(response),
                    )
                if isinstance(chunk.get("tool_calls"), list):
                    parser.tools.add(chunk["tool_calls"])
                if chunk.get("finish_reason"):
                    parser.finish_reason = chunk["finish_reason"]
        for event in parser.finish():
            yield event
