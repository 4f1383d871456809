"""Reading an encoded image's format and size from its header in the graph: real files written by
PIL in every format tf.io.decode_image reads, cut-off files, a 20000 x 20000 PNG bomb, junk."""

import io
import os
import sys

import numpy as np
import pytest
import tensorflow as tf
from helpers import REPO
from PIL import Image
from skimage import data

from crossvit_keras.data import image_header

sys.path.insert(0, os.path.join(REPO, "tools"))
from serving_load_test import encode, png_bomb  # noqa: E402

# In a graph, as the serving signature runs it.
read = tf.function(image_header.read_header, input_signature=[tf.TensorSpec([], tf.string)])
FORMATS = {
    "jpeg": ("JPEG", {}),
    "jpeg progressive": ("JPEG", {"progressive": True}),
    "jpeg with exif": ("JPEG", {"exif": Image.Exif()}),
    "png": ("PNG", {}),
    "gif": ("GIF", {}),
    "bmp": ("BMP", {}),
    "webp lossy (VP8)": ("WEBP", {}),
    "webp lossless (VP8L)": ("WEBP", {"lossless": True}),
    "webp extended (VP8X)": ("WEBP", {"exif": b"Exif\0\0crossvit"}),
}


def header(encoded):
    code, height, width, complete = (t.numpy() for t in read(encoded))
    return image_header.FORMATS[code], int(height), int(width), bool(complete)


@pytest.mark.parametrize("case", list(FORMATS))
def test_every_format_gives_the_size_pil_wrote_and_decode_image_decodes(case):
    fmt, options = FORMATS[case]
    for width, height in ((37, 21), (300, 451)):
        encoded = encode(np.asarray(Image.fromarray(data.chelsea()).resize((width, height))), fmt, **options)
        name = "WebP" if fmt == "WEBP" else fmt
        assert header(encoded) == (name, height, width, True)
        assert tf.io.decode_image(encoded, channels=3, expand_animations=False).shape == (height, width, 3)
        cut = header(encoded[: len(encoded) * 2 // 3])
        assert cut[0] == name
        if fmt != "GIF":  # GIF's end is not checked: trailing bytes after its trailer are common
            assert cut[3] is False or cut[1:3] == (-1, -1), cut


def test_which_chunk_a_webp_starts_with():
    image = data.coffee()[:40, :50]
    chunks = [encode(image, "WEBP", **options)[12:16] for fmt, options in FORMATS.values() if fmt == "WEBP"]
    assert sorted(chunks) == [b"VP8 ", b"VP8L", b"VP8X"]  # each WebP path above is exercised


def test_a_top_down_bmp_has_a_positive_height():
    encoded = bytearray(encode(data.coffee()[:30, :20], "BMP"))
    encoded[22:26] = (-30).to_bytes(4, "little", signed=True)
    assert header(bytes(encoded)) == ("BMP", 30, 20, True)
    assert tf.io.decode_image(bytes(encoded), channels=3).shape == (30, 20, 3)


def test_a_png_bomb_is_read_from_its_header():
    bomb = png_bomb(20000, 20000)
    assert len(bomb) < 100_000  # 400 megapixels in under 100 kB
    assert header(bomb) == ("PNG", 20000, 20000, True)
    Image.MAX_IMAGE_PIXELS, limit = None, Image.MAX_IMAGE_PIXELS
    try:
        with Image.open(io.BytesIO(bomb)) as image:
            assert image.size == (20000, 20000) and image.mode == "1"  # a real PNG, as PIL reads it
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def test_junk_is_unknown_and_a_broken_jpeg_has_no_size():
    for junk in (b"", b"hello, world", b"\xff\xd8\xff", os.urandom(100)):
        assert header(junk)[0] == "unknown"
    assert header(b"\xff\xd8\xff\xe0 truncated")[:3] == ("JPEG", -1, -1)
    # a JPEG whose segments run forever without a frame header: the walk stops, no size
    segments = b"\xff\xd8" + b"\xff\xe1\x00\x02" * (image_header.MAX_JPEG_SEGMENTS + 10) + b"\xff\xd9"
    assert header(segments)[:3] == ("JPEG", -1, -1)


def test_hex_prefix_quotes_bytes_safely():
    assert image_header.hex_prefix(tf.constant(b"\x89PNG\x00\xff")).numpy() == b"89 50 4e 47 00 ff"
    assert image_header.hex_prefix(tf.constant(bytes(range(40)))).numpy().count(b" ") == 15
    assert image_header.hex_prefix(tf.constant(b"")).numpy() == b""


def test_importing_the_package_does_not_start_tensorflow():
    """A tensor made at import starts TensorFlow's eager context, after which
    MultiWorkerMirroredStrategy and logical CPU devices can no longer be configured."""
    from helpers import run_python

    out = run_python(
        "import crossvit_keras, crossvit_keras.training.run, crossvit_keras.visualize\n"
        "from tensorflow.python.eager import context\n"
        "print(context.context()._context_handle is None)"
    )
    assert out.strip() == "True"
