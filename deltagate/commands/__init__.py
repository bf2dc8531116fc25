"""Sub-commands of the ``deltagate`` CLI, one module per area; heavy imports stay inside functions."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

__all__ = ["command_line"]


def command_line(name: str) -> str:
    """The command as typed, recorded beside results; ``deltagate NAME ...`` when not run from the shell (tests)."""
    if Path(sys.argv[0]).name == "deltagate":
        return shlex.join(["deltagate", *sys.argv[1:]])
    return f"deltagate {name} ..."
