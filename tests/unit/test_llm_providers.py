"""LLM providers over real loopback HTTP: the fake OpenAI server, and small fake Anthropic and
Workers AI servers written here. No timing assertions: timeouts are only used to provoke
errors."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from callroom.errors import ProviderError
from callroom.providers.base import LLM, LLMEvent, ToolCall, ToolSpec
from callroom.providers.llm import LLMSettings, make_llm
from callroom.providers.llm.anthropic import OPENING_TURN, AnthropicLLM, to_anthropic
from callroom.providers.llm.fake_server import BackgroundServer, FakeLLMServer, FakeReply
from callroom.providers.llm.openai_compat import (
    OpenAICompatLLM,
    ProviderHTTPError,
    ToolCallAssembler,
    iter_sse,
    pair_tool_results,
)
from callroom.providers.llm.scripted import ScriptedLLM
from callroom.providers.llm.workers_ai import WorkersAILLM, to_workers_ai

WEATHER = ToolSpec(
    name="get_weather",
    description="Weather for a city.",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
USER: list[dict[str, Any]] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
]


async def collect(
    llm: LLM, messages: Sequence[dict[str, Any]] = USER, tools: Sequence[ToolSpec] = ()
) -> list[LLMEvent]:
    return [e async for e in llm.stream(messages, tools)]


def text_of(events: list[LLMEvent]) -> str:
    return "".join(e.text for e in events if e.kind == "text")


@pytest.fixture
def fake() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(ttft_ms=0, token_ms=0) as srv:
        yield srv


@pytest.fixture
async def openai(fake: FakeLLMServer) -> AsyncIterator[OpenAICompatLLM]:
    llm = OpenAICompatLLM(base_url=fake.base_url, model="fake-model", read_timeout=5)
    yield llm
    await llm.aclose()


# -- OpenAI-compatible --------------------------------------------------------------------------
async def test_text_streams_in_pieces(fake: FakeLLMServer, openai: OpenAICompatLLM) -> None:
    fake.add("The clinic opens at nine.")
    events = await collect(openai)
    kinds = [e.kind for e in events]
    assert kinds.count("text") == 5 and kinds[-1] == "done"
    assert text_of(events) == "The clinic opens at nine."
    assert events[-1].finish_reason == "stop"
    body = fake.requests[0]
    assert body["model"] == "fake-model" and body["stream"] is True
    assert body["messages"] == USER
    assert "tools" not in body and "stream_options" not in body


async def test_history_extras_are_not_sent(fake: FakeLLMServer, openai: OpenAICompatLLM) -> None:
    history: list[dict[str, Any]] = [
        *USER,
        {"role": "assistant", "content": "Hel", "interrupted": True, "full": "x"},
    ]
    await collect(openai, history)
    assert fake.requests[0]["messages"][-1] == {"role": "assistant", "content": "Hel"}


BARGED_IN: list[dict[str, Any]] = [
    *USER,
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"}},
        ],
    },
    # the pipeline recorded what was heard before the cancelled tools were recorded:
    {"role": "assistant", "content": "Let me", "interrupted": True},
    {"role": "tool", "tool_call_id": "c1", "content": '{"error":"cancelled"}'},
    {"role": "tool", "tool_call_id": "c1", "content": "duplicate"},
    {"role": "tool", "tool_call_id": "c9", "content": "orphan"},
    {"role": "user", "content": "Actually, never mind."},
]


def test_tool_results_are_paired_with_their_calls() -> None:
    out = pair_tool_results(BARGED_IN)
    assert [(m["role"], m.get("tool_call_id"), m["content"]) for m in out[2:]] == [
        ("assistant", None, ""),
        ("tool", "c1", '{"error":"cancelled"}'),
        ("tool", "c2", '{"error":"no_result"}'),
        ("assistant", None, "Let me"),
        ("user", None, "Actually, never mind."),
    ]


async def test_openai_sends_a_repaired_history(
    fake: FakeLLMServer, openai: OpenAICompatLLM
) -> None:
    await collect(openai, BARGED_IN)
    sent = fake.requests[0]["messages"]
    assert [m["role"] for m in sent] == [
        "system",
        "user",
        "assistant",
        "tool",
        "tool",
        "assistant",
        "user",
    ]
    assert "interrupted" not in sent[5]


async def test_tool_calls_are_assembled_from_fragments(
    fake: FakeLLMServer, openai: OpenAICompatLLM
) -> None:
    fake.tool_arg_chunk = 3
    calls = (
        ToolCall("call_a", "get_weather", '{"city": "Paris"}'),
        ToolCall("call_b", "get_weather", '{"city": "Lyon, France"}'),
    )
    fake.add(FakeReply(text="Checking.", tool_calls=calls))
    events = await collect(openai, tools=[WEATHER])
    assert text_of(events) == "Checking."
    got = [e.tool_call for e in events if e.kind == "tool_call"]
    assert got == list(calls)
    assert [e.kind for e in events][-3:] == ["tool_call", "tool_call", "done"]
    assert events[-1].finish_reason == "tool_calls"
    sent = fake.requests[0]["tools"]
    assert sent == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city.",
                "parameters": WEATHER.parameters,
            },
        }
    ]


async def test_usage_when_asked(fake: FakeLLMServer) -> None:
    llm = OpenAICompatLLM(base_url=fake.base_url, model="m", stream_usage=True)
    events = await collect(llm)
    await llm.aclose()
    assert fake.requests[0]["stream_options"] == {"include_usage": True}
    assert events[-1].usage["completion_tokens"] > 0


async def test_server_that_ignores_stream_true(fake: FakeLLMServer) -> None:
    llm = OpenAICompatLLM(base_url=fake.base_url, model="m", extra_body={"stream": False})
    fake.add(FakeReply(text="Whole answer.", tool_calls=(ToolCall("c1", "f", "{}"),)))
    events = await collect(llm)
    await llm.aclose()
    assert text_of(events) == "Whole answer."
    assert [e.tool_call for e in events if e.kind == "tool_call"] == [ToolCall("c1", "f", "{}")]


async def test_http_401_names_status_and_never_the_key() -> None:
    key = "sk-wrong-0123456789abcdef"
    with FakeLLMServer(api_key="sk-right-key", ttft_ms=0) as srv:
        llm = OpenAICompatLLM(base_url=srv.base_url, model="m", api_key=key)
        with pytest.raises(ProviderHTTPError) as err:
            await collect(llm)
        await llm.aclose()
    assert err.value.status == 401
    assert "401" in str(err.value) and "Incorrect API key" in str(err.value)
    assert key not in str(err.value) and key not in repr(llm)


async def test_http_500_with_body_excerpt(fake: FakeLLMServer, openai: OpenAICompatLLM) -> None:
    fake.add(FakeReply(status=500, error_message="model overloaded " + "x" * 500))
    with pytest.raises(ProviderHTTPError) as err:
        await collect(openai)
    assert err.value.status == 500
    assert "model overloaded" in str(err.value)
    assert len(str(err.value)) < 300
    assert len(fake.requests) == 1  # an HTTP error is an answer: no retry


def _refusing_socket() -> socket.socket:
    """Bound but not listening: connecting to it is refused until someone serves on it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock


