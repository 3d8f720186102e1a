"""A document's input image (caption, tag, interrogate, restyle): where it may come from, how much of
it the server accepts, and how it becomes the RGB picture a model expects.

Clients send the file inline: ``image`` bytes, or an ``image_uri`` holding a base64 ``data:`` URI.
A server path is read only under a configured input directory, by the same rule as audio
(s2i.inputs.path_under); image URLs are never fetched. Everything is checked before any pixel is
decoded: the byte limit, that the file is in one of ACCEPTED_FORMATS, and the pixel count that its
header declares (a 5 kB PNG can declare 50,000 x 50,000 pixels: 7.5 GB once decoded).

For a model (caption, CLIP), ``model_image_batches`` decodes a request's images a batch at a time, as
the model takes them, and shrinks each one as it is decoded to the size the model's processor resizes
it to (a JPEG is decoded at 1/2, 1/4 or 1/8 of its size already: Pillow's ``draft``). What one
request may decode in all is bounded too (``max_request_pixels``): six 6000 x 6000 PNGs of one
colour, 120 kB each, once grew a caption executor by 1.7 GB, all decoded before its first batch.

Animated images (GIF, APNG, WebP) give their first frame: it is what a thumbnail shows, and what a
client who sent "a picture" means.

Every failure is an ImageError whose message a client can act on; client values are quoted through
s2i.contracts.params.quote, and an unexpected exception from Pillow is named by its type only.
"""

import binascii
import io
import logging
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple
from urllib.parse import urlsplit

import numpy as np
from PIL import Image, UnidentifiedImageError

from s2i.contracts.documents import PromptDoc, fail, fail_with
from s2i.contracts.errors import CodedError, ErrorCode
from s2i.contracts.params import quote
from s2i.encoding import from_data_uri
from s2i.executor_settings import ImageInputSettings, ModelImageSettings
from s2i.inputs import checked_file, read_under, too_large
from s2i.runtime import DETAILS_LOGGED

# Pillow's names, in the order the error message lists them. A short list on purpose: Pillow can also
# open EPS (through Ghostscript), PSD, ICO, TIFF and a dozen others, each a parser a client could aim at.
ACCEPTED_FORMATS = ('PNG', 'JPEG', 'WEBP', 'GIF', 'BMP')
ACCEPTED_NAMES = 'PNG, JPEG, WebP, GIF or BMP'
SIXTEEN_BIT_MODES = ('I;16', 'I;16L', 'I;16B', 'I;16N', 'I')  # grey levels 0..65535 (I: 32-bit ints, clipped to that)
ALPHA_MODES = ('RGBA', 'RGBa', 'LA', 'La', 'PA')
WHITE = (255, 255, 255)
SEND_INLINE = 'send the image inline (image bytes, or image_uri as a data: URI)'
# A model's input: the long side at most this many times the short one. A processor that resizes the
# short side to 224 (CLIP's) would otherwise make a 200,000 x 2 PNG of a few kB 45,000,000 x 224 pixels.
MAX_ASPECT_RATIO = 20

EXIF_ORIENTATION = 0x0112
# EXIF orientation -> the turn that shows the picture upright, as ImageOps.exif_transpose has it
UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_WARNING_FILTERS = threading.Lock()  # see quiet_pillow


IMAGE_SETTINGS = ModelImageSettings.model_fields  # the one home of the limits' defaults (s2i/executor_settings.py)


@dataclass(frozen=True)
class ImagePolicy:
    max_bytes: int = IMAGE_SETTINGS['max_image_bytes'].default  # per document, after data-URI decoding
    # width x height as the header declares it, refused before decoding; Pillow refuses over
    # Image.MAX_IMAGE_PIXELS (89.5 M) whatever this says
    max_pixels: int = IMAGE_SETTINGS['max_image_pixels'].default
    input_dir: Optional[str] = None  # server-side paths are read only under here; None: no paths
    # pixels decoded for a model in one request, its documents together (a JPEG counts at the reduced
    # size it is decoded at); the images past it are refused, not decoded. 25 images at max_pixels.
    max_request_pixels: int = IMAGE_SETTINGS['max_request_pixels'].default

    @classmethod
    def of(cls, settings: ImageInputSettings) -> 'ImagePolicy':
        """An executor's policy, from its settings."""
        request_pixels = getattr(settings, 'max_request_pixels', cls.max_request_pixels)
        return cls(settings.max_image_bytes, settings.max_image_pixels, settings.input_dir, request_pixels)


