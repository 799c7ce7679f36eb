"""The one exception type a user sees: a message that says what was wrong and what is allowed."""


class FedlayerError(Exception):
    """A user-facing error (bad config, unknown name, missing data, bad checkpoint).

    The CLI prints its message without a traceback and exits non-zero.
    """


def choices_message(what: str, value: object, choices) -> str:
    """Format 'unknown <what> <value>; valid choices: a, b, c' consistently everywhere."""
    listed = ", ".join(str(c) for c in choices)
    return f"unknown {what} {value!r}; valid choices: {listed}"
