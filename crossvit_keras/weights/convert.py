"""Load the released CrossViT weights (timm's .safetensors, timm's or the official IBM/CrossViT
.pth files) into the Keras model, strictly, and write a `.keras` file.

    crossvit-keras convert --model crossvit_15_240 --output crossvit_15.keras  # timm's hub weights
    crossvit-keras convert --model crossvit_15_240 --checkpoint model.safetensors \\
        --output crossvit_15.keras

The mapping is plain: a timm key names a Keras weight path, e.g.

    blocks.1.blocks.0.0.attn.qkv.weight  ->  stage_1/blocks_0_0/attn/qkv/kernel   (transposed)
    blocks.1.fusion.0.attn.wq.weight     ->  stage_1/fusion/cross_attn_0_0/attn/wq/kernel
    blocks.1.projs.0.0.weight            ->  stage_1/fusion/projs_0/norm/gamma   (f, its LayerNorm)
    norm.0.weight / head.0.weight        ->  head/norm_0/gamma / head/head_0/kernel

Loading is strict: every checkpoint tensor is used and every model weight is set. Two changes are
allowed, and logged: another input size (position embeddings are resized bicubically over the
patch grid, the CLS position kept) and another number of classes (both heads stay freshly
initialised, for fine-tuning).
"""

import io
import logging
import os
import pickletools
import re
import zipfile

import numpy as np

from crossvit_keras import configs
from crossvit_keras.atomic import save_model
from crossvit_keras.layers.resize import bicubic_matrix
from crossvit_keras.logs import first_line

logger = logging.getLogger(__name__)

TORCH_INSTALL = "pip install torch --index-url https://download.pytorch.org/whl/cpu"

# timm key prefix -> Keras layer path (applied in order, first match wins).
_PREFIX_RULES = [
    (r"^pos_embed_(\d)$", r"embed_\1/pos_embed"),
    (r"^cls_token_(\d)$", r"embed_\1/cls_token"),
    (r"^patch_embed\.(\d)\.proj\.(weight|bias)$", r"patch_embed_\1/conv_0.\2"),
    (r"^patch_embed\.(\d)\.proj\.([024])\.", lambda m: f"patch_embed_{m[1]}/conv_{int(m[2]) // 2}."),
    (r"^blocks\.(\d+)\.blocks\.(\d)\.(\d+)\.", r"stage_\1/blocks_\2_\3."),
    (r"^blocks\.(\d+)\.projs\.(\d)\.0\.", r"stage_\1/fusion/projs_\2/norm."),
    (r"^blocks\.(\d+)\.projs\.(\d)\.2\.", r"stage_\1/fusion/projs_\2/fc."),
    (r"^blocks\.(\d+)\.revert_projs\.(\d)\.0\.", r"stage_\1/fusion/revert_projs_\2/norm."),
    (r"^blocks\.(\d+)\.revert_projs\.(\d)\.2\.", r"stage_\1/fusion/revert_projs_\2/fc."),
    # timm encodes one cross-attention layer without an index (fusion.0.norm1), several with one.
    (r"^blocks\.(\d+)\.fusion\.(\d)\.(\d+)\.", r"stage_\1/fusion/cross_attn_\2_\3."),
    (r"^blocks\.(\d+)\.fusion\.(\d)\.", r"stage_\1/fusion/cross_attn_\2_0."),
    (r"^norm\.(\d)\.", r"head/norm_\1."),
    (r"^head\.(\d)\.", r"head/head_\1."),
]
# Keras leaf names for a PyTorch parameter, by the kind of layer it belongs to.
_LEAVES = {"weight": ("kernel", "gamma"), "bias": ("bias", "beta")}


class CheckpointError(ValueError):
    """The checkpoint cannot be loaded into the model; the message lists every problem."""


# ----------------------------------------------------------------------------- reading files