class ImageError(CodedError, ValueError):
    """A document's image cannot be used; the message says why, in words a client understands. Its code
    is image_unreadable unless said otherwise (input_too_large, missing_input), and the field to blame the image."""

    code = ErrorCode.IMAGE_UNREADABLE

    def __init__(self, message: str, code: Optional[ErrorCode] = None):
        super().__init__(message, code, param='image')


class PixelBudget:
    """The pixels one request may still decode (ImagePolicy.max_request_pixels)."""

    def __init__(self, limit: int):
        self.limit, self.spent = limit, 0

    def spend(self, width: int, height: int) -> None:
        """Counts an image about to be decoded at width x height; ImageError, and nothing counted, past the limit."""
        if self.spent + width * height > self.limit:
            raise ImageError(
                f'too many image pixels in one request: this image decodes to {width} x {height} pixels, '
                f'{self.spent} were decoded before it, the limit is {self.limit} pixels per request '
                '(max_request_pixels); send it in another request', ErrorCode.INPUT_TOO_LARGE,
            )
        self.spent += width * height


def document_image(
    doc: PromptDoc, policy: ImagePolicy, shorter_side: Optional[int] = None, budget: Optional[PixelBudget] = None
) -> Image.Image:
    """The document's image as RGB, EXIF orientation applied, ready for a model; ImageError if it cannot be.

    With ``shorter_side``, for a model whose processor resizes to that: an image larger than that is
    shrunk, keeping its aspect ratio, until its shorter side is that many pixels. With ``budget``,
    the pixels to decode are counted against it first."""
    data = image_bytes(doc.image, doc.image_uri, policy)
    with open_header(data, policy) as image:
        if shorter_side:
            _check_aspect_ratio(image)
            image.draft(None, shrunk_size(image.size, shorter_side))  # JPEG only: decode at 1/2, 1/4 or 1/8
        if budget is not None:
            budget.spend(*image.size)
        decode_pixels(image)
        try:
            if shorter_side and image.mode in ('RGB', 'L') and 'transparency' not in image.info:
                rgb = to_rgb(shrink(image, shorter_side))  # shrunk first: no full-size copy
            else:
                rgb = shrink(to_rgb(image), shorter_side) if shorter_side else to_rgb(image)
            return upright(rgb, orientation(image))
        except Exception as e:  # Pillow failing somewhere we did not foresee: a per-document error, not a crash
            raise ImageError(f'could not read the image: {type(e).__name__}') from e


def model_image_batches(
    docs: Sequence[PromptDoc], policy: ImagePolicy, batch_size: int, shorter_side: Optional[int], logger: logging.Logger
) -> Iterator[List[Tuple[PromptDoc, Image.Image]]]:
    """The images of ``docs`` for a model, decoded ``batch_size`` at a time when the caller asks for
    the next batch, each shrunk for the model (``document_image``); one budget of pixels for them all.
    A document whose image cannot be used gets its error and is left out."""
    budget = PixelBudget(policy.max_request_pixels)
    batch = []
    for doc in docs:
        try:
            batch.append((doc, document_image(doc, policy, shorter_side, budget)))
        except ImageError as e:
            fail_with(doc, e)
        except Exception as e:
            logger.error(f'reading the image failed for document {doc.id}', exc_info=True)
            fail(doc, f'reading the image failed: {type(e).__name__}; {DETAILS_LOGGED}', ErrorCode.INTERNAL_ERROR)
        if len(batch) == batch_size:
            yield batch
            batch = []  # the caller is done with the last batch: its pixels can go
    if batch:
        yield batch


