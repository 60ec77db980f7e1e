"""Run a real callroom server for tests: a subprocess (`python -m callroom.cli serve …`) that
can be stopped with SIGTERM, killed with SIGKILL and restarted on the same data directory and
port, or an in-process uvicorn server for tests that need to look inside the host.

Every wait here is bounded; nothing sleeps for a fixed time to "let things settle".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import uvicorn
import websockets
from starlette.applications import Starlette

from callroom.agent import Agent
from callroom.config import Settings
from callroom.host import AgentHost
from callroom.server.app import create_app

ROOT = Path(__file__).resolve().parents[2]
CONFORMANCE_APP = ROOT / "examples" / "conformance.py"
FEATURES_APP = Path(__file__).resolve().parent / "apps" / "features.py"

T = TypeVar("T")

# A frame read that takes longer than this means the test failed, not that the box is slow.
RECV_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """`callroom serve <app>` in a subprocess, on a fixed port and data dir across restarts."""

    def __init__(
        self,
        app: Path,
        data_dir: Path,
        *,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.app = app
        self.data_dir = data_dir
        self.port = port or free_port()
        self.env_overrides = dict(env or {})
        self.log_path = log_path or data_dir.parent / f"server-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    # -- addresses --------------------------------------------------------------------------
    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}"

    def ws_url(self, agent: str, name: str, query: str = "") -> str:
        url = f"ws://{self.host}/agents/{agent}/{name}"
        return f"{url}?{query}" if query else url

    # -- lifecycle --------------------------------------------------------------------------
    def start(self, timeout: float = 20.0) -> None:
        if self.running:
            raise RuntimeError("server already running")
        env = {**os.environ, **self.env_overrides}
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        log.write(f"\n===== start #{self.starts + 1} =====\n".encode())
        log.flush()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "callroom.cli",
                "serve",
                str(self.app),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--data-dir",
                str(self.data_dir),
            ],
            cwd=str(ROOT),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.starts += 1
        self._wait_healthy(timeout)

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.proc.returncode} during start-up:\n{self.log()}"
                )
            with contextlib.suppress(OSError):
                if self.health(timeout=1.0).get("ok"):
                    return
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"server not healthy after {timeout}s:\n{self.log()}")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> int:
        """Graceful stop (SIGTERM); returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise RuntimeError(f"server ignored SIGTERM for {timeout}s:\n{self.log()}") from None

    def terminate_nowait(self) -> None:
        """Send SIGTERM and return at once (the test watches what clients see meanwhile)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """Crash (SIGKILL): no drain, no clean-up; what was committed must survive."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self, *, kill: bool = False, timeout: float = 20.0) -> None:
        if kill:
            self.kill()
        elif self.running:
            self.stop()
        self.start(timeout)

    def close(self) -> None:
        """Fixture teardown: stop politely, then firmly."""
        if self.running:
            try:
                self.stop(timeout=10.0)
            except RuntimeError:
                self.kill()

    # -- inspection -------------------------------------------------------------------------
    def health(self, timeout: float = 5.0) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.http_url}/healthz", timeout=timeout) as resp:
            data: dict[str, Any] = json.loads(resp.read())
            return data

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-20_000:]
        except OSError:
            return "<no log>"

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- waiting helpers ------------------------------------------------------------------------
def wait_until(
    predicate: Callable[[], T], *, timeout: float = 10.0, interval: float = 0.05, what: str = ""
) -> T:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: T = predicate()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)
        last = predicate()
    return last


async def async_wait_until(
    predicate: Callable[[], T], *, limit: float = 10.0, interval: float = 0.05, what: str = ""
) -> T:
    deadline = time.monotonic() + limit
    last: T = predicate()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit}s waiting for {what or predicate}")
        await asyncio.sleep(interval)
        last = predicate()
    return last


