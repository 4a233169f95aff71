"""Errors the user can fix: a bad config key or value, a missing or unreadable file, data of the wrong kind.

The entry points (`runtime.cli`) print the message of such an error alone, without a traceback, and
exit with status 2; `HYDRA_FULL_ERROR=1` or `--debug` shows the full trace. Every other exception is a bug
and keeps its traceback. A message names the key or file and says what was expected.

The classes also derive from the built-in exception a caller would expect (`ValueError`,
`FileNotFoundError`), so `except ValueError` keeps working.
"""

from __future__ import annotations


class UserError(Exception):
    """Base class: the message is everything the user needs; exit status 2."""

    exit_code = 2


class ConfigError(UserError, ValueError):
    """A config key or value (an override, an experiment file) that cannot work; name the key."""


class InputError(UserError, ValueError):
    """A file or data set that exists but is not what was expected (a foreign checkpoint, a corrupt image)."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the config points at does not exist."""


class NetworkError(UserError, ConnectionError):
    """A server (W&B, the Hugging Face hub) the config needs did not answer; the message gives the offline way."""
