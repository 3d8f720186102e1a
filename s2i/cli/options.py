"""The command line's parser: its subcommands, the global options (before or after a subcommand) and
the request-parameter flags, derived from the executors' parameter models (s2i/contracts): a flag's
name, type, choices, range and default come from the model's field, and the values given are
checked by the same model before anything is sent.
"""

import argparse
import json
import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple, Type

from s2i.client import DEFAULT_HOST, DEFAULT_HTTP_HOST, environment_token
from s2i.contracts.caption import CaptionParams
from s2i.contracts.clip import ClipParams
from s2i.contracts.errors import ERRORS
from s2i.contracts.params import RequestParams
from s2i.contracts.stable_diffusion import GenerationParams, RestyleParams
from s2i.contracts.whisper import TranscriptionParams
from s2i.runtime import AUTH_TOKEN_VARIABLE

DEFAULT_COMMAND = 'generate'  # what `s2i-client audio.wav` and `s2i-client --text PROMPT` run
ParameterSet = Tuple[Type[RequestParams], Optional[Tuple[str, ...]]]  # a model, and its fields to offer (None: all)

# Each subcommand: its help, and the executors' parameters it offers as flags (their fields, not a copy).
COMMANDS: Dict[str, Tuple[str, Tuple[ParameterSet, ...]]] = {
    'generate': ('turn speech (any language) or text prompts into images (the default command)',
                 ((GenerationParams, None), (TranscriptionParams, None))),
    'caption': ('describe images in words', ((CaptionParams, None),)),
    'tag': ('label images with CLIP, from your labels or the configured ones',
            ((ClipParams, ('labels', 'tag_mode', 'threshold', 'top_k')),)),
    'interrogate': ('make a Stable Diffusion prompt from images (caption + CLIP)',
                    ((ClipParams, ('interrogate_mode', 'flavors')), (CaptionParams, None))),
    'restyle': ('redraw images in a style, typed or spoken (image-to-image)', ((RestyleParams, None), (TranscriptionParams, None))),
}
FLAG_ALIASES = {'interrogate_mode': ('--mode',)}  # shorter names people already use
EPILOG_WIDTH = 100
VALUE_TYPES = {'integer': (int, 'N'), 'number': (float, 'X'), 'string': (str, 'TEXT')}


class Options:
    """The parser, and the option strings that take a value (to find where a subcommand starts)."""

    def __init__(self) -> None:
        self.value_options: Set[str] = set()

    def add(self, container, *flags: str, **kwargs) -> argparse.Action:
        action = container.add_argument(*flags, **kwargs)
        if action.nargs != 0:
            self.value_options.update(action.option_strings)
        return action


def build_parser() -> Tuple[argparse.ArgumentParser, Options]:
    options = Options()
    parser = argparse.ArgumentParser(
        prog='s2i-client', formatter_class=argparse.RawDescriptionHelpFormatter,
        description='Turn speech (any language) or text prompts into images, and images into words or new images.',
        epilog=epilog())
    add_global_options(parser, options, defaults=True)
    commands = parser.add_subparsers(dest='command', metavar='COMMAND', title='commands')
    for name, (summary, _) in COMMANDS.items():
        command = commands.add_parser(name, help=summary, description=summary)
        add_global_options(command, options, defaults=False)
        add_inputs(name, command, options)
        add_parameter_flags(name, command.add_argument_group(
            'request parameters (s2i/contracts; one left out takes the service\'s configured default)'), options)
    return parser, options


