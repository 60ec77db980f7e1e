"""`@callable` registry and dispatch: only decorated public methods are reachable, arguments
are validated before the method runs, streaming methods are recognised."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from callroom import Agent, callable
from callroom.errors import RpcError
from callroom.rpc import invoke, registry_for, stream


class Base(Agent):
    @callable
    def inherited(self) -> str:
        return "base"

    @callable
    def overridden_plain(self) -> str:
        return "decorated in base"


class Sample(Agent):
    @callable
    def add(self, a: int, b: int) -> int:
        return a + b

    @callable(description="Greets")
    async def greet(self, who: str = "world") -> str:
        return f"hello {who}"

    @callable
    async def ticks(self, n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i

    @callable
    def _private(self) -> str:
        return "never"

    @callable
    def __dunder__(self) -> str:
        return "never"

    def undecorated(self) -> str:
        return "never"

    @callable
    def take_dict(self, payload: dict[str, int]) -> int:
        return sum(payload.values())


class Child(Base):
    def overridden_plain(self) -> str:  # override without @callable: no longer callable
        return "plain in child"


def test_decorated_methods_are_registered() -> None:
    reg = registry_for(Sample)
    assert set(reg.callables) == {"add", "greet", "ticks", "take_dict"}
    assert reg.callables["greet"].description == "Greets"
    assert reg.callables["ticks"].streaming is True
    assert reg.callables["add"].streaming is False


@pytest.mark.parametrize("method", ["_private", "__dunder__", "__init__", "__class__", "nope"])
def test_private_dunder_and_unknown_do_not_exist(method: str) -> None:
    with pytest.raises(RpcError, match=f"^Method {method} does not exist$"):
        registry_for(Sample).lookup(method)


@pytest.mark.parametrize("method", ["undecorated", "set_state", "sql", "broadcast", "schedule"])
def test_public_undecorated_methods_are_not_callable(method: str) -> None:
    with pytest.raises(RpcError, match=f"^Method {method} is not callable$"):
        registry_for(Sample).lookup(method)


def test_inheritance_and_override() -> None:
    reg = registry_for(Child)
    assert reg.lookup("inherited").name == "inherited"
    with pytest.raises(RpcError, match="is not callable"):
        reg.lookup("overridden_plain")


def _agent() -> Any:
    # Dispatch never touches agent internals, so a bare instance is enough here.
    return Sample.__new__(Sample)


async def test_invoke_sync_and_async() -> None:
    reg = registry_for(Sample)
    assert await invoke(reg.lookup("add"), _agent(), [2, 3]) == 5
    assert await invoke(reg.lookup("greet"), _agent(), []) == "hello world"
    assert await invoke(reg.lookup("greet"), _agent(), ["bob"]) == "hello bob"


async def test_lax_coercion_of_compatible_values() -> None:
    assert await invoke(registry_for(Sample).lookup("add"), _agent(), ["2", 3.0]) == 5


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ([1], "missing a required argument: 'b'"),
        ([1, 2, 3], "too many positional arguments"),
        ([], "missing a required argument: 'a'"),
        (["x", 1], "Input should be a valid integer"),
        ([1.5, 1], "Input should be a valid integer"),
        ([None, 1], "Input should be a valid integer"),
    ],
)
async def test_wrong_arguments_are_rpc_errors(args: list[Any], fragment: str) -> None:
    with pytest.raises(RpcError) as info:
        await invoke(registry_for(Sample).lookup("add"), _agent(), args)
    assert info.value.message.startswith("Invalid arguments for add: ")
    assert fragment in info.value.message


async def test_nested_argument_validation() -> None:
    info = registry_for(Sample).lookup("take_dict")
    assert await invoke(info, _agent(), [{"a": 1, "b": 2}]) == 3
    with pytest.raises(RpcError, match="Invalid arguments for take_dict"):
        await invoke(info, _agent(), [{"a": "not a number"}])


async def test_stream_yields_and_checks_arity() -> None:
    info = registry_for(Sample).lookup("ticks")
    assert [i async for i in stream(info, _agent(), [3])] == [0, 1, 2]
    with pytest.raises(RpcError, match="Invalid arguments for ticks"):
        stream(info, _agent(), [])
