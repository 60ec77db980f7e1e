"""Class-name → URL segment (must equal the npm client's `camelCaseToKebabCase`) and the
agent-name allow-list that keeps every name a safe file name."""

from __future__ import annotations

import pytest

from callroom.errors import BadAgentName
from callroom.protocol.names import camel_to_kebab, validate_agent_name

# (class name, what dist/utils.js `camelCaseToKebabCase` returns). The interop suite checks
# the same table against the real npm function.
KEBAB_CASES: list[tuple[str, str]] = [
    ("Receptionist", "receptionist"),
    ("VoiceAgent", "voice-agent"),
    ("MyHTTPAgent", "my-h-t-t-p-agent"),
    ("Counter", "counter"),
    ("counter", "counter"),
    ("myAgent", "my-agent"),
    # ALL CAPS: lower-cased, `_` → `-`
    ("HTTP", "http"),
    ("MY_AGENT", "my-agent"),
    ("A1", "a1"),
    ("AGENT_", "agent-"),  # the all-caps branch does not strip a trailing dash
    # underscores and trailing dashes in the general branch
    ("my_agent", "my-agent"),
    ("My_Agent", "my--agent"),
    ("Agent_", "agent"),
    ("_Agent", "--agent"),  # the leading `-` is dropped before `_` becomes `-`
    ("ALL_CAPS_NAME", "all-caps-name"),
    # only ASCII capitals get a dash; non-ASCII case follows JS toUpperCase/toLowerCase
    ("\u00c9clair", "\u00c9clair"),
    ("\u00c9CLAIR", "\u00e9clair"),
    ("\u00df", "\u00df"),
    ("Agent2Go", "agent2-go"),
    ("123", "123"),
    ("x", "x"),
]


@pytest.mark.parametrize(("name", "expected"), KEBAB_CASES)
def test_camel_to_kebab_matches_npm(name: str, expected: str) -> None:
    assert camel_to_kebab(name) == expected


@pytest.mark.parametrize(
    "name",
    ["default", "a", "A-b_c.d", "room.42", "x" * 128, "0", "a..b", "-dash", "_under"],
)
def test_valid_names_pass(name: str) -> None:
    assert validate_agent_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "x" * 129,
        ".",
        "..",
        ".hidden",
        "../etc",
        "a/b",
        "/abs",
        "a\\b",
        "a b",
        "a\x00b",
        "a\nb",
        "name\n",
        "\ttab",
        "a\x7fb",
        "caf\u00e9",  # é
        "\u0430dmin",  # Cyrillic а looks like Latin a
        "ｄｅｆａｕｌｔ",  # full-width letters
        "a\u200bb",  # zero-width space
        "\u0661\u0662",  # Arabic-Indic digits
        "a%2Fb",
        "a:b",
        "a*b",
    ],
)
def test_bad_names_rejected(name: str) -> None:
    with pytest.raises(BadAgentName) as info:
        validate_agent_name(name)
    assert info.value.code == "bad_agent_name"


@pytest.mark.parametrize("value", [None, 1, b"default", ["a"]])
def test_non_string_names_rejected(value: object) -> None:
    with pytest.raises(BadAgentName):
        validate_agent_name(value)  # type: ignore[arg-type]
