"""Pure audio helpers for the voice pipeline: PCM conversions, resampling, G.711 μ-law, framing.

Conventions (shared with `callroom.providers.base`): the input side works on `float32` in
[-1, 1) at 16 kHz mono; the wire and TTS output are `int16`. Nothing here does I/O or keeps
global state, so every helper can be tested with plain arrays.

Copies: each helper makes at most one copy of the audio it is given (the design's "one copy
per stage"); the byte → array helpers that can avoid a copy do.
"""

from __future__ import annotations

from typing import Final, Literal, TypeAlias

import numpy as np
import numpy.typing as npt
import soxr

from callroom.errors import ProtocolError

Float32: TypeAlias = npt.NDArray[np.float32]
Int16: TypeAlias = npt.NDArray[np.int16]
UInt8: TypeAlias = npt.NDArray[np.uint8]
BytesLike: TypeAlias = bytes | bytearray | memoryview

Quality: TypeAlias = Literal["QQ", "LQ", "MQ", "HQ", "VHQ"]

_PCM16: Final = np.dtype("<i2")
"""The wire format is little-endian whatever the host's byte order is."""

_INT16_SCALE: Final = 32768.0
"""Full scale is 2**15 both ways, so int16 → float32 → int16 is exact for every sample."""


# -- PCM16 <-> numpy ---------------------------------------------------------------------------
def _check_pcm16_length(data: BytesLike) -> int:
    n = memoryview(data).nbytes
    if n % 2:
        raise ProtocolError(
            f"PCM16 audio must have an even number of bytes (2 per sample); got {n} bytes"
        )
    return n


def pcm16_bytes_to_int16(data: BytesLike) -> Int16:
    """View PCM16 little-endian bytes as `int16` samples without copying.

    The result is read-only when `data` is immutable (`bytes`), which is what we want: frames
    from the socket are never edited in place. An odd byte count is a client bug, reported as
    `ProtocolError` rather than silently dropping half a sample and shifting the stream.
    """
    _check_pcm16_length(data)
    samples = np.frombuffer(data, dtype=_PCM16)
    return samples if samples.dtype == np.int16 else samples.astype(np.int16)


def pcm16_bytes_to_float32(data: BytesLike) -> Float32:
    """Decode PCM16 little-endian bytes to `float32` in [-1, 1) (what VAD and STT consume).

    Scales by 1/32768 so that `float32_to_pcm16_bytes` restores the exact bytes.
    """
    _check_pcm16_length(data)
    samples = np.frombuffer(data, dtype=_PCM16).astype(np.float32)
    samples *= np.float32(1.0 / _INT16_SCALE)
    return samples


def float32_to_int16(samples: npt.NDArray[np.floating]) -> Int16:
    """Convert float audio in [-1, 1] to `int16`, clipping and rounding to nearest.

    Out-of-range values are clipped rather than wrapped, because a wrapped sample is a loud
    click; NaN (a broken model output) becomes silence for the same reason.
    """
    scaled = np.nan_to_num(np.asarray(samples, dtype=np.float32), nan=0.0) * _INT16_SCALE
    np.rint(scaled, out=scaled)
    np.clip(scaled, -32768.0, 32767.0, out=scaled)
    return scaled.astype(np.int16)


def float32_to_pcm16_bytes(samples: npt.NDArray[np.floating]) -> bytes:
    """Encode float audio in [-1, 1] as PCM16 little-endian bytes for the wire."""
    return int16_to_bytes(float32_to_int16(samples))


def int16_to_bytes(samples: Int16) -> bytes:
    """Serialize `int16` samples as PCM16 little-endian bytes (no conversion on x86/ARM LE)."""
    return np.ascontiguousarray(samples, dtype=_PCM16).tobytes()


def duration_ms(samples: int, rate: int) -> float:
    """Length in milliseconds of `samples` samples at `rate` Hz (for budgets and metrics)."""
    if rate <= 0:
        raise ValueError(f"sample rate must be positive, got {rate}")
    return samples * 1000.0 / rate


def samples_for_ms(ms: float, rate: int) -> int:
    """Whole number of samples in `ms` milliseconds at `rate` Hz (e.g. 20 ms at 16 kHz: 320)."""
    if rate <= 0:
        raise ValueError(f"sample rate must be positive, got {rate}")
    return round(ms * rate / 1000.0)


