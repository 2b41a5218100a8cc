"""The one error type users see: a clear message, no traceback, non-zero exit."""


class TaskPruneError(Exception):
    """A problem with the user's input or environment, worded for the user.

    The CLI prints ``str(error)`` and exits with status 2; everything else is a bug
    and keeps its traceback.
    """
