"""Small image folders of real photographs, for trying the pipeline, training and benchmarking
without a download."""

import math
import os


def _photographs():
    """scikit-image's and scikit-learn's sample photographs, as RGB uint8 arrays."""
    import numpy as np
    from skimage import data as samples

    names = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")
    photos = [getattr(samples, name)() for name in names]
    try:
        from sklearn.datasets import load_sample_images

        photos += list(load_sample_images().images)
    except ImportError:
        pass
    return [np.stack([p] * 3, -1) if p.ndim == 2 else p[..., :3] for p in photos]


def _cut(photo, width, height, rng):
    """A random width x height window of `photo`, scaled up (bicubic) first if needed, by 1.0-1.3x."""
    from PIL import Image

    photo = Image.fromarray(photo)
    scale = max(width / photo.width, height / photo.height) * rng.uniform(1.0, 1.3)
    photo = photo.resize((math.ceil(photo.width * scale), math.ceil(photo.height * scale)), Image.BICUBIC)
    left = rng.integers(0, photo.width - width + 1)
    top = rng.integers(0, photo.height - height + 1)
    return photo.crop((left, top, left + width, top + height))


def make_sample_folder(root, num_images=64, size=(500, 375), classes=4, quality=90):
    """A DeiT-layout folder of JPEGs of about ImageNet's typical size (500 x 375), cut from
    scikit-image's sample photographs. Returns root."""
    import numpy as np

    photos = _photographs()[:5]
    rng = np.random.default_rng(0)
    width, height = size
    for split in ("train", "val"):
        for i in range(num_images):
            directory = os.path.join(root, split, f"class_{i % classes}")
            os.makedirs(directory, exist_ok=True)
            _cut(photos[i % len(photos)], width, height, rng).save(
                os.path.join(directory, f"{i:05d}.jpg"), quality=quality
            )
    return root


def make_photo_folder(root, num_images=256, classes=8, sides=(300, 900), quality=(75, 95), seed=0):
    """A DeiT-layout folder (train/ and val/) of JPEGs with ImageNet's spread of sizes and
    compression: the shorter side uniform in [sides[0], 2 * sides[0]], the aspect ratio 1, 4:3 or
    3:2 (either orientation, the longer side at most sides[1]), JPEG quality uniform in `quality`;
    random windows of scikit-image's and scikit-learn's sample photographs. Returns root."""
    import numpy as np

    photos = _photographs()
    rng = np.random.default_rng(seed)
    low, high = sides
    for split in ("train", "val"):
        for i in range(num_images):
            short = int(rng.integers(low, 2 * low + 1))
            long = min(high, round(short * rng.choice([1.0, 4 / 3, 3 / 2])))
            width, height = (long, short) if rng.random() < 0.5 else (short, long)
            directory = os.path.join(root, split, f"class_{i % classes}")
            os.makedirs(directory, exist_ok=True)
            _cut(photos[int(rng.integers(len(photos)))], width, height, rng).save(
                os.path.join(directory, f"{i:05d}.jpg"), quality=int(rng.integers(quality[0], quality[1] + 1))
            )
    return root
