"""What an encoded image is, read from its bytes in the graph (TensorFlow ops only), before any
decoding: its format, its width and height from its header, and whether its end is there. A serving
signature uses it to refuse a decompression bomb (a small file of huge dimensions) or a cut-off
upload without decoding it.

The formats are those tf.io.decode_image reads, with the header fields its decoders allocate from:

    JPEG  the SOFn frame header (height, width: 16-bit big-endian), found by walking the marker
          segments from the start; complete if an end-of-image marker FF D9 follows the first scan
    PNG   the IHDR chunk (width, height: 32-bit big-endian at bytes 16 and 20); complete if IEND is there
    GIF   the logical screen (width, height: 16-bit little-endian at bytes 6 and 8)
    BMP   the BITMAPINFOHEADER (width, height: signed 32-bit little-endian at 18 and 22; a negative
          height is a top-down image); complete if the file is as long as its header's file size
    WebP  the first chunk: VP8 (lossy: 14-bit sizes after the key frame's start code), VP8L
          (lossless: 14-bit sizes minus one) or VP8X (extended: 24-bit canvas sizes minus one);
          complete if the file is as long as its RIFF header says

`problem` turns these readings into the one-line reason an image is refused (an empty string when
it is not): what the SavedModel's `serving_bytes`, `crossvit-keras predict` and `visualize` say.
`size_problem` is its cheap form for the input pipelines, which only need the pixel limit: a
JPEG's size comes from libjpeg's header reading and the others' from their first bytes.
"""

import functools

import tensorflow as tf

# The largest image that is decoded, in pixels (width x height, from the header): a 40 MP image took
# 1.0 GB to decode and resize (tools/memory_bounds.py); a small file of larger dimensions is a
# decompression bomb.
# serving_bytes, predict, visualize and the input pipelines refuse larger ones undecoded.
DEFAULT_MAX_PIXELS = 40_000_000
FORMATS = ("unknown", "JPEG", "PNG", "GIF", "BMP", "WebP")  # the codes `read_header` returns, in order
UNKNOWN, JPEG, PNG, GIF, BMP, WEBP = range(len(FORMATS))
# A JPEG's markers before its first scan: APPn, DQT, DHT, SOF, ... (a few tens in real files; ICC
# profiles split over up to 255 APP2 segments). More than this is not a photograph: refused.
MAX_JPEG_SEGMENTS = 1024
_PAD = 32  # zero bytes after the data, so that reads at fixed offsets never run past the end
# a list, not a tensor: a tensor made at import would start TensorFlow's eager context, after which
# MultiWorkerMirroredStrategy can no longer configure its collective ops
_HEX = [f"{i:02x}" for i in range(256)]


def _starts_with(raw, prefix, offset=0):
    expected = tf.constant(list(prefix), tf.uint8)
    return tf.reduce_all(tf.equal(raw[offset : offset + len(prefix)], expected))


def _contains(raw, pattern, start, length):
    """Whether `pattern` (bytes) occurs in raw[start:length] (raw is padded beyond length)."""
    n = tf.shape(raw, out_type=tf.int64)[0] - _PAD
    positions = tf.range(n, dtype=tf.int64)
    found = tf.logical_and(positions >= start, positions + len(pattern) <= length)
    for i, byte in enumerate(pattern):
        found = tf.logical_and(found, tf.equal(raw[i : i + n], byte))
    return tf.reduce_any(found)


def _unsigned(raw, offset, size, big_endian):
    """The unsigned integer of `size` bytes at `offset` (a Python int or an int64 scalar) as int64."""
    values = tf.cast(tf.gather(raw, offset + tf.range(size, dtype=tf.int64)), tf.int64)
    weights = tf.constant([256**i for i in (reversed(range(size)) if big_endian else range(size))], tf.int64)
    return tf.reduce_sum(values * weights)


def _signed32_le(raw, offset):
    value = _unsigned(raw, offset, 4, big_endian=False)
    return tf.where(value >= 2**31, value - 2**32, value)


