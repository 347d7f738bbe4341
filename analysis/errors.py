"""User mistakes: caught by the CLI and printed as one line, exit status 2, no traceback."""


class UsageError(Exception):
    """Bad input that the user can fix; the message names the problem and the fix."""


def one_line(exc: BaseException) -> str:
    """``exc``'s message on one line (a message quoted from a third-party library may span
    several): the CLI promises exactly one line per error."""
    return " ".join(str(exc).split()) or type(exc).__name__
