"""`@tool`: agent methods the LLM may call, described to it by a JSON schema.

The schema comes from the method's type hints and docstring, and the *same* pydantic model
that produced the schema validates the model's arguments, so what the LLM is told and what the
tool accepts cannot drift apart. Calling a tool never raises for the things a model gets wrong
(bad JSON, unknown tool, invalid arguments) nor for a slow or failing tool: each becomes a
structured error result the model can read and recover from on its next round, so one bad
call does not end the caller's turn.

Tool results go back to a third-party model and into the stored history, so they pass through
`redact()` first: values under secret-looking keys and bearer tokens never leave the process.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import logging
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar, overload

import pydantic
from pydantic_core import to_jsonable_python

from callroom.providers.base import Message, ToolCall, ToolSpec

__all__ = [
    "REDACTED",
    "ToolInfo",
    "ToolResult",
    "call_tool",
    "cancelled_result",
    "is_secret_key",
    "redact",
    "redact_text",
    "tool",
    "tool_info",
    "tools_of",
]

log = logging.getLogger("callroom.tools")

F = TypeVar("F", bound=Callable[..., Any])

_MARK = "__callroom_tool__"

REDACTED = "[redacted]"


# -- redaction ----------------------------------------------------------------------------------
_SECRET_WORDS = frozenset(
    {
        "authorization",
        "auth",
        "token",
        "password",
        "passwd",
        "pwd",
        "passphrase",
        "secret",
        "apikey",
        "cookie",
        "credential",
        "credentials",
    }
)
_SECRET_PAIRS = frozenset(
    {("api", "key"), ("private", "key"), ("access", "key"), ("secret", "key")}
)
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_WORD_SPLIT = re.compile(r"[^A-Za-z0-9]+")

_TEXT_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # "Bearer abc.def" / "Basic dXNlcjpwYXNz" (an Authorization header pasted into a string)
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}"), rf"\1 {REDACTED}"),
    # well-known API key shapes: OpenAI / Anthropic (sk-...), GitHub, Slack, AWS access keys
    (re.compile(r"\bsk-[A-Za-z0-9_-]{12,}"), REDACTED),
    (re.compile(r"\bgh[pousr]_[A-Za-z0-9]{20,}"), REDACTED),
    (re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"), REDACTED),
    (re.compile(r"\bAKIA[0-9A-Z]{16}\b"), REDACTED),
    # key=value in URLs and config strings: ?api_key=..., token=..., password=...
    (
        re.compile(
            r"(?i)\b((?:api[_-]?key|access[_-]?token|refresh[_-]?token|token|password|passwd"
            r"|secret|client[_-]?secret)\s*[=:]\s*)([^\s&\"',;]+)"
        ),
        rf"\1{REDACTED}",
    ),
)


def is_secret_key(key: str) -> bool:
    """Whether a mapping key names a secret (`api_key`, `X-Api-Key`, `accessToken`, ...).

    Keys are split into words (snake, kebab, camel case) so that `max_tokens` or `author` are
    not caught while `refresh_token` and `Authorization` are.
    """
    words = [w.lower() for w in _WORD_SPLIT.split(_CAMEL.sub("_", key)) if w]
    if any(w in _SECRET_WORDS for w in words):
        return True
    return any(pair in _SECRET_PAIRS for pair in itertools.pairwise(words))


def redact_text(text: str, secrets: typing.Iterable[str] = ()) -> str:
    """Mask bearer tokens, well-known key shapes, `key=value` secrets and the given literals."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, REDACTED)
    for pattern, repl in _TEXT_PATTERNS:
        text = pattern.sub(repl, text)
    return text


def redact(value: Any, secrets: typing.Iterable[str] = ()) -> Any:
    """A copy of `value` (JSON-like data) safe to show a model or store in history.

    Values under secret-looking keys are replaced whole (whatever their type), every string is
    passed through `redact_text`. Non-JSON objects are returned unchanged: serialise first.
    """
    secrets = tuple(secrets)
    if isinstance(value, str):
        return redact_text(value, secrets)
    if isinstance(value, Mapping):
        return {
            k: (REDACTED if isinstance(k, str) and is_secret_key(k) else redact(v, secrets))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v, secrets) for v in value]
    return value