def model_input_side(processor) -> Optional[int]:
    """The shorter side, in pixels, that a transformers image processor resizes an image to (BLIP's
    384 x 384, CLIP's shortest edge 224): the largest of the sizes it names. None if it names none."""
    image_processor = getattr(processor, 'image_processor', processor)
    sides = []
    for size in (getattr(image_processor, 'size', None), getattr(image_processor, 'crop_size', None)):
        for key in ('height', 'width', 'shortest_edge', 'longest_edge'):
            value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
            if isinstance(value, int) and value > 0:
                sides.append(value)
    return max(sides, default=None)


# 1. Where the bytes come from


def image_bytes(image: Optional[bytes], image_uri: Optional[str], policy: ImagePolicy) -> bytes:
    """The image file of a document (its ``image``, or what its ``image_uri`` holds), within the byte limit."""
    if image is not None and image_uri is not None:
        raise ImageError('both image and image_uri are set: send the image in one of them', ErrorCode.INVALID_REQUEST)
    if image is None and image_uri is None:
        raise ImageError('no image: set image (file bytes) or image_uri (a data: URI)', ErrorCode.MISSING_INPUT)
    data = image if image is not None else _read_uri(image_uri, policy)
    return checked_file(data, 'image', policy.max_bytes, 'max_image_bytes', ImageError)


def _check_size(size: int, policy: ImagePolicy) -> None:
    if problem := too_large('image', size, policy.max_bytes, 'max_image_bytes'):
        raise ImageError(problem, ErrorCode.INPUT_TOO_LARGE)


def _read_uri(uri: str, policy: ImagePolicy) -> bytes:
    try:
        scheme = urlsplit(uri).scheme.lower()
    except ValueError as e:  # "http://[::1"
        raise ImageError(f'malformed image_uri {quote(uri)}') from e
    if scheme == 'data':
        return _read_data_uri(uri, policy)
    if scheme:
        raise ImageError(f'image_uri scheme {quote(scheme)} is not accepted: image URLs are not fetched; {SEND_INLINE}')
    return _read_server_path(uri, policy)


def _read_data_uri(uri: str, policy: ImagePolicy) -> bytes:
    estimated = len(uri) * 3 // 4  # base64 is 4/3 of the bytes: refuse a huge URI before decoding it
    if estimated > policy.max_bytes + 1024:  # + room for the header
        _check_size(estimated, policy)
    try:
        return from_data_uri(uri)
    except binascii.Error as e:
        raise ImageError('bad image data URI: its base64 data is malformed') from e
    except ValueError as e:
        raise ImageError(f'bad image data URI: it must read data:<media type>;base64,<data>, got {quote(uri[:40])}') from e


def _read_server_path(path: str, policy: ImagePolicy) -> bytes:
    try:
        return read_under(policy.input_dir, path, 'image', policy.max_bytes, 'max_image_bytes', ImageError, SEND_INLINE)
    except ImageError:
        raise
    except ValueError as e:  # a NUL byte in the path
        raise ImageError(f'malformed image path {quote(path)}') from e


# 2. The header: format and declared size, before any pixel is decoded


def open_header(data: bytes, policy: ImagePolicy) -> Image.Image:
    """The opened image, its pixels not yet decoded; ImageError for a file that is not an accepted
    image, or that declares more than ``max_pixels``."""
    try:
        with quiet_pillow():
            image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError as e:
        raise ImageError(f'not an image this service reads: send a {ACCEPTED_NAMES} file') from e
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        # over Pillow's own limit (Image.MAX_IMAGE_PIXELS), which it checks before we see the size
        raise _too_many_pixels(f'more than {Image.MAX_IMAGE_PIXELS}', policy) from e
    except Exception as e:  # a header Pillow recognises but cannot parse (SyntaxError, OSError, ...)
        raise ImageError(f'could not read the image: {type(e).__name__}') from e
    width, height = image.size
    if width * height > policy.max_pixels:
        image.close()
        raise _too_many_pixels(f'{width} x {height}', policy)
    if not width or not height:
        image.close()
        raise ImageError(f'empty image: it declares {width} x {height} pixels')
    return image


