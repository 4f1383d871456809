"""Export a classifier to a TensorFlow SavedModel for TF Serving.

    crossvit-keras export --model crossvit_15.keras --output models/crossvit_15/1

The SavedModel needs TensorFlow only (no Keras, no crossvit_keras) and has two signatures, both
running the evaluation transform (crossvit_keras.data.preprocessing.eval_transform) and the model in
the graph:

- `serving_default`: input `images`, float32 [batch, height, width, 3], RGB in [0, 255], any size;
- `serving_bytes`: input `image_bytes`, string [batch], encoded JPEG/PNG/GIF/BMP/WebP images
  (the `_bytes` suffix makes TF Serving's REST API take `{"b64": ...}`).

Outputs: `probabilities` [batch, classes] (softmax of the float32 logits), `top_k_indices` and
`top_k_probabilities` [batch, k], and `top_k_names` [batch, k] when the class names are known.
Bad input fails in the graph with an InvalidArgument error that says what is wrong and, for
`image_bytes`, which element: wrong rank or channel count, NaN or infinite pixels, bytes that are
not an image (quoted in hex), a damaged header, an image cut short, an animated WebP, or one of
more than `max_pixels` pixels (read from its header, so that a decompression bomb is never decoded;
for `images`, from the shape). The memory per image is bounded for any shape within that limit
(see crossvit_keras.transforms.middle); an empty batch gives empty outputs.
"""

import ast
import importlib.util
import os
import shutil
import tempfile

import keras
import tensorflow as tf

from crossvit_keras import configs
from crossvit_keras.atomic import default_mode
from crossvit_keras.data import image_header
from crossvit_keras.data.preprocessing import eval_transform

IMAGES_SIGNATURE = "serving_default"
BYTES_SIGNATURE = "serving_bytes"
TOP_K = 5

# The largest image either signature takes, in pixels (width x height, from the header or the
# shape); --max-pixels at export changes it.
DEFAULT_MAX_PIXELS = image_header.DEFAULT_MAX_PIXELS
# What the messages say about the limit and what to do.
_LIMIT = "this model takes (--max-pixels at export)"


def read_class_names(path):
    """Class names from a text file, one per line in class-index order (blank lines skipped)."""
    try:
        with open(path, encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip()]
    except OSError as error:
        raise ValueError(f"Cannot read the class names file {path}: {error.strerror}.") from None
    if not names:
        raise ValueError(f"The class names file {path} is empty; it needs one name per line.")
    return names


def imagenet_class_names():
    """The 1000 ImageNet-1k class names in the standard (timm / torchvision) class order, read
    offline from the list tensorflow-datasets ships; None if tensorflow-datasets is not installed."""
    spec = importlib.util.find_spec("tensorflow_datasets")  # finds it without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(spec.submodule_search_locations[0], "datasets", "siscore", "labels.py")
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError):
        return None
    for node in tree.body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["IMAGENET_LABELS_LIST"]:
            names = ast.literal_eval(node.value)
            if len(names) == 1000 and names[0].startswith("tench"):
                return names
    return None


def default_class_names(num_classes):
    """ImageNet names for a 1000-class model (if available offline), otherwise None."""
    return imagenet_class_names() if num_classes == 1000 else None


def model_image_size(model):
    """The square input size of an image classifier (CrossViT's `image_size`, else its input shape)."""
    shape = tuple(model.input_shape)
    size = getattr(model, "image_size", None) or shape[1]
    if len(shape) != 4 or shape[1:] != (size, size, 3):
        raise ValueError(f"Expected an image classifier taking (batch, size, size, 3) images, got input shape {shape}.")
    return size


def model_crop_pct(model):
    """The evaluation crop for `model`: its preprocessor's (a CrossViTImageClassifier), else that of
    the variant's released weights when the model is named after one (1.0 for the 408 models), else
    0.875."""
    converter = getattr(getattr(model, "preprocessor", None), "image_converter", None)
    if getattr(converter, "crop_pct", None) is not None:
        return converter.crop_pct
    return configs.default_crop_pct(model.name)


