"""OpenAI-compatible chat completions, streamed over httpx (OpenAI, vLLM, Ollama, llama.cpp).

No SDK: one POST with `stream: true`, server-sent events parsed here. That keeps the
dependency set small and lets one parser absorb the dialects of the servers people run:
tool-call fragments without an `index`, arguments sent as an object instead of a string,
names repeated in every fragment, a JSON body instead of a stream, no `[DONE]` at the end.

Also home of what the other HTTP providers share: the SSE parser, the error mapping
(`ProviderHTTPError` with a short, redacted body excerpt) and the retry-once policy.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from callroom.errors import ProviderError
from callroom.providers.base import LLMEvent, Message, ToolCall, ToolSpec
from callroom.tools import redact_text

__all__ = [
    "FINISH_REASONS",
    "MISSING_RESULT",
    "ChatChunkParser",
    "OpenAICompatLLM",
    "ProviderHTTPError",
    "SSEEvent",
    "ToolCallAssembler",
    "clean_messages",
    "iter_sse",
    "map_finish_reason",
    "open_sse",
    "openai_tools",
    "pair_tool_results",
    "stream_with_retry",
]

log = logging.getLogger("callroom.llm")

Sleep = Callable[[float], Awaitable[None]]

FINISH_REASONS: dict[str, str] = {
    "stop": "stop",
    "eos": "stop",
    "end_turn": "stop",
    "stop_sequence": "stop",
    "length": "length",
    "max_tokens": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "tool_use": "tool_calls",
    "content_filter": "content_filter",
    "refusal": "content_filter",
}
"""Provider finish reasons → ours: stop, length, tool_calls, content_filter (others pass)."""

# Errors that mean "the connection failed", as opposed to "the server answered badly" or
# "the model is slow". A stale keep-alive connection shows up as a read/write error or a
# remote protocol error on the first bytes, so those count too — before the first token only.
_CONNECTION_ERRORS: tuple[type[Exception], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.RemoteProtocolError,
    httpx.ReadError,
    httpx.WriteError,
)

_EXCERPT_BYTES = 4096
_EXCERPT_CHARS = 200


class ProviderHTTPError(ProviderError):
    """The provider answered with an HTTP error status (401 bad key, 429, 5xx, ...)."""

    def __init__(self, provider: str, status: int, excerpt: str) -> None:
        super().__init__(
            f"{provider} returned HTTP {status}: {excerpt}"
            if excerpt
            else f"{provider} returned HTTP {status}"
        )
        self.status = status


def map_finish_reason(reason: str | None, *, has_tool_calls: bool) -> str:
    """Normalise; some servers say `stop` even when the turn ended in tool calls."""
    mapped = FINISH_REASONS.get(reason, reason) if reason else None
    if has_tool_calls and mapped in (None, "stop"):
        return "tool_calls"
    return mapped or "stop"


# -- server-sent events -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SSEEvent:
    event: str
    data: str


async def iter_sse(lines: AsyncIterator[str]) -> AsyncGenerator[SSEEvent, None]:
    """Parse SSE lines into events (multi-line `data`, `event:` names, comments ignored).

    A last event without its terminating blank line is still delivered: several servers end
    the stream right after `data: [DONE]`.
    """
    event = "message"
    data: list[str] = []
    async for line in lines:
        if not line:
            if data:
                yield SSEEvent(event, "\n".join(data))
            event, data = "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
    if data:
        yield SSEEvent(event, "\n".join(data))


def _error_excerpt(body: bytes, secrets: Iterable[str]) -> str:
    """The provider's own error sentence if the body is a known JSON error shape, else the
    start of the body; whitespace folded, secrets masked, cut short."""
    text = body.decode("utf-8", "replace")
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    message: Any = None
    if isinstance(doc, dict):
        err = doc.get("error")
        if isinstance(err, dict):
            message = err.get("message")
        elif isinstance(err, str):
            message = err
        errors = doc.get("errors")  # Cloudflare: {"errors": [{"code": .., "message": ..}]}
        if message is None and isinstance(errors, list) and errors:
            first = errors[0]
            message = first.get("message") if isinstance(first, dict) else first
        if message is None:
            message = doc.get("message") or doc.get("detail")
    excerpt = " ".join(str(message if message else text).split())
    excerpt = redact_text(excerpt, secrets)
    return excerpt[:_EXCERPT_CHARS] + ("…" if len(excerpt) > _EXCERPT_CHARS else "")


async def open_sse(
    client: httpx.AsyncClient,
    url: str,
    *,
    body: dict[str, Any],
    headers: dict[str, str],
    provider: str,
    secrets: Iterable[str] = (),
) -> AsyncGenerator[SSEEvent, None]:
    """POST `body` and yield its events; an HTTP error status raises `ProviderHTTPError`.

    A JSON answer (a server that ignored `stream: true`) comes out as one event holding the
    whole body, so callers parse a complete response like a single chunk.
    """
    async with client.stream("POST", url, json=body, headers=headers) as resp:
        if resp.status_code >= 400:
            raw = b""
            async for chunk in resp.aiter_bytes():
                raw += chunk
                if len(raw) >= _EXCERPT_BYTES:
                    break
            raise ProviderHTTPError(provider, resp.status_code, _error_excerpt(raw, secrets))
        ctype = resp.headers.get("content-type", "")
        if "json" in ctype and "event-stream" not in ctype:
            yield SSEEvent("message", (await resp.aread()).decode("utf-8", "replace"))
            return
        async for ev in iter_sse(resp.aiter_lines()):
            yield ev


async def stream_with_retry(
    attempt: Callable[[], AsyncGenerator[LLMEvent, None]],
    *,
    provider: str,
    url: str,
    read_timeout: float | None,
    retry_delay: float = 0.25,
    sleep: Sleep = asyncio.sleep,
) -> AsyncGenerator[LLMEvent, None]:
    """Run `attempt()`; retry exactly once on a connection error before the first event.

    After an event has been handed out a retry would repeat text the caller may already have
    spoken, so a later failure is an error. httpx errors become `ProviderError`s naming the
    host, never the request headers (where the key lives).
    """
    host = urlsplit(url).netloc or url
    tries = 0
    while True:
        tries += 1
        yielded = False
        try:
            async with aclosing(attempt()) as events:
                async for ev in events:
                    yielded = True
                    yield ev
            return
        except _CONNECTION_ERRORS as exc:
            if yielded:
                raise ProviderError(
                    f"{provider}: connection to {host} broke mid-stream ({type(exc).__name__})"
                ) from exc
            if tries > 1:
                raise ProviderError(
                    f"{provider}: cannot connect to {host} ({type(exc).__name__}, tried twice)"
                ) from exc
            log.info("%s: %s to %s, retrying once", provider, type(exc).__name__, host)
            await sleep(retry_delay)
        except httpx.TimeoutException as exc:
            what = "no response" if not yielded else "stream stalled"
            limit = f" within {read_timeout:g} s" if read_timeout else ""
            raise ProviderError(
                f"{provider}: {what}{limit} from {host} ({type(exc).__name__})"
            ) from exc
        except httpx.HTTPError as exc:
            raise ProviderError(
                f"{provider}: request to {host} failed ({type(exc).__name__})"
            ) from exc


# -- tool-call assembly -------------------------------------------------------------------------
class ToolCallAssembler:
    """Joins streamed tool-call fragments into complete calls.

    Fragments are keyed by `index`. Servers that omit it are handled by id: a new id (or a
    name when the last call already has one) starts a new call, anything else continues the
    last one. Null "finalisation"
    fragments (Workers AI) are skipped.
    """

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, str]] = {}
        self._by_id: dict[str, int] = {}

    def __bool__(self) -> bool:
        return bool(self._calls)

    def add(self, fragments: Sequence[Any]) -> None:
        for frag in fragments:
            if not isinstance(frag, dict):
                continue
            fn = frag.get("function")
            fn = fn if isinstance(fn, dict) else {}
            name = fn.get("name") or frag.get("name")
            args = fn.get("arguments", frag.get("arguments"))
            call_id = frag.get("id")
            if not call_id and not name and (args is None or args == ""):
                continue
            index = frag.get("index")
            if not isinstance(index, int):
                if call_id and call_id in self._by_id:
                    index = self._by_id[call_id]
                elif call_id or not self._calls or (name and self._calls[max(self._calls)]["name"]):
                    # a new id, or a name after a named call (flat, complete calls): new call
                    index = max(self._calls, default=-1) + 1
                else:
                    index = max(self._calls)
            slot = self._calls.setdefault(index, {"id": "", "name": "", "arguments": ""})
            if call_id and not slot["id"]:
                slot["id"] = str(call_id)
                self._by_id[str(call_id)] = index
            if name and name != slot["name"]:
                # Full names are sent once (OpenAI) or repeated (some servers): set, don't
                # append; a different non-empty name continues a name split across fragments.
                slot["name"] = name if not slot["name"] else slot["name"] + name
            if args is not None and args != "":
                slot["arguments"] += args if isinstance(args, str) else json.dumps(args)

    def finish(self) -> list[ToolCall]:
        out = []
        for index in sorted(self._calls):
            slot = self._calls[index]
            call_id = slot["id"] or f"call_{uuid.uuid4().hex[:24]}"
            out.append(ToolCall(id=call_id, name=slot["name"], arguments=slot["arguments"] or "{}"))
        return out


class ChatChunkParser:
    """State of one OpenAI-format stream: tool fragments, finish reason, usage."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.tools = ToolCallAssembler()
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] = {}

    def feed(self, chunk: dict[str, Any]) -> list[str]:
        """Text pieces in this chunk (tool fragments and metadata are kept)."""
        error = chunk.get("error")
        if error:
            msg = error.get("message") if isinstance(error, dict) else str(error)
            raise ProviderError(f"{self.provider}: error in stream: {redact_text(str(msg))[:200]}")
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
        texts: list[str] = []
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or choice.get("message") or {}
            content = delta.get("content")
            if isinstance(content, str) and content:
                texts.append(content)
            tool_calls = delta.get("tool_calls")
            if isinstance(tool_calls, list):
                self.tools.add(tool_calls)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return texts

    def finish(self) -> list[LLMEvent]:
        calls = self.tools.finish()
        events = [LLMEvent(kind="tool_call", tool_call=c) for c in calls]
        reason = map_finish_reason(self.finish_reason, has_tool_calls=bool(calls))
        events.append(LLMEvent(kind="done", finish_reason=reason, usage=self.usage))
        return events


