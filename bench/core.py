"""Core benchmark: RPC round trip, wake from hibernation, memory per agent.

    .venv/bin/python bench/core.py [--agents 1000] [--rpc 5000] [--profile]

What it does (everything over real loopback WebSockets, nothing mocked):

1. Starts a real server in a **subprocess**: this file re-run with `--serve-child`, which
   builds `create_app([Counter])` from `examples/conformance.py` and runs it with
   `callroom.cli.serve` (the same uvicorn config as `callroom serve`). The child adds a few
   bench-only routes under `/_bench/` (they are not part of callroom):
   `POST /_bench/trim` (gc.collect + glibc malloc_trim(0)), `POST /_bench/hibernate`
   (`host.hibernate_idle_async(now=+inf)`: the idle sweep, forced now),
   `GET|DELETE /_bench/wake_times` (`host.wake_times`), `GET /_bench/stats`,
   `POST /_bench/profile/{start,stop}` (cProfile of the event-loop thread) and a plain
   Starlette echo WebSocket `/_bench/echo` (the floor: uvicorn + Starlette + client, no callroom).
   `idle_seconds` is set to an hour so only the forced sweeps hibernate anything.
2. RPC: `--rpc` sequential `add` calls on one connection after a warm-up, timed from `send`
   to the matching reply (client JSON parse and the Python `websockets` client are
   *included*), with and without permessage-deflate, next to the same number of round trips
   on the echo route and on an echo that replies through callroom's `Connection` (its send
   queue + writer task). The variants are interleaved in `--rounds` rounds; the server's and
   the client's CPU time per call are recorded (/proc/<pid>/stat). Then a pipelined variant
   (`--window` requests in flight).
3. Agents: `--agents` cold creates (connect + handshake + one `add` + close, sequential),
   forced hibernation, `--agents` connections (each connect wakes its agent), forced
   hibernation with the sockets open, then the first RPC on each socket (wake on RPC),
   then a second RPC on each (warm, for comparison).
4. Memory: server VmRSS (read by this process from /proc/<pid>/status) after `/_bench/trim`
   at each stage; raw (untrimmed) values are kept in the JSON too.

Options worth knowing: `--compression none` (the agent phases without permessage-deflate),
`--server-path DIR` (e.g. a directory holding uvloop: uvicorn then picks it for the server
only), `--profile` (cProfile tables of the server for the RPC and wake phases). The server
child exits by itself if this process dies (parent-death signal + lifetime bound).

Results go to `bench/results/<--name, default core>.{json,md}` through `bench/common.py`.
The client runs with its garbage collector paused inside timed loops (collections between
loops) so client GC pauses do not land in server latency figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

ROOT = Path(__file__).resolve().parent.parent
APP_FILE = ROOT / "examples" / "conformance.py"
AGENT = "counter"

TARGET_RPC_P50_MS = 0.3
TARGET_WAKE_P99_MS = 10.0
TARGET_HIBERNATED_KIB = 50.0


# ================================================================================================
# child: the server under test
# ================================================================================================
def _watch_parent(lifetime_s: float) -> None:
    """Make the child stop by itself: SIGINT when the parent goes away or after `lifetime_s`."""
    import ctypes
    import ctypes.util
    import threading

    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    def watch() -> None:
        for _ in range(max(1, int(lifetime_s))):
            time.sleep(1.0)
            if os.getppid() != parent:
                break
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=watch, name="bench-watchdog", daemon=True).start()


def serve_child(port: int, data_dir: Path, lifetime_s: float) -> None:
    """Run the conformance agents on uvicorn exactly as `callroom serve` does, plus bench routes."""
    import cProfile
    import io
    import pstats

    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    from callroom.cli import load_module, serve
    from callroom.config import Settings
    from callroom.connection import Connection
    from callroom.server.app import create_app

    _watch_parent(lifetime_s)
    module = load_module(str(APP_FILE))
    # The pipelined RPC phase sends ~14k frames/s on one socket: lift the per-connection
    # rate limit (a protection for real clients, not part of what is measured here).
    settings = Settings(
        data_dir=data_dir, idle_seconds=3600.0, log_level="WARNING", max_messages_per_second=0
    )
    profiler: dict[str, cProfile.Profile] = {}

    def host_of(request: Request) -> Any:
        return request.app.state.host

    async def trim(request: Request) -> JSONResponse:
        return JSONResponse(common.trim_memory())

    async def hibernate(request: Request) -> JSONResponse:
        host = host_of(request)
        t0 = time.perf_counter()
        dropped = await host.hibernate_idle_async(now=time.monotonic() + 1e12)
        return JSONResponse(
            {
                "dropped": dropped,
                "seconds": time.perf_counter() - t0,
                "live": host.live_count,
                "slots": len(host._slots),
            }
        )

    async def stats(request: Request) -> JSONResponse:
        host = host_of(request)
        return JSONResponse(
            {
                "live": host.live_count,
                "slots": len(host._slots),
                "connections": sum(len(s.connections) for s in host._slots.values()),
                "tasks": len(asyncio.all_tasks()),
                "fds": common.open_fds(),
                "rss_kb": common.rss_kb(),
                "gc_counts": gc.get_count(),
                "loop": type(asyncio.get_running_loop()).__module__,
            }
        )

    async def wake_times(request: Request) -> JSONResponse:
        host = host_of(request)
        values = list(host.wake_times)
        if request.method == "DELETE":
            host.wake_times.clear()
        return JSONResponse({"wake_times": values})

    async def profile_start(request: Request) -> JSONResponse:
        prof = cProfile.Profile()
        profiler["p"] = prof
        prof.enable()
        return JSONResponse({"ok": True})

    async def profile_stop(request: Request) -> JSONResponse:
        prof = profiler.pop("p", None)
        if prof is None:
            return JSONResponse({"text": ""})
        prof.disable()
        out: dict[str, str] = {}
        for key in ("tottime", "cumulative"):
            buf = io.StringIO()
            st = pstats.Stats(prof, stream=buf)
            st.sort_stats(key).print_stats(28)
            out[key] = _trim_pstats(buf.getvalue())
        return JSONResponse(out)

    async def echo(ws: WebSocket) -> None:
        await ws.accept()
        try:
            for _ in range(10_000_000):  # bounded; the client closes long before
                await ws.send_text(await ws.receive_text())
        except WebSocketDisconnect:
            return

    async def echo_queued(ws: WebSocket) -> None:
        """The echo, but replies go through callroom's `Connection` (queue + writer task)."""
        await ws.accept()
        conn = Connection(ws, "echo", max_queue=settings.max_send_queue)
        conn.start()
        try:
            for _ in range(10_000_000):
                conn.send(await ws.receive_text())
        except WebSocketDisconnect:
            return
        finally:
            conn.closed = True
            await conn.aclose_writer()

    routes = [
        WebSocketRoute("/_bench/echo-queued", echo_queued),
        Route("/_bench/trim", trim, methods=["POST"]),
        Route("/_bench/hibernate", hibernate, methods=["POST"]),
        Route("/_bench/stats", stats),
        Route("/_bench/wake_times", wake_times, methods=["GET", "DELETE"]),
        Route("/_bench/profile/start", profile_start, methods=["POST"]),
        Route("/_bench/profile/stop", profile_stop, methods=["POST"]),
        WebSocketRoute("/_bench/echo", echo),
    ]
    app = create_app([module.Counter], settings, routes=routes)
    serve(app, "127.0.0.1", port, log_level="warning")


