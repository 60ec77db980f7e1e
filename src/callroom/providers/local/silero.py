"""Silero VAD v6 (the ONNX file shipped inside faster-whisper), run with onnxruntime + numpy.

The model takes `input[seq, 576]`: each row is 64 samples of context (the tail of the
previous 512-sample frame, zeros at the start) followed by 512 new samples, plus the LSTM
state `h`, `c` (`[1, 1, 128]` each), and returns one speech probability per row and the new
state. The rows of one call are consecutive frames of one stream (the state is carried
through them), which is what lets `SileroVAD.probabilities` score a whole clip in one call.

Measured on the 2-core target: ~0.1-0.2 ms per 32 ms frame, so `SileroStream.process` runs
inline on the event loop (a pool round trip would cost more than the model); that is ~0.5 %
of one core per call, which becomes significant only at hundreds of calls per process.
One `InferenceSession` (one intra-op thread) is shared by every call; each call has its own
`SileroStream` holding the recurrent state.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from callroom.providers.base import INPUT_RATE, Float32
from callroom.providers.local import models

__all__ = ["CONTEXT_SAMPLES", "FRAME_SAMPLES", "SileroStream", "SileroVAD"]

FRAME_SAMPLES = 512
"""New samples per frame at 16 kHz (32 ms)."""
CONTEXT_SAMPLES = 64
"""Samples of the previous frame the model sees again in front of each frame."""
_STATE_SHAPE = (1, 1, 128)


class SileroStream:
    """Per-call VAD state: the LSTM state and the context carried from frame to frame."""

    frame_samples: int = FRAME_SAMPLES

    def __init__(self, session: Any) -> None:
        self._session = session
        self._input = np.zeros((1, CONTEXT_SAMPLES + FRAME_SAMPLES), dtype=np.float32)
        self._h = np.zeros(_STATE_SHAPE, dtype=np.float32)
        self._c = np.zeros(_STATE_SHAPE, dtype=np.float32)

    def process(self, frame: Float32) -> float:
        """Speech probability of one frame of exactly 512 samples (16 kHz float32)."""
        if frame.shape != (FRAME_SAMPLES,):
            raise ValueError(f"Silero wants frames of {FRAME_SAMPLES} samples, got {frame.shape}")
        # One preallocated input row: context (last frame's tail) then the new frame.
        self._input[0, CONTEXT_SAMPLES:] = frame
        prob, self._h, self._c = self._session.run(
            None, {"input": self._input, "h": self._h, "c": self._c}
        )
        self._input[0, :CONTEXT_SAMPLES] = frame[-CONTEXT_SAMPLES:]
        return float(prob.reshape(-1)[0])

    def reset(self) -> None:
        self._input.fill(0.0)
        self._h = np.zeros(_STATE_SHAPE, dtype=np.float32)
        self._c = np.zeros(_STATE_SHAPE, dtype=np.float32)


class SileroVAD:
    """The `VAD` provider; the model loads on first use (or in `models.warm_up()`)."""

    frame_samples: int = FRAME_SAMPLES
    sample_rate: int = INPUT_RATE

    def stream(self) -> SileroStream:
        return SileroStream(models.silero_session())

    def probabilities(self, audio: Float32) -> Float32:
        """Speech probability of every 32 ms frame of a clip, from a fresh state; blocking.

        The clip is zero-padded to whole frames. One `run` for the whole clip: ~5 ms per
        second of audio, cheap enough to gate Whisper against silence.
        """
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        n = -(-len(audio) // FRAME_SAMPLES)
        if n == 0:
            return np.zeros(0, dtype=np.float32)
        padded = np.zeros(CONTEXT_SAMPLES + n * FRAME_SAMPLES, dtype=np.float32)
        padded[CONTEXT_SAMPLES : CONTEXT_SAMPLES + len(audio)] = audio
        # Row i = 64 samples before frame i, then frame i: a strided view, copied once.
        rows = np.lib.stride_tricks.sliding_window_view(padded, CONTEXT_SAMPLES + FRAME_SAMPLES)[
            ::FRAME_SAMPLES
        ]
        h = np.zeros(_STATE_SHAPE, dtype=np.float32)
        c = np.zeros(_STATE_SHAPE, dtype=np.float32)
        probs, _, _ = models.silero_session().run(
            None, {"input": np.ascontiguousarray(rows), "h": h, "c": c}
        )
        return np.asarray(probs, dtype=np.float32).reshape(-1)[:n]

    def has_speech(self, audio: Float32, threshold: float = 0.5, min_frames: int = 2) -> bool:
        """Whether at least `min_frames` frames (64 ms) of the clip are speech; blocking."""
        return int(np.count_nonzero(self.probabilities(audio) >= threshold)) >= min_frames
