"""Progress notes and warnings on stderr, one line each (results go to stdout, printed by the CLI)."""

from __future__ import annotations

import sys


def log(message: str) -> None:
    """A progress note for the person at the terminal (stderr, flushed at once)."""
    print(message, file=sys.stderr, flush=True)


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)
