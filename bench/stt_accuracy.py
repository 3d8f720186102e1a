"""What a cropped encoder window does to the words: python bench/stt_accuracy.py [--quick] [--json PATH]

Every Whisper window is padded to 30 s, so a 3 s clip pays the encoder cost of 30 s. The
faster-whisper backend can give the encoder only the speech plus a margin (EncoderWindow in
executors/whisper/backends.py; the executor's `encoder_margin`, `encoder_step` and
`encoder_languages`). This bench runs the WhisperExecutor, as the Flow runs it (VAD, quality
checks, translation to English, no language hint), once per window setting over the same clips,
and reports for each setting:

- word error rate of the transcript (in the spoken language) and of the English text (what Stable
  Diffusion gets), against the text that was said and its reference translation; a refused clip
  counts as every word missed, since its user gets no image;
- clips refused, languages detected wrongly, seconds for the whole set and the speed-up over the
  full window;
- the same rates per condition (voice, speed, noise) and per length, and every clip whose English
  text differs from the full window's.

The clips: the spoken fixtures (examples/, tests/data/speech_clips.json; espeak-ng voices, five
languages) and, made here with espeak-ng, short image prompts in five languages, and every text
again in another voice, slower, faster and with white noise at 10 dB SNR. espeak-ng is robotic: these are
not human recordings, and the base model is less sure of them than of people (tests/data/README.md).
"""

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from executors.whisper.audio import AudioPolicy, decode_bounded  # noqa: E402
from s2i.contracts.documents import SAMPLE_RATE  # noqa: E402
from tables import print_table  # noqa: E402  (bench/tables.py, beside this file)

DATA = ROOT / 'tests' / 'data'
SPOKEN = json.loads((DATA / 'speech_clips.json').read_text())
# (file, language, what was said, its English translation)
EXAMPLES = [
    (ROOT / 'examples' / 'fox_in_snow_en.wav', 'en', 'A red fox runs through the snow under a full moon.', None),
    (ROOT / 'examples' / 'dog_in_snow_de.wav', 'de', 'Ein kleiner Hund spielt im Schnee. Die Sonne scheint über den Bergen.',
     'A little dog plays in the snow. The sun shines over the mountains.'),
]
# Short spoken image prompts, the service's main use: (language, text, English translation)
PROMPTS = [
    ('en', 'An astronaut riding a horse on the moon.', None),
    ('en', 'A castle on a hill at sunset, oil painting.', None),
    ('en', 'A bowl of ramen with chopsticks, studio lighting.', None),
    ('en', 'A cyberpunk street in the rain at night.', None),
    ('en', 'A watercolor painting of a lighthouse in a storm.', None),
    ('en', 'Two cats sleeping on a red sofa.', None),
    ('de', 'Ein Leuchtturm im Sturm, als Ölgemälde.', 'A lighthouse in a storm, as an oil painting.'),
    ('es', 'Un dragón verde volando sobre el mar.', 'A green dragon flying over the sea.'),
    ('fr', 'Un chat noir sur un toit la nuit.', 'A black cat on a roof at night.'),
    ('it', 'Una barca rossa su un lago di montagna.', 'A red boat on a mountain lake.'),
]
VOICES = {'en': 'en-us', 'de': 'de', 'es': 'es', 'fr': 'fr-fr', 'it': 'it'}  # espeak-ng's voice per language
SPEED = 140  # espeak-ng words per minute of the made clips; "slow" and "fast" are these:
SLOW, FAST = 100, 190
NOISE_SNR_DB = 10
# Window settings compared: (encoder_margin, encoder_step, encoder_languages); margin None is the full
# 30 s window, languages None crops every language. The last is the executor's default.
EVERY_LANGUAGE = None
SETTINGS = [
    (None, 1.0, EVERY_LANGUAGE), (1.0, 1.0, EVERY_LANGUAGE), (3.0, 1.0, EVERY_LANGUAGE), (1.0, 10.0, EVERY_LANGUAGE),
    (1.0, 1.0, ['en']), (3.0, 1.0, ['en']),
]
QUICK_SETTINGS = [SETTINGS[0], SETTINGS[-1]]


@dataclass
class Clip:
    name: str
    condition: str  # clean, voice, slow, fast, noise
    language: str
    said: str
    english: str  # what the English text should say
    audio: np.ndarray  # 16 kHz mono float32

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE


