"""Property-based fuzzing of every inbound surface of a real server (hypothesis).

Endpoints: the core protocol (`/agents/counter/…`, examples/conformance.py), the voice protocol
(`/agents/rel-voice/…`, fake speech models), Twilio Media Streams (`/twilio/stream/rel-voice`)
and agent addressing (URL names, Twilio's `callroom_agent` parameter, the webhook's `?name=`).

Inputs: malformed JSON, wrong field types, huge strings, deep nesting, lone surrogates, NaN,
binary frames of odd length / over the limit / before `start_call`, unknown message types,
RPC to private and dunder methods, invalid names (traversal, control characters, unicode
look-alikes, over-long).

What must hold, for every input:
- the server answers with protocol errors or closes that one socket with a policy code
  (1007 bad UTF-8, 1008 policy, 1009 too big) — never 1011 (an unhandled exception), never
  silence (every probe ends with an RPC that must be answered on the same socket);
- no RPC to a non-`@callable` method succeeds;
- a sentinel client on another agent keeps working throughout;
- afterwards, tasks and file descriptors return to their baseline (`/healthz?verbose=1`),
  and nothing was written outside the data directory (or anywhere under a name we sent).
"""

from __future__ import annotations

import base64
import json
import os
import re
import string
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import ClientConnection, connect

from callroom.protocol import twilio as tp
from tests.integration.server import ROOT, ServerProcess
from tests.reliability.conftest import FUZZ_INPUTS, REL_APP, assert_no_leak, wait_quiet

LIMIT = 65_536  # CALLROOM_MAX_MESSAGE_BYTES of the fuzzed server
ALLOWED_CLOSE = {1007, 1008, 1009}
MARK = "fzq"  # in every generated name, to find stray files anywhere afterwards
SCALE = float(os.environ.get("CALLROOM_FUZZ_SCALE", "1"))
RECV = 15.0

FORBIDDEN = [
    "__init__",
    "__class__",
    "__dict__",
    "__del__",
    "__getattribute__",
    "__reduce__",
    "__subclasses__",
    "__init_subclass__",
    "_storage",
    "_host",
    "_apply_state",
    "_sync_alarm",
    "_run_due_schedules",
    "_handle_plain",
    "_key",
    "sql",
    "set_state",
    "broadcast",
    "schedule",
    "cancel_schedule",
    "get_schedules",
    "on_message",
    "on_start",
    "on_connect",
    "on_close",
    "on_request",
    "on_error",
    "on_before_connect",
    "on_host_start",
    "get_connections",
    "url_segment",
    "validate_state_change",
    "not_exposed",
    "state",
    "env",
    "name",
    "mro",
    "speak",
    "end_call",
    "create_providers",
    "on_turn",
    "get_llm",
    "_start_call",
    "_calls",
    "constructor",
    "toString",
    "__proto__",
    "",
]
CALLABLE = ["add", "echo", "increment", "count", "fail", "history", "tasks"]


def examples(n: int) -> int:
    return max(5, int(n * SCALE))


def fuzz_settings(n: int) -> Any:
    return settings(
        max_examples=examples(n),
        deadline=None,
        database=None,  # nothing written to .hypothesis/ in the repository
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )


# -- strategies ---------------------------------------------------------------------------------
json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
)
json_value = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=16,
)


def deep(depth: int, kind: str = "[") -> str:
    return ("[" * depth + "]" * depth) if kind == "[" else ('{"a":' * depth + "1" + "}" * depth)


