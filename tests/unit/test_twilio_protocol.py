"""Twilio Media Streams without I/O: message round trips, TwiML, signatures (Twilio's own
worked examples), the REST hang-up request, the 8→16 kHz upsampler, and the connection that
turns a call's output into `media`/`mark`/`clear` and reads the playback position from marks."""

from __future__ import annotations

import base64
import json
import types
import urllib.parse
import xml.etree.ElementTree as ET
from typing import Any

import numpy as np
import pytest

from callroom.protocol import twilio as tp
from callroom.telephony.twilio import (
    MARK_LATE_S,
    TwilioConnection,
    Upsampler2x,
    _halfband,
    build_hangup_request,
)
from callroom.voice.audio import mulaw_decode, mulaw_encode
from callroom.voice.pipeline import PlaybackCursor, _Playback

# -- inbound events ------------------------------------------------------------------------------
START = tp.Start(
    stream_sid="MZ18ad3ab5a668481ce02b83e7395059f0",
    call_sid="CA2e4e1c0b9b1a4b3f8a0e2c6d7f8a9b0c",
    account_sid="AC" + "0" * 32,
    tracks=("inbound",),
    custom_parameters={"From": "+14155550100", "To": "+14155550199"},
    sequence_number="1",
)


@pytest.mark.parametrize(
    "event",
    [
        tp.Start(
            START.stream_sid,
            START.call_sid,
            START.account_sid,
            ("inbound",),
            tp.MediaFormat(),
            {"From": "+1 (415) <x>"},
            "1",
        ),
        tp.Media(START.stream_sid, bytes(range(256)) * 2, "inbound", 7, 140, "9"),
        tp.Media(START.stream_sid, b"", "inbound", 1, 0, "2"),
        tp.Mark(START.stream_sid, "cr12", "10"),
        tp.Dtmf(START.stream_sid, "#", "inbound_track", "11"),
        tp.Stop(START.stream_sid, START.call_sid, START.account_sid, "12"),
    ],
)
def test_inbound_round_trip(event: Any) -> None:
    build = {
        tp.Start: tp.start_event,
        tp.Media: tp.media_event,
        tp.Mark: tp.mark_event,
        tp.Dtmf: tp.dtmf_event,
        tp.Stop: tp.stop_event,
    }[type(event)]
    wire = tp.dumps(build(event))
    assert tp.parse(wire) == event
    assert tp.parse(wire.encode()) == event  # binary frames carry the same JSON


def test_parse_twilio_documented_shapes() -> None:
    """Messages as Twilio's docs print them (numbers as strings, extra fields)."""
    connected = '{"event":"connected","protocol":"Call","version":"1.0.0"}'
    assert tp.parse(connected) == tp.Connected("Call", "1.0.0")
    start = {
        "event": "start",
        "sequenceNumber": "1",
        "start": {
            "accountSid": "AC1",
            "streamSid": "MZ1",
            "callSid": "CA1",
            "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            "customParameters": {"FirstName": "Jane"},
        },
        "streamSid": "MZ1",
    }
    parsed = tp.parse(json.dumps(start))
    assert isinstance(parsed, tp.Start)
    assert parsed.media_format.is_mulaw_8k_mono
    assert parsed.custom_parameters == {"FirstName": "Jane"}
    media = {
        "event": "media",
        "sequenceNumber": "3",
        "media": {"track": "inbound", "chunk": "1", "timestamp": "5", "payload": "no+JhoaJjpzf"},
        "streamSid": "MZ1",
    }
    parsed_media = tp.parse(json.dumps(media))
    assert isinstance(parsed_media, tp.Media)
    assert parsed_media.payload == base64.b64decode("no+JhoaJjpzf")
    assert (parsed_media.chunk, parsed_media.timestamp) == (1, 5)
    wide = {
        **start,
        "start": {
            **start["start"],
            "mediaFormat": {"encoding": "audio/x-l16", "sampleRate": 16000, "channels": 1},
        },
    }
    parsed_wide = tp.parse(json.dumps(wide))
    assert isinstance(parsed_wide, tp.Start) and not parsed_wide.media_format.is_mulaw_8k_mono


