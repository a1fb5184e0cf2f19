"""Errors a user can act on. The CLI prints these as a short message (traceback only with --debug).

Kept in one torch-free module so that the CLI can recognise them without importing the training stack.
"""


class PosttrainError(Exception):
    """Base of every error caused by the user's recipe, data or files rather than by a bug."""


class RecipeError(PosttrainError, ValueError):
    """A recipe that cannot run; the message lists every problem found."""


class DataError(PosttrainError, ValueError):
    """A dataset that cannot be used as configured; the message names the file and row."""


class CheckpointError(PosttrainError, RuntimeError):
    """A checkpoint that is missing, incomplete or not loadable safely."""


class GateFailed(PosttrainError, RuntimeError):
    """A gate's condition failed after a stage; finished checkpoints are kept."""


class NonFiniteLossError(PosttrainError, RuntimeError):
    """The loss or gradient norm became NaN/inf; the message names the step and the batch."""


class HubError(PosttrainError, RuntimeError):
    """The model hub could not be reached, or refused a request (no token, no permission)."""


class StageError(PosttrainError, RuntimeError):
    """A stage ran but produced nothing a later stage could use (e.g. no usable revision); the message says
    where to look."""