def _trim_pstats(text: str) -> str:
    """pstats output from its header line on, with long path prefixes cut to the package."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("ncalls"):
            lines = lines[i:]
            break
    return "\n".join(
        re.sub(r"\S*/(?:site-packages|src|lib/python3\.\d+)/", "", line)
        for line in lines
        if line.strip()
    )


# ================================================================================================
# parent: the client and the measurements
# ================================================================================================
class Server:
    """The child process plus a tiny blocking HTTP client for its `/_bench` routes."""

    def __init__(
        self, port: int, data_dir: Path, log_path: Path, extra_path: Path | None = None
    ) -> None:
        self.extra_path = extra_path
        self.lifetime_s = 3600.0
        self.port = port
        self.data_dir = data_dir
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def ws_url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def start(self, timeout: float = 60.0) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p
            for p in (
                str(self.extra_path) if self.extra_path else "",
                str(ROOT / "src"),
                env.get("PYTHONPATH", ""),
            )
            if p
        )
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--serve-child",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            "--timeout",
            str(self.lifetime_s),
        ]
        log = open(self.log_path, "wb")  # closed when this process exits
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log_tail()}")
            try:
                self.request("GET", "/healthz", timeout=1.0)
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"server did not become ready in {timeout}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    def request(self, method: str, path: str, timeout: float = 60.0) -> Any:
        url = f"http://127.0.0.1:{self.port}{path}"  # loopback only
        req = urllib.request.Request(url, method=method, data=None if method == "GET" else b"")
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())

    async def arequest(self, method: str, path: str) -> Any:
        return await asyncio.to_thread(self.request, method, path, 120.0)

    def rss(self) -> int:
        return common.rss_kb(self.pid)

    async def memory(self) -> dict[str, int]:
        """RSS before and after asking the server to gc.collect + malloc_trim."""
        raw = self.rss()
        trim = await self.arequest("POST", "/_bench/trim")
        await asyncio.sleep(0.2)
        status = common.proc_status(self.pid)
        return {
            "raw_kb": raw,
            "after_gc_kb": trim["rss_after_gc_kb"],
            "rss_kb": status["VmRSS"],
            **{k: v for k, v in status.items() if k != "VmRSS"},
        }


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def gc_paused() -> Any:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def rpc_frame(call_id: str, a: int, b: int = 1) -> str:
    return json.dumps(
        {"type": "rpc", "id": call_id, "method": "add", "args": [a, b]}, separators=(",", ":")
    )


async def connect(url: str, compression: str | None) -> Any:
    from websockets.asyncio.client import connect as ws_connect

    return await ws_connect(
        url, compression=compression, max_size=2**20, open_timeout=30, close_timeout=5
    )


async def read_handshake(ws: Any) -> dict[str, Any]:
    """Read the core handshake (identity, state when announced, MCP servers)."""
    first = json.loads(await ws.recv())
    if first.get("type") != "cf_agent_identity":
        raise RuntimeError(f"unexpected first frame {first}")
    expected = 2 if first.get("stateFollows") else 1
    for _ in range(expected):
        json.loads(await ws.recv())
    return first


async def call_add(ws: Any, call_id: str, a: int) -> None:
    await ws.send(rpc_frame(call_id, a))
    for _ in range(100):  # bounded: skip unrelated frames (there are none for `add`)
        msg = json.loads(await ws.recv())
        if msg.get("id") == call_id and msg.get("done", True):
            if not msg.get("success") or msg.get("result") != a + 1:
                raise RuntimeError(f"bad reply {msg}")
            return
    raise RuntimeError("no reply to rpc within 100 frames")


async def timed_sequential(ws: Any, n: int, prefix: str) -> list[float]:
    out: list[float] = []
    perf = time.perf_counter
    with gc_paused():
        for i in range(n):
            t0 = perf()
            await call_add(ws, f"{prefix}{i}", i)
            out.append(perf() - t0)
    return out


async def timed_echo(ws: Any, n: int) -> list[float]:
    out: list[float] = []
    perf = time.perf_counter
    with gc_paused():
        for i in range(n):
            frame = json.dumps(
                {"type": "rpc", "id": f"e{i}", "success": True, "result": i, "done": True},
                separators=(",", ":"),
            )
            t0 = perf()
            await ws.send(frame)
            msg = json.loads(await ws.recv())
            out.append(perf() - t0)
            if msg.get("id") != f"e{i}":
                raise RuntimeError("echo out of order")
    return out


async def pipelined(ws: Any, n: int, window: int) -> dict[str, float]:
    """`n` calls with up to `window` in flight; per-call latency includes queueing."""
    perf = time.perf_counter
    sent_at: dict[str, float] = {}
    lat: list[float] = []
    with gc_paused():
        t_start = perf()
        for base in range(0, n, window):
            batch = range(base, min(base + window, n))
            for i in batch:
                cid = f"p{i}"
                sent_at[cid] = perf()
                await ws.send(rpc_frame(cid, i))
            for _ in batch:
                msg = json.loads(await ws.recv())
                lat.append(perf() - sent_at.pop(msg["id"]))
        elapsed = perf() - t_start
    return {
        "calls": n,
        "window": window,
        "seconds": round(elapsed, 4),
        "calls_per_s": round(n / elapsed, 1),
        "amortized_ms_per_call": round(elapsed / n * 1000, 4),
        "latency_ms": common.summary_ms(lat),  # type: ignore[dict-item]
    }


RPC_VARIANTS: tuple[tuple[str, str, str | None], ...] = (
    # (label, path, compression)
    ("rpc_deflate", f"/agents/{AGENT}/bench-rpc-deflate", "deflate"),
    ("rpc_no_compression", f"/agents/{AGENT}/bench-rpc-plain", None),
    ("echo_deflate", "/_bench/echo", "deflate"),
    ("echo_no_compression", "/_bench/echo", None),
    ("echo_queued_no_compression", "/_bench/echo-queued", None),
)


async def bench_rpc(server: Server, args: argparse.Namespace, out: dict[str, Any]) -> None:
    """Sequential round trips on four connections, interleaved in rounds so a burst of load
    from elsewhere on the machine hits every variant alike; CPU seconds of the server process
    and of this client are summed per variant (divide by calls for CPU per round trip)."""
    n, warm, rounds = args.rpc, args.warmup, max(1, args.rounds)
    per_round = [n // rounds + (1 if r < n % rounds else 0) for r in range(rounds)]
    sockets: dict[str, Any] = {}
    samples: dict[str, list[float]] = {label: [] for label, _, _ in RPC_VARIANTS}
    server_cpu = dict.fromkeys(samples, 0.0)
    client_cpu = dict.fromkeys(samples, 0.0)
    rpc: dict[str, Any] = {"rounds": rounds}
    try:
        for label, path, compression in RPC_VARIANTS:
            ws = sockets[label] = await connect(server.ws_url(path), compression)
            if label.startswith("rpc"):
                await read_handshake(ws)
                await timed_sequential(ws, warm, "w")
            else:
                await timed_echo(ws, warm)
        for r, count in enumerate(per_round):
            for label, _, _ in RPC_VARIANTS:
                ws = sockets[label]
                profiling = args.profile and label == "rpc_deflate" and r == 0
                if profiling:
                    await server.arequest("POST", "/_bench/profile/start")
                s0, c0 = common.cpu_seconds(server.pid), time.process_time()
                if label.startswith("rpc"):
                    lat = await timed_sequential(ws, count, f"r{r}-")
                else:
                    lat = await timed_echo(ws, count)
                server_cpu[label] += common.cpu_seconds(server.pid) - s0
                client_cpu[label] += time.process_time() - c0
                samples[label].extend(lat)
                if profiling:
                    out.setdefault("profiles", {})["rpc_sequential"] = await server.arequest(
                        "POST", "/_bench/profile/stop"
                    )
        for label, lat in samples.items():
            rpc[label] = {
                **common.summary_ms(lat),
                "server_cpu_us_per_call": round(server_cpu[label] / len(lat) * 1e6, 1),
                "client_cpu_us_per_call": round(client_cpu[label] / len(lat) * 1e6, 1),
            }
            print(
                f"  {label}: {_fmt(rpc[label])} server_cpu_us="
                f"{rpc[label]['server_cpu_us_per_call']} client_cpu_us="
                f"{rpc[label]['client_cpu_us_per_call']}",
                flush=True,
            )
        if args.window > 1:
            ws = sockets["rpc_deflate"]
            await pipelined(ws, warm, args.window)
            s0 = common.cpu_seconds(server.pid)
            pipe = await pipelined(ws, n, args.window)
            pipe["server_cpu_us_per_call"] = round(
                (common.cpu_seconds(server.pid) - s0) / n * 1e6, 1
            )
            rpc["pipelined_deflate"] = pipe
            print(f"  pipelined: {pipe['calls_per_s']} calls/s", flush=True)
    finally:
        for ws in sockets.values():
            with contextlib.suppress(Exception):
                await ws.close()
    out["rpc"] = rpc


async def bench_agents(server: Server, args: argparse.Namespace, out: dict[str, Any]) -> None:
    n = args.agents
    names = [f"a{i:05d}" for i in range(n)]
    compression = None if args.compression == "none" else "deflate"
    mem: dict[str, Any] = out["memory"]
    agents: dict[str, Any] = {}

    # -- cold create: connect + handshake + first add + close, one agent after another -------
    await server.arequest("DELETE", "/_bench/wake_times")
    connect_lat: list[float] = []
    first_rpc: list[float] = []
    total: list[float] = []
    perf = time.perf_counter
    with gc_paused():
        for i, name in enumerate(names):
            t0 = perf()
            ws = await connect(server.ws_url(f"/agents/{AGENT}/{name}"), compression)
            try:
                await read_handshake(ws)
                t1 = perf()
                await call_add(ws, "c", i)
                t2 = perf()
            finally:
                await ws.close()
            connect_lat.append(t1 - t0)
            first_rpc.append(t2 - t1)
            total.append(t2 - t0)
    created_server = (await server.arequest("DELETE", "/_bench/wake_times"))["wake_times"]
    agents["cold_create"] = {
        "client_connect_handshake_ms": common.summary_ms(connect_lat),
        "client_first_rpc_ms": common.summary_ms(first_rpc),
        "client_total_ms": common.summary_ms(total),
        "server_create_ms": common.summary_ms(created_server),
    }
    print(f"  cold create (server): {_fmt(agents['cold_create']['server_create_ms'])}", flush=True)
    agents["after_create_stats"] = await server.arequest("GET", "/_bench/stats")
    mem["live_no_connections"] = await server.memory()

    # -- hibernate with no connections ---------------------------------------------------------
    agents["hibernate_no_connections"] = await server.arequest("POST", "/_bench/hibernate")
    mem["hibernated_no_connections"] = await server.memory()
    agents["after_hibernate_stats"] = await server.arequest("GET", "/_bench/stats")

    # -- connect to every agent: each connect wakes its agent ----------------------------------
    sockets: list[Any] = []
    try:
        connect_wake: list[float] = []
        with gc_paused():
            for name in names:
                t0 = perf()
                ws = await connect(server.ws_url(f"/agents/{AGENT}/{name}"), compression)
                sockets.append(ws)
                await read_handshake(ws)
                connect_wake.append(perf() - t0)
        woke_server = (await server.arequest("DELETE", "/_bench/wake_times"))["wake_times"]
        agents["wake_on_connect"] = {
            "client_connect_handshake_ms": common.summary_ms(connect_wake),
            "server_wake_ms": common.summary_ms(woke_server),
        }
        agents["connected_live_stats"] = await server.arequest("GET", "/_bench/stats")
        mem["connected_live"] = await server.memory()

        # -- hibernate with the sockets open, then wake each agent with its first RPC -----------
        agents["hibernate_connected"] = await server.arequest("POST", "/_bench/hibernate")
        mem["connected_hibernated"] = await server.memory()
        agents["connected_hibernated_stats"] = await server.arequest("GET", "/_bench/stats")
        if args.profile:
            await server.arequest("POST", "/_bench/profile/start")
        wake_rpc: list[float] = []
        with gc_paused():
            for i, ws in enumerate(sockets):
                t0 = perf()
                await call_add(ws, "w", i)
                wake_rpc.append(perf() - t0)
        if args.profile:
            out.setdefault("profiles", {})["wake_on_rpc"] = await server.arequest(
                "POST", "/_bench/profile/stop"
            )
        woke_rpc_server = (await server.arequest("DELETE", "/_bench/wake_times"))["wake_times"]
        warm_rpc: list[float] = []
        with gc_paused():
            for i, ws in enumerate(sockets):
                t0 = perf()
                await call_add(ws, "x", i)
                warm_rpc.append(perf() - t0)
        agents["wake_on_rpc"] = {
            "client_first_rpc_ms": common.summary_ms(wake_rpc),
            "server_wake_ms": common.summary_ms(woke_rpc_server),
            "client_second_rpc_ms": common.summary_ms(warm_rpc),
        }
        print(
            f"  wake on rpc (client): {_fmt(agents['wake_on_rpc']['client_first_rpc_ms'])}",
            flush=True,
        )
        print(
            f"  wake on rpc (server): {_fmt(agents['wake_on_rpc']['server_wake_ms'])}", flush=True
        )
        # hibernate again so that closing shows whether a close wakes a hibernated agent
        await server.arequest("POST", "/_bench/hibernate")
        await server.arequest("DELETE", "/_bench/wake_times")
    finally:
        t0 = perf()
        for ws in sockets:  # bounded: one close each
            with contextlib.suppress(Exception):
                await ws.close()
        close_s = perf() - t0
    await asyncio.sleep(0.5)
    woke_on_close = (await server.arequest("DELETE", "/_bench/wake_times"))["wake_times"]
    agents["close_all"] = {
        "seconds": round(close_s, 3),
        "agents_woken_by_close": len(woke_on_close),
        "stats_after": await server.arequest("GET", "/_bench/stats"),
    }
    out["agents"] = agents


def _fmt(s: dict[str, Any]) -> str:
    return " ".join(f"{k}={s[k]}" for k in ("n", "p50", "p90", "p99", "max") if k in s)


def build_rows(out: dict[str, Any], n_agents: int) -> tuple[list[common.Row], list[str]]:
    R = common.Row
    rows: list[R] = []
    rpc = out.get("rpc", {})
    for label, what in (
        ("rpc_deflate", "RPC `add` round trip, deflate (browser default)"),
        ("rpc_no_compression", "RPC `add` round trip, no compression"),
        ("echo_deflate", "floor: Starlette echo WS, deflate"),
        ("echo_no_compression", "floor: Starlette echo WS, no compression"),
        (
            "echo_queued_no_compression",
            "echo through callroom `Connection` (queue + writer), no compression",
        ),
    ):
        st = rpc.get(label)
        if not st:
            continue
        is_rpc = label.startswith("rpc")
        rows.append(
            R(
                f"{what} p50",
                st["p50"],
                "ms",
                f"≤ {TARGET_RPC_P50_MS} ms" if is_rpc else "",
                st["p50"] <= TARGET_RPC_P50_MS if is_rpc else None,
                f"p90 {st['p90']:.3f}, p99 {st['p99']:.3f}; n={st['n']}; CPU/call server "
                f"{st['server_cpu_us_per_call']:.0f} µs, client "
                f"{st['client_cpu_us_per_call']:.0f} µs",
            )
        )
    pipe = rpc.get("pipelined_deflate")
    if pipe:
        rows.append(
            R(
                f"RPC pipelined (window {pipe['window']})",
                pipe["calls_per_s"],
                "calls/s",
                "",
                None,
                f"{pipe['amortized_ms_per_call']:.3f} ms/call amortized; server "
                f"CPU {pipe['server_cpu_us_per_call']:.0f} µs/call",
            )
        )
    ag = out.get("agents", {})
    cold = ag.get("cold_create")
    if cold:
        c, s = cold["client_total_ms"], cold["server_create_ms"]
        rows.append(
            R(
                "cold create, client (connect+handshake+1st RPC) p50 / p99",
                f"{c['p50']:.2f} / {c['p99']:.2f}",
                "ms",
            )
        )
        rows.append(
            R(
                "cold create, server (`host.get`) p50 / p99",
                f"{s['p50']:.2f} / {s['p99']:.2f}",
                "ms",
                "",
                None,
                "new SQLite file + schema",
            )
        )
    woc = ag.get("wake_on_connect")
    if woc:
        c, s = woc["client_connect_handshake_ms"], woc["server_wake_ms"]
        rows.append(
            R(
                "wake on connect, client (connect+handshake) p50 / p99",
                f"{c['p50']:.2f} / {c['p99']:.2f}",
                "ms",
            )
        )
        rows.append(
            R(
                "wake on connect, server p50 / p99",
                f"{s['p50']:.2f} / {s['p99']:.2f}",
                "ms",
                f"≤ {TARGET_WAKE_P99_MS} ms (p99)",
                s["p99"] <= TARGET_WAKE_P99_MS,
            )
        )
    wor = ag.get("wake_on_rpc")
    if wor:
        c, s, w = wor["client_first_rpc_ms"], wor["server_wake_ms"], wor["client_second_rpc_ms"]
        rows.append(
            R(
                "wake on 1st RPC, client p50 / p99",
                f"{c['p50']:.2f} / {c['p99']:.2f}",
                "ms",
                f"≤ {TARGET_WAKE_P99_MS} ms (p99)",
                c["p99"] <= TARGET_WAKE_P99_MS,
                f"{n_agents} hibernated agents, socket already open",
            )
        )
        rows.append(
            R(
                "wake on 1st RPC, server (`host.get`) p50 / p99",
                f"{s['p50']:.2f} / {s['p99']:.2f}",
                "ms",
                f"≤ {TARGET_WAKE_P99_MS} ms (p99)",
                s["p99"] <= TARGET_WAKE_P99_MS,
            )
        )
        rows.append(
            R(
                f"2nd RPC on the same {n_agents} sockets (warm) p50 / p99",
                f"{w['p50']:.2f} / {w['p99']:.2f}",
                "ms",
            )
        )
    for key, label in (
        ("hibernate_no_connections", "hibernate sweep, agents that wrote"),
        ("hibernate_connected", "hibernate sweep, agents that only read"),
    ):
        sweep = ag.get(key)
        if sweep:
            rows.append(
                R(
                    f"{label} ({sweep['dropped']} agents)",
                    round(sweep["seconds"] * 1000, 1),
                    "ms",
                    "",
                    None,
                    "one `hibernate_idle_async()` sweep (databases closed off the loop)",
                )
            )
    closing = ag.get("close_all")
    if closing:
        rows.append(
            R(
                "hibernated agents woken just to run on_close",
                closing["agents_woken_by_close"],
                f"of {n_agents}",
                "0 ideally",
                None,
                "closing a socket wakes its agent",
            )
        )
    mem = out.get("memory", {})

    def kib(a: str, b: str) -> float | None:
        if a in mem and b in mem:
            return (mem[a]["rss_kb"] - mem[b]["rss_kb"]) / n_agents
        return None

    for key, label in (
        ("fresh", "RSS, 0 agents (fresh start)"),
        ("warm_zero", "RSS, 0 live agents after the RPC phase (baseline)"),
    ):
        if key in mem:
            rows.append(R(label, round(mem[key]["rss_kb"] / 1024, 1), "MiB"))
    per = [
        ("live_no_connections", "warm_zero", "per live agent, no connection", "", None),
        (
            "hibernated_no_connections",
            "warm_zero",
            "per hibernated agent (no connection)",
            f"≤ {TARGET_HIBERNATED_KIB:g} KiB",
            True,
        ),
        ("connected_live", "warm_zero", "per connected live agent", "", None),
        ("connected_hibernated", "warm_zero", "per connected hibernated agent", "", None),
        (
            "connected_hibernated",
            "hibernated_no_connections",
            "per open WebSocket (hibernated agent)",
            "",
            None,
        ),
    ]
    for a, b, label, target, judged in per:
        value = kib(a, b)
        if value is None:
            continue
        ok = value <= TARGET_HIBERNATED_KIB if judged else None
        rows.append(
            R(label, round(value, 2), "KiB", target, ok, f"RSS {mem[a]['rss_kb'] / 1024:.1f} MiB")
        )
    if "hibernated_no_connections" in mem and "warm_zero" in mem:
        raw = (mem["hibernated_no_connections"]["raw_kb"] - mem["warm_zero"]["raw_kb"]) / n_agents
        rows.append(
            R(
                "per hibernated agent, untrimmed RSS",
                round(raw, 2),
                "KiB",
                f"≤ {TARGET_HIBERNATED_KIB:g} KiB",
                raw <= TARGET_HIBERNATED_KIB,
                "before gc.collect + malloc_trim: freed memory stays in the heap",
            )
        )
    cfg = out.get("config", {})
    notes = [
        f"Server: {cfg.get('server')}, event loop `{cfg.get('server_loop')}`, WebSocket "
        f"protocol `{cfg.get('uvicorn_ws_protocol')}`; client: Python `websockets` on asyncio.",
        "Latencies are client-observed over loopback and include the Python `websockets` "
        "client (send, frame parse, JSON decode); server-side wake figures are `host.wake_times`.",
        "Memory: server VmRSS read from /proc after the server ran gc.collect() + "
        "malloc_trim(0) (bench-only route); untrimmed values are in the JSON (`raw_kb`).",
        "Hibernation is forced with `host.hibernate_idle_async(now=+inf)`, what the idle loop does "
        "after `idle_seconds`.",
        "Shared machine: other work may run concurrently, so tails (p99, max) are noisy; "
        "compare runs only on the same machine and load.",
    ]
    return rows, notes


def _ws_impl() -> str:
    try:
        from uvicorn.protocols.websockets.auto import AutoWebSocketsProtocol
    except ImportError:
        return "?"
    return getattr(AutoWebSocketsProtocol, "__name__", str(AutoWebSocketsProtocol))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="callroom-bench-core-"))
    server = Server(args.port or free_port(), tmp / "data", tmp / "server.log", args.server_path)
    server.lifetime_s = args.timeout + 120.0
    out: dict[str, Any] = {
        "config": {
            "agents": args.agents,
            "rpc": args.rpc,
            "warmup": args.warmup,
            "rounds": args.rounds,
            "window": args.window,
            "agents_compression": args.compression,
            "profile": args.profile,
            "server": "subprocess running callroom.cli.serve (uvicorn, ws=auto)",
            "uvicorn_ws_protocol": _ws_impl(),
        },
        "machine": common.machine_info(),
        "memory": {},
    }
    try:
        server.start()
        out["server_pid"] = server.pid
        out["config"]["server_loop"] = (await server.arequest("GET", "/_bench/stats"))["loop"]
        out["memory"]["fresh"] = await server.memory()
        print(
            f"server pid {server.pid} on port {server.port}; fresh RSS "
            f"{out['memory']['fresh']['rss_kb'] / 1024:.1f} MiB",
            flush=True,
        )
        async with asyncio.timeout(args.timeout):
            await bench_rpc(server, args, out)
            await server.arequest("POST", "/_bench/hibernate")
            out["memory"]["warm_zero"] = await server.memory()
            await bench_agents(server, args, out)
    except BaseException:
        print(server.log_tail(), file=sys.stderr)
        raise
    finally:
        out["server_exit_code"] = server.stop()
        out["machine"]["load_average_end"] = common.load_average()
        if args.keep_data:
            print(f"data and server log kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agents", type=int, default=1000)
    p.add_argument("--rpc", type=int, default=5000, help="sequential calls measured")
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument(
        "--rounds", type=int, default=5, help="RPC variants are interleaved in this many rounds"
    )
    p.add_argument("--window", type=int, default=32, help="pipelined window (1 = skip)")
    p.add_argument(
        "--compression",
        choices=("deflate", "none"),
        default="deflate",
        help="permessage-deflate for the 1000-agent phases",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="cProfile the server during sequential RPC and wake-on-RPC",
    )
    p.add_argument(
        "--server-path",
        type=Path,
        default=None,
        help="directory put first on the server's PYTHONPATH (e.g. one holding uvloop, which "
        "uvicorn then picks automatically); the client is unchanged",
    )
    p.add_argument("--timeout", type=float, default=900.0, help="bound on the whole run")
    p.add_argument("--name", default="core", help="results file name under bench/results/")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--keep-data", action="store_true")
    p.add_argument("--serve-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--data-dir", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.serve_child:
        assert args.data_dir is not None and args.port
        serve_child(args.port, args.data_dir, args.timeout)
        return 0
    if args.agents < 1 or args.rpc < 1:
        p.error("--agents and --rpc must be >= 1")

    out = asyncio.run(run(args))
    rows, notes = build_rows(out, args.agents)
    extra = ""
    for phase, prof in out.get("profiles", {}).items():
        extra += f"\n## Server profile: {phase} (cProfile, by tottime)\n\n```\n"
        extra += prof.get("tottime", "") + "\n```\n"
    json_path, md_path = common.write_results(
        args.name, out, rows, title="callroom core benchmark", notes=notes, extra_md=extra
    )
    print()
    print(common.rows_table(rows))
    print()
    for n in notes:
        print(f"- {n}")
    print(f"\nwrote {json_path.relative_to(ROOT)} and {md_path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
