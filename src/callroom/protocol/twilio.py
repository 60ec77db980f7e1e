"""Twilio Media Streams messages, TwiML and request signatures as plain data. No I/O.

Media Streams (bidirectional, `<Connect><Stream>`) is JSON text frames over one WebSocket:
Twilio sends `connected`, `start`, `media`, `mark`, `dtmf`, `stop`; we send `media`, `mark`,
`clear`. Audio is G.711 μ-law, 8 kHz, mono, base64 in `media.payload`. Both directions have
builders and parsers here, so the server and the test's simulated Twilio share one definition
and every message can be round-tripped in a unit test.

Signatures: Twilio signs each webhook (and the WebSocket upgrade of a stream) with
`X-Twilio-Signature` = base64(HMAC-SHA1(auth token, URL + each POST parameter's name and value,
sorted by name)). The helpers below follow Twilio's helper libraries, including their leniency
about an explicit default port in the URL (proxies add or strip `:443`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit
from xml.sax.saxutils import escape, quoteattr

MULAW: Final = "audio/x-mulaw"
SAMPLE_RATE: Final = 8000
FRAME_MS: Final = 20
FRAME_BYTES: Final = SAMPLE_RATE * FRAME_MS // 1000
"""One 20 ms μ-law frame: 160 bytes (one byte per sample)."""
MULAW_SILENCE: Final = 0xFF
"""μ-law code of (near) zero amplitude, used to pad a last partial frame."""


# -- inbound (Twilio → us) ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class MediaFormat:
    encoding: str = MULAW
    sample_rate: int = SAMPLE_RATE
    channels: int = 1

    @property
    def is_mulaw_8k_mono(self) -> bool:
        return (self.encoding, self.sample_rate, self.channels) == (MULAW, SAMPLE_RATE, 1)


@dataclass(frozen=True, slots=True)
class Connected:
    protocol: str = "Call"
    version: str = "1.0.0"


@dataclass(frozen=True, slots=True)
class Start:
    stream_sid: str
    call_sid: str
    account_sid: str = ""
    tracks: tuple[str, ...] = ("inbound",)
    media_format: MediaFormat = MediaFormat()
    custom_parameters: Mapping[str, str] = field(default_factory=dict)
    sequence_number: str = "1"


@dataclass(frozen=True, slots=True)
class Media:
    stream_sid: str
    payload: bytes
    """μ-law codes, already base64-decoded."""
    track: str = "inbound"
    chunk: int = 0
    timestamp: int = 0
    """Milliseconds since the stream started (Twilio's clock)."""
    sequence_number: str = ""


@dataclass(frozen=True, slots=True)
class Mark:
    """Twilio played the audio sent before our mark of this name (or cleared it)."""

    stream_sid: str
    name: str
    sequence_number: str = ""


@dataclass(frozen=True, slots=True)
class Dtmf:
    stream_sid: str
    digit: str
    track: str = "inbound_track"
    sequence_number: str = ""


@dataclass(frozen=True, slots=True)
class Stop:
    stream_sid: str
    call_sid: str = ""
    account_sid: str = ""
    sequence_number: str = ""


@dataclass(frozen=True, slots=True)
class Unknown:
    """An event this code does not know (Twilio may add some): ignored, never fatal."""

    event: str


@dataclass(frozen=True, slots=True)
class Invalid:
    reason: str


InboundEvent = Connected | Start | Media | Mark | Dtmf | Stop | Unknown | Invalid


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ("" if value is None else str(value))


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _loads(data: str | bytes) -> dict[str, Any] | Invalid:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: deep nesting
        return Invalid("not JSON")
    if not isinstance(obj, dict):
        return Invalid("not a JSON object")
    return obj


def parse(data: str | bytes) -> InboundEvent:
    """Classify one frame from Twilio. Lenient where Twilio's docs are loose (numbers as
    strings), strict where a mistake would corrupt audio (bad base64 is `Invalid`)."""
    obj = _loads(data)
    if isinstance(obj, Invalid):
        return obj
    event = obj.get("event")
    if not isinstance(event, str):
        return Invalid("missing event")
    sid = _str(obj.get("streamSid"))
    seq = _str(obj.get("sequenceNumber"))
    if event == "connected":
        return Connected(_str(obj.get("protocol")), _str(obj.get("version")))
    if event == "start":
        start = _obj(obj.get("start"))
        fmt = _obj(start.get("mediaFormat"))
        params = _obj(start.get("customParameters"))
        call_sid = _str(start.get("callSid"))
        stream_sid = sid or _str(start.get("streamSid"))
        if not call_sid or not stream_sid:
            return Invalid("start without callSid or streamSid")
        tracks = start.get("tracks")
        return Start(
            stream_sid=stream_sid,
            call_sid=call_sid,
            account_sid=_str(start.get("accountSid")),
            tracks=tuple(_str(t) for t in tracks) if isinstance(tracks, list) else ("inbound",),
            media_format=MediaFormat(
                encoding=_str(fmt.get("encoding")) or MULAW,
                sample_rate=_int(fmt.get("sampleRate")) or SAMPLE_RATE,
                channels=_int(fmt.get("channels")) or 1,
            ),
            custom_parameters={_str(k): _str(v) for k, v in params.items()},
            sequence_number=seq,
        )
    if event == "media":
        media = _obj(obj.get("media"))
        try:
            payload = base64.b64decode(_str(media.get("payload")), validate=True)
        except (binascii.Error, ValueError):
            return Invalid("media payload is not base64")
        return Media(
            stream_sid=sid,
            payload=payload,
            track=_str(media.get("track")) or "inbound",
            chunk=_int(media.get("chunk")),
            timestamp=_int(media.get("timestamp")),
            sequence_number=seq,
        )
    if event == "mark":
        name = _str(_obj(obj.get("mark")).get("name"))
        return Mark(sid, name, seq) if name else Invalid("mark without name")
    if event == "dtmf":
        dtmf = _obj(obj.get("dtmf"))
        digit = _str(dtmf.get("digit"))
        if len(digit) != 1 or digit not in "0123456789*#ABCD":
            return Invalid(f"bad DTMF digit {digit!r}")
        return Dtmf(sid, digit, _str(dtmf.get("track")) or "inbound_track", seq)
    if event == "stop":
        stop = _obj(obj.get("stop"))
        return Stop(sid, _str(stop.get("callSid")), _str(stop.get("accountSid")), seq)
    return Unknown(event)


# Builders of Twilio's side (the simulated Twilio in tests; docs examples' shapes).
def connected_event(version: str = "1.0.0") -> dict[str, Any]:
    return {"event": "connected", "protocol": "Call", "version": version}


def start_event(start: Start) -> dict[str, Any]:
    fmt = start.media_format
    return {
        "event": "start",
        "sequenceNumber": start.sequence_number,
        "start": {
            "accountSid": start.account_sid,
            "streamSid": start.stream_sid,
            "callSid": start.call_sid,
            "tracks": list(start.tracks),
            "mediaFormat": {
                "encoding": fmt.encoding,
                "sampleRate": fmt.sample_rate,
                "channels": fmt.channels,
            },
            "customParameters": dict(start.custom_parameters),
        },
        "streamSid": start.stream_sid,
    }


def media_event(media: Media) -> dict[str, Any]:
    return {
        "event": "media",
        "sequenceNumber": media.sequence_number,
        "media": {
            "track": media.track,
            "chunk": str(media.chunk),
            "timestamp": str(media.timestamp),
            "payload": base64.b64encode(media.payload).decode("ascii"),
        },
        "streamSid": media.stream_sid,
    }


def mark_event(mark: Mark) -> dict[str, Any]:
    return {
        "event": "mark",
        "sequenceNumber": mark.sequence_number,
        "streamSid": mark.stream_sid,
        "mark": {"name": mark.name},
    }


def dtmf_event(dtmf: Dtmf) -> dict[str, Any]:
    return {
        "event": "dtmf",
        "streamSid": dtmf.stream_sid,
        "sequenceNumber": dtmf.sequence_number,
        "dtmf": {"track": dtmf.track, "digit": dtmf.digit},
    }


def stop_event(stop: Stop) -> dict[str, Any]:
    return {
        "event": "stop",
        "sequenceNumber": stop.sequence_number,
        "streamSid": stop.stream_sid,
        "stop": {"accountSid": stop.account_sid, "callSid": stop.call_sid},
    }


# -- outbound (us → Twilio) --------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class OutMedia:
    stream_sid: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class OutMark:
    stream_sid: str
    name: str


@dataclass(frozen=True, slots=True)
class OutClear:
    stream_sid: str


OutboundMessage = OutMedia | OutMark | OutClear | Unknown | Invalid


def media(stream_sid: str, payload: bytes) -> dict[str, Any]:
    """Audio for Twilio to play: μ-law 8 kHz bytes (any length; we send 160-byte frames)."""
    return {
        "event": "media",
        "streamSid": stream_sid,
        "media": {"payload": base64.b64encode(payload).decode("ascii")},
    }


def mark(stream_sid: str, name: str) -> dict[str, Any]:
    """Ask Twilio to echo `name` back once the audio sent before it has been played."""
    return {"event": "mark", "streamSid": stream_sid, "mark": {"name": name}}


def clear(stream_sid: str) -> dict[str, Any]:
    """Drop the audio Twilio has buffered (barge-in); Twilio then echoes pending marks."""
    return {"event": "clear", "streamSid": stream_sid}


def parse_outbound(data: str | bytes) -> OutboundMessage:
    """Classify one frame we send (used by the simulated Twilio in tests)."""
    obj = _loads(data)
    if isinstance(obj, Invalid):
        return obj
    event = obj.get("event")
    sid = _str(obj.get("streamSid"))
    if event == "media":
        try:
            payload = base64.b64decode(_str(_obj(obj.get("media")).get("payload")), validate=True)
        except (binascii.Error, ValueError):
            return Invalid("media payload is not base64")
        return OutMedia(sid, payload)
    if event == "mark":
        name = _str(_obj(obj.get("mark")).get("name"))
        return OutMark(sid, name) if name else Invalid("mark without name")
    if event == "clear":
        return OutClear(sid)
    return Unknown(_str(event))


def dumps(message: Mapping[str, Any]) -> str:
    """Compact JSON; escaped to ASCII when a string (e.g. a `streamSid` echoed from the
    peer) holds a lone surrogate that UTF-8 cannot carry."""
    text = json.dumps(message, separators=(",", ":"), ensure_ascii=False)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = json.dumps(message, separators=(",", ":"))
    return text


# -- TwiML -------------------------------------------------------------------------------------
def connect_stream_twiml(url: str, parameters: Mapping[str, str] | None = None) -> str:
    """`<Response><Connect><Stream url=…>` with `<Parameter>`s: Twilio opens a bidirectional
    stream to `url` and hands the parameters back in `start.customParameters`. When the stream
    closes, the call goes on to the next verb; there is none, so the call ends."""
    params = "".join(
        f"<Parameter name={quoteattr(str(k))} value={quoteattr(str(v))}/>"
        for k, v in (parameters or {}).items()
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<Response><Connect><Stream url={quoteattr(url)}>{params}</Stream></Connect></Response>"
    )


def say_twiml(text: str) -> str:
    """A spoken refusal (e.g. the server is shutting down): the caller hears why it ended."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<Response><Say>{escape(text)}</Say><Hangup/></Response>"
    )


# -- signatures --------------------------------------------------------------------------------
Params = Mapping[str, str | Sequence[str]] | Iterable[tuple[str, str]]


def _pairs(params: Params | None) -> list[tuple[str, str]]:
    if params is None:
        return []
    if isinstance(params, Mapping):
        out: list[tuple[str, str]] = []
        for k, v in params.items():
            if isinstance(v, str):
                out.append((k, v))
            else:
                out.extend((k, x) for x in v)
        return out
    return [(k, v) for k, v in params]


def signature_base(url: str, params: Params | None = None) -> str:
    """The string Twilio signs: the URL, then name+value of each parameter sorted by name
    (byte order, "Unix-style case-sensitive"); repeated names in value order."""
    pairs = sorted(_pairs(params), key=lambda kv: (kv[0].encode(), kv[1].encode()))
    return url + "".join(k + v for k, v in pairs)


def compute_signature(auth_token: str, url: str, params: Params | None = None) -> str:
    digest = hmac.new(
        auth_token.encode("utf-8"), signature_base(url, params).encode("utf-8"), hashlib.sha1
    ).digest()
    return base64.b64encode(digest).decode("ascii")


_DEFAULT_PORTS: Final = {"https": 443, "wss": 443, "http": 80, "ws": 80}


def _url_variants(url: str) -> list[str]:
    """The URL as given, without an explicit default port, and with one: Twilio signs what
    it requested, and proxies on the way may add or drop `:443` (Twilio's libraries try both)."""
    parts = urlsplit(url)
    default = _DEFAULT_PORTS.get(parts.scheme)
    variants = [url]
    if default is None or parts.hostname is None:
        return variants
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    userinfo = parts.netloc.rpartition("@")[0]
    prefix = f"{userinfo}@" if userinfo else ""
    for netloc in (f"{prefix}{host}", f"{prefix}{host}:{default}"):
        if parts.port not in (None, default):
            break
        v = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
        if v not in variants:
            variants.append(v)
    return variants


def validate_signature(
    auth_token: str, url: str, params: Params | None, signature: str | None
) -> bool:
    """True when `signature` is Twilio's signature of this request (constant-time compare)."""
    if not signature or not auth_token:
        return False
    given = signature.encode("ascii", "replace")
    ok = False
    for variant in _url_variants(url):
        expected = compute_signature(auth_token, variant, params).encode("ascii")
        ok |= hmac.compare_digest(expected, given)
    return ok