@pytest.mark.parametrize(
    "wire, reason",
    [
        ("not json", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"streamSid": "MZ1"}', "missing event"),
        ('{"event": "media", "media": {"payload": "***"}}', "base64"),
        ('{"event": "start", "start": {"streamSid": "MZ1"}}', "callSid"),
        ('{"event": "dtmf", "dtmf": {"digit": "12"}}', "DTMF"),
        ('{"event": "dtmf", "dtmf": {"digit": "x"}}', "DTMF"),
        ('{"event": "mark", "mark": {}}', "mark without name"),
    ],
)
def test_inbound_invalid(wire: str, reason: str) -> None:
    parsed = tp.parse(wire)
    assert isinstance(parsed, tp.Invalid) and reason in parsed.reason


def test_unknown_event_is_not_an_error() -> None:
    assert tp.parse('{"event": "transcription", "x": 1}') == tp.Unknown("transcription")


# -- outbound messages ---------------------------------------------------------------------------
def test_outbound_round_trip() -> None:
    payload = bytes([0xFF] * 160)
    media = tp.media("MZ1", payload)
    assert media == {
        "event": "media",
        "streamSid": "MZ1",
        "media": {"payload": base64.b64encode(payload).decode()},
    }
    assert tp.parse_outbound(tp.dumps(media)) == tp.OutMedia("MZ1", payload)
    assert tp.mark("MZ1", "cr1") == {"event": "mark", "streamSid": "MZ1", "mark": {"name": "cr1"}}
    assert tp.parse_outbound(tp.dumps(tp.mark("MZ1", "cr1"))) == tp.OutMark("MZ1", "cr1")
    assert tp.clear("MZ1") == {"event": "clear", "streamSid": "MZ1"}
    assert tp.parse_outbound(tp.dumps(tp.clear("MZ1"))) == tp.OutClear("MZ1")
    assert isinstance(tp.parse_outbound('{"event":"media","media":{"payload":"!"}}'), tp.Invalid)


# -- TwiML ---------------------------------------------------------------------------------------
def test_connect_stream_twiml_escapes_and_parses() -> None:
    body = tp.connect_stream_twiml(
        "wss://voice.example.com/twilio/stream/receptionist",
        {"From": "+14155550100", "CallerName": 'Tom "T" <O\'Neil> & Co'},
    )
    assert body.startswith('<?xml version="1.0" encoding="UTF-8"?><Response>')
    root = ET.fromstring(body)
    stream = root.find("./Connect/Stream")
    assert stream is not None
    assert stream.get("url") == "wss://voice.example.com/twilio/stream/receptionist"
    assert [(p.get("name"), p.get("value")) for p in stream.findall("Parameter")] == [
        ("From", "+14155550100"),
        ("CallerName", 'Tom "T" <O\'Neil> & Co'),
    ]
    say = ET.fromstring(tp.say_twiml("a < b"))
    assert [c.tag for c in say] == ["Say", "Hangup"] and say[0].text == "a < b"


# -- signatures ----------------------------------------------------------------------------------
DOC_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"


@pytest.mark.parametrize(
    "caller, expected",
    [
        # twilio.com/docs/usage/security, "Validating requests" (two editions of the example)
        ("+12349013030", "0/KCTR6DLpKmkAf8muzZqo1nDgQ="),
        ("+14158675310", "GvWf1cFY/Q7PnoempGyD5oXAezc="),
    ],
)
def test_signature_known_answers(caller: str, expected: str) -> None:
    params = {
        "CallSid": "CA1234567890ABCDE",
        "Caller": caller,
        "Digits": "1234",
        "From": caller,
        "To": "+18005551212",
    }
    assert tp.compute_signature("12345", DOC_URL, params) == expected
    shuffled = list(reversed(list(params.items())))  # order of the form does not matter
    assert tp.validate_signature("12345", DOC_URL, shuffled, expected)
    assert not tp.validate_signature("12346", DOC_URL, params, expected)
    assert not tp.validate_signature("12345", DOC_URL, {**params, "Digits": "1235"}, expected)
    assert not tp.validate_signature("12345", DOC_URL, params, None)
    assert not tp.validate_signature("12345", DOC_URL, params, "")


def test_signature_base_and_default_ports() -> None:
    assert tp.signature_base("https://x.example/hook", {"b": "2", "a": "1", "B": "0"}) == (
        "https://x.example/hookB0a1b2"
    )  # byte order: upper case first
    assert tp.signature_base("https://x.example/h", [("a", "2"), ("a", "1")]) == (
        "https://x.example/ha1a2"
    )
    sig = tp.compute_signature("tok", "https://x.example/hook", {"a": "1"})
    # A proxy may add or strip the default port: both spellings validate.
    assert tp.validate_signature("tok", "https://x.example:443/hook", {"a": "1"}, sig)
    sig443 = tp.compute_signature("tok", "wss://x.example:443/s", None)
    assert tp.validate_signature("tok", "wss://x.example/s", None, sig443)
    # A different port is a different URL.
    assert not tp.validate_signature("tok", "https://x.example:8443/hook", {"a": "1"}, sig)


