"""Images made in the test that needs them: PNG bytes, data URIs, and the large single-colour PNG
that costs little to send and much to decode (issue 21: six of them added 1.69 GB to the caption
executor when every image of a request was decoded before the first batch)."""

import base64
import io
import json
import os
import subprocess
import sys
from functools import lru_cache
from typing import List, Tuple

from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIG_SIDE = 6000  # a 6000 x 6000 single-colour PNG: about 120 kB of file, 108 MB of RGB pixels


def png_bytes(color='red', size: Tuple[int, int] = (40, 30), mode: str = 'RGB') -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, 'PNG')
    return buffer.getvalue()


@lru_cache(maxsize=4)
def big_single_colour_png(side: int = BIG_SIDE, color=(200, 30, 30)) -> bytes:
    """A side x side PNG of one colour: it compresses to almost nothing (half a second to make, so kept)."""
    return png_bytes(color, (side, side))


def data_uri(data: bytes, media_type: str = 'image/png') -> str:
    return f'data:{media_type};base64,' + base64.b64encode(data).decode()


ENDPOINT_IN_A_FRESH_PROCESS = '''
import importlib, json, resource, sys
from docarray import DocList
from s2i.contracts.documents import PromptDoc
from tests.image_files import big_single_colour_png, data_uri, png_bytes

module, name, endpoint, settings, parameters, count = sys.argv[1:]
executor = getattr(importlib.import_module(module), name)(**json.loads(settings))
call = getattr(executor, endpoint)
call(DocList[PromptDoc]([PromptDoc(image=png_bytes())]), json.loads(parameters))  # the model warmed up
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
uri = data_uri(big_single_colour_png())
docs = call(DocList[PromptDoc]([PromptDoc(image_uri=uri) for _ in range(int(count))]), json.loads(parameters))
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)  # MB (ru_maxrss is in kB)
for doc in docs:
    print(doc.error)
'''


def peak_growth_of_big_images(executor: type, endpoint: str, settings: dict, parameters: dict, count: int) -> Tuple[int, List[str]]:
    """How many MB the peak resident size of a fresh process grows while ``executor``'s ``endpoint``
    answers one request of ``count`` big single-colour PNG data URIs, and each document's error.

    A process of its own, so that its peak is this request's and nothing else's."""
    run = subprocess.run(
        [sys.executable, '-c', ENDPOINT_IN_A_FRESH_PROCESS, executor.__module__, executor.__name__, endpoint,
         json.dumps(settings), json.dumps(parameters), str(count)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    grown, *errors = run.stdout.splitlines()[-(count + 1):]
    return int(grown), errors
