"""The turn loop with a scripted LLM: text, tool rounds, errors, filler, and barge-in
cancellation at every point of a tool round. Waiting is done on events, never on time."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from functools import partial
from typing import Any

import pytest

from callroom.errors import ProviderError
from callroom.providers.base import LLMEvent, Message, ToolSpec
from callroom.providers.llm.scripted import ScriptedLLM, ScriptedReply, tool_call
from callroom.tools import call_tool, tool, tools_of
from callroom.voice.llm_turn import MAX_ROUNDS_TEXT, run_llm_turn

HISTORY: list[Message] = [
    {"role": "system", "content": "You are the front desk."},
    {"role": "user", "content": "When is my appointment? I'm patient 42."},
]


class Desk:
    """Tools whose progress a test can observe and control."""

    def __init__(self) -> None:
        self.started: dict[str, asyncio.Event] = {}
        self.release = asyncio.Event()
        self.cancelled: list[str] = []
        self.finished: list[str] = []
        self.both_started = asyncio.Event()
        self.filler_said = asyncio.Event()
        self.lookups = 0

    def _started(self, name: str) -> None:
        self.started.setdefault(name, asyncio.Event()).set()

    async def wait_started(self, name: str) -> None:
        await self.started.setdefault(name, asyncio.Event()).wait()

    @tool
    async def lookup(self, patient_id: str) -> dict[str, Any]:
        """Next appointment of a patient."""
        self.lookups += 1
        self.finished.append(f"lookup:{patient_id}")
        self._started(f"lookup:{patient_id}")
        return {"patient": patient_id, "when": "Monday 9:30"}

    @tool
    async def slow(self, name: str) -> str:
        """Wait until the test releases it."""
        self._started(name)
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.append(name)
            raise
        self.finished.append(name)
        return f"{name} done"

    @tool
    async def stubborn(self, name: str) -> str:
        """Finishes its work even when cancelled."""
        self._started(name)
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.append(name)
        self.finished.append(name)
        return f"{name} finished anyway"

    @tool
    async def pair(self, name: str) -> str:
        """Returns only once two of these run at the same time."""
        self._started(name)
        if len([k for k in self.started if k.startswith("pair")]) >= 2:
            self.both_started.set()
        await self.both_started.wait()
        return name

    @tool
    async def needs_filler(self) -> str:
        """Returns once the filler phrase has been said."""
        self._started("needs_filler")
        await self.filler_said.wait()
        return "ok"


def assert_valid_history(messages: Sequence[Message]) -> None:
    """Every assistant tool call is answered by exactly one tool message, right after it."""
    open_calls: set[str] = set()
    for m in messages:
        if m["role"] == "tool":
            assert m["tool_call_id"] in open_calls, f"unexpected or duplicate result {m}"
            open_calls.discard(m["tool_call_id"])
            continue
        assert not open_calls, f"unanswered calls {open_calls} before {m}"
        if m["role"] == "assistant" and m.get("tool_calls"):
            ids = [c["id"] for c in m["tool_calls"]]
            assert len(set(ids)) == len(ids)
            open_calls = set(ids)
    assert not open_calls, f"unanswered calls {open_calls}"


class Turn:
    """One run of the loop with its recorded messages and said fillers."""

    def __init__(self, llm: Any, desk: Desk | None = None, **kwargs: Any) -> None:
        self.desk = desk or Desk()
        self.llm = llm
        self.recorded: list[Message] = []
        self.fillers: list[str] = []
        self.text: list[str] = []
        kwargs.setdefault("filler", self._filler)
        self.gen = run_llm_turn(
            llm,
            HISTORY,
            tools_of(self.desk),
            partial(call_tool, self.desk),
            record=self.recorded.append,
            **kwargs,
        )

    def _filler(self, text: str) -> None:
        self.fillers.append(text)
        self.desk.filler_said.set()

    async def run(self) -> str:
        async with aclosing(self.gen) as gen:
            async for piece in gen:
                self.text.append(piece)
        return "".join(self.text)

    def start(self) -> asyncio.Task[str]:
        return asyncio.create_task(self.run())


async def cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def tool_results(recorded: Sequence[Message]) -> dict[str, Any]:
    return {m["tool_call_id"]: json.loads(m["content"]) for m in recorded if m["role"] == "tool"}


def assert_no_stray_tasks() -> None:
    current = asyncio.current_task()
    assert [t for t in asyncio.all_tasks() if t is not current] == []


class Gate:
    """An injectable `sleep` that blocks until the test opens it (and says when it is hit)."""

    def __init__(self) -> None:
        self.hit = asyncio.Event()
        self.open = asyncio.Event()

    async def __call__(self, seconds: float) -> None:
        self.hit.set()
        await self.open.wait()


# -- plain turns --------------------------------------------------------------------------------
async def test_text_only() -> None:
    turn = Turn(ScriptedLLM(["Monday at nine thirty."]))
    assert await turn.run() == "Monday at nine thirty."
    assert len(turn.text) == 4  # streamed in pieces
    assert turn.recorded == [] and turn.fillers == []
    assert turn.llm.received == [HISTORY]
    assert {t.name for t in turn.llm.received_tools[0]} >= {"lookup", "slow"}


async def test_one_tool_round() -> None:
    llm = ScriptedLLM([tool_call("lookup", {"patient_id": "42"}, id="c1"), "Monday at 9:30."])
    turn = Turn(llm)
    assert await turn.run() == "Monday at 9:30."
    assistant = {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "c1",
                "type": "function",
                "function": {"name": "lookup", "arguments": '{"patient_id": "42"}'},
            }
        ],
    }
    result = {
        "role": "tool",
        "tool_call_id": "c1",
        "content": '{"patient":"42","when":"Monday 9:30"}',
    }
    assert turn.recorded == [assistant, result]
    assert llm.received[1] == [*HISTORY, assistant, result]


async def test_text_before_a_tool_call_is_yielded_not_recorded() -> None:
    llm = ScriptedLLM(
        [
            ScriptedReply(
                text="Let me check.", tool_calls=[tool_call("lookup", {"patient_id": "42"})]
            ),
            " It is Monday.",
        ]
    )
    turn = Turn(llm)
    assert await turn.run() == "Let me check. It is Monday."
    assert turn.recorded[0]["content"] == ""  # the caller records what was heard
    assert llm.received[1][-2]["content"] == "Let me check."  # the model still sees it


async def test_parallel_tools_in_one_round() -> None:
    calls = [
        tool_call("pair", {"name": "pair-a"}, id="a"),
        tool_call("pair", {"name": "pair-b"}, id="b"),
    ]
    turn = Turn(ScriptedLLM([calls, "Both done."]), tool_timeout=5)
    assert await turn.run() == "Both done."
    assert tool_results(turn.recorded) == {"a": "pair-a", "b": "pair-b"}
    assert [m["role"] for m in turn.recorded] == ["assistant", "tool", "tool"]
    assert [m.get("tool_call_id") for m in turn.recorded[1:]] == ["a", "b"]  # call order
    assert_valid_history(turn.recorded)


async def test_bad_arguments_go_back_as_an_error_and_the_loop_continues() -> None:
    llm = ScriptedLLM(
        [
            tool_call("lookup", "{not json", id="c1"),
            tool_call("lookup", {"id": 42}, id="c2"),
            tool_call("unknown_tool", {}, id="c3"),
            tool_call("lookup", {"patient_id": "42"}, id="c4"),
            "Monday.",
        ]
    )
    turn = Turn(llm, max_rounds=5)
    assert await turn.run() == "Monday."
    results = tool_results(turn.recorded)
    assert results["c1"]["error"] == "invalid_json"
    assert results["c2"]["error"] == "invalid_arguments"
    assert results["c3"]["error"] == "unknown_tool"
    assert results["c4"]["when"] == "Monday 9:30"
    assert_valid_history(turn.recorded)


async def test_max_rounds_bounds_the_llm_calls() -> None:
    llm = ScriptedLLM([tool_call("lookup", {"patient_id": str(i)}) for i in range(10)])
    turn = Turn(llm, max_rounds=3)
    assert await turn.run() == MAX_ROUNDS_TEXT
    assert len(llm.received) == 3
    assert turn.desk.lookups == 2  # the third round's call never ran ...
    assert len(tool_results(turn.recorded)) == 2  # ... and is not in the history
    assert_valid_history(turn.recorded)


async def test_max_rounds_silent() -> None:
    llm = ScriptedLLM([tool_call("lookup", {"patient_id": "1"})])
    turn = Turn(llm, max_rounds=1, max_rounds_text=None)
    assert await turn.run() == ""
    assert turn.recorded == []


async def test_duplicate_or_missing_call_ids_are_made_unique() -> None:
    calls = [
        tool_call("lookup", {"patient_id": "1"}, id="same"),
        tool_call("lookup", {"patient_id": "2"}, id="same"),
    ]
    turn = Turn(ScriptedLLM([calls, "ok"]))
    await turn.run()
    assert_valid_history(turn.recorded)
    assert len(tool_results(turn.recorded)) == 2


async def test_provider_errors_are_raised() -> None:
    with pytest.raises(ProviderError, match="boom"):
        await Turn(ScriptedLLM([ProviderError("boom")])).run()
    # a provider bug that is not a ProviderError is still reported as one
    with pytest.raises(ProviderError, match="ValueError"):
        await Turn(ScriptedLLM([ValueError("bad chunk")])).run()


async def test_provider_error_mid_stream_keeps_earlier_rounds() -> None:
    llm = ScriptedLLM(
        [
            tool_call("lookup", {"patient_id": "42"}, id="c1"),
            ScriptedReply(text="It is", error=ProviderError("dropped")),
        ]
    )
    turn = Turn(llm)
    with pytest.raises(ProviderError):
        await turn.run()
    assert "".join(turn.text) == "It is"
    assert list(tool_results(turn.recorded)) == ["c1"]
    assert_valid_history(turn.recorded)


# -- filler -------------------------------------------------------------------------------------
async def test_filler_is_said_when_a_tool_round_is_slow() -> None:
    async def no_wait(seconds: float) -> None:
        return None

    llm = ScriptedLLM([tool_call("needs_filler", {}), tool_call("needs_filler", {}), "Done."])
    turn = Turn(llm, sleep=no_wait)
    # the tool only returns after the filler was said, so reaching "Done." proves it
    assert await turn.run() == "Done."
    assert turn.fillers == ["One moment…"]  # once per turn, not once per round


async def test_no_filler_when_tools_are_fast() -> None:
    never = asyncio.Event()

    async def forever(seconds: float) -> None:
        await never.wait()

    llm = ScriptedLLM([tool_call("lookup", {"patient_id": "42"}), "Monday."])
    turn = Turn(llm, sleep=forever)
    assert await turn.run() == "Monday."
    assert turn.fillers == []
    assert_no_stray_tasks()  # the pending filler timer was cancelled and reaped


async def test_async_filler_and_custom_text() -> None:
    said: list[str] = []
    desk = Desk()

    async def filler(text: str) -> None:
        await asyncio.sleep(0)
        said.append(text)
        desk.filler_said.set()

    async def no_wait(seconds: float) -> None:
        return None

    turn = Turn(
        ScriptedLLM([tool_call("needs_filler", {}), "ok"]),
        desk,
        filler=filler,
        filler_text="Just a sec.",
        sleep=no_wait,
    )
    assert await turn.run() == "ok"
    assert said == ["Just a sec."]


# -- cancellation (barge-in) --------------------------------------------------------------------
async def test_cancel_before_any_tool_call() -> None:
    gate = Gate()
    llm = ScriptedLLM([tool_call("lookup", {"patient_id": "42"})], ttft=1.0, sleep=gate)
    turn = Turn(llm)
    task = turn.start()
    await gate.hit.wait()  # the model is "thinking"
    await cancel(task)
    assert turn.recorded == []
    assert turn.desk.lookups == 0
    assert_no_stray_tasks()


async def test_cancel_while_a_tool_runs() -> None:
    turn = Turn(ScriptedLLM([tool_call("slow", {"name": "s1"}, id="c1"), "never said"]))
    task = turn.start()
    await turn.desk.wait_started("s1")
    await cancel(task)
    assert turn.desk.cancelled == ["s1"] and turn.desk.finished == []
    assert [m["role"] for m in turn.recorded] == ["assistant", "tool"]
    assert tool_results(turn.recorded) == {"c1": {"error": "cancelled"}}
    assert_valid_history(turn.recorded)
    assert_no_stray_tasks()


async def test_cancel_with_one_tool_done_and_one_running() -> None:
    calls = [
        tool_call("lookup", {"patient_id": "42"}, id="fast"),
        tool_call("slow", {"name": "s1"}, id="slow"),
    ]
    turn = Turn(ScriptedLLM([calls, "never said"]))
    task = turn.start()
    await turn.desk.wait_started("s1")
    await turn.desk.wait_started("lookup:42")
    await cancel(task)
    results = tool_results(turn.recorded)
    assert results == {
        "fast": {"patient": "42", "when": "Monday 9:30"},
        "slow": {"error": "cancelled"},
    }
    assert len(turn.recorded) == 3  # exactly once each
    assert_valid_history(turn.recorded)
    assert_no_stray_tasks()


async def test_a_tool_that_completes_despite_cancellation_is_recorded_with_its_result() -> None:
    turn = Turn(ScriptedLLM([tool_call("stubborn", {"name": "st"}, id="c1")]))
    task = turn.start()
    await turn.desk.wait_started("st")
    await cancel(task)
    assert turn.desk.cancelled == ["st"] and turn.desk.finished == ["st"]
    assert tool_results(turn.recorded) == {"c1": "st finished anyway"}
    assert_valid_history(turn.recorded)


async def test_cancel_after_the_tool_round() -> None:
    gate = Gate()

    class SlowSecondRound(ScriptedLLM):
        def stream(
            self, messages: Sequence[Message], tools: Sequence[ToolSpec] = ()
        ) -> AsyncIterator[LLMEvent]:
            if self.received:
                self.ttft = 1.0
            return super().stream(messages, tools)

    llm = SlowSecondRound([tool_call("lookup", {"patient_id": "42"}, id="c1"), "never"], sleep=gate)
    turn = Turn(llm)
    task = turn.start()
    await gate.hit.wait()  # second LLM round is waiting for its first token
    await cancel(task)
    assert tool_results(turn.recorded) == {"c1": {"patient": "42", "when": "Monday 9:30"}}
    assert len(turn.recorded) == 2
    assert_valid_history(turn.recorded)
    assert_no_stray_tasks()


async def test_caller_stops_iterating_mid_reply() -> None:
    llm = ScriptedLLM(
        [tool_call("lookup", {"patient_id": "42"}, id="c1"), "Monday at nine thirty."]
    )
    turn = Turn(llm)
    async with aclosing(turn.gen) as gen:
        async for piece in gen:
            assert piece == "Monday"
            break  # barge-in on the first word
    assert len(turn.recorded) == 2
    assert_valid_history(turn.recorded)


async def test_cancel_during_an_async_history_write() -> None:
    """The write of the assistant message is finished, then its calls are answered."""
    recorded: list[Message] = []
    writing = asyncio.Event()
    proceed = asyncio.Event()
    desk = Desk()

    async def record(message: Message) -> None:
        if message.get("tool_calls"):
            writing.set()
            await proceed.wait()
        recorded.append(message)

    llm = ScriptedLLM([tool_call("lookup", {"patient_id": "42"}, id="c1"), "never"])
    gen = run_llm_turn(llm, HISTORY, tools_of(desk), partial(call_tool, desk), record=record)

    async def consume() -> None:
        async for _ in gen:
            pass

    task = asyncio.create_task(consume())
    await writing.wait()
    task.cancel()
    await asyncio.sleep(0)  # the cancellation lands while the write is in progress
    proceed.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert desk.lookups == 0  # its tools never started ...
    assert tool_results(recorded) == {"c1": {"error": "cancelled"}}  # ... and are answered
    assert_valid_history(recorded)
    assert_no_stray_tasks()


async def test_max_rounds_must_be_positive() -> None:
    with pytest.raises(ValueError):
        await Turn(ScriptedLLM(["x"]), max_rounds=0).run()
