"""The MLPerf Tiny keyword-spotting front end, with ``tf.signal``.

16 kHz mono, 1 s clips (padded or cut to 16,000 samples); 30 ms Hann
windows (480 samples) every 20 ms (320 samples) -> 49 frames; 512-point
FFT magnitude; 40 mel bands from 20 Hz to 4 kHz; log; the first 10 DCT-II
coefficients -> a (49, 10) MFCC matrix per clip.

No scaling here: the MFCCs stay raw in the dataset's pool, and
``trainables.data.load_split`` min-max scales each split to [0, 1] with its
training clips' range (test clips are clipped into it), so no constant is
computed from test audio.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

SAMPLE_RATE = 16_000
CLIP_SAMPLES = 16_000  # 1 s
WINDOW = 480  # 30 ms
STRIDE = 320  # 20 ms
FFT = 512
MEL_BANDS = 40
MEL_LOW_HZ, MEL_HIGH_HZ = 20.0, 4000.0
COEFFICIENTS = 10
FRAMES = 1 + (CLIP_SAMPLES - WINDOW) // STRIDE  # 49


def fit_clip(audio: np.ndarray) -> np.ndarray:
    """Pad with zeros or cut to exactly 1 s (float32 in [-1, 1])."""
    out = np.zeros(CLIP_SAMPLES, np.float32)
    n = min(len(audio), CLIP_SAMPLES)
    out[:n] = audio[:n]
    return out


_MEL = tf.signal.linear_to_mel_weight_matrix(
    MEL_BANDS, FFT // 2 + 1, SAMPLE_RATE, MEL_LOW_HZ, MEL_HIGH_HZ
)


@tf.function(input_signature=[tf.TensorSpec([None, CLIP_SAMPLES], tf.float32)])
def _mfcc(audio: tf.Tensor) -> tf.Tensor:
    stft = tf.signal.stft(
        audio, frame_length=WINDOW, frame_step=STRIDE, fft_length=FFT
    )  # (B, 49, 257)
    mel = tf.tensordot(tf.abs(stft), _MEL, 1)  # (B, 49, 40)
    log_mel = tf.math.log(mel + 1e-6)
    return tf.signal.mfccs_from_log_mel_spectrograms(log_mel)[..., :COEFFICIENTS]  # (B, 49, 10)


def mfcc(clips: np.ndarray, batch: int = 512) -> np.ndarray:
    """(N, 16000) float32 clips -> (N, 49, 10) float32 MFCCs."""
    if clips.ndim != 2 or clips.shape[1] != CLIP_SAMPLES:
        raise ValueError(f"mfcc: expected (N, {CLIP_SAMPLES}) clips, got {clips.shape}")
    parts = [_mfcc(tf.constant(clips[i : i + batch])).numpy() for i in range(0, len(clips), batch)]
    return np.concatenate(parts) if parts else np.zeros((0, FRAMES, COEFFICIENTS), np.float32)
