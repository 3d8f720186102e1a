"""Small audio files made in the test that needs them: WAV bytes with chosen headers and samples."""

import struct

import numpy as np

from s2i.docs import SAMPLE_RATE

PCM = 0x0001  # WAVE_FORMAT_PCM


def wav_bytes(samples: np.ndarray, rate: int = SAMPLE_RATE, format_tag: int = PCM, announced_seconds: float = None) -> bytes:
    """16-bit mono WAV of ``samples`` (floats in [-1, 1]). ``announced_seconds`` makes the header claim
    a different length than the data holds (as a truncated upload's header does)."""
    data = (np.clip(samples, -1, 1) * 32767).astype('<i2').tobytes()
    data_size = len(data) if announced_seconds is None else int(announced_seconds * rate) * 2
    fmt = struct.pack('<HHIIHH', format_tag, 1, rate, rate * 2, 2, 16)
    header = b'RIFF' + struct.pack('<I', 36 + data_size) + b'WAVE' + b'fmt ' + struct.pack('<I', 16) + fmt
    return header + b'data' + struct.pack('<I', data_size) + data


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), dtype=np.float32)


def white_noise(seconds: float, seed: int = 0, level: float = 0.3) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * SAMPLE_RATE)) * level).astype(np.float32)
