"""User-facing errors: scripts print these as one line and exit non-zero, never as a stack trace."""
import sys
from contextlib import contextmanager


class UserError(Exception):
    """A mistake in what the user asked for (bad flag, missing weights, too little data...)."""


def first_line(e: Exception) -> str:
    """An exception's message cut to its first line (its type's name if it has none), to quote in a UserError."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


@contextmanager
def user_errors_exit(prog: str = ""):
    """Turn UserError (and a few obvious user-caused OS errors) into a one-line message and exit code 2."""
    try:
        yield
    except UserError as e:
        print(f"{prog + ': ' if prog else ''}error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{prog + ': ' if prog else ''}interrupted", file=sys.stderr)
        sys.exit(130)
