"""Per-connection limits and log hygiene: a message-rate token bucket, a redacting log filter,
and the process figures behind `/healthz?verbose=1`.

Rate limit: each connection gets a token bucket of `max_messages_per_second` tokens per
second, holding at most `message_burst` (default: two seconds' worth). Every inbound frame
takes one token; a frame that finds the bucket empty ends the connection (an error frame, then
close 1008, which npm clients treat as final). The default (1000/s) is far above what real
clients send — a `VoiceClient` streams 50 audio frames a second, Twilio 50 `media` events — so
only a flood trips it. `0` turns the limit off (e.g. for RPC throughput benchmarks).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Callable
from typing import Any

RATE_LIMIT_REASON = "rate limit exceeded"


class RateLimiter:
    """Token bucket: `rate` tokens per second, at most `burst` banked. `rate <= 0`: no limit."""

    __slots__ = ("_clock", "_last", "_tokens", "burst", "rate")

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = float(rate)
        self.burst = float(burst) if burst else max(1.0, 2.0 * self.rate)
        self._clock = clock
        self._tokens = self.burst
        self._last = clock()

    def allow(self, cost: float = 1.0) -> bool:
        """Take `cost` tokens if there are enough; False means the frame is over the limit."""
        if self.rate <= 0:
            return True
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= cost:
            self._tokens -= cost
            return True
        return False


def limiter_for(settings: Any) -> RateLimiter:
    return RateLimiter(settings.max_messages_per_second, settings.message_burst or None)


# -- logs ---------------------------------------------------------------------------------------
# Query strings carry credentials (PartySocket's `query: {token}`, signed URLs): uvicorn logs
# every request line and WebSocket upgrade with its query string, so values are masked.
_QUERY_VALUE = re.compile(r"([?&][^=&\s\"'#]+=)[^&\s\"'#]*")
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")
_REDACTED = "***"


def redact(text: str) -> str:
    """Mask query-string values and bearer tokens in one log message."""
    if "=" in text:
        text = _QUERY_VALUE.sub(lambda m: m.group(1) + _REDACTED, text)
    if "earer" in text:
        text = _BEARER.sub(lambda m: m.group(1) + _REDACTED, text)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites string arguments (and the format string) of each record through `redact`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {
                k: redact(v) if isinstance(v, str) else v for k, v in record.args.items()
            }
        return True


_FILTER = RedactingFilter()
REDACTED_LOGGERS = ("uvicorn.access", "uvicorn.error")


def install_log_redaction() -> None:
    """Attach the filter (idempotent) to uvicorn's request-line loggers and to the root
    logger's handlers, which every `callroom.*` record reaches. A logger's own filters apply
    only to records logged on it, hence the handlers."""
    targets: list[logging.Filterer] = [logging.getLogger(n) for n in REDACTED_LOGGERS]
    targets.extend(logging.getLogger().handlers)
    for target in targets:
        if _FILTER not in target.filters:
            target.addFilter(_FILTER)


# -- process figures ----------------------------------------------------------------------------
def open_fd_count() -> int | None:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


def rss_kb() -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def process_figures() -> dict[str, Any]:
    """Tasks on this loop, open file descriptors and resident memory of this process."""
    return {
        "tasks": len(asyncio.all_tasks()),
        "open_fds": open_fd_count(),
        "rss_kb": rss_kb(),
        "pid": os.getpid(),
    }