def _jpeg(raw, length):
    """(height, width, complete) of a JPEG: walks the marker segments from byte 2 to the first scan
    (SOS); the frame header SOFn (C0-CF but C4 DHT, C8 JPG, CC DAC) holds the sizes. A segment that is
    not a marker, or runs past the end, stops the walk with sizes -1."""

    def body(position, height, width, scan, steps, broken):
        marker = tf.cast(tf.gather(raw, position + 1), tf.int64)
        segment = _unsigned(raw, position + 2, 2, big_endian=True)
        is_fill = tf.equal(marker, 0xFF)
        standalone = tf.logical_or(tf.equal(marker, 0x01), tf.logical_and(marker >= 0xD0, marker <= 0xD8))
        sof = tf.logical_and(
            tf.logical_and(marker >= 0xC0, marker <= 0xCF),
            tf.logical_not(tf.reduce_any(tf.equal(marker, tf.constant([0xC4, 0xC8, 0xCC], tf.int64)))),
        )
        has_length = tf.logical_not(tf.logical_or(is_fill, standalone))
        broken = tf.logical_or(
            tf.not_equal(tf.gather(raw, position), 0xFF),
            tf.logical_and(has_length, tf.logical_or(segment < 2, position + 2 + segment > length)),
        )
        height = tf.where(sof, _unsigned(raw, position + 5, 2, big_endian=True), height)
        width = tf.where(sof, _unsigned(raw, position + 7, 2, big_endian=True), width)
        scan = tf.where(tf.equal(marker, 0xDA), position, scan)
        step = tf.where(is_fill, tf.constant(1, tf.int64), tf.where(standalone, tf.constant(2, tf.int64), 2 + segment))
        return position + step, height, width, scan, steps + 1, broken

    def more(position, height, width, scan, steps, broken):
        return tf.reduce_all([tf.logical_not(broken), scan < 0, position + 4 <= length, steps < MAX_JPEG_SEGMENTS])

    minus_one = tf.constant(-1, tf.int64)
    start = (tf.constant(2, tf.int64), minus_one, minus_one, minus_one, tf.constant(0), tf.constant(False))
    _, height, width, scan, _, broken = tf.while_loop(more, body, start)
    found = tf.logical_and(tf.logical_not(broken), scan >= 0)
    height = tf.where(found, height, minus_one)
    width = tf.where(found, width, minus_one)
    complete = tf.logical_and(found, _contains(raw, b"\xff\xd9", scan, length))
    return height, width, complete


def _webp(raw, length):
    chunk = raw[12:16]
    vp8 = tf.reduce_all(tf.equal(chunk, tf.constant(list(b"VP8 "), tf.uint8)))
    lossless = tf.reduce_all(tf.equal(chunk, tf.constant(list(b"VP8L"), tf.uint8)))
    extended = tf.reduce_all(tf.equal(chunk, tf.constant(list(b"VP8X"), tf.uint8)))
    bits = _unsigned(raw, 21, 4, big_endian=False)  # VP8L: 14 bits width - 1, 14 bits height - 1
    height = tf.where(
        vp8,
        tf.bitwise.bitwise_and(_unsigned(raw, 28, 2, big_endian=False), 0x3FFF),
        tf.where(
            lossless,
            tf.bitwise.bitwise_and(tf.bitwise.right_shift(bits, 14), 0x3FFF) + 1,
            tf.where(extended, _unsigned(raw, 27, 3, big_endian=False) + 1, tf.constant(-1, tf.int64)),
        ),
    )
    width = tf.where(
        vp8,
        tf.bitwise.bitwise_and(_unsigned(raw, 26, 2, big_endian=False), 0x3FFF),
        tf.where(
            lossless,
            tf.bitwise.bitwise_and(bits, 0x3FFF) + 1,
            tf.where(extended, _unsigned(raw, 24, 3, big_endian=False) + 1, tf.constant(-1, tf.int64)),
        ),
    )
    ok = tf.logical_or(tf.logical_and(vp8, _starts_with(raw, b"\x9d\x01\x2a", 23)), tf.logical_or(lossless, extended))
    ok = tf.logical_and(ok, length >= 30)
    complete = length >= _unsigned(raw, 4, 4, big_endian=False) + 8
    return tf.where(ok, height, -1), tf.where(ok, width, -1), complete


def _head(data, size=_PAD):
    """The first `size` bytes of a string scalar, padded with zero bytes to `size` (a string scalar)."""
    return tf.strings.substr(tf.strings.join([tf.strings.substr(data, 0, size), b"\0" * size]), 0, size)