_MESSAGE_KEYS = frozenset({"role", "content", "name", "tool_calls", "tool_call_id"})


MISSING_RESULT = '{"error":"no_result"}'


def pair_tool_results(messages: Sequence[Message]) -> list[Message]:
    """Put each tool result right after the assistant message that made the call.

    Every provider rejects a history where something else comes between an assistant's
    `tool_calls` and their results, or where a call has no result. A stored history can hold
    exactly that: a barge-in records the words the caller heard while the cancelled tools are
    still being recorded, and trimming can cut a pair. So at the edge: results move up to their
    call, a call without one gets `{"error":"no_result"}`, a result without a call (or a
    second result for one call) is dropped.
    """
    results: dict[str, Message] = {}
    for m in messages:
        if m.get("role") == "tool":
            results.setdefault(str(m.get("tool_call_id", "")), m)
    out: list[Message] = []
    for m in messages:
        role = m.get("role")
        if role == "tool":
            continue
        out.append(m)
        if role == "assistant" and m.get("tool_calls"):
            for call in m["tool_calls"]:
                call_id = str(call.get("id", ""))
                result = results.pop(call_id, None)
                if result is None:
                    result = {"role": "tool", "tool_call_id": call_id, "content": MISSING_RESULT}
                out.append(result)
    return out