deep_json = st.builds(deep, st.integers(1, LIMIT // 2 - 64), st.sampled_from(["[", "{"]))
surrogates = st.sampled_from(["\\ud800", "\\udfff", "\\ud83d", "a\\udc00b", "\\u0000"])
huge_text = st.integers(LIMIT - 64, LIMIT + 64).map(lambda n: "x" * n)


def dumps(obj: Any) -> str:
    return json.dumps(obj, allow_nan=True)


def rpc_frame(method: Any, args: Any = (), rid: Any = None) -> str:
    msg = {
        "type": "rpc",
        "id": rid if rid is not None else uuid.uuid4().hex[:8],
        "method": method,
        "args": list(args) if isinstance(args, tuple) else args,
    }
    return dumps(msg)


methods = st.sampled_from(FORBIDDEN + CALLABLE) | st.text(max_size=30)
rpc_like = st.builds(
    lambda rid, method, args, drop: dumps(
        {
            k: v
            for k, v in {"type": "rpc", "id": rid, "method": method, "args": args}.items()
            if k != drop
        }
    ),
    json_value | st.text(max_size=8),
    methods | json_value,
    st.lists(json_value, max_size=4) | json_value,
    st.sampled_from([None, "id", "method", "args", "type"]),
)
forbidden_rpc = st.builds(
    lambda m, a: rpc_frame(m, a), st.sampled_from(FORBIDDEN), st.lists(json_value, max_size=3)
)
state_like = st.builds(lambda s: dumps({"type": "cf_agent_state", "state": s}), json_value)
WRAP = {
    "rpc": ('{"type":"rpc","id":"deep","method":"echo","args":[', "]}"),
    "state": ('{"type":"cf_agent_state","state":', "}"),
    "raw": ("", ""),
    "text": ('{"type":"text_message","text":', "}"),
}
SURROGATE_WRAP = {
    "echo": ('{"type":"rpc","id":"sur","method":"echo","args":["', '"]}'),
    "state": ('{"type":"cf_agent_state","state":{"k":"', '"}}'),
    "text": ('{"type":"text_message","text":"', '"}'),
    "key": ('{"type":"rpc","id":"', '","method":"add","args":[1,2]}'),
}
deep_frames = st.builds(
    lambda body, where: (WRAP[where][0] + body + WRAP[where][1])[: LIMIT + 100],
    deep_json,
    st.sampled_from(["rpc", "state", "raw", "text"]),
)
surrogate_frames = st.builds(
    lambda s, where: SURROGATE_WRAP[where][0] + s + SURROGATE_WRAP[where][1],
    surrogates,
    st.sampled_from(["echo", "state", "text", "key"]),
)
unknown_type = st.builds(
    lambda t, extra: dumps({"type": t, **extra}),
    st.text(max_size=20) | json_value,
    st.dictionaries(st.text(max_size=6), json_value, max_size=3),
)
raw_text = st.text(max_size=200) | st.sampled_from(
    ["", "{", "}", "null", "[]", '"rpc"', '{"type":', "NaN", "1e999999", "\x00", '{"type":null}']
)
binary = (
    st.binary(max_size=64)
    | st.integers(0, 4000).map(lambda n: os.urandom(n))
    | st.integers(LIMIT - 8, LIMIT + 8).map(lambda n: b"\x01" * n)
    | st.just(b"\x00" * (LIMIT * 2))  # past uvicorn's transport limit: 1009
)
bad_utf8 = st.sampled_from([b"\xff\xfe", b'{"type":"rpc","id":"\xc3"}', b"\xed\xa0\x80"]).map(
    lambda b: ("text-bytes", b)
)

core_frame = st.one_of(
    rpc_like,
    forbidden_rpc,
    state_like,
    deep_frames,
    surrogate_frames,
    unknown_type,
    raw_text,
    huge_text,
    binary,
    bad_utf8,
)

voice_msg = st.one_of(
    st.builds(lambda f: {"type": "start_call", "preferred_format": f}, json_value),
    st.just({"type": "start_call"}),
    st.just({"type": "end_call"}),
    st.just({"type": "interrupt"}),
    st.sampled_from([{"type": "start_of_speech"}, {"type": "end_of_speech"}]),
    st.builds(lambda v: {"type": "hello", "protocol_version": v}, json_value),
    st.builds(lambda t: {"type": "text_message", "text": t}, json_value | st.text(max_size=60)),
    st.builds(lambda n: {"type": "text_message", "text": "w " * n}, st.integers(3990, 4100)),
    st.builds(
        lambda d: {"type": "text_message", **d},
        st.dictionaries(st.text(max_size=6), json_value, max_size=3),
    ),
).map(dumps)
voice_frame = st.one_of(
    voice_msg,
    voice_msg,
    surrogate_frames,
    deep_frames,
    unknown_type,
    raw_text,
    binary,
    st.integers(1, 1200).map(lambda n: os.urandom(n | 1)),  # odd lengths: not PCM16
    st.integers(1, 40).map(lambda n: b"\x10\x20" * (160 * n)),  # loud-ish even PCM
)


# -- the harness --------------------------------------------------------------------------------
class Prober:
    """A socket that sends fuzz frames, then proves the server still answers on it."""

    def __init__(self, url: str, ping: tuple[str, list[Any]], kind: str) -> None:
        self.url = url
        self.ping = ping
        self.kind = kind
        self.ws: ClientConnection | None = None
        self.seq = 0
        self.closes: dict[int, int] = {}
        self.forbidden_ids: set[str] = set()
        self.allowed_ids: set[str] = set()

    def connect(self) -> ClientConnection:
        if self.ws is None:
            self.ws = connect(
                self.url,
                max_size=None,
                proxy=None,
                open_timeout=RECV,
                compression=None,
                close_timeout=2,
                legacy=True,
                max_queue=None,
            )
        return self.ws

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
            self.ws = None

    def _closed(self, exc: websockets.ConnectionClosed, frames: list[Any]) -> None:
        code = exc.rcvd.code if exc.rcvd is not None else 1006
        allowed = ALLOWED_CLOSE | ({1006} if oversize(frames) else set())
        assert code in allowed, f"{self.kind}: server closed with {code}: {exc}"
        self.closes[code] = self.closes.get(code, 0) + 1
        self.ws = None

    def _note_rpc(self, frame: str | bytes) -> None:
        if isinstance(frame, bytes) or '"rpc"' not in frame:
            return
        try:
            obj = json.loads(frame)
        except (ValueError, RecursionError):
            return
        if isinstance(obj, dict) and obj.get("type") == "rpc" and isinstance(obj.get("id"), str):
            (
                self.forbidden_ids
                if obj.get("method") in FORBIDDEN[:-1] or obj.get("method") == ""
                else self.allowed_ids
            ).add(obj["id"])

    def probe(self, frames: list[Any]) -> None:
        ws = self.connect()
        try:
            for frame in frames:
                FUZZ_INPUTS[self.kind] += 1
                self._note_rpc(frame)
                if isinstance(frame, tuple):  # ("text-bytes", b): a text frame of raw bytes
                    ws.send(frame[1], text=True)
                else:
                    ws.send(frame)
            self.seq += 1
            rid = f"ping-{self.seq}-{uuid.uuid4().hex[:6]}"
            ws.send(rpc_frame(self.ping[0], self.ping[1], rid))
            deadline = time.monotonic() + RECV
            while True:
                left = deadline - time.monotonic()
                assert left > 0, f"{self.kind}: no answer to {rid} after fuzz frames"
                got = ws.recv(timeout=left)
                if isinstance(got, bytes):
                    assert self.kind == "voice", "binary frame from a non-voice agent"
                    continue
                msg = json.loads(got)
                assert isinstance(msg, dict) and isinstance(msg.get("type"), str), got[:200]
                if msg["type"] == "rpc" and msg.get("success") is True:
                    rid_ok = msg.get("id") in self.allowed_ids or msg.get("id") == rid
                    assert rid_ok or msg.get("id") not in self.forbidden_ids, (
                        f"an RPC to a non-callable method succeeded: {got[:300]}"
                    )
                if msg.get("type") == "rpc" and msg.get("id") == rid:
                    assert msg["success"], msg
                    return
        except websockets.ConnectionClosed as exc:
            self._closed(exc, frames)
        except TimeoutError:
            raise AssertionError(f"{self.kind}: server went silent") from None


def oversize(frames: list[Any]) -> bool:
    """A frame the WebSocket layer itself refuses (past its size limit: 1009; bad UTF-8 in a
    text frame: 1007): uvicorn closes the TCP connection at once, while the client may still
    be sending, so the close frame can be lost to a TCP reset (1006) — a race, not a bug."""
    return any(isinstance(f, tuple) or len(f) > LIMIT + 1024 for f in frames)


def sentinel_ok(srv: ServerProcess) -> None:
    with connect(srv.ws_url("counter", "sentinel"), proxy=None, open_timeout=RECV) as ws:
        ws.send(rpc_frame("add", [2, 3], "s"))
        while True:
            msg = json.loads(ws.recv(timeout=RECV))
            if msg.get("id") == "s":
                assert msg["result"] == 5
                return


# -- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("fuzz")
    env = {
        "CALLROOM_MAX_MESSAGE_BYTES": str(LIMIT),
        "CALLROOM_IDLE_SECONDS": "1",
        "CALLROOM_MAX_MESSAGES_PER_SECOND": "0",  # the limiter has its own test
        "TWILIO_AUTH_TOKEN": "",
        "TWILIO_ACCOUNT_SID": "",
        "TWILIO_PUBLIC_URL": "",
    }
    with ServerProcess(REL_APP, base / "data", env=env) as srv:
        yield srv
    log = srv.log()
    assert "Exception in ASGI application" not in log, log[-5000:]


@pytest.fixture
def quiet_baseline(fuzz_server: ServerProcess) -> Iterator[dict[str, Any]]:
    sentinel_ok(fuzz_server)
    before = wait_quiet(fuzz_server)
    yield before
    sentinel_ok(fuzz_server)
    assert_no_leak(fuzz_server, before)
    assert "Exception in ASGI application" not in fuzz_server.log()


# -- tests --------------------------------------------------------------------------------------
def test_fuzz_core_protocol(fuzz_server: ServerProcess, quiet_baseline: dict[str, Any]) -> None:
    prober = Prober(fuzz_server.ws_url("counter", "fuzz-core"), ("add", [1, 2]), "core")

    @fuzz_settings(400)
    @given(st.lists(core_frame, min_size=1, max_size=3))
    def run(frames: list[Any]) -> None:
        prober.probe(frames)

    try:
        run()
    finally:
        prober.close()
    sentinel_ok(fuzz_server)
    assert set(prober.closes) <= ALLOWED_CLOSE | {1006}  # 1006 only after oversize()


def test_fuzz_voice_protocol(fuzz_server: ServerProcess, quiet_baseline: dict[str, Any]) -> None:
    prober = Prober(fuzz_server.ws_url("rel-voice", "fuzz-voice"), ("tasks", []), "voice")

    @fuzz_settings(250)
    @given(st.lists(voice_frame, min_size=1, max_size=4))
    def run(frames: list[Any]) -> None:
        prober.probe(frames)

    try:
        run()
    finally:
        prober.close()
    sentinel_ok(fuzz_server)


# Twilio: one stream per example.
def media(payload: Any, track: Any = "inbound") -> dict[str, Any]:
    return {
        "event": "media",
        "streamSid": "MZfuzz",
        "media": {"payload": payload, "track": track, "chunk": "1", "timestamp": "0"},
    }


b64 = st.binary(max_size=400).map(lambda b: base64.b64encode(b).decode())
twilio_event = (
    st.one_of(
        st.builds(media, b64),
        st.builds(media, b64, json_value),
        st.builds(media, st.text(max_size=40) | json_value),  # not base64, or not a string
        st.builds(media, st.integers(LIMIT // 2, LIMIT).map(lambda n: "A" * (n - n % 4))),
        st.builds(
            lambda n: {"event": "mark", "streamSid": "MZfuzz", "mark": {"name": n}},
            st.text(max_size=20) | json_value,
        ),
        st.builds(
            lambda d: {"event": "dtmf", "streamSid": "MZfuzz", "dtmf": {"digit": d}},
            st.sampled_from(list("0123456789*#")) | st.text(max_size=3) | json_value,
        ),
        st.builds(
            lambda e, extra: {"event": e, **extra},
            st.text(max_size=10) | json_value,
            st.dictionaries(st.text(max_size=6), json_value, max_size=3),
        ),
        st.builds(lambda v: {"event": "media", "media": v}, json_value),
    ).map(dumps)
    | raw_text
    | binary
    | deep_json
    | surrogate_frames
)


def start_event(call_sid: Any, stream_sid: Any, params: Any, fmt: Any) -> str:
    return dumps(
        {
            "event": "start",
            "sequenceNumber": "1",
            "start": {
                "accountSid": "ACfuzz",
                "streamSid": stream_sid,
                "callSid": call_sid,
                "tracks": ["inbound"],
                "customParameters": params,
                "mediaFormat": fmt,
            },
        }
    )


GOOD_FMT = {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
twilio_start = st.one_of(
    st.builds(
        start_event,
        st.just("CAfuzz"),
        st.just("MZfuzz"),
        st.just({"callroom_agent": "fuzz-phone"}),
        st.just(GOOD_FMT),
    ),
    st.builds(
        start_event,
        st.text(max_size=20) | json_value,
        st.text(max_size=20) | json_value,
        st.dictionaries(st.text(max_size=15), st.text(max_size=20), max_size=3) | json_value,
        st.just(GOOD_FMT) | json_value,
    ),
    st.builds(
        start_event,
        st.just("CAfuzz"),
        surrogates.map(lambda s: json.loads(f'"{s}"')),
        st.just({"callroom_agent": "fuzz-phone"}),
        st.just(GOOD_FMT),
    ),
)


def test_fuzz_twilio_media_stream(
    fuzz_server: ServerProcess, quiet_baseline: dict[str, Any]
) -> None:
    url = f"ws://{fuzz_server.host}/twilio/stream/rel-voice"
    closes: dict[int, int] = {}

    @fuzz_settings(100)
    @given(
        st.lists(twilio_event, max_size=2),
        twilio_start,
        st.lists(twilio_event, max_size=6),
    )
    def run(before: list[Any], start: str, after: list[Any]) -> None:
        frames = [
            dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}),
            *before,
            start,
            *after,
            dumps({"event": "stop", "streamSid": "MZfuzz", "stop": {}}),
        ]
        # `stop` comes last: the stream must end by the server's close, proving every frame
        # before it was handled (or refused with a policy close).
        with connect(
            url, max_size=None, proxy=None, open_timeout=RECV, close_timeout=2, max_queue=None
        ) as ws:
            try:
                for frame in frames:
                    FUZZ_INPUTS["twilio"] += 1
                    ws.send(frame)
                while True:
                    ws.recv(timeout=RECV)
            except TimeoutError:
                raise AssertionError("the stream did not end after `stop`") from None
            except websockets.ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd is not None else 1006
                allowed = ALLOWED_CLOSE | {1000} | ({1006} if oversize(frames) else set())
                assert code in allowed, f"twilio stream closed with {code}"
                closes[code] = closes.get(code, 0) + 1

    run()
    sentinel_ok(fuzz_server)


# -- addressing -----------------------------------------------------------------------------------
VALID = re.compile(r"[A-Za-z0-9._-]{1,128}")
prefixes = st.sampled_from(
    [
        "",
        "../",
        "..%2f",
        "%2e%2e%2f",
        "..\\",
        "/",
        "//",
        "\\\\",
        "....//",
        "/etc/",
        "C:\\",
        ".",
        "..",
        "~",
        "%00",
        "\x00",
        "\n",
        "\r\n",
        "\u202e",
        "\u200b",
        "ｃｏｕｎｔｅｒ",
        "а",
        "ﬀ",
        "%",
        "%25",
        "?",
        "#",
        " ",
        "\t",
    ]
)
names = st.one_of(
    st.builds(lambda p, s: p + MARK + s, prefixes, st.text(max_size=30)),
    st.builds(lambda p, n: p + MARK + "x" * n, prefixes, st.integers(100, 3000)),
    st.builds(lambda s: MARK + s, st.text(alphabet=string.ascii_letters + "._-", max_size=140)),
)


def http_status(srv: ServerProcess, raw_path: str, method: str = "GET") -> int:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=RECV)
    try:
        conn.putrequest(method, raw_path, skip_accept_encoding=True)
        conn.endheaders()
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except (http.client.HTTPException, ConnectionError):
        return 0  # the HTTP parser refused the request line itself
    finally:
        conn.close()


def test_fuzz_agent_names_never_escape_the_data_dir(
    fuzz_server: ServerProcess, quiet_baseline: dict[str, Any]
) -> None:
    seen_valid: set[str] = set()

    @fuzz_settings(150)
    @given(names, st.booleans())
    def run(name: str, encode: bool) -> None:
        valid = bool(VALID.fullmatch(name)) and not name.startswith(".")
        if valid:
            seen_valid.add(name)
        quoted = urllib.parse.quote(name, safe="" if encode else "/%\\:~")
        raw_ok = all(32 < ord(c) < 127 for c in quoted)
        # HTTP: 400 bad name / 404 routing / 200 only for a valid name; 0 = refused by parser
        if raw_ok:
            FUZZ_INPUTS["names"] += 1
            status = http_status(fuzz_server, f"/agents/counter/{quoted}")
            assert status in (0, 200, 400, 404, 405, 414, 431), (name, status)
            if status == 200:
                assert valid or not encode, (name, status)
        # WebSocket on the fully encoded name: handshake only for a valid name, else 1008
        FUZZ_INPUTS["names"] += 1
        enc = urllib.parse.quote(name, safe="")
        try:
            with connect(
                fuzz_server.ws_url("counter", enc),
                proxy=None,
                open_timeout=RECV,
                close_timeout=2,
                max_queue=None,
            ) as ws:
                first = json.loads(ws.recv(timeout=RECV))
                assert valid, (name, first)
                assert first["name"] == name
        except websockets.ConnectionClosed as exc:
            assert exc.rcvd is not None and exc.rcvd.code == 1008, (name, exc)
            assert not valid, name
        except websockets.InvalidStatus as exc:
            # 403: no route matched at all (e.g. a newline in the path): Starlette refuses
            assert exc.response.status_code in (400, 403, 404, 414, 431), (name, exc)
            assert not valid
        # Twilio: the agent named by a custom parameter, and the webhook's ?name=
        FUZZ_INPUTS["names"] += 1
        status = http_status(fuzz_server, f"/twilio/voice/rel-voice?name={enc}", "POST")
        assert status in ((200,) if valid else (400,)), (name, status)
        FUZZ_INPUTS["names"] += 1
        with connect(
            f"ws://{fuzz_server.host}/twilio/stream/rel-voice",
            proxy=None,
            open_timeout=RECV,
            close_timeout=2,
            max_queue=None,
        ) as ws:
            ws.send(start_event("CAname", "MZname", {"callroom_agent": name}, GOOD_FMT))
            try:
                first = tp.parse_outbound(ws.recv(timeout=RECV))  # the greeting's audio
                assert valid and isinstance(first, tp.OutMedia), (name, first)
            except websockets.ConnectionClosed as exc:
                assert exc.rcvd is not None and exc.rcvd.code == 1008, (name, exc)

    run()
    sentinel_ok(fuzz_server)
    check_tree(fuzz_server, seen_valid)


def check_tree(srv: ServerProcess, valid_names: set[str]) -> None:
    data = srv.data_dir.resolve()
    segments = {"counter", "vault", "rel-voice", "fault-voice", "llm-voice"}
    pattern = re.compile(r"(?P<name>[A-Za-z0-9._-]{1,128})\.db(-wal|-shm|-journal)?")
    for path in data.rglob("*"):
        rel = path.relative_to(data)
        if path.is_dir():
            assert len(rel.parts) == 1 and rel.parts[0] in segments, rel
            continue
        if len(rel.parts) == 1:
            assert re.fullmatch(r"_host\.db(-wal|-shm|-journal)?", rel.name), rel
            continue
        assert len(rel.parts) == 2 and rel.parts[0] in segments, rel
        m = pattern.fullmatch(rel.parts[1])
        assert m and not m["name"].startswith("."), rel
    # beside the data dir: only the server's log
    for path in data.parent.iterdir():
        assert path == data or path.name.startswith("server-"), path
    # nowhere else: no file whose name holds the marker, in the repository (the server's
    # working directory), in this run's temp tree, or in /tmp (other runs' trees skipped)
    run_base = data.parents[1]  # /tmp/pytest-of-<user>/pytest-<n>
    strays = [
        *_marked_files(ROOT, skip=data),
        *_marked_files(run_base, skip=data),
        *_marked_files(Path("/tmp"), skip=data, skip_prefix="pytest-of-"),
        *(p for p in run_base.parent.iterdir() if MARK in p.name),
    ]
    assert not strays, strays[:10]


def _marked_files(top: Path, skip: Path, skip_prefix: str | None = None) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [
            d
            for d in dirnames
            if not d.startswith((".venv", "node_modules", ".git"))
            and Path(dirpath, d) != skip
            and not (skip_prefix and d.startswith(skip_prefix))
        ]
        for fn in filenames + dirnames:
            if MARK in fn:
                yield Path(dirpath, fn)
