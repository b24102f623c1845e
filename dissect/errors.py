"""Typed exceptions. The CLI turns each into one line on stderr and an exit code.

Every error a user can cause is a :class:`DissectError` carrying a message (what is
wrong) and a hint (what to do next). Anything else reaching the CLI is a bug.
"""

from __future__ import annotations


class DissectError(Exception):
    """Base class: a problem the user can fix. ``exit_code`` 1 = runtime, 2 = usage."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if not self.hint:
            return self.message
        ends = self.message.endswith((".", "?", "!")) and not self.message.endswith("...")
        return f"{self.message}{' ' if ends else '. '}{self.hint[:1].upper()}{self.hint[1:]}"


class UsageError(DissectError):
    """Bad arguments: unknown names, out-of-range values, conflicting options."""

    exit_code = 2


class InputError(DissectError):
    """A missing or unreadable input: path, image, concept list."""


class ModelError(DissectError):
    """A model, checkpoint or layer that cannot be loaded or hooked."""


class ArtifactError(DissectError):
    """An artifact that is not what it claims: wrong format, version, shape or dtype."""


class MismatchError(ArtifactError):
    """Artifacts that do not belong together (different CLIP model, probe ids, ...)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (or another stop signal) delivered to the process: unwinds like Ctrl-C, so no partial file is kept."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def first_line(e: BaseException, default: str | None = None, limit: int = 200) -> str:
    """The first line of an exception's message, for a one-line error (``default``, else its type's name, where
    the message is empty), at most ``limit`` characters."""
    lines = str(e).strip().splitlines()
    return (lines[0] if lines else (default if default is not None else type(e).__name__))[:limit]
