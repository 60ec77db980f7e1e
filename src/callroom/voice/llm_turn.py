"""The default turn loop: LLM → tool calls → LLM …, streaming text, independent of audio.

The hard part is not calling tools but staying correct when the caller barges in: the
pipeline cancels the iteration at any point, and the conversation history must still be one
every provider accepts — each assistant `tool_calls` entry answered by exactly one `tool`
message. So, for every round that started tools:

- the assistant message and then one tool message per call are passed to `record` in order;
- on cancellation, calls still running are cancelled (and given a short grace to finish),
  then each call is recorded once: its real result if it completed, else
  `{"error":"cancelled"}`;
- calls of a round whose tools never started (the stream was cut, or the round limit was
  reached) are never recorded, so no unanswered `tool_calls` can exist.

Text belongs to the caller: everything this loop yields — including text spoken before a tool
call in the same round — is the caller's to record as the assistant's reply, because only the
caller knows how much of it was actually heard. The recorded assistant `tool_calls` message
therefore has empty content (the model still sees that text within the turn).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from callroom.errors import ProviderError
from callroom.providers.base import LLM, LLMEvent, Message, ToolCall, ToolSpec
from callroom.tools import ToolResult, cancelled_result

__all__ = ["Filler", "Recorder", "ToolRunner", "run_llm_turn"]

log = logging.getLogger("callroom.voice")

ToolRunner = Callable[[ToolCall, float], Awaitable[ToolResult]]
"""Runs one call with a timeout; `functools.partial(callroom.tools.call_tool, agent)` fits."""
Recorder = Callable[[Message], Any]
"""Persists one message; sync or async, its return value is ignored (`History.append` fits)."""
Filler = Callable[[str], Any]
"""Says a phrase now; sync or async."""
Sleep = Callable[[float], Awaitable[None]]

MAX_ROUNDS_TEXT = "Sorry, I couldn't finish that just now. Could you ask me again?"


async def _finish(value: object) -> None:
    """Await a callback's result to completion even if we are cancelled meanwhile.

    A history write that is half done when a barge-in lands would leave us not knowing
    whether it happened; finishing it first, then letting the cancellation through, keeps
    "recorded exactly once" true.
    """
    if not inspect.isawaitable(value):
        return
    fut = asyncio.ensure_future(value)
    cancelled = False
    while not fut.done():
        try:
            await asyncio.shield(fut)
        except asyncio.CancelledError:
            cancelled = True
    fut.result()
    if cancelled:
        raise asyncio.CancelledError


@asynccontextmanager
async def _closing(stream: AsyncIterator[LLMEvent]) -> AsyncIterator[AsyncIterator[LLMEvent]]:
    """Close the provider stream (and its HTTP response) however the round ends: the LLM
    protocol only promises an iterator, so `aclose` is used when there is one."""
    try:
        yield stream
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()


@dataclass
class _TurnState:
    filler_said: bool = False


def _unique_ids(calls: list[ToolCall]) -> list[ToolCall]:
    """Every call needs its own id: results are matched to calls by id alone."""
    seen: set[str] = set()
    out = []
    for call in calls:
        if not call.id or call.id in seen:
            call = ToolCall(
                id=f"call_{uuid.uuid4().hex[:24]}", name=call.name, arguments=call.arguments
            )
        seen.add(call.id)
        out.append(call)
    return out


def _assistant_message(calls: Sequence[ToolCall], text: str) -> Message:
    return {
        "role": "assistant",
        "content": text,
        "tool_calls": [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in calls
        ],
    }


async def _safe_call(run: ToolRunner, call: ToolCall, limit: float) -> ToolResult:
    """`call_tool` never raises for tool failures, but a custom runner might: a failure must
    still produce a result, or the call would go unanswered."""
    try:
        return await run(call, limit)
    except Exception as exc:
        log.exception("tool runner failed for %s", call.name)
        body = json.dumps({"error": "tool_error", "message": type(exc).__name__})
        return ToolResult(call.id, call.name, body, error="tool_error")


async def _tool_round(
    calls: list[ToolCall],
    *,
    run: ToolRunner,
    record: Recorder | None,
    limit: float,
    filler: Filler | None,
    filler_after_s: float,
    filler_text: str,
    state: _TurnState,
    sleep: Sleep,
    cancel_grace_s: float,
) -> list[Message]:
    """Record the assistant's calls, run them in parallel, record one result per call."""
    assistant = _assistant_message(calls, "")
    tasks: dict[str, asyncio.Task[ToolResult]] = {}
    recorded: set[str] = set()
    filler_task: asyncio.Task[None] | None = None
    completed = False

    async def say_filler() -> None:
        await sleep(filler_after_s)
        state.filler_said = True
        assert filler is not None
        await _finish(filler(filler_text))

    try:
        await _finish(record(assistant) if record else None)
    except asyncio.CancelledError:
        # `_finish` completed the write before letting the cancellation through: the calls
        # are in the history now and must be answered.
        await _settle(calls, tasks, recorded, record, cancel_grace_s)
        raise
    # From here on the calls are recorded and must be answered, whatever happens.
    try:
        for call in calls:
            tasks[call.id] = asyncio.create_task(
                _safe_call(run, call, limit), name=f"tool:{call.name}:{call.id}"
            )
        if filler is not None and not state.filler_said:
            filler_task = asyncio.create_task(say_filler(), name="tool-filler")
        await asyncio.wait(tasks.values())
        messages = []
        for call in calls:
            task = tasks[call.id]
            # a task cancelled from outside (not by us) still gets its answer
            msg = (cancelled_result(call) if task.cancelled() else task.result()).message()
            await _finish(record(msg) if record else None)
            recorded.add(call.id)
            messages.append(msg)
        completed = True
        return messages
    finally:
        if filler_task is not None and not filler_task.done():
            if not (completed and state.filler_said):
                # cancelled first, so it cannot speak up during the settling grace period
                filler_task.cancel()
        try:
            if not completed:
                await _settle(calls, tasks, recorded, record, cancel_grace_s)
        finally:
            if filler_task is not None:
                await _reap(filler_task)


