"""Every error lmlab raises on bad input, on the ground floor: this module imports nothing of lmlab, so any module
can raise them. Each message names the problem and the fix; the command line prints it as one line (exit code 2).

They derive from `LMLabError` and from the built-in error a caller would catch for that kind of problem (ValueError,
RuntimeError), so `except ValueError` keeps working.
"""

from __future__ import annotations


class LMLabError(Exception):
    """Base of lmlab's own errors."""


class ConfigError(LMLabError, ValueError):
    """A config that cannot describe a working model; the message names the field and the fix."""


class UnknownNameError(LMLabError, ValueError):
    """A name that is not in a registry (component, preset, tokenizer, ...)."""


class OverrideError(LMLabError, ValueError):
    """An override that cannot apply; the message names it and the fix."""


class DataError(LMLabError, ValueError):
    """Training data that cannot be read as asked; the message names the source and the fix."""


class TokenizerError(LMLabError, ValueError):
    """A tokenizer that cannot be built or loaded; the message names the spec and the fix."""


class CheckpointMismatchError(LMLabError, ValueError):
    """Weights whose tensors do not match the model exactly (missing, unexpected or mis-shaped)."""


class CheckpointMismatch(LMLabError, ValueError):
    """A training checkpoint written by a run of a different configuration."""


class VariantError(LMLabError, ValueError):
    """A comparison variant that cannot be read; the message names it and shows the syntax."""


class TrainingDiverged(LMLabError, RuntimeError):
    """The training loss became NaN or infinite."""


class UnsafeFileError(LMLabError, ValueError):
    """A file lmlab refuses to read because reading it could run code (a pickle holding more than tensors)."""


class CorruptFileError(LMLabError, ValueError):
    """A file or folder that is truncated, corrupt or incomplete (model weights, a checkpoint, a trainer state)."""


class CheckpointWriteError(LMLabError, OSError):
    """A checkpoint that could not be written (a full disk, no permission); the earlier checkpoints are intact."""


class TaskError(LMLabError, ValueError):
    """An evaluation task definition that cannot run (an unknown key, a template naming a missing field)."""


class MissingDependencyError(LMLabError, RuntimeError):
    """An optional package (or hardware) a feature needs is not installed; the message names what to install."""


__all__ = ["CheckpointMismatch", "CheckpointMismatchError", "CheckpointWriteError", "ConfigError", "CorruptFileError",
           "DataError", "LMLabError", "MissingDependencyError", "OverrideError", "TaskError", "TokenizerError",
           "TrainingDiverged", "UnknownNameError", "UnsafeFileError", "VariantError"]
