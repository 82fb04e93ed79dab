"""The model pipeline's exceptions."""

from aiotkit.boards.errors import UsageError


class ModelError(UsageError):
    """Bad input to the model pipeline (missing data, wrong files, a card that does not
    match its model); the message is one line that says what and where (exit status 2)."""
