"""Writing files so that a crash, a kill or a full disk never leaves half of one in the place of a
good one: write beside the target, flush it to disk, then rename. The result gets the permissions
any new file gets under the user's umask (0644 with the usual 022), not the temporary file's 0600."""

import contextlib
import os
import tempfile


def current_umask():
    """The process's umask, read without changing it (Linux's /proc), else by setting and restoring it."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_mode(directory=False):
    """The mode open() / mkdir() would give a new file (0o666) or directory (0o777) under the umask."""
    return (0o777 if directory else 0o666) & ~current_umask()


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside `path` (same suffix); when the block succeeds, gives it the
    umask's permissions, flushes it to disk and renames it to `path`; when the block fails (a full
    disk, an error), removes it and leaves `path` as it was."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(suffix=os.path.splitext(path)[1], dir=directory, prefix=".partial-")
    os.close(handle)
    try:
        yield temporary
        os.chmod(temporary, default_mode())
        with open(temporary, "rb") as f:
            os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def make_directories(directory):
    """Creates `directory` and its missing parents, as os.makedirs; returns the outermost directory
    this call created (None if `directory` existed): the one to remove to undo it."""
    missing, path = [], os.path.abspath(directory)
    while not os.path.isdir(path) and os.path.dirname(path) != path:
        missing.append(path)
        path = os.path.dirname(path)
    created = None
    for path in reversed(missing):
        try:
            os.mkdir(path)
        except FileExistsError:
            if not os.path.isdir(path):
                raise
            continue  # made meanwhile by another process: not this call's
        created = created or path
    return created


def remove_empty_directories(top, directory):
    """Removes `directory` and its parents up to `top` (what make_directories returned) while they are empty."""
    path = os.path.abspath(directory)
    while path == top or path.startswith(top + os.sep):
        try:
            os.rmdir(path)
        except OSError:
            return
        path = os.path.dirname(path)


def check_writable(directory):
    """Creates `directory` if needed and writes and removes a small file in it; raises ValueError
    saying what to fix if it cannot (read-only file system, no permission, a file in the way).
    Returns the outermost directory it created (None if `directory` existed)."""
    created = None
    try:
        created = make_directories(directory)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as error:
        if created:
            remove_empty_directories(created, directory)
        raise ValueError(
            f"cannot write to {directory}: {error.strerror or error}; choose another output directory "
            "or make this one writable"
        ) from None
    return created


def save_model(model, path):
    """model.save(path), atomically."""
    with atomic_path(os.fspath(path)) as temporary:
        model.save(temporary)
