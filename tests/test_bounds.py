"""Memory bounded for any image, on every path that decodes or transforms one: the SavedModel's two
signatures, predict, visualize and the evaluation and training pipelines. The images are built to
pass a width x height check: 1 x 30000 and 1 x 1,000,000 pixel PNGs of a few kB (the evaluation
transform scaled the short side up to 54 px for a 48 px model: 1.0 GB and 35 GB of float32),
a 1-pixel-high float batch; a JPEG of 600 bytes declaring 20000 x 20000 pixels. Each path runs in
one fresh process (tools/memory_bounds.py) that measures how much its peak memory (ru_maxrss) grew."""

import io
import json
import os
import sys

import numpy as np
import pytest
import tensorflow as tf
from helpers import REPO, run_python
from PIL import Image

from crossvit_keras.data import image_header
from crossvit_keras.data.preprocessing import MAX_ASPECT_RATIO, eval_transform, middle

sys.path.insert(0, os.path.join(REPO, "tools"))
from memory_bounds import jpeg_declaring  # noqa: E402
from serving_load_test import encode, png_bomb  # noqa: E402


@pytest.fixture(scope="module")
def grown():
    """tools/memory_bounds.py's measurements, in a fresh process."""
    return json.loads(run_python("import runpy; runpy.run_path('tools/memory_bounds.py', run_name='__main__')"))


@pytest.mark.parametrize(
    "path", ["serving_bytes", "serving_default", "predict", "visualize", "eval pipeline", "train pipeline"]
)
def test_an_image_one_pixel_high_is_transformed_in_bounded_memory(grown, path):
    # without the bound: a 54 x 1,620,000 float32 image each, 1.0 GB (decoded, they take 90 kB)
    assert grown[path] < 150, grown


def test_the_longest_and_the_largest_png_decode_in_bounded_memory(grown):
    # 1 x 1,000,000 pixels is the longest side TensorFlow's PNG decoder takes (3 MB decoded as RGB)
    assert grown["serving_bytes 1 x 1,000,000"] < 300, grown
    # 40 MP, the default limit: 120 MB decoded as RGB, 480 MB as float32
    assert grown["serving_bytes 6666 x 6000"] < 1200, grown


def test_the_pipelines_skip_a_jpeg_declaring_too_many_pixels(grown):
    assert grown["eval weights"] == 3  # a, b, c; d (600 bytes for 400 megapixels) skipped undecoded


def test_the_middle_of_an_elongated_image_is_kept_and_normal_images_are_unchanged(monkeypatch):
    from crossvit_keras import transforms

    rng = np.random.default_rng(0)
    for shape in ((300, 451, 3), (21, 37, 3), (1, MAX_ASPECT_RATIO, 3), (2, 5, 40, 3)):
        image = tf.constant(rng.integers(0, 256, shape), tf.uint8)
        np.testing.assert_array_equal(middle(image).numpy(), image.numpy())  # nothing cut up to 8:1
    assert middle(tf.zeros([3, 1000, 3])).shape == (3, 3 * MAX_ASPECT_RATIO, 3)
    assert middle(tf.zeros([2, 1000, 4, 3])).shape == (2, 4 * MAX_ASPECT_RATIO, 4, 3)
    # a smooth 3 x 600 ramp: the same output as resizing the whole strip (up to float rounding)
    ramp = np.tile(np.linspace(0, 255, 600, dtype=np.float32), (3, 1))[..., None].repeat(3, -1)
    bounded = eval_transform(ramp, 48).numpy()
    monkeypatch.setattr(transforms, "middle", lambda images, **kwargs: images)
    np.testing.assert_allclose(bounded, eval_transform(ramp, 48).numpy(), atol=1e-4)


def test_messages_say_what_to_send_instead():
    def problem(data, **kwargs):
        return image_header.problem(data, **kwargs).numpy().decode()

    assert problem(png_bomb(20000, 20000)) == (
        "a PNG image of 20000 x 20000 pixels, more than the 40000000 allowed (--max-pixels); use a smaller image"
    )
    assert problem(jpeg_declaring(65000, 65000)).startswith("a JPEG image of 65000 x 65000 pixels, more than")
    assert problem(png_bomb(30000, 1)) == ""
    limited = problem(png_bomb(30000, 1), max_pixels=1000)
    assert limited.endswith("more than the 1000 allowed (--max-pixels); use a smaller image")
    frames = [Image.fromarray(np.full((8, 8, 3), i * 40, np.uint8)) for i in range(3)]
    animated = io.BytesIO()
    frames[0].save(animated, "WEBP", save_all=True, append_images=frames[1:], duration=50)
    assert problem(animated.getvalue()).startswith("an animated WebP image, which is not read; use a still image")
    assert image_header.size_problem(animated.getvalue()).numpy().decode().startswith("an animated WebP")
    assert (
        image_header.size_problem(jpeg_declaring(20000, 20000))
        .numpy()
        .decode()
        .startswith("a JPEG image of 20000 x 20000 pixels, more than the 40000000 the input pipelines take; use")
    )
    formats = (("JPEG", {}), ("PNG", {}), ("GIF", {}), ("BMP", {}), ("WEBP", {}), ("WEBP", {"lossless": True}))
    for fmt, options in formats:
        encoded = encode(np.zeros((21, 37, 3), np.uint8), fmt, **options)
        assert [int(t) for t in image_header.read_size(encoded)[1:]] == [21, 37]
        assert image_header.size_problem(encoded).numpy() == b""


def test_an_empty_batch_and_an_animated_webp_answer_like_their_siblings(grown):
    assert grown["empty batch"] == [[0, 3], [0, 3]]  # serving_default as serving_bytes: empty outputs
    assert grown["serving animated"].startswith(
        "assertion failed: [image_bytes[1] is an animated WebP image, which is not read; send a still image"
    )
    assert grown["predict animated"].endswith(
        "animated.webp: an animated WebP image, which is not read; use a still image (e.g. its first frame as PNG)"
    )


def test_serving_default_refuses_more_pixels_than_the_limit_from_the_shape():
    from crossvit_keras.export import saved_model

    saved_model._checked_images(tf.zeros([2, 25, 40, 3]), max_pixels=1000)
    message = r"`images` are 41 x 25 pixels, more than the 1000 this model takes \(--max-pixels at export\); send"
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        saved_model._checked_images(tf.zeros([2, 25, 41, 3]), max_pixels=1000)