def _too_many_pixels(declared: str, policy: ImagePolicy) -> ImageError:
    return ImageError(
        f'image too large: it declares {declared} pixels, the limit is {policy.max_pixels} pixels (max_image_pixels); not decoded',
        ErrorCode.INPUT_TOO_LARGE,
    )


@contextmanager
def quiet_pillow():
    """Pillow's warnings about a client's file turned off (a damaged EXIF block or APNG header is the
    client's business, not the server log's), but for DecompressionBombWarning, which becomes an
    exception to catch. Warning filters are process-wide, so these sections take turns: they read
    headers and metadata only, never pixels."""
    with _WARNING_FILTERS, warnings.catch_warnings():
        warnings.simplefilter('ignore')
        warnings.simplefilter('error', Image.DecompressionBombWarning)
        yield


def _check_aspect_ratio(image: Image.Image) -> None:
    width, height = image.size
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ImageError(
            f'image too elongated: {width} x {height} pixels, its long side may be at most {MAX_ASPECT_RATIO} times '
            'its short side; crop it'
        )


# 3. The pixels


def decode_pixels(image: Image.Image) -> None:
    """Decodes the (first frame's) pixels in place; ImageError for a truncated or damaged file.

    Truncated files fail rather than come back half grey: ImageFile.LOAD_TRUNCATED_IMAGES stays False."""
    try:
        image.load()
    except Image.DecompressionBombError as e:  # a GIF frame larger than the screen its header declared
        raise ImageError('image too large: a frame declares more pixels than the limit; not decoded', ErrorCode.INPUT_TOO_LARGE) from e
    except (OSError, SyntaxError, EOFError) as e:
        raise ImageError(f'truncated or damaged {image.format} image: its pixels could not be decoded') from e
    except Exception as e:
        raise ImageError(f'could not read the image: {type(e).__name__}') from e


def shrunk_size(size: Tuple[int, int], shorter_side: int) -> Tuple[int, int]:
    """``size`` scaled, aspect kept, so that its shorter side is ``shorter_side``; never enlarged."""
    scale = min(1.0, shorter_side / min(size))
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def shrink(image: Image.Image, shorter_side: int) -> Image.Image:
    size = shrunk_size(image.size, shorter_side)
    if size == image.size:
        return image
    # reducing_gap: box-averaged down to about 3x the size first (fast), then resampled: what
    # Image.thumbnail does, to the same quality
    return image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)


def orientation(image: Image.Image) -> int:
    """The EXIF orientation (1: upright already); 1 for an EXIF block too damaged to read, as viewers do."""
    try:
        with quiet_pillow():  # after load(): a PNG's eXIf chunk may follow its pixels
            value = image.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:
        return 1
    return value if isinstance(value, int) else 1


def upright(image: Image.Image, orientation: int) -> Image.Image:
    # ImageOps.exif_transpose would do this, but re-parses the EXIF of its result, warnings and all
    return image.transpose(UPRIGHT[orientation]) if orientation in UPRIGHT else image


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB: 16-bit grey scaled down (not clipped, as Pillow's convert would), transparency
    composited on white (what a viewer shows; black would be what dropping alpha shows), the rest
    (palette, grey, CMYK, YCbCr, 1-bit) by Pillow's conversion."""
    if image.mode in SIXTEEN_BIT_MODES:
        grey = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
        return Image.fromarray(np.round(grey / 257).astype(np.uint8), mode='L').convert('RGB')
    if image.mode in ALPHA_MODES or 'transparency' in image.info:
        rgba = image.convert('RGBA')
        return Image.alpha_composite(Image.new('RGBA', rgba.size, WHITE + (255,)), rgba).convert('RGB')
    return image.convert('RGB')