# -- resampling --------------------------------------------------------------------------------
DEFAULT_QUALITY: Final[Quality] = "LQ"
"""soxr quality used unless a caller asks otherwise; measured (20 ms chunks, python-soxr 1.1):

soxr works on internal DFT blocks, so a stream holds back output and releases it in bursts;
the audio held back at a given moment is the latency a real-time stream pays.

============  ==========================  ==============================================
quality       held back, 20 ms chunks     filter
============  ==========================  ==============================================
QQ            1-4 output samples (<0.3ms) none (cubic interpolation): aliases at 0 dB
LQ            20-61 ms worst, 11-33 mean  >94 dB alias/image rejection; -2 dB at 0.8 fs/2
MQ / HQ       37-118 ms worst, 21-64 mean flat to 0.9 fs/2, >120 dB rejection
============  ==========================  ==============================================

LQ is the lowest-delay setting that still filters: half the hold-back of MQ/HQ, whose only
gain is a flat passband in the top 10-20 % of the band, where speech carries little energy
(for 8 kHz telephony that is above 3.2 kHz, outside the 300-3400 Hz phone band). QQ is the
choice only when the input is known to have nothing above the output Nyquist frequency.
For TTS output, which arrives faster than real time in clause-sized pieces, the hold-back
does not delay first audio; `process(..., last=True)` at the end of a clause releases it.
"""


class Resampler:
    """Streaming mono resampler (`soxr.ResampleStream`), or a pass-through for equal rates.

    One instance per direct stream: the filter keeps state between chunks, so feeding two
    streams through one resampler would smear them together. `process(..., last=True)` drains
    the samples soxr holds back and readies the resampler for a new stream.
    """

    def __init__(
        self,
        in_rate: int,
        out_rate: int,
        *,
        dtype: type[np.int16] | type[np.float32] = np.int16,
        quality: Quality = DEFAULT_QUALITY,
    ) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {in_rate} -> {out_rate}")
        if dtype not in (np.int16, np.float32):
            raise TypeError(f"Resampler supports int16 or float32 audio, not {dtype!r}")
        self.in_rate = in_rate
        self.out_rate = out_rate
        self.dtype: np.dtype[np.int16] | np.dtype[np.float32] = np.dtype(dtype)
        self.quality: Quality = quality
        self._stream: soxr.ResampleStream | None = None
        if not self.passthrough:
            self._stream = self._new_stream()

    @property
    def passthrough(self) -> bool:
        """Equal rates: chunks are returned as they came, with no copy and no delay."""
        return self.in_rate == self.out_rate

    def _new_stream(self) -> soxr.ResampleStream:
        # Creating a stream costs ~20 µs; starting afresh after `last` leaves no doubt that
        # nothing of one stream leaks into the next. (int16 output carries soxr's ±1 LSB
        # dither, so two runs over the same input may differ by one LSB.)
        return soxr.ResampleStream(
            self.in_rate, self.out_rate, 1, dtype=self.dtype.name, quality=self.quality
        )

    def process(self, chunk: npt.NDArray[np.int16 | np.float32], last: bool = False) -> npt.NDArray:
        """Resample the next `chunk` of the stream; `last=True` also flushes what soxr holds.

        The output may be shorter than `chunk * out_rate / in_rate` (soxr holds samples back
        until it has enough to filter) or even empty; over a whole stream ended with `last`
        the lengths add up. The chunk must already have the resampler's dtype: silently
        converting int16 to float32 (or back) without scaling would produce noise or silence.
        """
        arr = np.asarray(chunk)
        if arr.ndim != 1:
            raise ValueError(f"Resampler takes mono 1-D audio, got shape {arr.shape}")
        if arr.dtype != self.dtype:
            raise TypeError(f"Resampler expects {self.dtype.name} samples, got {arr.dtype.name}")
        if self._stream is None:
            return arr
        out: npt.NDArray = self._stream.resample_chunk(arr, last=last)
        if last:
            self._stream = self._new_stream()
        return out

    def reset(self) -> None:
        """Forget held-back samples (e.g. after a barge-in drops the rest of a reply)."""
        if self._stream is not None:
            self._stream = self._new_stream()


# -- G.711 μ-law -------------------------------------------------------------------------------
# Implemented as in ITU-T G.191 (the G.711 reference software, `ulaw_compress/ulaw_expand`),
# vectorised into lookup tables built once at import. `audioop` (removed in Python 3.13)
# decodes identically; for negative inputs it truncates toward -inf before taking the
# magnitude, so at 1-in-4 segment boundaries it picks the neighbouring code.