# ---------------------------------------------------------------- the clips


def espeak(text: str, voice: str, speed: int) -> np.ndarray:
    with tempfile.NamedTemporaryFile(suffix='.wav') as wav:
        subprocess.run(['espeak-ng', '-v', voice, '-s', str(speed), '-w', wav.name, text], check=True)
        return decode_bounded(Path(wav.name).read_bytes(), AudioPolicy())


def with_noise(audio: np.ndarray, snr_db: float, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(len(audio)).astype(np.float32)
    scale = np.sqrt(np.mean(audio**2) / (np.mean(noise**2) * 10 ** (snr_db / 10)))
    return (audio + scale * noise).astype(np.float32)


def other_voice(voice: str) -> str:
    base, _, variant = voice.partition('+')
    return f'{base}+{"m1" if variant else "f2"}'


def texts() -> List[Tuple[str, str, str, str, Optional[Path], str]]:
    """(name, language, said, English, fixture file or None, espeak-ng voice) of every text."""
    rows = [(path.stem, language, said, english or said, path, VOICES[language]) for path, language, said, english in EXAMPLES]
    rows += [
        (Path(name).stem, clip['language'], clip['text'], clip.get('english', clip['text']), DATA / name, clip['voice'])
        for name, clip in SPOKEN.items()
    ]
    rows += [
        (f'prompt{i}_{language}', language, said, english or said, None, VOICES[language])
        for i, (language, said, english) in enumerate(PROMPTS)
    ]
    return rows


def make_clips(quick: bool) -> List[Clip]:
    if not shutil.which('espeak-ng'):
        raise SystemExit('bench/stt_accuracy.py makes its clips with espeak-ng: apt-get install espeak-ng')
    conditions = ('clean', 'noise') if quick else ('clean', 'voice', 'slow', 'fast', 'noise')
    clips = []
    for seed, (name, language, said, english, fixture, voice) in enumerate(texts()):
        clean = decode_bounded(fixture.read_bytes(), AudioPolicy()) if fixture else espeak(said, voice, SPEED)
        speed = SPOKEN.get(f'{name}.ogg', {}).get('speed', SPEED)
        made = {
            'clean': lambda: clean,
            'voice': lambda: espeak(said, other_voice(voice), speed),
            'slow': lambda: espeak(said, voice, SLOW),
            'fast': lambda: espeak(said, voice, FAST),
            'noise': lambda: with_noise(clean, NOISE_SNR_DB, seed),
        }
        clips += [Clip(f'{name}/{c}', c, language, said, english, made[c]()) for c in conditions]
    return clips


# ---------------------------------------------------------------- word error rate


def normalized_words(text: str, language: str) -> List[str]:
    from whisper.normalizers import BasicTextNormalizer, EnglishTextNormalizer

    normalize = EnglishTextNormalizer() if language == 'en' else BasicTextNormalizer()
    return normalize(text).split()


def word_edits(reference: List[str], hypothesis: List[str]) -> int:
    """Levenshtein distance over words: substitutions, deletions and insertions."""
    previous = list(range(len(hypothesis) + 1))
    for i, word in enumerate(reference, 1):
        current = [i]
        for j, guess in enumerate(hypothesis, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (word != guess)))
        previous = current
    return previous[-1]


def errors(reference: str, hypothesis: Optional[str], language: str) -> Tuple[int, int]:
    """(word edits, reference words); no hypothesis (a refused clip) misses every word."""
    said = normalized_words(reference, language)
    heard = normalized_words(hypothesis, language) if hypothesis is not None else []
    return word_edits(said, heard), len(said)


# ---------------------------------------------------------------- the runs


def run_setting(margin: Optional[float], step: float, languages: Optional[List[str]], clips: List[Clip]) -> Dict:
    from docarray import DocList

    from executors.whisper.executor import WhisperExecutor
    from s2i.contracts.documents import PromptDoc

    whisper = WhisperExecutor(model='base', encoder_margin=margin, encoder_step=step, encoder_languages=languages)
    whisper.transcribe(DocList[PromptDoc]([PromptDoc(tensor=clips[0].audio)]), {})  # warm-up
    rows, started = [], time.perf_counter()
    for clip in clips:
        began = time.perf_counter()
        (doc,) = whisper.transcribe(DocList[PromptDoc]([PromptDoc(tensor=clip.audio)]), {})
        refused = bool(doc.error)
        rows.append({
            'clip': clip.name, 'condition': clip.condition, 'language': clip.language, 'audio_s': round(clip.seconds, 2),
            'seconds': time.perf_counter() - began, 'error': doc.error, 'detected': doc.language,
            'transcript': None if refused else doc.transcript, 'english': None if refused else doc.text,
            'transcript_errors': errors(clip.said, None if refused else doc.transcript, clip.language),
            'english_errors': errors(clip.english, None if refused else doc.text, 'en'),
        })
    return {'setting': str(whisper.backend.window), 'seconds': time.perf_counter() - started, 'clips': rows}


