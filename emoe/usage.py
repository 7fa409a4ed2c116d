"""How a command reads its flags and names itself in its usage lines (a leaf: every command's parser is a ``Parser``
and reads ``prog``; ``emoe.cli`` sets the name)."""

import argparse
import re
import sys


def prog(default: str) -> str:
    """A subcommand's name in its usage line: ``emoe <command>`` when run through ``emoe``, else ``default``."""
    return sys.argv[0] if sys.argv[0].startswith("emoe ") else default


class Parser(argparse.ArgumentParser):
    """The parser of every ``emoe`` command.

    - A flag is never abbreviated (``allow_abbrev=False``): ``--num-expert 8`` is refused, not read as
      ``--num-experts``.
    - A value may look like a negative number: ``--learning-rates -1e-4``, ``--layers -2,-1``, ``--seed -1`` reach
      the checks that refuse or accept them, instead of argparse's "expected one argument".
    - An error is one line, ``error: ...``, exit 2 (argparse prints its usage block first otherwise).
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        # NOTE: argparse reads a token that starts with "-" as a flag unless it matches this pattern (only -1 and
        # -1.5 up to Python 3.13; 3.14 adds -1e-4, none adds the lists -2,-1). No flag of emoe starts with a digit,
        # so anything that starts like a negative number is a value (argparse's own attribute: the pattern it keeps
        # for exactly this decision; with an option that looks like a negative number it is ignored, as before).
        self._negative_number_matcher = re.compile(r"^-\.?\d")

    def error(self, message):
        self.exit(2, f"error: {message}\n")
