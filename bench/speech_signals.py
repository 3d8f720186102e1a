"""Whisper's signals on real speech and on damaged audio, and the verdict of the executor's checks:
python bench/speech_signals.py [--model base] [--quick]

Real speech: the spoken fixtures (tests/data/speech_clips.json, five languages, espeak-ng) and the
English and German examples, in every container the tests use. Damaged audio is made here from the
spoken fixtures: MP3/Ogg cut short or missing their start, bytes overwritten in the middle, short
fragments, reversed speech, two languages spliced, noise bursts and hums. Each clip goes through
the executor's own steps (decode, VAD, one batched transcription, ``quality.judge``) and gets a row:
its signals, its transcript, how many of the transcript's words were really said, and the verdict.

A damaged clip that passes is counted as "faithful" when at least 60% of its words were said
(half a sentence from a file cut in the middle is a right answer, not garbage) and as "garbage"
otherwise. The thresholds live in executors/whisper/quality.py (SpeechChecks).
"""

import argparse
import copy
import json
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np

from executors.whisper.audio import AudioError, AudioPolicy, document_audio, keep_speech
from executors.whisper.backends import FasterWhisperBackend
from executors.whisper.quality import SpeechChecks, judge
from s2i.contracts.documents import SAMPLE_RATE, PromptDoc

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / 'tests' / 'data'
EXAMPLES = ROOT / 'examples'
SPOKEN = json.loads((DATA / 'speech_clips.json').read_text())
EXAMPLE_TEXT = {
    'fox_in_snow_en': ('en', 'A red fox runs through the snow under a full moon.'),
    'dog_in_snow_de': ('de', 'Ein kleiner Hund spielt im Schnee. Die Sonne scheint über den Bergen.'),
    'lighthouse_long_en': ('en', (DATA / 'README.md').read_text().split('"The old lighthouse', 1)[1].split('"', 1)[0]),
}
FAITHFUL = 0.6  # share of a transcript's words that were said, for a damaged clip's pass to count as right


@dataclass
class Case:
    name: str
    kind: str  # 'real' or 'damaged'
    said: str  # what was spoken ('' when nothing was)
    blob: Optional[bytes] = None
    tensor: Optional[np.ndarray] = None


def encode(samples: np.ndarray, suffix: str) -> bytes:
    """16 kHz mono samples as an MP3 (32 kb/s) or Ogg Vorbis file, through ffmpeg."""
    codec = {'.mp3': ['-c:a', 'libmp3lame', '-b:a', '32k'], '.ogg': ['-c:a', 'libvorbis', '-q:a', '0']}[suffix]
    pcm = (np.clip(samples, -1, 1) * 32767).astype('<i2').tobytes()
    with tempfile.NamedTemporaryFile(suffix=suffix) as out:
        subprocess.run(
            ['ffmpeg', '-loglevel', 'error', '-y', '-f', 's16le', '-ar', str(SAMPLE_RATE), '-ac', '1', '-i', '-', *codec, out.name],
            input=pcm, check=True,
        )
        return Path(out.name).read_bytes()


def corrupt(data: bytes, share: float, seed: int) -> bytes:
    """``share`` of the bytes of the middle third overwritten with random bytes."""
    rng = np.random.default_rng(seed)
    out = bytearray(data)
    third = len(data) // 3
    for i in rng.choice(np.arange(third, 2 * third), int(third * share), replace=False):
        out[i] = int(rng.integers(256))
    return bytes(out)


