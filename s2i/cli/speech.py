"""`s2i-client [generate] AUDIO... --text PROMPT...`: speech or text prompts to images, one request
per input, or with --follow one job per input, its progress shown live."""

import argparse
import base64
import sys
from pathlib import Path
from typing import Any, Dict, List

from s2i.cli.output import EX_NOINPUT, EX_UNAVAILABLE, STOPS_THE_RUN, Outcome, Result, Stop, answered, ask, failed, input_stem, run_each
from s2i.client import TERMINAL_EVENTS, JobRefused, ServiceError, follow_job, job_error, save_pngs
from s2i.contracts.stable_diffusion import openai_fields



def run(args: argparse.Namespace, parameters: Dict[str, Any]) -> int:
    inputs = [(path, True) for path in args.audio] + [(prompt, False) for prompt in args.text]  # (label, is a file)

    def run_one(label: str, is_file: bool, head: str) -> Outcome:
        if args.follow:
            return follow_one(label, is_file, parameters, args, head)
        return generate_one(label, is_file, parameters, args)

    return run_each(inputs, run_one, lambda head, result: result_lines(head, result, heard_shown=args.follow), args.json)


def empty_result(label: str) -> Result:
    return {'input': label, 'language': None, 'transcript': '', 'text': '', 'images': [], 'stored': [], 'record': '',
            'error': '', 'error_code': ''}


def generate_one(label: str, is_file: bool, parameters: Dict[str, Any], args: argparse.Namespace) -> Outcome:
    result = empty_result(label)
    try:
        fields = {'blob': Path(label).read_bytes()} if is_file else {'text': label}
    except OSError as e:
        return failed(result, f'cannot read {label}: {e.strerror}', status=EX_NOINPUT)
    answer = ask(args, '/generate' if is_file else '/text2image', fields, parameters)  # audio goes through Whisper
    if isinstance(answer, ServiceError):
        return failed(result, answer.message, answer.code)
    result.update(language=answer.get('language'), transcript=answer.get('transcript', ''), text=answer.get('text', ''),
                  record=answer.get('result_url') or '')
    images = answer.get('matches') or []
    result['images'] = save_pngs([image['png'] for image in images], args.out, input_stem(label, is_file))
    result['stored'] = [image['url'] for image in images if image.get('url')]  # where the Flow's store keeps them
    return answered(result, answer)


def result_lines(head: str, result: Result, heard_shown: bool = False) -> List[str]:
    """An input's outcome; ``heard_shown``: its transcript was already printed (live, by --follow)."""
    lines = heard_lines(head, result) if result['language'] and not heard_shown else []
    lines += [f'    -> {path}' for path in result['images']]
    if result['record']:
        lines.append(f'    kept by the service: {result["record"]}')
    return lines


def heard_lines(head: str, heard: Dict[str, Any]) -> List[str]:
    """What Whisper heard (a result or a ``transcribed`` event): the transcript, and its English if it differs."""
    lines = [f'{head}: ({heard["language"]}) {heard["transcript"]}']
    if heard['text'] != heard['transcript']:
        lines.append(f'    English: {heard["text"]}')
    return lines


# --follow: each input as a job, with its progress live

def follow_one(label: str, is_file: bool, parameters: Dict[str, Any], args: argparse.Namespace, head: str) -> Outcome:
    """generate_one's result for one input run as a job, plus its ``job`` id; Ctrl-C raises JobInterrupted."""
    result = {**empty_result(label), 'job': ''}
    live = LiveProgress(head, args.json)
    try:
        record = follow_job(args.host, args.token or '', audio_path=label if is_file else None,
                            prompt=None if is_file else label, fields=openai_fields(parameters), on_event=live)
    except JobRefused as e:
        if e.code in STOPS_THE_RUN:  # the same token for every input: stop here
            raise Stop(f'the gateway at {args.host} refused the request: {e.message}', e.kind.exit_status) from None
        return failed(result, e.message, e.code)
    except ConnectionError as e:
        raise Stop(f'{e}; is the service running (`make serve`)?', EX_UNAVAILABLE) from None
    except OSError as e:  # reading the audio file
        return failed(result, f'cannot read {label}: {e.strerror}', status=EX_NOINPUT)
    finally:
        live.close()
    result.update(job=record['id'], language=record.get('language'), transcript=record.get('transcript', ''),
                  text=record.get('text') or record.get('prompt', ''), record=record.get('result_url') or '')
    pngs = [base64.b64decode(image['b64_json']) for image in record.get('images', []) if image.get('b64_json')]
    result['images'] = save_pngs(pngs, args.out, input_stem(label, is_file))
    result['stored'] = [image['url'] for image in record.get('images', []) if image.get('url')]
    error = job_error(record)
    return (result, 0) if error is None else failed(result, error.message, error.code)


class LiveProgress:
    """What --follow shows while a job runs: what Whisper heard as soon as it is known (above the
    bars, on stdout), and a bar of denoising steps per pipeline call (on stderr)."""

    def __init__(self, head: str, as_json: bool):
        self.head, self.as_json = head, as_json
        self.bars: Dict[int, Any] = {}  # by the first image index of their pipeline call

    def __call__(self, event: Dict[str, Any]) -> None:
        if event['kind'] == 'transcribed' and not self.as_json:
            self.write(heard_lines(self.head, event), sys.stdout)
        elif event['kind'] == 'queued' and event.get('position'):
            self.write([f'{self.head}: queued behind {event["position"]} job(s)'], sys.stderr)
        elif event['kind'] == 'progress':
            self.advance(event)
        elif event['kind'] in TERMINAL_EVENTS:
            self.close()

    def advance(self, event: Dict[str, Any]) -> None:
        from tqdm import tqdm

        if event['image'] not in self.bars:
            first, count = event['image'] + 1, event.get('images', 1)
            label = f'image {first}' if count == 1 else f'images {first}-{first + count - 1}'
            self.bars[event['image']] = tqdm(total=event['steps'], desc=label, unit='step', file=sys.stderr)
        bar = self.bars[event['image']]
        bar.update(event['step'] - bar.n)

    def write(self, lines: List[str], file) -> None:
        from tqdm import tqdm

        for line in lines:
            tqdm.write(line, file=file)
        file.flush()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()
