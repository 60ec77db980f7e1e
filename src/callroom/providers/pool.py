"""The one bounded worker pool for blocking model work (STT, TTS, local LLM, VAD batches).

Sized to the machine's cores so model calls queue instead of oversubscribing the CPU; the
event loop only awaits futures, so it never blocks on a model.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

_pool: ThreadPoolExecutor | None = None


def workers() -> int:
    env = os.environ.get("CALLROOM_MODEL_WORKERS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, os.cpu_count() or 1)


def pool() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=workers(), thread_name_prefix="callroom-model")
    return _pool


async def run(fn: Callable[..., T], *args: Any) -> T:
    """Run `fn(*args)` in the model pool and await it."""
    return await asyncio.get_running_loop().run_in_executor(pool(), fn, *args)
