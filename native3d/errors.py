"""Errors a user can act on, and how a command reports them.

A `UserError` names the file, sample or option at fault and what to do; the `native3d` and
`data_prep` commands print its message as one line on stderr and exit with `USER_ERROR_EXIT`.
Any other exception is a bug and keeps its traceback. `--verbose` (or NATIVE3D_VERBOSE=1) shows
the traceback of a user error too.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable

USER_ERROR_EXIT = 2
VERBOSE_ENV = "NATIVE3D_VERBOSE"


class UserError(Exception):
    """An error in what the user gave: a file, a sample, a checkpoint or an option."""


class InputError(UserError, ValueError):
    """A wrong value, or a file whose content is not what the command needs."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder that the command needs and that does not exist."""


class BadModelError(UserError):
    """A trained model that is unusable, named with the figure that shows it (e.g. a collapsed
    autoencoder's held-out IoU), so that nothing is built on it."""


def user_error(error: BaseException | None) -> BaseException | None:
    """The user error that `error` is, or was directly raised from (a library such as jsonargparse
    re-raises what a constructor raised as its own error); None for any other error."""
    while error is not None:
        if isinstance(error, (UserError, FileNotFoundError)):
            return error
        error = error.__cause__
    return None


def one_line(error: BaseException) -> str:
    """The message of an error, in one line.

    An error raised in a DataLoader worker comes back with the worker's traceback as its message
    ("Caught X in DataLoader worker process 0. Original Traceback ..."); its last line is
    "X: <the message>".
    """
    text = str(error).strip()
    if "Original Traceback" in text:
        text = re.sub(rf"^[\w.]*\b{type(error).__name__}: ", "", text.splitlines()[-1])
    return " ".join(text.split())


def run_command(command: Callable[[list[str]], int], argv: list[str], prog: str) -> int:
    """Runs `command(argv)`; a user error becomes one line on stderr and exit code 2.

    A leading `--verbose` is taken off `argv` and keeps the traceback of user errors. An argparse
    error or `--help` (a SystemExit) becomes the return value too, so that a caller in Python gets
    the exit code as from the shell.
    """
    verbose = bool(os.environ.get(VERBOSE_ENV))
    if argv[:1] == ["--verbose"]:
        argv, verbose = argv[1:], True
    try:
        return command(argv)
    except SystemExit as exit:
        if exit.code is None or isinstance(exit.code, int):
            return exit.code or 0
        print(exit.code, file=sys.stderr)
        return 1
    except Exception as error:
        cause = user_error(error)
        if verbose or cause is None:
            raise
        print(f"{prog}: error: {one_line(cause)}", file=sys.stderr)
        return USER_ERROR_EXIT
