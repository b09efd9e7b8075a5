"""The one error for bad user input."""


class UsageError(ValueError):
    """Bad user input; the message is one line naming the bad value and what is allowed."""
