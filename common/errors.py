"""The one exception type a user ever sees: a single sentence that names the fix."""


class UserError(Exception):
    """Bad input or environment. The CLI prints the message alone, on one line, and exits non-zero."""
