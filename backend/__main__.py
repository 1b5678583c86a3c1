"""``python -m backend``: see ``backend.cli``.

Output piped into a reader that stops early (``corrections list | head``) ends the command quietly with
status 141 (like a shell's SIGPIPE), not with a ``BrokenPipeError`` traceback.
"""

from __future__ import annotations

import os
import sys

from backend.cli import main

EXIT_BROKEN_PIPE = 141


def run() -> int:
    """``main()``, with a closed stdout turned into a quiet exit."""
    try:
        code = main()
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # Python flushes stdout again at exit: point it at /dev/null so that flush cannot fail too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(run())
