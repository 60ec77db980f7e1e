"""PCM conversions, resampling, G.711 μ-law and framing (`callroom.voice.audio`)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from callroom.errors import ProtocolError
from callroom.voice.audio import (
    DEFAULT_QUALITY,
    FrameSplitter,
    Resampler,
    duration_ms,
    float32_to_int16,
    float32_to_pcm16_bytes,
    int16_to_bytes,
    mulaw_decode,
    mulaw_encode,
    pcm16_bytes_to_float32,
    pcm16_bytes_to_int16,
    samples_for_ms,
)


def _tone(freq: float, rate: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _rms_db(x: np.ndarray) -> float:
    x = x.astype(np.float64)
    return float(20 * np.log10(np.sqrt(np.mean(x * x)) + 1e-12))


# -- PCM16 -------------------------------------------------------------------------------------
def test_pcm16_bytes_are_little_endian() -> None:
    data = b"\x01\x00\x00\x80\xff\x7f\xff\xff"  # 1, -32768, 32767, -1
    assert pcm16_bytes_to_int16(data).tolist() == [1, -32768, 32767, -1]
    floats = pcm16_bytes_to_float32(data)
    assert floats.dtype == np.float32
    assert floats.tolist() == [1 / 32768, -1.0, 32767 / 32768, -1 / 32768]


@pytest.mark.parametrize("data", [b"\x00", b"\x00\x01\x02", bytearray(5), memoryview(b"abc")])
def test_odd_byte_count_is_a_protocol_error(data: bytes) -> None:
    for decode in (pcm16_bytes_to_float32, pcm16_bytes_to_int16):
        with pytest.raises(ProtocolError, match="even number of bytes") as info:
            decode(data)
        assert info.value.code == "protocol_error"
        assert f"got {len(bytes(data))} bytes" in info.value.message


def test_empty_audio_is_empty_not_an_error() -> None:
    assert pcm16_bytes_to_float32(b"").shape == (0,)
    assert pcm16_bytes_to_float32(b"").dtype == np.float32
    assert float32_to_pcm16_bytes(np.zeros(0, np.float32)) == b""


def test_bytes_view_is_zero_copy_and_read_only() -> None:
    data = bytes(range(8))
    view = pcm16_bytes_to_int16(data)
    assert not view.flags.writeable  # frames from the socket are never edited in place
    assert np.shares_memory(view, np.frombuffer(data, np.uint8))
    assert pcm16_bytes_to_int16(bytearray(data)).tolist() == view.tolist()


@given(st.binary(max_size=400).map(lambda b: b[: len(b) // 2 * 2]))
def test_pcm16_float32_round_trip_is_exact(data: bytes) -> None:
    assert float32_to_pcm16_bytes(pcm16_bytes_to_float32(data)) == data


def test_float_to_pcm_clips_rounds_and_silences_nan() -> None:
    x = np.array([1.5, -2.0, np.nan, 0.5, -0.5, 1e-6, 1.0], dtype=np.float32)
    assert float32_to_int16(x).tolist() == [32767, -32768, 0, 16384, -16384, 0, 32767]
    assert float32_to_pcm16_bytes(x[:2]) == b"\xff\x7f\x00\x80"
    assert float32_to_int16(np.array([0.25], np.float64)).tolist() == [8192]


def test_int16_to_bytes_is_little_endian_whatever_the_input_order() -> None:
    assert int16_to_bytes(np.array([1, -2], np.int16)) == b"\x01\x00\xfe\xff"
    big = np.array([1, -2], dtype=">i2")
    assert int16_to_bytes(big) == b"\x01\x00\xfe\xff"  # type: ignore[arg-type]
    strided = np.arange(6, dtype=np.int16)[::2]
    assert int16_to_bytes(strided) == np.array([0, 2, 4], "<i2").tobytes()


def test_durations() -> None:
    assert duration_ms(320, 16_000) == 20.0
    assert duration_ms(160, 8_000) == 20.0
    assert duration_ms(512, 16_000) == 32.0
    assert duration_ms(0, 16_000) == 0.0
    assert samples_for_ms(20, 16_000) == 320
    assert samples_for_ms(20, 22_050) == 441
    assert samples_for_ms(32, 16_000) == 512
    with pytest.raises(ValueError):
        duration_ms(1, 0)
    with pytest.raises(ValueError):
        samples_for_ms(1, -8000)


# -- Resampler ---------------------------------------------------------------------------------
def _stream(rs: Resampler, x: np.ndarray, chunk: int) -> tuple[np.ndarray, list[int]]:
    """Feed `x` in chunks, end with `last`; return the output and output length per chunk."""
    outs = [rs.process(x[i : i + chunk]) for i in range(0, len(x), chunk)]
    outs.append(rs.process(x[:0], last=True))
    return np.concatenate(outs), [len(o) for o in outs]


def test_equal_rates_pass_through_without_copy() -> None:
    rs = Resampler(16_000, 16_000)
    x = np.arange(100, dtype=np.int16)
    assert rs.passthrough
    assert rs.process(x) is x
    assert rs.process(x, last=True) is x


@pytest.mark.parametrize(("in_rate", "out_rate"), [(16_000, 8_000), (8_000, 16_000),
                                                   (22_050, 16_000), (24_000, 16_000),
                                                   (16_000, 24_000), (48_000, 16_000)])  # fmt: skip
@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_stream_length_and_tone_survive(in_rate: int, out_rate: int, dtype: type) -> None:
    tone = _tone(440.0, in_rate, 1.0)
    x = float32_to_int16(tone) if dtype is np.int16 else tone
    y, _ = _stream(Resampler(in_rate, out_rate, dtype=dtype), x, in_rate // 50)
    assert y.dtype == dtype
    assert abs(len(y) - len(x) * out_rate / in_rate) <= 1  # nothing lost once flushed
    middle = y[out_rate // 4 : -out_rate // 4].astype(np.float64)
    if dtype is np.int16:
        middle /= 32768
    spectrum = np.abs(np.fft.rfft(middle * np.hanning(len(middle))))
    peak_hz = np.fft.rfftfreq(len(middle), 1 / out_rate)[np.argmax(spectrum)]
    assert abs(peak_hz - 440.0) < 3
    assert _rms_db(middle) == pytest.approx(_rms_db(tone), abs=0.3)


def test_resampler_starts_afresh_after_last() -> None:
    tone = _tone(300.0, 22_050, 0.3)
    rs32 = Resampler(22_050, 16_000, dtype=np.float32)
    first, _ = _stream(rs32, tone, 441)
    second, _ = _stream(rs32, tone, 441)
    assert np.array_equal(first, second)  # no state leaks from one clause to the next
    rs16 = Resampler(22_050, 16_000)
    x = float32_to_int16(tone)
    a, _ = _stream(rs16, x, 441)
    b, _ = _stream(rs16, x, 441)
    assert np.abs(a.astype(int) - b).max() <= 2  # soxr's 16-bit output carries ±1 LSB dither


def test_reset_drops_held_back_audio() -> None:
    rs = Resampler(8_000, 16_000)
    rs.process(np.full(800, 1000, np.int16))
    rs.reset()
    tail = rs.process(np.zeros(0, np.int16), last=True)
    assert np.abs(tail).max(initial=0) <= 1  # silence, up to soxr's one-LSB dither


def test_resampler_rejects_unconverted_audio() -> None:
    rs = Resampler(16_000, 8_000)  # int16 by default: what TTS produces
    with pytest.raises(TypeError, match="int16"):
        rs.process(np.zeros(10, np.float32))
    with pytest.raises(ValueError, match="mono"):
        rs.process(np.zeros((10, 2), np.int16))
    with pytest.raises(TypeError):
        Resampler(16_000, 8_000, dtype=np.float64)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Resampler(0, 8_000)


def _held_back_ms(quality: str, in_rate: int, out_rate: int) -> float:
    """Worst audio (ms) a real-time stream of 20 ms chunks waits inside the resampler."""
    rs = Resampler(in_rate, out_rate, dtype=np.float32, quality=quality)  # type: ignore[arg-type]
    x = np.random.default_rng(0).standard_normal(in_rate * 2).astype(np.float32) * 0.1
    _, lengths = _stream(rs, x, in_rate // 50)
    produced = np.cumsum(lengths[:-1])
    expected = np.arange(1, len(produced) + 1) * (in_rate // 50) * out_rate / in_rate
    return float(np.max(expected[10:] - produced[10:])) * 1000 / out_rate


def test_default_quality_is_the_low_delay_filtered_one() -> None:
    # Sample counts, not wall time: what each quality holds back is deterministic.
    assert DEFAULT_QUALITY == "LQ"
    for in_rate, out_rate in [(8_000, 16_000), (16_000, 8_000), (22_050, 16_000)]:
        lq = _held_back_ms("LQ", in_rate, out_rate)
        hq = _held_back_ms("HQ", in_rate, out_rate)
        assert lq < 65
        assert lq < 0.6 * hq
    assert _held_back_ms("QQ", 8_000, 16_000) < 1


def test_default_quality_filters_aliases_where_qq_does_not() -> None:
    alias = _tone(6_000.0, 16_000, 1.0)  # above the 4 kHz Nyquist frequency of 8 kHz audio
    for quality, limit in [("LQ", -80.0), ("QQ", None)]:
        y, _ = _stream(Resampler(16_000, 8_000, dtype=np.float32, quality=quality), alias, 320)  # type: ignore[arg-type]
        level = _rms_db(y[2000:-2000]) - _rms_db(alias)
        if limit is None:
            assert level > -6  # QQ folds 6 kHz down to 2 kHz nearly unattenuated
        else:
            assert level < limit


# -- G.711 μ-law -------------------------------------------------------------------------------
ALL_CODES = bytes(range(256))
ALL_INT16 = np.arange(-32768, 32768, dtype=np.int16)


def _g711_expand(code: int) -> int:
    """G.711 μ-law expansion written from the standard's formula, independent of the tables:
    magnitude = ((2 * mantissa + 33) << exponent) - 33 in 14-bit units, times 4 for 16-bit."""
    c = ~code & 0xFF
    sign = -1 if c & 0x80 else 1
    exponent = (c >> 4) & 0x07
    mantissa = c & 0x0F
    return sign * ((((2 * mantissa + 33) << exponent) - 33) * 4)


def test_mulaw_decode_matches_g711_for_every_code() -> None:
    decoded = mulaw_decode(ALL_CODES)
    assert decoded.dtype == np.int16
    assert decoded.tolist() == [_g711_expand(c) for c in range(256)]


@pytest.mark.parametrize(
    ("code", "value"),
    [(0x00, -32124), (0x80, 32124), (0x7F, 0), (0xFF, 0), (0x0F, -16764), (0x8F, 16764),
     (0xF0, 120), (0xEF, 132), (0x70, -120), (0xCE, 988)],
)  # fmt: skip
def test_mulaw_reference_values(code: int, value: int) -> None:
    assert int(mulaw_decode(bytes([code]))[0]) == value


@pytest.mark.parametrize(
    ("sample", "code"),
    [(0, 0xFF), (-1, 0x7F), (3, 0xFF), (-4, 0x7F), (32767, 0x80), (-32768, 0x00),
     (1000, 0xCE), (-1000, 0x4E), (120, 0xF0), (32124, 0x80), (-32124, 0x00)],
)  # fmt: skip
def test_mulaw_encode_reference_values(sample: int, code: int) -> None:
    assert mulaw_encode(np.array([sample], np.int16)).tolist() == [code]


def test_mulaw_round_trip_of_every_code() -> None:
    again = mulaw_encode(mulaw_decode(ALL_CODES))
    expected = list(ALL_CODES)
    expected[0x7F] = 0xFF  # "negative zero" decodes to 0, which encodes as positive zero
    assert again.tolist() == expected


def test_mulaw_quantization_error_is_within_half_a_step() -> None:
    codes = mulaw_encode(ALL_INT16)
    q = mulaw_decode(codes).astype(np.int64)
    x = ALL_INT16.astype(np.int64)
    assert np.all(np.diff(q) >= 0)  # monotonic: louder input never decodes quieter
    # Each code's level is the middle of its decision interval, `step` wide (8 << exponent
    # in 16-bit units); the 2 bits G.711 drops (it quantizes 14-bit audio) may add 3.
    step = 8 << ((~codes.astype(np.int64) >> 4) & 0x07)
    in_range = np.abs(x) <= 32635  # G.711's largest 14-bit magnitude, 8158, times 4
    assert np.all(np.abs(x - q)[in_range] <= step[in_range] // 2 + 3)
    assert set(q[~in_range].tolist()) == {-32124, 32124}  # louder input clips to the top


def test_mulaw_agrees_with_audioop_where_audioop_exists() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")  # removed in Python 3.13
    assert mulaw_decode(ALL_CODES).tobytes() == audioop.ulaw2lin(ALL_CODES, 2)
    ours = mulaw_encode(ALL_INT16)
    theirs = np.frombuffer(audioop.lin2ulaw(ALL_INT16.tobytes(), 2), np.uint8)
    positive = ALL_INT16 >= 0
    assert np.array_equal(ours[positive], theirs[positive])
    # audioop floors negatives before taking the magnitude; G.191 uses the 1's complement,
    # which is symmetric. They differ only at decision points, by one code.
    differ = ours != theirs
    assert differ.sum() < 0.01 * len(ALL_INT16)
    assert np.all(np.abs(ours[differ].astype(int) - theirs[differ].astype(int)) == 1)


def test_mulaw_inputs() -> None:
    codes = np.array([0x00, 0xFF], np.uint8)
    for given_codes in (codes, codes.tobytes(), bytearray(codes.tobytes()), memoryview(codes)):
        assert mulaw_decode(given_codes).tolist() == [-32124, 0]  # type: ignore[arg-type]
    assert mulaw_encode(np.zeros(0, np.int16)).tobytes() == b""
    with pytest.raises(TypeError):
        mulaw_encode(np.zeros(4, np.float32))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        mulaw_decode(np.zeros(4, np.int16))  # type: ignore[arg-type]


def test_mulaw_telephony_round_trip_keeps_speech_level() -> None:
    pcm = float32_to_int16(_tone(1_000.0, 8_000, 0.5, amp=0.3))
    back = mulaw_decode(mulaw_encode(pcm).tobytes())
    snr = _rms_db(pcm) - _rms_db(pcm.astype(np.int64) - back)
    assert snr > 30  # G.711's ~38 dB SNR for a mid-level tone


# -- FrameSplitter -----------------------------------------------------------------------------
@given(st.lists(st.integers(0, 1300), max_size=30), st.sampled_from([160, 320, 512]))
def test_frames_are_fixed_size_and_lose_nothing(sizes: list[int], frame: int) -> None:
    splitter = FrameSplitter(frame)
    total = sum(sizes)
    stream = np.arange(total, dtype=np.float32)
    frames: list[np.ndarray] = []
    pos = 0
    for size in sizes:
        frames += splitter.push(stream[pos : pos + size])
        pos += size
    assert all(len(f) == frame for f in frames)
    assert len(frames) == total // frame
    assert splitter.pending == total % frame
    rest = splitter.flush()
    joined = np.concatenate([*frames, rest if rest is not None else stream[:0]])
    assert np.array_equal(joined, stream)
    assert splitter.pending == 0
    assert splitter.flush() is None


def test_frames_do_not_alias_the_callers_buffer() -> None:
    splitter = FrameSplitter(4, dtype=np.int16)
    buf = np.arange(6, dtype=np.int16)
    (frame,) = splitter.push(buf)
    buf[:] = -1  # the caller reuses its buffer
    assert frame.tolist() == [0, 1, 2, 3]
    (frame2,) = splitter.push(np.array([6, 7], np.int16))
    assert frame2.tolist() == [4, 5, 6, 7]


def test_flush_can_pad_and_reset_drops() -> None:
    splitter = FrameSplitter(4, dtype=np.int16)
    assert splitter.push(np.array([1, 2, 3], np.int16)) == []
    padded = splitter.flush(pad=True)
    assert padded is not None
    assert padded.tolist() == [1, 2, 3, 0]
    splitter.push(np.array([9], np.int16))
    splitter.reset()
    assert splitter.pending == 0
    assert splitter.flush() is None


def test_frame_splitter_rejects_wrong_input() -> None:
    splitter = FrameSplitter(512)  # float32 by default: what VAD consumes
    with pytest.raises(TypeError):
        splitter.push(np.zeros(10, np.int16))
    with pytest.raises(ValueError):
        splitter.push(np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError):
        FrameSplitter(0)
