"""Agents used by the interop tests. Keep this contract stable: other checks rely on it."""

from __future__ import annotations

from collections.abc import AsyncIterator

from callroom import Agent, callable


class Counter(Agent):
    """`/agents/counter/<name>`: state `{"count": 0}` and a few callables."""

    initial_state = {"count": 0}

    @callable
    def add(self, a: int | float, b: int | float) -> int | float:
        return a + b

    @callable
    def echo(self, x: object) -> object:
        return x

    @callable
    def increment(self, by: int = 1) -> int:
        count = int(self.state.get("count", 0)) + by
        self.set_state({**self.state, "count": count})
        return count

    @callable
    async def count(self, n: int) -> AsyncIterator[int]:
        if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= 10_000:
            raise ValueError("n must be an integer between 0 and 10000")
        for i in range(1, n + 1):
            yield i

    @callable
    def fail(self) -> None:
        raise RuntimeError("deliberate failure")

    def not_exposed(self) -> str:
        return "never reachable over RPC"
