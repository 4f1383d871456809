"""The package's log lines on stdout, set up once, and the one-line form of an error."""

import logging
import sys


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever sys.stdout is when a line is logged, not the stream of the first call (a
    replaced and closed stdout, as under pytest's capture or a redirecting caller, would raise)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):
        pass


def setup_logging():
    """This package's log lines ("crossvit_keras.*" loggers) on stdout with a time stamp, once."""
    root = logging.getLogger("crossvit_keras")
    if not any(getattr(h, "_crossvit_keras", False) for h in root.handlers):
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", "%H:%M:%S"))
        handler._crossvit_keras = True
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False


def first_line(error):
    """An exception's first non-empty line (its type's name if it has no message)."""
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
