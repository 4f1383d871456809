"""Export a .keras classifier to ONNX, OpenVINO IR or LiteRT (TFLite), and run the exported files.

    crossvit-keras export --model m.keras --format onnx --output m.onnx [--quantize int8]

Each file takes the model's own input, float32 [batch, size, size, 3] RGB normalised with the
ImageNet mean and std (crossvit_keras.data.preprocessing.eval_transform makes it from 0-255 pixels), and
returns the float32 logits [batch, classes], as model.predict does. The batch size is dynamic in
all three. Keras' model.export converts (tf2onnx for ONNX, openvino.convert_model, the TFLite
converter); this module picks the options, quantizes and writes atomically (a temporary sibling
renamed into place, so nothing half-written is left at the output path).

Quantization (--quantize): ONNX int8 is onnxruntime's dynamic quantization (int8 weights,
activations quantized at run time); OpenVINO float16 stores the weights in float16 (the CPU still
computes in float32); LiteRT float16 stores float16 weights, int8 is the converter's dynamic-range
quantization. ONNX float16 would need onnxconverter-common and OpenVINO int8 NNCF: not offered.
LiteRT uses builtin ops only (no Flex delegate): the model's GELU is keras.ops.gelu, which the
converter maps to LiteRT's builtin GELU.
"""

import importlib.util
import os
import shutil
import tempfile

import keras
import numpy as np

from crossvit_keras.atomic import atomic_path, default_mode

FORMATS = ("onnx", "openvino", "litert")
QUANTIZATIONS = ("none", "float16", "int8")
SUFFIXES = {"onnx": ".onnx", "openvino": ".xml", "litert": ".tflite"}
SUPPORTED = {"onnx": ("none", "int8"), "openvino": ("none", "float16"), "litert": ("none", "float16", "int8")}
INSTALL = "pip install -r requirements-deploy.txt"
# The packages each format needs to export and to run (LiteRT's converter is TensorFlow's).
PACKAGES = {"onnx": ("tf2onnx", "onnx", "onnxruntime"), "openvino": ("openvino",), "litert": ("ai_edge_litert",)}
PIP_NAMES = {"ai_edge_litert": "ai-edge-litert"}


def require(fmt):
    """Raises ValueError naming the install command if a package `fmt` needs is missing."""
    for package in PACKAGES[fmt]:
        if importlib.util.find_spec(package) is None:
            raise ValueError(f"the {fmt} format needs {PIP_NAMES.get(package, package)}: {INSTALL}")


def check_options(fmt, quantize, path):
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if quantize not in SUPPORTED[fmt]:
        raise ValueError(f"--quantize {quantize} is not available for {fmt}; choose one of {', '.join(SUPPORTED[fmt])}")
    if not os.fspath(path).endswith(SUFFIXES[fmt]):
        raise ValueError(f"the {fmt} output must be a {SUFFIXES[fmt]} file, got {path}")
    require(fmt)


def input_spec(model):
    """The model's input with a dynamic batch dimension."""
    shape = tuple(model.input_shape)
    if len(shape) != 4 or shape[3] != 3:
        raise ValueError(f"Expected an image classifier taking (batch, size, size, 3) images, got input shape {shape}.")
    return keras.InputSpec(shape=(None, *shape[1:]), dtype="float32")


def _litert_options(quantize):
    import tensorflow as tf

    target_spec = {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]}  # no Flex (select TF) ops
    if quantize == "none":
        return {"target_spec": target_spec}
    if quantize == "float16":
        target_spec["supported_types"] = [tf.float16]
    return {"target_spec": target_spec, "optimizations": [tf.lite.Optimize.DEFAULT]}


def _export_file(model, temporary, fmt, quantize):
    """Writes one format into `temporary` (a path with the format's suffix)."""
    spec = [input_spec(model)]
    if fmt == "litert":
        model.export(temporary, format="litert", input_signature=spec, verbose=False, **_litert_options(quantize))
    elif fmt == "onnx":
        model.export(temporary, format="onnx", input_signature=spec, verbose=False)
        if quantize == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            with atomic_path(temporary) as quantized:
                quantize_dynamic(temporary, quantized, weight_type=QuantType.QInt8)
    else:  # openvino: the .xml and its .bin weights beside it
        model.export(temporary, format="openvino", input_signature=spec, verbose=False)
        if quantize == "float16":
            import openvino as ov

            compressed = ov.Core().read_model(temporary)
            base = os.path.splitext(temporary)[0]
            os.remove(temporary)
            os.remove(base + ".bin")
            ov.save_model(compressed, temporary, compress_to_fp16=True)


def export_format(model, path, fmt, quantize="none", overwrite=False):
    """Writes `model` (a Keras image classifier) to `path` in `fmt` (onnx, openvino, litert), with
    `quantize` (none, float16, int8; see the module docstring). Returns the path."""
    path = os.path.abspath(os.fspath(path))
    check_options(fmt, quantize, path)
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; choose another output or pass --overwrite")
    parent, name = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
    try:
        _export_file(model, os.path.join(staging, name), fmt, quantize)
        files = sorted(os.listdir(staging), key=lambda f: f == name)  # the .xml (read first) moved last
        for file in files:
            os.chmod(os.path.join(staging, file), default_mode())
            os.replace(os.path.join(staging, file), os.path.join(parent, file))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def format_of(path):
    for fmt, suffix in SUFFIXES.items():
        if os.fspath(path).endswith(suffix):
            return fmt
    raise ValueError(f"{path} is not an exported model ({', '.join(SUFFIXES.values())})")


def load_runtime(path, threads=None):
    """A function images -> logits (numpy float32) running the exported file at `path` in its
    runtime (ONNX Runtime, OpenVINO on CPU in float32, the LiteRT interpreter with XNNPACK); any batch size.
    threads: intra-op threads (None: the runtime's default)."""
    fmt = format_of(path)
    require(fmt)
    path = os.fspath(path)
    if fmt == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda images: session.run(None, {name: np.asarray(images, np.float32)})[0]
    if fmt == "openvino":
        import openvino as ov

        # float32: on a CPU with bfloat16 (AVX512_BF16, AMX) OpenVINO would compute in bfloat16
        config = {"INFERENCE_PRECISION_HINT": "f32", **({"INFERENCE_NUM_THREADS": threads} if threads else {})}
        compiled = ov.Core().compile_model(path, "CPU", config)
        request = compiled.create_infer_request()
        return lambda images: request.infer([np.asarray(images, np.float32)])[compiled.output(0)].copy()
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path, num_threads=threads)
    runner = interpreter.get_signature_runner()
    (input_name,) = runner.get_input_details()
    (output_name,) = runner.get_output_details()
    return lambda images: runner(**{input_name: np.asarray(images, np.float32)})[output_name]


def litert_op_names(path):
    """The set of operator names in a .tflite file (a Flex op's name starts with 'Flex')."""
    from ai_edge_litert.interpreter import Interpreter

    return {op["op_name"] for op in Interpreter(model_path=os.fspath(path))._get_ops_details()}
