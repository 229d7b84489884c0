"""The one exception type users see: a clear message about bad input, never a traceback."""


class MedArtError(Exception):
    """Bad input or an unusable resource; the message says what was wrong and what to do.

    The CLIs print it on one line and exit with status 2; the app shows it and stays up.
    """