def test_hangup_request_is_built_not_sent() -> None:
    request = build_hangup_request("AC123", "secret", "CA456", "https://api.twilio.com/")
    assert request.method == "POST"
    assert str(request.url) == "https://api.twilio.com/2010-04-01/Accounts/AC123/Calls/CA456.json"
    assert urllib.parse.parse_qs(request.content.decode()) == {"Status": ["completed"]}
    assert request.headers["Authorization"] == "Basic " + base64.b64encode(b"AC123:secret").decode()
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"


# -- upsampler -----------------------------------------------------------------------------------
def test_upsampler_matches_direct_filtering_in_any_chunking() -> None:
    x = (np.random.default_rng(1).standard_normal(1600) * 3000).astype(np.int16)
    stuffed = np.zeros(3200)
    stuffed[0::2] = x
    reference = np.clip(np.rint(np.convolve(stuffed, 2 * _halfband())[:3200]), -32768, 32767)
    for chunk in (160, 37, 1):
        up = Upsampler2x()
        out = np.concatenate([up.process(x[i : i + chunk]) for i in range(0, len(x), chunk)])
        assert out.dtype == np.int16 and np.array_equal(out, reference)
    assert len(Upsampler2x().process(np.zeros(0, np.int16))) == 0


def test_upsampler_response_delay_and_images() -> None:
    t = np.arange(8000) / 8000
    for f, image in ((1000, 7000), (3000, 5000)):
        x = (np.sin(2 * np.pi * f * t) * 10000).astype(np.int16)
        y = Upsampler2x().process(x).astype(np.float64)[800:]  # past the start-up transient
        spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
        freqs = np.fft.rfftfreq(len(y), 1 / 16000)
        main = spectrum[np.argmin(np.abs(freqs - f))]
        img = spectrum[np.argmin(np.abs(freqs - image))]
        assert 20 * np.log10(img / main) < -60, (f, image)
        # In-band level kept (≈ 10000 / √2 RMS), and the delay is 32 samples at 16 kHz.
        assert abs(np.sqrt(np.mean(y**2)) / (10000 / np.sqrt(2)) - 1) < 0.01
    impulse = np.zeros(100, np.int16)
    impulse[10] = 10000
    assert int(np.argmax(Upsampler2x().process(impulse))) == 2 * 10 + Upsampler2x.HALF


# -- the connection ------------------------------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def make_conn(clock: FakeClock) -> TwilioConnection:
    ws = types.SimpleNamespace(query_params={})
    return TwilioConnection(ws, START, conn_id="MZ1", clock=clock)  # type: ignore[arg-type]


def drain(conn: TwilioConnection) -> list[tp.OutboundMessage]:
    out: list[tp.OutboundMessage] = []
    while not conn._queue.empty():
        batch: Any = conn._queue.get_nowait()
        out.extend(tp.parse_outbound(text) for text in batch)
    return out


def pcm(samples: int, value: int = 1000) -> bytes:
    return np.full(samples, value, dtype="<i2").tobytes()


def test_connection_frames_audio_and_marks() -> None:
    clock = FakeClock()
    conn = make_conn(clock)
    assert isinstance(conn, PlaybackCursor) and conn.output_rate == 8000
    assert conn.query == {"From": "+14155550100", "To": "+14155550199"}
    conn.send(pcm(500))  # 3 whole frames + 20 samples held for the next chunk
    msgs = drain(conn)
    assert [type(m).__name__ for m in msgs] == ["OutMedia"] * 3 + ["OutMark"]
    assert all(len(m.payload) == 160 for m in msgs[:3])  # type: ignore[union-attr]
    decoded = mulaw_decode(msgs[0].payload)  # type: ignore[union-attr]
    assert np.array_equal(decoded, mulaw_decode(mulaw_encode(np.full(160, 1000, np.int16))))
    conn.send(pcm(150))  # 20 held + 150 = 170: one frame, 10 held
    assert [type(m).__name__ for m in drain(conn)] == ["OutMedia", "OutMark"]
    conn.send_json({"type": "transcript_end", "text": "hi"})  # end of reply: pad and flush
    tail = drain(conn)
    assert isinstance(tail[0], tp.OutMedia) and tail[0].payload[10:] == b"\xff" * 150
    assert isinstance(tail[1], tp.OutMark)
    assert conn.samples_sent() == 650
    # Browser-only frames are dropped, never sent to Twilio.
    conn.send('{"type":"cf_agent_state","state":{}}')
    for message in (
        {"type": "transcript_delta", "text": "x"},
        {"type": "metrics"},
        {"type": "status", "status": "speaking"},
    ):
        conn.send_json(message)
    assert drain(conn) == []


