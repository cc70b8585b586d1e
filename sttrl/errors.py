"""The exception types the CLI prints as one line instead of a traceback."""


class UserError(Exception):
    """A mistake the user can fix; the message is one line that says what is allowed."""


class EngineError(Exception):
    """A distributed engine failed (a dead or hung Ray actor, a sync timeout); one line saying which.

    Finished questions are already in results.jsonl, so re-running the same command resumes.
    """


def brief(err: BaseException, limit: int = 120) -> str:
    """An exception's first line, cut to `limit` characters, for a one-line message (torch's
    and pickle's errors run to many lines and hundreds of characters)."""
    lines = str(err).strip().splitlines()
    text = lines[0].strip() if lines else type(err).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."