def add_global_options(parser: argparse.ArgumentParser, options: Options, defaults: bool) -> None:
    """The options every command takes, before or after its name. A subcommand's copies default to
    nothing (SUPPRESS), so a value given before the subcommand is not overwritten by a default after it."""
    def default(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    group = parser.add_argument_group('global options (before or after COMMAND)')
    options.add(group, '--host', default=default(DEFAULT_HOST),
                help=f'the gateway: grpc://HOST:PORT (default {DEFAULT_HOST}) or http://HOST:PORT ({DEFAULT_HTTP_HOST})')
    options.add(group, '--token', default=default(environment_token()),
                help=f'the gateway\'s auth token (default: ${AUTH_TOKEN_VARIABLE}, its first key)')
    options.add(group, '--out', type=Path, default=default(Path('outputs')), help='folder for the PNG files (default: outputs)')
    options.add(group, '--json', action='store_true', default=default(False), help='print one JSON object per input')


def add_inputs(name: str, parser: argparse.ArgumentParser, options: Options) -> None:
    """A command's inputs and its own options (not request parameters)."""
    if name == 'generate':
        options.add(parser, 'audio', nargs='*', metavar='AUDIO', help='audio files: wav, mp3, flac, ogg, m4a, ...')
        options.add(parser, '--text', action='append', default=[], metavar='PROMPT', help='a text prompt (repeatable); skips Whisper')
        options.add(parser, '--follow', action='store_true',
                    help=f'run each input as a job on the gateway\'s HTTP port (--host {DEFAULT_HTTP_HOST}) and show its progress live')
        return
    options.add(parser, 'images', nargs='+', metavar='IMAGE', help='image files: PNG, JPEG, WebP, ...')
    if name == 'restyle':
        options.add(parser, '--style', help='what to make of the image, in English, e.g. "as a Van Gogh painting"')
        options.add(parser, '--style-audio', type=Path, metavar='AUDIO', help='the style spoken, in any language (Whisper translates it)')


def parameter_sets(command: str) -> Tuple[ParameterSet, ...]:
    return COMMANDS[command][1]


def parameter_fields(command: str) -> List[Tuple[str, Dict[str, Any]]]:
    """The command's parameter names, each with its JSON schema, in the models' order (first model wins)."""
    fields: Dict[str, Dict[str, Any]] = {}
    for model, names in parameter_sets(command):
        properties = model.model_json_schema()['properties']
        for name in names or properties:
            fields.setdefault(name, properties[name])
    return list(fields.items())


def add_parameter_flags(command: str, group, options: Options) -> None:
    for name, schema in parameter_fields(command):
        flags = [f'--{name.replace("_", "-")}', *FLAG_ALIASES.get(name, ())]
        options.add(group, *flags, dest=name, default=None, help=flag_help(schema), **flag_kind(schema))


def value_schema(schema: Dict[str, Any]) -> Dict[str, Any]:
    """The schema of a field's value: an Optional field's non-null choice."""
    for choice in schema.get('anyOf', [schema]):
        if choice.get('type') != 'null':
            return choice
    return schema


def flag_kind(schema: Dict[str, Any]) -> Dict[str, Any]:
    """argparse's type, choices and metavar for a field: lists are given comma-separated."""
    value = value_schema(schema)
    if 'enum' in value:
        return {'choices': value['enum']}
    if value.get('type') == 'array':
        return {'type': comma_separated, 'metavar': 'A,B,...'}
    if value.get('type') == 'boolean':
        return {'action': argparse.BooleanOptionalAction}
    kind, metavar = VALUE_TYPES[value['type']]
    return {'type': kind, 'metavar': metavar}


def comma_separated(text: str) -> List[str]:
    return [item.strip() for item in text.split(',') if item.strip()]


def flag_help(schema: Dict[str, Any]) -> str:
    """The field's description, its range and its default, as the model states them."""
    value = value_schema(schema)
    default = schema.get('default')
    parts = [schema.get('description') or value.get('description'), range_text(value),
             None if default in (None, '', []) else f'default {json.dumps(default)}']
    return '; '.join(part for part in parts if part)


def range_text(value: Dict[str, Any]) -> str:
    """``1 to 200``, ``at least 1``, ``over 0.0, at most 1.0``, ``..., a multiple of 8`` (pydantic
    writes an Optional field's bounds as ge/le, a plain one's as minimum/maximum)."""
    low, high = value.get('minimum', value.get('ge')), value.get('maximum', value.get('le'))
    above, step = value.get('exclusiveMinimum', value.get('gt')), value.get('multipleOf', value.get('multiple_of'))
    if low is not None and high is not None:
        parts = [f'{low} to {high}']
    else:
        parts = [f'at least {low}' if low is not None else None, f'over {above}' if above is not None else None,
                 f'at most {high}' if high is not None else None]
    parts.append(f'a multiple of {step}' if step is not None else None)
    return ', '.join(part for part in parts if part)


def epilog() -> str:
    """Usage without a subcommand, and the exit statuses, from the error code table."""
    by_status: Dict[int, List[str]] = defaultdict(list)
    for code, kind in ERRORS.items():
        by_status[kind.exit_status].append(code.value)
    lines = ['without COMMAND, generate runs: s2i-client AUDIO...  or  s2i-client --text PROMPT',
             'COMMAND --help lists its flags.', '',
             'exit status: 0 every input succeeded; else the first failed input\'s, by its error code:']
    lines += [textwrap.fill(', '.join(codes), EPILOG_WIDTH, initial_indent=f'  {status}  ', subsequent_indent=' ' * 6)
              for status, codes in sorted(by_status.items())]
    lines.append('and of the client itself: 2 a usage error, 66 an input file it cannot read, 69 a gateway it cannot '
                 'reach, 130 Ctrl-C')
    return '\n'.join(lines)


def with_command(argv: Sequence[str], value_options: Iterable[str]) -> List[str]:
    """``argv`` with the default command put first when it names none: its first word that is not an
    option or an option's value decides (``s2i-client --host H caption x.png`` is caption's)."""
    argv, takes_value = list(argv), set(value_options)
    skip_next = False
    for word in argv:
        if skip_next:
            skip_next = False
        elif word == '--':
            break
        elif word.startswith('-'):
            skip_next = word in takes_value
        else:
            return argv if word in COMMANDS else [DEFAULT_COMMAND, *argv]
    if {'-h', '--help'} & set(argv):
        return argv  # the overview, which lists every command
    return [DEFAULT_COMMAND, *argv]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser, options = build_parser()
    args = parser.parse_args(with_command(argv, options.value_options))
    problem = input_problem(args)
    if problem:
        parser.error(problem)
    return args


def input_problem(args: argparse.Namespace) -> Optional[str]:
    """What the parser cannot say itself: inputs a command needs, and what --follow cannot send."""
    if args.command == 'generate':
        if not args.audio and not args.text:
            return 'give at least one AUDIO file or --text PROMPT'
        if args.follow and not args.host.startswith(('http://', 'https://')):
            return f'--follow talks to the gateway\'s HTTP port: give --host http://HOST:PORT (e.g. {DEFAULT_HTTP_HOST}), not {args.host}'
        if args.follow and (args.width is None) != (args.height is None):
            return '--follow sends the image size as WIDTHxHEIGHT: give both --width and --height, or neither'
    if args.command == 'restyle' and bool(args.style) == bool(args.style_audio):
        return 'restyle needs exactly one of --style TEXT or --style-audio FILE'
    return None


def request_parameters(args: argparse.Namespace) -> Dict[str, Any]:
    """The parameters given on the command line, checked by their models (ParameterError names a bad
    one, as the service would); those left out are the service's to choose."""
    given = {name: getattr(args, name) for name, _ in parameter_fields(args.command) if getattr(args, name) is not None}
    for model, _ in parameter_sets(args.command):
        model.from_request(model(), given)
    return given
