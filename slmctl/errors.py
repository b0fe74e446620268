"""The error tree. Every error the user can act on is a SlmctlError with an exit code and a hint."""

from __future__ import annotations


class SlmctlError(Exception):
    """An error the user can act on: printed as ``error: <message>`` plus a hint, exit code 1."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.message


class UsageError(SlmctlError):
    """Arguments that cannot work together (exit 2)."""

    exit_code = 2


class InputError(SlmctlError):
    """A model, data file or path that cannot be read: missing, malformed, hostile or unsupported."""


class FormatError(InputError):
    """A file whose bytes do not follow its format (truncated, wrong magic, bad offsets)."""


class UnsupportedError(SlmctlError):
    """Something valid that slmctl does not handle (yet): an architecture, a tensor type, a format pair."""


class OutputError(SlmctlError):
    """The output cannot be written: it exists without --force, is a symlink, or the disk is full."""


class NetworkError(SlmctlError):
    """A hub id could not be fetched."""


class GateFailed(SlmctlError):
    """A quality gate was crossed (exit 3). ``failed``: one message per gate crossed. Raised after the
    result is printed and the output written (slmctl.eval.compare.enforce), so the output is kept."""

    exit_code = 3

    def __init__(self, message: str, hint: str | None = None, *, failed: list[str] | None = None,
                 label: str = "gate failed"):
        super().__init__(message, hint)
        self.failed = list(failed or [message])
        self.label = label  # how each line of ``failed`` is introduced on stderr