def model_num_classes(model):
    shape = tuple(model.output_shape)
    if len(shape) != 2 or not shape[1]:
        raise ValueError(f"Expected a classifier returning (batch, classes) logits, got output shape {shape}.")
    if getattr(model, "num_classes", None) == 0:
        raise ValueError("The model has no classification head (num_classes=0); export a classifier.")
    return shape[1]


def _assert(condition, template, *tensors):
    """tf.debugging.Assert (an InvalidArgument error) with a message; `{}` in it shows the tensors."""
    return tf.debugging.Assert(condition, [tf.strings.format(template, tensors, summarize=8)])


def _message(*parts):
    """One string tensor from Python strings and scalar tensors (numbers written out, strings as
    they are: tf.strings.format would quote them)."""
    strings = [p if isinstance(p, str) or p.dtype == tf.string else tf.strings.as_string(p) for p in parts]
    return tf.strings.join(strings)


def _checked_images(images, max_pixels=DEFAULT_MAX_PIXELS):
    """`images` of any rank -> [batch, height, width, 3], after asserting it is one, of finite values
    and of at most `max_pixels` pixels per image.

    The rank-4 static shape comes from a reshape, not set_shape or ensure_shape: those would let
    Grappler infer the input's rank, fold the checks away and fail later with an obscure error."""
    shape = tf.shape(images)
    rank_ok = _assert(
        tf.equal(tf.size(shape), 4),
        "`images` must be a batch of RGB images, rank 4 [batch, height, width, 3]; got shape {}",
        shape,
    )
    with tf.control_dependencies([rank_ok]):
        shape = tf.identity(shape)
    checks = [
        _assert(tf.equal(shape[3], 3), "`images` must have 3 channels (RGB) in the last axis; got shape {}", shape),
        _assert(tf.reduce_all(shape[1:3] > 0), "`images` must be at least 1 x 1 pixels; got shape {}", shape),
        _assert(
            tf.cast(shape[1], tf.int64) * tf.cast(shape[2], tf.int64) <= max_pixels,
            f"`images` are {{}} x {{}} pixels, more than the {max_pixels} {_LIMIT}; send smaller images",
            shape[2],
            shape[1],
        ),
    ]
    with tf.control_dependencies(checks):
        images = tf.reshape(images, tf.stack([shape[0], shape[1], shape[2], 3]))
    bad = tf.reduce_any(tf.reshape(tf.logical_not(tf.math.is_finite(images)), [shape[0], -1]), axis=1)
    finite = _assert(
        tf.logical_not(tf.reduce_any(bad)),
        "`images` must be RGB values in [0, 255]; images[{}] has NaN or infinite values ({} image(s) of the batch do)",
        tf.argmax(tf.concat([bad, [True]], axis=0)),  # the first bad image (an empty batch has none)
        tf.reduce_sum(tf.cast(bad, tf.int32)),
    )
    with tf.control_dependencies([finite]):
        return tf.identity(images)


def _checked_image_bytes(data, index, max_pixels):
    """An encoded image's bytes, after asserting from its header that nothing refuses it
    (crossvit_keras.data.image_header.problem: not an image, a damaged header, more than `max_pixels`
    pixels, an animated WebP, cut short): the error names the batch index and quotes bytes in hex,
    and a bomb is refused before decoding."""
    problem = image_header.problem(data, max_pixels, limit=_LIMIT, verb="send")
    refused = tf.debugging.Assert(tf.equal(problem, ""), [_message("image_bytes[", index, "] is ", problem)])
    with tf.control_dependencies([refused]):
        return tf.identity(data)


