"""How many concurrent calls one callroom process holds on remote speech providers.

    .venv/bin/python bench/density.py                          # ≈ 4 min on 2 cores
    .venv/bin/python bench/density.py --levels 1,50,100,200 --turns 2

Processes (all on loopback, all on the same 2 cores):

1. **Fake LLM** (`callroom.providers.llm.fake_server`): TTFT 100 ms, 10 ms per token.
2. **Fake remote STT/TTS** (`bench/remote_providers.py`, multiplexed WebSockets): a
   transcript 50 ms after the request; TTS audio 50 ms after the request, then 100 ms
   chunks at 20× real time.
3. **callroom** (`bench/remote_app.py`): `RemoteVoice`, Silero VAD in process, STT/TTS over
   WebSocket, LLM over HTTP/SSE (callroom's `OpenAICompatLLM`, httpx), one agent per call.
4. **Client** (this process): `bench/voice_client.py` calls, 20 ms frames at real-time pace;
   call starts spread evenly over `--spread` seconds so turns do not line up.

For each level N: N calls of `--turns` turns. The server is trimmed (gc + malloc_trim) before
and after; its RSS is sampled every 0.5 s while the calls run. Figures per level:

- **added latency**: voice-to-voice p90 at N calls minus p90 of the single-call baseline
  (`--baseline-turns` turns of one call, measured first and again last; the lower p90 of
  the two is the baseline). Also the server-side figure: `first_audio_ms` of callroom's own
  `metrics` (last voiced frame received → first audio byte queued), p90 at N minus p90 at 1:
  it excludes the client process, which shares the cores and lags under load.
- **event-loop lag** of the client and of the server (a 10 ms ticker in each).
- **CPU**: server CPU-seconds per call-second → extrapolated calls per core.
- **RSS per active call**: (peak RSS during the level − RSS after trim before it) / N.

The highest N whose p90 added latency is ≤ 20 ms is reported against the target of 200 calls
per core (400 on this 2-core machine).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

import common  # noqa: E402
import compare  # noqa: E402
import voice_client as vc  # noqa: E402

REPLY = "Your appointment is on Tuesday."
TARGET_ADDED_MS = 20.0
TARGET_CALLS_PER_CORE = 200
TARGET_RSS_KB_PER_CALL = 2048


class LagMonitor:
    """A ticker on the running loop: how late each 10 ms sleep wakes up (ms)."""

    def __init__(self, period_s: float = 0.01) -> None:
        self.period_s = period_s
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(self.period_s)
            self.lags.append((loop.time() - t - self.period_s) * 1000)

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> dict[str, float]:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        return compare.stats_ms(self.lags)


class Stack:
    def __init__(self, tmp: Path, args: argparse.Namespace) -> None:
        self.llm, llm_url = compare.fake_llm(
            tmp, ttft_ms=args.ttft_ms, token_ms=args.token_ms, reply=args.reply
        )
        rport, self.port = compare.free_port(), compare.free_port()
        remote_url = f"ws://127.0.0.1:{rport}/speech"
        self.remote = compare.Proc(
            "fake remote STT/TTS",
            [
                sys.executable,
                str(BENCH / "remote_providers.py"),
                "--port",
                str(rport),
                "--stt-delay-ms",
                str(args.stt_delay_ms),
                "--tts-delay-ms",
                str(args.tts_delay_ms),
            ],
            tmp / "remote.log",
            f"http://127.0.0.1:{rport}/healthz",
        )
        self.server = compare.Proc(
            "callroom (remote providers)",
            [
                sys.executable,
                str(BENCH / "remote_app.py"),
                "--port",
                str(self.port),
                "--llm-url",
                llm_url,
                "--remote-url",
                remote_url,
                "--data-dir",
                str(tmp / "data"),
                *args.server_args,
                *(["--vad", args.vad] if getattr(args, "vad", "silero") != "silero" else []),
            ],
            tmp / "server.log",
            f"http://127.0.0.1:{self.port}/healthz",
        )
        self.base = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Stack:
        try:
            self.llm.start()
            self.remote.start()
            self.server.start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()
        self.remote.stop()
        self.llm.stop()

    def adapter(self, name: str) -> vc.CallroomVoiceProtocol:
        return vc.CallroomVoiceProtocol(
            f"ws://127.0.0.1:{self.port}/agents/remote-voice/{name}", open_timeout=60.0
        )

    def trim(self) -> dict[str, Any]:
        return compare.get_json(f"{self.base}/_bench/trim", "POST")


async def run_level(
    stack: Stack,
    questions: list[vc.Question],
    n: int,
    turns: int,
    spread_s: float,
    gap_s: float,
    tag: str,
) -> dict[str, Any]:
    lag = LagMonitor()
    lag.start()
    stagger = spread_s / n if n > 1 else 0.0
    calls = await compare.run_calls(
        lambda i: stack.adapter(f"{tag}-{i}"), questions, turns, n, stagger_s=stagger, gap_s=gap_s
    )
    return {"calls": calls, "client_lag_ms": await lag.stop()}


def measure(
    stack: Stack,
    questions: list[vc.Question],
    n: int,
    turns: int,
    spread_s: float,
    gap_s: float,
    tag: str,
) -> dict[str, Any]:
    idle = stack.trim()
    compare.get_json(f"{stack.base}/_bench/lag")  # reset the server's loop-lag samples
    pid = stack.server.pid
    load0 = common.load_average()
    cpu0, client0, t0 = common.cpu_seconds(pid), common.cpu_seconds(), time.monotonic()
    with compare.Sampler(pid, 0.5) as sampler:
        out = asyncio.run(run_level(stack, questions, n, turns, spread_s, gap_s, tag))
    wall = time.monotonic() - t0
    cpu = common.cpu_seconds(pid) - cpu0
    client_cpu = common.cpu_seconds() - client0
    server_lag = compare.get_json(f"{stack.base}/_bench/lag")
    after_raw = common.rss_kb(pid)
    after = stack.trim()
    flat = [asdict(t) for call in out["calls"] for t in call]
    ok = [t for t in flat if t["voice_to_voice_ms"] is not None and not t["errors"]]
    # each call is active for about (wall - its start offset); count call-seconds that way
    stagger = spread_s / n if n > 1 else 0.0
    call_seconds = max(1e-9, n * wall - stagger * n * (n - 1) / 2)
    peak = max(sampler.rss or [idle["VmRSS"]])
    server_first_audio = [
        t["server"]["first_audio_ms"] for t in ok if "first_audio_ms" in (t.get("server") or {})
    ]
    row = {
        "tag": tag,
        "calls": n,
        "turns": len(flat),
        "turns_ok": len(ok),
        "errors": len(flat) - len(ok),
        "error_samples": [t["errors"] for t in flat if t["errors"]][:5],
        "v2v_ms": compare.stats_ms([t["voice_to_voice_ms"] for t in ok]),
        "server_first_audio_ms": compare.stats_ms(server_first_audio),
        "server_eot_ms": compare.stats_ms(
            [t["server"]["eot_ms"] for t in ok if "eot_ms" in (t.get("server") or {})]
        ),
        "server_stages_ms": {
            k: compare.stats_ms([t["server"][k] for t in ok if k in (t.get("server") or {})])
            for k in ("eot_ms", "stt_ms", "llm_ms", "tts_ms", "first_audio_ms")
        },
        "client_lag_ms": out["client_lag_ms"],
        "server_lag_ms": {
            k: round(v, 1) if isinstance(v, float) else v for k, v in server_lag.items()
        },
        "wall_s": round(wall, 1),
        "server_cpu_s": round(cpu, 2),
        "server_cpu_cores": round(cpu / wall, 3),
        "server_cpu_cores_per_call": round(cpu / call_seconds, 5),
        "client_cpu_cores": round(client_cpu / wall, 3),
        "rss_kb_idle_trimmed": idle["VmRSS"],
        "rss_kb_peak": peak,
        "rss_kb_after_raw": after_raw,
        "rss_kb_after_trimmed": after["VmRSS"],
        "rss_kb_per_call": round((peak - idle["VmRSS"]) / n, 1),
        "server_tasks_after": after.get("tasks"),
        "live_agents_after": after.get("live_agents"),
        "load_before": load0,
        "load_after": common.load_average(),
    }
    cores_per_call = row["server_cpu_cores_per_call"]
    row["calls_per_core_from_cpu"] = round(1 / cores_per_call, 1) if cores_per_call else None
    print(
        f"  {n:4d} calls: v2v p50 {row['v2v_ms'].get('p50')} p90 {row['v2v_ms'].get('p90')} "
        f"ms (server first_audio p90 {row['server_first_audio_ms'].get('p90')}), "
        f"{len(ok)}/{len(flat)} ok, server {row['server_cpu_cores']} cores, client "
        f"{row['client_cpu_cores']}, {row['rss_kb_per_call']} KiB/call, loop lag p90 client "
        f"{row['client_lag_ms'].get('p90')} / server {row['server_lag_ms'].get('p90')} ms, "
        f"eot p50 {row['server_eot_ms'].get('p50')} ms, load {load0}",
        file=sys.stderr,
    )
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--levels", default="25,50,100,150,200,300,400")
    p.add_argument("--turns", type=int, default=2, help="turns per call at each level")
    p.add_argument("--baseline-turns", type=int, default=10)
    p.add_argument("--spread", type=float, default=5.0, help="call starts spread over (s)")
    p.add_argument("--gap", type=float, default=0.5)
    p.add_argument("--ttft-ms", type=float, default=100.0)
    p.add_argument("--token-ms", type=float, default=10.0)
    p.add_argument("--stt-delay-ms", type=float, default=50.0)
    p.add_argument("--tts-delay-ms", type=float, default=50.0)
    p.add_argument("--reply", default=REPLY)
    p.add_argument(
        "--stop-above-ms",
        type=float,
        default=1000.0,
        help="skip higher levels once p90 added latency exceeds this",
    )
    p.add_argument(
        "--server-arg", action="append", dest="server_args", default=[], help=argparse.SUPPRESS
    )
    p.add_argument(
        "--vad",
        choices=("silero", "gated"),
        default="silero",
        help="gated: Silero behind an energy gate (experiment, bench/remote_providers)",
    )
    p.add_argument("--name", default="density")
    args = p.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",") if x.strip()]

    info = common.machine_info((*common.DEFAULT_PACKAGES, "onnxruntime", "httpx"))
    result: dict[str, Any] = {
        "machine": info,
        "command": " ".join([".venv/bin/python", "bench/density.py", *(argv or sys.argv[1:])]),
        "config": {k: v for k, v in vars(args).items()},
        "load_average_before": common.load_average(),
    }
    questions = compare.build_questions()
    tmp = Path(tempfile.mkdtemp(prefix="callroom-density-"))
    rows: list[dict[str, Any]] = []
    with Stack(tmp, args) as stack:
        result["rss_kb_fresh"] = common.rss_kb(stack.server.pid)
        asyncio.run(
            compare.run_calls(lambda i: stack.adapter("warmup"), questions[:1], 1, 1, gap_s=0.2)
        )
        print("baseline (1 call)", file=sys.stderr)
        base1 = measure(stack, questions, 1, args.baseline_turns, 0, args.gap, "base-a")
        rows.append(base1)
        for n in levels:
            row = measure(stack, questions, n, args.turns, args.spread, args.gap, f"n{n}")
            rows.append(row)
            p90 = row["v2v_ms"].get("p90")
            if p90 is None or p90 - (base1["v2v_ms"].get("p90") or 0) > args.stop_above_ms:
                print(
                    f"  stopping: p90 added latency above {args.stop_above_ms} ms", file=sys.stderr
                )
                break
        base2 = measure(stack, questions, 1, args.baseline_turns, 0, args.gap, "base-b")
        rows.append(base2)
        result["server_log_tail"] = stack.server.log_tail(2000)
    result["load_average_after"] = common.load_average()
    bases = [b for b in (base1, base2) if b["v2v_ms"].get("p90")]
    base = min(bases, key=lambda b: b["v2v_ms"]["p90"])
    base_p90 = base["v2v_ms"]["p90"]
    base_srv = min(b["server_first_audio_ms"].get("p90", 1e9) for b in bases)
    for row in rows:
        if row["v2v_ms"].get("p90") is not None:
            row["added_p90_ms"] = round(row["v2v_ms"]["p90"] - base_p90, 1)
        if row["server_first_audio_ms"].get("p90") is not None:
            row["server_added_p90_ms"] = round(row["server_first_audio_ms"]["p90"] - base_srv, 1)
    result["levels"] = rows
    result["baseline"] = {
        "v2v_p90_ms": base_p90,
        "server_first_audio_p90_ms": base_srv,
        "from": base["tag"],
    }
    report(args, result)
    return 0


def report(args: argparse.Namespace, r: dict[str, Any]) -> None:
    rows = r["levels"]
    cores = r["machine"]["cores_usable"]
    loaded = [x for x in rows if not x["tag"].startswith("base")]
    good = [
        x
        for x in loaded
        if x.get("added_p90_ms") is not None
        and x["added_p90_ms"] <= TARGET_ADDED_MS
        and x["errors"] == 0
    ]
    best = max((x["calls"] for x in good), default=0)
    good_srv = [
        x
        for x in loaded
        if x.get("server_added_p90_ms") is not None
        and x["server_added_p90_ms"] <= TARGET_ADDED_MS
        and x["errors"] == 0
    ]
    best_srv = max((x["calls"] for x in good_srv), default=0)
    big = max(loaded, key=lambda x: x["calls"]) if loaded else None
    cpu_rows = [x for x in loaded if x["calls"] >= 50 and x["errors"] == 0] or loaded
    per_core = [x["calls_per_core_from_cpu"] for x in cpu_rows if x["calls_per_core_from_cpu"]]
    rss_rows = [x for x in loaded if x["calls"] >= 50] or loaded
    rss_per_call = max((x["rss_kb_per_call"] for x in rss_rows), default=None)
    r["summary"] = {
        "max_calls_p90_added_le_20ms": best,
        "max_calls_per_core_p90_added_le_20ms": round(best / cores, 1),
        "max_calls_server_side_added_le_20ms": best_srv,
        "calls_per_core_from_server_cpu_median": (
            sorted(per_core)[len(per_core) // 2] if per_core else None
        ),
        "rss_kb_per_call_max_over_levels_ge_50": rss_per_call,
    }
    s = r["summary"]
    table_rows = common.markdown_table(
        (
            "level",
            "calls",
            "v2v p50 ms",
            "p90 ms",
            "added p90 ms",
            "server first_audio p90 ms",
            "server added p90 ms",
            "ok turns",
            "server CPU cores",
            "CPU / call (cores)",
            "calls/core (CPU)",
            "client CPU cores",
            "loop lag p90 client / server ms",
            "RSS/call KiB",
            "load before",
        ),
        [
            (
                x["tag"],
                x["calls"],
                x["v2v_ms"].get("p50"),
                x["v2v_ms"].get("p90"),
                x.get("added_p90_ms"),
                x["server_first_audio_ms"].get("p90"),
                x.get("server_added_p90_ms"),
                f"{x['turns_ok']}/{x['turns']}",
                x["server_cpu_cores"],
                x["server_cpu_cores_per_call"],
                x["calls_per_core_from_cpu"],
                x["client_cpu_cores"],
                f"{x['client_lag_ms'].get('p90')} / {x['server_lag_ms'].get('p90')}",
                x["rss_kb_per_call"],
                x["load_before"],
            )
            for x in rows
        ],
    )
    out_rows = [
        common.Row(
            "max concurrent calls with p90 added ≤ 20 ms (client-observed)",
            best,
            "calls",
            f"≥ {TARGET_CALLS_PER_CORE * cores} ({TARGET_CALLS_PER_CORE}/core)",
            best >= TARGET_CALLS_PER_CORE * cores,
            note=f"{s['max_calls_per_core_p90_added_le_20ms']} per core; baseline p90 "
            f"{r['baseline']['v2v_p90_ms']} ms",
        ),
        common.Row(
            "max concurrent calls with server-side p90 added ≤ 20 ms",
            best_srv,
            "calls",
            f"≥ {TARGET_CALLS_PER_CORE * cores}",
            best_srv >= TARGET_CALLS_PER_CORE * cores,
            note="callroom's first_audio_ms (excludes the client process)",
        ),
        common.Row(
            "calls per core, from server CPU per call",
            s["calls_per_core_from_server_cpu_median"],
            "calls",
            f"≥ {TARGET_CALLS_PER_CORE}",
            (s["calls_per_core_from_server_cpu_median"] or 0) >= TARGET_CALLS_PER_CORE,
            note="1 / (server CPU-seconds per call-second), median over levels ≥ 50 calls",
        ),
        common.Row(
            "RSS per active call (peak − idle) / N",
            rss_per_call,
            "KiB",
            "≤ 2 MiB",
            (rss_per_call or 1e9) <= TARGET_RSS_KB_PER_CALL,
            note="worst level ≥ 50 calls; includes the agent (SQLite) and its WebSocket",
        ),
    ]
    if big:
        note = (
            f"added {big.get('added_p90_ms')} ms; {big['turns_ok']}/{big['turns']} turns ok; "
            f"server {big['server_cpu_cores']} cores, client {big['client_cpu_cores']}"
        )
        label = f"at {big['calls']} calls: v2v p90 / added"
        out_rows.append(common.Row(label, big["v2v_ms"].get("p90"), "ms", note=note))
    notes = [
        f"Fake delays: STT {args.stt_delay_ms:g} ms, TTS first audio {args.tts_delay_ms:g} ms, "
        f"LLM TTFT {args.ttft_ms:g} ms + {args.token_ms:g} ms/token; reply “{args.reply}”.",
        "Everything runs on the same 2 cores: the callroom server, the client (Python "
        "`websockets`, 50 frames/s per call), the fake LLM and the fake STT/TTS server. "
        "Client-observed latency includes the client's own event-loop lag (column).",
        "added p90 = v2v p90 at N calls − v2v p90 of one call alone (lower of the two baseline "
        "runs, before and after the levels).",
        f"Load average at start / end: {r['load_average_before']} / {r['load_average_after']}.",
        f"Command: `{r['command']}`",
    ]
    common.write_results(
        args.name,
        r,
        out_rows,
        title="callroom density: concurrent calls on remote providers",
        notes=notes,
        extra_md="## Levels\n\n" + table_rows,
    )
    print((common.RESULTS_DIR / f"{args.name}.md").read_text())


if __name__ == "__main__":
    sys.exit(main())
