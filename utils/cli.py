"""What the scripts share on the command line: input errors as one line, and argument types that refuse nonsense.

`sys.exit(run(main))`: an error in the user's input (utils/errors.py's USER_ERRORS, wherever it is raised) prints
`error: <file:line: what>` on stderr and exits 1, with no traceback; a bug still shows its traceback.
"""
from __future__ import annotations

import argparse
import sys

from utils.errors import USER_ERRORS


def run(main, argv=None) -> int:
    """main(argv) -> exit code, with the input errors turned into one line and exit code 1."""
    try:
        return main(argv)
    except USER_ERRORS as error:
        print(f'error: {one_line(error)}', file=sys.stderr)
        return 1


def one_line(error: Exception) -> str:
    """The error's message; for one raised in a DataLoader worker, torch re-raises it in the main process with the
    worker's traceback in front, and only its last line, the original message, is the user's."""
    message = str(error)
    if 'Original Traceback' in message:
        last = message.rstrip().splitlines()[-1]
        message = last.split(': ', 1)[1] if ': ' in last else last
    return message


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (batch sizes, epochs, image counts)."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f'must be 1 or more, got {value}')
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0 (workers, threads: 0 has a meaning there)."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f'must be 0 or more, got {value}')
    return value


def probability(text: str) -> float:
    """argparse type: a number in [0, 1] (score and IoU thresholds)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a number, got "{text}"') from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f'must be in [0, 1], got {value:g}')
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a whole number, got "{text}"') from None