def _serving_functions(model, image_size, class_names, top_k, crop_pct, max_pixels=DEFAULT_MAX_PIXELS):
    """The two signature functions: raw pixels and encoded images."""
    names = None if class_names is None else tf.constant(list(class_names))

    # The model traced once, as one concrete function both signatures call (Keras and the SavedModel
    # writer trace each endpoint several times; retracing the model each time is slow).
    @tf.function(input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32)])
    def logits_fn(images):
        return tf.cast(model(images, training=False), tf.float32)  # float32 under mixed precision too

    logits_fn = logits_fn.get_concrete_function()

    def classify(images):
        probabilities = tf.nn.softmax(logits_fn(images), axis=-1)
        top_probabilities, top_indices = tf.math.top_k(probabilities, k=top_k)
        outputs = {
            "probabilities": probabilities,
            "top_k_indices": top_indices,
            "top_k_probabilities": top_probabilities,
        }
        if names is not None:
            outputs["top_k_names"] = tf.gather(names, top_indices)
        return outputs

    def serve_images(images):
        images = eval_transform(_checked_images(images, max_pixels), image_size, crop_pct)
        return classify(tf.ensure_shape(images, [None, image_size, image_size, 3]))

    def serve_bytes(image_bytes):
        def decode(element):
            data, index = element
            data = _checked_image_bytes(data, index, max_pixels)
            image = tf.io.decode_image(data, channels=3, expand_animations=False)
            return eval_transform(image, image_size, crop_pct)

        indices = tf.range(tf.shape(image_bytes)[0])
        images = tf.map_fn(
            decode,
            (image_bytes, indices),
            fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32),
        )
        return classify(images)

    return serve_images, serve_bytes


def export_saved_model(
    model,
    path,
    class_names=None,
    *,
    top_k=TOP_K,
    crop_pct=None,
    overwrite=False,
    max_pixels=DEFAULT_MAX_PIXELS,
):
    """Write `model` (a Keras image classifier, e.g. a CrossViT) as a SavedModel for TF Serving.

    path: the SavedModel directory; for TF Serving a numbered version, e.g. models/crossvit_15/1.
    class_names: one name per class (adds the `top_k_names` output), or None.
    crop_pct: the evaluation crop; None takes the model's (model_crop_pct: 1.0 for the 408 variants).
    max_pixels: both signatures refuse larger images (width x height, from the header undecoded).
    The SavedModel is written to a hidden temporary directory beside `path` and renamed into place,
    so neither a reader nor TF Serving (which ignores non-numeric names) sees it half-written.
    Returns the path."""
    image_size = model_image_size(model)
    num_classes = model_num_classes(model)
    crop_pct = model_crop_pct(model) if crop_pct is None else crop_pct
    if class_names is not None:
        class_names = [str(name) for name in class_names]
        if len(class_names) != num_classes:
            raise ValueError(
                f"{len(class_names)} class names given for a model with {num_classes} classes; "
                "give one name per class, in class-index order."
            )
    top_k = min(int(top_k), num_classes)
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}.")
    if int(max_pixels) < 1:
        raise ValueError(f"max_pixels must be >= 1, got {max_pixels}.")
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(
            f"{path} exists; export to a new version directory (TF Serving serves the highest number) "
            "or pass overwrite=True (--overwrite)."
        )

    serve_images, serve_bytes = _serving_functions(model, image_size, class_names, top_k, crop_pct, int(max_pixels))
    archive = keras.export.ExportArchive()  # tracks the variables the endpoints use
    # Unknown rank, so that a wrong rank reaches the graph's check instead of failing signature matching.
    archive.add_endpoint(
        IMAGES_SIGNATURE, serve_images, input_signature=[tf.TensorSpec(None, tf.float32, name="images")]
    )
    archive.add_endpoint(
        BYTES_SIGNATURE, serve_bytes, input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")]
    )

    parent, base = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{base}.tmp-", dir=parent)
    try:
        archive.write_out(staging, verbose=False)
        os.chmod(staging, default_mode(directory=True))  # mkdtemp's is private; the server may be another user
        if os.path.exists(path):
            old = tempfile.mkdtemp(prefix=f".{base}.old-", dir=parent)
            os.replace(path, os.path.join(old, base))
            os.replace(staging, path)
            shutil.rmtree(old)
        else:
            os.replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def resolve_class_names(class_names_file, num_classes):
    """(names or None, a note saying where they come from) for the command-line tools."""
    if class_names_file:
        names = read_class_names(class_names_file)
        if len(names) != num_classes:
            raise ValueError(f"{class_names_file} has {len(names)} names but the model has {num_classes} classes.")
        return names, f"class names from {class_names_file}"
    names = default_class_names(num_classes)
    if names is not None:
        return names, "ImageNet-1k class names (from tensorflow-datasets)"
    if num_classes == 1000:
        return None, "no class names: ImageNet names are not available offline (install tensorflow-datasets)"
    return None, f"no class names for {num_classes} classes (pass --class-names FILE)"
