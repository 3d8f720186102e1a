"""The command line: ``s2i-client`` (installed by ``make setup`` into .venv/bin) or ``python client.py``.

    s2i-client examples/fox_in_snow_en.wav --num-images 2 --out outputs
    s2i-client --text "a lighthouse in a storm" --seed 7 --json
    s2i-client --follow --host http://127.0.0.1:8322 examples/fox_in_snow_en.wav   (a job: live progress)
    s2i-client --host http://127.0.0.1:8322 caption photo.png

``s2i-client --help`` lists the commands (generate, the default, and caption, tag, interrogate,
restyle); ``s2i-client COMMAND --help`` a command's flags. The exit status is 0 when every input
succeeded, else the first failed input's, from the error code table (s2i/contracts/errors.py).

The library it calls is s2i/client/. Starting it imports neither docarray, torch nor jina: a
gRPC call imports them; an HTTP call needs none of them.
"""

import sys
from typing import Optional, Sequence

from s2i.cli.images import run as run_images
from s2i.cli.options import parse_args, request_parameters
from s2i.cli.output import EX_INTERRUPTED, Stop
from s2i.cli.speech import run as run_generate
from s2i.client import JobInterrupted
from s2i.contracts.params import ParameterError

def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the command line ``argv`` (default: this process's); returns the exit status."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        parameters = request_parameters(args)
    except ParameterError as e:  # what the service would refuse, refused before anything is sent
        print(f's2i-client {args.command}: invalid parameters: {e}', file=sys.stderr)
        return e.kind.exit_status
    try:
        run = run_generate if args.command == 'generate' else run_images  # the other commands take images
        return run(args, parameters)
    except Stop as e:
        print(e.message, file=sys.stderr, flush=True)
        return e.exit_status
    except KeyboardInterrupt as e:
        print(interrupted_message(e), file=sys.stderr, flush=True)
        return EX_INTERRUPTED


def interrupted_message(interrupt: KeyboardInterrupt) -> str:
    if not isinstance(interrupt, JobInterrupted):
        return 'interrupted'
    if interrupt.cancel_error:
        return f'interrupted; cancelling job {interrupt.job_id} failed: {interrupt.cancel_error}'
    return f'interrupted: job {interrupt.job_id} cancelled'


if __name__ == '__main__':
    sys.exit(main())