def test_connection_playback_position_follows_marks() -> None:
    clock = FakeClock()
    conn = make_conn(clock)
    assert conn.samples_played(clock()) == 0.0
    conn.send(pcm(1600))  # 0.2 s → mark cr1 at 1600
    conn.send(pcm(1600))  # mark cr2 at 3200
    names = [m.name for m in drain(conn) if isinstance(m, tp.OutMark)]
    assert names == ["cr1", "cr2"]
    clock.t += 0.1  # wall clock says 800 played; nothing confirmed yet
    assert conn.samples_played(clock()) == pytest.approx(800)
    clock.t += 0.5  # wall clock says 4800, but cr1 (1600) is not echoed: Twilio is behind
    assert conn.samples_played(clock()) == 1600
    assert conn.on_mark("cr1")
    assert conn.samples_played(clock()) == 1600
    clock.t += 0.05
    assert conn.samples_played(clock()) == pytest.approx(2000)
    assert not conn.played_out.is_set()
    assert conn.on_mark("cr2") and conn.played_out.is_set()
    assert conn.samples_played(clock()) == 3200 == conn.samples_sent()
    assert not conn.on_mark("cr2") and not conn.on_mark("nope")
    # A peer that never echoes marks: after MARK_LATE_S the wall clock takes over.
    conn.send(pcm(1600))
    clock.t += 0.2 + MARK_LATE_S + 0.1
    assert conn.samples_played(clock()) == conn.samples_sent()


def test_barge_in_clears_once_and_freezes_position() -> None:
    clock = FakeClock()
    conn = make_conn(clock)
    conn.send(pcm(8000))
    conn.send(pcm(8000))
    clock.t += 0.25  # 2000 played (first mark at 8000 not reached)
    dropped = conn.discard_pending_audio()
    assert dropped == 2  # both batches were still queued (no writer in this test)
    assert drain(conn) == [tp.OutClear(START.stream_sid)]
    assert conn.samples_played(clock()) == conn.samples_sent() == 2000
    conn.send_json({"type": "playback_interrupt"})  # the pipeline's own signal: no 2nd clear
    assert drain(conn) == [] and conn.clears_sent == 1
    clock.t += 1.0  # stays frozen: nothing is playing
    assert conn.samples_played(clock()) == 2000
    # Nothing playing at all: a barge-in sends no clear.
    conn.discard_pending_audio()
    assert drain(conn) == []


def test_call_over_only_after_the_call_started() -> None:
    conn = make_conn(FakeClock())
    conn.send_json({"type": "status", "status": "idle"})  # the voice handshake's idle
    assert not conn.call_over.is_set()
    conn.send_json({"type": "audio_config", "format": "pcm16", "sampleRate": 8000})
    conn.send_json({"type": "status", "status": "listening"})
    assert not conn.call_over.is_set()
    conn.send_json({"type": "status", "status": "idle"})  # the agent ended the call
    assert conn.call_over.is_set()


def test_playback_heard_text_uses_the_cursor() -> None:
    class Cursor:
        sent = 0
        played = 0.0

        def samples_sent(self) -> int:
            return self.sent

        def samples_played(self, now: float) -> float:
            return self.played

    cursor = Cursor()
    cursor.sent = 500  # an earlier reply, already played
    cursor.played = 500
    playback = _Playback(8000, cursor)
    for text in ("one two three four.", "five six."):
        cursor.sent += 8000
        playback.add(text, 8000, now=0.0)
    assert playback.playing(now=99.0)  # the wall clock is irrelevant with a cursor
    cursor.played = 500 + 8000 + 4000
    assert playback.heard_text(now=0.0) == "one two three four. five"
    cursor.played = 500 + 16000
    assert not playback.playing(now=0.0)
    wall = _Playback(8000)  # browser clients: wall clock from the first audio
    wall.add("one two three four.", 8000, now=10.0)
    assert wall.heard_text(now=10.5) == "one two" and wall.playing(10.5)
    assert not wall.playing(11.0)