async def test_retries_once_when_connection_refused_before_first_token() -> None:
    sock = _refusing_socket()
    port = sock.getsockname()[1]
    srv = FakeLLMServer(ttft_ms=0, token_ms=0, reply="Back online.")
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        srv.start(sock=sock)  # the server comes up during the retry pause

    llm = OpenAICompatLLM(base_url=f"http://127.0.0.1:{port}/v1", model="m", sleep=sleep)
    try:
        events = await collect(llm)
    finally:
        await llm.aclose()
        srv.stop()
    assert text_of(events) == "Back online."
    assert len(waits) == 1 and len(srv.requests) == 1


async def test_gives_up_after_one_retry() -> None:
    sock = _refusing_socket()
    port = sock.getsockname()[1]
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    llm = OpenAICompatLLM(base_url=f"http://127.0.0.1:{port}/v1", model="m", sleep=sleep)
    with pytest.raises(ProviderError, match="cannot connect") as err:
        await collect(llm)
    await llm.aclose()
    sock.close()
    assert len(waits) == 1
    assert f"127.0.0.1:{port}" in str(err.value)


async def test_connection_dropped_before_first_token_is_retried(
    fake: FakeLLMServer, openai: OpenAICompatLLM
) -> None:
    fake.add(FakeReply(text="lost", drop_after=0), "Second try.")
    events = await collect(openai)
    assert text_of(events) == "Second try."
    assert len(fake.requests) == 2