# -- results ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ToolResult:
    """The outcome of one tool call, already in the form the model will read."""

    call_id: str
    name: str
    content: str
    """JSON text: the tool's (redacted) return value, or `{"error": code, "message": ...}`."""
    error: str | None = None
    """None on success, else a stable code: invalid_json, unknown_tool, invalid_arguments,
    timeout, tool_error, cancelled."""

    @property
    def ok(self) -> bool:
        return self.error is None

    def message(self) -> Message:
        """The `tool` chat message answering the call."""
        return {"role": "tool", "tool_call_id": self.call_id, "content": self.content}


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _error(call: ToolCall, code: str, message: str | None = None) -> ToolResult:
    body: dict[str, Any] = {"error": code}
    if message:
        body["message"] = redact_text(message)
    return ToolResult(call.id, call.name, _dumps(body), error=code)


def cancelled_result(call: ToolCall) -> ToolResult:
    """What history says about a call that a barge-in cancelled: it did not finish."""
    return ToolResult(call.id, call.name, _dumps({"error": "cancelled"}), error="cancelled")


# -- schema -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ToolInfo:
    """A tool as the LLM sees it (`spec`) plus what is needed to call it."""

    spec: ToolSpec
    func: Callable[..., Any]
    arguments: type[pydantic.BaseModel]
    """Validates the model's arguments; field aliases are the parameter names."""
    params: tuple[str, ...]
    """Parameter names, in the order of the model's fields."""

    @property
    def name(self) -> str:
        return self.spec.name


@overload
def tool(func: F, /) -> F: ...
@overload
def tool(*, name: str | None = None, description: str | None = None) -> Callable[[F], F]: ...
def tool(func: Any = None, /, *, name: str | None = None, description: str | None = None) -> Any:
    """Offer an agent method to the LLM as a tool.

    The method is left as it is (callable directly, in tests too); only a marker is attached,
    and the schema is built when `tools_of` first sees the class, so forward references to
    classes defined later in the module resolve.
    """

    def mark(f: F) -> F:
        if inspect.isasyncgenfunction(f) or inspect.isgeneratorfunction(f):
            raise TypeError(f"@tool {f.__qualname__}: generators cannot be tools (return a value)")
        setattr(f, _MARK, {"name": name or f.__name__, "description": description})
        return f

    return mark(func) if func is not None else mark


