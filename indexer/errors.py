"""The one exception type users see: its message is printed as a single line, no traceback."""


class PhylolmError(Exception):
    """A user-facing error (bad input, missing catalog, refused statement...)."""
