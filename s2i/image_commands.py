"""`client.py caption|tag|interrogate|restyle IMAGE ...`: images in, through the same Flow and client.

    client.py caption photo.jpg shop/*.png --json
    client.py tag photo.jpg --labels "a dog,a cat,a car" [--tag-mode multi --threshold 0.3]
    client.py interrogate photo.jpg [--mode fast]
    client.py restyle photo.jpg --style "as a Van Gogh painting" [--strength 0.6] [--num-images 2]
    client.py restyle photo.jpg --style-audio wish.ogg      # the style spoken, in any language

One request per image (one image's failure never costs the others their answer). With ``--json``
each image prints one object: ``input`` and ``error`` as for speech, plus ``caption``, ``tags``
(``[{"label", "score"}]``, best first), ``prompt`` (interrogate), or ``text`` (the English style
used), ``images`` and ``stored`` (restyle).
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Sequence

from docarray import DocList

from s2i.contracts.documents import PromptDoc

ENDPOINTS = {'caption': '/caption', 'tag': '/tag', 'interrogate': '/interrogate', 'restyle': '/restyle'}


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    from s2i.client import DEFAULT_HOST, token_or_environment

    parser = argparse.ArgumentParser(prog='client.py', description='Images in: caption, tag, interrogate or restyle them.')
    parser.add_argument('command', choices=sorted(ENDPOINTS))
    parser.add_argument('images', nargs='+', metavar='IMAGE', help='image files: PNG, JPEG, WebP, ...')
    parser.add_argument('--host', default=DEFAULT_HOST, help=f'the Flow gateway (default {DEFAULT_HOST}; http://... works too)')
    parser.add_argument('--token', default=token_or_environment(None), help="the gateway's auth token (default: $S2I_AUTH_TOKEN)")
    parser.add_argument('--json', action='store_true', help='print one JSON object per image')
    parser.add_argument('--out', default='outputs', type=Path, help='folder for restyled PNGs (default: outputs)')
    tagging = parser.add_argument_group('tag')
    tagging.add_argument('--labels', help='comma-separated labels to choose from (default: the executor\'s configured ones)')
    tagging.add_argument('--tag-mode', choices=['single', 'multi'], help='single: one label is right (softmax); multi: each label on its own')
    tagging.add_argument('--threshold', type=float, help='multi: the score a label must pass')
    tagging.add_argument('--top-k', type=int, help='at most this many tags')
    asking = parser.add_argument_group('interrogate')
    asking.add_argument('--mode', choices=['fast', 'classic'], help='the CLIP Interrogator mode')
    asking.add_argument('--caption-prefix', help='caption and interrogate: start the caption with this, e.g. "a photograph of"')
    styling = parser.add_argument_group('restyle')
    styling.add_argument('--style', help='what to make of the image, in English, e.g. "as a Van Gogh painting"')
    styling.add_argument('--style-audio', type=Path, help='the style spoken, in any language (Whisper translates it)')
    styling.add_argument('--strength', type=float, help='how far from the image to go, 0..1 (default 0.6)')
    for flag, kind in (('--num-images', int), ('--steps', int), ('--seed', int), ('--width', int), ('--height', int),
                       ('--guidance-scale', float), ('--best-of', int)):
        styling.add_argument(flag, type=kind)
    styling.add_argument('--negative-prompt')
    styling.add_argument('--scheduler')
    args = parser.parse_args(argv)
    if args.command == 'restyle' and bool(args.style) == bool(args.style_audio):
        parser.error('restyle needs exactly one of --style TEXT or --style-audio FILE')
    if args.command == 'tag' and args.labels is not None and not [label for label in args.labels.split(',') if label.strip()]:
        parser.error('--labels needs at least one label')
    return args


def parameters_from_args(args: argparse.Namespace) -> Dict[str, Any]:
    """The request parameters this command's options give (those left out: the executors' defaults)."""
    named = {
        'tag_mode': args.tag_mode, 'threshold': args.threshold, 'top_k': args.top_k, 'interrogate_mode': args.mode,
        'caption_prefix': args.caption_prefix, 'strength': args.strength, 'num_images': args.num_images,
        'steps': args.steps, 'seed': args.seed, 'width': args.width, 'height': args.height,
        'guidance_scale': args.guidance_scale, 'best_of': args.best_of, 'negative_prompt': args.negative_prompt,
        'scheduler': args.scheduler,
    }
    if args.labels is not None:
        named['labels'] = [label.strip() for label in args.labels.split(',') if label.strip()]
    return {key: value for key, value in named.items() if value is not None}


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    parameters = parameters_from_args(args)
    failed = 0
    for number, path in enumerate(args.images, start=1):
        result = run_one(Path(path), parameters, args)
        failed += bool(result['error'])
        report(result, f'[{number}/{len(args.images)}] {path}', args.json)
    return 1 if failed else 0


def run_one(path: Path, parameters: Dict[str, Any], args: argparse.Namespace) -> Dict[str, Any]:
    from s2i.client import save_images

    result: Dict[str, Any] = {'input': str(path), 'error': ''}
    try:
        doc = document_for(path, args)
    except OSError as e:
        result['error'] = f'cannot read {e.filename}: {e.strerror}'
        return result
    answered = send(doc, parameters, args)
    if isinstance(answered, str):
        result['error'] = answered
        return result
    result.update(answer_fields(answered, args.command))
    if args.command == 'restyle' and not answered.error:
        result['images'] = save_images(answered, args.out, f'{path.stem}-restyled')
        result['stored'] = [image.url for image in answered.matches if image.url]
    return result


def document_for(path: Path, args: argparse.Namespace) -> PromptDoc:
    """The image as bytes (the server never needs this machine's paths), with the style, typed or spoken."""
    doc = PromptDoc(image=path.read_bytes())
    if args.command == 'restyle':
        if args.style_audio is not None:
            doc.blob = args.style_audio.read_bytes()
        else:
            doc.text = args.style
    return doc


def send(doc: PromptDoc, parameters: Dict[str, Any], args: argparse.Namespace):
    """The answered document, or why there is none (the client's own errors, as for speech)."""
    from s2i.client import ExecutorUnavailable, generate
    from s2i.runtime import UNAUTHENTICATED

    try:
        (answered,) = generate(docs=DocList[PromptDoc]([doc]), parameters=parameters, host=args.host,
                               token=args.token or '', endpoint=ENDPOINTS[args.command])
    except ExecutorUnavailable as e:
        return str(e)
    except ConnectionError as e:
        raise SystemExit(f'cannot reach the Flow at {args.host} ({e}); start it with `make serve` or `jina flow --uses flow.yml`')
    except Exception as e:
        if UNAUTHENTICATED in str(e):
            raise SystemExit(f'the Flow at {args.host} refused the request: {UNAUTHENTICATED}')
        raise
    return answered


def answer_fields(doc: PromptDoc, command: str) -> Dict[str, Any]:
    """What a command's answer holds, by the names the JSON output uses."""
    fields: Dict[str, Any] = {'error': doc.error}
    if command == 'caption':
        fields['caption'] = doc.caption
    elif command == 'tag':
        fields['tags'] = [{'label': tag.label, 'score': tag.score} for tag in doc.tags]
    elif command == 'interrogate':
        fields.update(caption=doc.caption, prompt=doc.interrogated)
    else:
        fields.update(language=doc.language, transcript=doc.transcript, text=doc.text, images=[], stored=[])
    return fields


def report(result: Dict[str, Any], head: str, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, ensure_ascii=False), flush=True)
        return
    if result['error']:
        print(f'{head}: ERROR {result["error"]}', file=sys.stderr, flush=True)
        return
    print(f'{head}:', flush=True)
    for line in summary_lines(result):
        print(f'    {line}', flush=True)


def summary_lines(result: Dict[str, Any]) -> List[str]:
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
    return lines


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
