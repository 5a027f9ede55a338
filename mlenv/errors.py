"""The user-facing error hierarchy and the exit codes.

Every failure a user can cause or fix is an ``MlenvError``: one message that says what went wrong,
an optional ``hint`` that says what to do, and an exit code per kind.  The CLI prints these without a
traceback (unless ``--debug``); anything else escaping a command is a bug and is shown in full.
The codes are ``ExitCode``; the README's table is checked against it by the tests.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import IntEnum


class ExitCode(IntEnum):
    """What a script can tell from mlenv's exit status alone."""

    OK = 0
    DRIFT = 1  # a check ran and found drift (doctor, lock --check, gen --check), or a sweep run failed
    USAGE = 2  # bad command-line usage (unknown option, unknown target)
    INVALID_INPUT = 3  # mlenv.toml or another input file is invalid
    LOCK = 4  # the lock is missing, stale or corrupt
    RESOLUTION = 5  # dependency resolution found no solution
    UNAVAILABLE = 6  # a required tool or service is missing or unreachable: mlenv could not look
    BUILD = 7  # an image build failed
    SWEEP = 8  # a notebook sweep could not run
    BOX_SETUP = 9  # a dev box's first-boot setup failed or did not finish in time
    INTERRUPTED = 130  # Ctrl-C (SIGINT)
    TERMINATED = 143  # SIGTERM


class MlenvError(Exception):
    exit_code: ExitCode = ExitCode.DRIFT

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        # messages quote user input (requirement lines, index URLs): a credential in a URL is never printed
        from mlenv.validate import redact_text  # lazy: mlenv.validate imports this module

        message = redact_text(message)
        hint = redact_text(hint) if hint else hint
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"

    def to_json(self) -> dict:
        """The ``{"error": ...}`` object ``--json`` prints on stdout when a command fails."""
        return {"error": {"code": int(self.exit_code), "message": self.message, "hint": self.hint}}


class DriftError(MlenvError):
    """A check ran fine and found the environment (or lock) out of date."""

    exit_code = ExitCode.DRIFT


class UsageError(MlenvError):
    exit_code = ExitCode.USAGE


class SpecError(MlenvError):
    """Invalid user input file; carries ``path:line:col`` when known."""

    exit_code = ExitCode.INVALID_INPUT

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
    exit_code = ExitCode.LOCK


class ResolutionError(MlenvError):
    exit_code = ExitCode.RESOLUTION


class ToolMissingError(MlenvError):
    """A program or service mlenv drives is not installed or not reachable."""

    exit_code = ExitCode.UNAVAILABLE


class BuildError(MlenvError):
    exit_code = ExitCode.BUILD


class SweepError(MlenvError):
    exit_code = ExitCode.SWEEP


class BoxSetupError(MlenvError):
    """A dev box's first-boot setup failed or did not finish in time.  ``box_kept``: the box stays
    (complete and tagged; the hint says how to look at it, wait again or delete it) rather than being
    rolled back by the ``up`` that made it."""

    exit_code = ExitCode.BOX_SETUP

    def __init__(self, message: str, *, hint: str | None = None, box_kept: bool) -> None:
        super().__init__(message, hint=hint)
        self.box_kept = box_kept


class Interrupted(MlenvError):
    """Raised after Ctrl-C (or SIGTERM) once what was complete has been kept; the CLI picks 130/143."""

    exit_code = ExitCode.INTERRUPTED


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """A 'did you mean' hint for a misspelt key or value, or None when nothing is close."""
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else None
