"""Error hierarchy: every error says what we got, what we expected and how to fix it.

Messages are built by :func:`format_message` only, so they always read
``Got: … Expected: … Fix: …``.

Example:
    >>> from physlink_gym.errors import ValidationError
    >>> err = ValidationError(got="joints=0", expected="an int >= 1", fix="pass joints=7")
    >>> str(err)
    'Got: joints=0. Expected: an int >= 1. Fix: pass joints=7.'
    >>> isinstance(err, ValueError)
    True
"""

from __future__ import annotations

import numbers
from typing import Any

__all__ = [
    "CheckpointCorruptError",
    "CheckpointError",
    "CheckpointVersionError",
    "ConfigurationError",
    "PhysLinkError",
    "TrainingError",
    "ValidationError",
    "WriteError",
    "check_int",
    "format_message",
]


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."


def format_message(got: str, expected: str, fix: str) -> str:
    """Build the one message format every physlink_gym error uses.

    Args:
        got: What the caller passed or what was found.
        expected: What would have been valid.
        fix: One concrete action that resolves the problem.

    Returns:
        ``"Got: <got>. Expected: <expected>. Fix: <fix>."``

    Example:
        >>> format_message("x=-1", "x >= 0", "pass a non-negative x")
        'Got: x=-1. Expected: x >= 0. Fix: pass a non-negative x.'
    """
    return f"Got: {_sentence(got)} Expected: {_sentence(expected)} Fix: {_sentence(fix)}"


class PhysLinkError(Exception):
    """Base class of every error raised on purpose by physlink_gym."""

    def __init__(self, got: str, expected: str, fix: str) -> None:
        self.got = got
        self.expected = expected
        self.fix = fix
        super().__init__(format_message(got, expected, fix))

    def __reduce__(self) -> tuple[type[PhysLinkError], tuple[str, str, str]]:
        # Errors cross process boundaries (SubprocVecEnv workers); keep them picklable.
        return (type(self), (self.got, self.expected, self.fix))


class ConfigurationError(PhysLinkError, ValueError):
    """A constructor argument or configuration value is invalid."""


class ValidationError(PhysLinkError, ValueError):
    """Data (a space, an observation, an invariant result) failed validation."""


class TrainingError(PhysLinkError, RuntimeError):
    """Training cannot go on (e.g. every update's loss is non-finite)."""


class WriteError(PhysLinkError):
    """A file cannot be written where it was asked for (a folder, under a file, read-only)."""


class CheckpointError(PhysLinkError):
    """A checkpoint could not be written or read."""


class CheckpointCorruptError(CheckpointError):
    """A checkpoint file is truncated, empty, garbage, or holds something we never load."""


class CheckpointVersionError(CheckpointError):
    """A checkpoint was written by an incompatible physlink_gym version (major.minor differ)."""

    def __init__(self, checkpoint_version: str, current_version: str) -> None:
        self.checkpoint_version = checkpoint_version
        self.current_version = current_version
        super().__init__(
            got=f"a checkpoint written by physlink_gym {checkpoint_version}",
            expected=f"a checkpoint from physlink_gym {_major_minor(current_version)}.x "
            f"(this is {current_version})",
            fix=f"load it with physlink_gym=={checkpoint_version} and re-save, "
            "or retrain with this version",
        )

    def __reduce__(self) -> tuple[type[PhysLinkError], tuple[str, str, str]]:
        return (type(self), (self.checkpoint_version, self.current_version))  # type: ignore[return-value]


def _major_minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def check_int(name: str, value: Any, *, minimum: int) -> int:
    """Return ``value`` as an int, or raise ConfigurationError (bools are not ints).

    Example:
        >>> check_int("batch_size", 16, minimum=1)
        16
        >>> check_int("batch_size", True, minimum=1)
        Traceback (most recent call last):
        ...
        physlink_gym.errors.ConfigurationError: Got: batch_size=True. Expected: an int >= 1. \
Fix: pass batch_size as a whole number >= 1.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigurationError(
            got=f"{name}={value!r}", expected=f"an int >= {minimum}",
            fix=f"pass {name} as a whole number >= {minimum}",
        )
    return int(value)
