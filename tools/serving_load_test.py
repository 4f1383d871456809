"""A load test of an exported SavedModel, in-process: many concurrent requests from several threads,
mixing good images with bad input (a decompression bomb, random bytes, truncated and empty files,
NaN pixels, wrong shapes), bounded in count and time.

    python tools/serving_load_test.py --saved-model models/crossvit_15/1 --threads 8 --requests 2000
    python tools/serving_load_test.py            # a tiny CrossViT exported to a temporary directory

Every good request must get the answer the same input gets alone (probabilities within 1e-5), every
bad one an InvalidArgumentError with its message (in UTF-8, naming the bad element); the process's
resident memory is sampled throughout. Prints requests/s, latency percentiles, peak and final
resident memory and the growth between the first and the second half of the run, and exits 1 if
any answer was wrong. A script, not a test (tests/test_export.py runs a small bounded one).
"""

import argparse
import io
import json
import os
import resource
import struct
import sys
import tempfile
import threading
import time
import zlib

import numpy as np


def png_bomb(width=20000, height=20000):
    """A valid 1-bit grayscale PNG of width x height black pixels, written directly (about 50 kB for
    20000 x 20000; decoded as RGB it would take width * height * 3 bytes, 1.2 GB)."""

    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    compressor = zlib.compressobj(9)
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte 0, then the packed bits of one row
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def encode(image, fmt, **options):
    """An RGB uint8 image encoded by PIL (JPEG, PNG, GIF, BMP, WEBP)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, fmt, **options)
    return buffer.getvalue()


def cases(seed=0):
    """(name, signature, input, expected message or None) for every kind of request."""
    from skimage import data

    rng = np.random.default_rng(seed)
    photos = [data.chelsea(), data.coffee(), data.astronaut()[::2, ::2]]
    good_bytes = [encode(photo, fmt) for photo in photos for fmt in ("JPEG", "PNG", "WEBP", "BMP", "GIF")]
    jpeg = encode(photos[0], "JPEG")
    good = [("bytes", "serving_bytes", [b], None) for b in good_bytes]
    good += [("pixels", "serving_default", photo[None].astype("float32"), None) for photo in photos]
    good.append(("bytes batch of 3", "serving_bytes", good_bytes[:3], None))
    nan = photos[1][None].astype("float32")
    nan[0, 5, 5, 1] = np.nan
    bad = [
        ("png bomb 20000 x 20000", "serving_bytes", [good_bytes[1], png_bomb()], "image_bytes[1] is a PNG image of"),
        ("random bytes", "serving_bytes", [rng.bytes(300)], "image_bytes[0] is not an encoded"),
        ("truncated jpeg", "serving_bytes", [good_bytes[0], jpeg[: len(jpeg) // 2]], "image_bytes[1] is a truncated"),
        ("empty", "serving_bytes", [b""], "image_bytes[0] is not an encoded"),
        ("nan pixels", "serving_default", nan, "NaN or infinite"),
        ("inf pixels", "serving_default", np.full((1, 16, 16, 3), np.inf, "float32"), "NaN or infinite"),
        ("rank 3", "serving_default", np.zeros((16, 16, 3), "float32"), "rank 4"),
    ]
    return good + bad


def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run(saved_model, threads=4, requests=100, seconds=60.0, seed=0, log=print):
    """Runs the load test on a SavedModel directory; returns its statistics (a dict)."""
    import tensorflow as tf

    model = tf.saved_model.load(saved_model)
    signatures = {name: model.signatures[name] for name in ("serving_default", "serving_bytes")}

    def call(signature, value):
        if signature == "serving_bytes":
            return signatures[signature](image_bytes=tf.constant(value))
        return signatures[signature](images=tf.constant(value))

    todo = cases(seed)
    expected = {}
    for case, (_, signature, value, message) in enumerate(todo):  # each answer alone (and the warm-up)
        if message is None:
            expected[case] = call(signature, value)["probabilities"].numpy()
    baseline = rss_mib()
    order = np.random.default_rng(seed).integers(0, len(todo), size=requests)
    lock = threading.Lock()
    state = {"next": 0, "wrong": [], "latencies": [], "good": 0, "bad": 0}
    samples = []
    stop = time.perf_counter() + seconds

    def worker():
        while time.perf_counter() < stop:
            with lock:
                if state["next"] >= requests:
                    return
                case = order[state["next"]]
                state["next"] += 1
            name, signature, value, message = todo[case]
            start = time.perf_counter()
            try:
                probabilities = call(signature, value)["probabilities"].numpy()
                if message:
                    problem = f"accepted, expected an error with {message!r}"
                elif not np.allclose(probabilities, expected[case], atol=1e-5):
                    problem = "a different answer than alone"
                else:
                    problem = None
            except tf.errors.InvalidArgumentError as error:
                problem = None if message and message in error.message else f"error {error.message[:300]!r}"
            with lock:
                state["latencies"].append(time.perf_counter() - start)
                state["good" if message is None else "bad"] += 1
                if problem:
                    state["wrong"].append(f"{name}: {problem}")

    def sampler():
        while any(t.is_alive() for t in pool):
            samples.append((time.perf_counter(), rss_mib()))
            time.sleep(0.2)

    began = time.perf_counter()
    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    watcher = threading.Thread(target=sampler)
    watcher.start()
    for thread in pool:
        thread.join()
    watcher.join()
    elapsed = time.perf_counter() - began
    done = len(state["latencies"])
    half = len(samples) // 2
    first, second = [m for _, m in samples[:half]] or [baseline], [m for _, m in samples[half:]] or [baseline]
    latencies = np.sort(state["latencies"]) if done else np.zeros(1)
    stats = {
        "requests": done,
        "good": state["good"],
        "bad": state["bad"],
        "wrong": state["wrong"],
        "threads": threads,
        "seconds": round(elapsed, 2),
        "requests_per_second": round(done / elapsed, 2),
        "latency_p50_ms": round(1000 * float(np.percentile(latencies, 50)), 1),
        "latency_p99_ms": round(1000 * float(np.percentile(latencies, 99)), 1),
        "rss_before_mib": round(baseline),
        "rss_peak_mib": round(max([baseline, *second, *first])),
        "rss_end_mib": round(rss_mib()),
        "rss_growth_second_half_mib": round(max(second) - max(first)),
        "peak_rss_process_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    log(json.dumps(stats))
    return stats


def tiny_saved_model(directory):
    """A small CrossViT (random weights) exported to DIRECTORY/1."""
    import crossvit_keras
    from crossvit_keras.export.saved_model import export_saved_model

    model = crossvit_keras.create_model("crossvit_tiny_240", num_classes=10, **crossvit_keras.configs.TEST_OVERRIDES)
    return export_saved_model(model, os.path.join(directory, "1"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--saved-model", help="SavedModel directory (default: a tiny CrossViT, exported here)")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--requests", type=int, default=1000, help="at most this many requests")
    parser.add_argument("--seconds", type=float, default=300, help="and for at most this long")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        path = args.saved_model or tiny_saved_model(scratch)
        if not os.path.isdir(path):
            parser.exit(2, f"error: no SavedModel directory at {path}\n")
        stats = run(path, args.threads, args.requests, args.seconds, args.seed)
    for problem in stats["wrong"]:
        print(f"wrong: {problem}", file=sys.stderr)
    return 1 if stats["wrong"] else 0


if __name__ == "__main__":
    sys.exit(main())
