"""A small image folder of real photographs, for trying the pipeline and training without a download."""

import math
import os


def make_sample_folder(root, num_images=64, size=(500, 375), classes=4, quality=90):
    """A DeiT-layout folder of JPEGs of about ImageNet's typical size (500 x 375), cut from
    scikit-image's sample photographs. Returns root."""
    import numpy as np
    from PIL import Image
    from skimage import data as samples

    photos = [getattr(samples, name)() for name in ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field")]
    photos = [np.stack([p] * 3, -1) if p.ndim == 2 else p[..., :3] for p in photos]
    rng = np.random.default_rng(0)
    width, height = size
    for split in ("train", "val"):
        for i in range(num_images):
            photo = Image.fromarray(photos[i % len(photos)])
            scale = max(width / photo.width, height / photo.height) * rng.uniform(1.0, 1.3)
            photo = photo.resize((math.ceil(photo.width * scale), math.ceil(photo.height * scale)), Image.BICUBIC)
            left = rng.integers(0, photo.width - width + 1)
            top = rng.integers(0, photo.height - height + 1)
            directory = os.path.join(root, split, f"class_{i % classes}")
            os.makedirs(directory, exist_ok=True)
            photo.crop((left, top, left + width, top + height)).save(
                os.path.join(directory, f"{i:05d}.jpg"), quality=quality
            )
    return root
