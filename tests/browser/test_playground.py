"""The browser playground (`/`) in real headless Chromium against a real callroom server.

Chromium's fake capture device plays a spoken WAV (looped) as the microphone, so the page's
AudioWorklet capture, the binary audio path, the transcript rendering and the PCM16 playback
all run as they would for a person. `drive.mjs` (playwright-core) clicks through the page and
prints `window.playground`; the assertions are here. A screenshot of the call goes to
`test-artifacts/playground.png` (and `playground-real.png` for the real-model test).

Set-up is automatic: Debian's `chromium` is installed with apt-get when missing (the test is
skipped, with the reason, when that is impossible) and `npm ci` runs in tests/browser when
playwright-core is missing (Playwright's own browser download is never used).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from callroom.errors import MissingExtra
from tests.fixtures.speech import RATE, silence, write_wav
from tests.integration.server import ROOT, ServerProcess

HERE = Path(__file__).resolve().parent
ARTIFACTS = ROOT / "test-artifacts"
FAKE_APP = ROOT / "tests" / "integration" / "apps" / "voice_fake.py"
REAL_APP = ROOT / "tests" / "integration" / "apps" / "voice_real.py"
DRIVER_TIMEOUT = 150.0

pytestmark = [pytest.mark.node, pytest.mark.timeout(600)]


# -- dependencies ------------------------------------------------------------------------------
def _run(cmd: list[str], timeout: float, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kw)


def _install_chromium() -> str:
    """Path of Debian's chromium, installing it with apt-get if needed (else skip)."""
    found = shutil.which("chromium") or (
        "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
    )
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt is None:
        pytest.skip("chromium is not installed and apt-get is not available to install it")
    prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
    if prefix and shutil.which("sudo") is None:
        pytest.skip("chromium is not installed and installing it needs root (no sudo)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*prefix, apt, "install", "-y", "--no-install-recommends", "chromium"]
    proc = _run(install, 900, env=env)
    if proc.returncode != 0:  # stale package lists: refresh once and retry
        _run([*prefix, apt, "update"], 600, env=env)
        proc = _run(install, 900, env=env)
    found = shutil.which("chromium")
    if proc.returncode != 0 or not found:
        pytest.skip(f"could not install chromium with apt-get: {proc.stderr.strip()[-500:]}")
    return found


def _install_playwright_core() -> None:
    if (HERE / "node_modules" / "playwright-core" / "package.json").exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed (needed for playwright-core)")
    # Only the library: its own browser download is not wanted (Debian's chromium is used).
    env = {**os.environ, "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1"}
    proc = _run([npm, "ci", "--no-audit", "--no-fund"], 300, cwd=HERE, env=env)
    if proc.returncode != 0:
        pytest.skip(f"`npm ci` in tests/browser failed: {proc.stderr.strip()[-500:]}")


@pytest.fixture(scope="module")
def chromium() -> str:
    if shutil.which("node") is None:
        pytest.skip("node is not installed (needed to drive the browser)")
    path = _install_chromium()
    _install_playwright_core()
    return path


# -- the caller's voice ------------------------------------------------------------------------
def _voiced(seconds: float, rate: int = RATE) -> np.ndarray:
    """Speech-like sound without a TTS: a 140 Hz buzz with harmonics, 4 syllables a second."""
    t = np.arange(round(seconds * rate)) / rate
    buzz = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 12))
    syllables = 0.55 + 0.45 * np.sin(2 * np.pi * 4 * t)
    return (buzz * syllables / np.max(np.abs(buzz)) * 9000).astype(np.int16)


def spoken_wav(path: Path, *sentences: str, lead_s: float, gap_s: float, tail_s: float) -> Path:
    """`lead_s` of silence, the sentences spoken by Piper `gap_s` apart (a speech-like buzz
    when Piper is not installed), then `tail_s` of silence. Chromium loops the file, so the
    caller speaks once per loop and leaves the agent room to answer."""
    try:
        from tests.fixtures.speech import speech

        spoken = [speech(text) for text in sentences]
    except (ImportError, MissingExtra):
        spoken = [_voiced(1.5) for _ in sentences]
    parts: list[np.ndarray] = [silence(lead_s)]
    for i, words in enumerate(spoken):
        parts += [silence(gap_s)] if i else []
        parts.append(words)
    parts.append(silence(tail_s))
    return write_wav(path, np.concatenate(parts))


# -- running the page --------------------------------------------------------------------------
def drive(
    chromium: str,
    srv: ServerProcess,
    tmp_path: Path,
    *,
    agent: str,
    wav: Path,
    wait_for: str,
    screenshot: Path,
    text: str = "",
    text_reply: str = "",
    timeout_s: float = 60.0,
) -> dict[str, Any]:
    """Run drive.mjs; returns `window.playground` as the page saw it (fails on any error)."""
    ARTIFACTS.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "CHROMIUM": chromium,
        "PAGE_URL": f"{srv.http_url}/",
        "AGENT": agent,
        "CALL_ID": f"browser-{uuid.uuid4().hex[:8]}",
        "FAKE_AUDIO": str(wav),
        "WAIT_FOR": wait_for,
        "SCREENSHOT": str(screenshot),
        "USER_DATA_DIR": str(tmp_path / "chromium-profile"),
        "TIMEOUT_MS": str(int(timeout_s * 1000)),
        "TEXT": text,
        "TEXT_REPLY": text_reply,
    }
    node = shutil.which("node")
    assert node is not None
    try:
        proc = _run([node, str(HERE / "drive.mjs")], DRIVER_TIMEOUT, cwd=HERE, env=env)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"drive.mjs hung for {DRIVER_TIMEOUT}s\n{exc.stdout}\n{exc.stderr}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, f"drive.mjs exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    result: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    state = result.get("state") or {}
    assert result["ok"], (
        f"browser step '{result['phase']}' failed: {result.get('error')}\n"
        f"page errors: {state.get('errors')}\ntranscript: {state.get('transcript')}\n"
        f"stats: {state.get('stats')}\nmetrics: {state.get('metrics')}\n"
        f"console: {result.get('console')}"
    )
    assert state["errors"] == [], state["errors"]
    return dict(state)