def rate(rows: List[Dict], key: str) -> float:
    edits, words = (sum(row[key][i] for row in rows) for i in (0, 1))
    return edits / words if words else float('nan')


def summary(run: Dict, full: Dict) -> Dict:
    rows = run['clips']
    return {
        'setting': run['setting'], 'clips': len(rows), 'refused': sum(bool(r['error']) for r in rows),
        'language_wrong': sum(not r['error'] and r['detected'] != r['language'] for r in rows),
        'transcript_wer': rate(rows, 'transcript_errors'), 'english_wer': rate(rows, 'english_errors'),
        'english_clips_wer': rate([r for r in rows if r['language'] == 'en'], 'english_errors'),
        'seconds': run['seconds'], 'speedup_vs_full': full['seconds'] / run['seconds'],
        'median_s_per_clip': statistics.median(r['seconds'] for r in rows),
    }


def length_band(seconds: float) -> str:
    return 'under 4 s' if seconds < 4 else '4-8 s' if seconds < 8 else '8 s and over'


def report(runs: List[Dict]) -> List[Dict]:
    full = runs[0]
    summaries = [summary(run, full) for run in runs]
    print_table(
        f'Whisper base through the executor, {summaries[0]["clips"]} clips, no language hint; '
        'WER counts a refused clip as every word missed',
        ['encoder window', 'refused', 'language wrong', 'transcript WER', 'English WER', 'English clips WER', 'seconds', 'vs full', 'median s/clip'],
        [[s['setting'], s['refused'], s['language_wrong'], f'{s["transcript_wer"]:.1%}', f'{s["english_wer"]:.1%}', f'{s["english_clips_wer"]:.1%}',
          f'{s["seconds"]:.1f}', f'{s["speedup_vs_full"]:.2f}x', f'{s["median_s_per_clip"]:.2f}'] for s in summaries],
    )
    groups = {
        'condition': lambda r: r['condition'], 'length': lambda r: length_band(r['audio_s']),
        'language': lambda r: r['language'],
    }
    for label, key in groups.items():
        values = sorted({key(r) for r in full['clips']})
        print_table(
            f'English WER by {label} (clips refused in brackets)', ['encoder window', *values],
            [[run['setting'], *(
                f'{rate(picked, "english_errors"):.1%} ({sum(bool(r["error"]) for r in picked)})'
                for value in values for picked in [[r for r in run['clips'] if key(r) == value]]
            )] for run in runs],
        )
    for run in runs[1:]:
        changed = [(a, b) for a, b in zip(full['clips'], run['clips']) if (a['english'], a['error']) != (b['english'], b['error'])]
        print(f'\n{run["setting"]}: {len(changed)} of {len(full["clips"])} clips differ from the full window')
        for a, b in changed:
            print(f'  {a["clip"]} ({a["audio_s"]} s)\n    full: {a["english"] or a["error"]!r}\n    this: {b["english"] or b["error"]!r}')
    return summaries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--quick', action='store_true', help='clean and noisy clips only, the full window vs the default')
    parser.add_argument('--json', type=Path, help='also write every clip of every run here')
    args = parser.parse_args()
    started = time.perf_counter()
    clips = make_clips(args.quick)
    print(f'{len(clips)} clips, {sum(c.seconds for c in clips):.0f} s of audio, made in {time.perf_counter() - started:.0f} s')
    runs = [run_setting(*setting, clips) for setting in (QUICK_SETTINGS if args.quick else SETTINGS)]
    summaries = report(runs)
    print(f'\nfinished in {time.perf_counter() - started:.0f} s')
    if args.json:
        args.json.write_text(json.dumps({'summaries': summaries, 'runs': runs}, indent=1, ensure_ascii=False) + '\n')
        print(f'wrote {args.json}')


if __name__ == '__main__':
    main()
