"""The one exception type for user mistakes: it says what was wrong and how to fix it."""

from __future__ import annotations


class RunnerError(Exception):
    """A problem the user can fix (bad path, bad file, unsupported model, missing data).

    ``python -m runner`` prints its message as one line on stderr and exits non-zero, without a
    traceback. Anything else that escapes is a bug and keeps its traceback.
    """
