"""A fake OpenAI-compatible chat server on loopback, for tests and benchmarks.

Real HTTP and real SSE, so the client code under test (`OpenAICompatLLM`) runs exactly as in
production, and benchmarks measure the framework with a model of known, fixed speed:
time to first token `ttft_ms` (default 100 ms), then one word-sized token every `token_ms`
(default 10 ms). Replies are a fixed text, or a script (text, tool calls, HTTP errors, a
connection dropped mid-stream) consumed one per request.

    python -m callroom.providers.llm.fake_server --port 8099 --ttft-ms 100 --token-ms 10 \\
        --reply "Hello there."

In a test: `with FakeLLMServer(replies=[...]) as srv: OpenAICompatLLM(base_url=srv.base_url,
model="fake")`. The server runs in a background thread with its own event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from callroom.providers.base import ToolCall
from callroom.providers.llm.scripted import split_tokens

__all__ = ["DEFAULT_REPLY", "BackgroundServer", "FakeLLMServer", "FakeReply", "main"]

DEFAULT_REPLY = "Hello! This is the callroom fake model. How can I help you today?"


@dataclass(frozen=True)
class FakeReply:
    """One scripted answer. Timing fields left as None use the server's defaults.

    `status` >= 400 answers with an OpenAI-shaped error (`error_message`); `drop_after`
    closes the connection abruptly after that many tokens, to test mid-stream failures.
    """

    text: str = ""
    tool_calls: Sequence[ToolCall] = ()
    status: int = 200
    error_message: str = "fake server error"
    finish_reason: str | None = None
    ttft_ms: float | None = None
    token_ms: float | None = None
    drop_after: int | None = None


class _Dropped(Exception):
    """Raised inside the response stream: uvicorn aborts the connection mid-body."""


class FakeLLMServer:
    """The server's state (script, received requests) and its lifecycle in a thread."""

    def __init__(
        self,
        *,
        reply: str = DEFAULT_REPLY,
        replies: Iterable[FakeReply | str | ToolCall] = (),
        ttft_ms: float = 100.0,
        token_ms: float = 10.0,
        api_key: str | None = None,
        model: str = "fake-llm",
        tool_arg_chunk: int = 8,
        keep_requests: int = 1000,
    ) -> None:
        """`api_key`, if set, is required as a bearer token (else HTTP 401, echoing what was
        sent — harsher than OpenAI, so tests prove the client never repeats a key)."""
        self.default = FakeReply(text=reply)
        self.replies: collections.deque[FakeReply] = collections.deque(
            self._normalise(r) for r in replies
        )
        self.ttft_ms = ttft_ms
        self.token_ms = token_ms
        self.api_key = api_key
        self.model = model
        self.tool_arg_chunk = max(1, tool_arg_chunk)
        self.requests: collections.deque[dict[str, Any]] = collections.deque(maxlen=keep_requests)
        """JSON bodies of the chat requests received, in order (the last `keep_requests`)."""
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
            ]
        )
        self._server: BackgroundServer | None = None
        self.host = "127.0.0.1"
        self.port: int | None = None

    @staticmethod
    def _normalise(item: FakeReply | str | ToolCall) -> FakeReply:
        if isinstance(item, FakeReply):
            return item
        if isinstance(item, ToolCall):
            return FakeReply(tool_calls=(item,))
        return FakeReply(text=item)

    def add(self, *replies: FakeReply | str | ToolCall) -> None:
        """Queue more scripted replies."""
        self.replies.extend(self._normalise(r) for r in replies)

    @property
    def base_url(self) -> str:
        """OpenAI-style base URL (ends in /v1), for `OpenAICompatLLM(base_url=...)`."""
        if self.port is None:
            raise RuntimeError("the fake server is not started")
        return f"http://{self.host}:{self.port}/v1"

    # -- HTTP -----------------------------------------------------------------------------------
    async def _models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": self.model, "object": "model"}]})

    async def _chat(self, request: Request) -> Response:
        if self.api_key is not None:
            sent = request.headers.get("authorization", "")
            if sent != f"Bearer {self.api_key}":
                return JSONResponse(
                    {
                        "error": {
                            "message": f"Incorrect API key provided: {sent}",
                            "type": "invalid_request_error",
                            "code": "invalid_api_key",
                        }
                    },
                    status_code=401,
                )
        try:
            body = json.loads(await request.body())
        except ValueError:
            return JSONResponse({"error": {"message": "invalid JSON body"}}, status_code=400)
        self.requests.append(body)
        reply = self.replies.popleft() if self.replies else self.default
        if reply.status >= 400:
            return JSONResponse(
                {"error": {"message": reply.error_message, "type": "server_error"}},
                status_code=reply.status,
            )
        ttft = (reply.ttft_ms if reply.ttft_ms is not None else self.ttft_ms) / 1000
        token = (reply.token_ms if reply.token_ms is not None else self.token_ms) / 1000
        if not body.get("stream"):
            await asyncio.sleep(ttft)
            return JSONResponse(self._completion(reply))
        usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return StreamingResponse(
            self._sse(reply, ttft, token, usage),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )

    def _completion(self, reply: FakeReply) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
        if reply.tool_calls:
            message["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for c in reply.tool_calls
            ]
        reason = reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [{"index": 0, "message": message, "finish_reason": reason}],
            "usage": self._usage(reply),
        }

    @staticmethod
    def _usage(reply: FakeReply) -> dict[str, int]:
        n = len(split_tokens(reply.text)) + sum(len(c.arguments) // 4 + 1 for c in reply.tool_calls)
        return {"prompt_tokens": 10, "completion_tokens": n, "total_tokens": 10 + n}

    async def _sse(
        self, reply: FakeReply, ttft: float, token: float, usage: bool
    ) -> AsyncIterator[bytes]:
        cid = f"chatcmpl-{uuid.uuid4().hex[:12]}"
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            doc = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": self.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return f"data: {json.dumps(doc)}\n\n".encode()

        deltas: list[dict[str, Any]] = [{"content": t} for t in split_tokens(reply.text)]
        for i, call in enumerate(reply.tool_calls):
            deltas.append(
                {
                    "tool_calls": [
                        {
                            "index": i,
                            "id": call.id,
                            "type": "function",
                            "function": {"name": call.name, "arguments": ""},
                        }
                    ]
                }
            )
            args = call.arguments
            for start in range(0, len(args), self.tool_arg_chunk):
                piece = args[start : start + self.tool_arg_chunk]
                deltas.append({"tool_calls": [{"index": i, "function": {"arguments": piece}}]})
        await asyncio.sleep(ttft)
        for n, delta in enumerate(deltas):
            if reply.drop_after is not None and n >= reply.drop_after:
                raise _Dropped
            if n == 0:
                delta = {"role": "assistant", **delta}
            else:
                await asyncio.sleep(token)
            yield chunk(delta)
        if not deltas:
            yield chunk({"role": "assistant", "content": ""})
        reason = reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")
        yield chunk({}, reason)
        if usage:
            doc = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": self.model,
                "choices": [],
                "usage": self._usage(reply),
            }
            yield f"data: {json.dumps(doc)}\n\n".encode()
        yield b"data: [DONE]\n\n"

    # -- lifecycle ------------------------------------------------------------------------------
    def start(
        self, *, host: str = "127.0.0.1", port: int = 0, sock: socket.socket | None = None
    ) -> str:
        """Serve in a background thread; returns `base_url` once the server accepts.

        `sock`: an already bound socket to serve on (it need not be listening yet) — a test
        can hold a port that refuses connections and start serving on it later.
        """
        if self._server is not None:
            raise RuntimeError("already started")
        self._server = BackgroundServer(self.app)
        self.host, self.port = self._server.start(host=host, port=port, sock=sock)
        return self.base_url

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> FakeLLMServer:
        if self._server is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class BackgroundServer:
    """Any ASGI app served by uvicorn on loopback from a daemon thread (tests use it for
    their own fake providers)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.address: tuple[str, int] | None = None

    def start(
        self, *, host: str = "127.0.0.1", port: int = 0, sock: socket.socket | None = None
    ) -> tuple[str, int]:
        """Start serving and return (host, port) once connections are accepted."""
        if self._thread is not None:
            raise RuntimeError("already started")
        if sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        bound_host, bound_port = sock.getsockname()[:2]
        self.address = (bound_host, bound_port)
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=1,
            access_log=False,
        )
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="callroom-test-server", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the background server did not start")
            time.sleep(0.005)
        return self.address

    @property
    def url(self) -> str:
        if self.address is None:
            raise RuntimeError("not started")
        return f"http://{self.address[0]}:{self.address[1]}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None
        self._thread = None

    def __enter__(self) -> BackgroundServer:
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: serve until interrupted (benchmarks run it as a separate process)."""
    parser = argparse.ArgumentParser(
        prog="python -m callroom.providers.llm.fake_server",
        description="Fake OpenAI-compatible streaming chat server with fixed timing.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--ttft-ms", type=float, default=100.0, help="time to first token")
    parser.add_argument("--token-ms", type=float, default=10.0, help="delay between tokens")
    parser.add_argument("--reply", default=DEFAULT_REPLY, help="the text every request gets")
    parser.add_argument("--api-key", default=None, help="require this bearer token")
    args = parser.parse_args(argv)
    srv = FakeLLMServer(
        reply=args.reply, ttft_ms=args.ttft_ms, token_ms=args.token_ms, api_key=args.api_key
    )
    print(f"fake LLM server on http://{args.host}:{args.port}/v1", flush=True)
    uvicorn.run(
        srv.app,
        host=args.host,
        port=args.port,
        log_level="warning",
        lifespan="off",
        access_log=False,
    )


if __name__ == "__main__":
    main()