def load_checkpoint(path):
    """The state dict of a .safetensors, .pth, .pt or .bin file as {timm key: float32 ndarray}.

    Accepts the official key names (pos_embed.0, cls_token.0), DDP's `module.` prefix and state
    dicts wrapped in {"model": ...} or {"state_dict": ...}."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a directory, not a checkpoint file (.safetensors, .pth, .pt or .bin).")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No checkpoint file at {path}.")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): download it again.")
    if path.endswith(".safetensors"):
        state_dict = _read_safetensors(path)
    elif path.endswith((".pth", ".pt", ".bin", ".pth.tar")):
        state_dict = _read_torch(path)
    else:
        raise CheckpointError(f"{path}: unknown checkpoint format; expected .safetensors, .pth, .pt or .bin.")
    return normalize_keys(state_dict)


def _read_safetensors(path):
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(
            f"{path} is not a readable .safetensors checkpoint (truncated?): {first_line(error)}"
        ) from None


# The globals a pickled state dict of tensors refers to (torch.load(weights_only=True) allows these
# and a few more); anything else (os.system, builtins.eval, ...) would run code when unpickled.
_SAFE_GLOBALS = {
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch._tensor", "_rebuild_from_type_v2"),
    ("torch.serialization", "_get_layout"),
    ("torch", "Size"),
    ("torch", "device"),
}
_TORCH_DTYPES = {"float16", "bfloat16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool"}
_MEMO_PUTS = {"MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"}
_STRINGS = {"UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "STRING", "SHORT_BINSTRING", "BINSTRING"}


def _pickle_globals(stream):
    """The (module, name) of every global one pickle in `stream` refers to, read with pickletools:
    nothing is executed. A STACK_GLOBAL whose two operands are not the strings pushed just before it
    (as pickle writes them) is (None, None). Raises ValueError if the bytes are no pickle."""
    found, memo, pushed = [], {}, []  # pushed: what each op left on top of the stack, None if unknown
    for opcode, arg, _ in pickletools.genops(stream):
        name = opcode.name
        if name in _MEMO_PUTS:
            memo[len(memo) if name == "MEMOIZE" else arg] = pushed[-1] if pushed else None
            continue
        if name in ("PROTO", "FRAME"):
            continue
        elif name in ("GLOBAL", "INST"):
            found.append(tuple(arg.split(" ", 1)))
        elif name == "STACK_GLOBAL":
            operands = pushed[-2:]
            known = len(operands) == 2 and all(isinstance(x, str) for x in operands)
            found.append(tuple(operands) if known else (None, None))
        elif name in ("EXT1", "EXT2", "EXT4"):
            found.append((None, None))
        pushed.append(arg if name in _STRINGS else memo.get(arg) if name.endswith("GET") else None)
    return found


def check_pickle(path):
    """Refuses (CheckpointError) a .pth that is not a pickle of tensors, before anything unpickles
    it: torch's zip archive (its data.pkl) or the legacy format (five pickles, then the storages)."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = [name for name in archive.namelist() if name.endswith("data.pkl")]
                if not names:
                    raise ValueError("a zip archive without a data.pkl")
                found = [g for name in names for g in _pickle_globals(io.BytesIO(archive.read(name)))]
        else:
            found = []
            with open(path, "rb") as f:
                for _ in range(5):  # magic number, protocol, system info, the state dict, storage keys
                    found += _pickle_globals(f)
                    if not f.peek(1):
                        break
    except (ValueError, EOFError, zipfile.BadZipFile) as error:
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint, or is truncated ({first_line(error)}): download it again."
        ) from None
    for module, name in found:
        torch_type = module == "torch" and (name.endswith("Storage") or name in _TORCH_DTYPES)
        if (module, name) not in _SAFE_GLOBALS and not torch_type:
            what = f"{module}.{name}" if module else "an object it hides"
            raise CheckpointError(
                f"{path} refused: its pickle calls {what}, which a state dict of tensors never does "
                "(unpickling it could run code); use the model hub's .safetensors file instead."
            )


