"""The user-facing error hierarchy.

Every failure a user can cause or fix is an ``MlenvError``: one message that says what went wrong,
an optional ``hint`` that says what to do, and an exit code per kind.  The CLI prints these without a
traceback (unless ``--debug``); anything else escaping a command is a bug and is shown in full.

Exit codes (documented in the README):
    0  success
    1  a check found drift (doctor, lock --check, a failed sweep run)
    2  bad command-line usage
    3  the spec (mlenv.toml) or another input file is invalid
    4  the lock is missing, stale or corrupt
    5  dependency resolution failed
    6  a required tool or service is missing or unreachable (uv, docker, engine, ssh)
    7  an image build failed
    8  a notebook sweep could not run
    130 interrupted (Ctrl-C)
"""

from __future__ import annotations


class MlenvError(Exception):
    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class DriftError(MlenvError):
    """A check ran fine and found the environment (or lock) out of date."""

    exit_code = 1


class UsageError(MlenvError):
    exit_code = 2


class SpecError(MlenvError):
    """Invalid user input file; carries ``path:line:col`` when known."""

    exit_code = 3

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        col: int | None = None,
        hint: str | None = None,
    ) -> None:
        self.path, self.line, self.col = path, line, col
        location = ""
        if path:
            location = path
            if line:
                location += f":{line}"
                if col:
                    location += f":{col}"
            location += ": "
        super().__init__(location + message, hint=hint)


class LockError(MlenvError):
    exit_code = 4


class ResolutionError(MlenvError):
    exit_code = 5


class ToolMissingError(MlenvError):
    """A program or service mlenv drives is not installed or not reachable."""

    exit_code = 6


class BuildError(MlenvError):
    exit_code = 7


class SweepError(MlenvError):
    exit_code = 8


class Interrupted(MlenvError):
    exit_code = 130


def did_you_mean(word: str, choices) -> str | None:
    """A 'did you mean' hint for a misspelt key or value, or None when nothing is close."""
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else None