def clean_messages(messages: Sequence[Message]) -> list[Message]:
    """History as every chat API accepts it: tool results paired with their calls
    (`pair_tool_results`), and only the keys the chat API defines — history rows carry
    extras (`interrupted`, ...) that strict servers reject."""
    return [{k: v for k, v in m.items() if k in _MESSAGE_KEYS} for m in pair_tool_results(messages)]


def openai_tools(tools: Sequence[ToolSpec]) -> list[dict[str, Any]]:
    return [
        {
            "type": "function",
            "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
        }
        for t in tools
    ]


class PooledHTTP:
    """One pooled httpx client per provider: a kept-alive connection saves a TCP+TLS
    handshake (tens of ms) on every turn. Subclasses set the timeouts and `_client`."""

    connect_timeout: float
    read_timeout: float
    _client: httpx.AsyncClient | None
    _owns_client: bool

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(
                    connect=self.connect_timeout,
                    read=self.read_timeout,
                    write=self.connect_timeout,
                    pool=self.connect_timeout,
                )
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None and self._owns_client:
            await self._client.aclose()
            self._client = None

    # -- the one streaming entry point of every HTTP provider ------------------------------
    name: str
    url: str
    retry_delay: float
    _sleep: Sleep

    def request_body(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec]
    ) -> dict[str, Any]:
        raise NotImplementedError

    def _attempt(self, body: dict[str, Any]) -> AsyncIterator[LLMEvent]:
        raise NotImplementedError

    def stream(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[LLMEvent]:
        """One completion, retried once on a connection error before the first event."""
        body = self.request_body(messages, tools)
        return stream_with_retry(
            lambda: self._attempt(body),
            provider=self.name,
            url=self.url,
            read_timeout=self.read_timeout,
            retry_delay=self.retry_delay,
            sleep=self._sleep,
        )


class OpenAICompatLLM(PooledHTTP):
    """Streams chat completions from any server speaking OpenAI's `/chat/completions`."""

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str | None = None,
        name: str = "openai",
        temperature: float | None = None,
        max_tokens: int | None = None,
        stream_usage: bool = False,
        extra_body: dict[str, Any] | None = None,
        extra_headers: dict[str, str] | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        retry_delay: float = 0.25,
        sleep: Sleep = asyncio.sleep,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        """`stream_usage` asks for token usage in the last chunk (`stream_options`), which
        OpenAI and vLLM support and some older servers reject; `read_timeout` bounds the wait
        for the first token and every gap between tokens."""
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.model = model
        self.name = name
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.stream_usage = stream_usage
        self.extra_body = dict(extra_body or {})
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.retry_delay = retry_delay
        self._sleep = sleep
        self.__api_key = api_key
        self._headers = {"Accept": "text/event-stream", **(extra_headers or {})}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._client = client
        self._owns_client = client is None

    def __repr__(self) -> str:
        return (
            f"OpenAICompatLLM(name={self.name!r}, base_url={self.base_url!r}, model={self.model!r})"
        )

    def request_body(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec]
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": clean_messages(messages),
            "stream": True,
        }
        if tools:
            body["tools"] = openai_tools(tools)
        if self.stream_usage:
            body["stream_options"] = {"include_usage": True}
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        body.update(self.extra_body)
        return body

    async def _attempt(self, body: dict[str, Any]) -> AsyncGenerator[LLMEvent, None]:
        parser = ChatChunkParser(self.name)
        secrets = [self.__api_key] if self.__api_key else []
        sse = open_sse(
            self._http(),
            self.url,
            body=body,
            headers=self._headers,
            provider=self.name,
            secrets=secrets,
        )
        async with aclosing(sse) as events:
            async for ev in events:
                data = ev.data.strip()
                if data == "[DONE]":
                    break
                try:
                    chunk = json.loads(data)
                except ValueError:
                    log.debug("%s: skipping non-JSON event %r", self.name, data[:80])
                    continue
                if isinstance(chunk, dict):
                    for text in parser.feed(chunk):
                        yield LLMEvent(kind="text", text=text)
        for event in parser.finish():
            yield event
