"""The one exception type for user mistakes: it says what was wrong and how to fix it."""

from __future__ import annotations


class RunnerError(Exception):
    """A problem the user can fix (bad path, bad file, unsupported model, missing data).

    ``python -m runner`` prints its message as one line on stderr and exits non-zero, without a
    traceback. Anything else that escapes is a bug and keeps its traceback.
    """


def summarize_error(e: BaseException, limit: int = 300) -> str:
    """One line a user can act on from a (often multi-line MLIR) converter error."""
    text = str(e)
    if type(e).__name__ == "UncompletedJobError" and "timed-out" in text:
        # submitit's handler of SLURM's warning signal, raised inside the job
        return "time limit: the job ran past hydra.launcher.timeout_min (SLURM stopped it)"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    picked = next((ln for ln in lines if "error:" in ln), lines[0] if lines else type(e).__name__)
    picked = picked.split("error:", 1)[-1].strip() if "error:" in picked else picked
    one = f"{type(e).__name__}: {picked}" if not isinstance(e, RunnerError) else picked
    return one if len(one) <= limit else one[: limit - 3] + "..."