async def test_connection_dropped_mid_stream_is_an_error(
    fake: FakeLLMServer, openai: OpenAICompatLLM
) -> None:
    fake.add(FakeReply(text="one two three four", drop_after=2))
    seen: list[str] = []
    with pytest.raises(ProviderError, match="mid-stream"):
        async for event in openai.stream(USER):
            seen.append(event.text)
    assert "".join(seen) == "one two"
    assert len(fake.requests) == 1  # never repeat text the caller may have spoken


async def test_read_timeout_is_a_provider_error(fake: FakeLLMServer) -> None:
    fake.add(FakeReply(text="too late", ttft_ms=3000))
    llm = OpenAICompatLLM(base_url=fake.base_url, model="m", read_timeout=0.2)
    with pytest.raises(ProviderError, match=r"no response within 0\.2 s"):
        await collect(llm)
    await llm.aclose()


async def test_stopping_early_leaves_the_client_usable(
    fake: FakeLLMServer, openai: OpenAICompatLLM
) -> None:
    fake.add("one two three four five", "again")
    stream = openai.stream(USER)
    first = await anext(stream)
    await stream.aclose()  # type: ignore[attr-defined]  # what a barge-in does
    assert first.text == "one"
    assert text_of(await collect(openai)) == "again"


# -- dialects, without a server -----------------------------------------------------------------
def test_assembler_without_index_uses_ids_and_skips_null_fragments() -> None:
    asm = ToolCallAssembler()
    asm.add([{"id": "a", "function": {"name": "f", "arguments": '{"x":'}}])
    asm.add([{"function": {"arguments": "1}"}}])
    asm.add([{"id": "b", "function": {"name": "g", "arguments": {"y": 2}}}])
    asm.add([{"id": None, "type": None, "function": {"name": None}}])
    assert asm.finish() == [ToolCall("a", "f", '{"x":1}'), ToolCall("b", "g", '{"y": 2}')]


def test_assembler_repeated_names_flat_calls_and_missing_ids() -> None:
    asm = ToolCallAssembler()
    asm.add([{"index": 0, "id": "a", "function": {"name": "f", "arguments": ""}}])
    asm.add([{"index": 0, "function": {"name": "f", "arguments": "{}"}}])
    assert asm.finish() == [ToolCall("a", "f", "{}")]
    flat = ToolCallAssembler()
    flat.add([{"name": "f", "arguments": {"a": 1}}, {"name": "g", "arguments": {}}])
    calls = flat.finish()
    assert [(c.name, c.arguments) for c in calls] == [("f", '{"a": 1}'), ("g", "{}")]
    assert all(c.id.startswith("call_") for c in calls) and calls[0].id != calls[1].id


async def test_sse_parser() -> None:
    async def lines() -> AsyncIterator[str]:
        for line in [
            ": keep-alive",
            "event: a",
            "data: one",
            "data: two",
            "",
            "data:x",
            "",
            "data: last-without-blank-line",
        ]:
            yield line

    events = [(e.event, e.data) async for e in iter_sse(lines())]
    assert events == [("a", "one\ntwo"), ("message", "x"), ("message", "last-without-blank-line")]


