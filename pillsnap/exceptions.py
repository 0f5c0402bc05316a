"""One exception root with small, named subclasses.

Messages say what was seen, what was expected and what to do about it.
``UserInputError`` subclasses mean "your input is wrong"; anything else that
escapes the library is our bug.
"""

from __future__ import annotations


class PillsnapError(Exception):
    """Root of every error the library raises on purpose."""


class UserInputError(PillsnapError):
    """The input (config, file, argument) is wrong; the message names the fix."""


class ConfigError(UserInputError):
    """The configuration is invalid. ``problems`` lists every failure found."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid configuration ({len(self.problems)} problem(s)):\n{lines}")


class MissingPathError(UserInputError):
    """A file or folder the config or an argument points at does not exist."""


class CheckpointError(UserInputError):
    """A checkpoint cannot be loaded into the configured model."""


class DataError(UserInputError):
    """A dataset is missing, empty or unreadable."""


class ExportError(PillsnapError):
    """Export to ONNX failed (unsupported operator, checker failure, ...)."""


class ProviderError(PillsnapError):
    """A requested ONNX Runtime execution provider is unavailable."""


class MetadataMismatchError(UserInputError):
    """An ONNX file's embedded preprocessing metadata disagrees with the config."""


class EquivalenceError(PillsnapError):
    """Torch and ONNX outputs disagree beyond the configured gates."""


class ReleaseError(PillsnapError):
    """A release stage failed; the partial record is kept under ``.failed``."""
