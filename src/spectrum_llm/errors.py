"""One exception type for every problem a user can fix.

The CLI prints its message (which names the problem and the fix) instead of a traceback.
"""


class SpectrumError(Exception):
    """A problem with the user's input or environment, with a message that says what to do."""