# -- Anthropic ----------------------------------------------------------------------------------
def _sse(events: list[tuple[str, dict[str, Any]]]) -> bytes:
    return b"".join(f"event: {e}\ndata: {json.dumps(d)}\n\n".encode() for e, d in events)


ANTHROPIC_STREAM: list[tuple[str, dict[str, Any]]] = [
    ("message_start", {"type": "message_start", "message": {"usage": {"input_tokens": 12}}}),
    (
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    ),
    ("ping", {"type": "ping"}),
    (
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": "Let me "},
        },
    ),
    (
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": "check."},
        },
    ),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    (
        "content_block_start",
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {
                "type": "tool_use",
                "id": "toolu_1",
                "name": "get_weather",
                "input": {},
            },
        },
    ),
    (
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '{"ci'},
        },
    ),
    (
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": 'ty": "Paris"}'},
        },
    ),
    ("content_block_stop", {"type": "content_block_stop", "index": 1}),
    (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use"},
            "usage": {"output_tokens": 20},
        },
    ),
    ("message_stop", {"type": "message_stop"}),
]


class FakeAnthropic:
    """Just enough of POST /v1/messages: a key check and a scripted event stream."""

    def __init__(self, streams: list[list[tuple[str, dict[str, Any]]]]) -> None:
        self.streams = streams
        self.requests: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.app = Starlette(routes=[Route("/v1/messages", self.messages, methods=["POST"])])

    async def messages(self, request: Request) -> Response:
        if request.headers.get("x-api-key") != "ant-key-123456":
            return JSONResponse(
                {
                    "type": "error",
                    "error": {"type": "authentication_error", "message": "invalid x-api-key"},
                },
                status_code=401,
            )
        self.requests.append((dict(request.headers), json.loads(await request.body())))
        body = _sse(self.streams.pop(0))
        return StreamingResponse(iter([body]), media_type="text/event-stream")


@pytest.fixture
def anthropic_server() -> Iterator[tuple[FakeAnthropic, str]]:
    fake = FakeAnthropic([])
    with BackgroundServer(fake.app) as srv:
        yield fake, srv.url


async def test_anthropic_streams_text_and_tool_use(
    anthropic_server: tuple[FakeAnthropic, str],
) -> None:
    fake, url = anthropic_server
    fake.streams.append(ANTHROPIC_STREAM)
    llm = AnthropicLLM(api_key="ant-key-123456", base_url=url, model="claude-test", max_tokens=99)
    events = await collect(llm, tools=[WEATHER])
    await llm.aclose()
    assert text_of(events) == "Let me check."
    assert [e.tool_call for e in events if e.kind == "tool_call"] == [
        ToolCall("toolu_1", "get_weather", '{"city": "Paris"}')
    ]
    assert events[-1].finish_reason == "tool_calls"
    assert events[-1].usage == {"input_tokens": 12, "output_tokens": 20}
    headers, body = fake.requests[0]
    assert headers["anthropic-version"] == "2023-06-01"
    assert body["system"] == "Be brief."
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": "Weather for a city.",
            "input_schema": WEATHER.parameters,
        }
    ]
    assert body["model"] == "claude-test" and body["max_tokens"] == 99 and body["stream"]


async def test_anthropic_bad_key(anthropic_server: tuple[FakeAnthropic, str]) -> None:
    _, url = anthropic_server
    llm = AnthropicLLM(api_key="ant-wrong-key-999", base_url=url)
    with pytest.raises(ProviderHTTPError) as err:
        await collect(llm)
    await llm.aclose()
    assert err.value.status == 401 and "invalid x-api-key" in str(err.value)
    assert "ant-wrong-key-999" not in str(err.value)


