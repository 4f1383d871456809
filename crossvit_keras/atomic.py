"""Writing files so that a crash or kill never leaves half of one: write beside the target, rename."""

import contextlib
import os
import tempfile


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside `path` (same suffix); renames it to `path` when the block
    succeeds and removes it when the block fails."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(suffix=os.path.splitext(path)[1], dir=directory, prefix=".partial-")
    os.close(handle)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def save_model(model, path):
    """model.save(path), atomically."""
    with atomic_path(os.fspath(path)) as temporary:
        model.save(temporary)
