"""Errors that are the user's to fix: entry points print their one line and exit with code 2."""


class UserError(Exception):
    """Bad input (path, config key, model name, weights file): one clear line, exit code 2."""

    exit_code = 2