async def test_anthropic_error_event_and_truncation(
    anthropic_server: tuple[FakeAnthropic, str],
) -> None:
    fake, url = anthropic_server
    fake.streams.append(
        [
            ANTHROPIC_STREAM[0],
            (
                "error",
                {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
            ),
        ]
    )
    fake.streams.append(ANTHROPIC_STREAM[:8])  # cut inside the tool input
    llm = AnthropicLLM(api_key="ant-key-123456", base_url=url)
    with pytest.raises(ProviderError, match="overloaded_error"):
        await collect(llm)
    with pytest.raises(ProviderError, match="message_stop"):
        await collect(llm)
    await llm.aclose()


def test_history_conversion_for_anthropic() -> None:
    history: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a receptionist."},
        {"role": "assistant", "content": "Hello, Bright Smile Dental."},  # spoken greeting
        {"role": "user", "content": "When is my appointment?"},
        {"role": "user", "content": "I'm patient 42."},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "next_appointment", "arguments": '{"patient_id": "42"}'},
                },
                {
                    "id": "c2",
                    "type": "function",
                    "function": {"name": "weather", "arguments": "{broken"},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": '{"when": "Monday 9:30"}'},
        {"role": "tool", "tool_call_id": "c2", "content": '{"error":"cancelled"}'},
        {"role": "assistant", "content": "Monday at 9:30.", "interrupted": True},
        {"role": "user", "content": "Thanks"},
    ]
    system, turns = to_anthropic(history)
    assert system == "You are a receptionist."
    assert turns == [
        {"role": "user", "content": [{"type": "text", "text": OPENING_TURN}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Hello, Bright Smile Dental."}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "When is my appointment?"},
                {"type": "text", "text": "I'm patient 42."},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "c1",
                    "name": "next_appointment",
                    "input": {"patient_id": "42"},
                },
                {"type": "tool_use", "id": "c2", "name": "weather", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "c1", "content": '{"when": "Monday 9:30"}'},
                {
                    "type": "tool_result",
                    "tool_use_id": "c2",
                    "content": '{"error":"cancelled"}',
                    "is_error": True,
                },
            ],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "Monday at 9:30."}]},
        {"role": "user", "content": [{"type": "text", "text": "Thanks"}]},
    ]


def test_anthropic_conversion_repairs_a_barged_in_history() -> None:
    _, turns = to_anthropic(BARGED_IN)
    assert [t["role"] for t in turns] == ["user", "assistant", "user", "assistant", "user"]
    results = turns[2]["content"]
    assert [(b["type"], b["tool_use_id"]) for b in results] == [
        ("tool_result", "c1"),
        ("tool_result", "c2"),
    ]


def test_tool_results_come_first_in_a_merged_user_turn() -> None:
    history: list[dict[str, Any]] = [
        {"role": "user", "content": "Hi"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": ""}}
            ],
        },
        {"role": "user", "content": "(caller said something)"},
        {"role": "tool", "tool_call_id": "c1", "content": "1"},
    ]
    _, turns = to_anthropic(history)
    assert [b["type"] for b in turns[-1]["content"]] == ["tool_result", "text"]


# -- Workers AI ---------------------------------------------------------------------------------
class FakeWorkersAI:
    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.app = Starlette(
            routes=[
                Route(
                    "/client/v4/accounts/{account}/ai/run/{model:path}", self.run, methods=["POST"]
                )
            ]
        )

    async def run(self, request: Request) -> Response:
        if request.headers.get("authorization") != "Bearer cf-token-123456":
            return JSONResponse(
                {"success": False, "errors": [{"code": 10000, "message": "Authentication error"}]},
                status_code=401,
            )
        self.requests.append((request.url.path, json.loads(await request.body())))
        body = self.bodies.pop(0)
        if body.startswith(b"{"):
            return Response(body, media_type="application/json")
        return StreamingResponse(iter([body]), media_type="text/event-stream")


def _data(*chunks: dict[str, Any]) -> bytes:
    return b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in chunks) + b"data: [DONE]\n\n"


