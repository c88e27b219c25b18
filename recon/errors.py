"""The one exception type for errors a user can cause and fix."""


class UserError(ValueError):
    """Bad input, missing weights, unreadable files, an option this machine can't serve.

    The message says what went wrong and how to fix it; the CLI prints it without a traceback
    and exits with status 2.
    """
