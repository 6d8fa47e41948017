"""Errors a user can cause. The CLI prints these as one line and exits with status 2."""


class UserError(Exception):
    """A bad path, config, checkpoint or argument: reported as one clear line, no traceback."""