@pytest.fixture
def workers() -> Iterator[tuple[FakeWorkersAI, str]]:
    fake = FakeWorkersAI()
    with BackgroundServer(fake.app) as srv:
        yield fake, f"{srv.url}/client/v4"


def _workers_llm(url: str, token: str = "cf-token-123456") -> WorkersAILLM:
    return WorkersAILLM(
        account_id="acc1",
        api_token=token,
        base_url=url,
        model="@cf/meta/llama-3.3-70b-instruct-fp8-fast",
    )


async def test_workers_ai_native_stream_with_tool_calls(
    workers: tuple[FakeWorkersAI, str],
) -> None:
    fake, url = workers
    fake.bodies.append(
        _data(
            {"response": "Let me "},
            {"response": "check."},
            {
                "response": "",
                "tool_calls": [
                    {
                        "id": "chatcmpl-tool-9f",
                        "type": "function",
                        "index": 0,
                        "function": {"name": "get_weather"},
                    }
                ],
            },
            {"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]},
            {"tool_calls": [{"index": 0, "function": {"arguments": ' "Paris"}'}}]},
            {"tool_calls": [{"id": None, "type": None, "function": {"name": None}}]},
            {"response": "", "usage": {"prompt_tokens": 5, "completion_tokens": 7}},
        )
    )
    llm = _workers_llm(url)
    events = await collect(llm, tools=[WEATHER])
    await llm.aclose()
    assert text_of(events) == "Let me check."
    assert [e.tool_call for e in events if e.kind == "tool_call"] == [
        ToolCall("chatcmpl-tool-9f", "get_weather", '{"city": "Paris"}')
    ]
    assert events[-1].finish_reason == "tool_calls"
    assert events[-1].usage == {"prompt_tokens": 5, "completion_tokens": 7}
    path, body = fake.requests[0]
    assert path == "/client/v4/accounts/acc1/ai/run/@cf/meta/llama-3.3-70b-instruct-fp8-fast"
    assert body["stream"] is True and body["messages"] == USER
    assert body["tools"][0]["function"]["name"] == "get_weather"


async def test_workers_ai_openai_dialect_and_json_answer(
    workers: tuple[FakeWorkersAI, str],
) -> None:
    fake, url = workers
    fake.bodies.append(
        _data(
            {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}}]},
            {"choices": [{"index": 0, "delta": {"content": " there"}, "finish_reason": "stop"}]},
        )
    )
    fake.bodies.append(
        json.dumps(
            {
                "success": True,
                "errors": [],
                "result": {
                    "response": None,
                    "tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}],
                },
            }
        ).encode()
    )
    llm = _workers_llm(url)
    assert text_of(await collect(llm)) == "Hi there"
    events = await collect(llm, tools=[WEATHER])
    await llm.aclose()
    calls = [e.tool_call for e in events if e.kind == "tool_call"]
    assert len(calls) == 1 and calls[0] is not None
    assert (calls[0].name, json.loads(calls[0].arguments)) == ("get_weather", {"city": "Oslo"})


async def test_workers_ai_bad_token(workers: tuple[FakeWorkersAI, str]) -> None:
    _, url = workers
    llm = _workers_llm(url, token="cf-wrong-token-777")
    with pytest.raises(ProviderHTTPError) as err:
        await collect(llm)
    await llm.aclose()
    assert err.value.status == 401 and "Authentication error" in str(err.value)
    assert "cf-wrong-token-777" not in str(err.value)


