"""1 000 short voice calls one after another in one callroom process: does memory come back?

    .venv/bin/python bench/sequential.py                   # ≈ 2–3 min on 2 cores
    .venv/bin/python bench/sequential.py --calls 1000 --agents distinct

The server is `bench/remote_app.py` (Silero VAD in process, fake remote STT/TTS/LLM over
HTTP, see `bench/remote_providers.py`), with short fake delays (10 ms) because this bench is
about memory, not latency. Each call: connect, `start_call`, one spoken question ("When is my
next appointment?", Piper fixture) sent as fast as the socket takes it, then silence frames
at 10× real time (turn-taking runs on audio time, so it still sees 100 ms pauses) until the
reply's `transcript_end` and `metrics` arrived, then `end_call` and close. All reply audio is
received and dropped.

`--agents same` (default): every call goes to the same agent ("front-desk": a receptionist
taking call after call; its history grows in SQLite, max 1 000 messages kept).
`--agents distinct`: one agent per call (each caller their own agent), with a 2 s idle
timeout so agents hibernate as they would in production.

Server RSS (VmRSS) is read after calls 10, 50, 100, 150, … and at the end, both as is and
after `gc.collect()` + `malloc_trim(0)` (bench route). Target: RSS after 1 000 calls within
5 % of RSS after 100.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

import common  # noqa: E402
import compare  # noqa: E402
import density  # noqa: E402

FRAME = 320  # 20 ms at 16 kHz
REPLY = "Your appointment is on Tuesday."
AGENT_NOTE = {
    "same": "one agent takes every call",
    "distinct": "one agent per call, 2 s idle timeout",
}


async def one_call(
    url: str, question: bytes, *, silence_every_s: float = 0.002, timeout_s: float = 20.0
) -> dict[str, Any]:
    import websockets

    t0 = time.monotonic()
    audio_bytes = 0
    got: set[str] = set()
    async with websockets.connect(url, max_size=None, compression=None, open_timeout=30) as ws:
        await ws.send(json.dumps({"type": "hello", "protocol_version": 1}))
        await ws.send(json.dumps({"type": "start_call", "preferred_format": "pcm16"}))
        while True:  # wait for "listening"
            msg = await ws.recv()
            if isinstance(msg, str) and '"listening"' in msg:
                break

        async def reader() -> None:
            nonlocal audio_bytes
            async for frame in ws:
                if isinstance(frame, bytes):
                    audio_bytes += len(frame)
                    continue
                msg = json.loads(frame)
                kind = msg.get("type")
                if kind in ("transcript_end", "metrics", "error"):
                    got.add(kind)
                elif kind == "status" and msg.get("status") == "idle" and "ended" in got:
                    idle.set()

        idle = asyncio.Event()
        task = asyncio.ensure_future(reader())
        try:
            for i in range(0, len(question), FRAME * 2):
                chunk = question[i : i + FRAME * 2]
                await ws.send(chunk + bytes(FRAME * 2 - len(chunk)))
            silence = bytes(FRAME * 2)
            deadline = time.monotonic() + timeout_s
            while not {"transcript_end", "metrics"} <= got and "error" not in got:
                if time.monotonic() > deadline:
                    got.add("timeout")
                    break
                await ws.send(silence)
                await asyncio.sleep(silence_every_s)
            got.add("ended")
            await ws.send(json.dumps({"type": "end_call"}))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):  # until the server says idle
                    await idle.wait()
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    return {
        "s": time.monotonic() - t0,
        "audio_bytes": audio_bytes,
        "ok": {"transcript_end", "metrics"} <= got,
        "flags": sorted(got),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--calls", type=int, default=1000)
    p.add_argument("--agents", choices=("same", "distinct"), default="same")
    p.add_argument("--delay-ms", type=float, default=10.0, help="fake STT/TTS/LLM-TTFT delays")
    p.add_argument("--name", default="")
    args = p.parse_args(argv)
    name = args.name or ("sequential" if args.agents == "same" else "sequential_distinct")
    checkpoints = sorted({10, 50, *range(100, args.calls + 1, 50), args.calls})

    from tests.fixtures.speech import speech

    question = np.asarray(speech("When is my next appointment?"), dtype="<i2").tobytes()
    info = common.machine_info((*common.DEFAULT_PACKAGES, "onnxruntime", "httpx"))
    result: dict[str, Any] = {
        "machine": info,
        "command": " ".join([".venv/bin/python", "bench/sequential.py", *(argv or sys.argv[1:])]),
        "config": vars(args),
        "load_average_before": common.load_average(),
    }
    tmp = Path(tempfile.mkdtemp(prefix="callroom-sequential-"))
    dargs = argparse.Namespace(
        ttft_ms=args.delay_ms,
        token_ms=1.0,
        reply=REPLY,
        stt_delay_ms=args.delay_ms,
        tts_delay_ms=args.delay_ms,
        server_args=(["--idle-seconds", "2"] if args.agents == "distinct" else []),
    )
    points: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    with density.Stack(tmp, dargs) as stack:
        base = f"ws://127.0.0.1:{stack.port}/agents/remote-voice/"
        result["rss_kb_fresh"] = common.rss_kb(stack.server.pid)
        t_start = time.monotonic()
        cpu0 = common.cpu_seconds(stack.server.pid)

        async def run_all() -> None:
            for i in range(1, args.calls + 1):
                agent = "front-desk" if args.agents == "same" else f"caller-{i}"
                try:
                    calls.append(await one_call(base + agent, question))
                except Exception as exc:
                    calls.append({"s": None, "ok": False, "flags": [repr(exc)]})
                if i in checkpoints:
                    raw = common.proc_status(stack.server.pid)
                    await asyncio.sleep(0.05)
                    trimmed = await asyncio.to_thread(stack.trim)
                    points.append(
                        {
                            "calls": i,
                            "rss_kb": raw["VmRSS"],
                            "rss_anon_kb": raw.get("RssAnon"),
                            "rss_kb_trimmed": trimmed["VmRSS"],
                            "tasks": trimmed.get("tasks"),
                            "live_agents": trimmed.get("live_agents"),
                            "active_calls": trimmed.get("active_calls"),
                            "failed_so_far": sum(1 for c in calls if not c["ok"]),
                            "t_s": round(time.monotonic() - t_start, 1),
                        }
                    )
                    print(
                        f"  after {i:5d} calls: RSS {raw['VmRSS'] / 1024:.1f} MiB, trimmed "
                        f"{trimmed['VmRSS'] / 1024:.1f} MiB, tasks {trimmed.get('tasks')}, "
                        f"failed {points[-1]['failed_so_far']}",
                        file=sys.stderr,
                    )

        asyncio.run(run_all())
        result["server_cpu_s"] = round(common.cpu_seconds(stack.server.pid) - cpu0, 2)
        result["wall_s"] = round(time.monotonic() - t_start, 1)
        result["server_log_tail"] = stack.server.log_tail(2000)
    result["load_average_after"] = common.load_average()
    result["points"] = points
    durations = [c["s"] for c in calls if c["s"] is not None]
    result["call_duration_ms"] = compare.stats_ms([d * 1000 for d in durations])
    result["failed_calls"] = sum(1 for c in calls if not c["ok"])
    result["failure_samples"] = [c["flags"] for c in calls if not c["ok"]][:5]
    report(name, args, result)
    return 0


def report(name: str, args: argparse.Namespace, r: dict[str, Any]) -> None:
    pts = {pt["calls"]: pt for pt in r["points"]}
    at100, last = pts.get(100), r["points"][-1] if r["points"] else None
    rows: list[common.Row] = []
    if at100 and last:
        for key, label in (("rss_kb", "RSS (as is)"), ("rss_kb_trimmed", "RSS after gc + trim")):
            growth = (last[key] - at100[key]) / at100[key] * 100
            rows.append(
                common.Row(
                    f"{label}: after {last['calls']} vs after 100 calls",
                    round(growth, 2),
                    "%",
                    "within 5 %",
                    abs(growth) <= 5.0,
                    note=f"{at100[key] / 1024:.1f} → {last[key] / 1024:.1f} MiB",
                )
            )
    rows += [
        common.Row(
            "calls completed",
            len(r["points"]) and r["points"][-1]["calls"] - r["failed_calls"],
            "",
            note=f"{r['failed_calls']} failed",
        ),
        common.Row(
            "call duration p50",
            r["call_duration_ms"].get("p50"),
            "ms",
            note="connect → question (burst) → reply → end_call; not real time",
        ),
        common.Row(
            "asyncio tasks left in the server",
            last and last["tasks"],
            "",
            note="after the last call (the server's own tasks included)",
        ),
        common.Row(
            "server CPU per call", round(r["server_cpu_s"] / max(1, args.calls) * 1000, 2), "ms"
        ),
    ]
    table = common.markdown_table(
        (
            "after calls",
            "RSS MiB",
            "RssAnon MiB",
            "RSS after trim MiB",
            "asyncio tasks",
            "live agents",
            "failed",
            "t s",
        ),
        [
            (
                pt["calls"],
                round(pt["rss_kb"] / 1024, 1),
                round((pt["rss_anon_kb"] or 0) / 1024, 1),
                round(pt["rss_kb_trimmed"] / 1024, 1),
                pt["tasks"],
                pt["live_agents"],
                pt["failed_so_far"],
                pt["t_s"],
            )
            for pt in r["points"]
        ],
    )
    notes = [
        f"Agents: {args.agents} ({AGENT_NOTE[args.agents]}); "
        f"fake delays {args.delay_ms:g} ms; reply “{REPLY}”.",
        "RSS as is = VmRSS read right after the call closed; after trim = after the server ran "
        "gc.collect() + malloc_trim(0) (bench route), which is what is still reachable.",
        f"Load average at start / end: {r['load_average_before']} / {r['load_average_after']}.",
        f"Command: `{r['command']}`",
    ]
    common.write_results(
        name,
        r,
        rows,
        title=f"callroom: {args.calls} sequential calls in one process",
        notes=notes,
        extra_md="## RSS over calls\n\n" + table,
    )
    print((common.RESULTS_DIR / f"{name}.md").read_text())


if __name__ == "__main__":
    sys.exit(main())