_SECTION = re.compile(r"^\s*([A-Z][A-Za-z ]*):\s*$")
_ARGS_SECTIONS = frozenset({"Args", "Arguments", "Parameters", "Params", "Keyword Args"})
_ARG_LINE = re.compile(r"^\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


def _parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """First paragraph, and Google-style `Args:` entries (continuation lines joined)."""
    if not doc:
        return "", {}
    lines = inspect.cleandoc(doc).splitlines()
    first: list[str] = []
    for line in lines:
        if not line.strip() or _SECTION.match(line):
            break
        first.append(line.strip())
    args: dict[str, str] = {}
    in_args = False
    entry_indent: int | None = None
    current: str | None = None
    for line in lines:
        header = _SECTION.match(line)
        indent = len(line) - len(line.lstrip())
        if header and indent == 0:
            in_args = header.group(1) in _ARGS_SECTIONS
            entry_indent, current = None, None
            continue
        if not in_args or not line.strip():
            continue
        if entry_indent is None:
            entry_indent = indent
        m = _ARG_LINE.match(line.strip())
        if indent <= entry_indent and m:
            current = m.group(1)
            args[current] = m.group(2).strip()
        elif indent > entry_indent and current is not None:
            args[current] = f"{args[current]} {line.strip()}".strip()
        elif indent < entry_indent:
            in_args = False
    return " ".join(first), args


def _strip_titles(schema: Any) -> Any:
    """Drop pydantic's generated `title`s: tokens the model pays for on every request."""
    if isinstance(schema, list):
        return [_strip_titles(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "title" and isinstance(value, str):
            continue
        if key in ("properties", "$defs", "definitions", "patternProperties") and isinstance(
            value, dict
        ):
            out[key] = {k: _strip_titles(v) for k, v in value.items()}
        else:
            out[key] = _strip_titles(value)
    return out


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """Replace `$ref`s to `$defs` by the definitions (small local models handle inline schemas
    far better than references); recursive models keep their `$defs`."""
    defs: dict[str, Any] = schema.get("$defs", {})
    if not defs:
        return schema

    class _Recursive(Exception):
        pass

    def resolve(node: Any, seen: tuple[str, ...]) -> Any:
        if isinstance(node, list):
            return [resolve(n, seen) for n in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            name = ref.removeprefix("#/$defs/")
            if name in seen:
                raise _Recursive
            target = resolve(defs[name], (*seen, name))
            siblings = {k: resolve(v, seen) for k, v in node.items() if k != "$ref"}
            return {**target, **siblings}
        return {
            k: (
                {p: resolve(s, seen) for p, s in v.items()}
                if k == "properties" and isinstance(v, dict)
                else resolve(v, seen)
            )
            for k, v in node.items()
            if k != "$defs"
        }

    try:
        return typing.cast(dict[str, Any], resolve(schema, ()))
    except _Recursive:
        return schema


def tool_info(func: Callable[..., Any], *, method: bool = True) -> ToolInfo:
    """Build the schema and validator of one `@tool` function (`method`: skip `self`)."""
    meta = getattr(func, _MARK, None) or {"name": func.__name__, "description": None}
    qual = getattr(func, "__qualname__", repr(func))
    try:
        hints = typing.get_type_hints(func, include_extras=True)
    except Exception as exc:  # NameError for an unresolvable annotation, mostly
        raise TypeError(f"@tool {qual}: cannot resolve type hints ({exc})") from exc
    summary, arg_docs = _parse_docstring(inspect.getdoc(func))
    params = list(inspect.signature(func).parameters.values())
    if method:
        params = params[1:]
    fields: dict[str, Any] = {}
    names: list[str] = []
    for i, p in enumerate(params):
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise TypeError(f"@tool {qual}: *args / **kwargs cannot be described to a model")
        if p.kind is p.POSITIONAL_ONLY:
            raise TypeError(f"@tool {qual}: positional-only parameter {p.name!r}")
        annotation = hints.get(p.name, Any)
        description = arg_docs.get(p.name)
        # Annotated[T, "description"]: a plain string in the metadata describes the parameter.
        if typing.get_origin(annotation) is Annotated:
            base, *extras = typing.get_args(annotation)
            texts = [e for e in extras if isinstance(e, str)]
            if texts:
                description = " ".join(texts)
                rest = [e for e in extras if not isinstance(e, str)]
                annotation = Annotated[(base, *rest)] if rest else base
        default = ... if p.default is p.empty else p.default
        field = pydantic.Field(default, alias=p.name, description=description)
        # Internal field names avoid clashes with BaseModel attributes (`json`, `model_*`).
        fields[f"p{i}"] = (annotation, field)
        names.append(p.name)
    try:
        model = pydantic.create_model(
            f"{meta['name']}_arguments",
            __config__=pydantic.ConfigDict(
                extra="ignore", populate_by_name=False, arbitrary_types_allowed=False
            ),
            **fields,
        )
        schema = model.model_json_schema(by_alias=True)
    except Exception as exc:
        raise TypeError(f"@tool {qual}: cannot build a JSON schema ({exc})") from exc
    schema = _inline_refs(_strip_titles(schema))
    schema.setdefault("properties", {})
    schema["type"] = "object"
    description = meta["description"] or summary
    spec = ToolSpec(name=meta["name"], description=description, parameters=schema)
    return ToolInfo(spec=spec, func=func, arguments=model, params=tuple(names))


_registries: dict[type, dict[str, ToolInfo]] = {}


def _registry(cls: type) -> dict[str, ToolInfo]:
    reg = _registries.get(cls)
    if reg is None:
        found: dict[str, Callable[..., Any]] = {}
        for klass in reversed(cls.__mro__):
            for attr, value in vars(klass).items():
                if inspect.isfunction(value):
                    if hasattr(value, _MARK):
                        found[attr] = value
                    else:
                        found.pop(attr, None)  # an override without @tool withdraws it
        reg = {}
        for f in found.values():
            info = tool_info(f)
            if info.name in reg:
                raise TypeError(f"{cls.__qualname__}: two tools named {info.name!r}")
            reg[info.name] = info
        _registries[cls] = reg
    return reg


def tools_of(agent: Any) -> list[ToolSpec]:
    """The `@tool` methods of an agent (instance or class), as specs for the LLM."""
    cls = agent if isinstance(agent, type) else type(agent)
    return [info.spec for info in _registry(cls).values()]


# -- calling ------------------------------------------------------------------------------------
def _format_validation(exc: pydantic.ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(x) for x in err["loc"]) or "arguments"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


async def call_tool(agent: Any, call: ToolCall, timeout: float | None = 10.0) -> ToolResult:  # noqa: ASYNC109
    """Validate and run one tool call; every failure the model can cause is a result.

    Async tools are bounded by `timeout`. Sync tools run inline on the event loop (agents are
    single-threaded and a tool usually touches agent state), so they must be quick and cannot
    be timed out. Cancellation (a barge-in) propagates: the turn loop records it.
    """
    cls = agent if isinstance(agent, type) else type(agent)
    info = _registry(cls).get(call.name)
    if info is None:
        known = ", ".join(sorted(_registry(cls))) or "none"
        return _error(call, "unknown_tool", f"No tool named {call.name!r}. Tools: {known}.")
    raw = call.arguments.strip() if call.arguments else ""
    try:
        data = json.loads(raw) if raw else {}
    except ValueError as exc:
        return _error(call, "invalid_json", f"Arguments are not valid JSON: {exc}")
    if not isinstance(data, dict):
        return _error(call, "invalid_arguments", "Arguments must be a JSON object.")
    try:
        parsed = info.arguments.model_validate(data)
    except pydantic.ValidationError as exc:
        return _error(call, "invalid_arguments", _format_validation(exc))
    kwargs = {name: getattr(parsed, f"p{i}") for i, name in enumerate(info.params)}
    try:
        if inspect.iscoroutinefunction(info.func):
            async with asyncio.timeout(timeout) as scope:
                try:
                    result = await info.func(agent, **kwargs)
                except TimeoutError:
                    if scope.expired():
                        raise
                    raise _ToolRaisedTimeout from None
        else:
            result = info.func(agent, **kwargs)
            if inspect.isawaitable(result):
                async with asyncio.timeout(timeout):
                    result = await result
    except TimeoutError:
        return _error(call, "timeout", f"The tool did not finish within {timeout:g} s.")
    except _ToolRaisedTimeout:
        return _error(call, "tool_error", "TimeoutError")
    except Exception as exc:
        log.exception("tool %s failed", call.name)
        return _error(call, "tool_error", f"{type(exc).__name__}: {exc}"[:500])
    try:
        content = _dumps(redact(to_jsonable_python(result, fallback=str)))
    except Exception as exc:  # a value even `str()` cannot render
        return _error(call, "tool_error", f"Result is not serialisable: {type(exc).__name__}")
    if result is None:
        content = _dumps({"ok": True})
    return ToolResult(call.id, call.name, content)


class _ToolRaisedTimeout(Exception):
    """The tool raised TimeoutError of its own: a tool failure, not our time limit."""
