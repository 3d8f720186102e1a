"""Small audio files made in the test that needs them: WAV bytes with chosen headers and samples, and a FLAC bomb."""

import io
import struct

import numpy as np

from s2i.contracts.documents import SAMPLE_RATE

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


def flac_bomb() -> bytes:
    """8 kB of FLAC: two 65535-sample frames at 1 Hz (18 hours each), with STREAMINFO's total-samples
    field zeroed so that the header announces no length. One frame resampled to 16 kHz is 2 GB."""
    import av

    out = io.BytesIO()
    with av.open(out, 'w', format='flac') as container:
        stream = container.add_stream('flac', rate=1, layout='mono', format='s16')
        stream.codec_context.options = {'frame_size': '65535'}
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 2 * 65535), dtype=np.int16), format='s16', layout='mono')
        frame.sample_rate = 1
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    data = bytearray(out.getvalue())
    # "fLaC", a 4-byte block header, then STREAMINFO, whose bytes 13-17 end in the 36-bit total-samples field
    data[8 + 13] &= 0xF0
    data[8 + 14 : 8 + 18] = bytes(4)
    return bytes(data)
