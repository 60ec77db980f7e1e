"""What the cluster gateway adds per frame: echo round trips of 20 ms audio frames
(640 bytes, PCM16 16 kHz) straight to a host vs. through a gateway to the same host.

Starts a throwaway Postgres, one host (`python -m callroom.cluster.run host`) and one gateway
as subprocesses on loopback. Two loads: (1) one client, sequential ping-pong; (2) N callers
each sending a frame every 20 ms (real-time audio) for a few seconds. Results go to
bench/results/cluster_gateway.{json,md}.

    .venv/bin/python bench/cluster_gateway.py [--callers 20] [--seconds 5] [--pingpong 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import websockets  # noqa: E402
from tests.cluster.procs import Cluster  # noqa: E402
from tests.storage.pgserver import PostgresServer  # noqa: E402

FRAME = bytes(640)


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


def summary(ms: list[float]) -> dict[str, float]:
    return {
        "n": len(ms),
        "p50_ms": round(pct(ms, 50), 3),
        "p90_ms": round(pct(ms, 90), 3),
        "p99_ms": round(pct(ms, 99), 3),
        "mean_ms": round(statistics.fmean(ms), 3),
    }


async def handshake(ws: Any) -> None:
    while True:  # identity, (state,) mcp servers
        msg = json.loads(await ws.recv())
        if msg.get("type") == "cf_agent_mcp_servers":
            return


async def pingpong(url: str, n: int) -> list[float]:
    async with websockets.connect(url, max_size=None, compression=None) as ws:
        await handshake(ws)
        for _ in range(50):  # warm-up
            await ws.send(FRAME)
            await ws.recv()
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            await ws.send(FRAME)
            await ws.recv()
            out.append((time.perf_counter() - t0) * 1000)
        return out


async def paced(url: str, callers: int, seconds: float) -> list[float]:
    async def one(i: int) -> list[float]:
        async with websockets.connect(f"{url}-{i}", max_size=None, compression=None) as ws:
            await handshake(ws)
            sent: list[float] = []
            got: list[float] = []

            async def reader() -> None:
                while len(got) < frames:
                    await ws.recv()
                    got.append(time.perf_counter())

            frames = int(seconds / 0.02)
            task = asyncio.create_task(reader())
            start = time.perf_counter()
            for k in range(frames):
                delay = start + k * 0.02 - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                sent.append(time.perf_counter())
                await ws.send(FRAME)
            async with asyncio.timeout(30):
                await task
            return [(g - s) * 1000 for s, g in zip(sent, got, strict=True)]

    results = await asyncio.gather(*(one(i) for i in range(callers)))
    return [x for r in results for x in r]


async def measure(cluster: Cluster, args: argparse.Namespace) -> dict[str, Any]:
    host = cluster.hosts["h0"]
    gw = cluster.gateways[0]
    out: dict[str, Any] = {}
    for label, base in (("direct", host), ("gateway", gw)):
        url = base.ws_url("room", f"bench-{label}")
        out[f"pingpong_{label}"] = summary(await pingpong(url, args.pingpong))
        out[f"paced_{label}"] = summary(
            await paced(base.ws_url("room", f"paced-{label}"), args.callers, args.seconds)
        )
    for load in ("pingpong", "paced"):
        d, g = out[f"{load}_direct"], out[f"{load}_gateway"]
        out[f"{load}_added"] = {
            k: round(g[k] - d[k], 3) for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms")
        }
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--callers", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--pingpong", type=int, default=2000)
    args = ap.parse_args()
    import tempfile

    pg = PostgresServer().start()
    base = Path(tempfile.mkdtemp(prefix="cr-gwbench-"))
    cluster = Cluster(pg.new_database(), base)
    cluster.env["CALLROOM_LOG_LEVEL"] = "WARNING"
    try:
        cluster.add_host("h0")
        cluster.add_gateway(min_hosts=1)
        result = asyncio.run(measure(cluster, args))
    finally:
        cluster.close()
        pg.stop()
    result["setup"] = {
        "frame_bytes": len(FRAME),
        "callers": args.callers,
        "seconds": args.seconds,
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores",
        "note": "client, gateway, host and Postgres share the machine (loopback)",
    }
    res_dir = ROOT / "bench" / "results"
    res_dir.mkdir(parents=True, exist_ok=True)
    (res_dir / "cluster_gateway.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Cluster gateway: added latency per frame",
        "",
        f"Echo round trip of a {len(FRAME)}-byte frame; {result['setup']['machine']}; "
        "client, gateway, host on loopback.",
        "",
        "| load | path | p50 ms | p90 ms | p99 ms | mean ms |",
        "|---|---|---|---|---|---|",
    ]
    for load in ("pingpong", "paced"):
        for path in ("direct", "gateway", "added"):
            r = result[f"{load}_{path}"]
            lines.append(
                f"| {load} | {path} | {r['p50_ms']} | {r['p90_ms']} | {r['p99_ms']} | "
                f"{r['mean_ms']} |"
            )
    lines += [
        "",
        f"pingpong: one client, {args.pingpong} sequential frames. paced: {args.callers} callers "
        f"× 50 frames/s for {args.seconds:g} s.",
    ]
    (res_dir / "cluster_gateway.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
