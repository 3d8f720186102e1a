"""PNG files that remember how they were made, and data URIs: the JSON-safe form of bytes."""

import base64
import io
import json
from typing import Any, Dict

from PIL import Image
from PIL.PngImagePlugin import PngInfo

PARAMETERS_CHUNK = 'parameters'  # tEXt key; the JSON of every generation parameter


def encode_png(image: Image.Image, parameters: Dict[str, Any]) -> bytes:
    info = PngInfo()
    info.add_text(PARAMETERS_CHUNK, json.dumps(parameters, sort_keys=True))
    buffer = io.BytesIO()
    image.save(buffer, format='PNG', pnginfo=info)
    return buffer.getvalue()


def read_png_parameters(png: bytes) -> Dict[str, Any]:
    """The generation parameters embedded in a PNG made by this service ({} if there are none)."""
    with Image.open(io.BytesIO(png)) as image:
        text = image.text.get(PARAMETERS_CHUNK)
    return json.loads(text) if text else {}


def png_data_uri(png: bytes) -> str:
    return to_data_uri(png, 'image/png')


def to_data_uri(data: bytes, media_type: str) -> str:
    return f'data:{media_type};base64,' + base64.b64encode(data).decode('ascii')


def from_data_uri(uri: str) -> bytes:
    """The bytes of a base64 ``data:`` URI; ValueError for anything else."""
    header, comma, payload = uri.partition(',')
    if not (header.startswith('data:') and header.endswith(';base64') and comma):
        raise ValueError(f'not a base64 data URI: {uri[:40]!r}')
    return base64.b64decode(payload, validate=True)
