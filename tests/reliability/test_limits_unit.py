"""The pieces behind the limits, alone: token bucket, log redaction, send-queue bounds."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from callroom.connection import Connection
from callroom.protocol import core
from callroom.protocol import twilio as tp
from callroom.server.limits import RateLimiter, RedactingFilter, redact


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_token_bucket_allows_the_rate_and_a_burst_then_refuses() -> None:
    clock = FakeClock()
    bucket = RateLimiter(50, 100, clock=clock)
    assert all(bucket.allow() for _ in range(100))  # the burst
    assert not bucket.allow()
    clock.t += 1.0  # one second refills 50
    assert sum(bucket.allow() for _ in range(80)) == 50
    # a steady stream under the rate (a 40 frames/s microphone) never trips it, even
    # starting from an empty bucket
    for _ in range(5000):
        clock.t += 0.025
        assert bucket.allow()


def test_token_bucket_zero_rate_is_off() -> None:
    bucket = RateLimiter(0)
    assert all(bucket.allow() for _ in range(100_000))


@pytest.mark.parametrize(
    ("line", "secret"),
    [
        ('127.0.0.1:1 - "WebSocket /agents/a/b?token=tok-123&_pk=x" [accepted]', "tok-123"),
        ('"GET /agents/a/b?x=1&apikey=sk-live-1 HTTP/1.1" 200', "sk-live-1"),
        ("upstream said: Authorization: Bearer abc.def.ghi", "abc.def.ghi"),
    ],
)
def test_redact_masks_query_values_and_bearer_tokens(line: str, secret: str) -> None:
    out = redact(line)
    assert secret not in out
    assert "***" in out


def test_redacting_filter_rewrites_record_arguments() -> None:
    record = logging.LogRecord(
        "uvicorn.error",
        logging.INFO,
        __file__,
        1,
        '%s - "WebSocket %s" [accepted]',
        ("127.0.0.1:5", "/agents/v/alice?token=tok-9"),
        None,
    )
    RedactingFilter().filter(record)
    assert "tok-9" not in record.getMessage()
    assert "/agents/v/alice?token=***" in record.getMessage()


def test_lone_surrogates_are_escaped_not_fatal() -> None:
    """JSON allows "\\ud800" and JS strings hold it; UTF-8 cannot. Such a frame must still be
    sendable (escaped), or the connection's writer would die on it."""
    for dumps in (core.dumps, tp.dumps):
        text = dumps({"text": "caf\u00e9 \ud800"})
        text.encode("utf-8")  # sendable
        assert "\\ud800" in text


class _FakeWS:
    query_params: dict[str, str] = {}
    application_state = None

    def __init__(self) -> None:
        self.sent: list[Any] = []
        self.gate = asyncio.Event()

    async def send_bytes(self, data: bytes) -> None:
        await self.gate.wait()
        self.sent.append(data)

    async def send_text(self, data: str) -> None:
        await self.gate.wait()
        self.sent.append(data)

    async def close(self, code: int = 1000, reason: str = "") -> None: ...


async def test_queue_bound_in_bytes_closes_a_client_that_does_not_read() -> None:
    ws = _FakeWS()
    conn = Connection(ws, "c1", max_queue=1000, max_bytes=10_000)  # type: ignore[arg-type]
    conn.start()
    for _ in range(9):
        conn.send(b"x" * 1000)
    assert not conn.closed
    conn.send(b"x" * 5000)  # past 10 000 bytes queued
    assert conn.closed
    await asyncio.sleep(0)


async def test_wait_drained_paces_a_reading_client_and_gives_up_on_a_stalled_one() -> None:
    ws = _FakeWS()
    conn = Connection(ws, "c2", max_queue=8, max_bytes=1 << 20)  # type: ignore[arg-type]
    conn.start()
    for _ in range(6):  # the writer takes one and blocks on it; 5 wait: over half of 8
        conn.send(b"a")
    await asyncio.sleep(0)
    assert conn.congested
    waiter = asyncio.create_task(conn.wait_drained(limit=5.0))
    await asyncio.sleep(0.01)
    assert not waiter.done()  # nothing written yet: the producer waits
    ws.gate.set()  # the client reads
    await asyncio.wait_for(waiter, 1.0)
    ws.gate.clear()
    for _ in range(8):
        conn.send(b"b")
    await conn.wait_drained(limit=0.05)  # stalled: gives up after the limit ...
    await conn.wait_drained(limit=5.0)  # ... and for good: no more waiting
    assert conn._stalled
