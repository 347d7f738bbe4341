"""User mistakes: caught by the CLI and printed as one line, exit status 2, no traceback."""


class UsageError(Exception):
    """Bad input that the user can fix; the message names the problem and the fix."""
