"""A document's input image (s2i/images.py): what reads correctly, and what is refused with which message.

Every image is made here with Pillow; nothing binary is checked in."""

import io
import logging
import os
import struct
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from s2i.contracts.documents import PromptDoc
from s2i.contracts.errors import ErrorCode
from s2i.images import ImageError, ImagePolicy, document_image, model_image_batches

from image_files import data_uri

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)
EXIF_ORIENTATION = 0x0112
DEFAULT = ImagePolicy()


def encoded(image: Image.Image, format: str = 'PNG', **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def noise(size=(64, 48), mode='RGB') -> Image.Image:
    """Random pixels: they compress badly, so a file cut in half is cut inside its pixel data."""
    channels = len(mode)
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (size[1], size[0], channels), dtype=np.uint8), mode)


def read(data: bytes, policy: ImagePolicy = DEFAULT) -> Image.Image:
    return document_image(PromptDoc(image=data), policy)


def refusal(policy: ImagePolicy = DEFAULT, **doc) -> str:
    with pytest.raises(ImageError) as caught:
        document_image(PromptDoc(**doc), policy)
    return str(caught.value)


def declaring(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header (IHDR) is patched to declare width x height pixels, CRC fixed."""
    png = bytearray(encoded(Image.new('L', (1, 1))))
    png[16:24] = struct.pack('>II', width, height)  # IHDR data starts after the signature, length and type
    png[29:33] = struct.pack('>I', zlib.crc32(bytes(png[12:29])))  # the CRC covers the type and the data
    return bytes(png)


# --- what reads, and how it is converted ---


@pytest.mark.parametrize('format', ['PNG', 'JPEG', 'WEBP', 'GIF', 'BMP'])
def test_each_accepted_format_reads_as_rgb_of_its_size(format):
    image = read(encoded(noise((64, 48)), format))
    assert (image.mode, image.size) == ('RGB', (64, 48))


def test_a_cmyk_jpeg_reads_as_rgb_with_its_colour():
    image = read(encoded(Image.new('CMYK', (8, 8), (0, 255, 255, 0)), 'JPEG'))  # no cyan, full magenta and yellow
    assert image.mode == 'RGB'
    assert np.allclose(image.getpixel((4, 4)), RED, atol=8)


def test_16_bit_grey_is_scaled_to_8_bits_not_clipped():
    grey = np.array([[0, 257 * 100, 40000, 65535]], dtype=np.uint16)
    data = encoded(Image.fromarray(grey))
    assert Image.open(io.BytesIO(data)).mode == 'I;16'  # really a 16-bit file
    image = read(data)
    assert [image.getpixel((x, 0)) for x in range(4)] == [(0, 0, 0), (100, 100, 100), (156, 156, 156), (255, 255, 255)]


@pytest.mark.parametrize('mode, opaque', [('RGBA', (255, 0, 0, 255)), ('LA', (80, 255))])
def test_a_transparent_pixel_becomes_white_and_an_opaque_one_keeps_its_colour(mode, opaque):
    picture = Image.new(mode, (4, 4), opaque)
    picture.putpixel((0, 0), (0, 0, 0, 0) if mode == 'RGBA' else (0, 0))  # black, but fully transparent
    image = read(encoded(picture))
    assert image.getpixel((0, 0)) == WHITE
    assert image.getpixel((3, 3)) == (RED if mode == 'RGBA' else (80, 80, 80))


def test_half_transparent_red_is_blended_with_white():
    image = read(encoded(Image.new('RGBA', (2, 2), (255, 0, 0, 128))))
    assert np.allclose(image.getpixel((0, 0)), (255, 127, 127), atol=1)


@pytest.mark.parametrize('format', ['PNG', 'GIF'])
def test_a_palette_image_with_a_transparent_index_reads_as_rgb_on_white(format):
    picture = Image.new('P', (4, 4), 1)
    picture.putpalette([0, 0, 0, *BLUE] + [0] * 762)
    picture.putpixel((0, 0), 0)  # index 0: black, declared transparent
    image = read(encoded(picture, format, transparency=0))
    assert (image.mode, image.getpixel((0, 0)), image.getpixel((3, 3))) == ('RGB', WHITE, BLUE)


def test_a_palette_image_without_transparency_keeps_its_colours():
    picture = Image.new('P', (4, 4), 1)
    picture.putpalette([0, 0, 0, *BLUE] + [0] * 762)
    assert read(encoded(picture)).getpixel((2, 2)) == BLUE


def test_grayscale_reads_as_three_equal_channels():
    assert read(encoded(Image.new('L', (3, 3), 90))).getpixel((1, 1)) == (90, 90, 90)


def test_exif_orientation_6_turns_the_picture_upright():
    stored = Image.new('RGB', (40, 20), BLUE)
    stored.paste(RED, (0, 0, 8, 8))  # mark the stored top-left corner
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # "rotate 90 degrees clockwise to display"
    image = read(encoded(stored, 'JPEG', exif=exif, quality=95))
    assert image.size == (20, 40)
    assert np.allclose(image.getpixel((17, 2)), RED, atol=40)  # the stored top-left is now the top-right
    assert np.allclose(image.getpixel((2, 2)), BLUE, atol=40)


def test_an_animated_gif_gives_its_first_frame():
    frames = [Image.new('RGB', (8, 8), RED), Image.new('RGB', (8, 8), BLUE)]
    data = encoded(frames[0], 'GIF', save_all=True, append_images=frames[1:], duration=100)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    assert read(data).getpixel((4, 4)) == RED


def test_a_data_uri_reads_like_bytes():
    image = document_image(PromptDoc(image_uri=data_uri(encoded(noise((10, 7))))), ImagePolicy())
    assert image.size == (10, 7)


def test_a_server_path_under_input_dir_reads(tmp_path):
    (tmp_path / 'photos').mkdir()
    (tmp_path / 'photos' / 'cat.png').write_bytes(encoded(noise((5, 6))))
    image = document_image(PromptDoc(image_uri='photos/cat.png'), ImagePolicy(input_dir=str(tmp_path)))
    assert image.size == (5, 6)


# --- what is refused, with the message the client sees ---


def test_an_empty_file_is_refused():
    assert refusal(image=b'') == 'empty image: the file has 0 bytes'


def test_a_file_over_max_bytes_is_refused():
    data = encoded(noise())
    message = refusal(ImagePolicy(max_bytes=1000), image=data)
    assert message == f'image too large: {len(data)} bytes, the limit is 1000 bytes (max_image_bytes)'


@pytest.mark.parametrize('policy, doc, code', [
    (DEFAULT, {'image': b''}, 'image_unreadable'),
    (DEFAULT, {'image': b'text, not a picture'}, 'image_unreadable'),
    (DEFAULT, {}, 'missing_input'),
    (ImagePolicy(max_bytes=1000), {'image': encoded(noise())}, 'input_too_large'),
    (ImagePolicy(max_pixels=100), {'image': encoded(noise())}, 'input_too_large'),
], ids=['empty', 'not an image', 'no image', 'too many bytes', 'too many pixels'])
def test_each_refusal_carries_its_code_and_blames_the_image(policy, doc, code):
    with pytest.raises(ImageError) as caught:
        document_image(PromptDoc(**doc), policy)
    assert (caught.value.code, caught.value.param) == (code, 'image')


def test_a_data_uri_over_max_bytes_is_refused_before_it_is_decoded():
    assert refusal(ImagePolicy(max_bytes=1000), image_uri=data_uri(encoded(noise()))).startswith('image too large:')


@pytest.mark.parametrize('data', [b'hello, this is text, not a picture', encoded(noise((8, 8)), 'TIFF')], ids=['text', 'tiff'])
def test_a_file_that_is_not_an_accepted_image_is_refused_naming_the_formats(data):
    assert refusal(image=data) == 'not an image this service reads: send a PNG, JPEG, WebP, GIF or BMP file'


@pytest.mark.parametrize('format', ['PNG', 'JPEG'])
def test_a_truncated_file_is_refused(format):
    data = encoded(noise((256, 256)), format)
    assert refusal(image=data[: len(data) // 2]) == f'truncated or damaged {format} image: its pixels could not be decoded'


# 8000x8000 passes Pillow's own limits (so ours refuses it); 10000x10000 makes Pillow warn and 50000x50000 raise
@pytest.mark.filterwarnings('error')
@pytest.mark.parametrize('width, height', [(8000, 8000), (10_000, 10_000), (50_000, 50_000)])
def test_a_decompression_bomb_is_refused_from_its_header(width, height):
    data = declaring(width, height)
    assert len(data) < 100
    message = refusal(image=data)
    assert message.startswith('image too large: it declares ')
    assert message.endswith('pixels, the limit is 40000000 pixels (max_image_pixels); not decoded')


def test_a_decompression_bomb_stays_small_in_memory():
    script = textwrap.dedent(f"""
        import resource
        from s2i.contracts.documents import PromptDoc
        from s2i.images import ImageError, ImagePolicy, document_image
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            document_image(PromptDoc(image={declaring(50_000, 50_000)!r}), ImagePolicy(max_pixels=10**10))
        except ImageError as e:
            print(e)
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)  # MB (ru_maxrss is in kB)
        """)
    done = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=60, check=True)
    message, grown_mb = done.stdout.splitlines()
    assert message.startswith('image too large: it declares more than')  # Pillow's limit, under a policy above it
    assert int(grown_mb) < 100


def test_an_image_with_both_fields_is_refused():
    data = encoded(noise((4, 4)))
    assert refusal(image=data, image_uri=data_uri(data)) == 'both image and image_uri are set: send the image in one of them'


def test_a_document_without_an_image_is_refused():
    assert refusal() == 'no image: set image (file bytes) or image_uri (a data: URI)'


@pytest.mark.parametrize('uri, message', [
    ('data:image/png,not-base64', "bad image data URI: it must read data:<media type>;base64,<data>, got 'data:image/png,not-base64'"),
    ('data:image/png;base64,@@@@', 'bad image data URI: its base64 data is malformed'),
])
def test_a_malformed_data_uri_is_refused(uri, message):
    assert refusal(image_uri=uri) == message


def test_server_paths_are_refused_when_input_dir_is_unset():
    assert refusal(image_uri='photos/cat.png') == (
        'server-side image paths are off (input_dir is not set): send the image inline (image bytes, or image_uri as a data: URI)'
    )


def test_a_path_climbing_out_of_input_dir_is_refused(tmp_path):
    (tmp_path / 'secret.png').write_bytes(encoded(noise((4, 4))))
    (tmp_path / 'inputs').mkdir()
    policy = ImagePolicy(input_dir=str(tmp_path / 'inputs'))
    assert refusal(policy, image_uri='../secret.png') == "image path '../secret.png' is outside the input directory"
    assert refusal(policy, image_uri=str(tmp_path / 'secret.png')).endswith('is outside the input directory')


def test_a_symlink_out_of_input_dir_is_refused(tmp_path):
    (tmp_path / 'secret.png').write_bytes(encoded(noise((4, 4))))
    (tmp_path / 'inputs').mkdir()
    os.symlink(tmp_path / 'secret.png', tmp_path / 'inputs' / 'innocent.png')
    policy = ImagePolicy(input_dir=str(tmp_path / 'inputs'))
    assert refusal(policy, image_uri='innocent.png') == "image path 'innocent.png' is outside the input directory"


def test_a_path_that_is_not_a_file_is_refused(tmp_path):
    (tmp_path / 'folder').mkdir()
    policy = ImagePolicy(input_dir=str(tmp_path))
    assert refusal(policy, image_uri='folder') == "image path 'folder' is not a file in the input directory"
    assert refusal(policy, image_uri='missing.png') == "image path 'missing.png' is not a file in the input directory"
    assert refusal(policy, image_uri='a\x00b.png') == "malformed image path 'a\\x00b.png'"


@pytest.mark.parametrize('uri', ['https://example.com/cat.png', 'http://127.0.0.1/cat.png', 'file:///etc/passwd'])
def test_image_urls_are_not_fetched(uri, tmp_path):
    scheme = uri.split(':')[0]
    assert refusal(ImagePolicy(input_dir=str(tmp_path)), image_uri=uri) == (
        f"image_uri scheme '{scheme}' is not accepted: image URLs are not fetched; "
        'send the image inline (image bytes, or image_uri as a data: URI)'
    )


# --- whatever the bytes, an ImageError or an image: never anything else ---


@given(st.binary(max_size=2048))
def test_arbitrary_bytes_give_an_image_or_an_image_error(data):
    try:
        image = read(data)
    except ImageError as e:
        assert e.code in (ErrorCode.IMAGE_UNREADABLE, ErrorCode.INPUT_TOO_LARGE)  # a documented code, never another
    else:
        assert image.size[0] > 0 and image.size[1] > 0


VALID_FILES = [encoded(noise((16, 16), mode), format) for mode, format in
               [('RGB', 'PNG'), ('RGB', 'JPEG'), ('RGBA', 'WEBP'), ('RGB', 'GIF'), ('RGB', 'BMP'), ('LA', 'PNG')]]


@given(st.sampled_from(VALID_FILES), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8),
       st.integers(0, 10**6))
def test_damaged_real_files_give_an_image_or_an_image_error(data, changes, cut):
    damaged = bytearray(data[: max(1, cut % (len(data) + 1))])
    for at, value in changes:
        damaged[at % len(damaged)] = value
    try:
        image = read(bytes(damaged))
    except ImageError:
        return
    assert image.mode == 'RGB'


@pytest.mark.filterwarnings('error')
def test_a_damaged_exif_block_is_ignored_and_the_picture_read_as_stored():
    truncated_exif = b'Exif\x00\x00II*\x00\x08\x00\x00\x00\x05\x00\x12\x01'  # announces 5 tags, holds part of one
    data = encoded(Image.new('RGB', (40, 20), BLUE), 'JPEG', exif=truncated_exif)
    with pytest.warns(UserWarning, match='Corrupt EXIF'):
        Image.open(io.BytesIO(data)).getexif()  # Pillow itself warns about this file
    assert read(data).size == (40, 20)


# --- for a model: shrunk as decoded, a batch at a time, within the request's budget of pixels ---

def for_model(*images: bytes, policy: ImagePolicy = DEFAULT, side: int = 100, batch_size: int = 8):
    """Each document's image as a model with inputs ``side`` pixels across would get it (None if
    refused), its error, and the batch sizes."""
    docs = [PromptDoc(image=data) for data in images]
    got, batches = {}, []
    for batch in model_image_batches(docs, policy, batch_size, side, logging.getLogger('test')):
        batches.append(len(batch))
        got.update({id(doc): image for doc, image in batch})
    return [got.get(id(doc)) for doc in docs], [doc.error for doc in docs], batches


@pytest.mark.parametrize('size, shrunk', [((600, 400), (150, 100)), ((400, 600), (100, 150)), ((40, 30), (40, 30))])
@pytest.mark.parametrize('mode', ['RGB', 'RGBA', 'P'])
def test_an_image_for_a_model_is_shrunk_to_its_input_size_keeping_its_aspect_and_never_enlarged(size, shrunk, mode):
    ([image], errors, _) = for_model(encoded(Image.new('RGB', size, RED).convert(mode)))
    assert errors == ['']
    assert image.mode == 'RGB' and image.size == shrunk
    assert image.getpixel((image.width // 2, image.height // 2)) == RED


def test_a_rotated_image_for_a_model_is_shrunk_and_upright():
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # turn 90 degrees clockwise to show upright
    ([image], _, _) = for_model(encoded(Image.new('RGB', (600, 400), RED), 'JPEG', exif=exif.tobytes()))
    assert image.size == (100, 150)


def test_images_for_a_model_come_in_batches_without_the_refused_ones():
    good = encoded(Image.new('RGB', (40, 30), RED))
    images, errors, batches = for_model(good, good, b'not an image', good, good, good, batch_size=2)
    assert batches == [2, 2, 1]
    assert [image is not None for image in images] == [True, True, False, True, True, True]
    assert errors[2].startswith('not an image this service reads')


def test_past_max_request_pixels_an_image_is_refused_and_the_images_that_fit_are_read():
    policy = ImagePolicy(max_request_pixels=2500)
    images, errors, _ = for_model(*(encoded(Image.new('RGB', size, RED)) for size in [(40, 30), (40, 30), (40, 30), (10, 10)]),
                                  policy=policy)
    assert [image is not None for image in images] == [True, True, False, True]  # 1200 + 1200 + 100 pixels
    assert errors == ['', '', 'too many image pixels in one request: this image decodes to 40 x 30 pixels, 2400 were '
                      'decoded before it, the limit is 2500 pixels per request (max_request_pixels); send it in another request', '']


def test_an_image_past_the_requests_budget_is_input_too_large_and_a_damaged_one_image_unreadable():
    docs = [PromptDoc(image=data) for data in (encoded(Image.new('RGB', (40, 30), RED)), b'damaged', encoded(Image.new('RGB', (40, 30), RED)))]
    for _ in model_image_batches(docs, ImagePolicy(max_request_pixels=2000), 8, 100, logging.getLogger('test')):
        pass
    assert [(doc.error_code, doc.error_param) for doc in docs] == [('', ''), ('image_unreadable', 'image'), ('input_too_large', 'image')]


def test_a_jpeg_for_a_model_counts_at_the_reduced_size_it_is_decoded_at():
    # 4000 x 3000 = 12 M pixels in the file; Pillow's draft decodes it at 1/8: 500 x 375
    policy = ImagePolicy(max_request_pixels=1_000_000)
    big = Image.new('RGB', (4000, 3000), RED)
    [jpeg], [jpeg_error], _ = for_model(encoded(big, 'JPEG'), policy=policy, side=224)
    [png], [png_error], _ = for_model(encoded(big), policy=policy, side=224)
    assert jpeg_error == '' and jpeg.size == (299, 224)
    assert png is None and png_error.startswith('too many image pixels in one request: this image decodes to 4000 x 3000 pixels')


@pytest.mark.parametrize('size', [(2100, 100), (100, 2100), (200_000, 2)])
def test_an_image_too_elongated_for_a_model_is_refused_before_it_is_decoded(size):
    # a model's processor (CLIP's) raises the short side to its input size: 200,000 x 2 would become 22 M x 224
    [image], [error], _ = for_model(encoded(Image.new('L', size)))
    assert image is None
    assert error == f'image too elongated: {size[0]} x {size[1]} pixels, its long side may be at most 20 times its short side; crop it'


def test_an_image_at_the_longest_aspect_ratio_is_read_for_a_model():
    [image], [error], _ = for_model(encoded(Image.new('RGB', (2000, 100), RED)))
    assert error == '' and image.size == (2000, 100)