def _read_torch(path):
    check_pickle(path)
    try:
        import torch
    except ImportError as error:
        raise ImportError(
            f"Reading the PyTorch file {path} needs torch, which crossvit_keras does not require. "
            f"Install it with `{TORCH_INSTALL}`, or convert the .safetensors file from the model hub instead."
        ) from error
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a bad file
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint (truncated?): {first_line(error)}"
        ) from None
    for wrapper in ("model", "state_dict", "model_state"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(wrapper), dict):
            checkpoint = checkpoint[wrapper]
            break
    if not isinstance(checkpoint, dict) or not all(hasattr(v, "numpy") for v in checkpoint.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors.")
    return {key: value.detach().float().cpu().numpy() for key, value in checkpoint.items()}


def normalize_keys(state_dict):
    """Official / DDP key names -> timm's: `module.` dropped, `pos_embed.0` -> `pos_embed_0`."""
    for wrapper in ("model", "state_dict"):
        if isinstance(state_dict.get(wrapper), dict):
            state_dict = state_dict[wrapper]
    result = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        key = re.sub(r"^(pos_embed|cls_token)\.(\d)$", r"\1_\2", key)
        result[key] = np.asarray(value, dtype=np.float32)
    return result


# ----------------------------------------------------------------------------- mapping


def keras_path(key):
    """The Keras layer path and PyTorch leaf of a timm key: ("stage_0/blocks_0_0/attn/qkv", "weight")."""
    for pattern, replacement in _PREFIX_RULES:
        new, count = re.subn(pattern, replacement, key)
        if count:
            if "." not in new:  # the CLS token and position embedding map to a full path
                return new, None
            prefix, leaf = new.rsplit(".", 1)
            return prefix.replace(".", "/"), leaf
    return None, None


def to_keras_layout(value):
    """PyTorch layout -> Keras layout: Linear (out, in) -> (in, out); Conv OIHW -> HWIO."""
    if value.ndim == 2:
        return value.T
    if value.ndim == 4:
        return value.transpose(2, 3, 1, 0)
    return value


def resize_pos_embed(pos_embed, num_patches):
    """(1, 1 + n*n, D) -> (1, 1 + m*m, D): the CLS position kept, the n x n grid resized with
    PyTorch's bicubic (as the paper's 384 fine-tuning does)."""
    old = int(round((pos_embed.shape[1] - 1) ** 0.5))
    new = int(round(num_patches**0.5))
    if old * old != pos_embed.shape[1] - 1 or new * new != num_patches:
        raise CheckpointError(f"cannot resize a non-square position embedding {pos_embed.shape} to {num_patches}")
    matrix = bicubic_matrix(old, new)
    grid = pos_embed[0, 1:].reshape(old, old, -1).astype(np.float64)
    grid = np.einsum("ih,hwc,jw->ijc", matrix, grid, matrix)
    return np.concatenate([pos_embed[:, :1], grid.reshape(1, new * new, -1).astype(np.float32)], axis=1)


def load_weights(model, checkpoint, log=None):
    """Loads a timm / official state dict (or a checkpoint path) into a CrossViT, strictly.

    Raises CheckpointError listing every unexpected, missing or mis-shaped tensor. Another input
    size resizes the position embeddings; another number of classes keeps the heads freshly
    initialised. Both are logged. Returns the list of those log messages."""
    state_dict = load_checkpoint(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
    state_dict = normalize_keys(state_dict)
    paths = {w.path for w in model.weights}
    values, names, unexpected = {}, {}, []
    for key, value in state_dict.items():
        prefix, leaf = keras_path(key)
        if prefix is None:
            unexpected.append(key)
            continue
        candidates = [prefix] if leaf is None else [f"{prefix}/{name}" for name in _LEAVES.get(leaf, ())]
        path = next((c for c in candidates if c in paths), candidates[0] if candidates else key)
        values[path], names[path] = to_keras_layout(value), key
    return assign_weights(
        model, values, log=log, names=names, unexpected=unexpected, hint=lambda: _variant_hint(model, state_dict)
    )


def assign_weights(model, values, log=None, names=None, unexpected=(), hint=None):
    """Sets every weight of a CrossViT from {Keras weight path: array in Keras layout}, strictly.

    The one place the allowed changes live: a position embedding of another length is resized
    (bicubic over the patch grid, CLS position kept), heads of another class count keep their fresh
    initialisation; both are logged. Anything else that does not fit raises CheckpointError listing
    every problem, and then no weight has been changed. Returns the log messages."""
    log = log or logger.info
    names = names or {}
    weights = {w.path: w for w in model.weights}
    unexpected, mismatched, skipped_heads, messages, ready = list(unexpected), [], [], [], {}
    for path, value in values.items():
        name = names.get(path, path)
        is_head = re.match(r"^head/head_\d/", path) is not None
        if path not in weights:
            if is_head and model.num_classes == 0:
                skipped_heads.append(value)  # a features-only model has no heads
            else:
                unexpected.append(name)
            continue
        target = tuple(weights[path].shape)
        if value.shape != target:
            if path.endswith("/pos_embed") and value.shape[2] == target[2]:
                messages.append(f"{name}: position embedding resized {tuple(value.shape)} -> {target} (bicubic)")
                value = resize_pos_embed(value, target[1] - 1)
            elif is_head and value.shape[-1] != target[-1]:
                skipped_heads.append(value)
                ready[path] = None  # deliberately left at its fresh initialisation
                continue
            else:
                mismatched.append(f"{name} {tuple(value.shape)} -> {path} {target}")
                continue
        ready[path] = value
    missing = [path for path in weights if path not in ready]
    if unexpected or missing or mismatched:
        raise CheckpointError(_mismatch_report(model, hint() if hint else None, unexpected, missing, mismatched))
    for path, value in ready.items():
        if value is not None:
            weights[path].assign(value)
    if skipped_heads:
        messages.append(
            f"heads not loaded: the checkpoint has {skipped_heads[0].shape[-1]} classes, the model "
            f"{model.num_classes}; both heads keep their fresh initialisation (fine-tuning)"
        )
    for message in messages:
        log(message)
    return messages


def _variant_hint(model, state_dict):
    guess = guess_variant(state_dict)
    if guess and configs.canonical_name(guess) != model.name:
        return f"Its shapes are those of {guess!r}: pass --model {guess}."
    return None


def _mismatch_report(model, hint, unexpected, missing, mismatched, examples=3):
    """One line: what does not fit, with the first `examples` items of each kind."""
    parts = [f"The weights do not fit model {model.name!r}." + (f" {hint}" if hint else "")]
    for title, items in (
        ("unexpected checkpoint tensor(s)", unexpected),
        ("model weight(s) the checkpoint lacks", missing),
        ("shape mismatch(es)", mismatched),
    ):
        if items:
            more = f", ... (+{len(items) - examples} more)" if len(items) > examples else ""
            parts.append(f"{len(items)} {title}: {', '.join(items[:examples])}{more}")
    return " ".join(parts[:1]) + (" " + "; ".join(parts[1:]) + "." if parts[1:] else "")


def guess_variant(state_dict):
    """The variant whose table entry matches the checkpoint's widths, depths and stem, or None."""
    try:
        dims = tuple(state_dict[f"cls_token_{b}"].shape[-1] for b in range(2))
        large_depth = len({k.split(".")[4] for k in state_dict if k.startswith("blocks.0.blocks.1.")})
        multi_conv = "patch_embed.0.proj.0.weight" in state_dict
        hidden = state_dict["blocks.0.blocks.0.0.mlp.fc1.weight"].shape[0]
        tokens = state_dict["pos_embed_0"].shape[1] - 1
    except KeyError:
        return None
    for name, variant in configs.VARIANTS.items():
        size = variant["image_sizes"][0] // variant["patch_sizes"][0]
        if (
            variant["embed_dims"] == dims
            and variant["depths"][0][1] == large_depth
            and variant["multi_conv"] == multi_conv
            and int(dims[0] * variant["mlp_ratios"][0]) == hidden
            and size * size == tokens
        ):
            return name
    return None


# ----------------------------------------------------------------------------- timm configs


def config_from_timm(img_size, patch_size, embed_dim, depth, num_heads, mlp_ratio, img_scale=(1.0, 1.0), **kwargs):
    """CrossViT constructor arguments from timm `CrossVit(...)` arguments (for custom configs).

    timm writes one cross-attention layer as L = 0 in `depth`; the paper (and this package) as 1."""
    img_size = img_size if isinstance(img_size, int) else img_size[0]
    config = {
        "image_sizes": tuple(int(img_size * s) for s in img_scale),
        "patch_sizes": tuple(patch_size),
        "embed_dims": tuple(embed_dim),
        "depths": tuple((n, m, max(1, fusion)) for n, m, fusion in depth),
        "num_heads": tuple(num_heads),
        "mlp_ratios": tuple(mlp_ratio[:2]),
    }
    renames = {
        "multi_conv": "multi_conv",
        "qkv_bias": "qkv_bias",
        "num_classes": "num_classes",
        "drop_rate": "drop_rate",
        "attn_drop_rate": "attn_drop_rate",
        "proj_drop_rate": "proj_drop_rate",
        "drop_path_rate": "drop_path_rate",
    }
    unknown = sorted(set(kwargs) - set(renames))
    if unknown:
        raise ValueError(f"timm arguments without a Keras counterpart: {unknown}")
    config.update({renames[k]: v for k, v in kwargs.items()})
    return config


# ----------------------------------------------------------------------------- conversion


def converted_model(model_name, checkpoint, num_classes=None, log=None, **overrides):
    """Builds `model_name` and loads `checkpoint` into it strictly (in memory).

    num_classes defaults to the checkpoint's; overrides go to build_model."""
    from crossvit_keras.model import build_model

    state_dict = load_checkpoint(checkpoint)
    if num_classes is None:
        head = state_dict.get("head.0.weight")
        num_classes = 0 if head is None else int(head.shape[0])
    model = build_model(model_name, num_classes=num_classes, **overrides)
    load_weights(model, state_dict, log=log)
    return model


def convert(model_name, checkpoint, output, num_classes=None, image_size=None, log=None, **overrides):
    """Builds `model_name`, loads `checkpoint` strictly and saves a `.keras` file atomically.

    num_classes defaults to the checkpoint's; image_size to the variant's; overrides go to build_model."""
    log = log or logger.info
    output = os.fspath(output)
    if not output.endswith(".keras"):
        raise ValueError(f"The output must be a .keras file, got {output}.")
    if os.path.isdir(output):
        raise ValueError(f"The output {output} is a directory; give the path of a .keras file.")
    if image_size is not None:
        overrides["image_size"] = image_size
    model = converted_model(model_name, checkpoint, num_classes, log=log, **overrides)
    save_model(model, output)
    log(f"wrote {output} ({model.name}, {model.count_params():,} parameters, {model.num_classes} classes)")
    return model
