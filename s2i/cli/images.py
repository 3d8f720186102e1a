"""`s2i-client caption|tag|interrogate|restyle IMAGE ...`: images in, through the same Flow.

    s2i-client caption photo.jpg shop/*.png --json
    s2i-client tag photo.jpg --labels "a dog,a cat,a car" [--tag-mode multi --threshold 0.3]
    s2i-client interrogate photo.jpg [--mode fast]
    s2i-client restyle photo.jpg --style "as a Van Gogh painting" [--strength 0.6] [--num-images 2]
    s2i-client restyle photo.jpg --style-audio wish.ogg      # the style spoken, in any language

One request per image (one image's failure never costs the others their answer). With ``--json``
each image prints one object: ``input``, ``error`` and ``error_code`` as for speech, plus ``caption``,
``tags`` (``[{"label", "score"}]``, best first), ``prompt`` (interrogate), or ``text`` (the English
style used), ``images`` and ``stored`` (restyle).
"""

import argparse
from pathlib import Path
from typing import Any, Dict, List

from s2i.cli.output import EX_NOINPUT, Outcome, Result, answered, ask, failed, run_each
from s2i.client import ServiceError, save_pngs

ENDPOINTS = {'caption': '/caption', 'tag': '/tag', 'interrogate': '/interrogate', 'restyle': '/restyle'}


def run(args: argparse.Namespace, parameters: Dict[str, Any]) -> int:
    def run_one(label: str, path: Path, head: str) -> Outcome:
        return image_one(path, parameters, args)

    return run_each([(path, Path(path)) for path in args.images], run_one, summary_lines, args.json)


def image_one(path: Path, parameters: Dict[str, Any], args: argparse.Namespace) -> Outcome:
    result: Result = {'input': str(path), 'error': '', 'error_code': ''}
    try:
        fields = image_input(path, args)
    except OSError as e:
        return failed(result, f'cannot read {e.filename}: {e.strerror}', status=EX_NOINPUT)
    answer = ask(args, ENDPOINTS[args.command], fields, parameters)
    if isinstance(answer, ServiceError):
        return failed(result, answer.message, answer.code)
    result.update(answer_fields(answer, args.command))
    if args.command == 'restyle' and not answer.get('error'):
        images = answer.get('matches') or []
        result['images'] = save_pngs([image['png'] for image in images], args.out, f'{path.stem}-restyled')
        result['stored'] = [image['url'] for image in images if image.get('url')]
    return answered(result, answer)


def image_input(path: Path, args: argparse.Namespace) -> Dict[str, Any]:
    """The image as bytes (the server never needs this machine's paths), with the style, typed or spoken."""
    fields: Dict[str, Any] = {'image': path.read_bytes()}
    if args.command == 'restyle':
        if args.style_audio is not None:
            fields['blob'] = args.style_audio.read_bytes()
        else:
            fields['text'] = args.style
    return fields


def answer_fields(answer: Dict[str, Any], command: str) -> Dict[str, Any]:
    """What a command's answer holds, by the names the JSON output uses."""
    if command == 'caption':
        return {'caption': answer.get('caption', '')}
    if command == 'tag':
        return {'tags': [{'label': tag['label'], 'score': tag['score']} for tag in answer.get('tags') or []]}
    if command == 'interrogate':
        return {'caption': answer.get('caption', ''), 'prompt': answer.get('interrogated', '')}
    return {'language': answer.get('language'), 'transcript': answer.get('transcript', ''), 'text': answer.get('text', ''), 'images': [], 'stored': []}


def summary_lines(head: str, result: Result) -> List[str]:
    lines: List[str] = []
    if result.get('caption'):
        lines.append(f'caption: {result["caption"]}')
    lines += [f'{tag["score"]:.3f}  {tag["label"]}' for tag in result.get('tags', [])]
    if result.get('prompt'):
        lines.append(f'prompt: {result["prompt"]}')
    if result.get('transcript') and result['transcript'] != result.get('text'):
        lines.append(f'heard ({result["language"]}): {result["transcript"]}')
    if 'images' in result:
        lines.append(f'style: {result["text"]}')
        lines += [f'-> {path}' for path in result['images']]
    return [f'{head}:', *(f'    {line}' for line in lines)]