# -- a tiny protocol client on top of `websockets` ----------------------------------------
class Client:
    """A raw client: sends frames, reads frames with a timeout, makes RPC calls."""

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self._ids = 0
        self.skipped: list[dict[str, Any]] = []

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(
        cls, url: str, *, handshake: bool = True, max_size: int | None = 16 * 1024 * 1024
    ) -> AsyncIterator[Client]:
        async with asyncio.timeout(RECV_TIMEOUT):
            ws = await websockets.connect(url, max_size=max_size, open_timeout=RECV_TIMEOUT)
        client = cls(ws)
        try:
            if handshake:
                await client.read_handshake()
            yield client
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(RECV_TIMEOUT):
                    await ws.close()

    async def read_handshake(self) -> list[dict[str, Any]]:
        """Identity, (state,) MCP — checks the order the npm client relies on."""
        frames = [await self.recv_json()]
        assert frames[0]["type"] == "cf_agent_identity", frames
        if frames[0].get("stateFollows"):
            frames.append(await self.recv_json())
            assert frames[1]["type"] == "cf_agent_state", frames
        frames.append(await self.recv_json())
        assert frames[-1]["type"] == "cf_agent_mcp_servers", frames
        return frames

    async def send(self, data: str | bytes | dict[str, Any]) -> None:
        await self.ws.send(json.dumps(data) if isinstance(data, dict) else data)

    async def recv(self, limit: float = RECV_TIMEOUT) -> str | bytes:
        async with asyncio.timeout(limit):
            return await self.ws.recv()

    async def recv_json(self, limit: float = RECV_TIMEOUT) -> dict[str, Any]:
        data = await self.recv(limit)
        assert isinstance(data, str), f"expected a text frame, got {data!r}"
        obj: dict[str, Any] = json.loads(data)
        return obj

    async def recv_until(
        self, predicate: Callable[[dict[str, Any]], bool], limit: float = RECV_TIMEOUT
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Read until a frame matches; returns it and the frames skipped on the way."""
        skipped: list[dict[str, Any]] = []
        async with asyncio.timeout(limit):
            while True:
                frame = await self.recv_json()
                if predicate(frame):
                    return frame, skipped
                skipped.append(frame)

    def next_id(self) -> str:
        self._ids += 1
        return f"req-{self._ids}"

    async def rpc_frames(
        self, method: str, *args: Any, skip_other: bool = False
    ) -> list[dict[str, Any]]:
        """Send one RPC; return every `rpc` frame of it up to the final one.

        Any other frame in between fails the test unless `skip_other` (then it is kept in
        `self.skipped`): tests that expect broadcasts read them explicitly."""
        rid = self.next_id()
        await self.send({"type": "rpc", "id": rid, "method": method, "args": list(args)})
        frames: list[dict[str, Any]] = []
        while True:
            frame = await self.recv_json()
            if not (frame.get("type") == "rpc" and frame.get("id") == rid):
                assert skip_other, f"unexpected frame while waiting for rpc {rid}: {frame}"
                self.skipped.append(frame)
                continue
            frames.append(frame)
            if not frame["success"] or frame.get("done"):
                return frames

    async def call(self, method: str, *args: Any, skip_other: bool = False) -> Any:
        frames = await self.rpc_frames(method, *args, skip_other=skip_other)
        last = frames[-1]
        if not last["success"]:
            raise RpcFailed(last["error"])
        assert len(frames) == 1, frames
        return last["result"]

    async def closed(self, limit: float = RECV_TIMEOUT) -> websockets.ConnectionClosed:
        """Read until the server closes; return the close exception (code, reason)."""
        async with asyncio.timeout(limit):
            while True:
                try:
                    await self.ws.recv()
                except websockets.ConnectionClosed as exc:
                    return exc


class RpcFailed(Exception):
    pass


# -- in-process server -----------------------------------------------------------------------
class InProcessServer:
    """uvicorn in a task of the test's own event loop; `host` is the live `AgentHost`."""

    def __init__(self, app: Starlette, port: int) -> None:
        self.app = app
        self.port = port
        self.host: AgentHost = app.state.host
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
        )
        self.task: asyncio.Task[None] | None = None

    def ws_url(self, agent: str, name: str, query: str = "") -> str:
        url = f"ws://127.0.0.1:{self.port}/agents/{agent}/{name}"
        return f"{url}?{query}" if query else url

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def inprocess_server(
    agents: Iterable[type[Agent]], data_dir: Path, **settings: Any
) -> AsyncIterator[InProcessServer]:
    app = create_app(list(agents), Settings(data_dir=data_dir, **settings))
    srv = InProcessServer(app, free_port())
    srv.task = asyncio.create_task(srv.server.serve())
    try:
        await async_wait_until(
            lambda: srv.server.started or srv.task.done(),  # type: ignore[union-attr]
            limit=10.0,
            what="in-process server start",
        )
        if srv.task.done():
            srv.task.result()
        yield srv
    finally:
        srv.server.should_exit = True
        async with asyncio.timeout(15.0):
            await srv.task