def test_workers_ai_history_normalisation() -> None:
    history: list[dict[str, Any]] = [
        {"role": "user", "content": "Hi"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "chatcmpl-tool-875d3ec6179676ae",
                    "type": "function",
                    "function": {"name": "f", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "chatcmpl-tool-875d3ec6179676ae", "content": "1"},
    ]
    out = to_workers_ai(history)
    short = out[1]["tool_calls"][0]["id"]
    assert len(short) == 9 and short.isalnum()
    assert out[1]["content"] == ""
    assert out[2] == {"role": "tool", "tool_call_id": short, "content": "1", "name": "f"}
    assert history[1]["content"] is None  # input untouched


# -- make_llm -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("env", "cls", "model"),
    [
        ({"CALLROOM_LLM": "fake"}, ScriptedLLM, None),
        ({"CALLROOM_LLM": "openai", "OPENAI_API_KEY": "sk-x"}, OpenAICompatLLM, "gpt-4o-mini"),
        (
            {
                "CALLROOM_LLM": "openai",
                "OPENAI_BASE_URL": "http://vllm:8000/v1",
                "CALLROOM_LLM_MODEL": "qwen",
            },
            OpenAICompatLLM,
            "qwen",
        ),
        ({"CALLROOM_LLM": "local"}, OpenAICompatLLM, "local-model"),
        ({"CALLROOM_LLM": "anthropic", "ANTHROPIC_API_KEY": "k"}, AnthropicLLM, "claude-haiku-4-5"),
        (
            {
                "CALLROOM_LLM": "workers-ai",
                "CLOUDFLARE_ACCOUNT_ID": "a",
                "CLOUDFLARE_API_TOKEN": "t",
            },
            WorkersAILLM,
            "@cf/meta/llama-3.3-70b-instruct-fp8-fast",
        ),
        ({"ANTHROPIC_API_KEY": "k"}, AnthropicLLM, None),  # auto
        ({"CALLROOM_LLM_MODEL_PACKAGE": "no-such-package"}, ScriptedLLM, None),  # auto: nothing
    ],
)
def test_make_llm_selects_the_provider(env: dict[str, str], cls: type, model: str | None) -> None:
    llm = make_llm(env)
    assert isinstance(llm, cls)
    assert isinstance(llm, LLM)
    if model is not None:
        assert llm.model == model  # type: ignore[attr-defined]


def test_make_llm_local_defaults_to_llama_server() -> None:
    llm = make_llm({"CALLROOM_LLM": "local"})
    assert isinstance(llm, OpenAICompatLLM)
    assert llm.url == "http://127.0.0.1:8080/v1/chat/completions"


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"CALLROOM_LLM": "openai"}, "OPENAI_API_KEY"),
        ({"CALLROOM_LLM": "anthropic"}, "ANTHROPIC_API_KEY"),
        ({"CALLROOM_LLM": "workers-ai", "CLOUDFLARE_API_TOKEN": "t"}, "CLOUDFLARE_ACCOUNT_ID"),
        ({"CALLROOM_LLM": "workers-ai", "CLOUDFLARE_ACCOUNT_ID": "a"}, "CLOUDFLARE_API_TOKEN"),
    ],
)
def test_missing_credentials_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ProviderError, match=variable) as err:
        make_llm(env)
    assert "\n" not in str(err.value)


def test_make_llm_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALLROOM_LLM", "anthropic")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "from-env")
    monkeypatch.setenv("CALLROOM_LLM_MODEL", "claude-x")
    llm = make_llm()
    assert isinstance(llm, AnthropicLLM) and llm.model == "claude-x"
    assert "from-env" not in repr(LLMSettings())


def test_bad_setting_is_a_provider_error() -> None:
    with pytest.raises(ProviderError, match="CALLROOM_LLM"):
        make_llm({"CALLROOM_LLM": "gpt"})


async def test_fake_provider_streams_the_configured_reply() -> None:
    llm = make_llm(
        {
            "CALLROOM_LLM": "fake",
            "CALLROOM_LLM_FAKE_REPLY": "Fine, thanks.",
            "CALLROOM_LLM_FAKE_TTFT_MS": "0",
            "CALLROOM_LLM_FAKE_TOKEN_MS": "0",
        }
    )
    assert text_of(await collect(llm)) == "Fine, thanks."
    assert text_of(await collect(llm)) == "Fine, thanks."
