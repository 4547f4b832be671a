"""Errors that mean "the input is wrong", not "the code is wrong": the scripts print them as one line
(`error: file:line: what`) and exit non-zero (utils/cli.py). Every message names the file, and the line where
there is one. This module is torch-free so that a script can catch them without loading torch."""
from model.errors import WeightsError


class UserError(ValueError):
    """Base of the errors below."""


class ConfigError(UserError):
    """A problem in a .data file (or a file it points to), or a command-line option that contradicts it."""


class DatasetError(UserError):
    """A dataset that cannot be used as given: list files, images, label files."""


class CheckpointError(UserError):
    """A checkpoint that cannot be read or resumed (or written: a full disk), or that is not ours."""


class ExportError(UserError):
    """A step of the export failed; the message says which step and why."""


class NcnnModelError(UserError):
    """A .param/.bin that cannot be read or rewritten."""


# What the scripts report as one line instead of a traceback.
USER_ERRORS = (UserError, WeightsError, FileNotFoundError)