def _starts_string(head, prefix, offset=0):
    return tf.equal(tf.strings.substr(head, offset, len(prefix)), prefix)


def _format(head, length):
    """The format code from the magic bytes at the `_head` of the data (string comparisons: cheaper
    than on decoded bytes)."""
    is_format = [
        tf.logical_and(_starts_string(head, b"\xff\xd8\xff"), length >= 4),
        _starts_string(head, b"\x89PNG\r\n\x1a\n"),
        tf.logical_or(_starts_string(head, b"GIF87a"), _starts_string(head, b"GIF89a")),
        _starts_string(head, b"BM"),
        tf.logical_and(_starts_string(head, b"RIFF"), _starts_string(head, b"WEBP", 8)),
    ]
    return tf.reduce_max(tf.where(is_format, tf.range(1, len(FORMATS)), 0))


def _png(raw, length, check_end=True):
    ok = tf.logical_and(length >= 24, _starts_with(raw, b"IHDR", 12))
    complete = _contains(raw, b"IEND", 33, length) if check_end else tf.constant(True)
    return (
        tf.where(ok, _unsigned(raw, 20, 4, big_endian=True), -1),
        tf.where(ok, _unsigned(raw, 16, 4, big_endian=True), -1),
        complete,
    )


def _gif(raw, length):
    ok = length >= 10
    return (
        tf.where(ok, _unsigned(raw, 8, 2, big_endian=False), -1),
        tf.where(ok, _unsigned(raw, 6, 2, big_endian=False), -1),
        tf.constant(True),
    )


def _bmp(raw, length):
    ok = length >= 26
    return (
        tf.where(ok, tf.abs(_signed32_le(raw, 22)), -1),
        tf.where(ok, _signed32_le(raw, 18), -1),
        length >= _unsigned(raw, 2, 4, big_endian=False),
    )


def _unknown(raw, length):
    return tf.constant(-1, tf.int64), tf.constant(-1, tf.int64), tf.constant(False)


def _padded(data):
    return tf.concat([tf.io.decode_raw(data, tf.uint8), tf.zeros([_PAD], tf.uint8)], axis=0)


def read_header(data):
    """(format, height, width, complete) of an encoded image (a string scalar), from its bytes:
    format an int32 code (FORMATS[code] names it; UNKNOWN for none of the five), height and width
    int64 (-1 when the header is damaged or cut short), complete a bool (the file's end is there,
    as far as its format tells; GIF's is not checked). Nothing is decoded."""
    raw = _padded(data)
    length = tf.cast(tf.strings.length(data), tf.int64)
    code = _format(_head(data), length)
    # only the format's reader runs (the JPEG walk and the search for the end cost most)
    readers = (_unknown, _jpeg, _png, _gif, _bmp, _webp)
    height, width, complete = tf.switch_case(code, [functools.partial(f, raw, length) for f in readers])
    return code, height, width, complete


def _size(data, head, length, code):
    """(height, width) of an image of format `code`: see read_size."""
    raw = _padded(head)

    def jpeg(raw, length):
        shape = tf.cast(tf.image.extract_jpeg_shape(data), tf.int64)
        return shape[0], shape[1], tf.constant(True)

    readers = (_unknown, jpeg, functools.partial(_png, check_end=False), _gif, _bmp, _webp)
    height, width, _ = tf.switch_case(code, [functools.partial(f, raw, length) for f in readers])
    return height, width


def read_size(data):
    """(format, height, width) as `read_header` reads them, at a fraction of its cost (for the input
    pipelines): a JPEG's from libjpeg's reading of its header (tf.image.extract_jpeg_shape, which
    raises an error on a damaged one), the other formats' from their first bytes. The end is not read."""
    head, length = _head(data), tf.cast(tf.strings.length(data), tf.int64)
    code = _format(head, length)
    return (code, *_size(data, head, length, code))


def hex_prefix(data, count=16):
    """The first `count` bytes of a string scalar in hex ("89 50 4e 47 ..."), safe to put in an
    error message (raw bytes there are not UTF-8, which TensorFlow's Python client and JSON need)."""
    raw = tf.io.decode_raw(tf.strings.substr(data, 0, tf.minimum(count, tf.strings.length(data))), tf.uint8)
    return tf.strings.reduce_join(tf.gather(tf.constant(_HEX), tf.cast(raw, tf.int32)), separator=" ")