async def _reap(task: asyncio.Task[None]) -> None:
    """Wait for the filler task's end (a phrase already being said goes out whole)."""
    await asyncio.wait([task])
    if not task.cancelled() and task.exception() is not None:
        log.warning("filler failed: %r", task.exception())


async def _settle(
    calls: list[ToolCall],
    tasks: dict[str, asyncio.Task[ToolResult]],
    recorded: set[str],
    record: Recorder | None,
    grace: float,
) -> None:
    """After a cancellation or failure: stop what still runs and answer every call once."""
    for task in tasks.values():
        if not task.done():
            task.cancel()
    pending = [t for t in tasks.values() if not t.done()]
    again = False
    if pending:
        try:
            await asyncio.wait(pending, timeout=grace)
        except asyncio.CancelledError:
            again = True  # cancelled a second time: record with what we know, then go
    for call in calls:
        if call.id in recorded:
            continue
        job = tasks.get(call.id)
        if job is not None and job.done() and not job.cancelled() and job.exception() is None:
            result = job.result()  # finished before (or despite) the cancellation
        else:
            if job is not None and not job.done():
                log.warning("tool %s ignored cancellation; recorded as cancelled", call.name)
            result = cancelled_result(call)
        try:
            await _finish(record(result.message()) if record else None)
        except asyncio.CancelledError:
            again = True
        except Exception:
            log.exception("recording the result of %s failed", call.name)
        recorded.add(call.id)
    if again:
        raise asyncio.CancelledError


async def run_llm_turn(
    llm: LLM,
    messages: Sequence[Message],
    tools: Sequence[ToolSpec],
    call_tool: ToolRunner,
    *,
    max_rounds: int = 4,
    tool_timeout: float = 10.0,
    filler: Filler | None = None,
    filler_after_s: float = 1.0,
    filler_text: str = "One moment…",
    record: Recorder | None = None,
    max_rounds_text: str | None = MAX_ROUNDS_TEXT,
    cancel_grace_s: float = 1.0,
    sleep: Sleep = asyncio.sleep,
) -> AsyncGenerator[str, None]:
    """Stream the assistant's text for one turn, running tool rounds in between.

    `messages` is the history up to and including the user's message (not modified).
    `max_rounds` bounds the LLM calls of the turn; if the last one still asks for tools they
    are not run and `max_rounds_text` is said instead (None: say nothing). `filler` is called
    with `filler_text` at most once per turn, when a tool round is still running after
    `filler_after_s` (timed with `sleep`, so tests can drive it). `record` receives each
    message the turn adds to the history (see the module docstring); it may be sync or async
    and should be quick: an async write is finished even if a barge-in lands during it.
    `cancel_grace_s` is how long cancelled tools get to stop before being recorded as
    cancelled. Provider failures raise `ProviderError`.
    """
    if max_rounds < 1:
        raise ValueError("max_rounds must be at least 1")
    history = list(messages)
    state = _TurnState()
    for round_no in range(max_rounds):
        texts: list[str] = []
        calls: list[ToolCall] = []
        try:
            async with _closing(llm.stream(history, tools)) as events:
                async for event in events:
                    if event.kind == "text" and event.text:
                        texts.append(event.text)
                        yield event.text
                    elif event.kind == "tool_call" and event.tool_call is not None:
                        calls.append(event.tool_call)
        except ProviderError:
            raise
        except Exception as exc:
            raise ProviderError(f"LLM failed: {type(exc).__name__}: {exc}") from exc
        if not calls:
            return
        if round_no == max_rounds - 1:
            log.warning(
                "turn reached %d LLM rounds; dropping %d tool call(s)", max_rounds, len(calls)
            )
            if max_rounds_text:
                yield max_rounds_text
            return
        calls = _unique_ids(calls)
        results = await _tool_round(
            calls,
            run=call_tool,
            record=record,
            limit=tool_timeout,
            filler=filler,
            filler_after_s=filler_after_s,
            filler_text=filler_text,
            state=state,
            sleep=sleep,
            cancel_grace_s=cancel_grace_s,
        )
        history.append(_assistant_message(calls, "".join(texts)))
        history.extend(results)
