"""The exception types the CLI prints as one line instead of a traceback."""


class UserError(Exception):
    """A mistake the user can fix; the message is one line that says what is allowed."""


class EngineError(Exception):
    """A distributed engine failed (a dead or hung Ray actor, a sync timeout); one line saying which.

    Finished questions are already in results.jsonl, so re-running the same command resumes.
    """