def _animated(head, code):
    flags = tf.io.decode_raw(tf.strings.substr(head, 20, 1), tf.uint8)[0]
    extended = tf.logical_and(tf.equal(code, WEBP), _starts_string(head, b"VP8X", 12))
    return tf.logical_and(extended, tf.not_equal(tf.bitwise.bitwise_and(flags, 2), 0))


def is_animated_webp(data):
    """Whether an encoded image is an animated WebP (a VP8X chunk with its animation flag set):
    tf.io.decode_image cannot read one as RGB."""
    head = _head(data)
    return _animated(head, _format(head, tf.cast(tf.strings.length(data), tf.int64)))


def _join(*parts):
    """One string tensor from Python strings and scalar tensors (numbers written out)."""
    strings = [p if isinstance(p, str) or p.dtype == tf.string else tf.strings.as_string(p) for p in parts]
    return tf.strings.join(strings)


def _first_problem(checks):
    """The message of the first (ok, message) pair whose ok is False, or ""."""
    problem = tf.constant("")
    for ok, message in reversed(checks):
        problem = tf.where(ok, problem, message)
    return problem


def _size_checks(code, height, width, animated, max_pixels, limit, verb):
    kind = tf.gather(tf.constant(FORMATS), code)
    return [
        (
            height * width <= max_pixels,
            _join("a ", kind, " image of ", width, " x ", height, f" pixels, more than the {max_pixels} {limit}; ")
            + f"{verb} a smaller image",
        ),
        (
            tf.logical_not(animated),
            f"an animated WebP image, which is not read; {verb} a still image (e.g. its first frame as PNG)",
        ),
    ]


def problem(data, max_pixels=DEFAULT_MAX_PIXELS, limit="allowed (--max-pixels)", verb="use"):
    """Why an encoded image (a string scalar) is refused before decoding, as a string tensor, or ""
    when it is not: not a JPEG, PNG, GIF, BMP or WebP image (its first bytes quoted in hex: raw
    bytes are not UTF-8, which clients and JSON need), a damaged header, more than `max_pixels`
    pixels (`limit` says whose limit it is, `verb` what to do: "a PNG image of 20000 x 20000 pixels,
    more than the 40000000 allowed (--max-pixels); use a smaller image"), an animated WebP, an image
    cut short. The first that applies is given; nothing is decoded."""
    code, height, width, complete = read_header(data)
    kind = tf.gather(tf.constant(FORMATS), code)
    size = tf.strings.length(data)
    start = (" bytes, starting ", hex_prefix(data), " in hex)")
    return _first_problem(
        [
            (code != UNKNOWN, _join("not an encoded JPEG, PNG, GIF, BMP or WebP image (", size, *start)),
            (
                tf.logical_and(height > 0, width > 0),
                _join("a ", kind, " image whose header is damaged or cut short (", size, *start),
            ),
            *_size_checks(code, height, width, is_animated_webp(data), max_pixels, limit, verb),
            (complete, _join("a truncated ", kind, " image (", size, " bytes; its end is missing)")),
        ]
    )


def size_problem(data, max_pixels=DEFAULT_MAX_PIXELS, limit="the input pipelines take", verb="use"):
    """`problem`'s pixel limit and animated-WebP refusal alone, with the sizes of `read_size`: for the
    input pipelines, whose decoders fail on the other problems anyway. "" when there is none."""

    def refusal(code, height, width, animated):
        fine = tf.logical_and(height * width <= max_pixels, tf.logical_not(animated))
        checks = functools.partial(_size_checks, code, height, width, animated, max_pixels, limit, verb)
        return tf.cond(fine, lambda: tf.constant(""), lambda: _first_problem(checks()))

    def jpeg():  # the common case in a few ops (a sixth of the others' cost): libjpeg reads its size
        shape = tf.cast(tf.image.extract_jpeg_shape(data), tf.int64)
        return refusal(tf.constant(JPEG), shape[0], shape[1], tf.constant(False))

    def other():
        head, length = _head(data), tf.cast(tf.strings.length(data), tf.int64)
        code = _format(head, length)
        return refusal(code, *_size(data, head, length, code), _animated(head, code))

    return tf.cond(tf.io.is_jpeg(data), jpeg, other)
