"""Phone calls through Twilio Media Streams, into the same `VoiceAgent` calls as the browser.

Routes (mount with `create_app(agents, settings, routes=twilio_routes())`):

- `POST /twilio/voice/<agent-class>` — the number's voice webhook. Answers TwiML
  `<Connect><Stream url="wss://HOST/twilio/stream/<agent-class>">` with `<Parameter>`s taken
  from the webhook's form (`CallSid`, `From`, `To`, …); `?name=<agent-name>` sends every call
  of that number to one agent instead of one agent per call.
- `wss://HOST/twilio/stream/<agent-class>` — the Media Stream. On `start` the agent named by
  the CallSid (or `?name=`) gets a call, exactly as if a browser had sent `start_call`.

Design: the `Call` (voice/pipeline.py) is transport-agnostic; it writes voice-protocol JSON and
PCM16 frames into a `Connection`. `TwilioConnection` is that connection for a phone call: it
translates what the call writes into Media Streams messages instead of sending it —

    PCM16 8 kHz frames      → μ-law, 20 ms `media` messages (160 bytes), then one `mark`
    `playback_interrupt`    → `clear` (Twilio drops its buffer; the pipeline cut the history)
    `transcript_end`/status → flush the last partial frame (+ `mark`)
    `status: idle` in call  → the agent ended the call: let Twilio play what is buffered (up
                              to the last mark), optionally hang up by REST, close the stream
    anything else           → dropped (transcripts, metrics: a phone has no screen)

— and it reports the playback position from the `mark`s Twilio echoes (`PlaybackCursor`), so
"what did the caller hear" on barge-in comes from Twilio, not from a wall-clock guess. Inbound,
`TwilioStream` decodes `media` (μ-law 8 kHz → PCM16 → 16 kHz) into `call.feed`, maps `dtmf` to
`VoiceAgent.on_dtmf`, and `stop` to the end of the call. The connection tells the agent its
fixed output rate (`output_rate = 8000`), so speech is rendered at 8 kHz once, not resampled
twice.

Security: with `TWILIO_AUTH_TOKEN` set, the webhook and the stream's WebSocket upgrade must
carry a valid `X-Twilio-Signature` (403 otherwise). Without it, anyone who can reach the
server can open a stream — as anyone can open `/agents/…` — so set it in production.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qsl, quote

import httpx
import numpy as np
import numpy.typing as npt
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketState

from callroom.agent import current_connection
from callroom.connection import CLOSE_POLICY, Connection
from callroom.errors import BadAgentName
from callroom.protocol import twilio as tp
from callroom.protocol import voice as vp
from callroom.protocol.names import validate_agent_name
from callroom.server.limits import RATE_LIMIT_REASON, limiter_for
from callroom.voice.agent import VoiceAgent
from callroom.voice.audio import int16_to_bytes, mulaw_decode, mulaw_encode, pcm16_bytes_to_int16

if TYPE_CHECKING:
    from callroom.host import AgentHost

log = logging.getLogger("callroom.twilio")

AGENT_PARAM: Final = "callroom_agent"
"""Custom stream parameter naming the agent (set by the webhook's `?name=`)."""
FORWARDED_PARAMS: Final = ("CallSid", "AccountSid", "From", "To", "Direction", "CallerName")
"""Webhook form fields handed to the stream as `start.customParameters` (→ `connection.query`)."""
START_TIMEOUT_S: Final = 10.0
MARK_LATE_S: Final = 2.0
"""A mark this far overdue (by the wall clock) means the peer does not echo marks: the
playback position then falls back to the wall-clock estimate instead of stalling."""
PLAYOUT_GRACE_S: Final = 2.0
"""After the agent hangs up, wait this long past the expected end of the buffered audio for
Twilio to confirm it was played, then close anyway."""
_CONN_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


class TwilioSettings(BaseSettings):
    """`TWILIO_*` environment variables (Twilio's own names for the credentials)."""

    model_config = SettingsConfigDict(env_prefix="TWILIO_", extra="ignore")

    auth_token: SecretStr | None = None
    """Enables `X-Twilio-Signature` checks (webhook + stream upgrade) and REST hang-up."""
    account_sid: str | None = None
    """With `auth_token`: the agent's `end_call()` also completes the call via the REST API."""
    public_url: str | None = None
    """`https://host[:port]` Twilio uses to reach us, when a proxy hides it from `Host` and
    `X-Forwarded-Proto` (signatures are computed over the URL Twilio requested)."""
    api_base: str = "https://api.twilio.com"
    rest_hangup: bool = True

    def token(self) -> str | None:
        return self.auth_token.get_secret_value() if self.auth_token else None


# -- audio -------------------------------------------------------------------------------------
def _halfband(half: int = 32, beta: float = 7.0) -> npt.NDArray[np.float64]:
    n = np.arange(2 * half + 1) - half
    return 0.5 * np.sinc(0.5 * n) * np.kaiser(2 * half + 1, beta)


class Upsampler2x:
    """8 kHz → 16 kHz for the caller's audio, with 2 ms of delay.

    soxr (`Resampler`) holds back 20-61 ms per 20 ms chunk at its lowest filtering quality;
    every millisecond held here delays end-of-turn detection and so the reply. A 65-tap
    Kaiser half-band FIR does the job with ±0.002 dB ripple up to 3.4 kHz (the phone band)
    and ≥ 70 dB image rejection above 4.6 kHz, at a fixed delay of 32 output samples.
    Polyphase: even outputs are the input delayed (the half-band's centre tap), odd outputs a
    32-tap FIR; state is the last 32 input samples.
    """

    HALF: Final = 32

    def __init__(self) -> None:
        taps = 2.0 * _halfband(self.HALF)  # ×2: zero-stuffing halves the amplitude
        self._odd = taps[1::2]  # 32 taps
        self._hist = np.zeros(self.HALF, dtype=np.float64)

    def process(self, samples: npt.NDArray[np.int16]) -> npt.NDArray[np.int16]:
        x = np.asarray(samples, dtype=np.float64)
        if not len(x):
            return np.zeros(0, np.int16)
        buf = np.concatenate((self._hist, x))
        n = len(x)
        h = self.HALF
        even = buf[h - h // 2 : h - h // 2 + n]  # x delayed by HALF/2 input samples
        odd = np.convolve(buf, self._odd, mode="valid")[1 : n + 1]
        self._hist = buf[-h:]
        out = np.empty(2 * n, dtype=np.float64)
        out[0::2] = even
        out[1::2] = odd
        np.rint(out, out=out)
        np.clip(out, -32768, 32767, out=out)
        return out.astype(np.int16)


# -- the connection the Call writes into --------------------------------------------------------
class TwilioConnection(Connection):
    """A `Connection` for one Media Stream: translates the call's output (see module doc).

    Agents see it like any connection: `connection.query` holds the stream's custom
    parameters (`From`, `To`, `CallSid`, …), `connection.stream` the whole `start` event.
    """

    output_rate: int = tp.SAMPLE_RATE
    """Read by `VoiceAgent._start_call`: this call's speech is rendered at 8 kHz."""

    def __init__(
        self,
        websocket: WebSocket,
        start: tp.Start,
        *,
        conn_id: str,
        max_queue: int = 512,
        max_bytes: int = 16 * 1024 * 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(websocket, conn_id, max_queue=max_queue, max_bytes=max_bytes)
        self.stream = start
        self.stream_sid = start.stream_sid
        self.call_sid = start.call_sid
        self.query = dict(start.custom_parameters)
        self._clock = clock
        self._rest = np.zeros(0, np.uint8)  # μ-law codes short of a 20 ms frame
        self._marks: collections.deque[tuple[str, int]] = collections.deque()
        self._mark_seq = 0
        self._accepted = 0  # samples the call handed to `send`
        self._flushed = 0  # samples sent as `media`
        self._acked = 0.0  # position confirmed by the last echoed mark
        self._acked_at = 0.0
        self._in_call = False
        self.call_over = asyncio.Event()
        """Set when the agent ended the call (`status: idle` after `audio_config`)."""
        self.played_out = asyncio.Event()
        self.played_out.set()
        self.media_sent = 0
        self.marks_sent = 0
        self.clears_sent = 0

    # -- writer: queue items are batches of Twilio messages (one per `send` of audio) --------
    async def _write_loop(self) -> None:
        ws = self.websocket
        try:
            while True:
                item: Any = await self._queue.get()
                if item is None:
                    return
                self._dequeued(item)
                for text in item:
                    await ws.send_text(text)
        except Exception:  # the socket went away; the reader notices and cleans up
            self.closed = True
        finally:
            self._drained.set()

    def _enqueue(self, batch: list[str]) -> None:
        # One queue slot per batch keeps the base class's bound meaningful (a 0.5 s chunk of
        # speech is 25 media messages) and reuses its overflow policy (close with 1013).
        if batch and not self.closed:
            Connection.send(self, batch)  # type: ignore[arg-type]

    # -- what the Call writes -----------------------------------------------------------------
    def send(self, data: str | bytes) -> None:
        """PCM16 at 8 kHz → `media` frames + a `mark`. Text frames (core/voice protocol for
        browser clients: state broadcasts, …) have no meaning on a phone line and are dropped."""
        if isinstance(data, str) or self.closed:
            return
        pcm = pcm16_bytes_to_int16(data)
        if not len(pcm):
            return
        if not self._marks:  # the line was quiet: playback of this audio starts about now
            self._acked = float(self._accepted)
            self._acked_at = self._clock()
        self._accepted += len(pcm)
        codes = np.concatenate((self._rest, mulaw_encode(pcm)))
        whole = len(codes) // tp.FRAME_BYTES * tp.FRAME_BYTES
        self._rest = codes[whole:].copy()
        batch = [
            tp.dumps(tp.media(self.stream_sid, codes[i : i + tp.FRAME_BYTES].tobytes()))
            for i in range(0, whole, tp.FRAME_BYTES)
        ]
        self.media_sent += len(batch)
        self._flushed += whole
        if batch:
            batch.append(self._new_mark())
        self._enqueue(batch)

    def send_json(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "playback_interrupt":
            self.discard_pending_audio()
        elif kind == "audio_config":
            self._in_call = True
        elif kind == "transcript_end":
            self.flush_audio()
        elif kind == "status":
            if message.get("status") in ("listening", "idle"):
                self.flush_audio()
            if message.get("status") == "idle" and self._in_call:
                self._in_call = False
                self.call_over.set()
        elif kind == "error":
            log.warning("twilio call %s: %s", self.call_sid, message.get("message"))

    def flush_audio(self) -> None:
        """Send the last partial frame, padded with silence, and mark it."""
        if not len(self._rest) or self.closed:
            return
        n = len(self._rest)
        frame = np.full(tp.FRAME_BYTES, tp.MULAW_SILENCE, np.uint8)
        frame[:n] = self._rest
        self._rest = np.zeros(0, np.uint8)
        self._flushed += n
        self.media_sent += 1
        self._enqueue([tp.dumps(tp.media(self.stream_sid, frame.tobytes())), self._new_mark()])

    def _new_mark(self) -> str:
        self._mark_seq += 1
        name = f"cr{self._mark_seq}"
        self._marks.append((name, self._flushed))
        self.played_out.clear()
        self.marks_sent += 1
        return tp.dumps(tp.mark(self.stream_sid, name))

    def discard_pending_audio(self) -> int:
        """Barge-in: drop queued audio and `clear` Twilio's buffer; the playback position
        freezes where the caller stopped hearing us."""
        now = self._clock()
        position = self.samples_played(now)
        dropped = 0
        kept: list[Any] = []
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is None:
                kept.append(item)
            else:
                dropped += 1
        for item in kept:
            self._queue.put_nowait(item)
        self._queued_bytes = 0
        self._drained.set()
        pending = bool(self._marks) or dropped > 0 or len(self._rest) > 0
        self._rest = np.zeros(0, np.uint8)
        self._marks.clear()  # Twilio echoes them after `clear`: unknown names are ignored
        self.played_out.set()
        self._accepted = self._flushed = round(position)
        self._acked, self._acked_at = float(self._accepted), now
        if pending:
            self.clears_sent += 1
            self._enqueue([tp.dumps(tp.clear(self.stream_sid))])
        return dropped

    # -- playback position (`PlaybackCursor`) -------------------------------------------------
    def on_mark(self, name: str) -> bool:
        """Twilio played up to our mark `name`. False for a mark we no longer track."""
        for i, (mark_name, position) in enumerate(self._marks):
            if mark_name == name:
                for _ in range(i + 1):
                    self._marks.popleft()
                self._acked, self._acked_at = float(position), self._clock()
                if not self._marks:
                    self.played_out.set()
                return True
        return False

    def samples_sent(self) -> int:
        return self._accepted

    def samples_played(self, now: float) -> float:
        """Confirmed by the last mark, plus the time since, never past the next mark (Twilio
        has not played that yet) unless that mark is long overdue."""
        if not self._marks:
            return float(self._accepted)
        upcoming = self._marks[0][1]
        estimate = self._acked + max(0.0, now - self._acked_at) * self.output_rate
        if estimate <= upcoming:
            return estimate
        if estimate - upcoming > MARK_LATE_S * self.output_rate:
            return min(estimate, float(self._accepted))
        return float(upcoming)

    async def wait_played(self, limit: float) -> bool:
        """Until Twilio has played everything sent (all marks echoed), at most `limit` s."""
        try:
            async with asyncio.timeout(limit):
                await self.played_out.wait()
            return True
        except TimeoutError:
            return False

    def seconds_buffered(self) -> float:
        return max(0.0, self._accepted - self.samples_played(self._clock())) / self.output_rate


# -- REST hang-up ------------------------------------------------------------------------------
def build_hangup_request(
    account_sid: str, auth_token: str, call_sid: str, api_base: str = "https://api.twilio.com"
) -> httpx.Request:
    """`POST /2010-04-01/Accounts/{sid}/Calls/{CallSid}.json` with `Status=completed`: ends
    the call even if the TwiML had more verbs after `<Connect>`."""
    url = (
        f"{api_base.rstrip('/')}/2010-04-01/Accounts/{quote(account_sid, safe='')}"
        f"/Calls/{quote(call_sid, safe='')}.json"
    )
    basic = base64.b64encode(f"{account_sid}:{auth_token}".encode()).decode("ascii")
    return httpx.Request(
        "POST", url, data={"Status": "completed"}, headers={"Authorization": f"Basic {basic}"}
    )


async def send_hangup(settings: TwilioSettings, call_sid: str) -> int | None:
    """Send the hang-up request if credentials are configured; the status code, or None."""
    token = settings.token()
    if not (settings.rest_hangup and token and settings.account_sid):
        return None
    request = build_hangup_request(settings.account_sid, token, call_sid, settings.api_base)
    try:
        async with httpx.AsyncClient(timeout=5.0) as client:
            response = await client.send(request)
    except httpx.HTTPError as exc:
        log.warning("twilio hang-up of %s failed: %s", call_sid, exc)
        return None
    if response.status_code >= 400:
        log.warning("twilio hang-up of %s: HTTP %s", call_sid, response.status_code)
    return response.status_code


# -- URLs --------------------------------------------------------------------------------------
def _secure(conn: HTTPConnection) -> bool:
    proto = conn.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    if proto:
        return proto in ("https", "wss")
    return conn.url.scheme in ("https", "wss")


def _origin(conn: HTTPConnection, settings: TwilioSettings, *, websocket: bool) -> str:
    """`scheme://host` as Twilio sees us: `TWILIO_PUBLIC_URL`, else Host + X-Forwarded-Proto."""
    if settings.public_url:
        base = settings.public_url.rstrip("/")
        scheme, _, rest = base.partition("://")
        secure = scheme in ("https", "wss")
    else:
        rest = conn.headers.get("host") or conn.url.netloc
        secure = _secure(conn)
    if websocket:
        return f"{'wss' if secure else 'ws'}://{rest}"
    return f"{'https' if secure else 'http'}://{rest}"


def _signed_url(conn: HTTPConnection, settings: TwilioSettings, *, websocket: bool) -> str:
    query = conn.url.query
    return (
        _origin(conn, settings, websocket=websocket)
        + conn.url.path
        + (f"?{query}" if query else "")
    )


# -- the stream --------------------------------------------------------------------------------
class TwilioStream:
    """One Media Stream WebSocket, from `connected` to `stop` (or the agent hanging up)."""

    def __init__(
        self, ws: WebSocket, host: AgentHost, segment: str, settings: TwilioSettings
    ) -> None:
        self.ws = ws
        self.host = host
        self.segment = segment
        self.settings = settings
        self.name = ""
        self.conn: TwilioConnection | None = None
        self.stopped = False
        self._upsampler = Upsampler2x()
        self.limiter = limiter_for(host.settings)

    async def run(self) -> None:
        ws = self.ws
        start = await self._await_start()
        if start is None:
            return
        if not start.media_format.is_mulaw_8k_mono:
            await ws.close(CLOSE_POLICY, "expected audio/x-mulaw 8000 Hz mono")
            return
        try:
            self.name = validate_agent_name(
                start.custom_parameters.get(AGENT_PARAM) or start.call_sid
            )
        except BadAgentName as exc:
            await ws.close(CLOSE_POLICY, exc.message[:120])
            return
        host, segment, name = self.host, self.segment, self.name
        sid = start.stream_sid
        conn_id = sid if _CONN_ID.fullmatch(sid) else uuid.uuid4().hex
        conn = TwilioConnection(
            ws,
            start,
            conn_id=conn_id,
            max_queue=host.settings.max_send_queue,
            max_bytes=host.settings.max_send_queue_bytes,
        )
        self.conn = conn
        conn.start()
        host.add_connection(segment, name, conn)
        watcher: asyncio.Task[None] | None = None
        code, reason = 1005, ""
        try:
            agent = await self._agent()
            with host.activity(agent):
                token = current_connection.set(conn)
                try:
                    await agent._on_connect_internal(conn)  # welcome/idle: dropped on a phone
                    await _guarded(agent, agent.on_connect(conn, ws), conn)
                    await agent._start_call(conn, vp.StartCall(preferred_format="pcm16"))
                finally:
                    current_connection.reset(token)
            if conn.id not in agent._calls:
                log.info("twilio call %s refused by %s/%s", start.call_sid, segment, name)
                await conn.close(1000, "call refused")
                return
            watcher = asyncio.create_task(self._hang_up_when_over(conn), name=f"twilio-{sid}")
            code, reason = await self._read_loop(conn)
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(BaseException):
                    await watcher
            await self._cleanup(conn, code, reason)

    async def _await_start(self) -> tp.Start | None:
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                while True:
                    msg = await self.ws.receive()
                    if msg["type"] == "websocket.disconnect":
                        return None
                    if not self.limiter.allow():
                        await self.ws.close(CLOSE_POLICY, RATE_LIMIT_REASON)
                        return None
                    event = tp.parse(msg.get("text") or msg.get("bytes") or b"")
                    if isinstance(event, tp.Start):
                        return event
                    if isinstance(event, tp.Stop):
                        await self.ws.close(1000, "stop")  # else the peer sees no close frame
                        return None
                    # `connected` (and anything before `start`) needs no answer.
        except TimeoutError:
            await self.ws.close(CLOSE_POLICY, "no start event")
            return None

    async def _agent(self) -> VoiceAgent:
        agent = await self.host.get(self.segment, self.name)
        assert isinstance(agent, VoiceAgent)
        return agent

    async def _read_loop(self, conn: TwilioConnection) -> tuple[int, str]:
        ws, host = self.ws, self.host
        limit = host.settings.max_message_bytes
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                return msg.get("code", 1005), msg.get("reason") or ""
            if not self.limiter.allow():
                log.warning("twilio stream %s: rate limit exceeded, closing", conn.stream_sid)
                await conn.close(CLOSE_POLICY, RATE_LIMIT_REASON)
                return CLOSE_POLICY, RATE_LIMIT_REASON
            data: str | bytes = msg.get("text") or msg.get("bytes") or b""
            if len(data) > limit:
                log.warning("twilio stream %s: %d-byte frame dropped", conn.stream_sid, len(data))
                continue
            event = tp.parse(data)
            if isinstance(event, tp.Mark):
                conn.on_mark(event.name)
                continue
            agent = await self._agent()  # it may not hibernate mid-call, but stay honest
            with host.activity(agent):
                token = current_connection.set(conn)
                try:
                    await self._dispatch(agent, conn, event)
                finally:
                    current_connection.reset(token)
            if self.stopped:
                return 1000, "stop"

    async def _dispatch(self, agent: VoiceAgent, conn: TwilioConnection, event: Any) -> None:
        if isinstance(event, tp.Media):
            if event.track not in ("inbound", "inbound_track"):
                return  # our own audio, if a <Start><Stream> also forks the outbound track
            pcm16k = self._upsampler.process(mulaw_decode(event.payload))
            agent._on_audio(conn, int16_to_bytes(pcm16k))
        elif isinstance(event, tp.Dtmf):
            await handle_dtmf(agent, conn, event.digit)
        elif isinstance(event, tp.Stop):
            self.stopped = True
        elif isinstance(event, tp.Invalid):
            log.warning("twilio stream %s: %s", conn.stream_sid, event.reason)
        # connected / a repeated start / unknown events: nothing to do

    async def _hang_up_when_over(self, conn: TwilioConnection) -> None:
        """The agent ended the call: let Twilio finish playing, then close the stream (the
        `<Connect>` verb ends; there is no next verb, so the call ends)."""
        await conn.call_over.wait()
        conn.flush_audio()
        played = await conn.wait_played(min(conn.seconds_buffered() + PLAYOUT_GRACE_S, 120.0))
        if not played:
            log.info("twilio call %s: playout not confirmed; closing", conn.call_sid)
        await send_hangup(self.settings, conn.call_sid)
        await conn.close(1000, "call ended")

    async def _cleanup(self, conn: TwilioConnection, code: int, reason: str) -> None:
        host, segment, name = self.host, self.segment, self.name
        conn.closed = True
        try:
            if host.accepting or host.is_live(segment, name):
                agent = await self._agent()
                with host.activity(agent):
                    # A phone stream never reconnects: end the call (and keep no attachment).
                    if conn.id in agent._calls:
                        await agent._end_call(conn, after_reply=False)
                    await agent._on_close_internal(conn)
                    await _guarded(agent, agent.on_close(conn, code, reason), conn)
                    agent._storage.drop_attachment(conn.id)
        except Exception:
            log.exception("twilio stream clean-up failed")
        host.remove_connection(segment, name, conn)
        await conn.aclose_writer()
        with contextlib.suppress(Exception):
            if self.ws.application_state == WebSocketState.CONNECTED:
                await self.ws.close(1000)


async def handle_dtmf(agent: VoiceAgent, conn: Connection, digit: str) -> None:
    """`on_dtmf` first; if it does not handle the key, the key interrupts what the caller is
    hearing (as speech would) and becomes a text turn the agent answers out loud."""
    try:
        handled = await agent.on_dtmf(digit, conn)
    except Exception as exc:
        await agent.on_error(exc, conn)
        return
    if handled:
        return
    call = agent._calls.get(conn.id)
    if call is not None:
        call.barge_in()
    await agent._text_message(conn, f"The caller pressed {digit}")


async def _guarded(agent: VoiceAgent, value: Any, conn: Connection) -> None:
    try:
        if asyncio.iscoroutine(value):
            await value
    except Exception as exc:
        await agent.on_error(exc, conn)


# -- routes ------------------------------------------------------------------------------------
def _voice_class(host: AgentHost, segment: str) -> type[VoiceAgent] | None:
    cls = host.classes.get(segment)
    return cls if isinstance(cls, type) and issubclass(cls, VoiceAgent) else None


def twilio_routes(
    prefix: str = "/twilio", settings: TwilioSettings | None = None
) -> list[BaseRoute]:
    """The webhook and stream routes, for `create_app(..., routes=twilio_routes())`."""
    cfg = settings or TwilioSettings()
    prefix = "/" + prefix.strip("/")

    async def voice_webhook(request: Request) -> Response:
        host: AgentHost = request.app.state.host
        segment = request.path_params["agent"]
        if _voice_class(host, segment) is None:
            return PlainTextResponse(f"no voice agent is served as {segment}", 404)
        params: list[tuple[str, str]] = []
        if request.method == "POST":
            body = (await request.body()).decode("utf-8", "replace")
            params = parse_qsl(body, keep_blank_values=True)
        token = cfg.token()
        if token is not None:
            url = _signed_url(request, cfg, websocket=False)
            if not tp.validate_signature(
                token, url, params, request.headers.get("x-twilio-signature")
            ):
                log.warning("twilio webhook: bad or missing X-Twilio-Signature for %s", url)
                return PlainTextResponse("invalid Twilio signature", 403)
        form = dict(params) if params else dict(request.query_params)
        parameters = {k: form[k] for k in FORWARDED_PARAMS if form.get(k)}
        name = request.query_params.get("name")
        if name:
            try:
                parameters[AGENT_PARAM] = validate_agent_name(name)
            except BadAgentName as exc:
                return PlainTextResponse(exc.message, 400)
        if not host.accepting:
            body = tp.say_twiml("Sorry, we cannot take your call right now. Please call again.")
            return Response(body, media_type="text/xml")
        stream_url = _origin(request, cfg, websocket=True) + f"{prefix}/stream/{segment}"
        return Response(tp.connect_stream_twiml(stream_url, parameters), media_type="text/xml")

    async def stream_endpoint(ws: WebSocket) -> None:
        host: AgentHost = ws.app.state.host
        segment = ws.path_params["agent"]
        refusal: tuple[int, str] | None = None
        if _voice_class(host, segment) is None:
            refusal = (404, f"no voice agent is served as {segment}")
        elif not host.accepting:
            refusal = (503, "server is shutting down")
        else:
            token = cfg.token()
            if token is not None and not _ws_signature_ok(ws, cfg, token):
                refusal = (403, "invalid Twilio signature")
        if refusal is not None:
            await _refuse(ws, *refusal)
            return
        await ws.accept()
        await TwilioStream(ws, host, segment, cfg).run()

    return [
        Route(f"{prefix}/voice/{{agent}}", voice_webhook, methods=["POST", "GET"]),
        WebSocketRoute(f"{prefix}/stream/{{agent}}", stream_endpoint),
    ]


def _ws_signature_ok(ws: WebSocket, settings: TwilioSettings, token: str) -> bool:
    """Twilio signs the stream's upgrade request over its `wss://` URL, with no parameters;
    the `https://` spelling of the same URL is accepted too (proxies differ in what they
    report, and either way the signature proves knowledge of the auth token)."""
    signature = ws.headers.get("x-twilio-signature")
    return any(
        tp.validate_signature(token, _signed_url(ws, settings, websocket=w), None, signature)
        for w in (True, False)
    )


async def _refuse(ws: WebSocket, status: int, message: str) -> None:
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        await ws.send_denial_response(PlainTextResponse(message, status))
        return
    await ws.accept()
    await ws.close(CLOSE_POLICY, message[:120])
