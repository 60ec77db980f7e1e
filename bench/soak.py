"""Soak: many concurrent simulated calls for a while; does anything grow or drift?

    .venv/bin/python bench/soak.py [--calls 50] [--duration 300] [--name soak]

Loopback only, and it stops by itself. A real callroom server (`callroom serve`, a subprocess)
runs `FakeVoice` (tests/integration/apps/voice_fake.py: energy VAD, an STT that answers "I
spoke for N seconds.", a tone TTS at 0.25 s per word), so the load is the framework's own: the
WebSocket protocol, the per-call pipeline, SQLite history, the send queues.

Each simulated call is a microphone: 20 ms PCM16 frames at real-time pace for the whole call
(silence between turns, as a real mic sends), a 220 Hz tone as speech (`--speech-s`), then
the reply is "played" at real time before a pause of 1-3 s and the next turn. Turns come every
few seconds per call.

Recorded over time (every `--sample-s`): the server's RSS and open fds (/proc/<pid>), its
asyncio task count, connections and active calls (`/healthz?verbose=1`), CPU seconds, and the
p50/p99 of the turn latency in that window (client side: the last tone frame sent → the first
reply audio byte received; it includes the end-of-turn wait, so compare it with itself over
time, not with the latency benches). After the calls end the server is sampled again: tasks
and fds must be back to the idle baseline.

Figures: RSS growth % (last loaded sample vs the first after warm-up), p99 drift % (last
window vs first after warm-up), fds/tasks after vs before. Results: bench/results/<name>.json
and .md (`common.write_results`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if str(ROOT / "bench") not in sys.path:
    sys.path.insert(0, str(ROOT / "bench"))

import common  # noqa: E402
import websockets  # noqa: E402
from tests.integration.server import ServerProcess  # noqa: E402

APP = ROOT / "tests" / "integration" / "apps" / "voice_fake.py"
RATE = 16_000
FRAME_MS = 20
FRAME_SAMPLES = RATE * FRAME_MS // 1000
BYTES_PER_S = RATE * 2
_t = np.arange(FRAME_SAMPLES, dtype=np.float32) / RATE
TONE_FRAME = (0.3 * np.sin(2 * np.pi * 220 * _t) * 32767).astype("<i2").tobytes()
SILENCE_FRAME = bytes(FRAME_SAMPLES * 2)
STUCK_S = 20.0  # a turn with no reply audio after this long counts as stuck


@dataclass
class CallStats:
    turns: int = 0
    stuck: int = 0
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (when, seconds)
    server_first_audio_ms: list[float] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    closed: tuple[int, str] | None = None


class SoakCall:
    """One simulated caller: a real-time microphone and a player, as a small state machine."""

    def __init__(self, url: str, rng: random.Random, speech_s: float) -> None:
        self.url = url
        self.rng = rng
        self.speech_s = speech_s
        self.stats = CallStats()
        self.ws: Any = None
        self.ready = asyncio.Event()  # greeting heard, listening
        self.state = "ready"  # ready → speaking → awaiting → playing → ready
        self.spoke_until = 0.0
        self.speak_at = 0.0
        self.first_audio: float | None = None
        self.reply_bytes = 0
        self.reply_done = False
        self.play_until = 0.0

    async def run(self, stop_at: float) -> None:
        loop = asyncio.get_running_loop()
        self.ws = await websockets.connect(
            self.url, max_size=None, max_queue=None, open_timeout=30, compression=None
        )
        reader = asyncio.create_task(self._read())
        try:
            await self.ws.send(json.dumps({"type": "start_call", "preferred_format": "pcm16"}))
            self.speak_at = loop.time() + 3.0 + self.rng.uniform(0, 2)  # after the greeting
            tick = loop.time()
            while loop.time() < stop_at and self.stats.closed is None:
                now = loop.time()
                self._step(now)
                await self.ws.send(TONE_FRAME if self.state == "speaking" else SILENCE_FRAME)
                tick += FRAME_MS / 1000
                delay = tick - loop.time()
                if delay < -1.0:  # hopelessly late (an overloaded box): resynchronise
                    tick = loop.time()
                await asyncio.sleep(max(0.0, delay))
            with contextlib.suppress(Exception):
                await self.ws.send(json.dumps({"type": "end_call"}))
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(10):
                    await self.ws.close()
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader

    def _step(self, now: float) -> None:
        if self.state == "ready" and now >= self.speak_at:
            self.state = "speaking"
            self.spoke_until = now + self.speech_s
        elif self.state == "speaking" and now >= self.spoke_until:
            self.state = "awaiting"
            self.spoke_until = now  # the last tone frame went out just before
            self.first_audio = None
            self.reply_bytes = 0
            self.reply_done = False
        elif self.state == "awaiting":
            if self.first_audio is not None and self.reply_done:
                self.state = "playing"
                self.play_until = self.first_audio + self.reply_bytes / BYTES_PER_S
            elif now - self.spoke_until > STUCK_S:
                self.stats.stuck += 1
                self._next(now)
        elif self.state == "playing" and now >= self.play_until:
            self._next(now)

    def _next(self, now: float) -> None:
        self.state = "ready"
        self.speak_at = now + self.rng.uniform(1.0, 3.0)

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            async for frame in self.ws:
                now = loop.time()
                if isinstance(frame, bytes):
                    if self.state == "awaiting":
                        if self.first_audio is None:
                            self.first_audio = now
                            self.stats.latencies.append((time.time(), now - self.spoke_until))
                        self.reply_bytes += len(frame)
                    continue
                msg = json.loads(frame)
                kind = msg.get("type")
                if kind == "turn_metrics":
                    self.stats.turns += 1
                    outcome = str(msg.get("outcome"))
                    self.stats.outcomes[outcome] = self.stats.outcomes.get(outcome, 0) + 1
                elif kind == "metrics" and self.state == "awaiting":
                    if isinstance(msg.get("first_audio_ms"), int | float):
                        self.stats.server_first_audio_ms.append(float(msg["first_audio_ms"]))
                elif kind == "transcript_end" and self.state == "awaiting":
                    self.reply_done = True
                elif kind == "error":
                    self.stats.errors.append(msg)
        except websockets.ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else 1006
            self.stats.closed = (code, exc.rcvd.reason if exc.rcvd is not None else "")


def health(srv: ServerProcess) -> dict[str, Any]:
    with urllib.request.urlopen(f"{srv.http_url}/healthz?verbose=1", timeout=30) as resp:
        data: dict[str, Any] = json.loads(resp.read())
        return data


def sample(srv: ServerProcess, t0: float) -> dict[str, Any]:
    pid = srv.proc.pid  # type: ignore[union-attr]
    h = health(srv)
    return {
        "t_s": round(time.monotonic() - t0, 1),
        "rss_kb": common.rss_kb(pid),
        "open_fds": common.open_fds(pid),
        "tasks": h.get("tasks"),
        "connections": h.get("connections"),
        "active_calls": h.get("active_calls"),
        "live_agents": h.get("live_agents"),
        "cpu_s": round(common.cpu_seconds(pid), 2),
    }


def wait_quiet(srv: ServerProcess, limit: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + limit
    h = health(srv)
    while time.monotonic() < deadline:
        h = health(srv)
        if not (h["connections"] or h["active_calls"] or h["live_agents"]):
            break
        time.sleep(0.2)
    return h


def settled_sample(
    srv: ServerProcess, t0: float, before: dict[str, Any], limit: float = 30.0
) -> dict[str, Any]:
    """The idle sample after the calls: hibernated agents close their databases in a worker
    thread just after they leave memory, so wait (bounded) for fds and tasks to settle."""
    deadline = time.monotonic() + limit
    s = sample(srv, t0)
    while time.monotonic() < deadline and (
        s["open_fds"] > before["open_fds"] + 3 or s["tasks"] > before["tasks"] + 3
    ):
        time.sleep(0.25)
        s = sample(srv, t0)
    return s


def _pct(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or a == 0:
        return None
    return round((b - a) / a * 100.0, 1)


async def run(
    *,
    calls: int,
    duration: float,
    sample_s: float = 5.0,
    speech_s: float = 1.0,
    warmup_s: float | None = None,
    warm_call_s: float = 6.0,
    seed: int = 7,
    data_root: Path | None = None,
    log: Any = print,
) -> dict[str, Any]:
    """Run one soak and return its figures (see the module docstring)."""
    rng = random.Random(seed)
    warmup = warmup_s if warmup_s is not None else max(5.0, duration * 0.1)
    with tempfile.TemporaryDirectory(dir=data_root) as tmp:
        env = {
            "CALLROOM_MAX_CALLS": str(max(200, calls * 2)),
            "CALLROOM_IDLE_SECONDS": "2",  # agents hibernate soon after their call ends
            "CALLROOM_LOG_LEVEL": "WARNING",  # one INFO line per turn is noise at this scale
        }
        srv = ServerProcess(APP, Path(tmp) / "data", env=env)
        srv.start(timeout=60)
        try:
            return await _run(
                srv, rng, calls, duration, sample_s, speech_s, warmup, warm_call_s, log
            )
        finally:
            srv.close()


async def _run(
    srv: ServerProcess,
    rng: random.Random,
    calls: int,
    duration: float,
    sample_s: float,
    speech_s: float,
    warmup: float,
    warm_call_s: float,
    log: Any,
) -> dict[str, Any]:
    t0 = time.monotonic()
    # warm the server (imports, first agent) so the idle baseline is a fair one
    warm = SoakCall(srv.ws_url("fake-voice", "soak-warm"), rng, speech_s)
    loop = asyncio.get_running_loop()
    await warm.run(loop.time() + warm_call_s)
    idle_before = await asyncio.to_thread(wait_quiet, srv)
    before = await asyncio.to_thread(sample, srv, t0)
    log(f"soak: {calls} calls x {duration:.0f}s; idle: {before}")

    callers = [SoakCall(srv.ws_url("fake-voice", f"soak-{i}"), rng, speech_s) for i in range(calls)]
    start = loop.time()
    stop_at = start + duration
    tasks = []
    for c in callers:  # ramp up over ~2 s
        tasks.append(asyncio.create_task(c.run(stop_at)))
        await asyncio.sleep(2.0 / max(1, calls))
    samples: list[dict[str, Any]] = []
    next_sample = loop.time() + sample_s
    while loop.time() < stop_at:
        await asyncio.sleep(max(0.0, min(next_sample, stop_at) - loop.time()))
        if loop.time() >= next_sample:
            s = await asyncio.to_thread(sample, srv, t0)
            s["load_t_s"] = round(loop.time() - start, 1)
            s["turns"] = sum(c.stats.turns for c in callers)
            samples.append(s)
            next_sample += sample_s
            log(
                f"  t={s['load_t_s']:>6}s rss={s['rss_kb'] / 1024:.1f}MB fds={s['open_fds']} "
                f"tasks={s['tasks']} calls={s['active_calls']} turns={s['turns']}"
            )
    await asyncio.gather(*tasks, return_exceptions=True)
    ended = loop.time()
    idle_after = await asyncio.to_thread(wait_quiet, srv)
    after = await asyncio.to_thread(settled_sample, srv, t0, before)
    log(f"soak: after: {after}")
    return summarize(
        callers,
        samples,
        before,
        after,
        idle_before,
        idle_after,
        start,
        ended,
        duration,
        warmup,
        sample_s,
        calls,
    )


def summarize(
    callers: list[SoakCall],
    samples: list[dict[str, Any]],
    before: dict[str, Any],
    after: dict[str, Any],
    idle_before: dict[str, Any],
    idle_after: dict[str, Any],
    start: float,
    ended: float,
    duration: float,
    warmup: float,
    sample_s: float,
    calls: int,
) -> dict[str, Any]:
    lat = sorted((t, s) for c in callers for t, s in c.stats.latencies)
    t_first = lat[0][0] if lat else 0.0
    # windows of `sample_s`, after warm-up: p99 over time
    windows: list[dict[str, Any]] = []
    if lat:
        end_t = lat[-1][0]
        w0 = t_first + warmup
        width = max(sample_s, (end_t - w0) / 10) if end_t > w0 else sample_s
        while w0 < end_t:
            vals = [s for t, s in lat if w0 <= t < w0 + width]
            if vals:
                st = common.summary_ms(vals)
                windows.append(
                    {
                        "from_s": round(w0 - t_first, 1),
                        "n": st["n"],
                        "p50_ms": st["p50"],
                        "p99_ms": st["p99"],
                    }
                )
            w0 += width
    loaded = [s for s in samples if s["load_t_s"] >= warmup]
    first = loaded[0] if loaded else (samples[0] if samples else None)
    last = loaded[-1] if loaded else (samples[-1] if samples else None)
    all_lat = common.summary_ms([s for _, s in lat]) if lat else {}
    server_fa = [v for c in callers for v in c.stats.server_first_audio_ms]
    outcomes: dict[str, int] = {}
    for c in callers:
        for k, v in c.stats.outcomes.items():
            outcomes[k] = outcomes.get(k, 0) + v
    closed = [c.stats.closed for c in callers if c.stats.closed is not None]
    cpu = (last["cpu_s"] - before["cpu_s"]) if last else None
    call_minutes = calls * (ended - start) / 60
    data: dict[str, Any] = {
        "calls": calls,
        "duration_s": duration,
        "elapsed_s": round(ended - start, 1),
        "warmup_s": warmup,
        "turns": sum(c.stats.turns for c in callers),
        "turns_per_call": [c.stats.turns for c in callers],
        "stuck_turns": sum(c.stats.stuck for c in callers),
        "outcomes": outcomes,
        "errors": [e for c in callers for e in c.stats.errors][:20],
        "closed_early": closed,
        "latency_ms": all_lat,
        "latency_windows": windows,
        "server_first_audio_ms": common.percentiles(server_fa) if server_fa else {},
        "rss_mb": {
            "idle_before": round(before["rss_kb"] / 1024, 1),
            "loaded_first": round(first["rss_kb"] / 1024, 1) if first else None,
            "loaded_last": round(last["rss_kb"] / 1024, 1) if last else None,
            "loaded_max": round(max(s["rss_kb"] for s in samples) / 1024, 1) if samples else None,
            "idle_after": round(after["rss_kb"] / 1024, 1),
        },
        "rss_growth_pct": _pct(first["rss_kb"], last["rss_kb"]) if first and last else None,
        "p99_drift_pct": _pct(windows[0]["p99_ms"], windows[-1]["p99_ms"]) if windows else None,
        "fds": {
            "before": before["open_fds"],
            "max": max((s["open_fds"] for s in samples), default=None),
            "after": after["open_fds"],
        },
        "tasks": {
            "before": before["tasks"],
            "max": max((s["tasks"] for s in samples), default=None),
            "after": after["tasks"],
        },
        "server_cpu_s_per_call_minute": round(cpu / call_minutes, 2)
        if cpu and call_minutes
        else None,
        "idle_before": idle_before,
        "idle_after": idle_after,
        "samples": samples,
    }
    return data


def report(data: dict[str, Any], name: str, results_dir: Path = common.RESULTS_DIR) -> None:
    rss, fds, tasks, lat = data["rss_mb"], data["fds"], data["tasks"], data["latency_ms"]
    rows = [
        common.Row("calls x duration", f"{data['calls']} x {data['duration_s']:.0f} s"),
        common.Row("turns completed", data["turns"], note=f"outcomes {data['outcomes']}"),
        common.Row(
            "stuck turns / calls closed early",
            f"{data['stuck_turns']} / {len(data['closed_early'])}",
        ),
        common.Row(
            "turn latency p50 (client)",
            lat.get("p50"),
            "ms",
            note="last tone frame sent → first reply audio (includes end-of-turn wait)",
        ),
        common.Row("turn latency p99 (client)", lat.get("p99"), "ms"),
        common.Row("p99 drift (last window vs first)", data["p99_drift_pct"], "%"),
        common.Row(
            "RSS idle → loaded first → loaded last → idle after",
            f"{rss['idle_before']} → {rss['loaded_first']} → {rss['loaded_last']} → "
            f"{rss['idle_after']}",
            "MB",
        ),
        common.Row("RSS growth under load", data["rss_growth_pct"], "%"),
        common.Row(
            "open fds before / max / after", f"{fds['before']} / {fds['max']} / {fds['after']}"
        ),
        common.Row(
            "asyncio tasks before / max / after",
            f"{tasks['before']} / {tasks['max']} / {tasks['after']}",
        ),
        common.Row("server CPU per call-minute", data["server_cpu_s_per_call_minute"], "s"),
    ]
    series = common.markdown_table(
        ("t (s)", "RSS (MB)", "fds", "tasks", "active calls", "turns"),
        [
            (
                s["load_t_s"],
                round(s["rss_kb"] / 1024, 1),
                s["open_fds"],
                s["tasks"],
                s["active_calls"],
                s["turns"],
            )
            for s in data["samples"]
        ],
    )
    windows = common.markdown_table(
        ("from (s)", "turns", "p50 (ms)", "p99 (ms)"),
        [(w["from_s"], w["n"], w["p50_ms"], w["p99_ms"]) for w in data["latency_windows"]],
    )
    common.write_results(
        name,
        data,
        rows,
        title=f"Soak: {data['calls']} calls x {data['duration_s']:.0f} s (FakeVoice, loopback)",
        notes=[
            "Server: `callroom serve tests/integration/apps/voice_fake.py` (fake speech models), "
            "CALLROOM_IDLE_SECONDS=2, log level WARNING.",
            "Each call: 20 ms PCM16 frames at real time for its whole length; 1 s tone turns, "
            "the reply played at real time, 1-3 s pauses.",
            "Growth and drift compare the first sample/window after warm-up with the last.",
        ],
        extra_md=f"## Over time\n\n{series}\n\n## Turn latency by window\n\n{windows}\n",
        results_dir=results_dir,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=50)
    p.add_argument("--duration", type=float, default=300.0, help="seconds of load")
    p.add_argument("--sample-s", type=float, default=5.0)
    p.add_argument("--speech-s", type=float, default=1.0)
    p.add_argument("--name", default="soak")
    args = p.parse_args(argv)
    data = asyncio.run(
        run(
            calls=args.calls, duration=args.duration, sample_s=args.sample_s, speech_s=args.speech_s
        )
    )
    report(data, args.name)
    print(
        json.dumps(
            {
                k: data[k]
                for k in (
                    "turns",
                    "stuck_turns",
                    "latency_ms",
                    "p99_drift_pct",
                    "rss_mb",
                    "rss_growth_pct",
                    "fds",
                    "tasks",
                )
            },
            default=str,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
