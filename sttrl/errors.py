"""The one exception type for user mistakes (bad flags, bad files): the CLI prints it as one line."""


class UserError(Exception):
    """A mistake the user can fix; the message is one line that says what is allowed."""
