"""`@tool`: schemas from type hints and docstrings, argument validation, error results,
redaction."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any, Literal

import pydantic
import pytest

from callroom.providers.base import ToolCall
from callroom.tools import (
    REDACTED,
    ToolResult,
    call_tool,
    cancelled_result,
    is_secret_key,
    redact,
    redact_text,
    tool,
    tools_of,
)


class Address(pydantic.BaseModel):
    street: str
    city: str = "Springfield"


class Clinic:
    """A stand-in agent: tools are plain methods on any class."""

    def __init__(self) -> None:
        self.booked: list[tuple[str, str]] = []
        self.release = asyncio.Event()

    @tool
    async def next_appointment(self, patient_id: str) -> dict[str, Any]:
        """Look up the caller's next appointment in the clinic CRM.

        Only for existing patients.

        Args:
            patient_id: The patient's id, as the caller spells it.
        """
        return {"patient": patient_id, "when": "2024-05-01T09:30:00"}

    @tool
    def book(
        self,
        patient_id: str,
        slot: Literal["morning", "afternoon"],
        days_ahead: int = 1,
        urgent: bool = False,
        notes: str | None = None,
        tags: list[str] | None = None,
    ) -> str:
        """Book an appointment.

        Args:
            patient_id: Who.
            slot (str): Part of the day. Continues
                on a second line.
            days_ahead: How many days from today.

        Returns:
            A confirmation sentence.
        """
        self.booked.append((patient_id, slot))
        return f"Booked {patient_id} in the {slot}, {days_ahead} day(s) ahead."

    @tool(name="send_letter", description="Send a letter by post.")
    async def letter(
        self,
        to: Address,
        weight: Annotated[float, "Weight in grams."] = 20.0,
    ) -> dict[str, Any]:
        return {"sent_to": to.street, "weight": weight}

    @tool
    async def slow(self) -> str:
        """Wait until released."""
        await self.release.wait()
        return "done"

    @tool
    async def broken(self) -> str:
        """Always fails."""
        raise RuntimeError("database password=hunter2 rejected")

    @tool
    async def secrets(self) -> dict[str, Any]:
        """Returns things that must never reach a model."""
        return {
            "name": "Ada",
            "api_key": "abc123",
            "nested": {"Authorization": "Bearer xyz", "refreshToken": "r", "max_tokens": 5},
            "note": "use Bearer sk-livekeyabcdefghijkl to call",
        }

    @tool
    async def nothing(self) -> None:
        """Returns nothing."""

    async def not_a_tool(self) -> str:
        return "hidden"


def call(name: str, arguments: Any = None, id: str = "c1") -> ToolCall:
    args = arguments if isinstance(arguments, str) else json.dumps(arguments or {})
    return ToolCall(id=id, name=name, arguments=args)


def specs() -> dict[str, Any]:
    return {s.name: s for s in tools_of(Clinic())}


# -- schema -------------------------------------------------------------------------------------
def test_only_decorated_methods_are_tools() -> None:
    assert set(specs()) == {
        "next_appointment",
        "book",
        "send_letter",
        "slow",
        "broken",
        "secrets",
        "nothing",
    }


def test_description_is_the_first_paragraph_and_args_describe_parameters() -> None:
    spec = specs()["next_appointment"]
    assert spec.description == "Look up the caller's next appointment in the clinic CRM."
    assert spec.parameters == {
        "type": "object",
        "properties": {
            "patient_id": {
                "type": "string",
                "description": "The patient's id, as the caller spells it.",
            }
        },
        "required": ["patient_id"],
    }


def test_schema_types_defaults_literals_optionals_lists() -> None:
    params = specs()["book"].parameters
    props = params["properties"]
    assert params["required"] == ["patient_id", "slot"]
    assert props["slot"]["enum"] == ["morning", "afternoon"]
    assert props["slot"]["description"] == "Part of the day. Continues on a second line."
    assert props["days_ahead"] == {
        "type": "integer",
        "default": 1,
        "description": "How many days from today.",
    }
    assert props["urgent"] == {"type": "boolean", "default": False}
    assert {"type": "null"} in props["notes"]["anyOf"]
    assert {"type": "string"} in props["notes"]["anyOf"]
    assert {"type": "array", "items": {"type": "string"}} in props["tags"]["anyOf"]
    assert "title" not in json.dumps(params)  # titles are noise for the model


def test_pydantic_models_are_inlined_and_annotated_descriptions_used() -> None:
    spec = specs()["send_letter"]
    assert spec.description == "Send a letter by post."
    props = spec.parameters["properties"]
    assert "$defs" not in spec.parameters
    assert props["to"]["type"] == "object"
    assert props["to"]["properties"]["street"] == {"type": "string"}
    assert props["to"]["required"] == ["street"]
    assert props["weight"] == {"type": "number", "default": 20.0, "description": "Weight in grams."}


def test_a_property_called_title_survives_title_stripping() -> None:
    class Books:
        @tool
        async def find(self, title: str) -> str:
            """Find a book."""
            return title

    assert tools_of(Books)[0].parameters["properties"] == {"title": {"type": "string"}}


def test_parameter_names_that_clash_with_pydantic_attributes() -> None:
    class Odd:
        @tool
        async def f(self, json: str, model_config: int = 0) -> list[Any]:
            """Odd names."""
            return [json, model_config]

    assert set(tools_of(Odd)[0].parameters["properties"]) == {"json", "model_config"}
    result = asyncio.run(call_tool(Odd(), call("f", {"json": "x", "model_config": 3})))
    assert json.loads(result.content) == ["x", 3]


def test_unsupported_signatures_are_refused() -> None:
    class Bad:
        @tool
        async def f(self, *args: int) -> None:
            """No."""

    with pytest.raises(TypeError, match=r"\*args"):
        tools_of(Bad)
    with pytest.raises(TypeError, match="generators"):

        @tool
        async def gen(self: Any) -> Any:
            yield 1


def test_override_without_tool_withdraws_it() -> None:
    class Quiet(Clinic):
        async def slow(self) -> str:  # type: ignore[override]
            return "no longer a tool"

    assert "slow" not in {s.name for s in tools_of(Quiet)}


# -- calling ------------------------------------------------------------------------------------
async def test_call_validates_and_returns_json() -> None:
    agent = Clinic()
    result = await call_tool(
        agent, call("book", {"patient_id": "p1", "slot": "morning", "days_ahead": "2"})
    )
    assert result.ok and result.error is None
    assert json.loads(result.content) == "Booked p1 in the morning, 2 day(s) ahead."
    assert agent.booked == [("p1", "morning")]
    assert result.message() == {"role": "tool", "tool_call_id": "c1", "content": result.content}


async def test_pydantic_argument_is_built_from_json() -> None:
    result = await call_tool(Clinic(), call("send_letter", {"to": {"street": "Elm St"}}))
    assert json.loads(result.content) == {"sent_to": "Elm St", "weight": 20.0}


async def test_empty_arguments_mean_no_arguments() -> None:
    result = await call_tool(Clinic(), call("nothing", ""))
    assert result.ok and json.loads(result.content) == {"ok": True}


@pytest.mark.parametrize(
    ("tc", "code"),
    [
        (call("book", "{not json"), "invalid_json"),
        (call("book", "[1, 2]"), "invalid_arguments"),
        (call("book", {"patient_id": "p1", "slot": "evening"}), "invalid_arguments"),
        (call("book", {"slot": "morning"}), "invalid_arguments"),
        (call("transfer_money", {}), "unknown_tool"),
        (call("not_a_tool", {}), "unknown_tool"),
        (call("broken", {}), "tool_error"),
    ],
)
async def test_failures_are_results_not_exceptions(tc: ToolCall, code: str) -> None:
    result = await call_tool(Clinic(), tc)
    assert isinstance(result, ToolResult)
    assert result.error == code and not result.ok
    body = json.loads(result.content)
    assert body["error"] == code
    assert result.call_id == tc.id


async def test_invalid_arguments_explain_what_is_wrong() -> None:
    result = await call_tool(Clinic(), call("book", {"slot": "evening"}))
    message = json.loads(result.content)["message"]
    assert "patient_id" in message and "slot" in message


async def test_unknown_tool_lists_the_tools() -> None:
    result = await call_tool(Clinic(), call("nope", {}))
    assert "next_appointment" in json.loads(result.content)["message"]


async def test_timeout_is_a_result() -> None:
    result = await call_tool(Clinic(), call("slow", {}), timeout=0.01)
    assert result.error == "timeout"


async def test_tool_exception_message_is_redacted() -> None:
    result = await call_tool(Clinic(), call("broken", {}))
    assert "hunter2" not in result.content
    assert "RuntimeError" in result.content


async def test_cancellation_propagates() -> None:
    agent = Clinic()
    task = asyncio.create_task(call_tool(agent, call("slow", {}), timeout=None))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_cancelled_result_shape() -> None:
    result = cancelled_result(call("slow", {}, id="x"))
    assert result.message() == {
        "role": "tool",
        "tool_call_id": "x",
        "content": '{"error":"cancelled"}',
    }
    assert result.error == "cancelled"


# -- redaction ----------------------------------------------------------------------------------
async def test_results_are_redacted() -> None:
    result = await call_tool(Clinic(), call("secrets", {}))
    body = json.loads(result.content)
    assert body["name"] == "Ada"
    assert body["api_key"] == REDACTED
    assert body["nested"]["Authorization"] == REDACTED
    assert body["nested"]["refreshToken"] == REDACTED
    assert body["nested"]["max_tokens"] == 5
    assert "sk-livekey" not in body["note"] and body["note"].startswith("use Bearer")


@pytest.mark.parametrize(
    "key",
    [
        "authorization",
        "API_KEY",
        "x-api-key",
        "apiKey",
        "access_token",
        "Password",
        "client_secret",
        "secret",
        "token",
        "set-cookie",
        "privateKey",
        "AWS_SECRET_ACCESS_KEY",
    ],
)
def test_secret_keys(key: str) -> None:
    assert is_secret_key(key)


@pytest.mark.parametrize(
    "key", ["author", "max_tokens", "tokens_used", "keyboard", "name", "monkey"]
)
def test_ordinary_keys(key: str) -> None:
    assert not is_secret_key(key)


def test_redact_text_patterns() -> None:
    text = (
        "Authorization: Bearer abc.DEF-123_456 and https://x.test/?api_key=K3Y&q=1 "
        "password: p@ss sk-ant-0123456789abcdefghij"
    )
    out = redact_text(text, secrets=["literal-s3cret"])
    for secret in (
        "abc.DEF-123_456",
        "K3Y",
        "p@ss",
        "sk-ant-0123456789abcdefghij",
        "literal-s3cret",
    ):
        assert secret not in out
    assert "Bearer" in out


def test_redact_leaves_the_input_alone() -> None:
    data = {"token": "t", "items": [{"password": "p"}, "Bearer abcdefgh"]}
    out = redact(data)
    assert out == {"token": REDACTED, "items": [{"password": REDACTED}, f"Bearer {REDACTED}"]}
    assert data["token"] == "t"