def noise_bursts(seconds_on: float, seconds_off: float, count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    on, off = int(seconds_on * SAMPLE_RATE), int(seconds_off * SAMPLE_RATE)
    parts = [np.concatenate([rng.standard_normal(on) * 0.3, np.zeros(off)]) for _ in range(count)]
    return np.concatenate(parts).astype(np.float32)


def hum(seconds: float, seed: int) -> np.ndarray:
    """A 150 Hz buzz whose loudness rises and falls like syllables: speech-like to a VAD, but no words."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t + np.random.default_rng(seed).uniform(0, 6))
    return (0.3 * envelope * np.sign(np.sin(2 * np.pi * 150 * t))).astype(np.float32)


def cases(quick: bool) -> List[Case]:
    from faster_whisper.audio import decode_audio

    real, damaged = [], []
    for path in [EXAMPLES / 'fox_in_snow_en.wav', EXAMPLES / 'dog_in_snow_de.wav'] + sorted(DATA.glob('fox_in_snow_en.*')) + [DATA / 'lighthouse_long_en.ogg']:
        real.append(Case(path.name, 'real', EXAMPLE_TEXT[path.stem][1], blob=path.read_bytes()))
    spoken = {name: decode_audio(str(DATA / name), sampling_rate=SAMPLE_RATE) for name in SPOKEN}
    for name, samples in spoken.items():
        said = SPOKEN[name]['text']
        real.append(Case(name, 'real', said, blob=(DATA / name).read_bytes()))
        mp3, ogg = encode(samples, '.mp3'), (DATA / name).read_bytes()
        seed = len(said)
        for share in ((0.1, 0.3) if quick else (0.05, 0.1, 0.2, 0.3, 0.6)):
            damaged.append(Case(f'{name} mp3 cut at {share:.0%}', 'damaged', said, blob=mp3[: int(len(mp3) * share)]))
        damaged.append(Case(f'{name} ogg cut at 15%', 'damaged', said, blob=ogg[: int(len(ogg) * 0.15)]))
        damaged.append(Case(f'{name} mp3 without its first 85%', 'damaged', said, blob=mp3[int(len(mp3) * 0.85) :]))
        damaged.append(Case(f'{name} mp3 30% of middle bytes random', 'damaged', said, blob=corrupt(mp3, 0.3, seed)))
        damaged.append(Case(f'{name} ogg 5% of middle bytes random', 'damaged', said, blob=corrupt(ogg, 0.05, seed)))
        middle = len(samples) // 2
        for seconds in ((0.5,) if quick else (0.3, 0.6, 1.0)):
            piece = samples[middle : middle + int(seconds * SAMPLE_RATE)]
            damaged.append(Case(f'{name} {seconds} s fragment', 'damaged', said, tensor=piece))
        damaged.append(Case(f'{name} reversed', 'damaged', '', tensor=samples[::-1].copy()))
    names = list(spoken)
    for first, second in zip(names[::2], names[3::2]):  # halves of two clips in different languages
        a, b = spoken[first], spoken[second]
        spliced = np.concatenate([a[: len(a) // 2], b[len(b) // 2 :]])
        said = SPOKEN[first]['text'] + ' ' + SPOKEN[second]['text']
        damaged.append(Case(f'{first} + {second} spliced', 'damaged', said, tensor=spliced))
    for seed in range(1 if quick else 3):
        damaged.append(Case(f'noise bursts {seed}', 'damaged', '', tensor=noise_bursts(0.3, 0.4, 8, seed)))
        damaged.append(Case(f'syllable-like hum {seed}', 'damaged', '', tensor=hum(4, seed)))
    return real + damaged


def words(text: str) -> List[str]:
    return re.findall(r"[^\W\d_]+", text.lower())


def said_share(transcript: str, said: str) -> float:
    heard, spoken = words(transcript), set(words(said))
    return sum(word in spoken for word in heard) / len(heard) if heard else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', default='base')
    parser.add_argument('--quick', action='store_true', help='fewer damaged variants')
    args = parser.parse_args()
    backend = FasterWhisperBackend(args.model, 'cpu', 'auto', 0)
    checks, policy = SpeechChecks(), AudioPolicy()
    rows, batch = [], []

    def flush():
        results = backend.transcribe_batch([speech for _, speech in batch], 'transcribe', [None] * len(batch), 5)
        for (case, speech), result in zip(batch, results):
            raw = copy.deepcopy(result)
            seconds = len(speech) / SAMPLE_RATE
            problem = judge(result, seconds, False, checks)
            verdict = problem.message if problem else 'pass'
            rows.append((case, seconds, raw, verdict))
        batch.clear()

    for case in cases(args.quick):
        doc = PromptDoc(blob=case.blob, tensor=case.tensor)
        try:
            speech, _ = keep_speech(document_audio(doc, policy, backend.load_audio))
        except AudioError as e:
            rows.append((case, 0.0, None, str(e)))
            continue
        if not speech.size:
            rows.append((case, 0.0, None, 'no speech detected'))
            continue
        batch.append((case, speech))
        if len(batch) == 8:
            flush()
    if batch:
        flush()
    report(rows)


def report(rows) -> None:
    header = f'{"clip":44} {"kind":7} {"speech":>6} {"lang":>4} {"p":>5} {"segs":>4} {"cover":>5} {"chr/s":>5} {"nsp":>5} {"logp":>6} {"cr":>5} {"said":>4}  verdict | transcript'
    print(header)
    print('-' * len(header))
    tally, truth = {}, {'faithful': [0, 0], 'garbage': [0, 0]}  # [passed, clips]
    for case, seconds, raw, verdict in rows:
        passed = verdict == 'pass'
        share = print_row(case, seconds, raw, verdict)
        if raw is not None:
            truth['faithful' if share >= FAITHFUL else 'garbage'][0] += passed
            truth['faithful' if share >= FAITHFUL else 'garbage'][1] += 1
        language = case.name.split('.')[0].rsplit('_', 1)[-1] if case.kind == 'real' else 'all'
        counts = tally.setdefault((case.kind, language), {'clips': 0, 'pass': 0, 'faithful': 0, 'garbage': 0})
        counts['clips'] += 1
        counts['pass'] += passed
        counts['faithful'] += passed and share >= FAITHFUL
        counts['garbage'] += passed and share < FAITHFUL
    print_summary(tally, truth)


def print_row(case, seconds: float, raw, verdict: str) -> float:
    """One clip's signals and verdict; the share of its words said (0 for a clip that did not decode)."""
    if raw is None:
        print(f'{case.name[:44]:44} {case.kind:7} {seconds:6.1f} {"":>4} {"":>5} {"":>4} {"":>5} {"":>5} {"":>5} {"":>6} {"":>5} {"":>4}  {verdict}')
        return 0.0
    segs = raw.segments
    covered = sum(s.seconds for s in segs)
    share = said_share(raw.text, case.said)
    print(
        f'{case.name[:44]:44} {case.kind:7} {seconds:6.1f} {raw.language:>4} {raw.language_probability:5.2f} {len(segs):4d} '
        f'{covered / seconds if seconds else 0:5.2f} {len(raw.text) / max(seconds, 1.0):5.1f} '
        f'{max((s.no_speech_prob for s in segs), default=0):5.2f} {min((s.avg_logprob for s in segs), default=0):6.2f} '
        f'{max((s.compression_ratio for s in segs), default=0):5.2f} {share:4.2f}  {verdict[:60]} | {raw.text[:70]!r}'
    )
    return share


def print_summary(tally: dict, truth: dict) -> None:
    print()
    for (kind, language), c in sorted(tally.items()):
        if kind == 'real':
            print(f'real {language}: {c["pass"]}/{c["clips"]} pass ({c["faithful"]} of them with >= {FAITHFUL:.0%} of their words said)')
    for name, clip in SPOKEN.items():
        if clip['base'] != 'understood':
            print(f'  {name}: the base model {clip["base"]} (tests/data/speech_clips.json)')
    real = [c for (kind, _), c in tally.items() if kind == 'real']
    print(
        f'every decoded clip, real or damaged: {truth["faithful"][0]}/{truth["faithful"][1]} faithful transcripts pass, '
        f'{truth["garbage"][1] - truth["garbage"][0]}/{truth["garbage"][1]} garbage transcripts are rejected'
    )
    print(f'real, all: {sum(c["pass"] for c in real)}/{sum(c["clips"] for c in real)} pass')
    d = tally.get(('damaged', 'all'), {'clips': 0, 'pass': 0, 'faithful': 0, 'garbage': 0})
    print(
        f'damaged: {d["clips"] - d["pass"]}/{d["clips"]} rejected; of the {d["pass"]} that pass, {d["faithful"]} are faithful '
        f'(>= {FAITHFUL:.0%} of their words said) and {d["garbage"]} are garbage'
    )

if __name__ == '__main__':
    main()