def lines(state: dict[str, Any], role: str) -> list[str]:
    return [e["text"] for e in state["transcript"] if e["role"] == role]


# Wait (in the page) for a whole spoken turn: the caller's words came back as a transcript,
# the answer was streamed, its audio played and the turn's metrics arrived.
TURN_DONE = """(() => {{
  const p = window.playground;
  return p.transcript.some((l) => l.role === "user" && /{user}/i.test(l.text))
    && p.transcript.some((l) => l.role === "assistant" && /{reply}/i.test(l.text))
    && p.metrics.length >= 1 && p.stats.audioSeconds > 1;
}})()"""

# ... and for the fake test: one answer was talked over, the next one ran to its end.
BARGE_IN_THEN_TURN_DONE = """(() => {
  const p = window.playground;
  const replies = p.transcript.filter(
    (l) => l.role === "assistant" && l.text.startsWith("You said: I spoke for "));
  return p.stats.interrupts >= 1 && replies.length >= 2 && !replies.at(-1).interrupted
    && p.status === "listening" && p.metrics.length >= 1 && p.stats.audioSeconds > 2;
})()"""


def test_playground_call_with_fake_models(chromium: str, tmp_path: Path) -> None:
    """FakeVoice (energy VAD, "I spoke for N.N seconds." STT, tone TTS): fast and fixed.

    The caller waits for the greeting, says a sentence, pauses just long enough for the turn
    to end, and says a second one over the agent's answer (barge-in: the server cuts the
    reply, the page must stop its scheduled audio); the answer to the second plays in full.
    After hanging up, a typed message gets a text-only answer."""
    wav = spoken_wav(
        tmp_path / "spoken.wav",
        "I would like to book an appointment.",
        "Tomorrow morning if you can.",
        lead_s=3.0,
        gap_s=0.7,
        tail_s=7.0,
    )
    with ServerProcess(FAKE_APP, tmp_path / "data") as srv:
        state = drive(
            chromium,
            srv,
            tmp_path,
            agent="fake-voice",
            wav=wav,
            wait_for=BARGE_IN_THEN_TURN_DONE,
            screenshot=ARTIFACTS / "playground.png",
            text="hello from the text box",
            text_reply="You said: hello from the text box",
        )
    user = lines(state, "user")
    assistant = lines(state, "assistant")
    assert assistant[0] == "Hello, this is the test line.", assistant  # the greeting
    assert sum(t.startswith("I spoke for ") and t.endswith(" seconds.") for t in user) >= 2
    replies = [
        e
        for e in state["transcript"]
        if e["role"] == "assistant" and e["text"].startswith("You said: I spoke for ")
    ]
    assert replies and not replies[-1].get("interrupted"), state["transcript"]
    # Barge-in: the first answer was talked over; its unplayed audio was dropped.
    assert replies[0].get("interrupted"), state["transcript"]
    stats = state["stats"]
    assert stats["interrupts"] >= 1 and stats["cutChunks"] >= 1, stats
    assert "hello from the text box" in user
    assert state["audioConfig"] == {"type": "audio_config", "format": "pcm16", "sampleRate": 16000}
    # The microphone went out as 20 ms PCM16 frames, and speech came back and was played.
    assert stats["framesSent"] > 100 and stats["bytesSent"] == stats["framesSent"] * 640, stats
    assert stats["audioChunks"] > 0 and stats["audioSeconds"] > 2.0, stats
    first = state["metrics"][0]["callroom"]
    for stage in ("eot_ms", "stt_ms", "llm_ms", "tts_ms", "first_audio_ms", "total_ms"):
        assert stage in first, first
    assert first["eot_ms"] <= first["first_audio_ms"] <= first["total_ms"], first
    assert (ARTIFACTS / "playground.png").stat().st_size > 10_000


@pytest.mark.models
def test_playground_call_with_real_models(chromium: str, tmp_path: Path) -> None:
    """RealVoice: Silero VAD, Whisper tiny.en, Smart Turn and Piper, with a scripted reply."""
    pytest.importorskip("faster_whisper")
    pytest.importorskip("piper")
    from tests.integration.apps.voice_real import APPOINTMENT_REPLY

    wav = spoken_wav(
        tmp_path / "spoken.wav", "When is my next appointment?", lead_s=1.5, gap_s=0.0, tail_s=9.0
    )
    with ServerProcess(REAL_APP, tmp_path / "data") as srv:
        state = drive(
            chromium,
            srv,
            tmp_path,
            agent="real-voice",
            wav=wav,
            wait_for=TURN_DONE.format(user="appointment", reply="Tuesday at three"),
            screenshot=ARTIFACTS / "playground-real.png",
            timeout_s=90.0,
        )
    assert any("appointment" in t.lower() for t in lines(state, "user")), state["transcript"]
    assert APPOINTMENT_REPLY in lines(state, "assistant"), state["transcript"]
    assert state["audioConfig"]["format"] == "pcm16"
    assert state["audioConfig"]["sampleRate"] == 22050
    assert state["stats"]["audioSeconds"] > 2.0, state["stats"]