def _build_mulaw_tables() -> tuple[UInt8, Int16]:
    # Encode table indexed by the int16 sample's bit pattern (as uint16).
    lin = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.int16).astype(np.int32)
    absno = np.where(lin < 0, (~lin) >> 2, lin >> 2) + 33  # 1's complement for negatives
    absno = np.minimum(absno, 0x1FFF)
    segno = np.ones_like(absno)
    i = absno >> 6
    while np.any(i):  # segno = 1 + bit length of (absno >> 6); at most 7 passes
        segno += i != 0
        i >>= 1
    high = 8 - segno
    low = 0x0F - ((absno >> segno) & 0x0F)
    code = (high << 4) | low
    code = np.where(lin >= 0, code | 0x80, code)
    encode = code.astype(np.uint8)

    logv = np.arange(256, dtype=np.int32)
    sign = np.where(logv < 0x80, -1, 1)
    mant = ~logv
    exponent = (mant >> 4) & 0x07
    segment = exponent + 1
    mant &= 0x0F
    step = 4 << segment
    expand = sign * ((0x80 << exponent) + step * mant + step // 2 - 4 * 33)
    return encode, expand.astype(np.int16)


_MULAW_ENCODE, _MULAW_DECODE = _build_mulaw_tables()
_MULAW_ENCODE.flags.writeable = False
_MULAW_DECODE.flags.writeable = False

MULAW_RATE: Final = 8000
"""Sample rate of G.711 telephony audio (Twilio Media Streams)."""


def mulaw_encode(samples: Int16) -> UInt8:
    """Compress `int16` PCM to G.711 μ-law codes (one byte per sample; `.tobytes()` for Twilio)."""
    arr = np.asarray(samples)
    if arr.dtype != np.int16:
        raise TypeError(f"mulaw_encode expects int16 samples, got {arr.dtype.name}")
    return _MULAW_ENCODE[arr.view(np.uint16)]


def mulaw_decode(codes: BytesLike | UInt8) -> Int16:
    """Expand G.711 μ-law codes (bytes or uint8 array) to `int16` PCM."""
    if isinstance(codes, np.ndarray):
        if codes.dtype != np.uint8:
            raise TypeError(f"mulaw_decode expects uint8 codes, got {codes.dtype.name}")
        arr = codes
    else:
        arr = np.frombuffer(codes, dtype=np.uint8)
    return _MULAW_DECODE[arr]


# -- framing -----------------------------------------------------------------------------------
class FrameSplitter:
    """Re-chunk a stream of arbitrary-sized sample arrays into fixed-size frames.

    Models want fixed frames (Silero VAD: 512 samples at 16 kHz) and playback wants even
    pacing (20 ms), while the network delivers whatever size the client chose. The remainder
    is kept for the next `push`, so no sample is lost or repeated.
    """

    def __init__(
        self,
        frame_samples: int,
        *,
        dtype: type[np.float32] | type[np.int16] = np.float32,
    ) -> None:
        if frame_samples <= 0:
            raise ValueError(f"frame_samples must be positive, got {frame_samples}")
        self.frame_samples = frame_samples
        self.dtype = np.dtype(dtype)
        self._rest: npt.NDArray = np.zeros(0, dtype=self.dtype)

    @property
    def pending(self) -> int:
        """Samples waiting for the next frame to fill."""
        return len(self._rest)

    def push(self, samples: npt.NDArray) -> list[npt.NDArray]:
        """Add `samples`; return every frame now complete, oldest first.

        Frames are views into one fresh buffer (a single copy per push), so they stay valid
        even if the caller reuses its input array.
        """
        arr = np.asarray(samples)
        if arr.ndim != 1:
            raise ValueError(f"FrameSplitter takes mono 1-D audio, got shape {arr.shape}")
        if arr.dtype != self.dtype:
            raise TypeError(f"FrameSplitter expects {self.dtype.name}, got {arr.dtype.name}")
        buf = np.concatenate((self._rest, arr))
        n = self.frame_samples
        whole = len(buf) // n * n
        self._rest = buf[whole:].copy()  # small; a copy lets `buf` be freed with its frames
        return [buf[i : i + n] for i in range(0, whole, n)]

    def flush(self, *, pad: bool = False) -> npt.NDArray | None:
        """Return the partial frame left over (zero-padded to full size if `pad`), or None."""
        if not len(self._rest):
            return None
        rest, self._rest = self._rest, np.zeros(0, dtype=self.dtype)
        if pad:
            rest = np.concatenate((rest, np.zeros(self.frame_samples - len(rest), self.dtype)))
        return rest

    def reset(self) -> None:
        """Drop the partial frame (the stream restarts, e.g. a new utterance)."""
        self._rest = np.zeros(0, dtype=self.dtype)
