"""How a command names itself in its usage lines (a leaf: every command's parser reads it, ``emoe.cli`` sets it)."""

import sys


def prog(default: str) -> str:
    """A subcommand's name in its usage line: ``emoe <command>`` when run through ``emoe``, else ``default``."""
    return sys.argv[0] if sys.argv[0].startswith("emoe ") else default
