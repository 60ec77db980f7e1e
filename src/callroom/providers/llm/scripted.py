"""`ScriptedLLM`: an in-process LLM that plays back a script, for tests and the `fake` provider.

Time goes through an injectable `sleep`, so a test can hold the stream at a precise point
(before the first token, between two tokens) and cancel there, without real waiting and
without timing assertions.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from callroom.errors import ProviderError
from callroom.providers.base import LLMEvent, Message, ToolCall, ToolSpec

__all__ = ["Reply", "ScriptedLLM", "ScriptedReply", "split_tokens", "tool_call"]

Sleep = Callable[[float], Awaitable[None]]

_ids = itertools.count(1)
_TOKEN = re.compile(r"\s*\S+|\s+")


def split_tokens(text: str) -> list[str]:
    """Word-sized pieces that join back to `text` (leading spaces kept, like real tokens)."""
    return _TOKEN.findall(text)


def tool_call(
    name: str, arguments: dict[str, Any] | str | None = None, id: str | None = None
) -> ToolCall:
    """A `ToolCall` for scripts; dict arguments are JSON-encoded, the id is made unique."""
    args = arguments if isinstance(arguments, str) else json.dumps(arguments or {})
    return ToolCall(id=id or f"call_{next(_ids)}", name=name, arguments=args)


@dataclass(frozen=True)
class ScriptedReply:
    """One completion: text (a string, or explicit pieces), tool calls, or a failure.

    `error` is raised after the text was streamed, to script a mid-stream provider failure.
    """

    text: str | Sequence[str] = ""
    tool_calls: Sequence[ToolCall] = ()
    finish_reason: str | None = None
    error: BaseException | None = None
    usage: dict[str, Any] = field(default_factory=dict)


Reply = str | ScriptedReply | ToolCall | Sequence[ToolCall] | BaseException
"""A script item: text, a reply, one tool call, several (parallel) tool calls, or an error
raised before anything is streamed."""


def _normalise(item: Reply) -> ScriptedReply:
    if isinstance(item, ScriptedReply):
        return item
    if isinstance(item, str):
        return ScriptedReply(text=item)
    if isinstance(item, ToolCall):
        return ScriptedReply(tool_calls=(item,))
    if isinstance(item, BaseException):
        return ScriptedReply(error=item)
    calls = tuple(item)
    if not all(isinstance(c, ToolCall) for c in calls):
        raise TypeError(f"not a script item: {item!r}")
    return ScriptedReply(tool_calls=calls)


class ScriptedLLM:
    """Plays `replies` in order, one per `stream()` call; then `default` forever, or fails.

    Every call's messages (deep copies) and tools are kept in `received` / `received_tools`
    so a test can assert exactly what the model was shown.
    """

    def __init__(
        self,
        replies: Iterable[Reply] = (),
        *,
        default: Reply | None = None,
        ttft: float = 0.0,
        token_delay: float = 0.0,
        sleep: Sleep = asyncio.sleep,
        keep_history: bool = True,
    ) -> None:
        """`keep_history=False` stops recording what was received: a long-running process
        (the `fake` provider in a server or benchmark) must not grow without bound."""
        self.keep_history = keep_history
        self._script = [_normalise(r) for r in replies]
        self._default = _normalise(default) if default is not None else None
        self.ttft = ttft
        self.token_delay = token_delay
        self._sleep = sleep
        self.calls = 0
        """Number of `stream()` calls so far."""
        self.received: list[list[Message]] = []
        self.received_tools: list[list[ToolSpec]] = []

    def __repr__(self) -> str:
        return f"ScriptedLLM(remaining={len(self._script)}, ttft={self.ttft:g})"

    @property
    def remaining(self) -> int:
        """Script items not played yet."""
        return len(self._script)

    def stream(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[LLMEvent]:
        # Recorded at call time (not on first iteration) so a stream that is created and
        # cancelled before it yields still shows up in `received`.
        self.calls += 1
        if self.keep_history:
            self.received.append(copy.deepcopy(list(messages)))
            self.received_tools.append(list(tools))
        if self._script:
            reply = self._script.pop(0)
        elif self._default is not None:
            reply = self._default
        else:
            reply = ScriptedReply(
                error=ProviderError(f"ScriptedLLM: script exhausted after {self.calls - 1} replies")
            )
        return self._play(reply)

    async def _play(self, reply: ScriptedReply) -> AsyncIterator[LLMEvent]:
        pieces = split_tokens(reply.text) if isinstance(reply.text, str) else list(reply.text)
        if reply.error is not None and not pieces:
            raise reply.error
        if self.ttft > 0:
            await self._sleep(self.ttft)
        for i, piece in enumerate(pieces):
            if i and self.token_delay > 0:
                await self._sleep(self.token_delay)
            if piece:
                yield LLMEvent(kind="text", text=piece)
        if reply.error is not None:
            raise reply.error
        for call in reply.tool_calls:
            yield LLMEvent(kind="tool_call", tool_call=call)
        finish = reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")
        yield LLMEvent(kind="done", finish_reason=finish, usage=dict(reply.usage))
