"""Pretrained weights in one line: `create_model("crossvit_15_240", pretrained=True)`.

`pretrained` is True (the variant's ImageNet-1k weights, timm's `timm/<variant>.in1k` repository,
file `model.safetensors`), a hub id (`"timm/crossvit_15_240.in1k"`) or a local checkpoint
(`.safetensors`, `.pth`, `.pt`, `.bin`, e.g. the official IBM release). Downloads go through
`huggingface_hub.hf_hub_download`: its cache, resumable downloads, HF_HOME / HF_HUB_CACHE /
HF_HUB_OFFLINE and tokens. The weights are converted by the strict converter (crossvit_keras.weights.convert:
position embeddings resized for another image size, fresh heads for another class count, logged).

A converted model is cached beside the download, in `<hub cache>/models--timm--<variant>.in1k/
crossvit_keras/`, keyed by the snapshot's commit, the downloaded blob, the model's configuration
and this package's version; the second call loads it instead of converting, and another revision
of the checkpoint (another commit or blob) gets its own file.
"""

import hashlib
import json
import logging
import os
import re

from crossvit_keras import configs
from crossvit_keras.logs import first_line
from crossvit_keras.version import __version__

logger = logging.getLogger(__name__)

FILENAME = "model.safetensors"
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".pth.tar")
CACHE_FOLDER = "crossvit_keras"  # inside the hub cache's repository folder
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class HubError(ValueError):
    """The pretrained weights cannot be found or downloaded; the message says what to do instead."""


def hub_id(name):
    """timm's hub repository of a variant's ImageNet-1k weights: crossvit_15 -> timm/crossvit_15_240.in1k."""
    return f"timm/{configs.canonical_name(name)}.in1k"


def checkpoint_path(name, pretrained):
    """The local checkpoint file for `pretrained` (True, a hub id or a path), downloaded if needed."""
    if pretrained is True:
        return download(hub_id(name))
    if not isinstance(pretrained, (str, os.PathLike)):
        raise ValueError(f"pretrained must be True, a hub id or a checkpoint path, got {pretrained!r}.")
    path = os.fspath(pretrained)
    if os.path.exists(path) or path.endswith(CHECKPOINT_SUFFIXES):
        if not os.path.exists(path):
            raise FileNotFoundError(f"No checkpoint file at {path}.")
        return path  # the converter reads it and says what is wrong with a directory or a bad file
    if _HUB_ID.match(path):
        return download(path)
    raise ValueError(
        f"pretrained={path!r} is neither a checkpoint file ({', '.join(CHECKPOINT_SUFFIXES)}) nor a hub id "
        "like 'timm/crossvit_15_240.in1k'."
    )


def download(repo_id, filename=FILENAME):
    """hf_hub_download(repo_id, filename) -> the cached file's path; a HubError saying what to do
    instead when the file cannot be had (offline and not cached, no such repository, HTTP error)."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    import crossvit_keras

    try:
        return hf_hub_download(
            repo_id, filename, library_name="crossvit_keras", library_version=crossvit_keras.__version__
        )
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as error:
        if constants.HF_HUB_OFFLINE:
            reason = f"offline (HF_HUB_OFFLINE=1) and not in the cache {constants.HF_HUB_CACHE}"
        else:
            cause = first_line(error.__cause__ or error)
            reason = f"no connection to the hub ({cause}) and not in the cache {constants.HF_HUB_CACHE}"
    except GatedRepoError:
        reason = "the repository is gated: accept its terms on huggingface.co and log in (`hf auth login` or HF_TOKEN)"
    except RepositoryNotFoundError:
        reason = "no such repository (or it is private: log in with `hf auth login` or set HF_TOKEN)"
    except RevisionNotFoundError:
        reason = "no such revision"
    except EntryNotFoundError:
        reason = "the repository has no such file"
    except HfHubHTTPError as error:
        status = getattr(error.response, "status_code", "?")
        reason = f"the hub answered HTTP {status} ({first_line(error)})"
    except OSError as error:  # connection errors, a full disk, an unwritable cache
        reason = first_line(error)
    raise HubError(
        f"cannot get {filename} of {repo_id} from the Hugging Face hub: {reason}. Without network, download it "
        f"elsewhere (`hf download {repo_id} {filename}`) and pass the file (pretrained=PATH, or --checkpoint / "
        "--pretrained PATH on the command lines), or set HF_HUB_CACHE to a cache that holds it."
    )


def cache_path(name, checkpoint, overrides):
    """Where the conversion of a downloaded `checkpoint` (a hub cache path .../snapshots/<commit>/
    model.safetensors) for this configuration is cached: its key is the commit, the blob the file
    points to, the configuration (without the class count, which is the checkpoint's), the
    global dtype policy and the package version."""
    import keras

    snapshot = os.path.dirname(os.path.abspath(checkpoint))
    commit, repo_folder = os.path.basename(snapshot), os.path.dirname(os.path.dirname(snapshot))
    config = configs.resolve_config(name, num_classes=0, **overrides)
    del config["num_classes"]
    key = json.dumps(
        {
            "commit": commit,
            "blob": os.path.basename(os.path.realpath(checkpoint)),
            "size": os.path.getsize(checkpoint),
            "config": config,
            "dtype_policy": keras.config.dtype_policy().name,  # the recipe's --mixed-precision sets it
            "version": __version__,
        },
        sort_keys=True,
        default=str,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    size = config["image_sizes"][0]
    return os.path.join(
        repo_folder, CACHE_FOLDER, f"{configs.canonical_name(name)}-{size}px-{commit[:12]}-{digest}.keras"
    )


def _is_hub_file(path):
    parts = os.path.abspath(path).split(os.sep)
    return len(parts) > 3 and parts[-3] == "snapshots" and re.match(r"^models--", parts[-4]) is not None


def load_pretrained(name, pretrained=True, num_classes=1000, log=None, **overrides):
    """A CrossViT with the weights `pretrained` names (True, a hub id or a checkpoint path).

    num_classes=None keeps the checkpoint's classes; another count gets fresh heads (logged)."""
    from crossvit_keras.model import build_model
    from crossvit_keras.weights import convert

    log = log or logger.info
    name = configs.canonical_name(name)
    configs.resolve_config(name, **overrides)  # a bad override fails before any download
    checkpoint = checkpoint_path(name, pretrained)
    if not _is_hub_file(checkpoint):  # a local file: converted each time, nothing written beside it
        return convert.converted_model(name, checkpoint, num_classes, log=log, **overrides)
    model = _cached_conversion(name, checkpoint, overrides, log)
    if num_classes is None or num_classes == model.num_classes:
        return model
    target = build_model(name, num_classes=num_classes, **overrides)
    convert.assign_weights(target, {w.path: w.numpy() for w in model.weights}, log=log)
    return target


def _cached_conversion(name, checkpoint, overrides, log):
    """The checkpoint converted with its own class count: from the cache, or converted and cached."""
    import keras

    from crossvit_keras.weights import convert

    cached = cache_path(name, checkpoint, overrides)
    if os.path.isfile(cached):
        log(f"loading the converted {cached}")
        try:
            return keras.models.load_model(cached, compile=False)
        except Exception as error:  # e.g. written by another Keras: convert again, in its place
            log(f"cannot load it ({first_line(error)}); converting again")
    log(f"converting {checkpoint} (cached as {cached})")
    try:
        return convert.convert(name, checkpoint, cached, log=log, **overrides)
    except OSError as error:  # a read-only cache: convert in memory
        log(f"the conversion was not cached ({first_line(error)})")
        return convert.converted_model(name, checkpoint, log=log, **overrides)
