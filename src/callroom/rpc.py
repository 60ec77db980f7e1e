"""`@callable`: which agent methods clients may call, and how a call is dispatched.

The registry is built from the class body (never `getattr` on a client-supplied name), so
private, dunder and undecorated methods can never be reached over the wire.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, overload

import pydantic

from callroom.errors import RpcError

F = TypeVar("F", bound=Callable[..., Any])

_MARK = "__callroom_callable__"


@dataclass(frozen=True, slots=True)
class CallableInfo:
    name: str
    description: str | None
    streaming: bool
    func: Callable[..., Any]
    validated: Callable[..., Any]
    signature: inspect.Signature


@overload
def callable(func: F, /) -> F: ...
@overload
def callable(*, description: str | None = None) -> Callable[[F], F]: ...
def callable(func: Any = None, /, *, description: str | None = None) -> Any:
    """Mark an agent method as callable over RPC.

    Arguments are validated against the type hints (pydantic, lax mode) before the method
    runs, so a client sending a wrong type gets an error response instead of a crash deep in
    the method. An `async def` generator streams its yields as partial results.
    """

    def mark(f: F) -> F:
        setattr(f, _MARK, {"description": description or inspect.getdoc(f)})
        return f

    return mark(func) if func is not None else mark


def _public_functions(cls: type) -> dict[str, Callable[..., Any]]:
    out: dict[str, Callable[..., Any]] = {}
    for klass in reversed(cls.__mro__):
        for name, value in vars(klass).items():
            if name.startswith("_"):
                continue
            if inspect.isfunction(value):
                out[name] = value
            elif name in out:
                del out[name]
    return out


@dataclass(frozen=True, slots=True)
class Registry:
    callables: dict[str, CallableInfo]
    public: frozenset[str]

    def lookup(self, method: str) -> CallableInfo:
        info = self.callables.get(method)
        if info is not None:
            return info
        if method in self.public:
            raise RpcError(f"Method {method} is not callable")
        raise RpcError(f"Method {method} does not exist")


_registries: dict[type, Registry] = {}


def registry_for(cls: type) -> Registry:
    """Callable methods of `cls`, computed once per class."""
    reg = _registries.get(cls)
    if reg is None:
        funcs = _public_functions(cls)
        callables = {}
        for name, f in funcs.items():
            meta = getattr(f, _MARK, None)
            if meta is None:
                continue
            streaming = inspect.isasyncgenfunction(f)
            validated = (
                f
                if streaming
                else pydantic.validate_call(config={"arbitrary_types_allowed": True})(f)
            )
            callables[name] = CallableInfo(
                name, meta["description"], streaming, f, validated, inspect.signature(f)
            )
        reg = Registry(callables, frozenset(funcs))
        _registries[cls] = reg
    return reg


def check_arguments(info: CallableInfo, agent: Any, args: list[Any]) -> None:
    """Refuse a wrong number of arguments with a sentence a client developer understands."""
    try:
        info.signature.bind(agent, *args)
    except TypeError as exc:
        raise RpcError(f"Invalid arguments for {info.name}: {exc}") from None


async def invoke(info: CallableInfo, agent: Any, args: list[Any]) -> Any:
    """Call a non-streaming callable (sync or async) with validated arguments."""
    check_arguments(info, agent, args)
    try:
        result = info.validated(agent, *args)
    except pydantic.ValidationError as exc:
        errors = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise RpcError(f"Invalid arguments for {info.name}: {errors}") from None
    if inspect.isawaitable(result):
        result = await result
    return result


def stream(info: CallableInfo, agent: Any, args: list[Any]) -> AsyncIterator[Any]:
    check_arguments(info, agent, args)
    gen: AsyncIterator[Any] = info.func(agent, *args)
    return gen
