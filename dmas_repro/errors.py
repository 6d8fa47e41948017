"""Errors a user can cause. The CLI prints these as one line and exits non-zero."""


class UserError(Exception):
    """A bad path, config, checkpoint or argument: reported as one clear line, no traceback."""
